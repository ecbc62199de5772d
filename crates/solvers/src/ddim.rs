//! DDIM (Song, Meng & Ermon 2021, eq. 12), written for any perturbation
//! kernel `x_t = m x_0 + s z`: from `t` to `t' < t`,
//!
//! `x' = m' x_0 + sqrt(s'^2 - c^2) eps + c z`, with `x_0 = (x + s^2 score) / m`,
//! `eps = -s score` and `c = eta (s'/s) sqrt(s^2 - (m/m')^2 s'^2)`.
//!
//! `eta = 0` is the deterministic DDIM sampler (Euler's method on the
//! probability-flow ODE in the variables `x/m` and `s/m`); `eta = 1` draws
//! from the exact Gaussian posterior `q(x_t' | x_t, x_0)`, i.e. ancestral
//! sampling on any grid (DDPM's sampler when the grid is the training one).

use sde_core::{Backend, NoiseRng, ScoreModel, Sde};
use serde::{Deserialize, Serialize};

use crate::error::{ensure, Result};
use crate::fixed::{add_noise, combine, kernel, score_at, FixedStepConfig, GridStep};
use crate::grid::TimeGrid;
use crate::hooks::Update;

/// DDIM settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DdimConfig {
    /// Number of steps (= score evaluations).
    pub steps: usize,
    /// Stochasticity in `[0, 1]`: 0 deterministic, 1 ancestral.
    pub eta: f64,
    /// Where the steps go (default: uniform in t, as DDIM).
    pub grid: TimeGrid,
    /// End time; `None` uses the SDE's default sampling eps.
    pub eps: Option<f64>,
    /// Return the mean of the last step, without its noise (matters for `eta > 0`).
    pub denoise: bool,
}

impl Default for DdimConfig {
    fn default() -> Self {
        DdimConfig {
            steps: 50,
            eta: 0.0,
            grid: TimeGrid::Uniform,
            eps: None,
            denoise: true,
        }
    }
}

impl FixedStepConfig for DdimConfig {
    type Step<B: Backend> = DdimStep;

    fn grid(&self) -> TimeGrid {
        self.grid
    }
    fn steps(&self) -> usize {
        self.steps
    }
    fn eps(&self) -> Option<f64> {
        self.eps
    }
    fn denoise(&self) -> bool {
        self.denoise
    }
    fn check(&self) -> Result<()> {
        ensure(
            self.eta.is_finite() && (0.0..=1.0).contains(&self.eta),
            "eta",
            self.eta,
            "must lie in [0, 1]",
        )
    }
    fn stepper<B: Backend>(&self) -> Self::Step<B> {
        DdimStep { eta: self.eta }
    }
}

/// One DDIM step with stochasticity `eta`.
#[derive(Clone, Copy, Debug)]
pub struct DdimStep {
    /// Stochasticity in `[0, 1]`.
    pub eta: f64,
}

impl<B: Backend> GridStep<B> for DdimStep {
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
        M: ScoreModel<B> + ?Sized,
    {
        let (m, s) = kernel(sde, t)?;
        let (m1, s1) = kernel(sde, t_next)?;
        let score = score_at(b, model, x, t)?;
        // The variance added by the forward SDE between t_next and t.
        let v = sde.transition(t_next, t).std.powi(2);
        let c = if s > 0.0 {
            self.eta * (s1 / s) * v.sqrt()
        } else {
            0.0
        };
        let keep = (s1 * s1 - c * c).max(0.0).sqrt();
        let mean = combine(b, m1 / m, x, m1 * s * s / m - s * keep, &score)?;
        Ok((add_noise(b, mean, c, rng)?, 1))
    }
}
