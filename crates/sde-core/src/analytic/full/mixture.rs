//! Mixtures of full-covariance Gaussians ([`FullMixture`]) with class
//! posteriors and exact conditionals, and the exact score model of such data
//! diffused by an SDE ([`FullMixtureScore`]). See the parent module for the
//! maths and its use as ground truth for controllable generation.

use super::{check_vector, sample_len, FullGaussian};
use crate::analytic::batch::{self, ScoreHvp};
use crate::error::ensure_param;
use crate::{Backend, Error, NoiseRng, Result, ScoreModel, ScoreVjp, Sde};

/// `log sum_k exp(l_k)`, stable for large `|l_k|`; `-inf` when every `l_k` is.
fn log_sum_exp(l: &[f64]) -> f64 {
    let max = l.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + l.iter().map(|v| (v - max).exp()).sum::<f64>().ln()
}

/// A mixture `sum_k w_k N(mu_k, Sigma_k)` of full-covariance Gaussians with
/// normalised weights; component `k` is also "class `k`" for
/// [`FullMixture::class_log_posterior`].
#[derive(Clone, Debug, PartialEq)]
pub struct FullMixture {
    log_weights: Vec<f64>,
    weights: Vec<f64>,
    components: Vec<FullGaussian>,
}

impl FullMixture {
    /// A mixture; weights must be finite and positive (they are normalised),
    /// one per component, and all components must share one dimension.
    pub fn new(weights: Vec<f64>, components: Vec<FullGaussian>) -> Result<Self> {
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
        let log_weights: Vec<f64> = weights.iter().map(|w| w.ln()).collect();
        FullMixture::from_log_weights(log_weights, components, "weights")
    }

    /// Normalises unnormalised log-weights (at least one finite).
    fn from_log_weights(
        log_weights: Vec<f64>,
        components: Vec<FullGaussian>,
        name: &'static str,
    ) -> Result<Self> {
        let total = log_sum_exp(&log_weights);
        ensure_param(
            total.is_finite(),
            name,
            total,
            "the total (log-)weight must be finite",
        )?;
        let log_weights: Vec<f64> = log_weights.iter().map(|l| l - total).collect();
        Ok(FullMixture {
            weights: log_weights.iter().map(|l| l.exp()).collect(),
            log_weights,
            components,
        })
    }

    /// A single Gaussian as a one-component mixture.
    pub fn gaussian(g: FullGaussian) -> Self {
        FullMixture {
            log_weights: vec![0.0],
            weights: vec![1.0],
            components: vec![g],
        }
    }

    /// Dimension `D`.
    pub fn dim(&self) -> usize {
        self.components[0].dim()
    }

    /// The normalised weights (a conditional mixture's may underflow to 0).
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// The components.
    pub fn components(&self) -> &[FullGaussian] {
        &self.components
    }

    /// The law of `m x + s z` for `x` from this mixture: each component
    /// perturbed ([`FullGaussian::perturbed`]), the weights kept.
    pub fn perturbed(&self, m: f64, s: f64) -> Result<FullMixture> {
        Ok(FullMixture {
            log_weights: self.log_weights.clone(),
            weights: self.weights.clone(),
            components: self
                .components
                .iter()
                .map(|c| c.perturbed(m, s))
                .collect::<Result<_>>()?,
        })
    }

    /// `log w_k + log N_k(x)` for every component, after checking `x`.
    fn joint_log_probs(&self, x: &[f64]) -> Result<Vec<f64>> {
        check_vector("x", x, self.dim())?;
        Ok(self
            .components
            .iter()
            .zip(&self.log_weights)
            .map(|(c, lw)| lw + c.log_prob_unchecked(x))
            .collect())
    }

    /// `log p(x)` (log-sum-exp over the components).
    pub fn log_prob(&self, x: &[f64]) -> Result<f64> {
        Ok(log_sum_exp(&self.joint_log_probs(x)?))
    }

