//! The one sampler interface: `solvers::sample` dispatches every sampler of a
//! `SamplerConfig` (read from TOML), each sampler honours the same hooks
//! (progress, interruption, a per-step projection, the ODE included), and the
//! time grids are what they claim (uniform in t, in log-SNR, EDM's rho rule).
#![allow(clippy::unwrap_used)]

mod common;

use std::ops::ControlFlow;

use sde_core::analytic::AnalyticScore;
use sde_core::{Backend, Coef, CpuBackend, CpuTensor, NoiseRng, Sde, Shape};
use solvers::grid::noise_to_signal;
use solvers::{
    sample, DdimConfig, DpmSolverConfig, HeunConfig, OdeConfig, PcConfig, ReverseSdeConfig,
    SamplerConfig, SamplerHooks, SolverError, StepInfo, TimeGrid, Update,
};

fn all_samplers() -> Vec<SamplerConfig> {
    vec![
        SamplerConfig::Pc(PcConfig::default()),
        SamplerConfig::Ode(OdeConfig::default()),
        SamplerConfig::Ddim(DdimConfig {
            steps: 20,
            eta: 0.5,
            ..DdimConfig::default()
        }),
        SamplerConfig::DpmSolver(DpmSolverConfig::default()),
        SamplerConfig::Heun(HeunConfig {
            steps: 10,
            ..HeunConfig::default()
        }),
        SamplerConfig::ReverseSde(ReverseSdeConfig {
            steps: 20,
            ..ReverseSdeConfig::default()
        }),
    ]
}

