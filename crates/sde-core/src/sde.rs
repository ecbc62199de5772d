//! Forward SDEs `dx = f(x,t) dt + g(t) dw` with affine drift `f(x,t) = a(t) x`
//! (Song et al. 2021, eqs. 5, 9, 11 and appendix B): VE (SMLD), VP (DDPM) and
//! sub-VP, their Gaussian perturbation kernels, their discretisations
//! (the SMLD / DDPM Markov chains, section 2 of SPEC.md), the reverse-time
//! drift (eq. 6) and the probability-flow drift (eq. 13).
//!
//! The [`Sde`] trait is scalar and object-safe: every quantity is a function of
//! `t` alone because the drift is linear in `x` and the diffusion does not depend
//! on `x`. Tensor-level operations live in the blanket extension trait
//! [`SdeExt`], which takes per-sample times so that every sample of a batch may
//! sit at its own `t` (needed by per-sample adaptive ODE solvers).
//!
//! Time runs over `[0, T]` with `T = 1`, as in the paper and the reference code.
//!
//! # Kernel convention for VE
//! The reference code (and SPEC.md) uses `s(t) = sigma(t)`, which is the kernel
//! from *clean* data: at `t = 0` the "data" already carries noise of std
//! `sigma_min`. The forward SDE started at `x(0)` adds variance
//! `sigma(t)^2 - sigma_min^2` only. [`Sde::marginal`] follows the reference;
//! [`Sde::transition`] gives the exact kernel between any two times and is what
//! a simulation of the SDE must match. For VP and sub-VP the two agree because
//! `s(0) = 0`.

use serde::{Deserialize, Serialize};

use crate::backend::coefs_f32;
use crate::error::ensure_param;
use crate::schedule::{CosineKernel, CosineSde, LinearKernel, RectifiedFlowSde, ScheduleSde};
use crate::{Backend, Coef, Error, NoiseKey, Result, Shape};

/// Which SDE family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SdeKind {
    /// Variance exploding (SMLD / NCSN).
    Ve,
    /// Variance preserving (DDPM).
    Vp,
    /// Sub-variance preserving.
    SubVp,
    /// The cosine schedule ([`crate::schedule::CosineKernel`]).
    Cosine,
    /// Rectified flow / linear interpolation ([`crate::schedule::LinearKernel`]).
    RectifiedFlow,
    /// A user's own [`crate::schedule::Kernel`].
    Custom,
}

impl std::fmt::Display for SdeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SdeKind::Ve => "VE",
            SdeKind::Vp => "VP",
            SdeKind::SubVp => "sub-VP",
            SdeKind::Cosine => "cosine",
            SdeKind::RectifiedFlow => "rectified-flow",
            SdeKind::Custom => "custom",
        })
    }
}

/// Gaussian kernel `N(mean_coef * x, std^2 I)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Marginal {
    /// `m`: multiplies the starting point.
    pub mean_coef: f64,
    /// `s`: the standard deviation of the added noise.
    pub std: f64,
}

/// One step of a discretised forward SDE: `x_{i+1} = x_i + drift_coef * x_i + noise_std * z`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Discretization {
    /// `f_i = drift_coef * x`.
    pub drift_coef: f64,
    /// `G_i`.
    pub noise_std: f64,
}

/// The discrete noise schedule behind an SDE's discretisation, when it has one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DiscreteSchedule<'a> {
    /// SMLD noise levels `sigma_i` (VE).
    Sigmas(&'a [f64]),
    /// DDPM `beta_i` / `alpha_i` (VP; sub-VP exposes the same schedule for the
    /// Langevin corrector's `alpha_i`).
    Betas(&'a DiscreteBetas),
    /// No discrete schedule (Euler–Maruyama only).
    None,
}

/// One ancestral-sampling step from level `i` to `i - 1` of an SDE's own
/// discretisation: `x_{i-1} = x_coef x + score_coef s(x, t_i) + noise_std z`
/// (SMLD for VE, DDPM for VP; Song et al. 2021, appendix F).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AncestralStep {
    /// Multiplies the state.
    pub x_coef: f64,
    /// Multiplies the score.
    pub score_coef: f64,
    /// Standard deviation of the added noise.
    pub noise_std: f64,
}

/// A forward SDE with affine drift `f(x,t) = a(t) x` and diffusion `g(t)`.
pub trait Sde: Send + Sync + std::fmt::Debug {
    /// The family.
    fn kind(&self) -> SdeKind;

    /// End time `T` (always 1 here).
    fn t_max(&self) -> f64 {
        1.0
    }

