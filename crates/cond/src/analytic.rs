//! The exact time-dependent class posterior of a Gaussian mixture, as a
//! [`TimeClassifier`]: with the mixture's components as classes,
//! `p_t(k | x)` is the posterior of component `k` under the perturbed
//! mixture at time `t` (each component `N(mu, Sigma)` becomes
//! `N(m(t) mu, m(t)^2 Sigma + s(t)^2 I)`), so guidance with it samples
//! component `k` exactly (for `w = 1`). The ground truth the guidance tests
//! use; also handy to try guidance without training anything.

use sde_core::analytic::{FullMixture, FullMixtureScore};
use sde_core::{Backend, Sde};

use crate::guidance::TimeClassifier;

/// The exact class posterior of a [`FullMixture`] perturbed by an SDE.
#[derive(Clone, Debug)]
pub struct ExactClassifier<S> {
    // Its `marginal_at` gives the perturbed mixture (checking the time).
    model: FullMixtureScore<S>,
}

impl<S: Sde> ExactClassifier<S> {
    /// The classifier of `data`'s components under `sde`.
    pub fn new(data: FullMixture, sde: S) -> Self {
        ExactClassifier {
            model: FullMixtureScore::new(data, sde),
        }
    }
}

impl<B: Backend, S: Sde> TimeClassifier<B> for ExactClassifier<S> {
    fn num_classes(&self) -> usize {
        self.model.data().weights().len()
    }

    fn log_prob_and_grad(
        &self,
        b: &B,
        x: &B::Tensor,
        t: &[f64],
        labels: &[u32],
    ) -> sde_core::Result<(Vec<f64>, B::Tensor)> {
        let shape = b.shape(x).clone();
        let n = shape.batch();
        let d = shape.sample_numel();
        if t.len() != n || labels.len() != n {
            return Err(sde_core::Error::BatchMismatch {
                op: "exact classifier",
                expected: n,
                got: if t.len() != n { t.len() } else { labels.len() },
            });
        }
        let host = b.to_vec(x)?;
        let mut logp = Vec::with_capacity(n);
        let mut grad = Vec::with_capacity(n * d);
        // The perturbed mixture is kept while consecutive samples share a time.
        let mut cached: Option<(f64, FullMixture)> = None;
        for (i, (&tn, &y)) in t.iter().zip(labels).enumerate() {
            let marg = match cached.take() {
                Some((tc, m)) if tc == tn => m,
                _ => self.model.marginal_at(tn)?,
            };
            let xi: Vec<f64> = host[i * d..(i + 1) * d].iter().map(|&v| v as f64).collect();
            let lp = marg.class_log_posterior(&xi)?;
            let y = y as usize;
            let l = *lp.get(y).ok_or_else(|| sde_core::Error::InvalidParameter {
                name: "labels",
                value: y.to_string(),
                reason: format!("must be below the {} components", lp.len()),
            })?;
            logp.push(l);
            grad.extend(
                marg.class_log_posterior_grad(&xi, y)?
                    .into_iter()
                    .map(|g| g as f32),
            );
            cached = Some((tn, marg));
        }
        Ok((logp, b.tensor(grad, &shape)?))
    }
}
