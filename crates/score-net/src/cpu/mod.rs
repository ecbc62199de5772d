//! The CPU implementation of [`NetBackend`] for `sde_core::CpuBackend`:
//! convolutions and linear layers as (im2col +) GEMM through the `gemm`
//! crate, threaded over the batch; the other ops as cache-friendly loops,
//! threaded with rayon where the work is large enough to pay for it.
//!
//! This backend is both what machines without a GPU run and the reference
//! every other backend is tested against.

mod alloc;
pub mod conv;
mod math;
pub mod ops;
pub mod optim;

pub use alloc::{retain_freed_memory, MMAP_THRESHOLD, TRIM_THRESHOLD};
pub(crate) use sde_core::cpu::zeros;
use sde_core::{CpuBackend, CpuTensor, NoiseKey};

use crate::{AdamStep, Conv2dSpec, NetBackend, Result, View};

/// The elements of `view` in the flat parameter tensor.
pub fn view_slice<'a>(params: &'a CpuTensor, view: &View) -> Result<&'a [f32]> {
    let data = params.data();
    Ok(&data[view.range_in(data.len(), "parameter")?])
}

/// The elements of `view` in the flat gradient tensor, mutably.
pub fn view_slice_mut<'a>(grads: &'a mut CpuTensor, view: &View) -> Result<&'a mut [f32]> {
    let r = view.range_in(grads.data().len(), "gradient")?;
    Ok(&mut grads.data_mut()[r])
}

/// The dimensions of `x`, checked to have rank `rank`.
pub fn dims(x: &CpuTensor, rank: usize, op: &'static str) -> Result<Vec<usize>> {
    let d = x.shape().dims().to_vec();
    crate::error::ensure_shape(d.len() == rank, op, || {
        format!("expected a rank-{rank} tensor, got shape {}", x.shape())
    })?;
    Ok(d)
}

/// A tensor of `dims` from `data`.
pub fn tensor(data: Vec<f32>, dims: &[usize]) -> Result<CpuTensor> {
    Ok(CpuTensor::new(data, sde_core::Shape::new(dims.to_vec())?)?)
}

impl NetBackend for CpuBackend {
    fn conv2d(
        &self,
        x: &CpuTensor,
        params: &CpuTensor,
        w: &View,
        b: Option<&View>,
        spec: Conv2dSpec,
    ) -> Result<CpuTensor> {
        conv::conv2d(x, params, w, b, spec)
    }

    fn conv2d_backward(
        &self,
        x: &CpuTensor,
        dy: &CpuTensor,
        params: &CpuTensor,
        w: &View,
        b: Option<&View>,
        spec: Conv2dSpec,
        grads: &mut CpuTensor,
        need_dx: bool,
    ) -> Result<Option<CpuTensor>> {
        conv::conv2d_backward(x, dy, params, w, b, spec, grads, need_dx)
    }

    fn linear(
        &self,
        x: &CpuTensor,
        params: &CpuTensor,
        w: &View,
        b: Option<&View>,
    ) -> Result<CpuTensor> {
        conv::linear(x, params, w, b)
    }

    fn linear_backward(
        &self,
        x: &CpuTensor,
        dy: &CpuTensor,
        params: &CpuTensor,
        w: &View,
        b: Option<&View>,
        grads: &mut CpuTensor,
        need_dx: bool,
    ) -> Result<Option<CpuTensor>> {
        conv::linear_backward(x, dy, params, w, b, grads, need_dx)
    }

    fn group_norm(
        &self,
        x: &CpuTensor,
        params: &CpuTensor,
        gamma: &View,
        beta: &View,
        groups: usize,
        eps: f32,
    ) -> Result<CpuTensor> {
        ops::group_norm(x, params, gamma, beta, groups, eps)
    }

    fn group_norm_backward(
        &self,
        x: &CpuTensor,
        dy: &CpuTensor,
        params: &CpuTensor,
        gamma: &View,
        beta: &View,
        groups: usize,
        eps: f32,
        grads: &mut CpuTensor,
    ) -> Result<CpuTensor> {
        ops::group_norm_backward(x, dy, params, gamma, beta, groups, eps, grads)
    }

