//! Serde configurations of the samplers (readable from TOML), with the
//! reference defaults of Song et al. (2021).

use sde_core::Sde;
use serde::{Deserialize, Serialize};

use crate::error::{ensure, Result};
use crate::fixed::FixedStepConfig;

/// The predictor of a predictor–corrector sampler (SPEC.md section 5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PredictorKind {
    /// Euler–Maruyama on the reverse SDE.
    EulerMaruyama,
    /// The reverse of the forward discretisation (the reference default).
    #[default]
    ReverseDiffusion,
    /// Ancestral sampling (SMLD for VE, DDPM for VP; undefined for sub-VP).
    Ancestral,
    /// No predictor (corrector-only sampling, "C2000").
    None,
}

/// The corrector of a predictor–corrector sampler.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CorrectorKind {
    /// Langevin MCMC with step size set by a target signal-to-noise ratio.
    #[default]
    Langevin,
    /// Annealed Langevin dynamics (NCSN): step size from the kernel std.
    AnnealedLangevin,
    /// No corrector (predictor-only sampling, "P1000").
    None,
}

/// How the Langevin corrector computes the norms in its step size
/// `e = 2 a (r |z| / |s|)^2`.
///
/// The default is [`NormMode::BatchMean`], as in the reference code. Per-sample
/// norms fix every sample's drift-to-noise ratio at `r`, so the noise
/// `sqrt(2e)|z| = 2 r |z|^2 / |s|` explodes for a sample whose score is near
/// zero (a sample sitting on a mode). In low dimension that happens all the time:
/// on the 2-D test mixture at t = 0.5, per-sample norms gave a variance of 4.79
/// instead of 2.64. Batch averages give one step size per level. Per-sample norms
/// are only reasonable when `D` is large enough for `|s|` to concentrate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NormMode {
    /// Each sample uses its own `|z_n|` and `|s_n|`: a sample's trajectory does
    /// not depend on its batch, but the step explodes where `|s_n|` is small.
    PerSample,
    /// Norms averaged over the batch (default, as the reference code does).
    #[default]
    BatchMean,
}

/// Predictor–corrector sampler settings. By default the levels are the SDE's
/// own grid of `N` levels (build the SDE with the `N` you want, e.g.
/// [`sde_core::SdeConfig::with_num_steps`]), on which the reverse-diffusion
/// and ancestral predictors are defined. With `grid` set, the levels are the
/// first `steps` points of that [`TimeGrid`](crate::TimeGrid) (which ends
/// at `eps`), and the Euler–Maruyama predictor steps from each level to the
/// next; the discrete predictors refuse such a grid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PcConfig {
    /// The predictor (default: reverse diffusion).
    pub predictor: PredictorKind,
    /// The corrector (default: Langevin).
    pub corrector: CorrectorKind,
    /// Target signal-to-noise ratio `r` of the corrector (reference: 0.16).
    pub snr: f64,
    /// Corrector steps per noise level (reference: 1).
    pub corrector_steps: usize,
    /// End time `eps_s`; `None` uses the SDE's default (1e-5 VE, 1e-3 VP/sub-VP).
    pub eps: Option<f64>,
    /// Return the noise-free mean of the last update (reference: true).
    pub denoise: bool,
    /// Batch-averaged (default) or per-sample Langevin norms.
    pub norm: NormMode,
    /// A sampler-chosen time grid (Euler–Maruyama predictor or corrector
    /// only); `None` (default) is the SDE's own grid, as in the paper.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grid: Option<crate::TimeGrid>,
    /// Levels on `grid` (default: the SDE's `N`); only with `grid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
}

impl Default for PcConfig {
    fn default() -> Self {
        PcConfig {
            predictor: PredictorKind::ReverseDiffusion,
            corrector: CorrectorKind::Langevin,
            snr: 0.16,
            corrector_steps: 1,
            eps: None,
            denoise: true,
            norm: NormMode::BatchMean,
            grid: None,
            steps: None,
        }
    }
}

/// Step-size controller of the adaptive solver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepControl {
    /// `h <- h * clamp(0.9 err^(-1/5), 0.2, 10)` (scipy's RK45 rule).
    #[default]
    Standard,
    /// Proportional–integral control (Gustafsson): `0.9 err^(-0.7/5) err_prev^(0.4/5)`;
    /// smoother step sequences, fewer rejections.
    Pi,
}

