//! Every sampler against the exact score of Gaussian mixtures (2-D and 16-D):
//! samples must match the data distribution (moments within Monte-Carlo
//! bounds and an energy-distance two-sample test), and a deliberately wrong
//! score must fail the same checks.
#![allow(clippy::unwrap_used)]

mod common;

use common::{
    all_sdes, check_samples, energy_p, mixture_16d, mixture_2d, reweighted, test_sdes, widened,
};
use sde_core::analytic::{AnalyticScore, GaussianMixture};
use sde_core::{AnySde, Backend, CpuBackend, NoiseRng, Sde, SdeKind, Shape};
use solvers::{
    ode_sample, pc_sample, CorrectorKind, OdeConfig, PcConfig, PredictorKind, SolverError,
};

const N_LEVELS: usize = 1000;
const N_SAMPLES: usize = 1000;

fn pc(predictor: PredictorKind, corrector: CorrectorKind) -> PcConfig {
    PcConfig {
        predictor,
        corrector,
        ..PcConfig::default()
    }
}

fn run_pc(
    sde: &AnySde,
    model_data: &GaussianMixture,
    cfg: &PcConfig,
    seed: u64,
) -> (Vec<f32>, usize) {
    let b = CpuBackend;
    let model = AnalyticScore::new(model_data.clone(), sde.clone());
    let shape = Shape::new([N_SAMPLES, model_data.dim()]).unwrap();
    let out = pc_sample(
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

fn run_ode(
    sde: &AnySde,
    model_data: &GaussianMixture,
    cfg: &OdeConfig,
    seed: u64,
) -> (Vec<f32>, usize) {
    let b = CpuBackend;
    let model = AnalyticScore::new(model_data.clone(), sde.clone());
    let shape = Shape::new([N_SAMPLES, model_data.dim()]).unwrap();
    let out = ode_sample(
        &b,
        sde,
        &model,
        &shape,
        cfg,
        &mut NoiseRng::new(seed),
        &mut (),
    )
    .unwrap();
    (b.to_vec(&out.x).unwrap(), out.nfe)
}

fn predictors_for(sde: &AnySde) -> Vec<PredictorKind> {
    let mut p = vec![
        PredictorKind::EulerMaruyama,
        PredictorKind::ReverseDiffusion,
    ];
    if sde.ancestral_step(0.5).is_some() {
        p.push(PredictorKind::Ancestral);
    }
    p
}

#[test]
fn predictors_sample_the_2d_mixture() {
    let data = mixture_2d();
    for (i, sde) in all_sdes(N_LEVELS).iter().enumerate() {
        for (j, p) in predictors_for(sde).into_iter().enumerate() {
            let (x, nfe) = run_pc(
                sde,
                &data,
                &pc(p, CorrectorKind::None),
                10 + (i * 10 + j) as u64,
            );
            assert_eq!(nfe, N_LEVELS);
            if let Err(e) = check_samples(&x, &data, 1 + i as u64) {
                panic!("{} {p:?}: {e}", sde.kind());
            }
        }
    }
}

#[test]
fn pc_with_langevin_samples_the_2d_mixture() {
    let data = mixture_2d();
    for (i, sde) in all_sdes(N_LEVELS).iter().enumerate() {
        for (j, c) in [CorrectorKind::Langevin, CorrectorKind::AnnealedLangevin]
            .into_iter()
            .enumerate()
        {
            let (x, nfe) = run_pc(
                sde,
                &data,
                &pc(PredictorKind::ReverseDiffusion, c),
                40 + (i * 10 + j) as u64,
            );
            assert_eq!(nfe, 2 * N_LEVELS);
            if let Err(e) = check_samples(&x, &data, 2 + i as u64) {
                panic!("{} RD + {c:?}: {e}", sde.kind());
            }
        }
    }
}

#[test]
fn ode_sampler_samples_the_2d_mixture() {
    let data = mixture_2d();
    for (i, sde) in all_sdes(N_LEVELS).iter().enumerate() {
        let (x, nfe) = run_ode(sde, &data, &OdeConfig::default(), 70 + i as u64);
        assert!(
            nfe > 10,
            "{}: suspiciously few evaluations ({nfe})",
            sde.kind()
        );
        if let Err(e) = check_samples(&x, &data, 3 + i as u64) {
            panic!("{} ODE: {e}", sde.kind());
        }
    }
}

#[test]
fn samplers_sample_the_16d_mixture() {
    let data = mixture_16d();
    for (i, sde) in all_sdes(N_LEVELS).iter().enumerate() {
        let (x, _) = run_pc(
            sde,
            &data,
            &pc(PredictorKind::ReverseDiffusion, CorrectorKind::Langevin),
            90 + i as u64,
        );
        if let Err(e) = check_samples(&x, &data, 4 + i as u64) {
            panic!("{} PC 16-D: {e}", sde.kind());
        }
        let (x, _) = run_pc(
            sde,
            &data,
            &pc(PredictorKind::EulerMaruyama, CorrectorKind::None),
            95 + i as u64,
        );
        if let Err(e) = check_samples(&x, &data, 5 + i as u64) {
            panic!("{} EM 16-D: {e}", sde.kind());
        }
        let (x, _) = run_ode(sde, &data, &OdeConfig::default(), 99 + i as u64);
        if let Err(e) = check_samples(&x, &data, 6 + i as u64) {
            panic!("{} ODE 16-D: {e}", sde.kind());
        }
    }
}

/// Negative controls, for PC and ODE sampling on both mixtures:
/// - the score of the mixture with tripled variances must fail `check_samples`
///   (the moment checks catch it; in 2-D the energy test alone has little power
///   against a pure variance error at n = 500: exact draws of the widened
///   mixture give p = 0.007 against the truth);
/// - the score of the mixture with rotated weights (wrong mode masses) must
///   fail `check_samples` and the energy test on its own.
#[test]
fn a_wrong_score_fails_the_same_checks() {
    for data in [mixture_2d(), mixture_16d()] {
        for (i, sde) in test_sdes(N_LEVELS).iter().enumerate() {
            for (kind, wrong) in [
                ("widened", widened(&data)),
                ("reweighted", reweighted(&data)),
            ] {
                let seed = 120 + 10 * i as u64;
                let (pc_x, _) = run_pc(
                    sde,
                    &wrong,
                    &pc(PredictorKind::ReverseDiffusion, CorrectorKind::Langevin),
                    seed,
                );
                let (ode_x, _) = run_ode(sde, &wrong, &OdeConfig::default(), seed + 1);
                for (name, x) in [("PC", &pc_x), ("ODE", &ode_x)] {
                    let who = format!("{} {name} {kind} D={}", sde.kind(), data.dim());
                    assert!(
                        check_samples(x, &data, 7).is_err(),
                        "{who}: wrong score passed"
                    );
                    if kind == "reweighted" {
                        let (stat, p) = energy_p(x, &data, 7);
                        assert!(
                            p <= 0.001,
                            "{who}: energy test alone missed it (stat {stat}, p {p})"
                        );
                    }
                }
            }
        }
    }
}

/// Corrector-only sampling at a fixed time (3000 Langevin steps) reaches the
/// marginal p_t. The times are chosen where the modes of p_t overlap
/// (VE: sigma(0.7) = 1.4; VP, sub-VP: t = 0.3): between well separated modes
/// any local MCMC mixes exponentially slowly (at t = 0.5 the VE modes are
/// still 9 std apart and the mode weights stay where the start put them).
/// The unadjusted Langevin chain's stationary variance is inflated by about
/// `r^2` relative (r = snr); r = 0.05 keeps that bias (0.25%) well below the
/// 5-SE bound (~16% of the variance with 1000 samples).
#[test]
fn corrector_only_samples_the_marginal_at_fixed_t() {
    let b = CpuBackend;
    let data = mixture_2d();
    for (i, sde) in test_sdes(N_LEVELS).iter().enumerate() {
        let t = if sde.kind() == SdeKind::Ve { 0.7 } else { 0.3 };
        let model = AnalyticScore::new(data.clone(), sde.clone());
        let shape = Shape::new([N_SAMPLES, 2]).unwrap();
        let mut rng = NoiseRng::new(200 + i as u64);
        let x = b.gaussian(&shape, rng.next_key()).unwrap();
        let tv = vec![t; N_SAMPLES];
        let u = solvers::pc::corrector_update(
            CorrectorKind::Langevin,
            &b,
            sde,
            &model,
            &x,
            &tv,
            0.05,
            3000,
            solvers::NormMode::BatchMean,
            &mut rng,
        )
        .unwrap();
        let pt = model.marginal_at(t).unwrap();
        if let Err(e) = check_samples(&b.to_vec(&u.x).unwrap(), &pt, 9) {
            panic!("{} corrector-only at t = {t}: {e}", sde.kind());
        }
    }
}

/// Ancestral sampling is not defined for sub-VP: a typed error, not a crash.
#[test]
fn ancestral_with_sub_vp_is_a_typed_error() {
    let data = mixture_2d();
    let sde = &test_sdes(50)[2];
    let model = AnalyticScore::new(data, sde.clone());
    let err = pc_sample(
        &CpuBackend,
        sde,
        &model,
        &Shape::new([4, 2]).unwrap(),
        &pc(PredictorKind::Ancestral, CorrectorKind::None),
        &mut NoiseRng::new(0),
        &mut (),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            SolverError::Unsupported {
                sde: SdeKind::SubVp,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(sde.num_steps(), 50);
}
