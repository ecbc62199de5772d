//! The optimiser updates on wgpu (`shaders/optim.wgsl`): Adam and the EMA in
//! place over the flat parameter buffer, and the squared global norm through
//! the `sample_dot` reduction. Reference: [`crate::cpu::optim`].

use sde_core::backend::check_same_shape;
use sde_core::Shape;

use super::super::backend::gpu;
use super::super::{WgpuBackend, WgpuTensor};
use crate::{AdamStep, Result};

/// The `Params` struct of `optim.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct OptimParams {
    n: u32,
    grad_scale: f32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    step_size: f32,
    inv_bias2: f32,
    eps: f32,
    one_minus_decay: f32,
    _pad: [u32; 2],
}

/// Sum of squares of all elements (per-workgroup `f32` sums of up to 1024
/// terms, added in `f64`).
pub fn sum_squares(be: &WgpuBackend, x: &WgpuTensor) -> Result<f64> {
    let n = x.shape().numel();
    let flat = Shape::new([1, n])?;
    let sums = be.reduce("sample_dot", &flat, 0.0, 0.0, &[x.buffer(), x.buffer()])?;
    Ok(sums.iter().sum())
}

/// One Adam update in place (see [`AdamStep`]).
pub fn adam_update(
    be: &WgpuBackend,
    params: &mut WgpuTensor,
    grads: &WgpuTensor,
    m: &mut WgpuTensor,
    v: &mut WgpuTensor,
    s: &AdamStep,
) -> Result<()> {
    check_same_shape("adam_update (grads)", params.shape(), grads.shape())?;
    check_same_shape("adam_update (m)", params.shape(), m.shape())?;
    check_same_shape("adam_update (v)", params.shape(), v.shape())?;
    let n = be.elems("adam_update", params.shape())?;
    let ctx = be.context();
    let grid = ctx.grid_1d("adam_update", u64::from(n)).map_err(gpu)?;
    let p = OptimParams {
        n,
        grad_scale: s.grad_scale,
        beta1: s.beta1,
        one_minus_beta1: s.one_minus_beta1,
        beta2: s.beta2,
        one_minus_beta2: s.one_minus_beta2,
        step_size: s.step_size,
        inv_bias2: s.inv_bias2,
        eps: s.eps,
        ..Default::default()
    };
    ctx.dispatch(
        "adam_update",
        &p,
        &[params.buffer(), grads.buffer(), m.buffer(), v.buffer()],
        grid,
    )
    .map_err(gpu)?;
    Ok(())
}

/// `shadow -= one_minus_decay * (shadow - params)` in place.
pub fn ema_update(
    be: &WgpuBackend,
    shadow: &mut WgpuTensor,
    params: &WgpuTensor,
    one_minus_decay: f32,
) -> Result<()> {
    check_same_shape("ema_update", shadow.shape(), params.shape())?;
    let n = be.elems("ema_update", shadow.shape())?;
    let ctx = be.context();
    let grid = ctx.grid_1d("ema_update", u64::from(n)).map_err(gpu)?;
    let p = OptimParams {
        n,
        one_minus_decay,
        ..Default::default()
    };
    ctx.dispatch("ema_update", &p, &[shadow.buffer(), params.buffer()], grid)
        .map_err(gpu)?;
    Ok(())
}
