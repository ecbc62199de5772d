//! The sampler flags of the model commands, parsed into one
//! [`solvers::SamplerConfig`] (what `solvers::sample` runs and what the
//! `--json` summaries record), and the progress / Ctrl-C hooks every sampler
//! shares.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use sde_core::{Backend, Sde};
use solvers::{
    CorrectorKind, DdimConfig, DpmSolverConfig, HeunConfig, OdeConfig, PcConfig, PredictorKind,
    ReverseSdeConfig, SamplerConfig, SamplerHooks, StepInfo, TimeGrid,
};

use crate::common::{serde_enum, Ctx};

/// Which sampler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SamplerKind {
    /// Predictor–corrector (the paper's; `--steps` sets the SDE's N).
    Pc,
    /// Probability-flow ODE (adaptive RK45).
    Ode,
    /// DDIM (`--eta` 0 deterministic, 1 ancestral).
    Ddim,
    /// DPM-Solver++(2M): good samples in 10-20 steps.
    DpmSolver,
    /// Heun's second-order method (EDM), two evaluations per step.
    Heun,
    /// The reverse SDE with `--stochasticity` l (0: probability-flow ODE, 1: reverse SDE).
    ReverseSde,
}

/// ODE tolerances.
#[derive(Clone, Debug, clap::Args)]
pub struct OdeArgs {
    /// Relative tolerance of the RK45 solver.
    #[arg(long, default_value_t = 1e-5)]
    pub rtol: f64,
    /// Absolute tolerance of the RK45 solver.
    #[arg(long, default_value_t = 1e-5)]
    pub atol: f64,
}

impl OdeArgs {
    pub(crate) fn config(&self) -> OdeConfig {
        OdeConfig {
            rtol: self.rtol,
            atol: self.atol,
            ..OdeConfig::default()
        }
    }
}

/// The predictor–corrector sampler's settings (the paper's defaults).
#[derive(Clone, Debug, clap::Args)]
pub struct PcArgs {
    /// Predictor (euler-maruyama, reverse-diffusion, ancestral, none).
    #[arg(long, default_value = "reverse-diffusion", value_parser = serde_enum::<PredictorKind>)]
    pub predictor: PredictorKind,
    /// Corrector (langevin, annealed-langevin, none).
    #[arg(long, default_value = "langevin", value_parser = serde_enum::<CorrectorKind>)]
    pub corrector: CorrectorKind,
    /// Signal-to-noise ratio of the corrector.
    #[arg(long, default_value_t = 0.16)]
    pub snr: f64,
    /// Corrector steps per noise level.
    #[arg(long, default_value_t = 1)]
    pub corrector_steps: usize,
}

impl PcArgs {
    /// The sampler configuration (other fields at their defaults).
    pub fn config(&self) -> PcConfig {
        PcConfig {
            predictor: self.predictor,
            corrector: self.corrector,
            snr: self.snr,
            corrector_steps: self.corrector_steps,
            ..PcConfig::default()
        }
    }
}

/// Every sampler's flags.
#[derive(Clone, Debug, clap::Args)]
pub struct SamplerArgs {
    /// Sampler.
    #[arg(long, value_enum, default_value_t = SamplerKind::Pc)]
    pub sampler: SamplerKind,
    /// A TOML file with a whole sampler configuration (`sampler = "dpm-solver"`,
    /// `steps = 20`, `grid = "log-snr"`, ...), as in the `--json` summaries;
    /// replaces the other sampler flags.
    #[arg(long)]
    pub sampler_config: Option<PathBuf>,
    /// Where the fixed-step samplers put their steps: uniform, log-snr, edm
    /// (rho 7) or `edm:<rho>` (default: each sampler's own: DDIM and
    /// reverse-sde uniform, DPM-Solver++ log-snr, Heun edm; PC the SDE's own
    /// grid, which its reverse-diffusion and ancestral predictors need).
    #[arg(long, value_parser = clap::value_parser!(TimeGrid))]
    pub grid: Option<TimeGrid>,
    /// DDIM's stochasticity in [0, 1] (default 0).
    #[arg(long)]
    pub eta: Option<f64>,
    /// The reverse SDE's stochasticity l >= 0 (default 1).
    #[arg(long)]
    pub stochasticity: Option<f64>,
    #[command(flatten)]
    pub pc: PcArgs,
    #[command(flatten)]
    pub ode: OdeArgs,
}

