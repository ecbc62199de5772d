//! DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", algorithm 2): the
//! second-order multistep solver of the probability-flow ODE in its
//! data-prediction form, for any perturbation kernel `x_t = m x_0 + s z`.
//!
//! With `lambda = ln(m / s)` and `h = lambda' - lambda`, one step from `t` to
//! `t' < t` is
//!
//! `x' = (s'/s) x - m' (e^(-h) - 1) D`,
//!
//! where `D = x_0(t)` on the first step (DPM-Solver++1, which is DDIM) and
//! `D = (1 + 1/(2r)) x_0(t) - 1/(2r) x_0(t_prev)`, `r = h_prev / h`, after it.
//! Each step costs one score evaluation. As in the reference implementation,
//! runs of fewer than 15 steps take a first-order last step, which is more
//! stable at very few steps.

use sde_core::{Backend, Coef, NoiseRng, ScoreModel, Sde};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::fixed::{combine, kernel, score_at, FixedStepConfig, GridStep};
use crate::grid::TimeGrid;
use crate::hooks::Update;

/// DPM-Solver++(2M) settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DpmSolverConfig {
    /// Number of steps (= score evaluations).
    pub steps: usize,
    /// Where the steps go (default: uniform in log-SNR, as DPM-Solver for
    /// low-resolution images).
    pub grid: TimeGrid,
    /// End time; `None` uses the SDE's default sampling eps.
    pub eps: Option<f64>,
    /// Take a first-order last step when `steps < 15` (the reference default).
    pub lower_order_final: bool,
}

impl Default for DpmSolverConfig {
    fn default() -> Self {
        DpmSolverConfig {
            steps: 20,
            grid: TimeGrid::LogSnr,
            eps: None,
            lower_order_final: true,
        }
    }
}

impl FixedStepConfig for DpmSolverConfig {
    type Step<B: Backend> = DpmSolverStep<B::Tensor>;

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
        DpmSolverStep {
            steps: self.steps,
            lower_order_final: self.lower_order_final,
            done: 0,
            prev: None,
        }
    }
}

/// The multistep state of one DPM-Solver++(2M) run.
#[derive(Clone, Debug)]
pub struct DpmSolverStep<T> {
    /// Steps in the run.
    pub steps: usize,
    /// First-order last step for short runs.
    pub lower_order_final: bool,
    /// Steps done so far.
    pub done: usize,
    /// The previous data prediction and its step `h`.
    pub prev: Option<(T, f64)>,
}

/// `lambda(t) = ln(m / s)`.
fn lambda(m: f64, s: f64) -> f64 {
    m.ln() - s.ln()
}

impl<B: Backend> GridStep<B> for DpmSolverStep<B::Tensor> {
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
        let score = score_at(b, model, x, t)?;
        let x0 = combine(b, 1.0 / m, x, s * s / m, &score)?;
        let h = lambda(m1, s1) - lambda(m, s);
        let a = -m1 * (-h).exp_m1();
        self.done += 1;
        let last = self.done == self.steps;
        let first_order = last && self.lower_order_final && self.steps < 15;
        let next = match self.prev.take() {
            Some((x0_prev, h_prev)) if !first_order => {
                let r = h_prev / h;
                let c_cur = a * (1.0 + 0.5 / r);
                let c_prev = -a * 0.5 / r;
                b.lincomb(&[
                    (Coef::Scalar((s1 / s) as f32), x),
                    (Coef::Scalar(c_cur as f32), &x0),
                    (Coef::Scalar(c_prev as f32), &x0_prev),
                ])?
            }
            _ => b.lincomb(&[
                (Coef::Scalar((s1 / s) as f32), x),
                (Coef::Scalar(a as f32), &x0),
            ])?,
        };
        self.prev = Some((x0, h));
        Ok((Update::exact(next), 1))
    }
}
