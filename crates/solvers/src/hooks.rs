//! What every sampler shares with its caller: the [`SamplerHooks`] called
//! inside the loop (progress, interruption, a per-step projection), the
//! [`Update`] a step produces and the [`SampleOutput`] a sampler returns.
//!
//! The same hooks serve the predictor–corrector sampler, the fixed-grid
//! samplers (DDIM, DPM-Solver++, Heun, the generalised reverse SDE) and the
//! adaptive probability-flow ODE: a progress bar, Ctrl-C and inpainting's
//! projection are written once and work with all of them.

use std::ops::ControlFlow;

use sde_core::{Backend, NoiseRng};

use crate::error::Result;

/// The result of one update: the new state and its noise-free mean.
#[derive(Clone, Debug)]
pub struct Update<T> {
    /// The state after the update (mean plus noise).
    pub x: T,
    /// The mean of the update, without the final noise (equal to `x` for
    /// deterministic updates).
    pub x_mean: T,
}

impl<T: Clone> Update<T> {
    /// A deterministic update: the mean is the state.
    pub fn exact(x: T) -> Self {
        Update {
            x_mean: x.clone(),
            x,
        }
    }
}

/// Progress of a sampler, reported once per step (a time level of a
/// fixed-grid sampler, an accepted step of the adaptive ODE).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepInfo {
    /// Steps done so far (1 after the first step).
    pub step: usize,
    /// Total number of steps, where known in advance (`None` for the adaptive
    /// ODE, whose step count depends on the tolerances).
    pub total: Option<usize>,
    /// The time reached: the grid time of the step just done, or for the
    /// adaptive ODE the time of the sample furthest from the end.
    pub t: f64,
    /// Batched score evaluations so far.
    pub nfe: usize,
}

/// Hooks into a sampler's loop. Every method has a do-nothing default; `()`
/// implements the trait with all defaults.
pub trait SamplerHooks<B: Backend> {
    /// Called after every update with the new state and its mean at per-sample
    /// times `t`; may replace both (inpainting projects the known pixels
    /// here). `rng` is the sampler's generator. For the fixed-grid samplers it
    /// runs after each predictor and corrector update; for the adaptive ODE
    /// after each accepted step, and only when [`SamplerHooks::projects`]
    /// says so (a projection invalidates the solver's reused derivative, which
    /// then costs one more score evaluation per step).
    fn after_update(
        &mut self,
        _b: &B,
        update: Update<B::Tensor>,
        _t: &[f64],
        _rng: &mut NoiseRng,
    ) -> Result<Update<B::Tensor>> {
        Ok(update)
    }

    /// Whether [`SamplerHooks::after_update`] may change the state. Solvers
    /// that reuse a derivative across steps (RK45's first-same-as-last stage,
    /// DPM-Solver++'s history stays valid) skip the call when this is false.
    fn projects(&self) -> bool {
        false
    }

    /// Called after each step; return `ControlFlow::Break(())` to stop the
    /// sampler (it then fails with
    /// [`SolverError::Interrupted`](crate::SolverError::Interrupted)).
    fn on_step(&mut self, _info: &StepInfo) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

impl<B: Backend> SamplerHooks<B> for () {}

impl<B: Backend, H: SamplerHooks<B> + ?Sized> SamplerHooks<B> for &mut H {
    fn after_update(
        &mut self,
        b: &B,
        update: Update<B::Tensor>,
        t: &[f64],
        rng: &mut NoiseRng,
    ) -> Result<Update<B::Tensor>> {
        (**self).after_update(b, update, t, rng)
    }
    fn projects(&self) -> bool {
        (**self).projects()
    }
    fn on_step(&mut self, info: &StepInfo) -> ControlFlow<()> {
        (**self).on_step(info)
    }
}

/// Reports a finished step to `hooks`; a `Break` becomes
/// [`SolverError::Interrupted`](crate::SolverError::Interrupted). Every
/// sampler's loop ends its step with this.
pub fn report_step<B, H>(hooks: &mut H, info: StepInfo) -> Result<()>
where
    B: Backend,
    H: SamplerHooks<B> + ?Sized,
{
    if hooks.on_step(&info).is_break() {
        Err(crate::SolverError::Interrupted {
            step: info.step,
            total: info.total,
        })
    } else {
        Ok(())
    }
}

/// Progress reporting through a closure: `Progress(|info| bar.set_position(..))`.
pub struct Progress<F>(pub F);

impl<B: Backend, F: FnMut(&StepInfo)> SamplerHooks<B> for Progress<F> {
    fn on_step(&mut self, info: &StepInfo) -> ControlFlow<()> {
        (self.0)(info);
        ControlFlow::Continue(())
    }
}

/// Samples and the cost of producing them.
#[derive(Clone, Debug)]
pub struct SampleOutput<T> {
    /// The samples.
    pub samples: T,
    /// Number of (batched) score-model evaluations.
    pub nfe: usize,
    /// Score evaluations during which each sample was still moving (all equal
    /// to `nfe` for the fixed-grid samplers; smaller for samples the adaptive
    /// ODE finished early).
    pub nfe_per_sample: Vec<usize>,
}

impl<T> SampleOutput<T> {
    /// The output of a fixed-step loop that ended in `state` at time `t_end`
    /// after `nfe` batched evaluations: the state, or its noise-free mean when
    /// `denoise`, checked finite (else [`SolverError::NonFinite`](crate::SolverError::NonFinite)).
    pub fn finish<B: Backend<Tensor = T>>(
        b: &B,
        state: Update<T>,
        denoise: bool,
        t_end: f64,
        nfe: usize,
    ) -> Result<Self> {
        let samples = if denoise { state.x_mean } else { state.x };
        b.check_finite(&samples, "samples")
            .map_err(|_| crate::SolverError::NonFinite {
                what: "samples",
                t: t_end,
            })?;
        let batch = b.shape(&samples).batch();
        Ok(SampleOutput {
            samples,
            nfe,
            nfe_per_sample: vec![nfe; batch],
        })
    }
}