    /// Number of discretisation steps `N`.
    fn num_steps(&self) -> usize;

    /// `a(t)`, the drift coefficient: `f(x,t) = a(t) x`.
    fn drift_coef(&self, t: f64) -> f64;

    /// `g(t)`, the diffusion coefficient.
    fn diffusion(&self, t: f64) -> f64;

    /// The perturbation kernel from clean data: `p_0t(x(t)|x(0)) = N(m(t) x(0), s(t)^2 I)`.
    fn marginal(&self, t: f64) -> Marginal;

    /// The exact kernel of the SDE from time `s` to time `t >= s`:
    /// `x(t) | x(s) ~ N(r x(s), v I)` with `r = m(t)/m(s)` and
    /// `v = s(t)^2 - r^2 s(s)^2` (valid for any affine-drift SDE). Requires
    /// `s <= t` (checked in debug builds).
    fn transition(&self, s: f64, t: f64) -> Marginal {
        debug_assert!(s <= t, "transition needs s <= t, got s = {s}, t = {t}");
        let ms = self.marginal(s);
        let mt = self.marginal(t);
        let r = mt.mean_coef / ms.mean_coef;
        let var = mt.std * mt.std - r * r * ms.std * ms.std;
        Marginal {
            mean_coef: r,
            std: var.max(0.0).sqrt(),
        }
    }

    /// Standard deviation of the prior `p_T = N(0, prior_std^2 I)`.
    fn prior_std(&self) -> f64;

    /// The discretisation `(f_i, G_i)` at time `t` (section 2 of SPEC.md). The
    /// default is Euler–Maruyama with `dt = T/N`; VE and VP override it with the
    /// SMLD and DDPM chains.
    fn discretize(&self, t: f64) -> Discretization {
        let dt = self.t_max() / self.num_steps() as f64;
        Discretization {
            drift_coef: self.drift_coef(t) * dt,
            noise_std: self.diffusion(t) * dt.sqrt(),
        }
    }

    /// The discrete schedule (SMLD sigmas or DDPM betas), if the SDE has one.
    fn discrete_schedule(&self) -> DiscreteSchedule<'_> {
        DiscreteSchedule::None
    }

    /// The scale `a` of the Langevin corrector's step `e = 2 a (r |z| / |s|)^2`
    /// at time `t`: 1 for VE, `alpha_i` of the discrete DDPM schedule for VP
    /// and sub-VP (the reference code crashes for sub-VP; here it uses the
    /// schedule sub-VP shares with VP).
    fn langevin_alpha(&self, t: f64) -> f64 {
        match self.discrete_schedule() {
            DiscreteSchedule::Betas(d) => d.alphas[self.step_index(t)],
            _ => 1.0,
        }
    }

    /// The ancestral step at time `t` (its discrete level `step_index(t)`), or
    /// `None` where the SDE has no ancestral sampler (sub-VP, the general
    /// schedules). Defined on the SDE's own discretisation only.
    fn ancestral_step(&self, _t: f64) -> Option<AncestralStep> {
        None
    }

    /// Checks that the SDE's own discrete chain is usable: the DDPM chain
    /// behind VP and sub-VP (reverse diffusion, ancestral sampling and the
    /// Langevin step scale) needs every `beta_i = beta(t_i) / N < 1`, i.e.
    /// `N > beta_max`. Samplers that use the chain call this; the continuous
    /// samplers (Euler–Maruyama, the ODE, the fast samplers) never need it.
    fn check_discrete_chain(&self) -> Result<()> {
        Ok(())
    }

    /// The reference default for the sampler's end time `eps_s`
    /// (`1e-5` for VE, `1e-3` for VP and sub-VP).
    fn default_sampling_eps(&self) -> f64;

    /// The discrete step `i` for time `t`: `floor(t (N - 1) / T)` as in the
    /// reference code, clamped to `[0, N - 1]`, with a guard of `1e-6` steps so
    /// that a time exactly on step `i` maps to `i` despite rounding (the plain
    /// reference formula sends e.g. `t = 63/999` to step 62 for N = 1000).
    fn step_index(&self, t: f64) -> usize {
        let n = self.num_steps();
        let i = (t * (n - 1) as f64 / self.t_max() + 1e-6).floor();
        (i.max(0.0) as usize).min(n - 1)
    }

    /// Fails with [`Error::TimeOutOfRange`] unless `0 <= t <= T` and `t` is finite.
    fn check_time(&self, t: f64) -> Result<()> {
        if t.is_finite() && (0.0..=self.t_max()).contains(&t) {
            Ok(())
        } else {
            Err(Error::TimeOutOfRange {
                t,
                t_max: self.t_max(),
            })
        }
    }
}

