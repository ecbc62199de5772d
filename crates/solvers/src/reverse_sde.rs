//! The generalised reverse-time SDE with a free stochasticity `l >= 0`
//! (Song et al. 2021, appendix D.1; Karras et al. 2022, eq. 6):
//!
//! `dx = [f(x,t) - (1 + l^2)/2 g(t)^2 score(x,t)] dt + l g(t) dw`,
//!
//! whose marginals are the forward SDE's for every `l`: `l = 0` is the
//! probability-flow ODE, `l = 1` the reverse SDE of eq. 6. It is integrated
//! with the Euler–Maruyama method on any time grid (one score evaluation per
//! step); with `l = 1` on the uniform grid of the SDE's `N` steps it is the
//! paper's Euler–Maruyama predictor.

use sde_core::{Backend, NoiseRng, ScoreModel, Sde};
use serde::{Deserialize, Serialize};

use crate::error::{ensure, Result};
use crate::fixed::{add_noise, combine, score_at, FixedStepConfig, GridStep};
use crate::grid::TimeGrid;
use crate::hooks::Update;

/// Settings of the generalised reverse SDE.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReverseSdeConfig {
    /// Number of steps (= score evaluations).
    pub steps: usize,
    /// `l`: 0 is the probability-flow ODE, 1 the reverse SDE.
    pub stochasticity: f64,
    /// Where the steps go (default: uniform in t).
    pub grid: TimeGrid,
    /// End time; `None` uses the SDE's default sampling eps.
    pub eps: Option<f64>,
    /// Return the mean of the last step, without its noise.
    pub denoise: bool,
}

impl Default for ReverseSdeConfig {
    fn default() -> Self {
        ReverseSdeConfig {
            steps: 1000,
            stochasticity: 1.0,
            grid: TimeGrid::Uniform,
            eps: None,
            denoise: true,
        }
    }
}

impl FixedStepConfig for ReverseSdeConfig {
    type Step<B: Backend> = ReverseSdeStep;

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
            self.stochasticity.is_finite() && self.stochasticity >= 0.0,
            "stochasticity",
            self.stochasticity,
            "must be finite and >= 0",
        )
    }
    fn stepper<B: Backend>(&self) -> Self::Step<B> {
        ReverseSdeStep {
            stochasticity: self.stochasticity,
        }
    }
}

/// One Euler–Maruyama step of the generalised reverse SDE.
#[derive(Clone, Copy, Debug)]
pub struct ReverseSdeStep {
    /// `l`.
    pub stochasticity: f64,
}

impl<B: Backend> GridStep<B> for ReverseSdeStep {
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
        sde.check_time(t)?;
        sde.check_time(t_next)?;
        let dt = t_next - t;
        let l = self.stochasticity;
        let g2 = sde.diffusion(t).powi(2);
        let score = score_at(b, model, x, t)?;
        let mean = combine(
            b,
            1.0 + sde.drift_coef(t) * dt,
            x,
            -0.5 * (1.0 + l * l) * g2 * dt,
            &score,
        )?;
        let std = l * g2.sqrt() * (-dt).sqrt();
        Ok((add_noise(b, mean, std, rng)?, 1))
    }
}
