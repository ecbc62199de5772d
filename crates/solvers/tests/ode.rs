//! The adaptive Dormand–Prince solver on ODEs with known solutions, and the
//! probability-flow encode/decode against the closed-form flow of Gaussian data.
#![allow(clippy::unwrap_used)]

mod common;

use sde_core::analytic::{AnalyticScore, DiagGaussian, GaussianMixture};
use sde_core::{Backend, Coef, CpuBackend, NoiseRng, Sde, Shape};
use solvers::{
    decode, encode, integrate, ode_sample, OdeConfig, OdeRhs, SolverError, StepControl, StepScope,
};

/// `dx/dt = lambda_n x` per sample (and `da/dt = lambda_n a` for the auxiliary
/// scalar), exact solution `x0 exp(lambda_n (t - t0))`.
struct Linear {
    lambdas: Vec<f32>,
}

impl OdeRhs<CpuBackend> for Linear {
    fn eval(
        &mut self,
        b: &CpuBackend,
        x: &sde_core::CpuTensor,
        _t: &[f64],
    ) -> solvers::Result<(sde_core::CpuTensor, Vec<f64>)> {
        let dx = b.scale(x, Coef::PerSample(&self.lambdas))?;
        Ok((dx, Vec::new()))
    }
}

fn linear_problem(lambdas: &[f32]) -> (Linear, sde_core::CpuTensor) {
    let b = CpuBackend;
    let n = lambdas.len();
    let x0 = b
        .tensor(
            (0..n * 3).map(|i| 0.5 + i as f32 * 0.25).collect(),
            &Shape::new([n, 3]).unwrap(),
        )
        .unwrap();
    (
        Linear {
            lambdas: lambdas.to_vec(),
        },
        x0,
    )
}

fn max_rel_error(lambdas: &[f32], x0: &[f32], x1: &[f32], span: f64) -> f64 {
    x1.iter()
        .enumerate()
        .map(|(i, &v)| {
            let want = f64::from(x0[i]) * (f64::from(lambdas[i / 3]) * span).exp();
            ((f64::from(v) - want) / want).abs()
        })
        .fold(0.0, f64::max)
}

/// The global error stays within a small multiple of the tolerance (local
/// error control; f32 state), forwards and backwards in time, with both controllers.
#[test]
fn linear_ode_reaches_requested_tolerance() {
    let b = CpuBackend;
    let lambdas = [-1.0f32, 0.5, -3.0, 2.0];
    for control in [StepControl::Standard, StepControl::Pi] {
        for (t0, t1) in [(0.0, 1.0), (1.0, 0.0)] {
            let (mut rhs, x0) = linear_problem(&lambdas);
            let cfg = OdeConfig {
                rtol: 1e-5,
                atol: 1e-7,
                control,
                ..OdeConfig::default()
            };
            let sol = integrate(&b, &mut rhs, x0.clone(), Vec::new(), t0, t1, &cfg).unwrap();
            let err = max_rel_error(&lambdas, x0.data(), sol.x.data(), t1 - t0);
            assert!(
                err < 2e-5,
                "{control:?} {t0}->{t1}: max relative error {err}"
            );
            assert!(sol.accepted.iter().all(|&a| a > 2), "{:?}", sol.accepted);
        }
    }
}

/// NFE falls as the tolerance loosens, and the error grows with it.
#[test]
fn nfe_falls_as_rtol_loosens() {
    let b = CpuBackend;
    let lambdas = [-1.0f32, 0.5, -3.0, 2.0];
    let mut last = (usize::MAX, 0.0);
    for rtol in [1e-6, 1e-4, 1e-2] {
        let (mut rhs, x0) = linear_problem(&lambdas);
        let cfg = OdeConfig {
            rtol,
            atol: rtol * 1e-2,
            ..OdeConfig::default()
        };
        let sol = integrate(&b, &mut rhs, x0.clone(), Vec::new(), 0.0, 1.0, &cfg).unwrap();
        let err = max_rel_error(&lambdas, x0.data(), sol.x.data(), 1.0);
        assert!(
            sol.nfe < last.0,
            "rtol {rtol}: nfe {} not below {}",
            sol.nfe,
            last.0
        );
        assert!(
            err > last.1,
            "rtol {rtol}: error {err} not above {}",
            last.1
        );
        last = (sol.nfe, err);
    }
}