/// Whether each sample of a batch gets its own step size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepScope {
    /// Each sample has its own time, step size and error estimate (default):
    /// one hard sample does not slow the others, and a sample's result does not
    /// depend on its batch. Finished samples leave the batch while the rest
    /// go on (the model evaluates only the samples still moving; see
    /// [`OdeRhs::restrict`](crate::OdeRhs::restrict)).
    #[default]
    PerSample,
    /// One time and step size for the whole batch: scipy's `RK45` on the
    /// flattened batch, as the reference code integrates it. Accepting a step
    /// and choosing the next use one RMS error norm over the whole state (every
    /// sample's tensor elements and auxiliary scalars together, each scaled by
    /// `atol + rtol max(|y0|, |y1|)`), and the automatic first step is
    /// Hairer's (scipy's `select_initial_step`) from whole-state norms. So a
    /// sample's result depends on its batch, and easy samples (small scaled
    /// errors) loosen the control of a hard one: the norm is a mean, not the
    /// worst sample's. Otherwise scipy's rule: with [`StepControl::Standard`]
    /// the same steps and evaluations up to rounding, except that a step is
    /// accepted at `err <= 1` (scipy: `< 1`) and `h_max`/`h_min` replace
    /// scipy's `max_step = inf` and `min_step = 10 ulp(t)`. (The tensors are
    /// `f32`: at tight tolerances, such as `rtol = 1e-5, atol = 1e-7` on unit
    /// data, their rounding in the error estimate is enough to change the
    /// step sequence.)
    Batch,
}

/// Settings of the adaptive Dormand–Prince RK4(5) solver.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OdeConfig {
    /// Relative tolerance (reference: 1e-5).
    pub rtol: f64,
    /// Absolute tolerance (reference: 1e-5).
    pub atol: f64,
    /// End time when sampling / start time when encoding; `None` uses the
    /// SDE's default sampling eps (likelihoods use [`LikelihoodConfig::eps`](crate::LikelihoodConfig)).
    pub eps: Option<f64>,
    /// First step size; `None` picks it automatically (Hairer's algorithm, as scipy).
    pub h_init: Option<f64>,
    /// Smallest step size allowed before failing.
    pub h_min: f64,
    /// Largest step size.
    pub h_max: f64,
    /// Most steps (accepted + rejected) before failing.
    pub max_steps: usize,
    /// Step-size controller.
    pub control: StepControl,
    /// Per-sample or whole-batch step sizes.
    pub scope: StepScope,
    /// After sampling, take one noise-free reverse-diffusion step at `eps`.
    pub denoise: bool,
}

impl Default for OdeConfig {
    fn default() -> Self {
        OdeConfig {
            rtol: 1e-5,
            atol: 1e-5,
            eps: None,
            h_init: None,
            h_min: 1e-10,
            h_max: 1.0,
            max_steps: 100_000,
            control: StepControl::Standard,
            scope: StepScope::PerSample,
            denoise: false,
        }
    }
}

/// Which sampler, with its settings: what [`crate::sample()`] runs, what
/// configs and `--json` summaries record. In TOML: `sampler = "pc"`,
/// `"ode"`, `"ddim"`, `"dpm-solver"`, `"heun"` or `"reverse-sde"` beside
/// the fields of that sampler's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "sampler", rename_all = "kebab-case")]
pub enum SamplerConfig {
    /// Predictor–corrector sampling of the reverse SDE (the paper's).
    Pc(PcConfig),
    /// Probability-flow ODE sampling with adaptive RK45.
    Ode(OdeConfig),
    /// DDIM (deterministic at `eta = 0`, ancestral at `eta = 1`).
    Ddim(crate::DdimConfig),
    /// DPM-Solver++(2M).
    DpmSolver(crate::DpmSolverConfig),
    /// Heun's second-order method (EDM).
    Heun(crate::HeunConfig),
    /// The generalised reverse SDE with free stochasticity (Euler–Maruyama).
    ReverseSde(crate::ReverseSdeConfig),
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig::Pc(PcConfig::default())
    }
}

impl SamplerConfig {
    /// The sampler's name as written in configs (`"pc"`, `"dpm-solver"`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            SamplerConfig::Pc(_) => "pc",
            SamplerConfig::Ode(_) => "ode",
            SamplerConfig::Ddim(_) => "ddim",
            SamplerConfig::DpmSolver(_) => "dpm-solver",
            SamplerConfig::Heun(_) => "heun",
            SamplerConfig::ReverseSde(_) => "reverse-sde",
        }
    }

    /// Checks the settings against `sde` (before any work is done).
    pub fn validate<S: Sde + ?Sized>(&self, sde: &S) -> Result<()> {
        match self {
            SamplerConfig::Pc(c) => c.validate(sde),
            SamplerConfig::Ode(c) => {
                c.validate()?;
                resolve_eps(sde, c.eps)?;
                if c.denoise {
                    sde.check_discrete_chain()?;
                }
                Ok(())
            }
            SamplerConfig::Ddim(c) => c.validate(sde),
            SamplerConfig::DpmSolver(c) => c.validate(sde),
            SamplerConfig::Heun(c) => c.validate(sde),
            SamplerConfig::ReverseSde(c) => c.validate(sde),
        }
    }

    /// The number of steps a run reports through
    /// [`SamplerHooks::on_step`](crate::SamplerHooks::on_step) (`None` for the
    /// adaptive ODE): PC's levels are the SDE's `N`.
    pub fn steps<S: Sde + ?Sized>(&self, sde: &S) -> Option<usize> {
        match self {
            SamplerConfig::Pc(c) => Some(c.levels(sde)),
            SamplerConfig::Ode(_) => None,
            SamplerConfig::Ddim(c) => Some(c.steps),
            SamplerConfig::DpmSolver(c) => Some(c.steps),
            SamplerConfig::Heun(c) => Some(c.steps),
            SamplerConfig::ReverseSde(c) => Some(c.steps),
        }
    }

    /// Batched score evaluations a run will take, where known in advance
    /// (`None` for the adaptive ODE).
    pub fn nfe<S: Sde + ?Sized>(&self, sde: &S) -> Option<usize> {
        match self {
            SamplerConfig::Pc(c) => Some(crate::pc::nfe_per_level(c) * c.levels(sde)),
            SamplerConfig::Ode(_) => None,
            SamplerConfig::Ddim(c) => Some(c.steps),
            SamplerConfig::DpmSolver(c) => Some(c.steps),
            SamplerConfig::Heun(c) => Some(2 * c.steps),
            SamplerConfig::ReverseSde(c) => Some(c.steps),
        }
    }
}

