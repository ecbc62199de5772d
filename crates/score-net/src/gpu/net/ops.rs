//! Normalisation, activation, layout, attention and dropout on wgpu (work in
//! progress: not implemented yet).
#![allow(clippy::too_many_arguments)]

use sde_core::NoiseKey;

use super::super::{WgpuBackend, WgpuTensor};
use crate::{NetError, Result, View};

fn not_yet(op: &'static str) -> NetError {
    NetError::Shape {
        op,
        reason: "not implemented on wgpu yet".into(),
    }
}

/// See `NetBackend::group_norm`.
pub fn group_norm(
    _be: &WgpuBackend,
    _x: &WgpuTensor,
    _params: &WgpuTensor,
    _gamma: &View,
    _beta: &View,
    _groups: usize,
    _eps: f32,
) -> Result<WgpuTensor> {
    Err(not_yet("group_norm"))
}

/// See `NetBackend::group_norm_backward`.
pub fn group_norm_backward(
    _be: &WgpuBackend,
    _x: &WgpuTensor,
    _dy: &WgpuTensor,
    _params: &WgpuTensor,
    _gamma: &View,
    _beta: &View,
    _groups: usize,
    _eps: f32,
    _grads: &mut WgpuTensor,
) -> Result<WgpuTensor> {
    Err(not_yet("group_norm_backward"))
}

/// See `NetBackend::silu`.
pub fn silu(_be: &WgpuBackend, _x: &WgpuTensor) -> Result<WgpuTensor> {
    Err(not_yet("silu"))
}

/// See `NetBackend::silu_backward`.
pub fn silu_backward(_be: &WgpuBackend, _x: &WgpuTensor, _dy: &WgpuTensor) -> Result<WgpuTensor> {
    Err(not_yet("silu_backward"))
}

/// See `NetBackend::upsample_nearest2x`.
pub fn upsample_nearest2x(_be: &WgpuBackend, _x: &WgpuTensor) -> Result<WgpuTensor> {
    Err(not_yet("upsample_nearest2x"))
}

/// See `NetBackend::upsample_nearest2x_backward`.
pub fn upsample_nearest2x_backward(_be: &WgpuBackend, _dy: &WgpuTensor) -> Result<WgpuTensor> {
    Err(not_yet("upsample_nearest2x_backward"))
}

/// See `NetBackend::avg_pool2x`.
pub fn avg_pool2x(_be: &WgpuBackend, _x: &WgpuTensor) -> Result<WgpuTensor> {
    Err(not_yet("avg_pool2x"))
}

/// See `NetBackend::avg_pool2x_backward`.
pub fn avg_pool2x_backward(_be: &WgpuBackend, _dy: &WgpuTensor) -> Result<WgpuTensor> {
    Err(not_yet("avg_pool2x_backward"))
}

/// See `NetBackend::concat_channels`.
pub fn concat_channels(_be: &WgpuBackend, _a: &WgpuTensor, _b: &WgpuTensor) -> Result<WgpuTensor> {
    Err(not_yet("concat_channels"))
}

/// See `NetBackend::split_channels`.
pub fn split_channels(
    _be: &WgpuBackend,
    _dy: &WgpuTensor,
    _ca: usize,
) -> Result<(WgpuTensor, WgpuTensor)> {
    Err(not_yet("split_channels"))
}

/// See `NetBackend::add_channel_bias`.
pub fn add_channel_bias(_be: &WgpuBackend, _x: &WgpuTensor, _v: &WgpuTensor) -> Result<WgpuTensor> {
    Err(not_yet("add_channel_bias"))
}

/// See `NetBackend::sum_spatial`.
pub fn sum_spatial(_be: &WgpuBackend, _dy: &WgpuTensor) -> Result<WgpuTensor> {
    Err(not_yet("sum_spatial"))
}

/// See `NetBackend::image_to_tokens`.
pub fn image_to_tokens(_be: &WgpuBackend, _x: &WgpuTensor) -> Result<WgpuTensor> {
    Err(not_yet("image_to_tokens"))
}

/// See `NetBackend::tokens_to_image`.
pub fn tokens_to_image(
    _be: &WgpuBackend,
    _x: &WgpuTensor,
    _h: usize,
    _w: usize,
) -> Result<WgpuTensor> {
    Err(not_yet("tokens_to_image"))
}

/// See `NetBackend::attention`.
pub fn attention(
    _be: &WgpuBackend,
    _q: &WgpuTensor,
    _k: &WgpuTensor,
    _v: &WgpuTensor,
) -> Result<WgpuTensor> {
    Err(not_yet("attention"))
}

/// See `NetBackend::attention_backward`.
pub fn attention_backward(
    _be: &WgpuBackend,
    _q: &WgpuTensor,
    _k: &WgpuTensor,
    _v: &WgpuTensor,
    _dy: &WgpuTensor,
) -> Result<(WgpuTensor, WgpuTensor, WgpuTensor)> {
    Err(not_yet("attention_backward"))
}

/// See `NetBackend::dropout` (and its backward, the same mask on `dy`).
pub fn dropout(_be: &WgpuBackend, _x: &WgpuTensor, _p: f32, _key: NoiseKey) -> Result<WgpuTensor> {
    Err(not_yet("dropout"))
}
