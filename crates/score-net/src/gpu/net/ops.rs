//! Normalisation, activation, resampling, layout, attention and dropout on
//! wgpu: the host side of the kernels in `shaders/net_ops.wgsl` (dropout in
//! `shaders/rng.wgsl`).
//!
//! Every function validates its arguments with the same checks as the CPU
//! reference ([`crate::cpu::ops`]), so a wrong shape or view is the same typed
//! error on both backends, then records its dispatches (nothing waits for the
//! device). Outputs come from `WgpuBackend::output` and every kernel writes
//! every output element.
//!
//! Kernel design (details in the WGSL file):
//! - group norm: one workgroup per (sample, group), two-pass mean and variance
//!   with shared-memory tree reductions; the backward writes per-(sample,
//!   channel) `dgamma`/`dbeta` partials to scratch, and a second kernel adds
//!   their batch sums (in sample order, so deterministic) to `grads`;
//! - elementwise and layout ops: one thread per output element;
//! - `sum_spatial`: one workgroup per `(n, c)` plane;
//! - attention: per chunk of samples, a tiled batched product for the scores
//!   `q k^T / sqrt(C)`, a row-softmax kernel, and a tiled product with `v`; the
//!   backward recomputes the weights `P` and runs `dv = P^T dy`,
//!   `dP = dy v^T`, `dS = P (dP - rowsum(P dP)) / sqrt(C)` (row kernel),
//!   `dq = dS k`, `dk = dS^T q`. The `[L, L]` scratch is bounded by
//!   [`SCORES_BUDGET_BYTES`] by processing the batch in chunks.
#![allow(clippy::too_many_arguments)]

use sde_core::{NoiseKey, Shape};

use super::super::{WgpuBackend, WgpuTensor};
use super::{grads_range, view_range};
use crate::cpu::ops::{
    attention_check, channel_bias_check, check_same_shape, concat_check, dropout_check,
    even_image_dims, from_tokens_check, group_norm_check, image_shape, split_check,
};
use crate::{NetError, Result, View};

/// Bytes of attention-weight scratch (`[chunk, L, L]`) one call may allocate
/// per buffer; the batch is processed in chunks of samples that fit (at least
/// one sample per chunk).
pub const SCORES_BUDGET_BYTES: u64 = 64 << 20;

/// Side of the output tile of `attn_matmul` (`TILE` in `net_ops.wgsl`).
const TILE: u32 = 16;

/// The `Params` struct of `net_ops.wgsl`: `n` and `d[0..11]` mean what each
/// kernel's comment says.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct OpParams {
    n: u32,
    d: [u32; 11],
    alpha: f32,
    eps: f32,
    _pad: [u32; 2],
}

impl OpParams {
    /// `n` and the leading dimensions `d`, `alpha = 1`.
    fn new(n: u32, d: &[u32]) -> Self {
        let mut p = OpParams {
            n,
            alpha: 1.0,
            ..Default::default()
        };
        p.d[..d.len()].copy_from_slice(d);
        p
    }

    fn alpha(self, alpha: f32) -> Self {
        OpParams { alpha, ..self }
    }

    fn eps(self, eps: f32) -> Self {
        OpParams { eps, ..self }
    }
}

/// The `Params` struct of `rng.wgsl` as the `dropout` kernel reads it.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct DropoutParams {
    n: u32,
    seed_lo: u32,
    seed_hi: u32,
    stream_lo: u32,
    stream_hi: u32,
    drop_p: f32,
    keep_scale: f32,
    _pad: u32,
}

/// A size as the kernels index it. Every tensor this module touches was
/// created by the backend, which keeps element counts below 2^31.
fn u(x: usize) -> u32 {
    x as u32
}

/// `shape` from dimensions that come from an already validated shape.
fn shape_of(dims: &[usize]) -> Result<Shape> {
    Ok(Shape::new(dims.to_vec())?)
}

