//! The optimiser of the reference implementation (SPEC.md section 4): Adam
//! with a linear learning-rate warm-up and global-norm gradient clipping, and
//! an exponential moving average (EMA) of the weights, all over the flat
//! parameter buffer of `score_net::ParamStore`.
//!
//! The moments and the average are backend tensors (updated in place by
//! [`NetBackend::adam_update`] / [`NetBackend::ema_update`], on the device
//! for wgpu) plus counters; training checkpoints store them and restore them
//! bit for bit.

use score_net::{AdamStep, NetBackend};
use sde_core::{Coef, Shape};
use serde::{Deserialize, Serialize};

use crate::error::{ensure_config, Result};

/// Optimiser hyper-parameters (the reference defaults, except `warmup`, which
/// is shorter because the runs here are shorter; see [`OptimConfig::default`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// Peak learning rate (reference 2e-4).
    pub lr: f64,
    /// Adam `beta1` (reference 0.9).
    pub beta1: f64,
    /// Adam `beta2` (reference 0.999).
    pub beta2: f64,
    /// Adam `eps` (reference 1e-8).
    pub eps: f64,
    /// Linear warm-up steps: the learning rate at step `k` (1-based) is
    /// `lr * min(k / warmup, 1)`; 0 disables warm-up (reference 5000).
    pub warmup: u64,
    /// Global-norm clipping threshold; gradients whose L2 norm exceeds it are
    /// scaled down to it. A negative value disables clipping (reference 1.0).
    pub grad_clip: f64,
    /// EMA rate (reference 0.999 for VE, 0.9999 for VP). The effective rate
    /// at update `n` is `min(rate, (1 + n) / (10 + n))`, as in the reference
    /// code, so that short runs still get a useful average.
    pub ema_rate: f64,
}

impl Default for OptimConfig {
    /// `lr 2e-4, betas (0.9, 0.999), eps 1e-8, warmup 1000, clip 1.0, EMA 0.999`.
    fn default() -> Self {
        OptimConfig {
            lr: 2e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            warmup: 1000,
            grad_clip: 1.0,
            ema_rate: 0.999,
        }
    }
}

impl OptimConfig {
    /// Checks every field's range.
    pub fn validate(&self) -> Result<()> {
        ensure_config(self.lr.is_finite() && self.lr > 0.0, "optim.lr", || {
            format!("{} must be finite and > 0", self.lr)
        })?;
        for (name, v) in [("optim.beta1", self.beta1), ("optim.beta2", self.beta2)] {
            ensure_config((0.0..1.0).contains(&v), name, || {
                format!("{v} must lie in [0, 1)")
            })?;
        }
        ensure_config(self.eps.is_finite() && self.eps > 0.0, "optim.eps", || {
            format!("{} must be finite and > 0", self.eps)
        })?;
        ensure_config(self.grad_clip.is_finite(), "optim.grad_clip", || {
            format!(
                "{} must be finite (negative disables clipping)",
                self.grad_clip
            )
        })?;
        ensure_config(
            (0.0..1.0).contains(&self.ema_rate),
            "optim.ema_rate",
            || format!("{} must lie in [0, 1)", self.ema_rate),
        )
    }

    /// The learning rate of step `step` (1-based) after warm-up.
    pub fn lr_at(&self, step: u64) -> f64 {
        if self.warmup == 0 {
            self.lr
        } else {
            self.lr * (step as f64 / self.warmup as f64).min(1.0)
        }
    }
}

/// What one optimiser step did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// Global L2 norm of the gradient before clipping.
    pub grad_norm: f64,
    /// The factor the gradient was multiplied by (1 when not clipped).
    pub clip_scale: f64,
    /// The learning rate used.
    pub lr: f64,
}

/// Adam (Kingma & Ba, with PyTorch's bias correction and `eps` placement):
/// the schedule and clipping are computed here, the per-element update runs
/// on the backend ([`NetBackend::adam_update`]: a CPU loop or a WGSL kernel),
/// so the moments stay in device memory.
#[derive(Clone, Debug)]
pub struct Adam<B: NetBackend> {
    /// Hyper-parameters.
    pub cfg: OptimConfig,
    /// First-moment estimate (flat, like the parameters).
    pub m: B::Tensor,
    /// Second-moment estimate.
    pub v: B::Tensor,
    /// Steps taken so far.
    pub step: u64,
}