/// The most discretisation steps an SDE takes (its schedules are tables of
/// `N` values, and a sampler evaluates the model at least once per step).
pub const MAX_STEPS: usize = 10_000_000;

pub(crate) fn check_steps(n: usize) -> Result<()> {
    ensure_param(
        (1..=MAX_STEPS).contains(&n),
        "num_steps",
        n,
        format!("N must lie in 1..={MAX_STEPS}"),
    )
}

/// The DDPM chain needs `beta_i = beta(t)/N < 1` for every step.
fn check_ddpm_steps(beta_max: f64, n: usize) -> Result<()> {
    ensure_param(
        beta_max / (n as f64) < 1.0,
        "num_steps",
        n,
        format!(
            "reverse diffusion, ancestral sampling and the Langevin corrector use the DDPM \
             chain, whose steps beta_max / N must be < 1, so N must exceed beta_max = \
             {beta_max} (Euler–Maruyama, the ODE and the fast samplers take any N)"
        ),
    )
}

/// `linspace(a, b, n)` in `f64`, with the last element exactly `b` (n >= 2) .
pub fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    match n {
        0 => Vec::new(),
        1 => vec![a],
        _ => (0..n)
            .map(|i| {
                if i == n - 1 {
                    b
                } else {
                    a + (b - a) * i as f64 / (n - 1) as f64
                }
            })
            .collect(),
    }
}

/// The variance-exploding SDE: `f = 0`, `g(t) = sigma(t) sqrt(2 ln(smax/smin))`,
/// `sigma(t) = smin (smax/smin)^t`.
#[derive(Clone, Debug, PartialEq)]
pub struct VeSde {
    sigma_min: f64,
    sigma_max: f64,
    sigmas: Vec<f64>,
}

impl VeSde {
    /// A VE SDE; requires `0 < sigma_min < sigma_max` (finite) and `N >= 1`.
    pub fn new(sigma_min: f64, sigma_max: f64, num_steps: usize) -> Result<Self> {
        ensure_param(
            sigma_min.is_finite() && sigma_min > 0.0,
            "sigma_min",
            sigma_min,
            "must be finite and > 0",
        )?;
        ensure_param(
            sigma_max.is_finite() && sigma_max > sigma_min,
            "sigma_max",
            sigma_max,
            format!("must be finite and > sigma_min = {sigma_min}"),
        )?;
        check_steps(num_steps)?;
        let sigmas = linspace(sigma_min.ln(), sigma_max.ln(), num_steps)
            .into_iter()
            .map(f64::exp)
            .collect();
        Ok(VeSde {
            sigma_min,
            sigma_max,
            sigmas,
        })
    }

    /// `sigma_min`.
    pub fn sigma_min(&self) -> f64 {
        self.sigma_min
    }

    /// `sigma_max`.
    pub fn sigma_max(&self) -> f64 {
        self.sigma_max
    }

    /// `sigma(t) = smin (smax/smin)^t`.
    pub fn sigma(&self, t: f64) -> f64 {
        self.sigma_min * (self.sigma_max / self.sigma_min).powf(t)
    }

    /// The SMLD noise levels `sigma_i`, geometric from `smin` to `smax` over `N` levels.
    pub fn discrete_sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// The SMLD step `i`: `f_i = 0`, `G_i = sqrt(sigma_i^2 - sigma_{i-1}^2)`, `sigma_{-1} = 0`.
    pub fn discretize_step(&self, i: usize) -> Discretization {
        let s = self.sigmas[i];
        let prev = if i == 0 { 0.0 } else { self.sigmas[i - 1] };
        Discretization {
            drift_coef: 0.0,
            noise_std: (s * s - prev * prev).sqrt(),
        }
    }
}