/// Runs a one-thread-per-output-element `kernel` over a new tensor of `shape`;
/// `inputs` bind before the output.
fn elementwise(
    be: &WgpuBackend,
    kernel: &'static str,
    shape: &Shape,
    params: OpParams,
    inputs: &[&wgpu::Buffer],
) -> Result<WgpuTensor> {
    let (out, n) = be.output(kernel, shape)?;
    let ctx = be.context();
    let grid = ctx.grid_1d(kernel, u64::from(n))?;
    let mut buffers = inputs.to_vec();
    buffers.push(out.buffer());
    ctx.dispatch(kernel, &OpParams { n, ..params }, &buffers, grid)?;
    Ok(out)
}

/// The grid of a one-workgroup-per-row kernel over `rows` rows (2-D when
/// `rows` exceeds the per-dimension limit; the kernels flatten it).
fn row_grid(be: &WgpuBackend, what: &str, rows: u32) -> Result<[u32; 3]> {
    let max = be.context().limits().max_compute_workgroups_per_dimension;
    let x = rows.clamp(1, max);
    let grid = [x, rows.div_ceil(x), 1];
    be.context().check_grid(what, grid)?;
    Ok(grid)
}

/// See `NetBackend::group_norm`.
pub fn group_norm(
    be: &WgpuBackend,
    x: &WgpuTensor,
    params: &WgpuTensor,
    gamma: &View,
    beta: &View,
    groups: usize,
    eps: f32,
) -> Result<WgpuTensor> {
    const OP: &str = "group_norm";
    let [n, c, h, w] = group_norm_check(x.shape(), gamma, beta, groups, eps, OP)?;
    let (g_off, _) = view_range(params, gamma)?;
    let (b_off, _) = view_range(params, beta)?;
    let (out, _) = be.output(OP, x.shape())?;
    let rows = u(n * groups);
    let p = OpParams::new(rows, &[u(groups), u(c / groups), u(h * w), g_off, b_off]).eps(eps);
    be.context().dispatch(
        "group_norm_fwd",
        &p,
        &[x.buffer(), params.buffer(), out.buffer()],
        row_grid(be, OP, rows)?,
    )?;
    Ok(out)
}

/// See `NetBackend::group_norm_backward`.
pub fn group_norm_backward(
    be: &WgpuBackend,
    x: &WgpuTensor,
    dy: &WgpuTensor,
    params: &WgpuTensor,
    gamma: &View,
    beta: &View,
    groups: usize,
    eps: f32,
    grads: &mut WgpuTensor,
) -> Result<WgpuTensor> {
    const OP: &str = "group_norm_backward";
    let [n, c, h, w] = group_norm_check(x.shape(), gamma, beta, groups, eps, OP)?;
    check_same_shape(OP, x.shape(), dy.shape())?;
    let (g_off, _) = view_range(params, gamma)?;
    // Check the gradient views before doing any work (as the CPU does).
    let (dg_off, _) = grads_range(grads, gamma)?;
    let (db_off, _) = grads_range(grads, beta)?;
    let ctx = be.context();
    let (dx, _) = be.output(OP, x.shape())?;
    // (dgamma, dbeta) partial sums per (sample, channel).
    let partial = ctx.pooled_buffer("group_norm partials", (n * c * 2 * 4) as u64)?;
    let rows = u(n * groups);
    let p = OpParams::new(rows, &[u(groups), u(c / groups), u(h * w), g_off]).eps(eps);
    ctx.dispatch(
        "group_norm_bwd",
        &p,
        &[
            x.buffer(),
            dy.buffer(),
            params.buffer(),
            dx.buffer(),
            &partial,
        ],
        row_grid(be, OP, rows)?,
    )?;
    // dgamma then dbeta, as the CPU adds them.
    for (off, which) in [(dg_off, 0), (db_off, 1)] {
        ctx.dispatch(
            "group_norm_param_grad",
            &OpParams::new(u(c), &[u(n), off, which]),
            &[&partial, grads.buffer()],
            ctx.grid_1d(OP, c as u64)?,
        )?;
    }
    Ok(dx)
}

