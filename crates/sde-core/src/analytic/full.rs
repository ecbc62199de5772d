//! Full-covariance Gaussians `N(mu, Sigma)` and mixtures of them, with exact
//! perturbed marginals, scores, Hessian-vector products, conditionals, linear
//! observations and class posteriors, all in `f64` on the host.
//!
//! They are the ground truth for controllable generation (Song et al. 2021,
//! "Score-Based Generative Modeling through Stochastic Differential
//! Equations", section 5 and appendix I): class-conditional sampling needs
//! `grad_x log p_t(y | x)`, which is [`FullMixture::class_log_posterior_grad`]
//! when the classes are the mixture's components; inpainting (imputation)
//! needs the exact law of the unknown coordinates given the known ones,
//! [`FullGaussian::conditional`] / [`FullMixture::conditional`]; colourisation
//! conditions in a rotated (decoupled) colour space, reached with
//! [`FullGaussian::linear_transform`].
//!
//! Every SDE of this crate has affine drift, so the data `x0 ~ N(mu, Sigma)`
//! becomes `x_t = m(t) x0 + s(t) z ~ N(m mu, m^2 Sigma + s^2 I)` (see
//! [`crate::Sde::marginal`]); a mixture keeps its weights and perturbs each
//! component ([`FullMixtureScore`]). The diagonal special case is
//! [`super::DiagGaussian`] / [`super::GaussianMixture`] in
//! `crates/sde-core/src/analytic.rs`.
//!
//! Matrices are row-major `Vec<f64>`. A covariance is validated once (sizes,
//! finiteness, symmetry, a successful Cholesky factorisation) and stored with
//! its lower Cholesky factor `L` (`Sigma = L L^T`), which every density, score
//! and sample then uses. Functions taking points return errors, not panics,
//! on wrong lengths or non-finite values.

mod linalg;
mod mixture;

pub use mixture::{FullMixture, FullMixtureScore};

use self::linalg::{chol_solve, cholesky, dot, gram, matmul, solve_lower};
use super::{DiagGaussian, LN_2PI};
use crate::error::ensure_param;
use crate::{Error, NoiseRng, Result};

/// A Gaussian `N(mean, cov)` with a full, symmetric positive-definite
/// covariance, stored with its Cholesky factor.
#[derive(Clone, Debug, PartialEq)]
pub struct FullGaussian {
    mean: Vec<f64>,
    cov: Vec<f64>,
    chol: Vec<f64>,
    log_det: f64,
}

/// Fails unless `x` holds `d` finite values (`name` is the argument's name).
pub(super) fn check_vector(name: &'static str, x: &[f64], d: usize) -> Result<()> {
    ensure_param(
        x.len() == d,
        name,
        format!("{} values", x.len()),
        format!("needs {d} values"),
    )?;
    match x.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::InvalidParameter {
            name,
            value: x[i].to_string(),
            reason: format!("must be finite (index {i})"),
        }),
    }
}

/// The number of `f32` values in `n` samples of dimension `d`, or an error if
/// it cannot be allocated.
pub(super) fn sample_len(n: usize, d: usize) -> Result<usize> {
    n.checked_mul(d)
        .filter(|&len| len <= isize::MAX as usize / 8)
        .ok_or_else(|| Error::InvalidParameter {
            name: "n",
            value: n.to_string(),
            reason: format!("{n} samples of dimension {d} are too many to allocate"),
        })
}

/// The `InvalidParameter` error of a matrix whose Cholesky pivot `i` is `p`.
fn not_positive_definite(name: &'static str, d: usize, what: &str, (i, p): (usize, f64)) -> Error {
    Error::InvalidParameter {
        name,
        value: format!("{d}x{d} matrix"),
        reason: format!("{what} is not (numerically) positive definite: Cholesky pivot {i} is {p}"),
    }
}

