//! [`ClassifierModel`]: the noise-conditional classifier
//! ([`crate::classifier`]) with its parameters and the SDE whose perturbed
//! data it classifies — `p_t(y | x(t))` at SDE times, the form guidance
//! needs (Song et al. 2021, section 5) — and the classifier's checkpoint
//! format (its [`Network`] implementation).

use sde_core::{Backend, NoiseKey, Sde, SdeExt, Shape};

use crate::checkpoint::{self, Checkpoint, StorageDtype};
use crate::classifier::{Classifier, ClassifierCache, ClassifierConfig};
use crate::network::{Forward, Network};
use crate::params::{ParamBuilder, ParamStore};
use crate::{NetBackend, Result};

/// The format tag of classifier checkpoints (see [`crate::checkpoint`]).
pub const FORMAT: &str = "score-sde-rs/classifier/1";

impl Network for Classifier {
    type Config = ClassifierConfig;
    type Cache<T: Clone + std::fmt::Debug> = ClassifierCache<T>;
    const FORMAT: &'static str = FORMAT;
    const DESCRIPTION: &'static str = "noise-conditional classifier";

    fn build(
        cfg: &ClassifierConfig,
        image_size: usize,
        pb: &mut ParamBuilder,
        seed: u64,
    ) -> Result<Self> {
        Classifier::new(cfg, image_size, pb, seed)
    }

    fn config(&self) -> &ClassifierConfig {
        Classifier::config(self)
    }

    fn image_size(&self) -> usize {
        Classifier::image_size(self)
    }

    fn seed(&self) -> u64 {
        Classifier::seed(self)
    }

    fn forward<B: NetBackend>(
        &self,
        b: &B,
        params: &B::Tensor,
        x: &B::Tensor,
        time_input: &[f64],
        dropout_key: Option<NoiseKey>,
    ) -> Result<Forward<B, Self>> {
        Classifier::forward(self, b, params, x, time_input, dropout_key)
    }

    fn forward_inference<B: NetBackend>(
        &self,
        b: &B,
        params: &B::Tensor,
        x: &B::Tensor,
        time_input: &[f64],
    ) -> Result<B::Tensor> {
        Classifier::forward_inference(self, b, params, x, time_input)
    }

    fn backward<B: NetBackend>(
        &self,
        b: &B,
        params: &B::Tensor,
        cache: &ClassifierCache<B::Tensor>,
        dy: &B::Tensor,
        grads: &mut B::Tensor,
    ) -> Result<B::Tensor> {
        Classifier::backward(self, b, params, cache, dy, grads)
    }
}

/// A classifier of data perturbed by an SDE: the network, its parameters and the SDE.
#[derive(Clone, Debug)]
pub struct ClassifierModel<B: Backend, S> {
    /// The network structure.
    pub net: Classifier,
    /// Its parameters.
    pub store: ParamStore<B>,
    /// The SDE whose perturbed data the classifier sees.
    pub sde: S,
}

impl<B: NetBackend, S: Sde> ClassifierModel<B, S> {
    /// A freshly initialised classifier for `image_size x image_size` images.
    pub fn new(
        b: &B,
        cfg: &ClassifierConfig,
        image_size: usize,
        sde: S,
        seed: u64,
    ) -> Result<Self> {
        let mut pb = ParamBuilder::new();
        let net = Classifier::new(cfg, image_size, &mut pb, seed)?;
        let store = pb.build(b, seed)?;
        Ok(ClassifierModel { net, store, sde })
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.net.num_classes()
    }

    /// The network's time input for SDE times `t`.
    pub fn time_input(&self, t: &[f64]) -> Vec<f64> {
        self.net.time_input(&self.sde, t)
    }

    /// The logits `[N, K]` of `x` at times `t` (no dropout).
    pub fn logits(&self, b: &B, x: &B::Tensor, t: &[f64]) -> Result<B::Tensor> {
        self.sde.check_times(t, b.shape(x).batch())?;
        self.net
            .forward_inference(b, self.store.params(), x, &self.time_input(t))
    }

    /// The pooled features `[N, C]` of `x` at times `t` (the head's input;
    /// no dropout).
    pub fn features(&self, b: &B, x: &B::Tensor, t: &[f64]) -> Result<B::Tensor> {
        self.sde.check_times(t, b.shape(x).batch())?;
        let (_, cache) = self
            .net
            .forward(b, self.store.params(), x, &self.time_input(t), None)?;
        Ok(cache.pooled().clone())
    }

    /// The most probable class of each sample of `x` at times `t`.
    pub fn predict(&self, b: &B, x: &B::Tensor, t: &[f64]) -> Result<Vec<u32>> {
        let k = self.num_classes();
        let logits = b.to_vec(&self.logits(b, x, t)?)?;
        Ok(logits
            .chunks_exact(k)
            .map(|row| {
                let mut best = 0;
                for (j, v) in row.iter().enumerate() {
                    if *v > row[best] {
                        best = j;
                    }
                }
                best as u32
            })
            .collect())
    }

    /// `log p_t(labels[n] | x_n)` and its input gradient (the guidance term).
    pub fn log_prob_and_grad(
        &self,
        b: &B,
        x: &B::Tensor,
        t: &[f64],
        labels: &[u32],
    ) -> Result<(Vec<f64>, B::Tensor)> {
        self.sde.check_times(t, b.shape(x).batch())?;
        self.net
            .log_prob_and_input_grad(b, self.store.params(), x, &self.time_input(t), labels)
    }

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

    /// A model rebuilt from a checkpoint, with the parameters of `buffer`
    /// (`"params"`, or `"ema"` for a training checkpoint's average).
    pub fn from_checkpoint(
        b: &B,
        ck: &Checkpoint<Classifier>,
        buffer: &str,
        sde: S,
    ) -> Result<Self> {
        let (net, store) = checkpoint::restore(b, ck, buffer)?;
        Ok(ClassifierModel { net, store, sde })
    }

    /// The shape of a batch of `n` images this classifier takes.
    pub fn input_shape(&self, n: usize) -> Result<Shape> {
        let c = self.net.config();
        let s = self.net.image_size();
        Ok(Shape::new([n, c.in_channels, s, s])?)
    }
}
