//! `score-net`: the score network of score-based generative models.
//!
//! - [`NetBackend`]: the primitive neural-network ops (conv2d, linear, group
//!   norm, SiLU, attention, up/down-sampling, concatenation, dropout), each
//!   with an explicit backward pass giving input and parameter gradients;
//!   implemented for the CPU in [`cpu`] (gemm-based, threaded) and, later,
//!   for wgpu;
//! - [`params`]: the flat parameter store (one buffer of parameters, one of
//!   gradients) with named [`View`]s and seeded initialisation;
//! - [`embed`]: sinusoidal and Gaussian-Fourier time embeddings;
//! - [`layers`] and [`unet`]: the DDPM++-family UNet with explicit backward,
//!   and [`UnetScore`], which implements `sde_core::ScoreModel`.
//!
//! - [`network`]: the [`Network`] trait every trainable network implements
//!   (stored description, cached forward, explicit backward);
//! - [`checkpoint`]: `safetensors` checkpoints of any [`Network`], with the
//!   configuration embedded, over a model-agnostic container.
//!
//! - [`gpu`]: the wgpu backend ([`gpu::WgpuBackend`], WGSL kernels from
//!   `shaders/`); so far it implements `sde_core::Backend`, the `NetBackend`
//!   ops follow (see the issue tracker).

pub mod checkpoint;
pub mod cpu;
pub mod embed;
pub mod error;
pub mod gpu;
pub mod layers;
pub mod net_backend;
pub mod network;
pub mod params;
pub mod unet;

pub use error::{GpuError, NetError, Result};
pub use net_backend::{AdamStep, Conv2dSpec, NetBackend, View};
pub use network::Network;
pub use params::{Init, ParamBuilder, ParamStore, PARAM_ALIGN};
pub use unet::{Embedding, Resample, Unet, UnetConfig, UnetScore};
