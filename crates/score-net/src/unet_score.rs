//! [`UnetScore`]: the UNet as a [`ScoreModel`] for an SDE (Song et al. 2021,
//! section 4 and appendix H), conditioned as its configuration records
//! ([`Conditioning`]): by default VP / sub-VP networks see `999 t` and
//! predict noise (`score = -out / s(t)`); VE networks see `sigma(t)`
//! (positional) or `ln sigma(t)` (Fourier) and are scaled
//! (`score = out / sigma(t)`). Both
//! the parameter gradients (training) and the input vector-Jacobian product
//! (likelihoods, [`ScoreVjp`]) come from one explicit backward pass.

use sde_core::{Backend, Coef, NoiseKey, ScoreModel, ScoreVjp, Sde};

use crate::checkpoint::{self, Checkpoint, StorageDtype};
use crate::params::{ParamBuilder, ParamStore};
use crate::time_embed::Conditioning;
use crate::unet::{Unet, UnetCache, UnetConfig};
use crate::{NetBackend, Result};

/// The UNet as a score model for an SDE (Song et al. 2021, section 4), with
/// the conditioning of its configuration ([`UnetConfig::conditioning`]): by
/// default VP / sub-VP (and the other schedules) see `999 t` and predict
/// noise (`score = -out / s(t)`); VE nets see `sigma(t)` (positional) or
/// `ln sigma(t)` (Fourier) and are scaled (`score = out / sigma(t)`).
#[derive(Clone, Debug)]
pub struct UnetScore<B: Backend, S> {
    /// The network structure.
    pub net: Unet,
    /// Its parameters.
    pub store: ParamStore<B>,
    /// The SDE the network is trained for.
    pub sde: S,
}

impl<B: NetBackend, S: Sde> UnetScore<B, S> {
    /// A freshly initialised network for `image_size x image_size` images.
    pub fn new(b: &B, cfg: &UnetConfig, image_size: usize, sde: S, seed: u64) -> Result<Self> {
        let mut pb = ParamBuilder::new();
        let net = Unet::new(cfg, image_size, &mut pb, seed)?;
        let store = pb.build(b, seed)?;
        Ok(UnetScore { net, store, sde })
    }

    /// The network's conditioning (time input and output scale).
    pub fn conditioning(&self) -> Conditioning {
        self.net.config().conditioning(self.sde.kind())
    }

    /// The network's time input for each `t`.
    pub fn time_input(&self, t: &[f64]) -> Vec<f64> {
        self.conditioning().time_input.of(&self.sde, t)
    }

    /// Per-sample factor `c` with `score = c * out`.
    pub fn output_scale(&self, t: &[f64]) -> Vec<f32> {
        let out = self.conditioning().output;
        t.iter()
            .map(|&t| out.factor(self.sde.marginal(t).std) as f32)
            .collect()
    }

    /// Forward pass returning the score and the cache for [`UnetScore::backward_score`].
    pub fn score_with_cache(
        &self,
        b: &B,
        x: &B::Tensor,
        t: &[f64],
        dropout_key: Option<NoiseKey>,
    ) -> Result<(B::Tensor, UnetCache<B::Tensor>)> {
        self.score_from(b, x, t, |time_input| {
            self.net
                .forward(b, self.store.params(), x, time_input, dropout_key)
        })
    }

    /// The score without dropout and without a cache (the network's
    /// [`Unet::forward_inference`]): bit for bit the score of
    /// [`UnetScore::score_with_cache`] with no dropout key, at a fraction of
    /// its peak memory. What [`ScoreModel::score`] (sampling) runs.
    pub fn score_inference(&self, b: &B, x: &B::Tensor, t: &[f64]) -> Result<B::Tensor> {
        let (score, ()) = self.score_from(b, x, t, |time_input| {
            let out = self
                .net
                .forward_inference(b, self.store.params(), x, time_input)?;
            Ok((out, ()))
        })?;
        Ok(score)
    }

    /// Checks the times, runs `forward` (the network on the time inputs,
    /// returning its output and anything else) and scales the output into
    /// the score.
    fn score_from<C>(
        &self,
        b: &B,
        x: &B::Tensor,
        t: &[f64],
        forward: impl FnOnce(&[f64]) -> Result<(B::Tensor, C)>,
    ) -> Result<(B::Tensor, C)> {
        sde_core::SdeExt::check_times(&self.sde, t, b.shape(x).batch())?;
        let (out, cache) = forward(&self.time_input(t))?;
        let c = self.output_scale(t);
        Ok((b.scale(&out, Coef::PerSample(&c))?, cache))
    }

    /// Backward from `dscore` (the gradient of a loss with respect to the
    /// score): accumulates parameter gradients into `grads` and returns the
    /// input gradient.
    pub fn backward_score(
        &self,
        b: &B,
        cache: &UnetCache<B::Tensor>,
        t: &[f64],
        dscore: &B::Tensor,
        grads: &mut B::Tensor,
    ) -> Result<B::Tensor> {
        let c = self.output_scale(t);
        let dout = b.scale(dscore, Coef::PerSample(&c))?;
        self.net
            .backward(b, self.store.params(), cache, &dout, grads)
    }
}

impl<B: NetBackend, S: Sde> ScoreModel<B> for UnetScore<B, S> {
    fn score(&self, b: &B, x: &B::Tensor, t: &[f64]) -> sde_core::Result<B::Tensor> {
        Ok(self.score_inference(b, x, t)?)
    }

    /// No per-sample state; the layers treat samples separately (group norm
    /// per sample, attention within a sample). The CPU `linear` layers'
    /// `gemm` rounds differently for a few rows, so at small batch sizes a
    /// sample's score can change in the last bits.
    fn independent_samples(&self) -> bool {
        true
    }
}

impl<B: NetBackend, S: Sde> ScoreVjp<B> for UnetScore<B, S> {
    fn score_and_vjp(
        &self,
        b: &B,
        x: &B::Tensor,
        t: &[f64],
        v: &B::Tensor,
    ) -> sde_core::Result<(B::Tensor, B::Tensor)> {
        let (score, cache) = self.score_with_cache(b, x, t, None)?;
        let mut scratch = b.zeros(b.shape(self.store.grads()))?;
        let vjp = self.backward_score(b, &cache, t, v, &mut scratch)?;
        Ok((score, vjp))
    }
}

impl<B: NetBackend, S: Sde> UnetScore<B, S> {
    /// Writes the parameters (and the configuration) to a `safetensors` checkpoint.
    pub fn save(
        &self,
        b: &B,
        path: &std::path::Path,
        dtype: StorageDtype,
        extra: &std::collections::HashMap<String, String>,
    ) -> Result<()> {
        checkpoint::save_params(b, path, &self.net, &self.store, dtype, extra)
    }

    /// A model rebuilt from a checkpoint's configuration and parameters.
    pub fn from_checkpoint(b: &B, ck: &Checkpoint<Unet>, sde: S) -> Result<Self> {
        let (net, store) = checkpoint::restore(b, ck, "params")?;
        Ok(UnetScore { net, store, sde })
    }

    /// Loads parameters from `path` into this model; the file's network
    /// configuration, image size and seed must equal this model's.
    pub fn load_params(&mut self, b: &B, path: &std::path::Path) -> Result<()> {
        let ck = checkpoint::load::<Unet>(path)?;
        let params = checkpoint::matching_params(path, &ck, &self.net)?;
        self.store.set_params_from_host(b, params)
    }
}