impl Sde for VeSde {
    fn kind(&self) -> SdeKind {
        SdeKind::Ve
    }
    fn num_steps(&self) -> usize {
        self.sigmas.len()
    }
    fn drift_coef(&self, _t: f64) -> f64 {
        0.0
    }
    fn diffusion(&self, t: f64) -> f64 {
        self.sigma(t) * (2.0 * (self.sigma_max / self.sigma_min).ln()).sqrt()
    }
    fn marginal(&self, t: f64) -> Marginal {
        Marginal {
            mean_coef: 1.0,
            std: self.sigma(t),
        }
    }
    fn prior_std(&self) -> f64 {
        self.sigma_max
    }
    fn discretize(&self, t: f64) -> Discretization {
        self.discretize_step(self.step_index(t))
    }
    fn discrete_schedule(&self) -> DiscreteSchedule<'_> {
        DiscreteSchedule::Sigmas(&self.sigmas)
    }
    /// SMLD: `x + (sigma_i^2 - sigma_{i-1}^2) s`, noise std
    /// `sqrt(sigma_{i-1}^2 (sigma_i^2 - sigma_{i-1}^2) / sigma_i^2)`.
    fn ancestral_step(&self, t: f64) -> Option<AncestralStep> {
        let i = self.step_index(t);
        let s2 = self.sigmas[i].powi(2);
        let p2 = if i == 0 {
            0.0
        } else {
            self.sigmas[i - 1].powi(2)
        };
        Some(AncestralStep {
            x_coef: 1.0,
            score_coef: s2 - p2,
            noise_std: (p2 * (s2 - p2) / s2).sqrt(),
        })
    }
    fn default_sampling_eps(&self) -> f64 {
        1e-5
    }
}

/// The discrete DDPM schedule shared by VP and sub-VP:
/// `beta_i = linspace(bmin/N, bmax/N, N)`, `alpha_i = 1 - beta_i`.
#[derive(Clone, Debug, PartialEq)]
pub struct DiscreteBetas {
    /// `beta_i`.
    pub betas: Vec<f64>,
    /// `alpha_i = 1 - beta_i`.
    pub alphas: Vec<f64>,
    /// `prod_{j <= i} alpha_j`.
    pub alphas_cumprod: Vec<f64>,
}

impl DiscreteBetas {
    fn new(beta_min: f64, beta_max: f64, n: usize) -> Self {
        let betas = linspace(beta_min / n as f64, beta_max / n as f64, n);
        let alphas: Vec<f64> = betas.iter().map(|b| 1.0 - b).collect();
        let alphas_cumprod = alphas
            .iter()
            .scan(1.0, |acc, a| {
                *acc *= a;
                Some(*acc)
            })
            .collect();
        DiscreteBetas {
            betas,
            alphas,
            alphas_cumprod,
        }
    }
}

/// The linear `beta(t)` schedule shared by VP and sub-VP, with its integrals.
#[derive(Clone, Debug, PartialEq)]
struct LinearBeta {
    beta_min: f64,
    beta_max: f64,
}

impl LinearBeta {
    fn new(beta_min: f64, beta_max: f64) -> Result<Self> {
        ensure_param(
            beta_min.is_finite() && beta_min >= 0.0,
            "beta_min",
            beta_min,
            "must be finite and >= 0",
        )?;
        ensure_param(
            beta_max.is_finite() && beta_max > beta_min,
            "beta_max",
            beta_max,
            format!("must be finite and > beta_min = {beta_min}"),
        )?;
        Ok(LinearBeta { beta_min, beta_max })
    }
    fn beta(&self, t: f64) -> f64 {
        self.beta_min + t * (self.beta_max - self.beta_min)
    }
    /// `B(t) = int_0^t beta`.
    fn integral(&self, t: f64) -> f64 {
        self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t
    }
    /// `m(t) = exp(-B(t)/2)`.
    fn mean_coef(&self, t: f64) -> f64 {
        (-0.5 * self.integral(t)).exp()
    }
    /// `1 - m(t)^2 = -expm1(-B(t))`, computed without cancellation.
    fn one_minus_m2(&self, t: f64) -> f64 {
        -(-self.integral(t)).exp_m1()
    }
}

/// The variance-preserving SDE: `f = -beta(t) x / 2`, `g = sqrt(beta(t))`.
#[derive(Clone, Debug, PartialEq)]
pub struct VpSde {
    schedule: LinearBeta,
    discrete: DiscreteBetas,
}

impl VpSde {
    /// A VP SDE; requires `0 <= beta_min < beta_max` (finite) and `N >= 1`.
    /// The DDPM chain (reverse diffusion, ancestral sampling, Langevin) also
    /// needs `N > beta_max`; samplers that use it check that
    /// ([`Sde::check_discrete_chain`]), the continuous ones do not need it.
    pub fn new(beta_min: f64, beta_max: f64, num_steps: usize) -> Result<Self> {
        let schedule = LinearBeta::new(beta_min, beta_max)?;
        check_steps(num_steps)?;
        Ok(VpSde {
            schedule,
            discrete: DiscreteBetas::new(beta_min, beta_max, num_steps),
        })
    }

    /// `beta(t) = bmin + t (bmax - bmin)`.
    pub fn beta(&self, t: f64) -> f64 {
        self.schedule.beta(t)
    }

