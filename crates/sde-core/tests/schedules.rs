//! SDEs from noise schedules: every SDE (VE, VP, sub-VP and the cosine and
//! rectified-flow schedules) satisfies `a = m'/m` and `g^2 = (s^2)' - 2 a s^2`
//! (checked against finite differences of its kernel), the kernels' analytic
//! derivatives match finite differences, the configurations build and refuse
//! bad parameters, and a score model moved to another schedule's time axis
//! (`Rescheduled`) is exactly the other schedule's score.
#![allow(clippy::unwrap_used)]

use sde_core::analytic::{AnalyticScore, DiagGaussian, GaussianMixture};
use sde_core::schedule::{noise_to_signal, CosineKernel, Kernel, LinearKernel};
use sde_core::{
    AnySde, Backend, CpuBackend, Error, NoiseRng, Rescheduled, ScoreModel, Sde, SdeConfig, SdeKind,
    Shape,
};

fn all_sdes() -> Vec<AnySde> {
    [
        SdeKind::Ve,
        SdeKind::Vp,
        SdeKind::SubVp,
        SdeKind::Cosine,
        SdeKind::RectifiedFlow,
    ]
    .into_iter()
    .map(|k| SdeConfig::default_for(k).build().unwrap())
    .collect()
}

/// Central difference of `f` at `t` (one-sided near the ends of [0, 1]).
fn derivative(f: impl Fn(f64) -> f64, t: f64) -> f64 {
    let h = 1e-6;
    let (lo, hi) = ((t - h).max(0.0), (t + h).min(1.0));
    (f(hi) - f(lo)) / (hi - lo)
}

#[test]
fn every_sde_has_the_drift_and_diffusion_of_its_kernel() {
    for sde in all_sdes() {
        for &t in &[0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99] {
            let m = |t| sde.marginal(t).mean_coef;
            let s2 = |t: f64| sde.marginal(t).std.powi(2);
            let a = derivative(m, t) / m(t);
            let g2 = derivative(s2, t) - 2.0 * a * s2(t);
            let (a0, g20) = (sde.drift_coef(t), sde.diffusion(t).powi(2));
            let tol = |v: f64| 1e-5 * (1.0 + v.abs());
            assert!(
                (a - a0).abs() < tol(a0),
                "{} t = {t}: a = {a0}, from the kernel {a}",
                sde.kind()
            );
            assert!(
                (g2 - g20).abs() < tol(g20),
                "{} t = {t}: g^2 = {g20}, from the kernel {g2}",
                sde.kind()
            );
            // The noise-to-signal ratio grows with t.
            assert!(noise_to_signal(&sde, t + 0.005) > noise_to_signal(&sde, t));
        }
    }
}

#[test]
fn kernel_derivatives_match_finite_differences() {
    let kernels: Vec<Box<dyn Kernel>> = vec![
        Box::new(CosineKernel::new(-10.0, 8.77).unwrap()),
        Box::new(CosineKernel::new(-3.0, 5.0).unwrap()),
        Box::new(LinearKernel::new(1e-3).unwrap()),
        Box::new(LinearKernel::new(0.2).unwrap()),
    ];
    for k in kernels {
        for &t in &[0.0, 0.2, 0.5, 0.8, 1.0] {
            let dm = derivative(|t| k.mean_coef(t), t);
            let ds2 = derivative(|t| k.std(t).powi(2), t);
            let a = k.log_mean_derivative(t);
            assert!(
                (dm / k.mean_coef(t) - a).abs() < 1e-4 * (1.0 + a.abs()),
                "{k:?} t {t}"
            );
            let v = k.var_derivative(t);
            assert!((ds2 - v).abs() < 1e-4 * (1.0 + v.abs()), "{k:?} t {t}");
        }
    }
    // The cosine schedule is variance preserving and hits its log-SNRs.
    let c = CosineKernel::new(-10.0, 8.77).unwrap();
    let logsnr = |t: f64| (c.mean_coef(t) / c.std(t)).powi(2).ln();
    assert!((logsnr(0.0) - 8.77).abs() < 1e-9 && (logsnr(1.0) + 10.0).abs() < 1e-9);
    assert!((c.mean_coef(0.4).powi(2) + c.std(0.4).powi(2) - 1.0).abs() < 1e-12);
    // Rectified flow interpolates linearly.
    let l = LinearKernel::new(1e-3).unwrap();
    assert_eq!((l.mean_coef(0.0), l.std(0.0)), (1.0, 0.0));
    assert!((l.mean_coef(1.0) - 1e-3).abs() < 1e-15 && l.std(1.0) == 1.0);
}

