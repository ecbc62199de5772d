//! `score-net`: the score network (not yet built; see the issue tracker).
//!
//! It will hold the `NetBackend` trait (conv2d, group norm, linear, attention,
//! up/down-sampling, activations, time embeddings, each with forward and
//! backward), its fast CPU implementation and its wgpu implementation with
//! the WGSL kernels of `shaders/`, the flat parameter store, the DDPM++/NCSN++
//! UNet implementing `sde_core::ScoreModel`, the time-dependent classifier and
//! `safetensors` checkpoints.