impl<B: NetBackend> Adam<B> {
    /// Fresh (zero) state for parameters of `shape`.
    pub fn new(b: &B, cfg: OptimConfig, shape: &Shape) -> Result<Self> {
        cfg.validate()?;
        Ok(Adam {
            cfg,
            m: b.zeros(shape)?,
            v: b.zeros(shape)?,
            step: 0,
        })
    }

    /// The coefficients of the next update for a gradient of global norm
    /// `grad_norm`, and its statistics (advances nothing).
    pub fn next_step(&self, grad_norm: f64) -> (AdamStep, StepStats) {
        let step = self.step + 1;
        let clip_scale = if self.cfg.grad_clip >= 0.0 && grad_norm > self.cfg.grad_clip {
            // PyTorch's clip_grad_norm_ adds 1e-6 to the norm.
            self.cfg.grad_clip / (grad_norm + 1e-6)
        } else {
            1.0
        };
        let lr = self.cfg.lr_at(step);
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let k = step as i32;
        let (b1f, b2f) = (b1 as f32, b2 as f32);
        let coefs = AdamStep {
            grad_scale: clip_scale as f32,
            beta1: b1f,
            one_minus_beta1: 1.0 - b1f,
            beta2: b2f,
            one_minus_beta2: 1.0 - b2f,
            // p -= lr / bc1 * m / (sqrt(v / bc2) + eps)
            step_size: (lr / (1.0 - b1.powi(k))) as f32,
            inv_bias2: (1.0 / (1.0 - b2.powi(k))) as f32,
            eps: self.cfg.eps as f32,
        };
        (
            coefs,
            StepStats {
                grad_norm,
                clip_scale,
                lr,
            },
        )
    }

    /// One update of `params` from `grads` (clipped to the global norm
    /// `grad_clip` first). The caller checks the gradients for finiteness.
    /// `params` is updated in place, so it must be the only handle on its storage.
    pub fn update(
        &mut self,
        b: &B,
        params: &mut B::Tensor,
        grads: &B::Tensor,
    ) -> Result<StepStats> {
        let grad_norm = b.sum_squares(grads)?.sqrt();
        let (coefs, stats) = self.next_step(grad_norm);
        b.adam_update(params, grads, &mut self.m, &mut self.v, &coefs)?;
        self.step += 1;
        Ok(stats)
    }
}

/// Exponential moving average of the parameters (in device memory).
#[derive(Clone, Debug)]
pub struct Ema<B: NetBackend> {
    /// The configured rate.
    pub rate: f64,
    /// The averaged parameters.
    pub shadow: B::Tensor,
    /// Updates applied so far.
    pub updates: u64,
}

impl<B: NetBackend> Ema<B> {
    /// An average starting at (a copy of) `params`.
    pub fn new(b: &B, rate: f64, params: &B::Tensor) -> Result<Self> {
        Ok(Ema {
            rate,
            // A fresh buffer: the update writes the shadow in place.
            shadow: b.scale(params, Coef::Scalar(1.0))?,
            updates: 0,
        })
    }

    /// The decay used by the next update: `min(rate, (1 + n) / (10 + n))`.
    pub fn next_decay(&self) -> f64 {
        let n = (self.updates + 1) as f64;
        self.rate.min((1.0 + n) / (10.0 + n))
    }

