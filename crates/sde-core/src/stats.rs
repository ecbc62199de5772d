//! Two-sample statistics for testing samplers against exact distributions:
//! sample moments and an energy-distance test (Szekely and Rizzo) with a
//! permutation p-value. `solvers` and `cond` check their samplers with them
//! against the analytic distributions of [`crate::analytic`].
//!
//! Both are `O(n^2)` in memory and time for the energy test: meant for a few
//! hundred to a few thousand samples of low dimension.

use crate::error::ensure_param;
use crate::{NoiseKey, Result};

/// The most pooled samples [`energy_test`] takes (its distance matrix has
/// `total^2` entries).
pub const MAX_POOLED: usize = 20_000;

/// Energy distance `2 E|X-Y| - E|X-X'| - E|Y-Y'|` of the split (`idx_x`, rest),
/// from the pooled distance matrix, its row sums and its total: only the
/// within-X sums are computed (`O(n^2)`), the rest follows from the totals.
fn energy(dist: &[f64], total: usize, rows: &[f64], all: f64, idx_x: &[usize]) -> f64 {
    let n = idx_x.len() as f64;
    let m = (total - idx_x.len()) as f64;
    let (mut sxx, mut sxy) = (0.0, 0.0);
    for &i in idx_x {
        let within: f64 = idx_x.iter().map(|&j| dist[i * total + j]).sum();
        sxx += within;
        sxy += rows[i] - within;
    }
    let syy = all - sxx - 2.0 * sxy;
    2.0 * sxy / (n * m) - sxx / (n * n) - syy / (m * m)
}

/// Energy-distance two-sample test of `x` against `y` (both `[n, d]`
/// row-major, `d > 0`, at least one sample each): the statistic and its
/// permutation p-value over `perms` random splits of the pooled samples.
pub fn energy_test(x: &[f32], y: &[f32], d: usize, perms: usize, seed: u64) -> Result<(f64, f64)> {
    check_rows(x, d, 1, "x")?;
    check_rows(y, d, 1, "y")?;
    let n = x.len() / d;
    let total = n + y.len() / d;
    ensure_param(
        total <= MAX_POOLED,
        "samples",
        total,
        format!("at most {MAX_POOLED} pooled samples"),
    )?;
    let pooled: Vec<f64> = x.iter().chain(y.iter()).map(|&v| f64::from(v)).collect();
    let mut dist = vec![0.0; total * total];
    for i in 0..total {
        for j in i + 1..total {
            let s: f64 = (0..d)
                .map(|k| (pooled[i * d + k] - pooled[j * d + k]).powi(2))
                .sum();
            dist[i * total + j] = s.sqrt();
            dist[j * total + i] = s.sqrt();
        }
    }
    let rows: Vec<f64> = (0..total)
        .map(|i| dist[i * total..(i + 1) * total].iter().sum())
        .collect();
    let all: f64 = rows.iter().sum();
    let mut idx: Vec<usize> = (0..total).collect();
    let observed = energy(&dist, total, &rows, all, &idx[..n]);
    let key = NoiseKey::new(seed, 0xE4E4);
    let u = key.uniforms_f64(perms * total);
    let mut exceed = 0;
    for p in 0..perms {
        // Fisher–Yates with the test's own uniforms.
        for i in (1..total).rev() {
            let j = (u[p * total + i] * (i + 1) as f64) as usize;
            idx.swap(i, j.min(i));
        }
        if energy(&dist, total, &rows, all, &idx[..n]) >= observed {
            exceed += 1;
        }
    }
    Ok((observed, (exceed + 1) as f64 / (perms + 1) as f64))
}

/// Checks that `x` holds at least `min` rows of `d > 0` values.
fn check_rows(x: &[f32], d: usize, min: usize, name: &'static str) -> Result<()> {
    ensure_param(d > 0, "d", d, "must be > 0")?;
    ensure_param(
        x.len() % d == 0 && x.len() / d >= min,
        name,
        format!("{} values", x.len()),
        format!("needs at least {min} rows of {d} values"),
    )
}

/// Sample mean and covariance (row-major `d x d`, divisor `n - 1`) of `x`
/// (`[n, d]` row-major, `n >= 2`).
pub fn moments(x: &[f32], d: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    check_rows(x, d, 2, "x")?;
    let n = x.len() / d;
    let mut mean = vec![0.0; d];
    for i in 0..n {
        for j in 0..d {
            mean[j] += f64::from(x[i * d + j]);
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let mut cov = vec![0.0; d * d];
    for i in 0..n {
        for a in 0..d {
            let da = f64::from(x[i * d + a]) - mean[a];
            for b in 0..d {
                cov[a * d + b] += da * (f64::from(x[i * d + b]) - mean[b]);
            }
        }
    }
    cov.iter_mut().for_each(|c| *c /= (n - 1) as f64);
    Ok((mean, cov))
}
