//! The [`Network`] trait: what every trainable network of this crate (the
//! score UNet, the noise-conditional classifier) provides, so that
//! checkpoints ([`crate::checkpoint`]) and the training loop (the `train`
//! crate) work with any of them.
//!
//! A network is a layer structure rebuilt deterministically from a stored
//! description (its configuration, the image size and a seed), whose
//! parameters live in a flat [`crate::ParamStore`], with a forward pass that
//! returns a cache, an explicit backward pass that accumulates parameter
//! gradients and returns the input gradient, and an inference forward that
//! returns the output alone.

use std::fmt::Debug;

use sde_core::NoiseKey;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{NetBackend, ParamBuilder, Result};

/// The output of [`Network::forward`] and its cache.
pub type Forward<B, N> = (
    <B as sde_core::Backend>::Tensor,
    <N as Network>::Cache<<B as sde_core::Backend>::Tensor>,
);

/// A network with a stored description, parameters in a flat store, a cached
/// forward pass and an explicit backward pass.
pub trait Network: Clone + Debug + Send + Sync + Sized + 'static {
    /// The hyper-parameters (stored as JSON in checkpoints).
    type Config: Clone + Debug + Default + PartialEq + Serialize + DeserializeOwned + Send + Sync;
    /// What the forward pass keeps for the backward pass.
    type Cache<T: Clone + Debug>: Clone + Debug;

    /// The checkpoint format tag, `"<project>/<network>/<version>"`; files
    /// with another tag are refused by name.
    const FORMAT: &'static str;
    /// A short human description for error messages (`"score UNet"`).
    const DESCRIPTION: &'static str;

    /// Builds the layer structure and declares its parameters in `pb`.
    fn build(
        cfg: &Self::Config,
        image_size: usize,
        pb: &mut ParamBuilder,
        seed: u64,
    ) -> Result<Self>;

    /// The configuration.
    fn config(&self) -> &Self::Config;

    /// The image height the network was built for.
    fn image_size(&self) -> usize;

    /// The seed of the initialisation (and of any fixed random features).
    fn seed(&self) -> u64;

    /// Forward pass on a batch `x` with the per-sample network time input;
    /// `dropout_key` switches dropout on (training).
    fn forward<B: NetBackend>(
        &self,
        b: &B,
        params: &B::Tensor,
        x: &B::Tensor,
        time_input: &[f64],
        dropout_key: Option<NoiseKey>,
    ) -> Result<Forward<B, Self>>;

    /// The output of [`Network::forward`] without dropout, for callers that
    /// need no gradient. The default runs the cached forward and drops the
    /// cache; networks override it with a forward that keeps no cache
    /// (bit-identical output, lower peak memory).
    fn forward_inference<B: NetBackend>(
        &self,
        b: &B,
        params: &B::Tensor,
        x: &B::Tensor,
        time_input: &[f64],
    ) -> Result<B::Tensor> {
        Ok(self.forward(b, params, x, time_input, None)?.0)
    }

    /// Backward pass from `dy` (the gradient of a loss with respect to the
    /// output): accumulates parameter gradients into `grads` and returns the
    /// gradient with respect to the input.
    fn backward<B: NetBackend>(
        &self,
        b: &B,
        params: &B::Tensor,
        cache: &Self::Cache<B::Tensor>,
        dy: &B::Tensor,
        grads: &mut B::Tensor,
    ) -> Result<B::Tensor>;
}
