//! SDEs from any noise schedule: give the perturbation kernel
//! `x_t = m(t) x_0 + s(t) z` as two differentiable functions and get the
//! forward SDE that has it (Song et al. 2021, appendix B; Kingma et al. 2021):
//!
//! `f(x, t) = a(t) x` with `a = m' / m`, and `g(t)^2 = (s^2)' - 2 a s^2`.
//!
//! (Differentiating `Var[x_t] = s^2` along `dx = a x dt + g dw` gives
//! `(s^2)' = 2 a s^2 + g^2`.) VE, VP and sub-VP satisfy the same relations
//! with their closed forms (their own types keep those, bit for bit; the
//! tests check the relations for all five); this module adds
//! [`ScheduleSde`], generic over a [`Kernel`], with two instances:
//!
//! - [`CosineKernel`]: `m = cos(theta)`, `s = sin(theta)` with `theta` linear
//!   in `t`, i.e. the cosine schedule of Nichol & Dhariwal (2021) written as a
//!   log-SNR `lambda = -2 ln tan(theta)` between `logsnr_max` at `t = 0` and
//!   `logsnr_min` at `t = 1` (variance preserving: `m^2 + s^2 = 1`);
//! - [`LinearKernel`]: the rectified-flow / linear-interpolation path
//!   `m = 1 - (1 - m_T) t`, `s = t` (Liu et al. 2022; Lipman et al. 2022),
//!   with a small `m_T = m(1) > 0` so that the drift stays finite at `T`.
//!
//! A user's own schedule is a type implementing [`Kernel`]: wrap it in
//! [`ScheduleSde`] and every sampler, the likelihood and training accept it.

use crate::error::ensure_param;
use crate::sde::{Marginal, Sde, SdeKind};
use crate::Result;

/// A differentiable perturbation kernel `x_t = m(t) x_0 + s(t) z` on `[0, 1]`,
/// with `m > 0` and `s(t) / m(t)` increasing.
pub trait Kernel: Send + Sync + std::fmt::Debug {
    /// The family reported by [`Sde::kind`].
    fn kind(&self) -> SdeKind;
    /// `m(t)`.
    fn mean_coef(&self, t: f64) -> f64;
    /// `s(t)`.
    fn std(&self, t: f64) -> f64;
    /// `a(t) = m'(t) / m(t)`.
    fn log_mean_derivative(&self, t: f64) -> f64;
    /// `(s^2)'(t)`.
    fn var_derivative(&self, t: f64) -> f64;
    /// The prior's standard deviation (`s(1)` rounded to the usual choice).
    fn prior_std(&self) -> f64 {
        1.0
    }
    /// The default end time of the samplers.
    fn default_sampling_eps(&self) -> f64 {
        1e-3
    }
}

/// The forward SDE of a [`Kernel`]: drift `a = m'/m`, diffusion
/// `g = sqrt((s^2)' - 2 a s^2)`. `num_steps` is the `N` of the
/// predictor–corrector sampler's grid (the fast samplers choose their own).
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleSde<K> {
    kernel: K,
    num_steps: usize,
}

impl<K: Kernel> ScheduleSde<K> {
    /// The SDE of `kernel` with `N = num_steps` in `1..=MAX_STEPS`.
    pub fn new(kernel: K, num_steps: usize) -> Result<Self> {
        crate::sde::check_steps(num_steps)?;
        Ok(ScheduleSde { kernel, num_steps })
    }

    /// The kernel.
    pub fn kernel(&self) -> &K {
        &self.kernel
    }
}