impl FullGaussian {
    /// `N(mean, cov)`; `cov` is `D x D` row-major for `D = mean.len() >= 1`.
    /// Everything must be finite, `cov` symmetric — `|c_ij - c_ji| <= 1e-12 *
    /// max(|c_ij|, |c_ji|, sqrt(|c_ii c_jj|))`, and the stored matrix is the
    /// symmetric part `(c + c^T) / 2` — and positive definite: its Cholesky
    /// factorisation must succeed with every pivot above `D eps c_ii`.
    /// Otherwise returns [`Error::InvalidParameter`].
    pub fn new(mean: Vec<f64>, cov: Vec<f64>) -> Result<Self> {
        let d = mean.len();
        ensure_param(d > 0, "mean", "[]", "needs at least one dimension")?;
        check_vector("mean", &mean, d)?;
        ensure_param(
            d.checked_mul(d) == Some(cov.len()),
            "cov",
            format!("{} values", cov.len()),
            format!("needs a {d}x{d} row-major matrix"),
        )?;
        check_vector("cov", &cov, cov.len())?;
        let mut sym = cov;
        for i in 0..d {
            for j in 0..i {
                let (a, b) = (sym[i * d + j], sym[j * d + i]);
                let scale = a
                    .abs()
                    .max(b.abs())
                    .max((sym[i * d + i] * sym[j * d + j]).abs().sqrt());
                ensure_param(
                    (a - b).abs() <= 1e-12 * scale,
                    "cov",
                    format!("cov[{i},{j}] = {a}, cov[{j},{i}] = {b}"),
                    "must be symmetric (to 1e-12 relative)",
                )?;
                let avg = 0.5 * a + 0.5 * b;
                sym[i * d + j] = avg;
                sym[j * d + i] = avg;
            }
        }
        FullGaussian::from_parts(mean, sym, "cov", "the covariance")
    }

    /// Factorises the symmetric `cov`; `name` / `what` label the error.
    fn from_parts(mean: Vec<f64>, cov: Vec<f64>, name: &'static str, what: &str) -> Result<Self> {
        let d = mean.len();
        check_vector(name, &mean, d)?;
        let chol = cholesky(&cov, d).map_err(|e| not_positive_definite(name, d, what, e))?;
        Ok(FullGaussian::from_chol(mean, cov, chol))
    }

    /// Assembles a Gaussian from a covariance and its (valid) Cholesky factor.
    fn from_chol(mean: Vec<f64>, cov: Vec<f64>, chol: Vec<f64>) -> Self {
        let d = mean.len();
        let log_det = 2.0 * (0..d).map(|i| chol[i * d + i].ln()).sum::<f64>();
        FullGaussian {
            mean,
            cov,
            chol,
            log_det,
        }
    }

    /// Dimension `D`.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// The mean.
    pub fn mean(&self) -> &[f64] {
        &self.mean
    }

    /// The covariance, `D x D` row-major (exactly symmetric).
    pub fn cov(&self) -> &[f64] {
        &self.cov
    }

    /// The lower Cholesky factor `L` of the covariance (`cov = L L^T`), `D x D`
    /// row-major with zeros above the diagonal.
    pub fn cholesky(&self) -> &[f64] {
        &self.chol
    }

    /// `log det(cov)`.
    pub fn log_det(&self) -> f64 {
        self.log_det
    }

    /// The law of `m x + s z` for `x` from this Gaussian and `z ~ N(0, I)`:
    /// `N(m mean, m^2 cov + s^2 I)`. Fails if `m` or `s` is not finite or the
    /// result is not positive definite (`m = s = 0`).
    pub fn perturbed(&self, m: f64, s: f64) -> Result<FullGaussian> {
        ensure_param(m.is_finite(), "m", m, "must be finite")?;
        ensure_param(s.is_finite(), "s", s, "must be finite")?;
        let d = self.dim();
        let mean = self.mean.iter().map(|mu| m * mu).collect();
        let mut cov: Vec<f64> = self.cov.iter().map(|c| m * m * c).collect();
        for i in 0..d {
            cov[i * d + i] += s * s;
        }
        let what = format!("the perturbed covariance (m = {m}, s = {s})");
        FullGaussian::from_parts(mean, cov, "s", &what)
    }

