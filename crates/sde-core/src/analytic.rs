//! Analytic data distributions whose perturbed marginals `p_t` are known in
//! closed form: a diagonal Gaussian and a mixture of diagonal Gaussians in `D`
//! dimensions. Every SDE here has affine drift, so a Gaussian component
//! `N(mu, diag(v))` becomes `N(m(t) mu, diag(m(t)^2 v + s(t)^2))` at time `t`;
//! the mixture keeps its weights. This gives the exact density, score and
//! score Jacobian at every `t` — the ground truth the samplers and the
//! likelihood are tested against ([`AnalyticScore`] implements [`ScoreModel`]).
//!
//! Full-covariance Gaussians and their mixtures ([`FullGaussian`],
//! [`FullMixture`], [`FullMixtureScore`]) add exact conditionals, linear
//! observations and class posteriors: the ground truth for controllable
//! generation (class guidance, inpainting, colourisation).
//!
//! All host maths is in `f64`.

mod batch;
mod full;

pub use full::{FullGaussian, FullMixture, FullMixtureScore};

use crate::error::ensure_param;
use crate::{Backend, Error, NoiseRng, Result, ScoreModel, ScoreVjp, Sde};

const LN_2PI: f64 = 1.837_877_066_409_345_3;

/// A Gaussian `N(mean, diag(var))`.
#[derive(Clone, Debug, PartialEq)]
pub struct DiagGaussian {
    mean: Vec<f64>,
    var: Vec<f64>,
}

impl DiagGaussian {
    /// A diagonal Gaussian; `mean` and `var` must have the same non-zero length,
    /// means finite, variances finite and positive.
    pub fn new(mean: Vec<f64>, var: Vec<f64>) -> Result<Self> {
        ensure_param(
            !mean.is_empty(),
            "mean",
            "[]",
            "needs at least one dimension",
        )?;
        ensure_param(
            mean.len() == var.len(),
            "var",
            format!("{} values", var.len()),
            format!("needs one variance per dimension ({})", mean.len()),
        )?;
        if let Some(m) = mean.iter().find(|m| !m.is_finite()) {
            return Err(Error::InvalidParameter {
                name: "mean",
                value: m.to_string(),
                reason: "must be finite".into(),
            });
        }
        if let Some(v) = var.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
            return Err(Error::InvalidParameter {
                name: "var",
                value: v.to_string(),
                reason: "variances must be finite and > 0".into(),
            });
        }
        Ok(DiagGaussian { mean, var })
    }

    /// `N(mean, var I)`.
    pub fn isotropic(mean: Vec<f64>, var: f64) -> Result<Self> {
        let d = mean.len();
        DiagGaussian::new(mean, vec![var; d])
    }

    /// Dimension `D`.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// The mean.
    pub fn mean(&self) -> &[f64] {
        &self.mean
    }

    /// The diagonal of the covariance.
    pub fn var(&self) -> &[f64] {
        &self.var
    }

    /// The law of `m x + s z` for `x` from this Gaussian and `z ~ N(0, I)`.
    pub fn perturbed(&self, m: f64, s: f64) -> DiagGaussian {
        DiagGaussian {
            mean: self.mean.iter().map(|mu| m * mu).collect(),
            var: self.var.iter().map(|v| m * m * v + s * s).collect(),
        }
    }

    /// `log N(x; mean, diag(var))`.
    pub fn log_prob(&self, x: &[f64]) -> f64 {
        let mut acc = 0.0;
        for ((x, mu), v) in x.iter().zip(&self.mean).zip(&self.var) {
            let d = x - mu;
            acc += d * d / v + v.ln();
        }
        -0.5 * (acc + self.dim() as f64 * LN_2PI)
    }

    /// `grad_x log N(x) = -(x - mean) / var`, written into `out`.
    fn score_into(&self, x: &[f64], out: &mut [f64]) {
        for (((o, x), mu), v) in out.iter_mut().zip(x).zip(&self.mean).zip(&self.var) {
            *o = -(x - mu) / v;
        }
    }
}

/// A mixture `sum_k w_k N(mu_k, diag(v_k))` with normalised weights.
#[derive(Clone, Debug, PartialEq)]
pub struct GaussianMixture {
    log_weights: Vec<f64>,
    weights: Vec<f64>,
    components: Vec<DiagGaussian>,
}

