//! The fixed-grid samplers (DDIM, DPM-Solver++(2M), Heun, the generalised
//! reverse SDE) against exact scores:
//! - samples of the 2-D and 16-D Gaussian mixtures match the data
//!   (moments within Monte-Carlo bounds and the energy test) on VE, VP and
//!   sub-VP, and a deliberately wrong score fails the same checks;
//! - on Gaussian data, where the probability-flow ODE has a closed-form
//!   solution, the deterministic samplers converge at their order (error vs
//!   steps slope: 1 for DDIM, 2 for DPM-Solver++(2M) and Heun);
//! - the one entry point, `solvers::sample`, runs all of them with the same
//!   hooks (interruption, projection, progress).
#![allow(clippy::unwrap_used)]

mod common;

use common::{all_sdes, check_samples, mixture_16d, mixture_2d, reweighted, widened};
use sde_core::analytic::{AnalyticScore, DiagGaussian, GaussianMixture};
use sde_core::{AnySde, Backend, CpuBackend, NoiseRng, Sde, Shape, VpSde};
use solvers::{
    sample, DdimConfig, DpmSolverConfig, HeunConfig, PcConfig, PredictorKind, ReverseSdeConfig,
    SamplerConfig, TimeGrid,
};

const N_SAMPLES: usize = 1000;

fn run(sde: &AnySde, data: &GaussianMixture, cfg: &SamplerConfig, seed: u64) -> (Vec<f32>, usize) {
    let b = CpuBackend;
    let model = AnalyticScore::new(data.clone(), sde.clone());
    let shape = Shape::new([N_SAMPLES, data.dim()]).unwrap();
    let out = sample(
        &b,
        sde,
        &model,
        &shape,
        cfg,
        &mut NoiseRng::new(seed),
        &mut (),
    )
    .unwrap();
    (b.to_vec(&out.samples).unwrap(), out.nfe)
}

/// Each sampler at a step count where its discretisation error is well below
/// the Monte-Carlo resolution of 1000 samples, with the NFE it must cost.
fn samplers() -> Vec<(&'static str, SamplerConfig, usize)> {
    vec![
        (
            "DDIM eta=0",
            SamplerConfig::Ddim(DdimConfig {
                steps: 200,
                ..DdimConfig::default()
            }),
            200,
        ),
        (
            "DDIM eta=1",
            SamplerConfig::Ddim(DdimConfig {
                steps: 300,
                eta: 1.0,
                ..DdimConfig::default()
            }),
            300,
        ),
        (
            "DPM-Solver++(2M)",
            SamplerConfig::DpmSolver(DpmSolverConfig {
                steps: 50,
                ..DpmSolverConfig::default()
            }),
            50,
        ),
        (
            "Heun",
            SamplerConfig::Heun(HeunConfig {
                steps: 40,
                ..HeunConfig::default()
            }),
            80,
        ),
        (
            "reverse SDE l=0.5",
            SamplerConfig::ReverseSde(ReverseSdeConfig {
                steps: 500,
                stochasticity: 0.5,
                grid: TimeGrid::Edm { rho: 7.0 },
                ..ReverseSdeConfig::default()
            }),
            500,
        ),
    ]
}

#[test]
fn fast_samplers_sample_the_2d_mixture() {
    let data = mixture_2d();
    for (i, sde) in all_sdes(1000).iter().enumerate() {
        for (j, (name, cfg, nfe)) in samplers().into_iter().enumerate() {
            let (x, got) = run(sde, &data, &cfg, 300 + (10 * i + j) as u64);
            assert_eq!(got, nfe, "{name}");
            if let Err(e) = check_samples(&x, &data, 11 + i as u64) {
                panic!("{} {name}: {e}", sde.kind());
            }
        }
    }
}

#[test]
fn fast_samplers_sample_the_16d_mixture() {
    let data = mixture_16d();
    for (i, sde) in all_sdes(1000).iter().enumerate() {
        for (j, (name, cfg, _)) in samplers().into_iter().enumerate().step_by(2) {
            let (x, _) = run(sde, &data, &cfg, 400 + (10 * i + j) as u64);
            if let Err(e) = check_samples(&x, &data, 21 + i as u64) {
                panic!("{} {name} 16-D: {e}", sde.kind());
            }
        }
    }
}

/// The scores of the widened and of the reweighted mixture fail the checks
/// that the exact score passes, for every fast sampler.
#[test]
fn a_wrong_score_fails_the_fast_samplers_checks() {
    let data = mixture_2d();
    let sde = &all_sdes(1000)[1];
    for (name, cfg, _) in samplers() {
        for (kind, wrong) in [
            ("widened", widened(&data)),
            ("reweighted", reweighted(&data)),
        ] {
            let (x, _) = run(sde, &wrong, &cfg, 500);
            assert!(
                check_samples(&x, &data, 7).is_err(),
                "{name} {kind}: wrong score passed"
            );
        }
    }
}

