//! The [`ScoreModel`] trait: anything that estimates `grad_x log p_t(x)` for a
//! batch of points at per-sample times. The UNet (`score-net`), the analytic
//! distributions ([`crate::analytic`]) and the conditional wrappers (`cond`)
//! implement it; the samplers (`solvers`) consume it.
//!
//! The vector-Jacobian product of the score is a separate capability,
//! [`ScoreVjp`]: only the exact likelihood (the divergence of the
//! probability-flow drift) needs it, so a wrapper that cannot differentiate
//! its score (a guided or masked model) implements [`ScoreModel`] alone.

use crate::{Backend, Result};

/// A (possibly learned) score function `s(x, t) ≈ grad_x log p_t(x)`.
pub trait ScoreModel<B: Backend> {
    /// The score at each sample of `x` (batch first) for its own time `t[n]`.
    fn score(&self, backend: &B, x: &B::Tensor, t: &[f64]) -> Result<B::Tensor>;

    /// Whether each sample's score depends on nothing but its own `x` and
    /// `t`: not on its position in the batch (per-sample state such as class
    /// labels) nor on the other samples, so that any selection of a batch's
    /// samples may be evaluated as a batch of its own. Samplers then drop
    /// samples they are done with (the adaptive probability-flow ODE
    /// evaluates only the samples still moving). A network whose kernels
    /// round differently at other batch sizes qualifies; its results then
    /// change in the last bits. The default, `false`, keeps the whole batch.
    fn independent_samples(&self) -> bool {
        false
    }
}

/// A score model that can also differentiate its score with respect to the input.
pub trait ScoreVjp<B: Backend>: ScoreModel<B> {
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
    fn independent_samples(&self) -> bool {
        (**self).independent_samples()
    }
}

impl<B: Backend, M: ScoreVjp<B> + ?Sized> ScoreVjp<B> for &M {
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