impl GaussianMixture {
    /// A mixture; weights must be finite and positive (they are normalised),
    /// one per component, and all components must share one dimension.
    pub fn new(weights: Vec<f64>, components: Vec<DiagGaussian>) -> Result<Self> {
        ensure_param(
            !components.is_empty(),
            "components",
            "[]",
            "needs at least one component",
        )?;
        ensure_param(
            weights.len() == components.len(),
            "weights",
            format!("{} values", weights.len()),
            format!("needs one weight per component ({})", components.len()),
        )?;
        if let Some(w) = weights.iter().find(|w| !(w.is_finite() && **w > 0.0)) {
            return Err(Error::InvalidParameter {
                name: "weights",
                value: w.to_string(),
                reason: "weights must be finite and > 0".into(),
            });
        }
        let d = components[0].dim();
        if let Some(c) = components.iter().find(|c| c.dim() != d) {
            return Err(Error::InvalidParameter {
                name: "components",
                value: format!("dimension {}", c.dim()),
                reason: format!("all components need dimension {d}"),
            });
        }
        let total: f64 = weights.iter().sum();
        let weights: Vec<f64> = weights.iter().map(|w| w / total).collect();
        Ok(GaussianMixture {
            log_weights: weights.iter().map(|w| w.ln()).collect(),
            weights,
            components,
        })
    }

    /// A single Gaussian as a one-component mixture.
    pub fn gaussian(g: DiagGaussian) -> Self {
        GaussianMixture {
            log_weights: vec![0.0],
            weights: vec![1.0],
            components: vec![g],
        }
    }

    /// Dimension `D`.
    pub fn dim(&self) -> usize {
        self.components[0].dim()
    }

    /// The normalised weights.
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// The components.
    pub fn components(&self) -> &[DiagGaussian] {
        &self.components
    }

    /// The law of `m x + s z` for `x` from this mixture: each component perturbed.
    pub fn perturbed(&self, m: f64, s: f64) -> GaussianMixture {
        GaussianMixture {
            log_weights: self.log_weights.clone(),
            weights: self.weights.clone(),
            components: self.components.iter().map(|c| c.perturbed(m, s)).collect(),
        }
    }

    /// The mixture mean `sum_k w_k mu_k`.
    pub fn mean(&self) -> Vec<f64> {
        let mut mean = vec![0.0; self.dim()];
        for (w, c) in self.weights.iter().zip(&self.components) {
            for (m, mu) in mean.iter_mut().zip(c.mean()) {
                *m += w * mu;
            }
        }
        mean
    }

    /// The full `D x D` covariance (row-major):
    /// `sum_k w_k (diag(v_k) + mu_k mu_k^T) - mean mean^T`.
    pub fn covariance(&self) -> Vec<f64> {
        let d = self.dim();
        let mean = self.mean();
        let mut cov = vec![0.0; d * d];
        for (w, c) in self.weights.iter().zip(&self.components) {
            for i in 0..d {
                cov[i * d + i] += w * c.var[i];
                for j in 0..d {
                    cov[i * d + j] += w * c.mean[i] * c.mean[j];
                }
            }
        }
        for i in 0..d {
            for j in 0..d {
                cov[i * d + j] -= mean[i] * mean[j];
            }
        }
        cov
    }

    /// Log-densities of the components at `x`, each plus its log-weight.
    fn joint_log_probs(&self, x: &[f64]) -> Vec<f64> {
        self.components
            .iter()
            .zip(&self.log_weights)
            .map(|(c, lw)| lw + c.log_prob(x))
            .collect()
    }

    /// `log p(x)`.
    pub fn log_prob(&self, x: &[f64]) -> f64 {
        let lp = self.joint_log_probs(x);
        let max = lp.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        max + lp.iter().map(|l| (l - max).exp()).sum::<f64>().ln()
    }

    /// Posterior component responsibilities `r_k(x)`.
    fn responsibilities(&self, x: &[f64]) -> Vec<f64> {
        let lp = self.joint_log_probs(x);
        let max = lp.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = lp.iter().map(|l| (l - max).exp()).collect();
        let total: f64 = e.iter().sum();
        e.into_iter().map(|v| v / total).collect()
    }

    /// `grad_x log p(x) = sum_k r_k(x) s_k(x)` with `s_k = -(x - mu_k)/v_k`.
    pub fn score(&self, x: &[f64]) -> Vec<f64> {
        self.score_and_hvp(x, None).0
    }

