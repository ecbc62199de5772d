//! Interpolation between latents (Song et al. 2021, section 4.3): spherical
//! linear interpolation keeps the norm of Gaussian latents, so decoded
//! interpolants stay on the data manifold.

use sde_core::backend::check_same_shape;
use sde_core::{Backend, Coef};

use crate::error::{ensure, Result};

/// Per-sample spherical interpolation `slerp(z0, z1, alpha)`:
/// `sin((1-a) w)/sin(w) z0 + sin(a w)/sin(w) z1` with `w` the angle between
/// `z0_n` and `z1_n`; falls back to linear interpolation when the two are
/// (nearly) parallel. `alpha = 0` gives `z0`, `alpha = 1` gives `z1`.
pub fn slerp<B: Backend>(b: &B, z0: &B::Tensor, z1: &B::Tensor, alpha: f64) -> Result<B::Tensor> {
    check_same_shape("slerp", b.shape(z0), b.shape(z1))?;
    ensure(alpha.is_finite(), "alpha", alpha, "must be finite")?;
    let dots = b.sample_dot(z0, z1)?;
    let n0 = b.sample_norm(z0)?;
    let n1 = b.sample_norm(z1)?;
    let (mut c0, mut c1) = (Vec::new(), Vec::new());
    for ((d, a), c) in dots.iter().zip(&n0).zip(&n1) {
        let cos = (d / (a * c).max(f64::MIN_POSITIVE)).clamp(-1.0, 1.0);
        let w = cos.acos();
        if w.sin().abs() < 1e-6 {
            c0.push((1.0 - alpha) as f32);
            c1.push(alpha as f32);
        } else {
            c0.push((((1.0 - alpha) * w).sin() / w.sin()) as f32);
            c1.push(((alpha * w).sin() / w.sin()) as f32);
        }
    }
    Ok(b.lincomb(&[(Coef::PerSample(&c0), z0), (Coef::PerSample(&c1), z1)])?)
}
