//! The counter-based RNG: moments, distribution, independence, reproducibility.
#![allow(clippy::unwrap_used)] // tests fail by panicking

mod common;

use common::{assert_within_se, ks_critical, ks_normal, mean_var};
use sde_core::{Backend, CpuBackend, NoiseKey, NoiseRng, Shape};

const N: usize = 1 << 20;

fn draw(kind: &str, key: NoiseKey, n: usize) -> Vec<f64> {
    let b = CpuBackend;
    let shape = Shape::new([n]).unwrap();
    let t = match kind {
        "gaussian" => b.gaussian(&shape, key),
        "uniform" => b.uniform(&shape, key),
        _ => b.rademacher(&shape, key),
    }
    .unwrap();
    b.to_vec(&t).unwrap().into_iter().map(f64::from).collect()
}

/// Standard normal: mean 0, variance 1, skewness 0 and kurtosis 3 within 5
/// standard errors; KS distance below the 1e-3 critical value.
#[test]
fn gaussian_moments_and_shape() {
    let xs = draw("gaussian", NoiseKey::new(2024, 0), N);
    let n = N as f64;
    let (mean, var, _) = mean_var(xs.iter().copied());
    assert_within_se("mean", mean, 0.0, (1.0 / n).sqrt(), 5.0);
    assert_within_se("var", var, 1.0, (2.0 / n).sqrt(), 5.0);
    let skew = xs.iter().map(|x| x.powi(3)).sum::<f64>() / n;
    let kurt = xs.iter().map(|x| x.powi(4)).sum::<f64>() / n;
    assert_within_se("skewness", skew, 0.0, (15.0 / n).sqrt(), 5.0);
    assert_within_se("kurtosis", kurt, 3.0, (96.0 / n).sqrt(), 5.0);
    let mut sub: Vec<f64> = xs[..100_000].to_vec();
    let d = ks_normal(&mut sub);
    assert!(d < ks_critical(100_000), "KS distance {d}");
}

/// Uniform (0, 1): mean 1/2, variance 1/12, all values strictly inside.
#[test]
fn uniform_moments() {
    let xs = draw("uniform", NoiseKey::new(1, 1), N);
    let n = N as f64;
    assert!(xs.iter().all(|&u| u > 0.0 && u < 1.0));
    let (mean, var, _) = mean_var(xs.iter().copied());
    assert_within_se("mean", mean, 0.5, (1.0 / 12.0 / n).sqrt(), 5.0);
    assert_within_se("var", var, 1.0 / 12.0, (1.0 / 180.0 / n).sqrt(), 5.0);
}

/// Rademacher: values ±1, mean 0 within 5 standard errors.
#[test]
fn rademacher_moments() {
    let xs = draw("rademacher", NoiseKey::new(3, 0), N);
    assert!(xs.iter().all(|&x| x == 1.0 || x == -1.0));
    let (mean, _, _) = mean_var(xs.iter().copied());
    assert_within_se("mean", mean, 0.0, (1.0 / N as f64).sqrt(), 5.0);
}

/// Neighbouring elements (same Philox block, including Box–Muller pairs) and
/// neighbouring streams are uncorrelated: |corr| < 5 / sqrt(n).
#[test]
fn lag_and_stream_correlations_vanish() {
    let xs = draw("gaussian", NoiseKey::new(5, 0), N);
    let ys = draw("gaussian", NoiseKey::new(5, 1), N);
    let zs = draw("gaussian", NoiseKey::new(6, 0), N);
    let n = N as f64;
    let bound = 5.0 / (n - 4.0).sqrt();
    for lag in 1..=4 {
        let c = xs.iter().zip(&xs[lag..]).map(|(a, b)| a * b).sum::<f64>() / (n - lag as f64);
        assert!(c.abs() < bound, "lag {lag}: {c}");
    }
    // Squares of a Box–Muller pair are also uncorrelated (r^2 is shared, so
    // a broken transform shows up here first).
    let pair = (0..N / 2)
        .map(|i| (xs[2 * i].powi(2) - 1.0) * (xs[2 * i + 1].powi(2) - 1.0))
        .sum::<f64>()
        / (n / 2.0);
    assert!(
        pair.abs() < 5.0 * 2.0 / (n / 2.0).sqrt(),
        "pair square correlation {pair}"
    );
    for (what, other) in [("stream", &ys), ("seed", &zs)] {
        let c = xs.iter().zip(other.iter()).map(|(a, b)| a * b).sum::<f64>() / n;
        assert!(c.abs() < bound, "{what}: {c}");
    }
}

/// A key reproduces its stream bit for bit; other seeds and streams differ;
/// `NoiseRng` hands out successive streams of one seed.
#[test]
fn reproducible_for_a_seed() {
    let a = draw("gaussian", NoiseKey::new(42, 7), 1001);
    let b = draw("gaussian", NoiseKey::new(42, 7), 1001);
    assert_eq!(a, b);
    assert_ne!(a, draw("gaussian", NoiseKey::new(43, 7), 1001));
    assert_ne!(a, draw("gaussian", NoiseKey::new(42, 8), 1001));
    // A prefix of a longer draw is the shorter draw (element i depends only on i).
    let long = draw("gaussian", NoiseKey::new(42, 7), 5000);
    assert_eq!(&long[..1001], &a[..]);
    let mut rng = NoiseRng::new(42);
    assert_eq!(rng.next_key(), NoiseKey::new(42, 0));
    assert_eq!(rng.next_key(), NoiseKey::new(42, 1));
    let mut r1 = NoiseRng::new(9);
    let mut r2 = NoiseRng::new(9);
    assert_eq!(r1.uniforms_f64(10), r2.uniforms_f64(10));
}

/// Host `f64` uniforms: mean 1/2 and variance 1/12, strictly inside (0, 1).
#[test]
fn host_uniforms() {
    let us = NoiseKey::new(8, 8).uniforms_f64(200_000);
    assert!(us.iter().all(|&u| u > 0.0 && u < 1.0));
    let (mean, var, n) = mean_var(us.iter().copied());
    assert_within_se("mean", mean, 0.5, (1.0 / 12.0 / n as f64).sqrt(), 5.0);
    assert_within_se("var", var, 1.0 / 12.0, (1.0 / 180.0 / n as f64).sqrt(), 5.0);
}