    /// The discrete DDPM schedule.
    pub fn discrete(&self) -> &DiscreteBetas {
        &self.discrete
    }

    /// The DDPM step `i`: `f_i = (sqrt(alpha_i) - 1) x`, `G_i = sqrt(beta_i)`.
    pub fn discretize_step(&self, i: usize) -> Discretization {
        Discretization {
            drift_coef: self.discrete.alphas[i].sqrt() - 1.0,
            noise_std: self.discrete.betas[i].sqrt(),
        }
    }
}

impl Sde for VpSde {
    fn kind(&self) -> SdeKind {
        SdeKind::Vp
    }
    fn num_steps(&self) -> usize {
        self.discrete.betas.len()
    }
    fn drift_coef(&self, t: f64) -> f64 {
        -0.5 * self.schedule.beta(t)
    }
    fn diffusion(&self, t: f64) -> f64 {
        self.schedule.beta(t).sqrt()
    }
    fn marginal(&self, t: f64) -> Marginal {
        Marginal {
            mean_coef: self.schedule.mean_coef(t),
            std: self.schedule.one_minus_m2(t).sqrt(),
        }
    }
    fn prior_std(&self) -> f64 {
        1.0
    }
    fn discretize(&self, t: f64) -> Discretization {
        self.discretize_step(self.step_index(t))
    }
    fn discrete_schedule(&self) -> DiscreteSchedule<'_> {
        DiscreteSchedule::Betas(&self.discrete)
    }
    /// DDPM: `(x + beta_i s) / sqrt(1 - beta_i)`, noise std `sqrt(beta_i)`.
    fn ancestral_step(&self, t: f64) -> Option<AncestralStep> {
        let beta = self.discrete.betas[self.step_index(t)];
        let inv = 1.0 / (1.0 - beta).sqrt();
        Some(AncestralStep {
            x_coef: inv,
            score_coef: beta * inv,
            noise_std: beta.sqrt(),
        })
    }
    fn check_discrete_chain(&self) -> Result<()> {
        check_ddpm_steps(self.schedule.beta_max, self.num_steps())
    }
    fn default_sampling_eps(&self) -> f64 {
        1e-3
    }
}

/// The sub-VP SDE: `f = -beta(t) x / 2`, `g = sqrt(beta(t) (1 - exp(-2 B(t))))`,
/// kernel std `1 - exp(-B(t))` (always below VP's).
#[derive(Clone, Debug, PartialEq)]
pub struct SubVpSde {
    schedule: LinearBeta,
    discrete: DiscreteBetas,
}

impl SubVpSde {
    /// A sub-VP SDE; requires `0 <= beta_min < beta_max` (finite) and `N >= 1`.
    /// Its DDPM schedule scales the Langevin corrector, which then needs
    /// `N > beta_max` ([`Sde::check_discrete_chain`]).
    pub fn new(beta_min: f64, beta_max: f64, num_steps: usize) -> Result<Self> {
        let schedule = LinearBeta::new(beta_min, beta_max)?;
        check_steps(num_steps)?;
        Ok(SubVpSde {
            schedule,
            discrete: DiscreteBetas::new(beta_min, beta_max, num_steps),
        })
    }

    /// `beta(t) = bmin + t (bmax - bmin)`.
    pub fn beta(&self, t: f64) -> f64 {
        self.schedule.beta(t)
    }

    /// The discrete DDPM schedule of the same `beta` range (its `alpha_i`
    /// scale the Langevin corrector's step for sub-VP).
    pub fn discrete(&self) -> &DiscreteBetas {
        &self.discrete
    }
}

impl Sde for SubVpSde {
    fn kind(&self) -> SdeKind {
        SdeKind::SubVp
    }
    fn num_steps(&self) -> usize {
        self.discrete.betas.len()
    }
    fn drift_coef(&self, t: f64) -> f64 {
        -0.5 * self.schedule.beta(t)
    }
    fn diffusion(&self, t: f64) -> f64 {
        let b = self.schedule.integral(t);
        (self.schedule.beta(t) * -(-2.0 * b).exp_m1()).sqrt()
    }
    fn marginal(&self, t: f64) -> Marginal {
        Marginal {
            mean_coef: self.schedule.mean_coef(t),
            std: self.schedule.one_minus_m2(t),
        }
    }
    fn prior_std(&self) -> f64 {
        1.0
    }
    fn discrete_schedule(&self) -> DiscreteSchedule<'_> {
        DiscreteSchedule::Betas(&self.discrete)
    }
    fn check_discrete_chain(&self) -> Result<()> {
        check_ddpm_steps(self.schedule.beta_max, self.num_steps())
    }
    fn default_sampling_eps(&self) -> f64 {
        1e-3
    }
}