/// Per-sample step control: an easy sample finishes with far fewer
/// evaluations than a stiff one in the same batch, and gets the same result as
/// when solved alone; with one step for the whole batch every sample pays for
/// the hardest one.
#[test]
fn per_sample_step_control() {
    let b = CpuBackend;
    let lambdas = [-0.1f32, -40.0];
    let cfg = OdeConfig {
        rtol: 1e-6,
        atol: 1e-8,
        ..OdeConfig::default()
    };
    let (mut rhs, x0) = linear_problem(&lambdas);
    let per = integrate(&b, &mut rhs, x0.clone(), Vec::new(), 0.0, 1.0, &cfg).unwrap();
    assert!(
        per.nfe_per_sample[0] * 3 < per.nfe_per_sample[1],
        "{:?}",
        per.nfe_per_sample
    );
    let (mut alone, x_alone) = linear_problem(&lambdas[..1]);
    let single = integrate(&b, &mut alone, x_alone, Vec::new(), 0.0, 1.0, &cfg).unwrap();
    assert_eq!(
        &per.x.data()[..3],
        single.x.data(),
        "a sample's result depends on its batch"
    );
    let batch_cfg = OdeConfig {
        scope: StepScope::Batch,
        ..cfg
    };
    let (mut rhs, x0b) = linear_problem(&lambdas);
    let whole = integrate(&b, &mut rhs, x0b, Vec::new(), 0.0, 1.0, &batch_cfg).unwrap();
    assert_eq!(whole.nfe_per_sample[0], whole.nfe_per_sample[1]);
    assert!(whole.nfe_per_sample[0] > 3 * per.nfe_per_sample[0]);
    // Within 10 x (atol + rtol |x|) of the exact solution (x(1) ~ 4e-18 for
    // lambda = -40, so a relative error would be meaningless there).
    for (i, &v) in whole.x.data().iter().enumerate() {
        let want = f64::from(x0.data()[i]) * f64::from(lambdas[i / 3]).exp();
        assert!(
            (f64::from(v) - want).abs() <= 10.0 * (1e-8 + 1e-6 * want.abs()),
            "{i}: {v} vs {want}"
        );
    }
}

/// Auxiliary per-sample scalars are integrated with the state.
#[test]
fn auxiliary_scalars_are_integrated() {
    struct WithAux;
    impl OdeRhs<CpuBackend> for WithAux {
        fn eval(
            &mut self,
            b: &CpuBackend,
            x: &sde_core::CpuTensor,
            t: &[f64],
        ) -> solvers::Result<(sde_core::CpuTensor, Vec<f64>)> {
            // dx/dt = -x, da/dt = cos(t) (exact: a(1) = a(0) + sin(1)).
            Ok((
                b.scale(x, Coef::Scalar(-1.0))?,
                t.iter().map(|t| t.cos()).collect(),
            ))
        }
    }
    let b = CpuBackend;
    let x0 = b
        .tensor(vec![1.0, 2.0], &Shape::new([2, 1]).unwrap())
        .unwrap();
    let cfg = OdeConfig {
        rtol: 1e-7,
        atol: 1e-9,
        ..OdeConfig::default()
    };
    let sol = integrate(&b, &mut WithAux, x0, vec![0.5, -1.0], 0.0, 1.0, &cfg).unwrap();
    assert!(
        (sol.aux[0] - (0.5 + 1f64.sin())).abs() < 1e-6,
        "{:?}",
        sol.aux
    );
    assert!(
        (sol.aux[1] - (-1.0 + 1f64.sin())).abs() < 1e-6,
        "{:?}",
        sol.aux
    );
    assert!((f64::from(sol.x.data()[1]) - 2.0 * (-1f64).exp()).abs() < 1e-5);
}

/// A step budget that cannot reach the end reports the time reached.
#[test]
fn exhausted_budget_and_bad_settings_are_typed_errors() {
    let b = CpuBackend;
    let (mut rhs, x0) = linear_problem(&[-1.0]);
    let cfg = OdeConfig {
        rtol: 1e-8,
        atol: 1e-10,
        max_steps: 5,
        ..OdeConfig::default()
    };
    match integrate(&b, &mut rhs, x0.clone(), Vec::new(), 0.0, 1.0, &cfg) {
        Err(SolverError::StepBudgetExhausted {
            steps: 5,
            t_reached,
            t_end,
        }) => {
            assert!(
                t_reached > 0.0 && t_reached < 1.0 && t_end == 1.0,
                "{t_reached}"
            );
        }
        other => panic!("expected StepBudgetExhausted, got {other:?}"),
    }
    let cfg = OdeConfig {
        rtol: 1e-8,
        atol: 1e-10,
        h_min: 0.5,
        h_init: Some(0.6),
        ..OdeConfig::default()
    };
    assert!(matches!(
        integrate(&b, &mut rhs, x0.clone(), Vec::new(), 0.0, 1.0, &cfg),
        Err(SolverError::StepSizeUnderflow { .. })
    ));
    for bad in [
        OdeConfig {
            rtol: 0.0,
            ..OdeConfig::default()
        },
        OdeConfig {
            atol: -1.0,
            ..OdeConfig::default()
        },
        OdeConfig {
            h_max: 0.0,
            ..OdeConfig::default()
        },
        OdeConfig {
            max_steps: 0,
            ..OdeConfig::default()
        },
        OdeConfig {
            h_init: Some(f64::NAN),
            ..OdeConfig::default()
        },
    ] {
        assert!(matches!(
            integrate(&b, &mut rhs, x0.clone(), Vec::new(), 0.0, 1.0, &bad),
            Err(SolverError::InvalidConfig { .. })
        ));
    }
}

