//! `score-net`: the score network of score-based generative models.
//!
//! - [`NetBackend`]: the primitive neural-network ops (conv2d, linear, group
//!   norm, SiLU, attention, up/down-sampling, concatenation, dropout), each
//!   with an explicit backward pass giving input and parameter gradients;
//!   implemented for the CPU in [`cpu`] (gemm-based, threaded) and for
//!   wgpu in [`gpu`];
//! - [`params`]: the flat parameter store (one buffer of parameters, one of
//!   gradients) with named [`View`]s and seeded initialisation;
//! - [`embed`]: sinusoidal and Gaussian-Fourier time features;
//!   [`time_embed`]: the time-embedding MLP both networks share
//!   ([`TimeEmbed`]) and the SDE-time-to-network-input mapping
//!   ([`time_embed::TimeInput`], [`time_embed::Conditioning`]);
//! - [`layers`] and [`unet`]: the DDPM++-family UNet with explicit backward;
//!   [`unet_score`]: [`UnetScore`], which implements `sde_core::ScoreModel`;
//! - [`classifier`]: the noise-conditional classifier `p_t(y | x(t))`
//!   ([`Classifier`], the UNet's down path with pooling and a linear head)
//!   for class-conditional sampling, with host-side [`log_softmax`] and
//!   [`cross_entropy_grad`], and `grad_x log p_t(y | x)` from
//!   [`Classifier::log_prob_and_input_grad`]; [`classifier_model`]:
//!   [`ClassifierModel`], the classifier with its parameters and SDE;
//! - [`network`]: the [`Network`] trait every trainable network implements
//!   (stored description, cached forward, explicit backward, and an
//!   inference forward that keeps no cache);
//! - [`checkpoint`]: `safetensors` checkpoints of any [`Network`], with the
//!   configuration embedded, over a model-agnostic container;
//! - [`gpu`]: the wgpu backend ([`gpu::WgpuBackend`], WGSL kernels from
//!   `shaders/`), implementing `sde_core::Backend` and [`NetBackend`].

pub mod checkpoint;
pub mod classifier;
pub mod classifier_model;
pub mod cpu;
pub mod embed;
pub mod error;
pub mod gpu;
pub mod layers;
pub mod net_backend;
pub mod network;
pub mod params;
pub mod time_embed;
pub mod unet;
pub mod unet_score;

pub use classifier::{
    cross_entropy_grad, log_softmax, Classifier, ClassifierCache, ClassifierConfig,
};
pub use classifier_model::ClassifierModel;
pub use error::{GpuError, NetError, Result};
pub use net_backend::{AdamStep, Conv2dSpec, NetBackend, View};
pub use network::Network;
pub use params::{Init, ParamBuilder, ParamStore, PARAM_ALIGN};
pub use time_embed::{Conditioning, OutputScale, TimeEmbed, TimeInput};
pub use unet::{Embedding, Resample, Unet, UnetConfig};
pub use unet_score::UnetScore;