/// Serialisable choice of SDE with its parameters; the reference defaults come
/// from [`SdeConfig::default_for`]. Reads from TOML as, e.g.,
/// `kind = "vp"`, `beta_min = 0.1`, `beta_max = 20.0`, `num_steps = 1000`,
/// or `kind = "cosine"`, `logsnr_min = -10.0`, `logsnr_max = 8.77`,
/// `num_steps = 1000`, or `kind = "rectified-flow"`, `mean_at_t_max = 1e-3`,
/// `num_steps = 1000`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SdeConfig {
    /// Variance exploding.
    Ve {
        /// Smallest noise level (reference: 0.01).
        sigma_min: f64,
        /// Largest noise level, about the largest pairwise distance between
        /// training points (reference: 50 for CIFAR-10).
        sigma_max: f64,
        /// Discretisation steps `N` (reference: 1000).
        num_steps: usize,
    },
    /// Variance preserving.
    Vp {
        /// `beta(0)` (reference: 0.1).
        beta_min: f64,
        /// `beta(1)` (reference: 20).
        beta_max: f64,
        /// Discretisation steps `N` (reference: 1000).
        num_steps: usize,
    },
    /// Sub-variance preserving.
    SubVp {
        /// `beta(0)` (reference: 0.1).
        beta_min: f64,
        /// `beta(1)` (reference: 20).
        beta_max: f64,
        /// Discretisation steps `N` (reference: 1000).
        num_steps: usize,
    },
    /// The cosine schedule (variance preserving; [`crate::schedule::CosineKernel`]).
    Cosine {
        /// Log-SNR `ln(m^2/s^2)` at `t = 1` (default -10).
        logsnr_min: f64,
        /// Log-SNR at `t = 0` (default 8.77: Nichol & Dhariwal's offset 0.008).
        logsnr_max: f64,
        /// Steps `N` of the predictor–corrector grid (default 1000).
        num_steps: usize,
    },
    /// Rectified flow: `m = 1 - (1 - m_T) t`, `s = t`
    /// ([`crate::schedule::LinearKernel`]).
    RectifiedFlow {
        /// `m(1)`, small and positive (default 1e-3).
        mean_at_t_max: f64,
        /// Steps `N` of the predictor–corrector grid (default 1000).
        num_steps: usize,
    },
}

impl SdeConfig {
    /// The reference defaults for `kind` (SPEC.md section 1; the cosine
    /// schedule for [`SdeKind::Custom`], which has no configuration).
    pub fn default_for(kind: SdeKind) -> Self {
        match kind {
            SdeKind::Ve => SdeConfig::Ve {
                sigma_min: 0.01,
                sigma_max: 50.0,
                num_steps: 1000,
            },
            SdeKind::Vp => SdeConfig::Vp {
                beta_min: 0.1,
                beta_max: 20.0,
                num_steps: 1000,
            },
            SdeKind::SubVp => SdeConfig::SubVp {
                beta_min: 0.1,
                beta_max: 20.0,
                num_steps: 1000,
            },
            SdeKind::Cosine | SdeKind::Custom => SdeConfig::Cosine {
                logsnr_min: -10.0,
                logsnr_max: 8.77,
                num_steps: 1000,
            },
            SdeKind::RectifiedFlow => SdeConfig::RectifiedFlow {
                mean_at_t_max: 1e-3,
                num_steps: 1000,
            },
        }
    }

    /// The family.
    pub fn kind(&self) -> SdeKind {
        match self {
            SdeConfig::Ve { .. } => SdeKind::Ve,
            SdeConfig::Vp { .. } => SdeKind::Vp,
            SdeConfig::SubVp { .. } => SdeKind::SubVp,
            SdeConfig::Cosine { .. } => SdeKind::Cosine,
            SdeConfig::RectifiedFlow { .. } => SdeKind::RectifiedFlow,
        }
    }

    /// The same SDE with `N = num_steps` (samplers take their step count from the SDE).
    pub fn with_num_steps(&self, n: usize) -> Self {
        let mut out = self.clone();
        match &mut out {
            SdeConfig::Ve { num_steps, .. }
            | SdeConfig::Vp { num_steps, .. }
            | SdeConfig::SubVp { num_steps, .. }
            | SdeConfig::Cosine { num_steps, .. }
            | SdeConfig::RectifiedFlow { num_steps, .. } => *num_steps = n,
        }
        out
    }