/// See `NetBackend::silu`.
pub fn silu(be: &WgpuBackend, x: &WgpuTensor) -> Result<WgpuTensor> {
    elementwise(be, "silu", x.shape(), OpParams::default(), &[x.buffer()])
}

/// See `NetBackend::silu_backward`.
pub fn silu_backward(be: &WgpuBackend, x: &WgpuTensor, dy: &WgpuTensor) -> Result<WgpuTensor> {
    check_same_shape("silu_backward", x.shape(), dy.shape())?;
    elementwise(
        be,
        "silu_backward",
        x.shape(),
        OpParams::default(),
        &[x.buffer(), dy.buffer()],
    )
}

/// Nearest 2x up-sampling of `x` (`[n, c, h, w]`) times `scale`.
fn upsample(be: &WgpuBackend, x: &WgpuTensor, d: [usize; 4], scale: f32) -> Result<WgpuTensor> {
    let [n, c, h, w] = d;
    elementwise(
        be,
        "upsample2x",
        &shape_of(&[n, c, 2 * h, 2 * w])?,
        OpParams::new(0, &[u(h), u(w)]).alpha(scale),
        &[x.buffer()],
    )
}

/// Sums of the 2x2 blocks of `x` times `scale`.
fn block_sum(be: &WgpuBackend, x: &WgpuTensor, scale: f32, op: &'static str) -> Result<WgpuTensor> {
    let [n, c, h, w] = even_image_dims(x.shape(), op)?;
    let (ho, wo) = (h / 2, w / 2);
    elementwise(
        be,
        "block_sum2x",
        &shape_of(&[n, c, ho, wo])?,
        OpParams::new(0, &[u(ho), u(wo)]).alpha(scale),
        &[x.buffer()],
    )
}

/// See `NetBackend::upsample_nearest2x`.
pub fn upsample_nearest2x(be: &WgpuBackend, x: &WgpuTensor) -> Result<WgpuTensor> {
    let d = image_shape(x.shape(), "upsample_nearest2x")?;
    upsample(be, x, d, 1.0)
}

/// See `NetBackend::upsample_nearest2x_backward`.
pub fn upsample_nearest2x_backward(be: &WgpuBackend, dy: &WgpuTensor) -> Result<WgpuTensor> {
    block_sum(be, dy, 1.0, "upsample_nearest2x_backward")
}

/// See `NetBackend::avg_pool2x`.
pub fn avg_pool2x(be: &WgpuBackend, x: &WgpuTensor) -> Result<WgpuTensor> {
    block_sum(be, x, 0.25, "avg_pool2x")
}

/// See `NetBackend::avg_pool2x_backward`.
pub fn avg_pool2x_backward(be: &WgpuBackend, dy: &WgpuTensor) -> Result<WgpuTensor> {
    let d = image_shape(dy.shape(), "avg_pool2x_backward")?;
    upsample(be, dy, d, 0.25)
}

/// See `NetBackend::concat_channels`.
pub fn concat_channels(be: &WgpuBackend, a: &WgpuTensor, b: &WgpuTensor) -> Result<WgpuTensor> {
    let [n, ca, cb, h, w] = concat_check(a.shape(), b.shape())?;
    elementwise(
        be,
        "concat_channels",
        &shape_of(&[n, ca + cb, h, w])?,
        OpParams::new(0, &[u(ca), u(cb), u(h * w)]),
        &[a.buffer(), b.buffer()],
    )
}

/// See `NetBackend::split_channels`.
pub fn split_channels(
    be: &WgpuBackend,
    dy: &WgpuTensor,
    ca: usize,
) -> Result<(WgpuTensor, WgpuTensor)> {
    let [n, c, h, w] = split_check(dy.shape(), ca)?;
    let slice = |c0: usize, co: usize| {
        elementwise(
            be,
            "slice_channels",
            &shape_of(&[n, co, h, w])?,
            OpParams::new(0, &[u(c), u(co), u(c0), u(h * w)]),
            &[dy.buffer()],
        )
    };
    Ok((slice(0, ca)?, slice(ca, c - ca)?))
}