impl<K: Kernel> Sde for ScheduleSde<K> {
    fn kind(&self) -> SdeKind {
        self.kernel.kind()
    }
    fn num_steps(&self) -> usize {
        self.num_steps
    }
    fn drift_coef(&self, t: f64) -> f64 {
        self.kernel.log_mean_derivative(t)
    }
    fn diffusion(&self, t: f64) -> f64 {
        let s = self.kernel.std(t);
        let g2 = self.kernel.var_derivative(t) - 2.0 * self.kernel.log_mean_derivative(t) * s * s;
        g2.max(0.0).sqrt()
    }
    fn marginal(&self, t: f64) -> Marginal {
        Marginal {
            mean_coef: self.kernel.mean_coef(t),
            std: self.kernel.std(t),
        }
    }
    fn prior_std(&self) -> f64 {
        self.kernel.prior_std()
    }
    fn default_sampling_eps(&self) -> f64 {
        self.kernel.default_sampling_eps()
    }
}

/// The cosine schedule as a kernel: `theta(t) = theta_0 + t (theta_1 - theta_0)`,
/// `m = cos(theta)`, `s = sin(theta)`, with `tan(theta_0) = exp(-logsnr_max / 2)`
/// and `tan(theta_1) = exp(-logsnr_min / 2)` (log-SNR `ln(m^2 / s^2)`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CosineKernel {
    theta0: f64,
    theta1: f64,
}

impl CosineKernel {
    /// The kernel with log-SNR `logsnr_max` at `t = 0` and `logsnr_min` at
    /// `t = 1` (finite, `logsnr_min < logsnr_max`). Nichol & Dhariwal's offset
    /// `s = 0.008` corresponds to `logsnr_max = 8.77`; `logsnr_min = -10`
    /// leaves `m(1) = 0.0067`, like their clipping of `beta` at 0.999.
    pub fn new(logsnr_min: f64, logsnr_max: f64) -> Result<Self> {
        ensure_param(
            logsnr_max.is_finite(),
            "logsnr_max",
            logsnr_max,
            "must be finite",
        )?;
        ensure_param(
            logsnr_min.is_finite() && logsnr_min < logsnr_max,
            "logsnr_min",
            logsnr_min,
            format!("must be finite and < logsnr_max = {logsnr_max}"),
        )?;
        Ok(CosineKernel {
            theta0: (-0.5 * logsnr_max).exp().atan(),
            theta1: (-0.5 * logsnr_min).exp().atan(),
        })
    }

    fn theta(&self, t: f64) -> f64 {
        self.theta0 + t * (self.theta1 - self.theta0)
    }
}

impl Kernel for CosineKernel {
    fn kind(&self) -> SdeKind {
        SdeKind::Cosine
    }
    fn mean_coef(&self, t: f64) -> f64 {
        self.theta(t).cos()
    }
    fn std(&self, t: f64) -> f64 {
        self.theta(t).sin()
    }
    fn log_mean_derivative(&self, t: f64) -> f64 {
        -self.theta(t).tan() * (self.theta1 - self.theta0)
    }
    fn var_derivative(&self, t: f64) -> f64 {
        (2.0 * self.theta(t)).sin() * (self.theta1 - self.theta0)
    }
}

/// The rectified-flow (linear interpolation) kernel `m = 1 - (1 - m_T) t`,
/// `s = t`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearKernel {
    mean_at_t_max: f64,
}

impl LinearKernel {
    /// The kernel with `m(1) = mean_at_t_max` in `(0, 1)` (rectified flow is
    /// the limit `m(1) -> 0`, where the drift `-1/(1 - t)` blows up at `T`).
    pub fn new(mean_at_t_max: f64) -> Result<Self> {
        ensure_param(
            mean_at_t_max.is_finite() && mean_at_t_max > 0.0 && mean_at_t_max < 1.0,
            "mean_at_t_max",
            mean_at_t_max,
            "must lie in (0, 1)",
        )?;
        Ok(LinearKernel { mean_at_t_max })
    }
}

impl Kernel for LinearKernel {
    fn kind(&self) -> SdeKind {
        SdeKind::RectifiedFlow
    }
    fn mean_coef(&self, t: f64) -> f64 {
        1.0 - (1.0 - self.mean_at_t_max) * t
    }
    fn std(&self, t: f64) -> f64 {
        t
    }
    fn log_mean_derivative(&self, t: f64) -> f64 {
        -(1.0 - self.mean_at_t_max) / self.mean_coef(t)
    }
    fn var_derivative(&self, t: f64) -> f64 {
        2.0 * t
    }
}