/// Gaussian data `N(mu, v)`: the probability-flow ODE keeps the standardised
/// coordinate `(x_t - m_t mu) / sqrt(m_t^2 v + s_t^2)` constant, so its exact
/// solution from `T` to `eps` is known. Returns the largest error of `cfg`'s
/// samples against it.
fn flow_error(sde: &AnySde, cfg: &SamplerConfig) -> f64 {
    let (mu, v) = (vec![0.8, -0.5], 0.3);
    let data = GaussianMixture::gaussian(DiagGaussian::isotropic(mu.clone(), v).unwrap());
    let b = CpuBackend;
    let model = AnalyticScore::new(data, sde.clone());
    let n = 64;
    let shape = Shape::new([n, 2]).unwrap();
    let mut rng = NoiseRng::new(5);
    let z = b.gaussian(&shape, rng.next_key()).unwrap();
    let z = b
        .scale(&z, sde_core::Coef::Scalar(sde.prior_std() as f32))
        .unwrap();
    let start = b.to_vec(&z).unwrap();
    let out = solvers::sample_from(&b, sde, &model, z, cfg, &mut rng, &mut ()).unwrap();
    let got = b.to_vec(&out.samples).unwrap();
    let eps = sde.default_sampling_eps();
    let (kt, ke) = (sde.marginal(sde.t_max()), sde.marginal(eps));
    let sd = |k: sde_core::Marginal| (k.mean_coef.powi(2) * v + k.std.powi(2)).sqrt();
    let ratio = sd(ke) / sd(kt);
    (0..n * 2)
        .map(|i| {
            let m = mu[i % 2];
            let exact = ke.mean_coef * m + ratio * (f64::from(start[i]) - kt.mean_coef * m);
            (f64::from(got[i]) - exact).abs()
        })
        .fold(0.0, f64::max)
}

/// Least-squares slope of `ln err` against `ln steps`.
fn slope(steps: &[usize], err: &[f64]) -> f64 {
    let xs: Vec<f64> = steps.iter().map(|&s| (s as f64).ln()).collect();
    let ys: Vec<f64> = err.iter().map(|e| e.ln()).collect();
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    sxy / sxx
}

#[test]
fn deterministic_samplers_converge_at_their_order() {
    let steps = [16usize, 32, 64, 128];
    for sde in all_sdes(1000) {
        for (name, order, make) in [
            (
                "DDIM",
                1.0,
                Box::new(|n| {
                    SamplerConfig::Ddim(DdimConfig {
                        steps: n,
                        grid: TimeGrid::LogSnr,
                        ..DdimConfig::default()
                    })
                }) as Box<dyn Fn(usize) -> SamplerConfig>,
            ),
            (
                "DPM-Solver++(2M)",
                2.0,
                Box::new(|n| {
                    SamplerConfig::DpmSolver(DpmSolverConfig {
                        steps: n,
                        lower_order_final: false,
                        ..DpmSolverConfig::default()
                    })
                }),
            ),
            (
                "Heun",
                2.0,
                Box::new(|n| {
                    SamplerConfig::Heun(HeunConfig {
                        steps: n,
                        grid: TimeGrid::LogSnr,
                        ..HeunConfig::default()
                    })
                }),
            ),
        ] {
            let err: Vec<f64> = steps.iter().map(|&n| flow_error(&sde, &make(n))).collect();
            let p = -slope(&steps, &err);
            eprintln!("{} {name}: errors {err:.3?}, order {p:.2}", sde.kind());
            assert!(
                (p - order).abs() < 0.35,
                "{} {name}: measured order {p:.2}, expected {order} (errors {err:.3?})",
                sde.kind()
            );
        }
    }
}

/// The fidelity check's first finding: VP with N = 20 (< beta_max) builds,
/// and the samplers that never use the DDPM chain sample it; reverse
/// diffusion refuses it with an error that says why.
#[test]
fn a_short_vp_sde_is_usable_by_the_continuous_samplers() {
    let data = mixture_2d();
    let sde = AnySde::Vp(VpSde::new(0.1, 20.0, 20).unwrap());
    let cfg = SamplerConfig::DpmSolver(DpmSolverConfig::default());
    let (x, nfe) = run(&sde, &data, &cfg, 9);
    assert_eq!(nfe, 20);
    assert!(x.iter().all(|v| v.is_finite()));
    let model = AnalyticScore::new(data, sde.clone());
    let err = sample(
        &CpuBackend,
        &sde,
        &model,
        &Shape::new([4, 2]).unwrap(),
        &SamplerConfig::default(),
        &mut NoiseRng::new(0),
        &mut (),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("N must exceed beta_max") && err.contains("Euler–Maruyama"),
        "{err}"
    );
}

/// PC on a sampler-chosen grid: the Euler–Maruyama predictor with the
/// Langevin corrector on EDM's grid samples the mixture on every SDE; the
/// discrete predictors refuse a grid (they are defined on the SDE's own).
#[test]
fn pc_with_euler_maruyama_runs_on_any_grid() {
    let data = mixture_2d();
    let cfg = SamplerConfig::Pc(PcConfig {
        predictor: PredictorKind::EulerMaruyama,
        grid: Some(TimeGrid::Edm { rho: 7.0 }),
        steps: Some(300),
        ..PcConfig::default()
    });
    for (i, sde) in all_sdes(1000).iter().enumerate() {
        let (x, nfe) = run(sde, &data, &cfg, 600 + i as u64);
        assert_eq!(nfe, 600);
        if let Err(e) = check_samples(&x, &data, 31 + i as u64) {
            panic!("{} PC EM + Langevin on the EDM grid: {e}", sde.kind());
        }
    }
    let sde = &all_sdes(100)[1];
    let model = AnalyticScore::new(data, sde.clone());
    for (bad, field) in [
        (
            PcConfig {
                grid: Some(TimeGrid::LogSnr),
                ..PcConfig::default()
            },
            "own grid",
        ),
        (
            PcConfig {
                steps: Some(10),
                ..PcConfig::default()
            },
            "with `grid` only",
        ),
    ] {
        let err = sample(
            &CpuBackend,
            sde,
            &model,
            &Shape::new([2, 2]).unwrap(),
            &SamplerConfig::Pc(bad),
            &mut NoiseRng::new(0),
            &mut (),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(field), "{err}");
    }
}