    /// `log p(k | x)` for every component `k`, with the components as classes
    /// and the weights as class priors: `log w_k N_k(x) - log p(x)`. Its
    /// exponentials sum to 1.
    pub fn class_log_posterior(&self, x: &[f64]) -> Result<Vec<f64>> {
        let lp = self.joint_log_probs(x)?;
        let total = log_sum_exp(&lp);
        Ok(lp.iter().map(|l| l - total).collect())
    }

    /// `grad_x log p(k | x) = score_k(x) - score(x)`, the classifier gradient
    /// of class guidance (`score_k` is component `k`'s score). Fails if
    /// `k >= K` or `x` is invalid.
    pub fn class_log_posterior_grad(&self, x: &[f64], k: usize) -> Result<Vec<f64>> {
        let c = self
            .components
            .get(k)
            .ok_or_else(|| Error::InvalidParameter {
                name: "k",
                value: k.to_string(),
                reason: format!("the mixture has {} components", self.components.len()),
            })?;
        let score = self.score(x)?;
        let sk = c.score_unchecked(x);
        Ok(sk.iter().zip(&score).map(|(a, b)| a - b).collect())
    }

    /// `grad_x log p(x) = sum_k p(k | x) score_k(x)`.
    pub fn score(&self, x: &[f64]) -> Result<Vec<f64>> {
        Ok(self.score_and_hvp(x, None)?.0)
    }

    /// The score and, if `v` is given (else the second vector is empty), the
    /// Hessian-vector product `H v` of `log p`, which is also the score's
    /// vector-Jacobian product (the Hessian is symmetric):
    /// `H v = sum_k r_k (-Sigma_k^{-1} v + s_k (s_k . v)) - S (S . v)` with
    /// responsibilities `r_k = p(k | x)`, component scores `s_k` and `S = sum_k r_k s_k`.
    pub fn score_and_hvp(&self, x: &[f64], v: Option<&[f64]>) -> Result<(Vec<f64>, Vec<f64>)> {
        let d = self.dim();
        if let Some(v) = v {
            check_vector("v", v, d)?;
        }
        let log_r = self.class_log_posterior(x)?;
        let mut score = vec![0.0; d];
        let mut hvp = vec![0.0; if v.is_some() { d } else { 0 }];
        for (lr, c) in log_r.iter().zip(&self.components) {
            let r = lr.exp();
            if r == 0.0 {
                continue;
            }
            let sk = c.score_unchecked(x);
            for (s, v) in score.iter_mut().zip(&sk) {
                *s += r * v;
            }
            if let Some(v) = v {
                let dot: f64 = sk.iter().zip(v).map(|(a, b)| a * b).sum();
                let pv = c.precision_mul(v);
                for ((h, p), s) in hvp.iter_mut().zip(&pv).zip(&sk) {
                    *h += r * (s * dot - p);
                }
            }
        }
        if let Some(v) = v {
            let dot: f64 = score.iter().zip(v).map(|(a, b)| a * b).sum();
            for (h, s) in hvp.iter_mut().zip(&score) {
                *h -= s * dot;
            }
        }
        Ok((score, hvp))
    }

    /// `n` samples, flattened row-major (`n x D`), drawn with fresh streams of
    /// `rng` exactly as [`crate::analytic::GaussianMixture::sample`] draws
    /// them (a uniform picks the component, then `mu_k + L_k z`).
    pub fn sample(&self, n: usize, rng: &mut NoiseRng) -> Result<Vec<f32>> {
        Ok(self.sample_labelled(n, rng)?.0)
    }

    /// [`FullMixture::sample`] together with the component (class) index of
    /// each draw.
    pub fn sample_labelled(&self, n: usize, rng: &mut NoiseRng) -> Result<(Vec<f32>, Vec<usize>)> {
        let d = self.dim();
        let len = sample_len(n, d)?;
        let choice = rng.uniforms_f64(n);
        let mut z = vec![0.0f32; len];
        rng.next_key().fill_gaussian(&mut z);
        let last = self.weights.iter().rposition(|&w| w > 0.0).unwrap_or(0);
        let mut out = Vec::with_capacity(len);
        let mut labels = Vec::with_capacity(n);
        for (u, zi) in choice.into_iter().zip(z.chunks_exact(d)) {
            let mut acc = 0.0;
            let k = self
                .weights
                .iter()
                .position(|w| {
                    acc += w;
                    u < acc
                })
                .unwrap_or(last);
            self.components[k].push_draw(zi, &mut out);
            labels.push(k);
        }
        Ok((out, labels))
    }