/// Resolves and checks an end time `eps` for `sde`: `0 < eps < T`.
pub fn resolve_eps<S: Sde + ?Sized>(sde: &S, eps: Option<f64>) -> Result<f64> {
    let eps = eps.unwrap_or_else(|| sde.default_sampling_eps());
    ensure(
        eps.is_finite() && eps > 0.0 && eps < sde.t_max(),
        "eps",
        eps,
        format!("must lie in (0, T = {})", sde.t_max()),
    )?;
    Ok(eps)
}

impl OdeConfig {
    /// Checks tolerances and step limits.
    pub fn validate(&self) -> Result<()> {
        ensure(
            self.rtol.is_finite() && self.rtol > 0.0,
            "rtol",
            self.rtol,
            "must be > 0",
        )?;
        ensure(
            self.atol.is_finite() && self.atol > 0.0,
            "atol",
            self.atol,
            "must be > 0",
        )?;
        ensure(self.h_min >= 0.0, "h_min", self.h_min, "must be >= 0")?;
        ensure(
            self.h_max.is_finite() && self.h_max > self.h_min,
            "h_max",
            self.h_max,
            format!("must be finite and > h_min = {}", self.h_min),
        )?;
        if let Some(h) = self.h_init {
            ensure(h.is_finite() && h > 0.0, "h_init", h, "must be > 0")?;
        }
        ensure(
            self.max_steps > 0,
            "max_steps",
            self.max_steps,
            "must be > 0",
        )
    }
}

impl PcConfig {
    /// The number of levels on `sde`: the SDE's `N`, or `steps` on a grid.
    pub fn levels<S: Sde + ?Sized>(&self, sde: &S) -> usize {
        match self.grid {
            None => sde.num_steps(),
            Some(_) => self.steps.unwrap_or(sde.num_steps()),
        }
    }

    /// Checks the settings against `sde`.
    pub fn validate<S: Sde + ?Sized>(&self, sde: &S) -> Result<()> {
        ensure(
            self.snr.is_finite() && self.snr > 0.0,
            "snr",
            self.snr,
            "must be > 0",
        )?;
        resolve_eps(sde, self.eps)?;
        if self.corrector != CorrectorKind::None {
            ensure(
                self.corrector_steps > 0,
                "corrector_steps",
                self.corrector_steps,
                "must be > 0 when a corrector is used (or set corrector = \"none\")",
            )?;
        }
        ensure(
            !(self.predictor == PredictorKind::None && self.corrector == CorrectorKind::None),
            "predictor",
            "none",
            "a sampler needs a predictor, a corrector or both",
        )?;
        if self.predictor == PredictorKind::Ancestral && sde.ancestral_step(sde.t_max()).is_none() {
            return Err(crate::SolverError::Unsupported {
                what: "ancestral sampling",
                sde: sde.kind(),
            });
        }
        let discrete = matches!(
            self.predictor,
            PredictorKind::ReverseDiffusion | PredictorKind::Ancestral
        );
        match (self.grid, self.steps) {
            (Some(g), _) if discrete => {
                return Err(crate::SolverError::InvalidConfig {
                    field: "grid",
                    value: g.to_string(),
                    reason: format!(
                        "the {:?} predictor is defined on the SDE's own grid only: leave `grid` \
                         unset and set the SDE's N (CLI: --steps), or use the euler-maruyama \
                         predictor",
                        self.predictor
                    ),
                })
            }
            (None, Some(n)) => {
                return Err(crate::SolverError::InvalidConfig {
                    field: "steps",
                    value: n.to_string(),
                    reason: "applies with `grid` only (without it the levels are the SDE's N)"
                        .into(),
                })
            }
            (Some(g), n) => {
                g.times(
                    sde,
                    n.unwrap_or(sde.num_steps()),
                    resolve_eps(sde, self.eps)?,
                )?;
            }
            (None, None) => {}
        }
        let uses_chain = discrete || self.corrector != CorrectorKind::None;
        if uses_chain {
            sde.check_discrete_chain()?;
        }
        Ok(())
    }
}