/// For Gaussian data `N(mu, diag v)` the probability-flow map is affine per
/// dimension: `x_t = m_t mu + sqrt(V_t / V_s) (x_s - m_s mu)` with
/// `V_t = m_t^2 v + s_t^2` (the standardised coordinate is constant along the
/// flow). Encoding must follow it, and decoding must invert encoding.
#[test]
fn encode_follows_the_closed_form_flow_and_decode_inverts_it() {
    let b = CpuBackend;
    let mean = vec![0.5, -1.0, 2.0];
    let var = vec![0.2, 1.0, 0.05];
    let data = GaussianMixture::gaussian(DiagGaussian::new(mean.clone(), var.clone()).unwrap());
    let cfg = OdeConfig {
        rtol: 1e-6,
        atol: 1e-6,
        eps: Some(1e-3),
        ..OdeConfig::default()
    };
    for sde in common::test_sdes(1000) {
        let model = AnalyticScore::new(data.clone(), sde.clone());
        let n = 6;
        let x = b
            .tensor(
                data.sample(n, &mut NoiseRng::new(3)),
                &Shape::new([n, 3]).unwrap(),
            )
            .unwrap();
        let z = encode(&b, &sde, &model, x.clone(), &cfg, &mut ()).unwrap();
        let (ke, kt) = (sde.marginal(1e-3), sde.marginal(1.0));
        for i in 0..n * 3 {
            let j = i % 3;
            let ve = ke.mean_coef.powi(2) * var[j] + ke.std.powi(2);
            let vt = kt.mean_coef.powi(2) * var[j] + kt.std.powi(2);
            let want = kt.mean_coef * mean[j]
                + (vt / ve).sqrt() * (f64::from(x.data()[i]) - ke.mean_coef * mean[j]);
            let got = f64::from(z.x.data()[i]);
            assert!(
                (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                "{} element {i}: {got} vs {want}",
                sde.kind()
            );
        }
        let back = decode(&b, &sde, &model, z.x, &cfg, &mut ()).unwrap();
        for (a, c) in back.x.data().iter().zip(x.data()) {
            assert!(
                (a - c).abs() <= 1e-4 * c.abs().max(1.0),
                "{}: decode(encode(x)) {a} vs {c}",
                sde.kind()
            );
        }
    }
}

/// Encode then decode returns mixture data to within the solver tolerance.
#[test]
fn encode_decode_round_trip_on_a_mixture() {
    let b = CpuBackend;
    let data = common::mixture_2d();
    let cfg = OdeConfig {
        rtol: 1e-6,
        atol: 1e-6,
        ..OdeConfig::default()
    };
    for sde in common::test_sdes(1000) {
        let model = AnalyticScore::new(data.clone(), sde.clone());
        let x = b
            .tensor(
                data.sample(16, &mut NoiseRng::new(5)),
                &Shape::new([16, 2]).unwrap(),
            )
            .unwrap();
        let z = encode(&b, &sde, &model, x.clone(), &cfg, &mut ()).unwrap();
        let back = decode(&b, &sde, &model, z.x, &cfg, &mut ()).unwrap();
        let err = back
            .x
            .data()
            .iter()
            .zip(x.data())
            .map(|(a, c)| (a - c).abs())
            .fold(0.0f32, f32::max);
        assert!(
            err < 1e-3,
            "{}: max |decode(encode(x)) - x| = {err}",
            sde.kind()
        );
    }
}

/// NFE of the ODE sampler on the 16-D mixture (VP) falls as rtol = atol loosens.
/// Run with `--nocapture` to see the curve.
#[test]
fn ode_sampler_nfe_curve_on_16d_mixture() {
    let b = CpuBackend;
    let data = common::mixture_16d();
    let sde = &common::test_sdes(1000)[1];
    let model = AnalyticScore::new(data, sde.clone());
    let shape = Shape::new([64, 16]).unwrap();
    let mut last = usize::MAX;
    for tol in [1e-5, 1e-4, 1e-3, 1e-2] {
        let cfg = OdeConfig {
            rtol: tol,
            atol: tol,
            ..OdeConfig::default()
        };
        let out = ode_sample(
            &b,
            sde,
            &model,
            &shape,
            &cfg,
            &mut NoiseRng::new(0),
            &mut (),
        )
        .unwrap();
        let mean_per_sample = out.nfe_per_sample.iter().sum::<usize>() as f64 / 64.0;
        println!(
            "rtol = atol = {tol:e}: batched NFE {}, mean per-sample NFE {mean_per_sample:.1}",
            out.nfe
        );
        assert!(
            out.nfe < last,
            "tol {tol}: NFE {} not below {last}",
            out.nfe
        );
        last = out.nfe;
    }
}