/// The cosine-schedule SDE.
pub type CosineSde = ScheduleSde<CosineKernel>;
/// The rectified-flow SDE.
pub type RectifiedFlowSde = ScheduleSde<LinearKernel>;

/// `sigma(t) = s(t) / m(t)`, the noise-to-signal ratio (increasing in `t`
/// for every SDE here); its logarithm is minus half the log-SNR.
pub fn noise_to_signal<S: Sde + ?Sized>(sde: &S, t: f64) -> f64 {
    let k = sde.marginal(t);
    k.std / k.mean_coef
}

/// The time in `[lo, hi]` at which `sigma(t) = target`, by bisection
/// (`sigma` increasing; `target` clamped to `[sigma(lo), sigma(hi)]`).
pub fn time_for_noise_to_signal<S: Sde + ?Sized>(sde: &S, target: f64, lo: f64, hi: f64) -> f64 {
    let (mut lo, mut hi) = (lo, hi);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if noise_to_signal(sde, mid) < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// A score model trained for the SDE `trained`, evaluated on the time axis of
/// another SDE `target` by matching the noise-to-signal ratio: with
/// `sigma_target(t) = sigma_trained(t')` and `k = m_trained(t') / m_target(t)`,
/// the target's marginal at `t` is the trained one's at `t'` scaled by `1/k`,
/// so `score_target(x, t) = k score_trained(k x, t')`. Any model trained with
/// one schedule can so be sampled on another's time axis (within the range of
/// noise-to-signal ratios the trained SDE covers, else an error).
#[derive(Clone, Debug)]
pub struct Rescheduled<M, A, B> {
    /// The model, trained for `trained`.
    pub model: M,
    /// The SDE the model was trained for.
    pub trained: A,
    /// The SDE whose time axis the samplers use.
    pub target: B,
}

impl<M, A: Sde, B: Sde> Rescheduled<M, A, B> {
    /// The trained SDE's time `t'` and the scale `k` for the target time `t`.
    pub fn map_time(&self, t: f64) -> Result<(f64, f64)> {
        self.target.check_time(t)?;
        let sigma = noise_to_signal(&self.target, t);
        let t_max = self.trained.t_max();
        let (lo, hi) = (
            noise_to_signal(&self.trained, 0.0),
            noise_to_signal(&self.trained, t_max),
        );
        // A relative slack of 1e-9 absorbs rounding at the ends of the range.
        if !(sigma >= lo * (1.0 - 1e-9) && sigma <= hi * (1.0 + 1e-9)) {
            return Err(crate::Error::Unsupported(format!(
                "the {} SDE's noise-to-signal ratio {sigma:.6e} at t = {t} is outside the \
                 {} SDE's range [{lo:.6e}, {hi:.6e}] the model was trained on",
                self.target.kind(),
                self.trained.kind()
            )));
        }
        let t1 = time_for_noise_to_signal(&self.trained, sigma, 0.0, t_max);
        let k = self.trained.marginal(t1).mean_coef / self.target.marginal(t).mean_coef;
        Ok((t1, k))
    }
}

impl<Bk, M, A, B> crate::ScoreModel<Bk> for Rescheduled<M, A, B>
where
    Bk: crate::Backend,
    M: crate::ScoreModel<Bk>,
    A: Sde,
    B: Sde,
{
    fn score(&self, b: &Bk, x: &Bk::Tensor, t: &[f64]) -> Result<Bk::Tensor> {
        let (times, k): (Vec<f64>, Vec<f64>) = t
            .iter()
            .map(|&t| self.map_time(t))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .unzip();
        let k = crate::backend::coefs_f32(k);
        let xk = b.scale(x, crate::Coef::PerSample(&k))?;
        let s = self.model.score(b, &xk, &times)?;
        b.scale(&s, crate::Coef::PerSample(&k))
    }
}
