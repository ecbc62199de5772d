//! Class-conditional sampling with a time-dependent classifier (Song et al.
//! 2021, section 5 and appendix I.1): the conditional score
//! `grad_x log p_t(x | y) = grad_x log p_t(x) + grad_x log p_t(y | x)`, with
//! the classifier term multiplied by a guidance scale `w` (`w = 1` is the
//! paper's conditional score; `w > 1` sharpens the class, `w = 0` ignores it).
//!
//! [`Guided`] wraps any [`ScoreModel`] and any [`TimeClassifier`] into a
//! [`ScoreModel`], so every sampler of `solvers` (predictor–corrector and
//! the probability-flow ODE) samples the guided distribution unchanged.

use sde_core::{Backend, Coef, ScoreModel};

use crate::error::{ensure, Result};

/// A noise-conditional classifier `p_t(y | x(t))`.
pub trait TimeClassifier<B: Backend> {
    /// Number of classes `K` (labels lie in `0..K`).
    fn num_classes(&self) -> usize;

    /// For each sample `n` of `x` at its time `t[n]`: `log p_t(labels[n] | x_n)`
    /// and the input gradient `grad_x log p_t(labels[n] | x_n)` (the shape of `x`).
    fn log_prob_and_grad(
        &self,
        b: &B,
        x: &B::Tensor,
        t: &[f64],
        labels: &[u32],
    ) -> sde_core::Result<(Vec<f64>, B::Tensor)>;
}

impl<B: Backend, C: TimeClassifier<B> + ?Sized> TimeClassifier<B> for &C {
    fn num_classes(&self) -> usize {
        (**self).num_classes()
    }
    fn log_prob_and_grad(
        &self,
        b: &B,
        x: &B::Tensor,
        t: &[f64],
        labels: &[u32],
    ) -> sde_core::Result<(Vec<f64>, B::Tensor)> {
        (**self).log_prob_and_grad(b, x, t, labels)
    }
}

/// The guided score `s(x, t) + w grad_x log p_t(y | x)`, one class per sample.
#[derive(Clone, Debug)]
pub struct Guided<M, C> {
    model: M,
    classifier: C,
    labels: Vec<u32>,
    scale: f64,
}

impl<M, C> Guided<M, C> {
    /// Guides `model` towards `labels[n]` for sample `n` with scale `w`. The
    /// labels must lie below the classifier's class count; `w` must be finite
    /// and non-negative.
    pub fn new<B: Backend>(model: M, classifier: C, labels: Vec<u32>, scale: f64) -> Result<Self>
    where
        C: TimeClassifier<B>,
    {
        ensure(!labels.is_empty(), "labels", || "no labels given".into())?;
        let k = classifier.num_classes();
        if let Some(bad) = labels.iter().find(|&&l| l as usize >= k) {
            return Err(crate::CondError::Invalid {
                what: "labels",
                reason: format!("class {bad} is not below the classifier's {k} classes"),
            });
        }
        ensure(scale.is_finite() && scale >= 0.0, "guidance scale", || {
            format!("{scale} must be finite and >= 0")
        })?;
        Ok(Guided {
            model,
            classifier,
            labels,
            scale,
        })
    }

    /// The class of each sample.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// The guidance scale `w`.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The same guidance for another batch of labels (e.g. the next chunk of a
    /// large sample).
    pub fn with_labels(&self, labels: Vec<u32>) -> Self
    where
        M: Clone,
        C: Clone,
    {
        Guided {
            model: self.model.clone(),
            classifier: self.classifier.clone(),
            labels,
            scale: self.scale,
        }
    }
}

impl<B: Backend, M: ScoreModel<B>, C: TimeClassifier<B>> ScoreModel<B> for Guided<M, C> {
    fn score(&self, b: &B, x: &B::Tensor, t: &[f64]) -> sde_core::Result<B::Tensor> {
        let n = b.shape(x).batch();
        if self.labels.len() != n {
            return Err(sde_core::Error::BatchMismatch {
                op: "guided score (labels)",
                expected: n,
                got: self.labels.len(),
            });
        }
        let score = self.model.score(b, x, t)?;
        if self.scale == 0.0 {
            return Ok(score);
        }
        let (_, grad) = self.classifier.log_prob_and_grad(b, x, t, &self.labels)?;
        b.lincomb(&[
            (Coef::Scalar(1.0), &score),
            (Coef::Scalar(self.scale as f32), &grad),
        ])
    }
}

/// The trained classifier of `score-net` as a [`TimeClassifier`].
impl<B: score_net::NetBackend, S: sde_core::Sde> TimeClassifier<B>
    for score_net::ClassifierModel<B, S>
{
    fn num_classes(&self) -> usize {
        score_net::ClassifierModel::num_classes(self)
    }

    fn log_prob_and_grad(
        &self,
        b: &B,
        x: &B::Tensor,
        t: &[f64],
        labels: &[u32],
    ) -> sde_core::Result<(Vec<f64>, B::Tensor)> {
        score_net::ClassifierModel::log_prob_and_grad(self, b, x, t, labels).map_err(|e| match e {
            score_net::NetError::Core(e) => e,
            other => sde_core::Error::Model(Box::new(other)),
        })
    }
}
