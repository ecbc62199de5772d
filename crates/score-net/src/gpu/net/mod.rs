//! `NetBackend` for [`WgpuBackend`]: the network primitives as WGSL kernels.
//!
//! - [`gemm`]: convolutions and linear layers (forward and backward) as tiled
//!   implicit GEMMs (`shaders/gemm.wgsl`);
//! - [`ops`]: group norm, SiLU, resampling, channel concatenation, channel
//!   bias, token layout, attention and dropout (`shaders/net_ops.wgsl`,
//!   dropout in `shaders/rng.wgsl` beside the Philox stream it shares);
//! - [`optim`]: Adam, the parameter EMA and the squared global norm
//!   (`shaders/optim.wgsl`).
//!
//! The plain-Rust reference of every kernel is the CPU implementation in
//! [`crate::cpu`]; `tests/gpu_net_*.rs` compare the two on random inputs.
//! Shapes are validated on the host with the same typed errors as the CPU.

pub mod gemm;
pub mod ops;
pub mod optim;

use sde_core::NoiseKey;

use super::{WgpuBackend, WgpuTensor};
use crate::{AdamStep, Conv2dSpec, NetBackend, Result, View};

/// Checks that `view` lies inside the flat parameter buffer and returns its
/// `(offset, numel)` as the kernels index them (the CPU's error otherwise).
pub(crate) fn view_range(params: &WgpuTensor, view: &View) -> Result<(u32, u32)> {
    range_in(params, view, "parameter")
}

/// [`view_range`] for the flat gradient buffer.
pub(crate) fn grads_range(grads: &WgpuTensor, view: &View) -> Result<(u32, u32)> {
    range_in(grads, view, "gradient")
}

fn range_in(buf: &WgpuTensor, view: &View, what: &str) -> Result<(u32, u32)> {
    let r = view.range_in(buf.shape().numel(), what)?;
    Ok((r.start as u32, r.len() as u32))
}

impl NetBackend for WgpuBackend {
    fn conv2d(
        &self,
        x: &WgpuTensor,
        params: &WgpuTensor,
        w: &View,
        b: Option<&View>,
        spec: Conv2dSpec,
    ) -> Result<WgpuTensor> {
        gemm::conv2d(self, x, params, w, b, spec)
    }

    fn conv2d_backward(
        &self,
        x: &WgpuTensor,
        dy: &WgpuTensor,
        params: &WgpuTensor,
        w: &View,
        b: Option<&View>,
        spec: Conv2dSpec,
        grads: &mut WgpuTensor,
        need_dx: bool,
    ) -> Result<Option<WgpuTensor>> {
        gemm::conv2d_backward(self, x, dy, params, w, b, spec, grads, need_dx)
    }

    fn linear(
        &self,
        x: &WgpuTensor,
        params: &WgpuTensor,
        w: &View,
        b: Option<&View>,
    ) -> Result<WgpuTensor> {
        gemm::linear(self, x, params, w, b)
    }

    fn linear_backward(
        &self,
        x: &WgpuTensor,
        dy: &WgpuTensor,
        params: &WgpuTensor,
        w: &View,
        b: Option<&View>,
        grads: &mut WgpuTensor,
        need_dx: bool,
    ) -> Result<Option<WgpuTensor>> {
        gemm::linear_backward(self, x, dy, params, w, b, grads, need_dx)
    }

    fn group_norm(
        &self,
        x: &WgpuTensor,
        params: &WgpuTensor,
        gamma: &View,
        beta: &View,
        groups: usize,
        eps: f32,
    ) -> Result<WgpuTensor> {
        ops::group_norm(self, x, params, gamma, beta, groups, eps)
    }

    fn group_norm_backward(
        &self,
        x: &WgpuTensor,
        dy: &WgpuTensor,
        params: &WgpuTensor,
        gamma: &View,
        beta: &View,
        groups: usize,
        eps: f32,
        grads: &mut WgpuTensor,
    ) -> Result<WgpuTensor> {
        ops::group_norm_backward(self, x, dy, params, gamma, beta, groups, eps, grads)
    }

    fn silu(&self, x: &WgpuTensor) -> Result<WgpuTensor> {
        ops::silu(self, x)
    }

    fn silu_backward(&self, x: &WgpuTensor, dy: &WgpuTensor) -> Result<WgpuTensor> {
        ops::silu_backward(self, x, dy)
    }

    fn upsample_nearest2x(&self, x: &WgpuTensor) -> Result<WgpuTensor> {
        ops::upsample_nearest2x(self, x)
    }

    fn upsample_nearest2x_backward(&self, dy: &WgpuTensor) -> Result<WgpuTensor> {
        ops::upsample_nearest2x_backward(self, dy)
    }

    fn avg_pool2x(&self, x: &WgpuTensor) -> Result<WgpuTensor> {
        ops::avg_pool2x(self, x)
    }

    fn avg_pool2x_backward(&self, dy: &WgpuTensor) -> Result<WgpuTensor> {
        ops::avg_pool2x_backward(self, dy)
    }

    fn concat_channels(&self, a: &WgpuTensor, b: &WgpuTensor) -> Result<WgpuTensor> {
        ops::concat_channels(self, a, b)
    }

    fn split_channels(&self, dy: &WgpuTensor, ca: usize) -> Result<(WgpuTensor, WgpuTensor)> {
        ops::split_channels(self, dy, ca)
    }

    fn add_channel_bias(&self, x: &WgpuTensor, v: &WgpuTensor) -> Result<WgpuTensor> {
        ops::add_channel_bias(self, x, v)
    }

    fn sum_spatial(&self, dy: &WgpuTensor) -> Result<WgpuTensor> {
        ops::sum_spatial(self, dy)
    }

    fn image_to_tokens(&self, x: &WgpuTensor) -> Result<WgpuTensor> {
        ops::image_to_tokens(self, x)
    }

    fn tokens_to_image(&self, x: &WgpuTensor, h: usize, w: usize) -> Result<WgpuTensor> {
        ops::tokens_to_image(self, x, h, w)
    }

    fn attention(&self, q: &WgpuTensor, k: &WgpuTensor, v: &WgpuTensor) -> Result<WgpuTensor> {
        ops::attention(self, q, k, v)
    }

    fn attention_backward(
        &self,
        q: &WgpuTensor,
        k: &WgpuTensor,
        v: &WgpuTensor,
        dy: &WgpuTensor,
    ) -> Result<(WgpuTensor, WgpuTensor, WgpuTensor)> {
        ops::attention_backward(self, q, k, v, dy)
    }

    fn dropout(&self, x: &WgpuTensor, p: f32, key: NoiseKey) -> Result<WgpuTensor> {
        ops::dropout(self, x, p, key)
    }

    fn dropout_backward(&self, dy: &WgpuTensor, p: f32, key: NoiseKey) -> Result<WgpuTensor> {
        ops::dropout(self, dy, p, key)
    }

    fn sum_squares(&self, x: &WgpuTensor) -> Result<f64> {
        optim::sum_squares(self, x)
    }

    fn adam_update(
        &self,
        params: &mut WgpuTensor,
        grads: &WgpuTensor,
        m: &mut WgpuTensor,
        v: &mut WgpuTensor,
        step: &AdamStep,
    ) -> Result<()> {
        optim::adam_update(self, params, grads, m, v, step)
    }

    fn ema_update(
        &self,
        shadow: &mut WgpuTensor,
        params: &WgpuTensor,
        one_minus_decay: f32,
    ) -> Result<()> {
        optim::ema_update(self, shadow, params, one_minus_decay)
    }
}