/// See `NetBackend::add_channel_bias`.
pub fn add_channel_bias(be: &WgpuBackend, x: &WgpuTensor, v: &WgpuTensor) -> Result<WgpuTensor> {
    let [_, _, h, w] = channel_bias_check(x.shape(), v.shape())?;
    elementwise(
        be,
        "add_channel_bias",
        x.shape(),
        OpParams::new(0, &[u(h * w)]),
        &[x.buffer(), v.buffer()],
    )
}

/// See `NetBackend::sum_spatial`.
pub fn sum_spatial(be: &WgpuBackend, dy: &WgpuTensor) -> Result<WgpuTensor> {
    const OP: &str = "sum_spatial";
    let [n, c, h, w] = image_shape(dy.shape(), OP)?;
    let (out, planes) = be.output(OP, &shape_of(&[n, c])?)?;
    be.context().dispatch(
        OP,
        &OpParams::new(planes, &[u(h * w)]),
        &[dy.buffer(), out.buffer()],
        row_grid(be, OP, planes)?,
    )?;
    Ok(out)
}

/// Per-sample transpose of `x` viewed as `[N, a, b]` into `out_dims` (`[N, b, a]` data).
fn transpose(
    be: &WgpuBackend,
    x: &WgpuTensor,
    a: usize,
    b: usize,
    out_dims: &[usize],
) -> Result<WgpuTensor> {
    elementwise(
        be,
        "transpose_samples",
        &shape_of(out_dims)?,
        OpParams::new(0, &[u(a), u(b)]),
        &[x.buffer()],
    )
}

/// See `NetBackend::image_to_tokens`.
pub fn image_to_tokens(be: &WgpuBackend, x: &WgpuTensor) -> Result<WgpuTensor> {
    let [n, c, h, w] = image_shape(x.shape(), "to_tokens")?;
    transpose(be, x, c, h * w, &[n, h * w, c])
}

/// See `NetBackend::tokens_to_image`.
pub fn tokens_to_image(be: &WgpuBackend, x: &WgpuTensor, h: usize, w: usize) -> Result<WgpuTensor> {
    let [n, l, c] = from_tokens_check(x.shape(), h, w)?;
    transpose(be, x, l, c, &[n, c, h, w])
}

/// One operand of [`matmul`]: a buffer, the element offset of the first
/// matrix, and whether it is stored transposed.
struct Operand<'a> {
    buffer: &'a wgpu::Buffer,
    offset: usize,
    transposed: bool,
}

impl<'a> Operand<'a> {
    fn new(buffer: &'a wgpu::Buffer, offset: usize) -> Self {
        Operand {
            buffer,
            offset,
            transposed: false,
        }
    }

    fn t(self) -> Self {
        Operand {
            transposed: true,
            ..self
        }
    }
}

/// `batch` products `out[i] = alpha op(A[i]) op(B[i])` with `op(A) [m, k]`,
/// `op(B) [k, n]`, `out [m, n]`, consecutive matrices of each operand
/// `m k`, `k n` and `m n` elements apart.
fn matmul(
    be: &WgpuBackend,
    [m, n, k]: [usize; 3],
    batch: usize,
    a: Operand<'_>,
    b: Operand<'_>,
    out: (&wgpu::Buffer, usize),
    alpha: f32,
) -> Result<()> {
    const KERNEL: &str = "attn_matmul";
    let ctx = be.context();
    let flags = u32::from(a.transposed) | (u32::from(b.transposed) << 1);
    let p = OpParams::new(
        0,
        &[
            u(m),
            u(n),
            u(k),
            flags,
            u(m * k),
            u(k * n),
            u(m * n),
            u(a.offset),
            u(b.offset),
            u(out.1),
        ],
    )
    .alpha(alpha);
    let grid = [u(n).div_ceil(TILE), u(m).div_ceil(TILE), u(batch)];
    ctx.check_grid(KERNEL, grid)?;
    ctx.dispatch(KERNEL, &p, &[a.buffer, b.buffer, out.0], grid)?;
    Ok(())
}

