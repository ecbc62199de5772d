//! The optimiser updates over the flat parameter buffer on the CPU: Adam,
//! the parameter EMA and the squared global norm. These loops are the
//! plain-Rust reference of `shaders/optim.wgsl` (same `f32` operation order).

use sde_core::backend::check_same_shape;
use sde_core::CpuTensor;

use crate::{AdamStep, Result};

/// Sum of squares of every element, accumulated in `f64`.
pub fn sum_squares(x: &CpuTensor) -> f64 {
    x.data().iter().map(|&v| f64::from(v) * f64::from(v)).sum()
}

/// One in-place Adam update (see [`AdamStep`] for the formula).
pub fn adam_update(
    params: &mut CpuTensor,
    grads: &CpuTensor,
    m: &mut CpuTensor,
    v: &mut CpuTensor,
    s: &AdamStep,
) -> Result<()> {
    check_same_shape("adam_update (grads)", params.shape(), grads.shape())?;
    check_same_shape("adam_update (m)", params.shape(), m.shape())?;
    check_same_shape("adam_update (v)", params.shape(), v.shape())?;
    for (((p, &g), m), v) in params
        .data_mut()
        .iter_mut()
        .zip(grads.data())
        .zip(m.data_mut().iter_mut())
        .zip(v.data_mut().iter_mut())
    {
        let g = g * s.grad_scale;
        *m = s.beta1 * *m + s.one_minus_beta1 * g;
        *v = s.beta2 * *v + s.one_minus_beta2 * g * g;
        *p -= s.step_size * *m / ((*v * s.inv_bias2).sqrt() + s.eps);
    }
    Ok(())
}

/// `shadow -= one_minus_decay * (shadow - params)`, in place.
pub fn ema_update(shadow: &mut CpuTensor, params: &CpuTensor, one_minus_decay: f32) -> Result<()> {
    check_same_shape("ema_update", shadow.shape(), params.shape())?;
    for (s, &p) in shadow.data_mut().iter_mut().zip(params.data()) {
        *s -= one_minus_decay * (*s - p);
    }
    Ok(())
}
