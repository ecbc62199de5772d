//! The [`NetBackend`] trait: the primitive operations a score network is built
//! from, each with an explicit backward pass (DESIGN.md section 2: no general
//! autodiff tape; every layer has forward and backward, and backward gives the
//! input gradient too, which likelihoods and guidance need).
//!
//! Conventions:
//! - images are `[N, C, H, W]` row-major; token sequences are `[N, L, C]`;
//! - all parameters live in one flat tensor `params` of shape `[P]`; a layer
//!   names its weights by [`View`]s (offset + shape) into it. Backward passes
//!   **accumulate** parameter gradients into `grads` (same layout as `params`),
//!   so the caller zeroes `grads` once per step;
//! - `need_dx = false` lets a backward skip the input gradient (first layer).

use sde_core::{Backend, NoiseKey};

use crate::Result;

/// A named slice of the flat parameter buffer: `shape` elements from `offset`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// First element in the flat buffer.
    pub offset: usize,
    /// Shape of the parameter (row-major).
    pub shape: Vec<usize>,
}

impl View {
    /// A view of `shape` at `offset`.
    pub fn new(offset: usize, shape: impl Into<Vec<usize>>) -> Self {
        View {
            offset,
            shape: shape.into(),
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The element range in the flat buffer.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.numel()
    }

    /// The element range, checked to lie inside a flat buffer of `len`
    /// elements; `buffer` names it in the error (`parameter`, `gradient`).
    pub fn range_in(&self, len: usize, buffer: &str) -> Result<std::ops::Range<usize>> {
        let r = self.range();
        if r.end > len {
            return Err(crate::NetError::View {
                name: format!("@{}", self.offset),
                reason: format!("{r:?} ends past the {buffer} buffer ({len} elements)"),
            });
        }
        Ok(r)
    }
}

/// Stride and zero padding of a square-kernel convolution (the kernel size
/// comes from the weight's shape `[C_out, C_in, k, k]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dSpec {
    /// Stride in both directions.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
}

impl Conv2dSpec {
    /// Output size along one axis for input size `n` and kernel size `k`.
    pub fn out_size(&self, n: usize, k: usize) -> usize {
        (n + 2 * self.padding).saturating_sub(k) / self.stride + 1
    }
}

/// The coefficients of one fused Adam update over the flat parameter buffer,
/// with the learning-rate schedule, bias corrections and gradient clipping
/// already folded in (computed by the optimiser on the host, in `f64`, then
/// rounded to the `f32` the kernels use). Per element:
///
/// ```text
/// g  = grad * grad_scale
/// m  = beta1 * m + one_minus_beta1 * g
/// v  = beta2 * v + one_minus_beta2 * g * g
/// p -= step_size * m / (sqrt(v * inv_bias2) + eps)
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamStep {
    /// Factor applied to the gradient first (global-norm clipping; 1 = none).
    pub grad_scale: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// `1 - beta1`, rounded once on the host.
    pub one_minus_beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// `1 - beta2`, rounded once on the host.
    pub one_minus_beta2: f32,
    /// `lr / (1 - beta1^t)`.
    pub step_size: f32,
    /// `1 / (1 - beta2^t)`.
    pub inv_bias2: f32,
    /// Added to the root of the second moment.
    pub eps: f32,
}

/// Neural-network primitives with forward and backward passes.
pub trait NetBackend: Backend {
    /// 2-D convolution `y = conv(x, W) + b`: `x [N, C_in, H, W]`, weight view
    /// `[C_out, C_in, k, k]`, optional bias view `[C_out]`.
    fn conv2d(
        &self,
        x: &Self::Tensor,
        params: &Self::Tensor,
        w: &View,
        b: Option<&View>,
        spec: Conv2dSpec,
    ) -> Result<Self::Tensor>;

    /// Backward of [`NetBackend::conv2d`]: accumulates `dW`, `db` into `grads`
    /// and returns `dx` when `need_dx`.
    #[allow(clippy::too_many_arguments)]
    fn conv2d_backward(
        &self,
        x: &Self::Tensor,
        dy: &Self::Tensor,
        params: &Self::Tensor,
        w: &View,
        b: Option<&View>,
        spec: Conv2dSpec,
        grads: &mut Self::Tensor,
        need_dx: bool,
    ) -> Result<Option<Self::Tensor>>;