#[test]
fn every_sampler_reads_from_toml_and_round_trips() {
    let cases = [
        ("sampler = \"ddim\"\nsteps = 25\neta = 0.3\n", "ddim"),
        (
            "sampler = \"dpm-solver\"\nsteps = 15\ngrid = \"edm:5\"\n",
            "dpm-solver",
        ),
        ("sampler = \"heun\"\ngrid = \"log-snr\"\n", "heun"),
        (
            "sampler = \"reverse-sde\"\nstochasticity = 0.0\nsteps = 30\n",
            "reverse-sde",
        ),
    ];
    for (text, name) in cases {
        let cfg: SamplerConfig = toml::from_str(text).unwrap();
        assert_eq!(cfg.name(), name);
        let back: SamplerConfig = toml::from_str(&toml::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
        let json: SamplerConfig =
            serde_json::from_value(serde_json::to_value(&cfg).unwrap()).unwrap();
        assert_eq!(json, cfg);
    }
    match toml::from_str::<SamplerConfig>("sampler = \"dpm-solver\"\ngrid = \"edm:5\"\n").unwrap() {
        SamplerConfig::DpmSolver(c) => {
            assert_eq!(c.grid, TimeGrid::Edm { rho: 5.0 });
            assert_eq!(c.steps, 20);
        }
        other => panic!("{other:?}"),
    }
    for bad in [
        "sampler = \"ddim\"\nsteps = 25\netaa = 0.3\n",
        "sampler = \"heun\"\ngrid = \"cosine\"\n",
        "sampler = \"heun\"\ngrid = \"edm:-1\"\n",
        "sampler = \"unipc\"\n",
    ] {
        assert!(toml::from_str::<SamplerConfig>(bad).is_err(), "{bad}");
    }
}

#[test]
fn invalid_fast_sampler_settings_are_refused_before_any_work() {
    let sde = &common::test_sdes(100)[1];
    let model = AnalyticScore::new(common::mixture_2d(), sde.clone());
    let bad = [
        SamplerConfig::Ddim(DdimConfig {
            eta: 1.5,
            ..DdimConfig::default()
        }),
        SamplerConfig::Ddim(DdimConfig {
            steps: 0,
            ..DdimConfig::default()
        }),
        // Huge step counts are refused before the grid is allocated.
        SamplerConfig::DpmSolver(DpmSolverConfig {
            steps: usize::MAX,
            ..DpmSolverConfig::default()
        }),
        SamplerConfig::Heun(HeunConfig {
            steps: 1_000_000_000,
            ..HeunConfig::default()
        }),
        SamplerConfig::DpmSolver(DpmSolverConfig {
            eps: Some(1.5),
            ..DpmSolverConfig::default()
        }),
        SamplerConfig::ReverseSde(ReverseSdeConfig {
            stochasticity: -1.0,
            ..ReverseSdeConfig::default()
        }),
        SamplerConfig::ReverseSde(ReverseSdeConfig {
            stochasticity: f64::NAN,
            ..ReverseSdeConfig::default()
        }),
    ];
    for cfg in bad {
        let mut hook = Recorder::default();
        let err = sample(
            &CpuBackend,
            sde,
            &model,
            &Shape::new([2, 2]).unwrap(),
            &cfg,
            &mut NoiseRng::new(0),
            &mut hook,
        )
        .unwrap_err();
        assert!(
            matches!(err, SolverError::InvalidConfig { .. }),
            "{cfg:?}: {err}"
        );
        assert!(hook.steps.is_empty());
    }
}

/// Records every step, counts projections, and stops after `stop_at` steps.
#[derive(Default)]
struct Recorder {
    steps: Vec<StepInfo>,
    projections: usize,
    stop_at: Option<usize>,
    project: bool,
}

impl SamplerHooks<CpuBackend> for Recorder {
    fn after_update(
        &mut self,
        b: &CpuBackend,
        update: Update<CpuTensor>,
        t: &[f64],
        _rng: &mut NoiseRng,
    ) -> solvers::Result<Update<CpuTensor>> {
        assert_eq!(t.len(), b.shape(&update.x).batch());
        if !self.project {
            return Ok(update);
        }
        self.projections += 1;
        // Pin the first coordinate of every sample to 0.25.
        let mut x = b.to_vec(&update.x)?;
        for v in x.iter_mut().step_by(2) {
            *v = 0.25;
        }
        let x = b.tensor(x, b.shape(&update.x))?;
        Ok(Update::exact(x))
    }
    fn projects(&self) -> bool {
        self.project
    }
    fn on_step(&mut self, info: &StepInfo) -> ControlFlow<()> {
        self.steps.push(*info);
        if Some(info.step) == self.stop_at {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

#[test]
fn every_sampler_reports_progress_and_can_be_interrupted() {
    let sde = &common::test_sdes(50)[0];
    let model = AnalyticScore::new(common::mixture_2d(), sde.clone());
    for cfg in all_samplers() {
        let mut hook = Recorder {
            stop_at: Some(3),
            ..Recorder::default()
        };
        let err = sample(
            &CpuBackend,
            sde,
            &model,
            &Shape::new([4, 2]).unwrap(),
            &cfg,
            &mut NoiseRng::new(1),
            &mut hook,
        )
        .unwrap_err();
        let name = cfg.name();
        assert!(
            matches!(err, SolverError::Interrupted { step: 3, .. }),
            "{name}: {err}"
        );
        assert_eq!(hook.steps.len(), 3, "{name}");
        // Times decrease and the NFE grows with every step.
        for w in hook.steps.windows(2) {
            assert!(w[1].t < w[0].t && w[1].nfe > w[0].nfe, "{name}: {w:?}");
        }
        let total = match &cfg {
            SamplerConfig::Pc(_) => Some(50),
            SamplerConfig::Ode(_) => None,
            SamplerConfig::Heun(_) => Some(10),
            _ => Some(20),
        };
        assert_eq!(cfg.steps(sde), total, "{name}");
        assert!(hook.steps.iter().all(|s| s.total == total), "{name}");
    }
}

/// A projecting hook is applied by every sampler, the ODE included: the
/// pinned coordinate ends exactly where the projection puts it, the free one
/// still moves, and the ODE pays one extra evaluation per step for it.
#[test]
fn every_sampler_applies_a_projection() {
    let sde = &common::test_sdes(50)[1];
    let model = AnalyticScore::new(common::mixture_2d(), sde.clone());
    for cfg in all_samplers() {
        let run = |project: bool| {
            let mut hook = Recorder {
                project,
                ..Recorder::default()
            };
            let out = sample(
                &CpuBackend,
                sde,
                &model,
                &Shape::new([4, 2]).unwrap(),
                &cfg,
                &mut NoiseRng::new(2),
                &mut hook,
            )
            .unwrap();
            (out.samples.into_vec(), out.nfe, hook)
        };
        let name = cfg.name();
        let (x, nfe, hook) = run(true);
        assert!(hook.projections > 0, "{name}: never projected");
        assert!(x.iter().step_by(2).all(|v| *v == 0.25), "{name}: {x:?}");
        assert!(x
            .iter()
            .skip(1)
            .step_by(2)
            .all(|v| v.is_finite() && *v != 0.25));
        let (_, nfe_free, free) = run(false);
        assert_eq!(free.projections, 0);
        if let SamplerConfig::Ode(_) = cfg {
            // Two evaluations to start, six per step, and with the projection
            // one more per step in which some sample was accepted.
            let (steps, free_steps) = (hook.steps.len(), free.steps.len());
            assert_eq!(nfe_free, 2 + 6 * free_steps, "{name}");
            assert!(nfe > 2 + 6 * steps && nfe <= 2 + 7 * steps, "{name}: {nfe}");
        } else {
            assert_eq!(nfe, nfe_free, "{name}");
        }
    }
}

#[test]
fn time_grids_are_uniform_in_their_own_variable() {
    let n = 12;
    for sde in common::test_sdes(1000) {
        let eps = sde.default_sampling_eps();
        let check = |grid: TimeGrid, f: &dyn Fn(f64) -> f64| {
            let t = grid.times(&sde, n, eps).unwrap();
            assert_eq!(t.len(), n + 1);
            assert_eq!((t[0], t[n]), (sde.t_max(), eps), "{grid}");
            assert!(t.windows(2).all(|w| w[1] < w[0]), "{grid}: {t:?}");
            let u: Vec<f64> = t.iter().map(|&t| f(t)).collect();
            let step = (u[n] - u[0]) / n as f64;
            for (i, v) in u.iter().enumerate() {
                let want = u[0] + step * i as f64;
                assert!(
                    (v - want).abs() <= 1e-9 * (1.0 + want.abs()),
                    "{} {grid}: point {i}: {v} vs {want}",
                    sde.kind()
                );
            }
        };
        check(TimeGrid::Uniform, &|t| t);
        check(TimeGrid::LogSnr, &|t| -noise_to_signal(&sde, t).ln());
        check(TimeGrid::Edm { rho: 7.0 }, &|t| {
            noise_to_signal(&sde, t).powf(1.0 / 7.0)
        });
        check(TimeGrid::Edm { rho: 3.0 }, &|t| {
            noise_to_signal(&sde, t).powf(1.0 / 3.0)
        });
    }
    for (text, grid) in [
        ("uniform", TimeGrid::Uniform),
        ("log-snr", TimeGrid::LogSnr),
        ("edm", TimeGrid::Edm { rho: 7.0 }),
        ("edm:2.5", TimeGrid::Edm { rho: 2.5 }),
    ] {
        assert_eq!(text.parse::<TimeGrid>().unwrap(), grid);
        assert_eq!(grid.to_string(), text);
    }
    for bad in ["edm:0", "edm:x", "linear", "edm:inf"] {
        assert!(bad.parse::<TimeGrid>().is_err(), "{bad}");
    }
}

/// The same seed gives the same samples with every sampler; DDIM's eta and the
/// reverse SDE's stochasticity make the samplers random only when non-zero.
#[test]
fn samplers_are_reproducible_and_deterministic_where_they_should_be() {
    let sde = &common::test_sdes(100)[1];
    let model = AnalyticScore::new(common::mixture_2d(), sde.clone());
    let b = CpuBackend;
    let shape = Shape::new([6, 2]).unwrap();
    let start = b
        .scale(
            &b.gaussian(&shape, NoiseRng::new(9).next_key()).unwrap(),
            Coef::Scalar(1.0),
        )
        .unwrap();
    let run = |cfg: &SamplerConfig, seed| {
        solvers::sample_from(
            &b,
            sde,
            &model,
            start.clone(),
            cfg,
            &mut NoiseRng::new(seed),
            &mut (),
        )
        .unwrap()
        .samples
        .into_vec()
    };
    for cfg in all_samplers() {
        assert_eq!(run(&cfg, 3), run(&cfg, 3), "{}", cfg.name());
    }
    let ddim = |eta| {
        SamplerConfig::Ddim(DdimConfig {
            steps: 10,
            eta,
            ..DdimConfig::default()
        })
    };
    let rsde = |l| {
        SamplerConfig::ReverseSde(ReverseSdeConfig {
            steps: 10,
            stochasticity: l,
            ..ReverseSdeConfig::default()
        })
    };
    assert_eq!(run(&ddim(0.0), 3), run(&ddim(0.0), 4));
    assert_ne!(run(&ddim(0.5), 3), run(&ddim(0.5), 4));
    assert_eq!(run(&rsde(0.0), 3), run(&rsde(0.0), 4));
    assert_ne!(run(&rsde(1.0), 3), run(&rsde(1.0), 4));
}
