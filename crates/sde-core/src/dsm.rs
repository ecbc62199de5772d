//! Denoising score matching (Song et al. 2021, eq. 7; SPEC.md section 4):
//! sampling `t ~ U(eps, T)`, building `x_t = m(t) x0 + s(t) z`, the target
//! score `-z / s(t)`, the two weightings and the two reductions, and the loss
//! with its gradient with respect to the model's score output (what a trainer
//! back-propagates through the network).

use serde::{Deserialize, Serialize};

use crate::backend::coefs_f32;
use crate::error::ensure_param;
use crate::{Backend, Coef, NoiseRng, Result, Sde, SdeExt};

/// The weighting `lambda(t)` of the DSM objective.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Weighting {
    /// `lambda = s(t)^2` (the reference default): per-sample loss `|s(t) score + z|^2`.
    #[default]
    SigmaSquared,
    /// `lambda = g(t)^2` (likelihood weighting): an upper bound on the negative
    /// log-likelihood (Song et al. 2021b).
    Likelihood,
}

/// How the squared error is reduced over the dimensions of one sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reduction {
    /// Mean over dimensions.
    #[default]
    Mean,
    /// `0.5 * sum` over dimensions (the reference VE CIFAR-10 setting).
    HalfSum,
}

impl Reduction {
    /// The factor `c` in `c * sum_j r_j^2` for samples of `dims` values.
    pub fn factor(self, dims: usize) -> f64 {
        match self {
            Reduction::Mean => 1.0 / dims as f64,
            Reduction::HalfSum => 0.5,
        }
    }
}

/// `lambda(t)` for one time.
pub fn weight<S: Sde + ?Sized>(sde: &S, t: f64, weighting: Weighting) -> f64 {
    match weighting {
        Weighting::SigmaSquared => sde.marginal(t).std.powi(2),
        Weighting::Likelihood => sde.diffusion(t).powi(2),
    }
}

/// `n` times drawn uniformly from `(eps, t_max)`; requires `0 < eps < t_max`.
pub fn sample_times(rng: &mut NoiseRng, n: usize, eps: f64, t_max: f64) -> Result<Vec<f64>> {
    ensure_param(
        eps > 0.0 && eps < t_max,
        "eps",
        eps,
        format!("must lie in (0, T = {t_max})"),
    )?;
    Ok(rng
        .uniforms_f64(n)
        .into_iter()
        .map(|u| eps + (t_max - eps) * u)
        .collect())
}

/// One DSM training batch: times, noise, perturbed data.
#[derive(Clone, Debug)]
pub struct DsmBatch<T> {
    /// Per-sample times `t ~ U(eps, T)`.
    pub t: Vec<f64>,
    /// The noise `z ~ N(0, I)`.
    pub z: T,
    /// `x_t = m(t) x0 + s(t) z`.
    pub x_t: T,
}

/// Draws times and noise for the clean batch `x0` and perturbs it. The data
/// are not scanned for NaNs here (that would cost a device download per batch);
/// data sets validate their values when they are loaded.
pub fn dsm_batch<B: Backend, S: Sde + ?Sized>(
    b: &B,
    sde: &S,
    x0: &B::Tensor,
    eps: f64,
    rng: &mut NoiseRng,
) -> Result<DsmBatch<B::Tensor>> {
    let shape = b.shape(x0).clone();
    let t = sample_times(rng, shape.batch(), eps, sde.t_max())?;
    let z = b.gaussian(&shape, rng.next_key())?;
    let x_t = sde.perturb(b, x0, &z, &t)?;
    Ok(DsmBatch { t, z, x_t })
}

/// Per-sample `s(t)`, failing where it is not positive (the target `-z/s`
/// is undefined there: `t = 0` for VP and sub-VP).
fn kernel_stds<S: Sde + ?Sized>(sde: &S, t: &[f64]) -> Result<Vec<f64>> {
    t.iter()
        .map(|&t| {
            sde.check_time(t)?;
            let s = sde.marginal(t).std;
            ensure_param(
                s > 0.0,
                "t",
                t,
                "the perturbation kernel has zero std there; use t >= eps > 0",
            )?;
            Ok(s)
        })
        .collect()
}

/// The DSM target `grad log p_0t(x_t | x_0) = -z / s(t)`.
pub fn dsm_target<B: Backend, S: Sde + ?Sized>(
    b: &B,
    sde: &S,
    batch: &DsmBatch<B::Tensor>,
) -> Result<B::Tensor> {
    let stds = kernel_stds(sde, &batch.t)?;
    let c = coefs_f32(stds.iter().map(|s| -1.0 / s));
    b.scale(&batch.z, Coef::PerSample(&c))
}

/// A DSM loss value with its gradient.
#[derive(Clone, Debug)]
pub struct DsmLoss<T> {
    /// Per-sample losses `lambda(t) * R(|score + z/s|^2)`.
    pub per_sample: Vec<f64>,
    /// The batch mean of `per_sample` (the optimised objective).
    pub loss: f64,
    /// Gradient of `loss` with respect to the model's score output.
    pub grad: T,
}

/// The DSM loss of the score output `score` on `batch`, and its gradient.
pub fn dsm_loss<B: Backend, S: Sde + ?Sized>(
    b: &B,
    sde: &S,
    score: &B::Tensor,
    batch: &DsmBatch<B::Tensor>,
    weighting: Weighting,
    reduction: Reduction,
) -> Result<DsmLoss<B::Tensor>> {
    let shape = b.shape(score).clone();
    crate::backend::check_same_shape("dsm_loss", b.shape(&batch.z), &shape)?;
    sde.check_times(&batch.t, shape.batch())?;
    let inv_s = coefs_f32(kernel_stds(sde, &batch.t)?.iter().map(|s| 1.0 / s));
    let residual = b.lincomb(&[
        (Coef::Scalar(1.0), score),
        (Coef::PerSample(&inv_s), &batch.z),
    ])?;
    let c = reduction.factor(shape.sample_numel());
    let lambdas: Vec<f64> = batch.t.iter().map(|&t| weight(sde, t, weighting)).collect();
    let per_sample: Vec<f64> = b
        .sample_dot(&residual, &residual)?
        .into_iter()
        .zip(&lambdas)
        .map(|(sq, l)| l * c * sq)
        .collect();
    let nb = shape.batch() as f64;
    let loss = per_sample.iter().sum::<f64>() / nb;
    let g = coefs_f32(lambdas.iter().map(|l| 2.0 * l * c / nb));
    let grad = b.scale(&residual, Coef::PerSample(&g))?;
    Ok(DsmLoss {
        per_sample,
        loss,
        grad,
    })
}
