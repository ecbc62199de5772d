//! Training objectives (SPEC.md section 4): continuous denoising score
//! matching for VE, VP and sub-VP with either weighting and either reduction,
//! and the two discrete special cases the paper generalises: the SMLD loss
//! (VE, noise levels `sigma_i`, weight `sigma_i^2`) and the DDPM loss (VP,
//! noise-prediction MSE with the discrete `alpha_bar_i`).
//!
//! Every objective draws its randomness (times or levels, noise, dropout) from
//! one [`NoiseRng`] in a fixed order, so a run is reproducible from the
//! generator's state.

use score_net::{NetBackend, UnetScore};
use sde_core::dsm::{dsm_loss, DsmBatch, Reduction, Weighting};
use sde_core::{AnySde, Coef, NoiseRng, Sde, SdeExt, SdeKind};
use serde::{Deserialize, Serialize};

use crate::error::{ensure_config, Result};

/// Which objective to minimise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossKind {
    /// Continuous-time DSM with `t ~ U(eps, 1)` (any SDE).
    #[default]
    Dsm,
    /// Discrete SMLD (NCSN) loss: a uniformly drawn level `i`, `x = x0 + sigma_i z`,
    /// weight `sigma_i^2` (VE only). Equals [`LossKind::Dsm`] restricted to the
    /// grid times `t_i = i / (N - 1)`.
    Smld,
    /// Discrete DDPM loss: `|eps_theta(sqrt(abar_i) x0 + sqrt(1 - abar_i) z, i) - z|^2`
    /// (VP only); the network sees `999 t_i = 999 i / (N - 1)`.
    Ddpm,
}

/// The objective and its options.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossConfig {
    /// The objective.
    pub kind: LossKind,
    /// `lambda(t)` for [`LossKind::Dsm`] (the discrete losses fix their own).
    pub weighting: Weighting,
    /// Reduction over the dimensions of a sample.
    pub reduction: Reduction,
    /// Smallest training time for [`LossKind::Dsm`] (reference 1e-5).
    pub eps: f64,
}

impl Default for LossConfig {
    /// Continuous DSM, `lambda = s(t)^2`, mean reduction, `eps = 1e-5`.
    fn default() -> Self {
        LossConfig {
            kind: LossKind::Dsm,
            weighting: Weighting::SigmaSquared,
            reduction: Reduction::Mean,
            eps: 1e-5,
        }
    }
}

impl LossConfig {
    /// Checks the options against the SDE family.
    pub fn validate(&self, sde: &AnySde) -> Result<()> {
        ensure_config(
            self.eps.is_finite() && self.eps > 0.0 && self.eps < sde.t_max(),
            "loss.eps",
            || format!("{} must lie in (0, T)", self.eps),
        )?;
        match (self.kind, sde.kind()) {
            (LossKind::Smld, k) if k != SdeKind::Ve => Err(crate::TrainError::Config {
                field: "loss.kind".into(),
                reason: format!("the SMLD loss needs the VE SDE, not {k:?}"),
            }),
            (LossKind::Ddpm, k) if k != SdeKind::Vp => Err(crate::TrainError::Config {
                field: "loss.kind".into(),
                reason: format!("the DDPM loss needs the VP SDE, not {k:?}"),
            }),
            _ => Ok(()),
        }
    }
}

/// The value of an objective on one batch.
#[derive(Clone, Debug)]
pub struct LossValue {
    /// Batch mean of the per-sample losses.
    pub loss: f64,
    /// Per-sample losses.
    pub per_sample: Vec<f64>,
    /// The times used (grid times for the discrete losses).
    pub t: Vec<f64>,
}

/// Evaluates the objective on the clean batch `x0`; when `grads` is given,
/// back-propagates and accumulates the parameter gradients into it. `dropout`
/// switches the network's dropout on (training) or off (evaluation).
pub fn compute<B: NetBackend>(
    b: &B,
    model: &UnetScore<B, AnySde>,
    x0: &B::Tensor,
    cfg: &LossConfig,
    rng: &mut NoiseRng,
    dropout: bool,
    grads: Option<&mut B::Tensor>,
) -> Result<LossValue> {
    let sde = &model.sde;
    cfg.validate(sde)?;
    let shape = b.shape(x0).clone();
    let n = shape.batch();
    let t = match cfg.kind {
        LossKind::Dsm => sde_core::dsm::sample_times(rng, n, cfg.eps, sde.t_max())?,
        LossKind::Smld | LossKind::Ddpm => {
            let levels = sde.num_steps();
            rng.uniforms_f64(n)
                .into_iter()
                .map(|u| {
                    let i = ((u * levels as f64) as usize).min(levels - 1);
                    i as f64 / (levels - 1).max(1) as f64
                })
                .collect()
        }
    };
    let z = b.gaussian(&shape, rng.next_key())?;
    let dropout_key = dropout.then(|| rng.next_key());
    match cfg.kind {
        LossKind::Dsm | LossKind::Smld => {
            // SMLD: VE kernel std at t_i is exactly sigma_i (geometric grid).
            let x_t = sde.perturb(b, x0, &z, &t)?;
            let batch = DsmBatch { t, z, x_t };
            let weighting = match cfg.kind {
                LossKind::Smld => Weighting::SigmaSquared,
                _ => cfg.weighting,
            };
            let (score, cache) = model.score_with_cache(b, &batch.x_t, &batch.t, dropout_key)?;
            let l = dsm_loss(b, sde, &score, &batch, weighting, cfg.reduction)?;
            if let Some(g) = grads {
                model.backward_score(b, &cache, &batch.t, &l.grad, g)?;
            }
            Ok(LossValue {
                loss: l.loss,
                per_sample: l.per_sample,
                t: batch.t,
            })
        }
        LossKind::Ddpm => {
            // `validate` has ruled the other families out.
            let AnySde::Vp(vp) = sde else {
                return Err(crate::TrainError::Config {
                    field: "loss.kind".into(),
                    reason: "the DDPM loss needs the VP SDE".into(),
                });
            };
            let abar = &vp.discrete().alphas_cumprod;
            let levels = sde.num_steps();
            let idx: Vec<usize> = t
                .iter()
                .map(|&t| (t * (levels - 1) as f64).round() as usize)
                .collect();
            let m: Vec<f32> = idx.iter().map(|&i| abar[i].sqrt() as f32).collect();
            let s: Vec<f32> = idx.iter().map(|&i| (1.0 - abar[i]).sqrt() as f32).collect();
            let x_t = b.lincomb(&[(Coef::PerSample(&m), x0), (Coef::PerSample(&s), &z)])?;
            let (out, cache) = model.net.forward(
                b,
                model.store.params(),
                &x_t,
                &model.time_input(&t),
                dropout_key,
            )?;
            let residual = b.sub(&out, &z)?;
            let c = cfg.reduction.factor(shape.sample_numel());
            let per_sample: Vec<f64> = b
                .sample_dot(&residual, &residual)?
                .into_iter()
                .map(|sq| c * sq)
                .collect();
            let loss = per_sample.iter().sum::<f64>() / n as f64;
            if let Some(g) = grads {
                let dout = b.scale(&residual, Coef::Scalar((2.0 * c / n as f64) as f32))?;
                model
                    .net
                    .backward(b, model.store.params(), &cache, &dout, g)?;
            }
            Ok(LossValue {
                loss,
                per_sample,
                t,
            })
        }
    }
}