    /// The score and, if `v` is given, the Hessian-vector product `H v` of
    /// `log p` (the score's Jacobian is the Hessian, which is symmetric, so
    /// this is also the vector-Jacobian product):
    /// `H v = sum_k r_k (-v / v_k) + sum_k r_k s_k (s_k . v) - S (S . v)`, `S = sum_k r_k s_k`.
    pub fn score_and_hvp(&self, x: &[f64], v: Option<&[f64]>) -> (Vec<f64>, Vec<f64>) {
        let d = self.dim();
        let r = self.responsibilities(x);
        let mut score = vec![0.0; d];
        let mut hvp = vec![0.0; d];
        let mut sk = vec![0.0; d];
        for (rk, c) in r.iter().zip(&self.components) {
            c.score_into(x, &mut sk);
            for (s, v) in score.iter_mut().zip(&sk) {
                *s += rk * v;
            }
            if let Some(v) = v {
                let dot: f64 = sk.iter().zip(v).map(|(a, b)| a * b).sum();
                for j in 0..d {
                    hvp[j] += rk * (-v[j] / c.var[j] + sk[j] * dot);
                }
            }
        }
        if let Some(v) = v {
            let dot: f64 = score.iter().zip(v).map(|(a, b)| a * b).sum();
            for (h, s) in hvp.iter_mut().zip(&score) {
                *h -= s * dot;
            }
        }
        (score, hvp)
    }

    /// `n` samples, flattened row-major (`n x D`), drawn with fresh streams of `rng`.
    pub fn sample(&self, n: usize, rng: &mut NoiseRng) -> Vec<f32> {
        let d = self.dim();
        let choice = rng.uniforms_f64(n);
        let mut z = vec![0.0f32; n * d];
        rng.next_key().fill_gaussian(&mut z);
        let mut out = Vec::with_capacity(n * d);
        for (i, u) in choice.into_iter().enumerate() {
            let mut acc = 0.0;
            let k = self
                .weights
                .iter()
                .position(|w| {
                    acc += w;
                    u < acc
                })
                .unwrap_or(self.weights.len() - 1);
            let c = &self.components[k];
            for j in 0..d {
                out.push((c.mean[j] + c.var[j].sqrt() * f64::from(z[i * d + j])) as f32);
            }
        }
        out
    }
}

/// The exact score of `p_t = mixture.perturbed(m(t), s(t))` for clean data
/// distributed as a Gaussian mixture. For VP and sub-VP `s(0) = 0`, so `p_0` is
/// the mixture itself; for VE `s(0) = sigma_min`, so `p_0` is the mixture
/// convolved with `N(0, sigma_min^2 I)` and `log_prob(x, 0)` is the density of
/// that, not of the clean mixture (see [`crate::sde`] on the VE convention).
#[derive(Clone, Debug)]
pub struct AnalyticScore<S> {
    data: GaussianMixture,
    sde: S,
}

impl<S: Sde> AnalyticScore<S> {
    /// The analytic model of `data` diffused by `sde`.
    pub fn new(data: GaussianMixture, sde: S) -> Self {
        AnalyticScore { data, sde }
    }

    /// The clean data distribution.
    pub fn data(&self) -> &GaussianMixture {
        &self.data
    }

    /// The SDE.
    pub fn sde(&self) -> &S {
        &self.sde
    }

    /// The marginal `p_t`.
    pub fn marginal_at(&self, t: f64) -> Result<GaussianMixture> {
        self.sde.check_time(t)?;
        let k = self.sde.marginal(t);
        Ok(self.data.perturbed(k.mean_coef, k.std))
    }

    /// `log p_t(x)` for one point.
    pub fn log_prob(&self, x: &[f64], t: f64) -> Result<f64> {
        self.check_point(x)?;
        Ok(self.marginal_at(t)?.log_prob(x))
    }

    fn check_point(&self, x: &[f64]) -> Result<()> {
        ensure_param(
            x.len() == self.data.dim(),
            "x",
            format!("{} values", x.len()),
            format!("the distribution has dimension {}", self.data.dim()),
        )
    }

    /// The score and (for `Some(v)`) Hessian-vector product of `p_t` at one point.
    fn host(&self, t: f64, x: &[f64], v: Option<&[f64]>) -> Result<batch::ScoreHvp> {
        Ok(self.marginal_at(t)?.score_and_hvp(x, v))
    }
}

impl<B: Backend, S: Sde> ScoreModel<B> for AnalyticScore<S> {
    fn score(&self, b: &B, x: &B::Tensor, t: &[f64]) -> Result<B::Tensor> {
        let host = |tn: f64, xn: &[f64], vn: Option<&[f64]>| self.host(tn, xn, vn);
        batch::score(b, &self.sde, self.data.dim(), x, t, host)
    }

    /// Every sample is evaluated on its own, on the host.
    fn independent_samples(&self) -> bool {
        true
    }
}

impl<B: Backend, S: Sde> ScoreVjp<B> for AnalyticScore<S> {
    fn score_and_vjp(
        &self,
        b: &B,
        x: &B::Tensor,
        t: &[f64],
        v: &B::Tensor,
    ) -> Result<(B::Tensor, B::Tensor)> {
        let host = |tn: f64, xn: &[f64], vn: Option<&[f64]>| self.host(tn, xn, vn);
        batch::score_and_vjp(b, &self.sde, self.data.dim(), x, t, v, host)
    }
}