    /// Affine layer on the last dimension: `y = x W^T + b`, `x [..., in]`,
    /// weight view `[out, in]`, optional bias view `[out]`.
    fn linear(
        &self,
        x: &Self::Tensor,
        params: &Self::Tensor,
        w: &View,
        b: Option<&View>,
    ) -> Result<Self::Tensor>;

    /// Backward of [`NetBackend::linear`].
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &self,
        x: &Self::Tensor,
        dy: &Self::Tensor,
        params: &Self::Tensor,
        w: &View,
        b: Option<&View>,
        grads: &mut Self::Tensor,
        need_dx: bool,
    ) -> Result<Option<Self::Tensor>>;

    /// Group normalisation of `x [N, C, H, W]` over `groups` channel groups with
    /// per-channel scale `gamma [C]` and shift `beta [C]` (views).
    #[allow(clippy::too_many_arguments)]
    fn group_norm(
        &self,
        x: &Self::Tensor,
        params: &Self::Tensor,
        gamma: &View,
        beta: &View,
        groups: usize,
        eps: f32,
    ) -> Result<Self::Tensor>;

    /// Backward of [`NetBackend::group_norm`] (statistics are recomputed from `x`):
    /// accumulates `dgamma`, `dbeta` into `grads`, returns `dx`.
    #[allow(clippy::too_many_arguments)]
    fn group_norm_backward(
        &self,
        x: &Self::Tensor,
        dy: &Self::Tensor,
        params: &Self::Tensor,
        gamma: &View,
        beta: &View,
        groups: usize,
        eps: f32,
        grads: &mut Self::Tensor,
    ) -> Result<Self::Tensor>;

    /// `silu(group_norm(x))`, the normalisation + activation pair that opens
    /// every residual branch. The default composes [`NetBackend::group_norm`]
    /// and [`NetBackend::silu`]; a backend may fuse them (the CPU backend
    /// does, with bit-identical results).
    #[allow(clippy::too_many_arguments)]
    fn group_norm_silu(
        &self,
        x: &Self::Tensor,
        params: &Self::Tensor,
        gamma: &View,
        beta: &View,
        groups: usize,
        eps: f32,
    ) -> Result<Self::Tensor> {
        let a = self.group_norm(x, params, gamma, beta, groups, eps)?;
        self.silu(&a)
    }

    /// Backward of [`NetBackend::group_norm_silu`] from its input `x` alone:
    /// accumulates `dgamma`, `dbeta` into `grads`, returns `dx`. The default
    /// recomputes the normalised tensor, then runs [`NetBackend::silu_backward`]
    /// and [`NetBackend::group_norm_backward`].
    #[allow(clippy::too_many_arguments)]
    fn group_norm_silu_backward(
        &self,
        x: &Self::Tensor,
        dy: &Self::Tensor,
        params: &Self::Tensor,
        gamma: &View,
        beta: &View,
        groups: usize,
        eps: f32,
        grads: &mut Self::Tensor,
    ) -> Result<Self::Tensor> {
        let a = self.group_norm(x, params, gamma, beta, groups, eps)?;
        let da = self.silu_backward(&a, dy)?;
        self.group_norm_backward(x, &da, params, gamma, beta, groups, eps, grads)
    }

    /// `silu(x) = x sigmoid(x)`, elementwise.
    fn silu(&self, x: &Self::Tensor) -> Result<Self::Tensor>;

    /// Backward of [`NetBackend::silu`]: `dy * silu'(x)`.
    fn silu_backward(&self, x: &Self::Tensor, dy: &Self::Tensor) -> Result<Self::Tensor>;

    /// Nearest-neighbour 2x up-sampling of `[N, C, H, W]` to `[N, C, 2H, 2W]`.
    fn upsample_nearest2x(&self, x: &Self::Tensor) -> Result<Self::Tensor>;

    /// Backward of [`NetBackend::upsample_nearest2x`] (sums each 2x2 block).
    fn upsample_nearest2x_backward(&self, dy: &Self::Tensor) -> Result<Self::Tensor>;

    /// 2x2 average pooling with stride 2 of `[N, C, H, W]` (H, W even).
    fn avg_pool2x(&self, x: &Self::Tensor) -> Result<Self::Tensor>;

    /// Backward of [`NetBackend::avg_pool2x`].
    fn avg_pool2x_backward(&self, dy: &Self::Tensor) -> Result<Self::Tensor>;

    /// Concatenation along channels: `[N, Ca, H, W] ++ [N, Cb, H, W]`.
    fn concat_channels(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;

    /// Backward of [`NetBackend::concat_channels`]: splits `dy` after `ca` channels.
    fn split_channels(&self, dy: &Self::Tensor, ca: usize) -> Result<(Self::Tensor, Self::Tensor)>;

    /// `x [N, C, H, W] + v [N, C]` broadcast over the pixels (time-embedding
    /// projections in ResBlocks).
    fn add_channel_bias(&self, x: &Self::Tensor, v: &Self::Tensor) -> Result<Self::Tensor>;

    /// Backward of [`NetBackend::add_channel_bias`] for `v`: `dy` summed over the pixels, `[N, C]`.
    fn sum_spatial(&self, dy: &Self::Tensor) -> Result<Self::Tensor>;

    /// `[N, C, H, W] -> [N, H*W, C]` (pixels as tokens).
    fn image_to_tokens(&self, x: &Self::Tensor) -> Result<Self::Tensor>;

    /// `[N, H*W, C] -> [N, C, H, W]` (inverse of [`NetBackend::image_to_tokens`]).
    fn tokens_to_image(&self, x: &Self::Tensor, h: usize, w: usize) -> Result<Self::Tensor>;

    /// Scaled dot-product attention over tokens: `softmax(q k^T / sqrt(C)) v`,
    /// `q, k, v [N, L, C]`.
    fn attention(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
    ) -> Result<Self::Tensor>;

    /// Backward of [`NetBackend::attention`]: `(dq, dk, dv)` (recomputes the
    /// attention weights).
    fn attention_backward(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        dy: &Self::Tensor,
    ) -> Result<(Self::Tensor, Self::Tensor, Self::Tensor)>;

    /// Inverted dropout with drop probability `p`: each element is zeroed with
    /// probability `p` and the rest scaled by `1/(1-p)`. The mask is element
    /// `i`'s uniform from `key` (see `sde_core::rng`) being `< p`, so the
    /// backward pass and every backend rebuild it from the key.
    fn dropout(&self, x: &Self::Tensor, p: f32, key: NoiseKey) -> Result<Self::Tensor>;

    /// Backward of [`NetBackend::dropout`] (the same mask applied to `dy`).
    fn dropout_backward(&self, dy: &Self::Tensor, p: f32, key: NoiseKey) -> Result<Self::Tensor>;

    /// The sum of squares of every element of `x` (any shape), accumulated
    /// with `f64` partial sums: the squared global norm for gradient clipping.
    fn sum_squares(&self, x: &Self::Tensor) -> Result<f64>;

    /// One Adam update in place over flat buffers of equal shape (see
    /// [`AdamStep`]). `params`, `m` and `v` are written in place, so each must
    /// be the only handle on its storage (a backend's cheap clones may share it).
    fn adam_update(
        &self,
        params: &mut Self::Tensor,
        grads: &Self::Tensor,
        m: &mut Self::Tensor,
        v: &mut Self::Tensor,
        step: &AdamStep,
    ) -> Result<()>;

    /// Exponential moving average in place: `shadow -= one_minus_decay *
    /// (shadow - params)` per element (shapes equal; `shadow` must be the only
    /// handle on its storage).
    fn ema_update(
        &self,
        shadow: &mut Self::Tensor,
        params: &Self::Tensor,
        one_minus_decay: f32,
    ) -> Result<()>;
}
