//! Convolutions and linear layers on wgpu (work in progress: not implemented yet).
#![allow(clippy::too_many_arguments)]

use super::super::{WgpuBackend, WgpuTensor};
use crate::{Conv2dSpec, NetError, Result, View};

fn not_yet(op: &'static str) -> NetError {
    NetError::Shape {
        op,
        reason: "not implemented on wgpu yet".into(),
    }
}

/// See `NetBackend::conv2d`.
pub fn conv2d(
    _be: &WgpuBackend,
    _x: &WgpuTensor,
    _params: &WgpuTensor,
    _w: &View,
    _b: Option<&View>,
    _spec: Conv2dSpec,
) -> Result<WgpuTensor> {
    Err(not_yet("conv2d"))
}

/// See `NetBackend::conv2d_backward`.
pub fn conv2d_backward(
    _be: &WgpuBackend,
    _x: &WgpuTensor,
    _dy: &WgpuTensor,
    _params: &WgpuTensor,
    _w: &View,
    _b: Option<&View>,
    _spec: Conv2dSpec,
    _grads: &mut WgpuTensor,
    _need_dx: bool,
) -> Result<Option<WgpuTensor>> {
    Err(not_yet("conv2d_backward"))
}

/// See `NetBackend::linear`.
pub fn linear(
    _be: &WgpuBackend,
    _x: &WgpuTensor,
    _params: &WgpuTensor,
    _w: &View,
    _b: Option<&View>,
) -> Result<WgpuTensor> {
    Err(not_yet("linear"))
}

/// See `NetBackend::linear_backward`.
pub fn linear_backward(
    _be: &WgpuBackend,
    _x: &WgpuTensor,
    _dy: &WgpuTensor,
    _params: &WgpuTensor,
    _w: &View,
    _b: Option<&View>,
    _grads: &mut WgpuTensor,
    _need_dx: bool,
) -> Result<Option<WgpuTensor>> {
    Err(not_yet("linear_backward"))
}