impl SamplerArgs {
    /// The configuration the flags describe; `steps` is `--steps` (the fast
    /// samplers' step count and PC's levels on a `--grid`; for PC on the
    /// SDE's own grid it sets the SDE's N when the model loads:
    /// [`steps_set_sde_n`]).
    pub fn config(&self, steps: Option<usize>) -> Result<SamplerConfig> {
        if let Some(path) = &self.sampler_config {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            return toml::from_str(&text)
                .with_context(|| format!("{}: not a sampler configuration", path.display()));
        }
        let kind = self.sampler;
        let only = |flag: &str, given: bool, for_kind: SamplerKind, name: &str| -> Result<()> {
            if given && kind != for_kind {
                bail!("{flag} applies to --sampler {name} only");
            }
            Ok(())
        };
        only("--eta", self.eta.is_some(), SamplerKind::Ddim, "ddim")?;
        only(
            "--stochasticity",
            self.stochasticity.is_some(),
            SamplerKind::ReverseSde,
            "reverse-sde",
        )?;
        if self.grid.is_some() && kind == SamplerKind::Ode {
            bail!(
                "--grid applies to the fixed-step samplers (pc, ddim, dpm-solver, heun, \
                 reverse-sde)"
            );
        }
        Ok(match kind {
            SamplerKind::Pc => SamplerConfig::Pc(PcConfig {
                grid: self.grid,
                steps: self.grid.and(steps),
                ..self.pc.config()
            }),
            SamplerKind::Ode => SamplerConfig::Ode(self.ode.config()),
            SamplerKind::Ddim => {
                let d = DdimConfig::default();
                SamplerConfig::Ddim(DdimConfig {
                    steps: steps.unwrap_or(d.steps),
                    eta: self.eta.unwrap_or(d.eta),
                    grid: self.grid.unwrap_or(d.grid),
                    ..d
                })
            }
            SamplerKind::DpmSolver => {
                let d = DpmSolverConfig::default();
                SamplerConfig::DpmSolver(DpmSolverConfig {
                    steps: steps.unwrap_or(d.steps),
                    grid: self.grid.unwrap_or(d.grid),
                    ..d
                })
            }
            SamplerKind::Heun => {
                let d = HeunConfig::default();
                SamplerConfig::Heun(HeunConfig {
                    steps: steps.unwrap_or(d.steps),
                    grid: self.grid.unwrap_or(d.grid),
                    ..d
                })
            }
            SamplerKind::ReverseSde => {
                let d = ReverseSdeConfig::default();
                SamplerConfig::ReverseSde(ReverseSdeConfig {
                    steps: steps.unwrap_or(d.steps),
                    stochasticity: self.stochasticity.unwrap_or(d.stochasticity),
                    grid: self.grid.unwrap_or(d.grid),
                    ..d
                })
            }
        })
    }
}

/// Whether `--steps` means the SDE's own `N` for `cfg` (PC on the SDE's grid)
/// rather than the sampler's step count.
pub(crate) fn steps_set_sde_n(cfg: &SamplerConfig) -> bool {
    matches!(cfg, SamplerConfig::Pc(PcConfig { grid: None, .. }))
}

/// A progress bar for one run of `cfg` on `sde`: steps where their number is
/// known, a spinner counting score evaluations for the adaptive ODE.
pub(crate) fn progress_bar<S: Sde + ?Sized>(
    ctx: &Ctx,
    cfg: &SamplerConfig,
    sde: &S,
    what: &str,
) -> indicatif::ProgressBar {
    match cfg.steps(sde) {
        Some(n) => ctx.bar(n as u64, what),
        None => ctx.spinner(&format!("{what} nfe")),
    }
}

/// Progress and Ctrl-C for every sampler: moves the bar to each finished step
/// (counts score evaluations for the adaptive ODE) and stops once Ctrl-C was
/// pressed.
pub(crate) struct CliHooks<'a> {
    bar: &'a indicatif::ProgressBar,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The NFE last reported (the ODE's spinner counts evaluations across
    /// solves, each of which counts from 0).
    last_nfe: usize,
}

impl<'a> CliHooks<'a> {
    /// Hooks reporting on `bar`.
    pub(crate) fn new(bar: &'a indicatif::ProgressBar) -> Self {
        CliHooks {
            bar,
            stop: crate::common::interrupted(),
            last_nfe: 0,
        }
    }
}

impl<B: Backend> SamplerHooks<B> for CliHooks<'_> {
    fn on_step(&mut self, info: &StepInfo) -> std::ops::ControlFlow<()> {
        if info.total.is_some() {
            self.bar.set_position(info.step as u64);
        } else {
            // A new solve starts counting from 0 again.
            let delta = info.nfe.checked_sub(self.last_nfe).unwrap_or(info.nfe);
            self.bar.inc(delta as u64);
            self.last_nfe = info.nfe;
        }
        if self.stop.load(std::sync::atomic::Ordering::SeqCst) {
            std::ops::ControlFlow::Break(())
        } else {
            std::ops::ControlFlow::Continue(())
        }
    }
}
