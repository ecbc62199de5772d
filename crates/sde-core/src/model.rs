//! The [`ScoreModel`] trait: anything that estimates `grad_x log p_t(x)` for a
//! batch of points at per-sample times. The UNet (`score-net`), the analytic
//! distributions ([`crate::analytic`]) and the conditional wrappers (`cond`)
//! implement it; the samplers and the likelihood (`solvers`) consume it.

use crate::{Backend, Result};

/// A (possibly learned) score function `s(x, t) ≈ grad_x log p_t(x)`.
pub trait ScoreModel<B: Backend> {
    /// The score at each sample of `x` (batch first) for its own time `t[n]`.
    fn score(&self, backend: &B, x: &B::Tensor, t: &[f64]) -> Result<B::Tensor>;

    /// The score and the vector-Jacobian product `v^T (d s / d x)` at each
    /// sample (the Jacobian is block-diagonal over the batch). One call costs
    /// one forward and one backward pass; the likelihood's divergence estimator
    /// uses it (Hutchinson: one call per evaluation; exact: one per dimension).
    fn score_and_vjp(
        &self,
        backend: &B,
        x: &B::Tensor,
        t: &[f64],
        v: &B::Tensor,
    ) -> Result<(B::Tensor, B::Tensor)>;
}

impl<B: Backend, M: ScoreModel<B> + ?Sized> ScoreModel<B> for &M {
    fn score(&self, backend: &B, x: &B::Tensor, t: &[f64]) -> Result<B::Tensor> {
        (**self).score(backend, x, t)
    }

    fn score_and_vjp(
        &self,
        backend: &B,
        x: &B::Tensor,
        t: &[f64],
        v: &B::Tensor,
    ) -> Result<(B::Tensor, B::Tensor)> {
        (**self).score_and_vjp(backend, x, t, v)
    }
}