#[test]
fn schedule_configurations_build_and_refuse_bad_parameters() {
    let cos: SdeConfig =
        toml::from_str("kind = \"cosine\"\nlogsnr_min = -8.0\nlogsnr_max = 6.0\nnum_steps = 50\n")
            .unwrap();
    let sde = cos.build().unwrap();
    assert_eq!((sde.kind(), sde.num_steps()), (SdeKind::Cosine, 50));
    let rf: SdeConfig =
        toml::from_str("kind = \"rectified-flow\"\nmean_at_t_max = 0.01\nnum_steps = 10\n")
            .unwrap();
    assert_eq!(rf.build().unwrap().kind(), SdeKind::RectifiedFlow);
    assert_eq!(rf.with_num_steps(7).build().unwrap().num_steps(), 7);
    for bad in [
        "kind = \"cosine\"\nlogsnr_min = 5.0\nlogsnr_max = 1.0\nnum_steps = 10\n",
        "kind = \"cosine\"\nlogsnr_min = -5.0\nlogsnr_max = inf\nnum_steps = 10\n",
        "kind = \"cosine\"\nlogsnr_min = -5.0\nlogsnr_max = 5.0\nnum_steps = 0\n",
        "kind = \"rectified-flow\"\nmean_at_t_max = 0.0\nnum_steps = 10\n",
        "kind = \"rectified-flow\"\nmean_at_t_max = 1.0\nnum_steps = 10\n",
    ] {
        let cfg: SdeConfig = toml::from_str(bad).unwrap();
        assert!(
            matches!(cfg.build(), Err(Error::InvalidParameter { .. })),
            "{bad}"
        );
    }
    // Round trip through TOML.
    let text = toml::to_string(&SdeConfig::default_for(SdeKind::Cosine)).unwrap();
    assert_eq!(
        toml::from_str::<SdeConfig>(&text).unwrap(),
        SdeConfig::default_for(SdeKind::Cosine)
    );
}

/// `Rescheduled` turns the exact score of one SDE into the exact score of
/// another (same data), for every pair whose noise-to-signal ranges overlap
/// at the tested times, and refuses times outside the trained range.
#[test]
fn a_rescheduled_score_is_the_other_schedules_score() {
    let data = GaussianMixture::new(
        vec![0.4, 0.6],
        vec![
            DiagGaussian::new(vec![-1.0, 0.5], vec![0.2, 0.1]).unwrap(),
            DiagGaussian::new(vec![1.0, -0.5], vec![0.1, 0.3]).unwrap(),
        ],
    )
    .unwrap();
    let b = CpuBackend;
    let shape = Shape::new([5, 2]).unwrap();
    let x = b.gaussian(&shape, NoiseRng::new(1).next_key()).unwrap();
    let sdes = all_sdes();
    let mut pairs = 0;
    for trained in &sdes {
        for target in &sdes {
            let model = Rescheduled {
                model: AnalyticScore::new(data.clone(), trained.clone()),
                trained: trained.clone(),
                target: target.clone(),
            };
            let exact = AnalyticScore::new(data.clone(), target.clone());
            // Times where the target's ratio lies inside the trained range.
            let (lo, hi) = (noise_to_signal(trained, 0.0), noise_to_signal(trained, 1.0));
            let t: Vec<f64> = [0.05, 0.2, 0.4, 0.6, 0.8]
                .into_iter()
                .filter(|&t| {
                    let r = noise_to_signal(target, t);
                    r > lo && r < hi
                })
                .collect();
            if t.len() < 3 {
                continue;
            }
            pairs += 1;
            let xs = b
                .tensor(
                    b.to_vec(&x).unwrap()[..2 * t.len()].to_vec(),
                    &Shape::new([t.len(), 2]).unwrap(),
                )
                .unwrap();
            let got = b.to_vec(&model.score(&b, &xs, &t).unwrap()).unwrap();
            let want = b.to_vec(&exact.score(&b, &xs, &t).unwrap()).unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "{} -> {}: {got:?} vs {want:?}",
                    trained.kind(),
                    target.kind()
                );
            }
        }
    }
    assert!(pairs >= 20, "only {pairs} of 25 pairs overlap");
    // VE covers ratios from 0.01 up: a VP time with a smaller ratio is refused.
    let model = Rescheduled {
        model: AnalyticScore::new(data.clone(), sdes[0].clone()),
        trained: sdes[0].clone(),
        target: sdes[1].clone(),
    };
    let one = b
        .tensor(vec![0.0, 0.0], &Shape::new([1, 2]).unwrap())
        .unwrap();
    let err = model.score(&b, &one, &[1e-4]).unwrap_err().to_string();
    assert!(err.contains("outside") && err.contains("VE"), "{err}");
}