    /// The exact law of the unknown coordinates given the known ones (see
    /// [`FullGaussian::conditional`] for `known`, `values` and the order of the
    /// coordinates): every component conditioned, weight `k` multiplied by
    /// component `k`'s marginal density of the known values and renormalised.
    /// Fails like [`FullGaussian::conditional`], or if the known values have
    /// zero density (underflow) under every component.
    pub fn conditional(&self, known: &[bool], values: &[f64]) -> Result<FullMixture> {
        let mut log_weights = Vec::with_capacity(self.components.len());
        let mut components = Vec::with_capacity(self.components.len());
        for (c, lw) in self.components.iter().zip(&self.log_weights) {
            let (g, log_marginal) = c.condition(known, values)?;
            log_weights.push(lw + log_marginal);
            components.push(g);
        }
        FullMixture::from_log_weights(log_weights, components, "values")
    }
}

/// The exact score of `p_t = data.perturbed(m(t), s(t))` for clean data
/// distributed as a [`FullMixture`]: the full-covariance counterpart of
/// [`crate::analytic::AnalyticScore`], with the same conventions (for VE,
/// `p_0` is the data convolved with `N(0, sigma_min^2 I)`).
#[derive(Clone, Debug)]
pub struct FullMixtureScore<S> {
    data: FullMixture,
    sde: S,
}

impl<S: Sde> FullMixtureScore<S> {
    /// The analytic model of `data` diffused by `sde`.
    pub fn new(data: FullMixture, sde: S) -> Self {
        FullMixtureScore { data, sde }
    }

    /// The clean data distribution.
    pub fn data(&self) -> &FullMixture {
        &self.data
    }

    /// The SDE.
    pub fn sde(&self) -> &S {
        &self.sde
    }

    /// The marginal `p_t`.
    pub fn marginal_at(&self, t: f64) -> Result<FullMixture> {
        self.sde.check_time(t)?;
        let k = self.sde.marginal(t);
        self.data.perturbed(k.mean_coef, k.std)
    }

    /// `log p_t(x)` for one point.
    pub fn log_prob(&self, x: &[f64], t: f64) -> Result<f64> {
        self.marginal_at(t)?.log_prob(x)
    }

    /// The per-sample host model for the batch helpers: the score and HVP of
    /// `p_t`, keeping the last marginal (its Cholesky factors) while
    /// consecutive samples share a time.
    fn host(&self) -> impl FnMut(f64, &[f64], Option<&[f64]>) -> Result<ScoreHvp> + '_ {
        let mut cache: Option<(f64, FullMixture)> = None;
        move |t, x, v| {
            let pt = match cache.take() {
                Some((tc, pt)) if tc == t => pt,
                _ => self.marginal_at(t)?,
            };
            let out = pt.score_and_hvp(x, v);
            cache = Some((t, pt));
            out
        }
    }
}

impl<B: Backend, S: Sde> ScoreModel<B> for FullMixtureScore<S> {
    fn score(&self, b: &B, x: &B::Tensor, t: &[f64]) -> Result<B::Tensor> {
        batch::score(b, &self.sde, self.data.dim(), x, t, self.host())
    }

    /// Every sample is evaluated on its own, on the host.
    fn independent_samples(&self) -> bool {
        true
    }
}

impl<B: Backend, S: Sde> ScoreVjp<B> for FullMixtureScore<S> {
    fn score_and_vjp(
        &self,
        b: &B,
        x: &B::Tensor,
        t: &[f64],
        v: &B::Tensor,
    ) -> Result<(B::Tensor, B::Tensor)> {
        batch::score_and_vjp(b, &self.sde, self.data.dim(), x, t, v, self.host())
    }
}
