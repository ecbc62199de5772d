//! Two-sample statistics for testing samplers against exact distributions:
//! sample moments and an energy-distance test (Szekely and Rizzo) with a
//! permutation p-value. `solvers` and `cond` check their samplers with them
//! against the analytic distributions of [`crate::analytic`]. Also the
//! Fréchet distance between fitted Gaussians ([`frechet_distance`]), the
//! sample-quality metric of the benchmarks.
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

/// The most dimensions [`frechet_distance`] takes (its eigen-decompositions
/// cost `O(d^3)` per sweep).
pub const MAX_FRECHET_DIM: usize = 1024;

/// The Fréchet distance between Gaussians fitted to `x` and `y` (both
/// `[n, d]` row-major, at least two rows each):
/// `|mu_x - mu_y|^2 + tr(C_x + C_y - 2 (C_x^(1/2) C_y C_x^(1/2))^(1/2))`,
/// the statistic of FID (Heusel et al. 2017) in whatever feature space the
/// rows live in. Computed with symmetric eigen-decompositions (Jacobi), so it
/// holds for rank-deficient covariances too.
pub fn frechet_distance(x: &[f32], y: &[f32], d: usize) -> Result<f64> {
    ensure_param(
        d <= MAX_FRECHET_DIM,
        "d",
        d,
        format!("at most {MAX_FRECHET_DIM} dimensions"),
    )?;
    let (mx, cx) = moments(x, d)?;
    let (my, cy) = moments(y, d)?;
    let mean_term: f64 = mx.iter().zip(&my).map(|(a, b)| (a - b).powi(2)).sum();
    // S = C_x^(1/2), then the eigenvalues of S C_y S.
    let (vals, vecs) = sym_eigen(&cx, d);
    let roots: Vec<f64> = vals.iter().map(|v| v.max(0.0).sqrt()).collect();
    let mut s = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..d {
            s[i * d + j] = (0..d)
                .map(|k| vecs[i * d + k] * roots[k] * vecs[j * d + k])
                .sum();
        }
    }
    let m = matmul(&matmul(&s, &cy, d), &s, d);
    let (mvals, _) = sym_eigen(&m, d);
    let cross: f64 = mvals.iter().map(|v| v.max(0.0).sqrt()).sum();
    let trace = |c: &[f64]| (0..d).map(|i| c[i * d + i]).sum::<f64>();
    Ok(mean_term + trace(&cx) + trace(&cy) - 2.0 * cross)
}

/// `a b` for square `d x d` row-major matrices.
fn matmul(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let mut out = vec![0.0; d * d];
    for i in 0..d {
        for k in 0..d {
            let aik = a[i * d + k];
            for j in 0..d {
                out[i * d + j] += aik * b[k * d + j];
            }
        }
    }
    out
}

/// Eigenvalues and eigenvectors (columns of the row-major `d x d` result) of
/// the symmetric matrix `a`, by cyclic Jacobi rotations until the
/// off-diagonal mass is negligible.
fn sym_eigen(a: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    // Symmetrise against rounding in the inputs.
    for i in 0..d {
        for j in i + 1..d {
            let v = 0.5 * (a[i * d + j] + a[j * d + i]);
            a[i * d + j] = v;
            a[j * d + i] = v;
        }
    }
    let mut v = vec![0.0; d * d];
    for i in 0..d {
        v[i * d + i] = 1.0;
    }
    let norm: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    for _sweep in 0..100 {
        let off: f64 = (0..d)
            .flat_map(|i| (0..d).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * d + j].powi(2))
            .sum::<f64>()
            .sqrt();
        if off <= 1e-15 * norm.max(f64::MIN_POSITIVE) {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                let apq = a[p * d + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * d + q] - a[p * d + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..d {
                    let (akp, akq) = (a[k * d + p], a[k * d + q]);
                    a[k * d + p] = c * akp - s * akq;
                    a[k * d + q] = s * akp + c * akq;
                }
                for k in 0..d {
                    let (apk, aqk) = (a[p * d + k], a[q * d + k]);
                    a[p * d + k] = c * apk - s * aqk;
                    a[q * d + k] = s * apk + c * aqk;
                }
                for k in 0..d {
                    let (vkp, vkq) = (v[k * d + p], v[k * d + q]);
                    v[k * d + p] = c * vkp - s * vkq;
                    v[k * d + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..d).map(|i| a[i * d + i]).collect(), v)
}
