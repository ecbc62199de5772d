//! The adaptive Dormand–Prince solver on ODEs with known solutions, and the
//! probability-flow encode/decode against the closed-form flow of Gaussian data.
#![allow(clippy::unwrap_used)]

mod common;

use sde_core::analytic::{AnalyticScore, DiagGaussian, GaussianMixture};
use sde_core::{Backend, Coef, CpuBackend, NoiseRng, ScoreModel, Sde, Shape};
use solvers::{
    decode, encode, integrate, integrate_with_hooks, ode_sample, ode_sample_from, OdeConfig,
    OdeRhs, SamplerHooks, SolverError, StepControl, StepScope, Update,
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
    for sde in common::all_sdes(1000) {
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
    for sde in common::all_sdes(1000) {
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

/// Per sample `x = (x_0, x_1)`: `dx/dt = [[-1/2, w], [-w, -1/2]] x` with
/// `w = 2 + 8 t^2` (a spiral that speeds up), and one auxiliary scalar with
/// `da/dt = x_0 - x_1 + cos(5 t)`.
fn spiral(t: f64, x: [f64; 2]) -> ([f64; 2], f64) {
    let w = 2.0 + 8.0 * t * t;
    (
        [-0.5 * x[0] + w * x[1], -w * x[0] - 0.5 * x[1]],
        x[0] - x[1] + (5.0 * t).cos(),
    )
}

/// [`spiral`] as a batched right-hand side; records the time of every evaluation.
struct Spiral {
    times: Vec<f64>,
}

impl OdeRhs<CpuBackend> for Spiral {
    fn eval(
        &mut self,
        b: &CpuBackend,
        x: &sde_core::CpuTensor,
        t: &[f64],
    ) -> solvers::Result<(sde_core::CpuTensor, Vec<f64>)> {
        self.times.push(t[0]);
        let mut dx = Vec::new();
        let mut da = Vec::new();
        for (n, &t) in t.iter().enumerate() {
            let s = x.sample(n);
            let (d, a) = spiral(t, [f64::from(s[0]), f64::from(s[1])]);
            dx.extend(d.iter().map(|&v| v as f32));
            da.push(a);
        }
        Ok((b.tensor(dx, b.shape(x))?, da))
    }
}

/// What scipy's `solve_ivp(method="RK45")` computes, written from scipy's
/// source (`select_initial_step` and `RungeKutta._step_impl`) on a flat `f64`
/// state without `max_step` or `min_step`. Returns the final state, the
/// number of evaluations, the accepted and rejected steps and the initial step.
fn scipy_rk45(
    f: impl Fn(f64, &[f64]) -> Vec<f64>,
    t0: f64,
    t1: f64,
    y0: &[f64],
    rtol: f64,
    atol: f64,
) -> (Vec<f64>, usize, usize, usize, f64) {
    const C: [f64; 6] = [0.0, 1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0];
    const A: [[f64; 5]; 6] = [
        [0.0; 5],
        [1.0 / 5.0, 0.0, 0.0, 0.0, 0.0],
        [3.0 / 40.0, 9.0 / 40.0, 0.0, 0.0, 0.0],
        [44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0, 0.0, 0.0],
        [
            19372.0 / 6561.0,
            -25360.0 / 2187.0,
            64448.0 / 6561.0,
            -212.0 / 729.0,
            0.0,
        ],
        [
            9017.0 / 3168.0,
            -355.0 / 33.0,
            46732.0 / 5247.0,
            49.0 / 176.0,
            -5103.0 / 18656.0,
        ],
    ];
    const B: [f64; 6] = [
        35.0 / 384.0,
        0.0,
        500.0 / 1113.0,
        125.0 / 192.0,
        -2187.0 / 6784.0,
        11.0 / 84.0,
    ];
    const E: [f64; 7] = [
        -71.0 / 57600.0,
        0.0,
        71.0 / 16695.0,
        -71.0 / 1920.0,
        17253.0 / 339200.0,
        -22.0 / 525.0,
        1.0 / 40.0,
    ];
    // RMS norm of v / scale over the whole flat state.
    let norm = |v: &[f64], scale: &[f64]| {
        (v.iter()
            .zip(scale)
            .map(|(v, s)| (v / s).powi(2))
            .sum::<f64>()
            / v.len() as f64)
            .sqrt()
    };
    let axpy = |y: &[f64], h: f64, k: &[f64]| -> Vec<f64> {
        y.iter().zip(k).map(|(y, k)| y + h * k).collect()
    };
    let dir = (t1 - t0).signum();
    let span = (t1 - t0).abs();
    let (mut y, mut fy) = (y0.to_vec(), f(t0, y0));
    let mut nfev = 1;
    // select_initial_step (order 4).
    let scale: Vec<f64> = y.iter().map(|y| atol + y.abs() * rtol).collect();
    let (d0, d1) = (norm(&y, &scale), norm(&fy, &scale));
    let h0 = if d0 < 1e-5 || d1 < 1e-5 {
        1e-6
    } else {
        0.01 * d0 / d1
    }
    .min(span);
    let f1 = f(t0 + h0 * dir, &axpy(&y, h0 * dir, &fy));
    nfev += 1;
    let df: Vec<f64> = f1.iter().zip(&fy).map(|(a, b)| a - b).collect();
    let d2 = norm(&df, &scale) / h0;
    let h1 = if d1 <= 1e-15 && d2 <= 1e-15 {
        (h0 * 1e-3).max(1e-6)
    } else {
        (0.01 / d1.max(d2)).powf(0.2)
    };
    let h_init = (100.0 * h0).min(h1).min(span);
    let mut h_abs = h_init;
    let (mut t, mut accepted, mut rejected) = (t0, 0, 0);
    while dir * (t - t1) < 0.0 {
        let mut step_rejected = false;
        loop {
            let mut t_new = t + dir * h_abs;
            if dir * (t_new - t1) > 0.0 {
                t_new = t1;
            }
            let h = t_new - t;
            h_abs = h.abs();
            let mut k = vec![fy.clone()];
            for s in 1..6 {
                let mut ys = y.clone();
                for (j, kj) in k.iter().enumerate() {
                    ys = axpy(&ys, h * A[s][j], kj);
                }
                k.push(f(t + C[s] * h, &ys));
            }
            let mut y_new = y.clone();
            for (bj, kj) in B.iter().zip(&k) {
                y_new = axpy(&y_new, h * bj, kj);
            }
            let f_new = f(t + h, &y_new);
            k.push(f_new.clone());
            nfev += 6;
            let mut err = vec![0.0; y.len()];
            for (ej, kj) in E.iter().zip(&k) {
                err = axpy(&err, h * ej, kj);
            }
            let scale: Vec<f64> = y
                .iter()
                .zip(&y_new)
                .map(|(a, b)| atol + a.abs().max(b.abs()) * rtol)
                .collect();
            let en = norm(&err, &scale);
            if en < 1.0 {
                let mut factor = if en == 0.0 {
                    10.0
                } else {
                    (0.9 * en.powf(-0.2)).min(10.0)
                };
                if step_rejected {
                    factor = factor.min(1.0);
                }
                h_abs *= factor;
                (t, y, fy) = (t_new, y_new, f_new);
                accepted += 1;
                break;
            }
            h_abs *= (0.9 * en.powf(-0.2)).max(0.2);
            step_rejected = true;
            rejected += 1;
        }
    }
    (y, nfev, accepted, rejected, h_init)
}

/// `StepScope::Batch` is scipy's RK45 on the flattened batch: one RMS error
/// norm over every sample's elements and auxiliary scalars, and Hairer's
/// initial step from whole-state norms. On three samples of very different
/// scales (so the worst sample's error is far above the whole-state RMS), the
/// initial step, the evaluations and the accepted and rejected steps equal
/// those of the host-side reference `scipy_rk45`, and the final states agree
/// to f32 rounding (the former rule, the worst sample's norm and the smallest
/// per-sample initial step, took 92 and 62 evaluations instead of 74 and 56,
/// and ended up to 1.9 tolerances away). The reference itself reproduces
/// scipy 1.17.1, whose numbers are embedded (the initial steps are scipy's
/// `select_initial_step(f, t0, y0, t1, inf, f(t0, y0), sign(t1 - t0), 4, rtol, atol)`).
///
/// The tolerances are loose enough for the f32 state's rounding (about 1e-5
/// of a scaled error norm here) not to matter: at `rtol = 1e-5, atol = 1e-7`
/// the reference's first error norm is about 0 (step factor 10) but the f32
/// solver measures 2e-5 of rounding (factor 7.5), and the step sequences part.
///
/// ```python
/// import numpy as np
/// from scipy.integrate import solve_ivp
/// x0 = np.array([[1.0, -0.5], [2**-9, 2**-10], [-3 * 2**-10, 3 * 2**-11]])
/// def f(t, y):
///     w = 2.0 + 8.0 * t * t
///     x = y[:6].reshape(3, 2)
///     dx = np.stack([-0.5 * x[:, 0] + w * x[:, 1], -w * x[:, 0] - 0.5 * x[:, 1]], axis=1)
///     da = x[:, 0] - x[:, 1] + np.cos(5 * t)
///     return np.concatenate([dx.ravel(), da])
/// for (t0, t1) in [(0.0, 1.0), (1.0, 0.25)]:
///     y0 = np.concatenate([x0.ravel(), [0.0, 0.5, -1.0]])
///     s = solve_ivp(f, (t0, t1), y0, method="RK45", rtol=1e-4, atol=1e-6)
///     print(t0, t1, s.nfev, len(s.t) - 1, (s.nfev - 2) // 6 - (len(s.t) - 1),
///           [float(v) for v in s.y[:, -1]])
/// ```
#[test]
fn batch_scope_is_scipy_rk45_on_the_flattened_batch() {
    let b = CpuBackend;
    let x0 = [
        1.0f32,
        -0.5,
        2f32.powi(-9),
        2f32.powi(-10),
        -3.0 * 2f32.powi(-10),
        3.0 * 2f32.powi(-11),
    ];
    let a0 = [0.0, 0.5, -1.0];
    // The flat state of scipy's script: six tensor elements, then the three scalars.
    let flat = |t: f64, y: &[f64]| -> Vec<f64> {
        let mut dy = vec![0.0; 9];
        for n in 0..3 {
            let (d, a) = spiral(t, [y[2 * n], y[2 * n + 1]]);
            dy[2 * n..2 * n + 2].copy_from_slice(&d);
            dy[6 + n] = a;
        }
        dy
    };
    let y0: Vec<f64> = x0.iter().map(|&v| f64::from(v)).chain(a0).collect();
    let (rtol, atol) = (1e-4, 1e-6);
    #[allow(clippy::type_complexity)]
    let cases: [((f64, f64), f64, (usize, usize, usize), [f64; 9]); 2] = [
        (
            (0.0, 1.0),
            0.00798396464551341,
            (74, 9, 3),
            [
                0.2752223066150307,
                0.6195629883412375,
                -0.0006455410287186942,
                0.001156085231048373,
                -0.0008063153514112229,
                -0.0018151259424059685,
                0.2244815429132804,
                0.3093342355573912,
                -1.1930010190255447,
            ],
        ),
        (
            (1.0, 0.25),
            0.011121199797041797,
            (56, 9, 0),
            [
                -1.4118667104828222,
                -0.8080297264103771,
                -0.0003919848538308443,
                -0.0031529515707665714,
                0.0041363282533676445,
                0.002367274589092901,
                1.0877472483531379,
                0.8823310091277069,
                -0.62048701316607,
            ],
        ),
    ];
    for ((t0, t1), h_scipy, (nfev, acc, rej), y_scipy) in cases {
        let (y_ref, n_ref, acc_ref, rej_ref, h_ref) = scipy_rk45(flat, t0, t1, &y0, rtol, atol);
        assert!(
            (h_ref - h_scipy).abs() <= 1e-12 * h_scipy,
            "{t0}->{t1}: initial step {h_ref} vs scipy {h_scipy}"
        );
        assert_eq!(
            (n_ref, acc_ref, rej_ref),
            (nfev, acc, rej),
            "{t0}->{t1}: reference vs scipy"
        );
        for (r, s) in y_ref.iter().zip(&y_scipy) {
            assert!(
                (r - s).abs() <= 1e-12 * s.abs().max(1e-3),
                "{t0}->{t1}: {r} vs scipy {s}"
            );
        }
        let cfg = OdeConfig {
            rtol,
            atol,
            scope: StepScope::Batch,
            ..OdeConfig::default()
        };
        let x = b.tensor(x0.to_vec(), &Shape::new([3, 2]).unwrap()).unwrap();
        let mut rhs = Spiral { times: Vec::new() };
        let sol = integrate(&b, &mut rhs, x, a0.to_vec(), t0, t1, &cfg).unwrap();
        // Evaluation 3 is the first stage of the first step, at t0 + h / 5.
        let h_init = 5.0 * (rhs.times[2] - t0).abs();
        assert!(
            (h_init - h_ref).abs() <= 1e-6 * h_ref,
            "{t0}->{t1}: initial step {h_init} vs {h_ref}"
        );
        println!(
            "{t0}->{t1}: Batch h0 {h_init:.6e} NFE {} accepted {:?} rejected {:?}; \
             scipy h0 {h_ref:.6e} NFE {nfev} accepted {acc} rejected {rej}",
            sol.nfe, sol.accepted, sol.rejected
        );
        assert_eq!(sol.nfe, nfev, "{t0}->{t1}: NFE");
        assert_eq!(sol.accepted, vec![acc; 3], "{t0}->{t1}: accepted steps");
        assert_eq!(sol.rejected, vec![rej; 3], "{t0}->{t1}: rejected steps");
        let got = sol
            .x
            .data()
            .iter()
            .map(|&v| f64::from(v))
            .chain(sol.aux.iter().copied());
        // The step sizes differ only by the f32 rounding in the error norms,
        // so the states agree to a small fraction of the tolerance.
        let mut worst = 0.0f64;
        for (i, (g, r)) in got.zip(&y_ref).enumerate() {
            let rel = (g - r).abs() / (atol + rtol * r.abs());
            worst = worst.max(rel);
            assert!(rel <= 0.1, "{t0}->{t1} element {i}: {g} vs {r}");
        }
        println!("{t0}->{t1}: max |x - x_ref| / (atol + rtol |x_ref|) = {worst:.2e}");
    }
}

/// Passes every call to the wrapped right-hand side but refuses
/// [`OdeRhs::restrict`]: the solver then evaluates the whole batch every
/// time, finished samples frozen (what it did before they left the batch).
struct Frozen<R>(R);

impl<B: Backend, R: OdeRhs<B>> OdeRhs<B> for Frozen<R> {
    fn eval(&mut self, b: &B, x: &B::Tensor, t: &[f64]) -> solvers::Result<(B::Tensor, Vec<f64>)> {
        self.0.eval(b, x, t)
    }
}

/// Per sample `n`: `dx/dt = lambda_n x` and two auxiliary scalars,
/// `da/dt = (lambda_n cos t + x_0, -x_1 t)`. Follows the solver's working
/// batch through [`OdeRhs::restrict`] and records the batch of every call.
struct Shrinking {
    lambdas: Vec<f32>,
    active: Vec<usize>,
    sizes: Vec<usize>,
    restricts: usize,
}

impl Shrinking {
    fn new(lambdas: &[f32]) -> Self {
        Shrinking {
            lambdas: lambdas.to_vec(),
            active: (0..lambdas.len()).collect(),
            sizes: Vec::new(),
            restricts: 0,
        }
    }
}

impl OdeRhs<CpuBackend> for Shrinking {
    fn eval(
        &mut self,
        b: &CpuBackend,
        x: &sde_core::CpuTensor,
        t: &[f64],
    ) -> solvers::Result<(sde_core::CpuTensor, Vec<f64>)> {
        let n = b.shape(x).batch();
        assert_eq!((n, t.len()), (self.active.len(), self.active.len()));
        self.sizes.push(n);
        let lam: Vec<f32> = self.active.iter().map(|&i| self.lambdas[i]).collect();
        let mut da = Vec::with_capacity(2 * n);
        for (i, (&t, &l)) in t.iter().zip(&lam).enumerate() {
            let s = x.sample(i);
            da.push(f64::from(l) * t.cos() + f64::from(s[0]));
            da.push(-f64::from(s[1]) * t);
        }
        Ok((b.scale(x, Coef::PerSample(&lam))?, da))
    }

    fn restrict(&mut self, _b: &CpuBackend, active: &[usize]) -> solvers::Result<bool> {
        assert!(!active.is_empty() && active.windows(2).all(|w| w[0] < w[1]));
        assert!(active.iter().all(|i| self.active.contains(i)) && active.len() < self.active.len());
        self.active = active.to_vec();
        self.restricts += 1;
        Ok(true)
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|v| v.to_bits()).collect()
}

fn bits64(v: &[f64]) -> Vec<u64> {
    v.iter().map(|v| v.to_bits()).collect()
}

/// Samples of very different difficulty (rates from -40 to 3, scales from
/// 1e-3 to 100) finish at very different steps. Finished samples leave the
/// batch: every sample's state, auxiliary scalars, evaluation count and
/// accepted and rejected steps are bit for bit those of the frozen-batch
/// solver and of the sample solved alone, in both directions and with both
/// controllers; the solver evaluates exactly the samples still moving
/// (`sample_evals` = sum of `nfe_per_sample`), far fewer than the frozen
/// batch's `nfe * batch`, and `nfe` (batched calls) is unchanged.
#[test]
fn finished_samples_leave_the_batch_with_bit_identical_results() {
    let b = CpuBackend;
    let lambdas = [-0.1f32, -40.0, 3.0, -8.0, -0.5, -40.0, 0.2];
    let scales = [1.0f32, 100.0, 1e-3, 10.0, 1.0, 1e-2, 30.0];
    let n = lambdas.len();
    let x0: Vec<f32> = (0..n * 2)
        .map(|i| (0.5 + i as f32 * 0.25) * scales[i / 2] * if i % 3 == 0 { -1.0 } else { 1.0 })
        .collect();
    let a0: Vec<f64> = (0..n * 2).map(|i| 0.1 * i as f64 - 0.3).collect();
    let shape = Shape::new([n, 2]).unwrap();
    for control in [StepControl::Standard, StepControl::Pi] {
        for (t0, t1) in [(0.0, 1.0), (1.0, 0.1)] {
            let cfg = OdeConfig {
                rtol: 1e-6,
                atol: 1e-8,
                control,
                ..OdeConfig::default()
            };
            let x = b.tensor(x0.clone(), &shape).unwrap();
            let mut rhs = Shrinking::new(&lambdas);
            let sol = integrate(&b, &mut rhs, x.clone(), a0.clone(), t0, t1, &cfg).unwrap();
            let mut frozen = Frozen(Shrinking::new(&lambdas));
            let old = integrate(&b, &mut frozen, x, a0.clone(), t0, t1, &cfg).unwrap();
            let case = format!("{control:?} {t0}->{t1}");
            assert_eq!(bits(sol.x.data()), bits(old.x.data()), "{case}: x");
            assert_eq!(bits64(&sol.aux), bits64(&old.aux), "{case}: aux");
            assert_eq!(sol.nfe_per_sample, old.nfe_per_sample, "{case}");
            assert_eq!(sol.accepted, old.accepted, "{case}");
            assert_eq!(sol.rejected, old.rejected, "{case}");
            assert_eq!(sol.nfe, old.nfe, "{case}: batched calls");
            // The work: only samples still moving are evaluated.
            let moving: usize = sol.nfe_per_sample.iter().sum();
            assert_eq!(sol.sample_evals, moving, "{case}");
            assert_eq!(rhs.sizes.iter().sum::<usize>(), moving, "{case}");
            assert_eq!(rhs.sizes.len(), sol.nfe, "{case}");
            assert_eq!(old.sample_evals, old.nfe * n, "{case}");
            assert_eq!(frozen.0.sizes, vec![n; old.nfe], "{case}");
            let (least, most) = (
                *sol.nfe_per_sample.iter().min().unwrap(),
                *sol.nfe_per_sample.iter().max().unwrap(),
            );
            assert!(most > 3 * least, "{case}: {:?}", sol.nfe_per_sample);
            assert!(2 * sol.sample_evals < old.sample_evals, "{case}");
            assert!(rhs.restricts >= 2, "{case}: {} restrictions", rhs.restricts);
            println!(
                "{case}: nfe {} per sample {:?}: {} sample evaluations instead of {}",
                sol.nfe, sol.nfe_per_sample, sol.sample_evals, old.sample_evals
            );
            // Each sample alone.
            for i in 0..n {
                let xi = b
                    .tensor(x0[2 * i..2 * i + 2].to_vec(), &Shape::new([1, 2]).unwrap())
                    .unwrap();
                let mut alone = Shrinking::new(&lambdas[i..=i]);
                let ai = a0[2 * i..2 * i + 2].to_vec();
                let one = integrate(&b, &mut alone, xi, ai, t0, t1, &cfg).unwrap();
                assert_eq!(
                    bits(one.x.data()),
                    bits(sol.x.sample(i)),
                    "{case} sample {i}"
                );
                assert_eq!(
                    bits64(&one.aux),
                    bits64(&sol.aux[2 * i..2 * i + 2]),
                    "{case} sample {i}: aux"
                );
                assert_eq!(one.nfe, sol.nfe_per_sample[i], "{case} sample {i}");
                assert_eq!(
                    (one.accepted[0], one.rejected[0]),
                    (sol.accepted[i], sol.rejected[i]),
                    "{case} sample {i}"
                );
            }
        }
    }
}

/// Records the batch and times a projecting hook gets, and pins the last
/// element of every sample to 0.5.
#[derive(Default)]
struct Pin {
    calls: usize,
}

impl SamplerHooks<CpuBackend> for Pin {
    fn after_update(
        &mut self,
        b: &CpuBackend,
        update: Update<sde_core::CpuTensor>,
        t: &[f64],
        _rng: &mut NoiseRng,
    ) -> solvers::Result<Update<sde_core::CpuTensor>> {
        self.calls += 1;
        assert_eq!(b.shape(&update.x).batch(), t.len());
        let d = b.shape(&update.x).sample_numel();
        let mut x = b.to_vec(&update.x)?;
        for v in x.iter_mut().skip(d - 1).step_by(d) {
            *v = 0.5;
        }
        Ok(Update::exact(b.tensor(x, b.shape(&update.x))?))
    }
    fn projects(&self) -> bool {
        true
    }
}

/// Probability-flow sampling of the 16-D mixture from prior draws scaled
/// from 0.1 to 6 (so that the samples need very different numbers of
/// steps): the analytic score evaluates each sample on its own, so leaving
/// the batch changes no bit of any sample, nor `nfe_per_sample`, against
/// the frozen batch and against each sample solved alone. With a projecting
/// hook (which gets the whole batch every time, finished samples included)
/// the results stay bit-identical too; the solver only skips the frozen
/// batch's last evaluation after the final projection.
#[test]
fn ode_sampling_with_shrinking_batches_is_bit_identical() {
    let b = CpuBackend;
    let sde = &common::test_sdes(1000)[1];
    let model = AnalyticScore::new(common::mixture_16d(), sde.clone());
    let (n, d) = (24, 16);
    let shape = Shape::new([n, d]).unwrap();
    let mut z = b
        .to_vec(&b.gaussian(&shape, NoiseRng::new(4).next_key()).unwrap())
        .unwrap();
    let factor = [0.1f32, 1.0, 3.0, 6.0];
    for (i, v) in z.iter_mut().enumerate() {
        *v *= factor[(i / d) % 4];
    }
    let z = b.tensor(z, &shape).unwrap();
    let eps = 1e-3;
    let cfg = OdeConfig {
        rtol: 1e-5,
        atol: 1e-5,
        eps: Some(eps),
        ..OdeConfig::default()
    };
    let flow = || solvers::ode::FlowRhs { sde, model: &model };
    let rng = || NoiseRng::new(0);
    let new = ode_sample_from(&b, sde, &model, z.clone(), &cfg, &mut rng(), &mut ()).unwrap();
    let old = integrate_with_hooks(
        &b,
        &mut Frozen(flow()),
        z.clone(),
        Vec::new(),
        sde.t_max(),
        eps,
        &cfg,
        &mut (),
        &mut rng(),
    )
    .unwrap();
    assert_eq!(bits(new.x.data()), bits(old.x.data()));
    assert_eq!(new.nfe_per_sample, old.nfe_per_sample);
    assert_eq!(new.nfe, old.nfe);
    let moving: usize = new.nfe_per_sample.iter().sum();
    assert_eq!(new.sample_evals, moving);
    assert_eq!(old.sample_evals, old.nfe * n);
    let (least, most) = (
        *new.nfe_per_sample.iter().min().unwrap(),
        *new.nfe_per_sample.iter().max().unwrap(),
    );
    assert!(least < most, "{:?}", new.nfe_per_sample);
    println!(
        "16-D mixture, {n} samples: nfe {} per sample {least}..{most}: \
         {} sample evaluations instead of {}",
        new.nfe, new.sample_evals, old.sample_evals
    );
    for i in [0, 1, 2, 3, n - 1] {
        let zi = b.take_samples(&z, &[i]).unwrap();
        let one = ode_sample_from(&b, sde, &model, zi, &cfg, &mut rng(), &mut ()).unwrap();
        assert_eq!(bits(one.x.data()), bits(new.x.sample(i)), "sample {i}");
        assert_eq!(one.nfe, new.nfe_per_sample[i], "sample {i}");
    }
    // With a projection.
    let mut pin = Pin::default();
    let new = ode_sample_from(&b, sde, &model, z.clone(), &cfg, &mut rng(), &mut pin).unwrap();
    let mut pin_old = Pin::default();
    let old = integrate_with_hooks(
        &b,
        &mut Frozen(flow()),
        z,
        Vec::new(),
        sde.t_max(),
        eps,
        &cfg,
        &mut pin_old,
        &mut rng(),
    )
    .unwrap();
    assert_eq!(bits(new.x.data()), bits(old.x.data()));
    assert!(new
        .x
        .data()
        .iter()
        .skip(d - 1)
        .step_by(d)
        .all(|v| *v == 0.5));
    assert_eq!(new.nfe_per_sample, old.nfe_per_sample);
    assert_eq!(pin.calls, pin_old.calls);
    assert_eq!(new.nfe + 1, old.nfe);
    assert_eq!(new.sample_evals, new.nfe_per_sample.iter().sum::<usize>());
}

/// A span of zero integrates nothing: the state comes back as it is, without
/// evaluations.
#[test]
fn an_empty_span_evaluates_nothing() {
    let b = CpuBackend;
    let (mut rhs, x0) = linear_problem(&[-1.0, 2.0]);
    let sol = integrate(
        &b,
        &mut rhs,
        x0.clone(),
        vec![1.0, 2.0],
        0.5,
        0.5,
        &OdeConfig::default(),
    )
    .unwrap();
    assert_eq!(sol.x, x0);
    assert_eq!(sol.aux, [1.0, 2.0]);
    assert_eq!((sol.nfe, sol.sample_evals), (0, 0));
    assert_eq!(sol.nfe_per_sample, [0, 0]);
}

/// A score model that does not say its samples are independent (as one
/// with per-sample state, such as class labels, must not).
struct Opaque<M>(M);

impl<B: Backend, M: ScoreModel<B>> ScoreModel<B> for Opaque<M> {
    fn score(&self, b: &B, x: &B::Tensor, t: &[f64]) -> sde_core::Result<B::Tensor> {
        self.0.score(b, x, t)
    }
}

/// A model that does not declare its samples independent keeps the whole
/// batch (finished samples frozen), with the same results.
#[test]
fn models_with_per_sample_state_keep_the_whole_batch() {
    let b = CpuBackend;
    let sde = &common::test_sdes(1000)[1];
    let exact = AnalyticScore::new(common::mixture_2d(), sde.clone());
    let shape = Shape::new([16, 2]).unwrap();
    let cfg = OdeConfig::default();
    let run = |model: &dyn ScoreModel<CpuBackend>| {
        ode_sample(
            &b,
            sde,
            &model,
            &shape,
            &cfg,
            &mut NoiseRng::new(7),
            &mut (),
        )
        .unwrap()
    };
    let (shrunk, whole) = (run(&exact), run(&Opaque(&exact)));
    assert!(ScoreModel::<CpuBackend>::independent_samples(&exact));
    assert_eq!(whole.sample_evals, whole.nfe * 16);
    assert_eq!(
        shrunk.sample_evals,
        shrunk.nfe_per_sample.iter().sum::<usize>()
    );
    assert!(shrunk.sample_evals < whole.sample_evals);
    assert_eq!(bits(shrunk.x.data()), bits(whole.x.data()));
    assert_eq!(shrunk.nfe_per_sample, whole.nfe_per_sample);
}