    /// `L^{-1} (x - mean)`, the whitened residual (no checks).
    fn whiten(&self, x: &[f64]) -> Vec<f64> {
        let mut y: Vec<f64> = x.iter().zip(&self.mean).map(|(x, mu)| x - mu).collect();
        solve_lower(&self.chol, self.dim(), &mut y);
        y
    }

    /// `log N(x; mean, cov)` without checking `x`.
    pub(super) fn log_prob_unchecked(&self, x: &[f64]) -> f64 {
        let y = self.whiten(x);
        -0.5 * (dot(&y, &y) + self.log_det + self.dim() as f64 * LN_2PI)
    }

    /// `log N(x; mean, cov)`; `x` must hold `D` finite values.
    pub fn log_prob(&self, x: &[f64]) -> Result<f64> {
        check_vector("x", x, self.dim())?;
        Ok(self.log_prob_unchecked(x))
    }

    /// `cov^{-1} v` (no checks).
    pub(super) fn precision_mul(&self, v: &[f64]) -> Vec<f64> {
        let mut out = v.to_vec();
        chol_solve(&self.chol, &mut out);
        out
    }

    /// `-cov^{-1} (x - mean)` without checking `x`.
    pub(super) fn score_unchecked(&self, x: &[f64]) -> Vec<f64> {
        let r: Vec<f64> = x.iter().zip(&self.mean).map(|(x, mu)| mu - x).collect();
        self.precision_mul(&r)
    }

    /// `grad_x log N(x) = -cov^{-1} (x - mean)`; `x` must hold `D` finite values.
    pub fn score(&self, x: &[f64]) -> Result<Vec<f64>> {
        check_vector("x", x, self.dim())?;
        Ok(self.score_unchecked(x))
    }

    /// Appends `mean + L z` (rounded to `f32`) to `out`, `z` of length `D`.
    pub(super) fn push_draw(&self, z: &[f32], out: &mut Vec<f32>) {
        let d = self.dim();
        for (i, mu) in self.mean.iter().enumerate() {
            let row = &self.chol[i * d..i * d + i + 1];
            let lz: f64 = row.iter().zip(z).map(|(l, z)| l * f64::from(*z)).sum();
            out.push((mu + lz) as f32);
        }
    }

    /// `n` samples `mean + L z`, flattened row-major (`n x D`), with `z` drawn
    /// from a fresh stream of `rng` (as [`super::GaussianMixture::sample`]
    /// draws its noise). Fails only if `n x D` values cannot be allocated.
    pub fn sample(&self, n: usize, rng: &mut NoiseRng) -> Result<Vec<f32>> {
        let d = self.dim();
        let mut z = vec![0.0f32; sample_len(n, d)?];
        rng.next_key().fill_gaussian(&mut z);
        let mut out = Vec::with_capacity(z.len());
        for zi in z.chunks_exact(d) {
            self.push_draw(zi, &mut out);
        }
        Ok(out)
    }

    /// The exact law of the unknown coordinates given the known ones.
    ///
    /// `known[i]` says whether coordinate `i` is observed (one flag per
    /// dimension); `values` holds the observed values, one per `true` flag, in
    /// increasing index order. The result is a Gaussian over the unknown
    /// coordinates, also in increasing index order, with mean
    /// `mu_u + S_uk S_kk^{-1} (x_k - mu_k)` and covariance
    /// `S_uu - S_uk S_kk^{-1} S_ku`. With no known coordinate it is `self`;
    /// with no unknown coordinate it is an error (a Gaussian needs a dimension).
    pub fn conditional(&self, known: &[bool], values: &[f64]) -> Result<FullGaussian> {
        Ok(self.condition(known, values)?.0)
    }