/// Samples per attention chunk so that one `[chunk, L, L]` scratch buffer
/// stays within [`SCORES_BUDGET_BYTES`] and `max_chunk` (at least one sample).
fn attention_chunk(n: usize, l: usize, max_chunk: Option<usize>) -> usize {
    let per_sample = (l * l * 4) as u64;
    let fit = (SCORES_BUDGET_BYTES / per_sample) as usize;
    fit.min(max_chunk.unwrap_or(n)).clamp(1, n)
}

/// Overwrites the `[rows, l]` scores in `s` with their row softmax.
fn softmax_rows(be: &WgpuBackend, s: &wgpu::Buffer, rows: usize, l: usize) -> Result<()> {
    const KERNEL: &str = "attn_softmax";
    let rows = u(rows);
    be.context().dispatch(
        KERNEL,
        &OpParams::new(rows, &[u(l)]),
        &[s],
        row_grid(be, KERNEL, rows)?,
    )?;
    Ok(())
}

/// The attention weights `P = softmax(q k^T scale)` of the `count` samples
/// from `s0` into `p` (`[count, L, L]`).
fn attention_weights(
    be: &WgpuBackend,
    q: &WgpuTensor,
    k: &WgpuTensor,
    p: &wgpu::Buffer,
    [s0, count, l, c]: [usize; 4],
    scale: f32,
) -> Result<()> {
    let off = s0 * l * c;
    matmul(
        be,
        [l, l, c],
        count,
        Operand::new(q.buffer(), off),
        Operand::new(k.buffer(), off).t(),
        (p, 0),
        scale,
    )?;
    softmax_rows(be, p, count * l, l)
}

/// See `NetBackend::attention`.
pub fn attention(
    be: &WgpuBackend,
    q: &WgpuTensor,
    k: &WgpuTensor,
    v: &WgpuTensor,
) -> Result<WgpuTensor> {
    attention_chunked(be, q, k, v, None)
}

/// [`attention`] processing at most `max_chunk` samples per `[chunk, L, L]`
/// scratch buffer (`None`: as many as fit [`SCORES_BUDGET_BYTES`]); the
/// result does not depend on the chunking.
pub fn attention_chunked(
    be: &WgpuBackend,
    q: &WgpuTensor,
    k: &WgpuTensor,
    v: &WgpuTensor,
    max_chunk: Option<usize>,
) -> Result<WgpuTensor> {
    const OP: &str = "attention";
    let (n, l, c) = attention_check(q.shape(), k.shape(), v.shape(), OP)?;
    let scale = 1.0 / (c as f32).sqrt();
    let (out, _) = be.output(OP, q.shape())?;
    let chunk = attention_chunk(n, l, max_chunk);
    let p = be
        .context()
        .pooled_buffer("attention weights", (chunk * l * l * 4) as u64)?;
    for s0 in (0..n).step_by(chunk) {
        let count = chunk.min(n - s0);
        attention_weights(be, q, k, &p, [s0, count, l, c], scale)?;
        let off = s0 * l * c;
        matmul(
            be,
            [l, c, l],
            count,
            Operand::new(&p, 0),
            Operand::new(v.buffer(), off),
            (out.buffer(), off),
            1.0,
        )?;
    }
    Ok(out)
}

/// See `NetBackend::attention_backward`.
pub fn attention_backward(
    be: &WgpuBackend,
    q: &WgpuTensor,
    k: &WgpuTensor,
    v: &WgpuTensor,
    dy: &WgpuTensor,
) -> Result<(WgpuTensor, WgpuTensor, WgpuTensor)> {
    attention_backward_chunked(be, q, k, v, dy, None)
}