    fn group_norm_silu(
        &self,
        x: &CpuTensor,
        params: &CpuTensor,
        gamma: &View,
        beta: &View,
        groups: usize,
        eps: f32,
    ) -> Result<CpuTensor> {
        ops::group_norm_silu(x, params, gamma, beta, groups, eps)
    }

    fn group_norm_silu_backward(
        &self,
        x: &CpuTensor,
        dy: &CpuTensor,
        params: &CpuTensor,
        gamma: &View,
        beta: &View,
        groups: usize,
        eps: f32,
        grads: &mut CpuTensor,
    ) -> Result<CpuTensor> {
        ops::group_norm_silu_backward(x, dy, params, gamma, beta, groups, eps, grads)
    }

    fn silu(&self, x: &CpuTensor) -> Result<CpuTensor> {
        ops::silu(x)
    }

    fn silu_backward(&self, x: &CpuTensor, dy: &CpuTensor) -> Result<CpuTensor> {
        ops::silu_backward(x, dy)
    }

    fn upsample_nearest2x(&self, x: &CpuTensor) -> Result<CpuTensor> {
        ops::upsample_nearest2x(x)
    }

    fn upsample_nearest2x_backward(&self, dy: &CpuTensor) -> Result<CpuTensor> {
        ops::upsample_nearest2x_backward(dy)
    }

    fn avg_pool2x(&self, x: &CpuTensor) -> Result<CpuTensor> {
        ops::avg_pool2x(x)
    }

    fn avg_pool2x_backward(&self, dy: &CpuTensor) -> Result<CpuTensor> {
        ops::avg_pool2x_backward(dy)
    }

    fn concat_channels(&self, a: &CpuTensor, b: &CpuTensor) -> Result<CpuTensor> {
        ops::concat_channels(a, b)
    }

    fn split_channels(&self, dy: &CpuTensor, ca: usize) -> Result<(CpuTensor, CpuTensor)> {
        ops::split_channels(dy, ca)
    }

    fn add_channel_bias(&self, x: &CpuTensor, v: &CpuTensor) -> Result<CpuTensor> {
        ops::add_channel_bias(x, v)
    }

    fn sum_spatial(&self, dy: &CpuTensor) -> Result<CpuTensor> {
        ops::sum_spatial(dy)
    }

    fn image_to_tokens(&self, x: &CpuTensor) -> Result<CpuTensor> {
        ops::to_tokens(x)
    }

    fn tokens_to_image(&self, x: &CpuTensor, h: usize, w: usize) -> Result<CpuTensor> {
        ops::from_tokens(x, h, w)
    }

    fn attention(&self, q: &CpuTensor, k: &CpuTensor, v: &CpuTensor) -> Result<CpuTensor> {
        ops::attention(q, k, v)
    }

    fn attention_backward(
        &self,
        q: &CpuTensor,
        k: &CpuTensor,
        v: &CpuTensor,
        dy: &CpuTensor,
    ) -> Result<(CpuTensor, CpuTensor, CpuTensor)> {
        ops::attention_backward(q, k, v, dy)
    }

    fn dropout(&self, x: &CpuTensor, p: f32, key: NoiseKey) -> Result<CpuTensor> {
        ops::dropout(x, p, key)
    }

    fn dropout_backward(&self, dy: &CpuTensor, p: f32, key: NoiseKey) -> Result<CpuTensor> {
        ops::dropout(dy, p, key)
    }

    fn sum_squares(&self, x: &CpuTensor) -> Result<f64> {
        Ok(optim::sum_squares(x))
    }

    fn adam_update(
        &self,
        params: &mut CpuTensor,
        grads: &CpuTensor,
        m: &mut CpuTensor,
        v: &mut CpuTensor,
        step: &AdamStep,
    ) -> Result<()> {
        optim::adam_update(params, grads, m, v, step)
    }

    fn ema_update(
        &self,
        shadow: &mut CpuTensor,
        params: &CpuTensor,
        one_minus_decay: f32,
    ) -> Result<()> {
        optim::ema_update(shadow, params, one_minus_decay)
    }
}
