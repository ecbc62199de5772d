//! Shared helpers for the `sde-core` integration tests: sample moments with
//! their standard errors, a normal CDF, the reference SDEs.
#![allow(dead_code, clippy::unwrap_used)]

use sde_core::{AnySde, Sde, SdeConfig, SdeKind};

/// The three SDEs with the reference defaults.
pub fn reference_sdes() -> Vec<AnySde> {
    [SdeKind::Ve, SdeKind::Vp, SdeKind::SubVp]
        .into_iter()
        .map(|k| SdeConfig::default_for(k).build().unwrap())
        .collect()
}

/// Mean and unbiased variance of `xs`.
pub fn mean_var(xs: impl IntoIterator<Item = f64>) -> (f64, f64, usize) {
    let v: Vec<f64> = xs.into_iter().collect();
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var, v.len())
}

/// Asserts `|est - expected| <= z * se`, printing the numbers on failure.
pub fn assert_within_se(what: &str, est: f64, expected: f64, se: f64, z: f64) {
    assert!(
        (est - expected).abs() <= z * se,
        "{what}: estimate {est} vs expected {expected}, |diff| = {} > {z} x SE {se}",
        (est - expected).abs()
    );
}

/// The standard normal CDF via erfc (W. J. Cody's rational approximation is
/// overkill here; this uses the complementary error function series from
/// Numerical Recipes' `erfcc`, fractional error < 1.2e-7).
pub fn normal_cdf(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    // Horner's rule over the coefficients (written as a loop: the nested
    // expression took rustfmt ten seconds per test file that includes this module).
    const C: [f64; 10] = [
        -1.265_512_23,
        1.000_023_68,
        0.374_091_96,
        0.096_784_18,
        -0.186_288_06,
        0.278_868_07,
        -1.135_203_98,
        1.488_515_87,
        -0.822_152_23,
        0.170_872_77,
    ];
    let poly = C.iter().rev().fold(0.0, |acc, c| c + t * acc);
    let ans = t * (-z * z + poly).exp();
    if x >= 0.0 {
        1.0 - 0.5 * ans
    } else {
        0.5 * ans
    }
}

/// Kolmogorov–Smirnov statistic of `xs` against the standard normal.
pub fn ks_normal(xs: &mut [f64]) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = xs.len() as f64;
    xs.iter()
        .enumerate()
        .map(|(i, &x)| {
            let f = normal_cdf(x);
            (f - i as f64 / n).abs().max(((i + 1) as f64 / n - f).abs())
        })
        .fold(0.0, f64::max)
}

/// Critical KS distance at significance 1e-3 (asymptotic, `sqrt(-ln(a/2)/2)/sqrt(n)`).
pub fn ks_critical(n: usize) -> f64 {
    (-(0.5e-3f64).ln() / 2.0).sqrt() / (n as f64).sqrt()
}

/// Name of an SDE for messages.
pub fn name(sde: &dyn Sde) -> String {
    sde.kind().to_string()
}
