//! The loop shared by the fixed-step samplers (DDIM, DPM-Solver++, Heun, the
//! generalised reverse SDE): walk a [`TimeGrid`] from `T` to
//! `eps`, one [`GridStep`] per interval, calling the [`SamplerHooks`] after
//! every step. A new fixed-step sampler is one file: a config implementing
//! [`FixedStepConfig`] (grid, steps, end time, its own checks) and a stepper
//! implementing [`GridStep`]; the trait validates and runs it.
//!
//! The steppers are written with the perturbation kernel `x_t = m(t) x_0 +
//! s(t) z` of the SDE ([`Sde::marginal`]), so they work for every schedule:
//! the data prediction is `x_0 = (x + s^2 score) / m` and the noise
//! prediction `-s score`.

use sde_core::{Backend, Coef, NoiseRng, ScoreModel, Sde};

use crate::config::resolve_eps;
use crate::error::{Result, SolverError};
use crate::grid::TimeGrid;
use crate::hooks::{report_step, SampleOutput, SamplerHooks, StepInfo, Update};

/// One step of a fixed-step sampler, from time `t` to `t_next < t` (the same
/// times for every sample). Steppers may keep state across the steps of one
/// run (DPM-Solver++ keeps its previous data prediction).
pub trait GridStep<B: Backend> {
    /// Moves the batch `x` from `t` to `t_next`; returns the update and the
    /// number of score evaluations it cost.
    #[allow(clippy::too_many_arguments)]
    fn step<S, M>(
        &mut self,
        b: &B,
        sde: &S,
        model: &M,
        x: &B::Tensor,
        t: f64,
        t_next: f64,
        rng: &mut NoiseRng,
    ) -> Result<(Update<B::Tensor>, usize)>
    where
        S: Sde + ?Sized,
        M: ScoreModel<B> + ?Sized;
}

/// Runs `stepper` over `times` (decreasing, `times[0] = T`) from the state `x`,
/// with `hooks` after every step. Returns the final state (its noise-free mean
/// when `denoise`) and the score evaluations used.
#[allow(clippy::too_many_arguments)]
pub fn run_grid<B, S, M, G, H>(
    b: &B,
    sde: &S,
    model: &M,
    x: B::Tensor,
    times: &[f64],
    stepper: &mut G,
    denoise: bool,
    rng: &mut NoiseRng,
    hooks: &mut H,
) -> Result<SampleOutput<B::Tensor>>
where
    B: Backend,
    S: Sde + ?Sized,
    M: ScoreModel<B> + ?Sized,
    G: GridStep<B> + ?Sized,
    H: SamplerHooks<B> + ?Sized,
{
    let batch = b.shape(&x).batch();
    let total = times.len().saturating_sub(1);
    let mut state = Update::exact(x);
    let mut nfe = 0;
    for (k, w) in times.windows(2).enumerate() {
        let (t, t_next) = (w[0], w[1]);
        let (update, cost) = stepper.step(b, sde, model, &state.x, t, t_next, rng)?;
        nfe += cost;
        state = hooks.after_update(b, update, &vec![t_next; batch], rng)?;
        let info = StepInfo {
            step: k + 1,
            total: Some(total),
            t: t_next,
            nfe,
        };
        report_step(hooks, info)?;
    }
    let t_end = times.last().copied().unwrap_or(0.0);
    SampleOutput::finish(b, state, denoise, t_end, nfe)
}

/// The score of the whole batch at the common time `t`.
pub(crate) fn score_at<B, M>(b: &B, model: &M, x: &B::Tensor, t: f64) -> Result<B::Tensor>
where
    B: Backend,
    M: ScoreModel<B> + ?Sized,
{
    let batch = b.shape(x).batch();
    Ok(model.score(b, x, &vec![t; batch])?)
}

/// `m(t)` and `s(t)` of the SDE's perturbation kernel, checked to be usable
/// by a data-prediction step (`m > 0`, both finite).
pub(crate) fn kernel<S: Sde + ?Sized>(sde: &S, t: f64) -> Result<(f64, f64)> {
    sde.check_time(t)?;
    let k = sde.marginal(t);
    if k.mean_coef.is_finite() && k.mean_coef > 0.0 && k.std.is_finite() {
        Ok((k.mean_coef, k.std))
    } else {
        Err(SolverError::NonFinite {
            what: "perturbation kernel",
            t,
        })
    }
}

/// `c_x x + c_s score`, with scalar coefficients.
pub(crate) fn combine<B: Backend>(
    b: &B,
    cx: f64,
    x: &B::Tensor,
    cs: f64,
    score: &B::Tensor,
) -> Result<B::Tensor> {
    Ok(b.lincomb(&[
        (Coef::Scalar(cx as f32), x),
        (Coef::Scalar(cs as f32), score),
    ])?)
}

/// `mean + std z` with fresh Gaussian noise `z` (just `mean` when `std = 0`).
pub(crate) fn add_noise<B: Backend>(
    b: &B,
    mean: B::Tensor,
    std: f64,
    rng: &mut NoiseRng,
) -> Result<Update<B::Tensor>> {
    if std == 0.0 {
        return Ok(Update::exact(mean));
    }
    let z = b.gaussian(b.shape(&mean), rng.next_key())?;
    let x = b.lincomb(&[(Coef::Scalar(1.0), &mean), (Coef::Scalar(std as f32), &z)])?;
    Ok(Update { x, x_mean: mean })
}

/// A fixed-step sampler's configuration: its grid, step count and end time,
/// and how to make one run's stepper. The provided methods validate it
/// against an SDE and run it, so each sampler states only what differs.
pub trait FixedStepConfig {
    /// The stepper of one run on backend `B`.
    type Step<B: Backend>: GridStep<B>;

    /// Where the steps go.
    fn grid(&self) -> TimeGrid;
    /// How many steps.
    fn steps(&self) -> usize;
    /// The end time (`None`: the SDE's default).
    fn eps(&self) -> Option<f64>;
    /// Return the last step's noise-free mean.
    fn denoise(&self) -> bool {
        false
    }
    /// Checks the sampler's own settings (the grid is checked by [`Self::times`]).
    fn check(&self) -> Result<()> {
        Ok(())
    }
    /// A fresh stepper for one run.
    fn stepper<B: Backend>(&self) -> Self::Step<B>;

    /// Checks the settings and returns the run's times on `sde`.
    fn times<S: Sde + ?Sized>(&self, sde: &S) -> Result<Vec<f64>> {
        self.check()?;
        self.grid()
            .times(sde, self.steps(), resolve_eps(sde, self.eps())?)
    }

    /// Checks the settings against `sde`.
    fn validate<S: Sde + ?Sized>(&self, sde: &S) -> Result<()> {
        self.times(sde).map(|_| ())
    }

    /// Runs the sampler from the state `x` at `T`.
    fn sample_from<B, S, M, H>(
        &self,
        b: &B,
        sde: &S,
        model: &M,
        x: B::Tensor,
        rng: &mut NoiseRng,
        hooks: &mut H,
    ) -> Result<SampleOutput<B::Tensor>>
    where
        B: Backend,
        S: Sde + ?Sized,
        M: ScoreModel<B> + ?Sized,
        H: SamplerHooks<B> + ?Sized,
    {
        let times = self.times(sde)?;
        let mut stepper = self.stepper::<B>();
        run_grid(
            b,
            sde,
            model,
            x,
            &times,
            &mut stepper,
            self.denoise(),
            rng,
            hooks,
        )
    }
}
