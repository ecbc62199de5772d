//! Statistical checks shared by the sampler tests: sample moments against the
//! exact mixture moments, and an energy-distance two-sample test with a
//! permutation threshold.
#![allow(dead_code, clippy::unwrap_used)]

use sde_core::analytic::{DiagGaussian, GaussianMixture};
use sde_core::{AnySde, NoiseRng, SdeConfig, SdeKind, SubVpSde, VeSde, VpSde};

/// A three-component 2-D mixture with well separated, unequal modes.
pub fn mixture_2d() -> GaussianMixture {
    GaussianMixture::new(
        vec![0.3, 0.5, 0.2],
        vec![
            DiagGaussian::new(vec![-2.0, 0.0], vec![0.15, 0.3]).unwrap(),
            DiagGaussian::new(vec![1.5, 1.0], vec![0.25, 0.1]).unwrap(),
            DiagGaussian::new(vec![0.5, -2.0], vec![0.2, 0.2]).unwrap(),
        ],
    )
    .unwrap()
}

/// A two-component 16-D mixture.
pub fn mixture_16d() -> GaussianMixture {
    let d = 16;
    let m1: Vec<f64> = (0..d)
        .map(|j| if j % 2 == 0 { 1.0 } else { -0.5 })
        .collect();
    let m2: Vec<f64> = (0..d).map(|j| -0.6 + 0.08 * j as f64).collect();
    let v1: Vec<f64> = (0..d).map(|j| 0.1 + 0.02 * j as f64).collect();
    let v2: Vec<f64> = (0..d).map(|j| 0.3 - 0.01 * j as f64).collect();
    GaussianMixture::new(
        vec![0.4, 0.6],
        vec![
            DiagGaussian::new(m1, v1).unwrap(),
            DiagGaussian::new(m2, v2).unwrap(),
        ],
    )
    .unwrap()
}

/// The same mixture with every variance tripled: a deliberately wrong model.
pub fn widened(m: &GaussianMixture) -> GaussianMixture {
    GaussianMixture::new(
        m.weights().to_vec(),
        m.components()
            .iter()
            .map(|c| {
                DiagGaussian::new(c.mean().to_vec(), c.var().iter().map(|v| 3.0 * v).collect())
                    .unwrap()
            })
            .collect(),
    )
    .unwrap()
}

/// The same mixture with its weights rotated (`w_k <- w_{k+1}`): wrong mode
/// masses, a deliberately wrong model of another kind.
pub fn reweighted(m: &GaussianMixture) -> GaussianMixture {
    let mut w = m.weights().to_vec();
    w.rotate_left(1);
    GaussianMixture::new(w, m.components().to_vec()).unwrap()
}

/// The paper's three SDEs used for sampler tests (VE's sigma_max about the
/// largest pairwise distance of the test data, as the paper recommends).
pub fn test_sdes(n: usize) -> Vec<AnySde> {
    vec![
        AnySde::Ve(VeSde::new(0.01, 12.0, n).unwrap()),
        AnySde::Vp(VpSde::new(0.1, 20.0, n).unwrap()),
        AnySde::SubVp(SubVpSde::new(0.1, 20.0, n).unwrap()),
    ]
}

/// The schedules beyond the paper's: cosine and rectified flow (defaults).
pub fn schedule_sdes(n: usize) -> Vec<AnySde> {
    [SdeKind::Cosine, SdeKind::RectifiedFlow]
        .into_iter()
        .map(|k| SdeConfig::default_for(k).with_num_steps(n).build().unwrap())
        .collect()
}

/// All five SDEs.
pub fn all_sdes(n: usize) -> Vec<AnySde> {
    let mut v = test_sdes(n);
    v.extend(schedule_sdes(n));
    v
}

/// [`sde_core::stats::energy_test`] on valid input.
pub fn energy_test(x: &[f32], y: &[f32], d: usize, perms: usize, seed: u64) -> (f64, f64) {
    sde_core::stats::energy_test(x, y, d, perms, seed).unwrap()
}

/// [`sde_core::stats::moments`] on valid input.
pub fn moments(x: &[f32], d: usize) -> (Vec<f64>, Vec<f64>) {
    sde_core::stats::moments(x, d).unwrap()
}

/// Checks that `samples` come from `truth`:
/// - every mean within 5 standard errors (`sqrt(var_j / n)`);
/// - every covariance entry within 5 standard errors, the standard error of
///   `(x_a - mu_a)(x_b - mu_b)` estimated from 20000 exact draws of `truth`;
/// - an energy-distance test of 500 samples against 500 exact draws with
///   p-value > 0.001 (999 permutations). The suite runs about thirty such
///   tests; at 0.001 the chance that any correct sampler fails by luck is
///   about 3% per change of noise (at 0.01 it was about 25%, and it happened).
///
/// Returns a description of the first failure.
pub fn check_samples(samples: &[f32], truth: &GaussianMixture, seed: u64) -> Result<(), String> {
    let d = truth.dim();
    let n = samples.len() / d;
    if samples.iter().any(|v| !v.is_finite()) {
        return Err("non-finite samples".into());
    }
    let (mean, cov) = moments(samples, d);
    let (tm, tc) = (truth.mean(), truth.covariance());
    for j in 0..d {
        let se = (tc[j * d + j] / n as f64).sqrt();
        if (mean[j] - tm[j]).abs() > 5.0 * se {
            return Err(format!(
                "mean[{j}] = {:.4} vs {:.4} (5 SE = {:.4})",
                mean[j],
                tm[j],
                5.0 * se
            ));
        }
    }
    let reference = truth.sample(20_000, &mut NoiseRng::new(seed ^ 0xABCD));
    for a in 0..d {
        for b in a..d {
            let prod: Vec<f64> = (0..20_000)
                .map(|i| {
                    (f64::from(reference[i * d + a]) - tm[a])
                        * (f64::from(reference[i * d + b]) - tm[b])
                })
                .collect();
            let pm = prod.iter().sum::<f64>() / prod.len() as f64;
            let pv = prod.iter().map(|p| (p - pm).powi(2)).sum::<f64>() / (prod.len() - 1) as f64;
            let se = (pv / n as f64).sqrt();
            let c = tc[a * d + b];
            if (cov[a * d + b] - c).abs() > 5.0 * se {
                return Err(format!(
                    "cov[{a},{b}] = {:.4} vs {:.4} (5 SE = {:.4})",
                    cov[a * d + b],
                    c,
                    5.0 * se
                ));
            }
        }
    }
    let (stat, p) = energy_p(samples, truth, seed);
    if p <= 0.001 {
        return Err(format!(
            "energy test: statistic {stat:.5}, p = {p:.4} <= 0.001"
        ));
    }
    Ok(())
}

/// The energy test of `check_samples` alone: statistic and p-value of the
/// first 500 samples against 500 exact draws (999 permutations).
pub fn energy_p(samples: &[f32], truth: &GaussianMixture, seed: u64) -> (f64, f64) {
    let d = truth.dim();
    let m = 500.min(samples.len() / d);
    let other = truth.sample(500, &mut NoiseRng::new(seed ^ 0x1234));
    energy_test(&samples[..m * d], &other, d, 999, seed)
}