/// [`attention_backward`] processing at most `max_chunk` samples per
/// scratch buffer, as [`attention_chunked`].
pub fn attention_backward_chunked(
    be: &WgpuBackend,
    q: &WgpuTensor,
    k: &WgpuTensor,
    v: &WgpuTensor,
    dy: &WgpuTensor,
    max_chunk: Option<usize>,
) -> Result<(WgpuTensor, WgpuTensor, WgpuTensor)> {
    const OP: &str = "attention_backward";
    let (n, l, c) = attention_check(q.shape(), k.shape(), v.shape(), OP)?;
    check_same_shape(OP, q.shape(), dy.shape())?;
    let scale = 1.0 / (c as f32).sqrt();
    let (dq, _) = be.output(OP, q.shape())?;
    let (dk, _) = be.output(OP, q.shape())?;
    let (dv, _) = be.output(OP, q.shape())?;
    let ctx = be.context();
    let chunk = attention_chunk(n, l, max_chunk);
    let bytes = (chunk * l * l * 4) as u64;
    let p = ctx.pooled_buffer("attention weights", bytes)?;
    let ds = ctx.pooled_buffer("attention weight gradients", bytes)?;
    for s0 in (0..n).step_by(chunk) {
        let count = chunk.min(n - s0);
        let off = s0 * l * c;
        attention_weights(be, q, k, &p, [s0, count, l, c], scale)?;
        // dv = P^T dy.
        matmul(
            be,
            [l, c, l],
            count,
            Operand::new(&p, 0).t(),
            Operand::new(dy.buffer(), off),
            (dv.buffer(), off),
            1.0,
        )?;
        // dP = dy v^T, then dS = P (dP - rowsum(P dP)) scale in place.
        matmul(
            be,
            [l, l, c],
            count,
            Operand::new(dy.buffer(), off),
            Operand::new(v.buffer(), off).t(),
            (&ds, 0),
            1.0,
        )?;
        let rows = u(count * l);
        ctx.dispatch(
            "attn_softmax_backward",
            &OpParams::new(rows, &[u(l)]).alpha(scale),
            &[&p, &ds],
            row_grid(be, OP, rows)?,
        )?;
        // dq = dS k, dk = dS^T q.
        matmul(
            be,
            [l, c, l],
            count,
            Operand::new(&ds, 0),
            Operand::new(k.buffer(), off),
            (dq.buffer(), off),
            1.0,
        )?;
        matmul(
            be,
            [l, c, l],
            count,
            Operand::new(&ds, 0).t(),
            Operand::new(q.buffer(), off),
            (dk.buffer(), off),
            1.0,
        )?;
    }
    Ok((dq, dk, dv))
}

/// See `NetBackend::dropout` (and its backward, the same mask on `dy`). The
/// mask is bit-identical to the CPU's: the same Philox uniforms compared with
/// `p`, kept elements multiplied by the same `f32` factor `1 / (1 - p)`.
pub fn dropout(be: &WgpuBackend, x: &WgpuTensor, p: f32, key: NoiseKey) -> Result<WgpuTensor> {
    const KERNEL: &str = "dropout";
    dropout_check(p)?;
    if p == 0.0 {
        // As on the CPU: the input unchanged (tensors are never written in place).
        return Ok(x.clone());
    }
    let (out, n) = be.output(KERNEL, x.shape())?;
    let ctx = be.context();
    let params = DropoutParams {
        n,
        seed_lo: key.seed as u32,
        seed_hi: (key.seed >> 32) as u32,
        stream_lo: key.stream as u32,
        stream_hi: (key.stream >> 32) as u32,
        drop_p: p,
        keep_scale: 1.0 / (1.0 - p),
        _pad: 0,
    };
    let grid = ctx.grid_1d(KERNEL, u64::from(n).div_ceil(4))?;
    ctx.dispatch(KERNEL, &params, &[out.buffer(), x.buffer()], grid)
        .map_err(NetError::from)?;
    Ok(out)
}