    /// [`FullGaussian::conditional`] and `log N(x_k; mu_k, S_kk)`, the log
    /// marginal density of the known values (0 when nothing is known).
    ///
    /// One Cholesky factorisation of the covariance with the known coordinates
    /// first, `[[L_kk, 0], [L_uk, L_uu]]`, gives everything:
    /// `S_uk S_kk^{-1} (x_k - mu_k) = L_uk y` with `y = L_kk^{-1} (x_k - mu_k)`,
    /// `S_uk S_kk^{-1} S_ku = L_uk L_uk^T`, and `L_uu` factorises the Schur
    /// complement.
    pub(super) fn condition(&self, known: &[bool], values: &[f64]) -> Result<(FullGaussian, f64)> {
        let d = self.dim();
        ensure_param(
            known.len() == d,
            "known",
            format!("{} flags", known.len()),
            format!("needs one flag per dimension ({d})"),
        )?;
        let nk = known.iter().filter(|&&k| k).count();
        check_vector("values", values, nk)?;
        ensure_param(
            nk < d,
            "known",
            format!("all {d} coordinates"),
            "at least one coordinate must be unknown",
        )?;
        if nk == 0 {
            return Ok((self.clone(), 0.0));
        }
        let order: Vec<usize> = (0..d)
            .filter(|&i| known[i])
            .chain((0..d).filter(|&i| !known[i]))
            .collect();
        let permuted: Vec<f64> = order
            .iter()
            .flat_map(|&i| order.iter().map(move |&j| self.cov[i * d + j]))
            .collect();
        let l = cholesky(&permuted, d)
            .map_err(|e| not_positive_definite("known", d, "the reordered covariance", e))?;
        let mut y: Vec<f64> = order[..nk]
            .iter()
            .zip(values)
            .map(|(&i, v)| v - self.mean[i])
            .collect();
        solve_lower(&l, d, &mut y);
        let log_det_k: f64 = (0..nk).map(|i| 2.0 * l[i * d + i].ln()).sum();
        let log_marginal = -0.5 * (dot(&y, &y) + log_det_k + nk as f64 * LN_2PI);

        let nu = d - nk;
        let luk = |a: usize| &l[(nk + a) * d..(nk + a) * d + nk];
        let mean: Vec<f64> = (0..nu)
            .map(|a| self.mean[order[nk + a]] + dot(luk(a), &y))
            .collect();
        let mut cov = vec![0.0; nu * nu];
        let mut chol = vec![0.0; nu * nu];
        for a in 0..nu {
            for b in 0..=a {
                let c = self.cov[order[nk + a] * d + order[nk + b]] - dot(luk(a), luk(b));
                cov[a * nu + b] = c;
                cov[b * nu + a] = c;
                chol[a * nu + b] = l[(nk + a) * d + nk + b];
            }
        }
        check_vector("values", &mean, nu)?;
        Ok((FullGaussian::from_chol(mean, cov, chol), log_marginal))
    }

    /// The law of `y = A x` for `x` from this Gaussian: `N(A mean, A cov A^T)`.
    /// `a` is the `rows x D` matrix `A`, row-major; it must be finite and of
    /// full row rank (so `rows <= D`), since the result must be positive
    /// definite. An orthogonal `A` (a rotation of the colour space, say) moves
    /// the Gaussian to new coordinates, where [`FullGaussian::conditional`]
    /// conditions on some of them; a selection matrix gives a marginal.
    pub fn linear_transform(&self, a: &[f64], rows: usize) -> Result<FullGaussian> {
        let d = self.dim();
        ensure_param(rows > 0, "rows", rows, "needs at least one row")?;
        let len = rows.checked_mul(d).ok_or_else(|| Error::InvalidParameter {
            name: "rows",
            value: rows.to_string(),
            reason: format!("{rows} x {d} overflows"),
        })?;
        check_vector("a", a, len)?;
        let mean = matmul(a, &self.mean, rows, d, 1);
        let cov = gram(&matmul(a, &self.chol, rows, d, d), rows, d);
        FullGaussian::from_parts(mean, cov, "a", "A cov A^T (A needs full row rank)")
    }
}

impl From<&DiagGaussian> for FullGaussian {
    /// The same Gaussian with its diagonal covariance written out in full.
    fn from(g: &DiagGaussian) -> Self {
        let d = g.dim();
        let mut cov = vec![0.0; d * d];
        let mut chol = vec![0.0; d * d];
        for (i, v) in g.var().iter().enumerate() {
            cov[i * d + i] = *v;
            chol[i * d + i] = v.sqrt();
        }
        FullGaussian::from_chol(g.mean().to_vec(), cov, chol)
    }
}