    /// Builds the SDE, validating the parameters.
    pub fn build(&self) -> Result<AnySde> {
        Ok(match *self {
            SdeConfig::Ve {
                sigma_min,
                sigma_max,
                num_steps,
            } => AnySde::Ve(VeSde::new(sigma_min, sigma_max, num_steps)?),
            SdeConfig::Vp {
                beta_min,
                beta_max,
                num_steps,
            } => AnySde::Vp(VpSde::new(beta_min, beta_max, num_steps)?),
            SdeConfig::SubVp {
                beta_min,
                beta_max,
                num_steps,
            } => AnySde::SubVp(SubVpSde::new(beta_min, beta_max, num_steps)?),
            SdeConfig::Cosine {
                logsnr_min,
                logsnr_max,
                num_steps,
            } => AnySde::Cosine(ScheduleSde::new(
                CosineKernel::new(logsnr_min, logsnr_max)?,
                num_steps,
            )?),
            SdeConfig::RectifiedFlow {
                mean_at_t_max,
                num_steps,
            } => AnySde::RectifiedFlow(ScheduleSde::new(
                LinearKernel::new(mean_at_t_max)?,
                num_steps,
            )?),
        })
    }
}

impl Default for SdeConfig {
    /// VP with the reference defaults.
    fn default() -> Self {
        SdeConfig::default_for(SdeKind::Vp)
    }
}

/// One of the configurable SDEs, for code that picks the family at run time
/// while still reaching family-specific schedules (SMLD sigmas, DDPM betas).
#[derive(Clone, Debug, PartialEq)]
pub enum AnySde {
    /// Variance exploding.
    Ve(VeSde),
    /// Variance preserving.
    Vp(VpSde),
    /// Sub-variance preserving.
    SubVp(SubVpSde),
    /// The cosine schedule.
    Cosine(CosineSde),
    /// Rectified flow.
    RectifiedFlow(RectifiedFlowSde),
}

impl AnySde {
    fn inner(&self) -> &dyn Sde {
        match self {
            AnySde::Ve(s) => s,
            AnySde::Vp(s) => s,
            AnySde::SubVp(s) => s,
            AnySde::Cosine(s) => s,
            AnySde::RectifiedFlow(s) => s,
        }
    }
}

impl Sde for AnySde {
    fn kind(&self) -> SdeKind {
        self.inner().kind()
    }
    fn t_max(&self) -> f64 {
        self.inner().t_max()
    }
    fn num_steps(&self) -> usize {
        self.inner().num_steps()
    }
    fn drift_coef(&self, t: f64) -> f64 {
        self.inner().drift_coef(t)
    }
    fn diffusion(&self, t: f64) -> f64 {
        self.inner().diffusion(t)
    }
    fn marginal(&self, t: f64) -> Marginal {
        self.inner().marginal(t)
    }
    fn transition(&self, s: f64, t: f64) -> Marginal {
        self.inner().transition(s, t)
    }
    fn prior_std(&self) -> f64 {
        self.inner().prior_std()
    }
    fn discretize(&self, t: f64) -> Discretization {
        self.inner().discretize(t)
    }
    fn default_sampling_eps(&self) -> f64 {
        self.inner().default_sampling_eps()
    }
    fn step_index(&self, t: f64) -> usize {
        self.inner().step_index(t)
    }
    fn discrete_schedule(&self) -> DiscreteSchedule<'_> {
        self.inner().discrete_schedule()
    }
    fn langevin_alpha(&self, t: f64) -> f64 {
        self.inner().langevin_alpha(t)
    }
    fn ancestral_step(&self, t: f64) -> Option<AncestralStep> {
        self.inner().ancestral_step(t)
    }
    fn check_discrete_chain(&self) -> Result<()> {
        self.inner().check_discrete_chain()
    }
}

/// Tensor-level operations of an [`Sde`] on any [`Backend`], with per-sample
/// times. Implemented for every `Sde` (including `dyn Sde`).
pub trait SdeExt: Sde {
    /// Checks one time per sample, each in `[0, T]`.
    fn check_times(&self, t: &[f64], batch: usize) -> Result<()> {
        if t.len() != batch {
            return Err(Error::BatchMismatch {
                op: "times",
                expected: batch,
                got: t.len(),
            });
        }
        t.iter().try_for_each(|&t| self.check_time(t))
    }

    /// `f(x, t) = a(t) x`.
    fn drift<B: Backend>(&self, b: &B, x: &B::Tensor, t: &[f64]) -> Result<B::Tensor> {
        self.check_times(t, b.shape(x).batch())?;
        let a = coefs_f32(t.iter().map(|&t| self.drift_coef(t)));
        b.scale(x, Coef::PerSample(&a))
    }