    /// `shadow <- decay * shadow + (1 - decay) * params`.
    pub fn update(&mut self, b: &B, params: &B::Tensor) -> Result<()> {
        let one_minus = (1.0 - self.next_decay()) as f32;
        b.ema_update(&mut self.shadow, params, one_minus)?;
        self.updates += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sde_core::{Backend, CpuBackend, CpuTensor};

    fn t(v: &[f32]) -> CpuTensor {
        CpuBackend
            .tensor(v.to_vec(), &Shape::new([v.len()]).expect("shape"))
            .expect("tensor")
    }

    fn adam(cfg: OptimConfig, n: usize) -> Result<Adam<CpuBackend>> {
        Adam::new(&CpuBackend, cfg, &Shape::new([n]).expect("shape"))
    }

    /// Adam's first step moves every coordinate by `lr` against the gradient's
    /// sign (bias correction makes `m_hat / sqrt(v_hat) = sign(g)` up to eps).
    #[test]
    fn first_adam_step_is_lr_times_sign() {
        let cfg = OptimConfig {
            lr: 1e-2,
            warmup: 0,
            grad_clip: -1.0,
            ..OptimConfig::default()
        };
        let mut adam = adam(cfg, 3).expect("valid");
        let mut p = t(&[1.0, 2.0, 3.0]);
        let s = adam
            .update(&CpuBackend, &mut p, &t(&[0.5, -4.0, 1e-3]))
            .expect("sizes");
        assert_eq!(s.clip_scale, 1.0);
        let want = [0.99f32, 2.01, 2.99];
        for (a, b) in p.data().iter().zip(want) {
            assert!((a - b).abs() < 2e-5, "{a} vs {b}");
        }
    }

    /// Against a hand-computed second step with clipping and warm-up.
    #[test]
    fn two_steps_with_warmup_and_clipping_match_hand_computation() {
        let cfg = OptimConfig {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            warmup: 4,
            grad_clip: 1.0,
            ema_rate: 0.9,
        };
        let mut adam = adam(cfg, 2).expect("valid");
        let mut p = t(&[0.0, 0.0]);
        // Step 1: |g| = 5 -> clipped to (0.6, 0.8) (scale 1/(5+1e-6)); lr 0.025.
        let s1 = adam
            .update(&CpuBackend, &mut p, &t(&[3.0, 4.0]))
            .expect("sizes");
        assert!((s1.grad_norm - 5.0).abs() < 1e-12);
        assert!((s1.lr - 0.025).abs() < 1e-15);
        // Step 2: g = (0.1, 0) unclipped; lr 0.05.
        let s2 = adam
            .update(&CpuBackend, &mut p, &t(&[0.1, 0.0]))
            .expect("sizes");
        assert_eq!(s2.clip_scale, 1.0);
        let g1: [f64; 2] = [3.0 / (5.0 + 1e-6), 4.0 / (5.0 + 1e-6)];
        let g2: [f64; 2] = [0.1, 0.0];
        let mut want = [0.0f64; 2];
        for i in 0..2 {
            let m1 = 0.1 * g1[i];
            let v1 = 0.01 * g1[i] * g1[i];
            want[i] -= 0.025 * (m1 / 0.1) / ((v1 / 0.01).sqrt() + 1e-8);
            let m2 = 0.9 * m1 + 0.1 * g2[i];
            let v2 = 0.99 * v1 + 0.01 * g2[i] * g2[i];
            want[i] -= 0.05 * (m2 / (1.0 - 0.81)) / ((v2 / (1.0 - 0.9801)).sqrt() + 1e-8);
        }
        for (a, b) in p.data().iter().zip(want) {
            assert!((f64::from(*a) - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn ema_follows_the_reference_decay_schedule() {
        let p0 = t(&[0.0]);
        let mut ema = Ema::new(&CpuBackend, 0.999, &p0).expect("copy");
        // Update 1: decay min(0.999, 2/11).
        ema.update(&CpuBackend, &t(&[1.0])).expect("sizes");
        assert!((f64::from(ema.shadow.data()[0]) - 9.0 / 11.0).abs() < 1e-6);
        // The shadow is a copy: the parameters it started from are untouched.
        assert_eq!(p0.data(), &[0.0]);
        // Far along, the configured rate caps the decay.
        ema.updates = 1_000_000;
        assert_eq!(ema.next_decay(), 0.999);
        assert!(ema.update(&CpuBackend, &t(&[1.0, 2.0])).is_err());
    }

    #[test]
    fn invalid_configs_are_rejected() {
        for cfg in [
            OptimConfig {
                lr: 0.0,
                ..OptimConfig::default()
            },
            OptimConfig {
                beta2: 1.0,
                ..OptimConfig::default()
            },
            OptimConfig {
                ema_rate: f64::NAN,
                ..OptimConfig::default()
            },
        ] {
            assert!(adam(cfg, 1).is_err());
        }
    }
}
