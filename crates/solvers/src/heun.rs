//! Heun's second-order method on the probability-flow ODE (Karras et al. 2022,
//! "EDM", algorithm 1 with `S_churn = 0`), for any perturbation kernel
//! `x_t = m x_0 + s z`.
//!
//! In the variables `y = x / m` and `sigma = s / m` the probability-flow ODE is
//! `dy / dsigma = (y - x_0(y)) / sigma = -s score`, whatever the schedule
//! (EDM's eq. 4 with the schedule factored out). A step from `t` to `t' < t`
//! is an Euler step in `sigma` followed by the trapezoidal correction:
//!
//! `y' = y + (sigma' - sigma) d`, `d = -s score(x, t)`;
//! `y'' = y + (sigma' - sigma) (d + d') / 2`, `d' = -s' score(m' y', t')`;
//!
//! and `x'' = m' y''`. Two score evaluations per step; the last step is
//! corrected too, since the grid ends at `eps > 0`, not at `sigma = 0`.

use sde_core::{Backend, Coef, NoiseRng, ScoreModel, Sde};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::fixed::{combine, kernel, score_at, FixedStepConfig, GridStep};
use crate::grid::TimeGrid;
use crate::hooks::Update;

/// Settings of Heun's method.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeunConfig {
    /// Number of steps (2 score evaluations each).
    pub steps: usize,
    /// Where the steps go (default: EDM's rho = 7 spacing in sigma).
    pub grid: TimeGrid,
    /// End time; `None` uses the SDE's default sampling eps.
    pub eps: Option<f64>,
}

impl Default for HeunConfig {
    fn default() -> Self {
        HeunConfig {
            steps: 18,
            grid: TimeGrid::Edm { rho: 7.0 },
            eps: None,
        }
    }
}

impl FixedStepConfig for HeunConfig {
    type Step<B: Backend> = HeunStep;

    fn grid(&self) -> TimeGrid {
        self.grid
    }
    fn steps(&self) -> usize {
        self.steps
    }
    fn eps(&self) -> Option<f64> {
        self.eps
    }
    fn stepper<B: Backend>(&self) -> Self::Step<B> {
        HeunStep
    }
}

/// One step of Heun's method.
#[derive(Clone, Copy, Debug, Default)]
pub struct HeunStep;

impl<B: Backend> GridStep<B> for HeunStep {
    fn step<S, M>(
        &mut self,
        b: &B,
        sde: &S,
        model: &M,
        x: &B::Tensor,
        t: f64,
        t_next: f64,
        _rng: &mut NoiseRng,
    ) -> Result<(Update<B::Tensor>, usize)>
    where
        S: Sde + ?Sized,
        M: ScoreModel<B> + ?Sized,
    {
        let (m, s) = kernel(sde, t)?;
        let (m1, s1) = kernel(sde, t_next)?;
        let dsigma = s1 / m1 - s / m;
        let score = score_at(b, model, x, t)?;
        // Euler: x' = m' (x/m + dsigma (-s score)).
        let euler = combine(b, m1 / m, x, -m1 * dsigma * s, &score)?;
        let score1 = score_at(b, model, &euler, t_next)?;
        let next = b.lincomb(&[
            (Coef::Scalar((m1 / m) as f32), x),
            (Coef::Scalar((-0.5 * m1 * dsigma * s) as f32), &score),
            (Coef::Scalar((-0.5 * m1 * dsigma * s1) as f32), &score1),
        ])?;
        Ok((Update::exact(next), 2))
    }
}