    /// `x_t = m(t) x0 + s(t) z`: a draw from the perturbation kernel given the noise `z`.
    fn perturb<B: Backend>(
        &self,
        b: &B,
        x0: &B::Tensor,
        z: &B::Tensor,
        t: &[f64],
    ) -> Result<B::Tensor> {
        self.check_times(t, b.shape(x0).batch())?;
        let (m, s): (Vec<f64>, Vec<f64>) = t
            .iter()
            .map(|&t| {
                let k = self.marginal(t);
                (k.mean_coef, k.std)
            })
            .unzip();
        let (m, s) = (coefs_f32(m), coefs_f32(s));
        b.lincomb(&[(Coef::PerSample(&m), x0), (Coef::PerSample(&s), z)])
    }

    /// Reverse-time drift `f(x,t) - g(t)^2 score` (eq. 6; integrate backwards in time).
    fn reverse_drift<B: Backend>(
        &self,
        b: &B,
        x: &B::Tensor,
        t: &[f64],
        score: &B::Tensor,
    ) -> Result<B::Tensor> {
        self.drift_minus_score(b, x, t, score, 1.0)
    }

    /// Probability-flow drift `f(x,t) - g(t)^2 score / 2` (eq. 13).
    fn probability_flow_drift<B: Backend>(
        &self,
        b: &B,
        x: &B::Tensor,
        t: &[f64],
        score: &B::Tensor,
    ) -> Result<B::Tensor> {
        self.drift_minus_score(b, x, t, score, 0.5)
    }

    /// `a(t) x - w g(t)^2 score`, the shared form of the two drifts above.
    fn drift_minus_score<B: Backend>(
        &self,
        b: &B,
        x: &B::Tensor,
        t: &[f64],
        score: &B::Tensor,
        w: f64,
    ) -> Result<B::Tensor> {
        self.check_times(t, b.shape(x).batch())?;
        let a = coefs_f32(t.iter().map(|&t| self.drift_coef(t)));
        let c = coefs_f32(t.iter().map(|&t| -w * self.diffusion(t).powi(2)));
        b.lincomb(&[(Coef::PerSample(&a), x), (Coef::PerSample(&c), score)])
    }

    /// The reverse of the discretisation (SPEC.md section 3):
    /// returns `x - f_i(x) + G_i^2 score` and the per-sample `G_i`, so that
    /// `x_{i-1} = mean + G_i z`.
    fn reverse_discrete_step<B: Backend>(
        &self,
        b: &B,
        x: &B::Tensor,
        t: &[f64],
        score: &B::Tensor,
    ) -> Result<(B::Tensor, Vec<f64>)> {
        self.check_times(t, b.shape(x).batch())?;
        let steps: Vec<Discretization> = t.iter().map(|&t| self.discretize(t)).collect();
        let cx = coefs_f32(steps.iter().map(|d| 1.0 - d.drift_coef));
        let cs = coefs_f32(steps.iter().map(|d| d.noise_std * d.noise_std));
        let mean = b.lincomb(&[(Coef::PerSample(&cx), x), (Coef::PerSample(&cs), score)])?;
        Ok((mean, steps.iter().map(|d| d.noise_std).collect()))
    }

    /// A batch from the prior `N(0, prior_std^2 I)`.
    fn prior_sample<B: Backend>(&self, b: &B, shape: &Shape, key: NoiseKey) -> Result<B::Tensor> {
        let z = b.gaussian(shape, key)?;
        b.scale(&z, Coef::Scalar(self.prior_std() as f32))
    }

    /// Per-sample prior log-density `-D/2 ln(2 pi v) - |z|^2 / (2 v)`, `v = prior_std^2`.
    fn prior_log_prob<B: Backend>(&self, b: &B, z: &B::Tensor) -> Result<Vec<f64>> {
        let d = b.shape(z).sample_numel() as f64;
        let v = self.prior_std().powi(2);
        let lp: Vec<f64> = b
            .sample_dot(z, z)?
            .into_iter()
            .map(|sq| -0.5 * d * (std::f64::consts::TAU * v).ln() - sq / (2.0 * v))
            .collect();
        match lp.iter().position(|v| !v.is_finite()) {
            None => Ok(lp),
            Some(index) => Err(Error::NonFinite {
                what: "prior_log_prob input (sample index)".into(),
                index,
                value: lp[index],
            }),
        }
    }
}

impl<S: Sde + ?Sized> SdeExt for S {}
