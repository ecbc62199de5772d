//! Configurations, validation errors, hooks and latent interpolation.
#![allow(clippy::unwrap_used)]

mod common;

use std::ops::ControlFlow;

use sde_core::analytic::AnalyticScore;
use sde_core::{Backend, CpuBackend, NoiseRng, Shape};
use solvers::interp::slerp;
use solvers::{
    pc_sample, CorrectorKind, NormMode, OdeConfig, PcConfig, PredictorKind, SamplerConfig,
    SamplerHooks, SolverError, StepInfo,
};

#[test]
fn sampler_config_reads_from_toml_with_reference_defaults() {
    let pc: SamplerConfig =
        toml::from_str("sampler = \"pc\"\npredictor = \"euler-maruyama\"\nsnr = 0.075\n").unwrap();
    match &pc {
        SamplerConfig::Pc(c) => {
            assert_eq!(c.predictor, PredictorKind::EulerMaruyama);
            assert_eq!(c.corrector, CorrectorKind::Langevin);
            assert_eq!(c.snr, 0.075);
            assert_eq!(c.corrector_steps, 1);
            assert!(c.denoise);
            assert_eq!(c.norm, NormMode::BatchMean);
        }
        other => panic!("{other:?}"),
    }
    let back: SamplerConfig = toml::from_str(&toml::to_string(&pc).unwrap()).unwrap();
    assert_eq!(back, pc);
    let ode: SamplerConfig =
        toml::from_str("sampler = \"ode\"\nrtol = 1e-3\ncontrol = \"pi\"\n").unwrap();
    match ode {
        SamplerConfig::Ode(c) => {
            assert_eq!((c.rtol, c.atol), (1e-3, 1e-5));
            assert_eq!(c.control, solvers::StepControl::Pi);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        toml::from_str::<SamplerConfig>("sampler = \"pc\"\nsnrr = 0.1\n").is_err(),
        "typo must be rejected"
    );
    assert!(toml::from_str::<SamplerConfig>("sampler = \"pc\"\npredictor = \"heun\"\n").is_err());
    assert_eq!(
        SamplerConfig::default(),
        SamplerConfig::Pc(PcConfig::default())
    );
    assert_eq!(OdeConfig::default().rtol, 1e-5);
}

#[test]
fn invalid_pc_configurations() {
    let sde = &common::test_sdes(50)[1];
    let cases = [
        PcConfig {
            snr: 0.0,
            ..PcConfig::default()
        },
        PcConfig {
            snr: f64::NAN,
            ..PcConfig::default()
        },
        PcConfig {
            eps: Some(0.0),
            ..PcConfig::default()
        },
        PcConfig {
            eps: Some(1.0),
            ..PcConfig::default()
        },
        PcConfig {
            corrector_steps: 0,
            ..PcConfig::default()
        },
        PcConfig {
            predictor: PredictorKind::None,
            corrector: CorrectorKind::None,
            ..PcConfig::default()
        },
    ];
    for cfg in cases {
        assert!(
            matches!(cfg.validate(sde), Err(SolverError::InvalidConfig { .. })),
            "{cfg:?}"
        );
    }
    // Corrector-only with zero corrector steps is fine when no corrector is used.
    let ok = PcConfig {
        corrector: CorrectorKind::None,
        corrector_steps: 0,
        ..PcConfig::default()
    };
    assert!(ok.validate(sde).is_ok());
}

struct StopAt(usize, Vec<StepInfo>);

impl SamplerHooks<CpuBackend> for StopAt {
    fn on_step(&mut self, info: &StepInfo) -> ControlFlow<()> {
        self.1.push(*info);
        if info.step == self.0 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

/// Hooks see every level with the running NFE; breaking stops the sampler
/// with a typed error naming the step.
#[test]
fn hooks_report_progress_and_can_interrupt() {
    let sde = &common::test_sdes(50)[0];
    let model = AnalyticScore::new(common::mixture_2d(), sde.clone());
    let mut hook = StopAt(7, Vec::new());
    let err = pc_sample(
        &CpuBackend,
        sde,
        &model,
        &Shape::new([4, 2]).unwrap(),
        &PcConfig::default(),
        &mut NoiseRng::new(0),
        &mut hook,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            SolverError::Interrupted {
                step: 7,
                total: Some(50)
            }
        ),
        "{err}"
    );
    assert_eq!(hook.1.len(), 7);
    assert_eq!(hook.1[0].t, 1.0);
    assert_eq!(hook.1[6].nfe, 14);
}

/// The same seed gives the same samples; another seed does not.
#[test]
fn sampling_is_reproducible_for_a_seed() {
    let sde = &common::test_sdes(50)[1];
    let model = AnalyticScore::new(common::mixture_2d(), sde.clone());
    let run = |seed| {
        let out = pc_sample(
            &CpuBackend,
            sde,
            &model,
            &Shape::new([8, 2]).unwrap(),
            &PcConfig::default(),
            &mut NoiseRng::new(seed),
            &mut (),
        )
        .unwrap();
        out.samples.into_vec()
    };
    assert_eq!(run(3), run(3));
    assert_ne!(run(3), run(4));
}

/// slerp: endpoints exact, norms interpolated for equal-norm inputs, the angle
/// split in proportion to alpha, and a fallback for parallel inputs.
#[test]
fn spherical_interpolation() {
    let b = CpuBackend;
    let shape = Shape::new([2, 2]).unwrap();
    let z0 = b.tensor(vec![1.0, 0.0, 2.0, 0.0], &shape).unwrap();
    let z1 = b.tensor(vec![0.0, 1.0, 4.0, 0.0], &shape).unwrap();
    let a0 = slerp(&b, &z0, &z1, 0.0).unwrap().into_vec();
    let a1 = slerp(&b, &z0, &z1, 1.0).unwrap().into_vec();
    let mid = slerp(&b, &z0, &z1, 0.5).unwrap().into_vec();
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
    assert!(close(&a0, &[1.0, 0.0, 2.0, 0.0]) && close(&a1, &[0.0, 1.0, 4.0, 0.0]));
    let h = std::f32::consts::FRAC_1_SQRT_2;
    assert!(close(&mid[..2], &[h, h]), "{mid:?}");
    assert!(
        close(&mid[2..], &[3.0, 0.0]),
        "parallel inputs fall back to lerp: {mid:?}"
    );
    let bad = b
        .tensor(vec![0.0; 6], &Shape::new([3, 2]).unwrap())
        .unwrap();
    assert!(slerp(&b, &z0, &bad, 0.5).is_err());
}
