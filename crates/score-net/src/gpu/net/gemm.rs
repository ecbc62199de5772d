//! Convolutions and linear layers on wgpu, as the tiled GEMM kernels of
//! `shaders/gemm.wgsl`.
//!
//! - [`conv2d`]: an implicit GEMM `y [C_out, N·H_out·W_out] = W [C_out, C_in·k·k]
//!   · im2col(x)`, the im2col matrix gathered while loading tiles, never stored;
//! - [`conv2d_backward`]: `dx` as the implicit GEMM of the transposed
//!   convolution (`W^T · dy`, gathering `dy` at the output positions whose
//!   window covers each input pixel, skipping those off the stride grid);
//!   `dW += dy · im2col(x)^T` with split-K over the long `N·H_out·W_out`
//!   contraction; `db += Σ dy` by a per-channel tree reduction;
//! - [`linear`], [`linear_backward`]: `matmul`, a tiled product of dense
//!   row-major operands with transpose flags and offsets (also meant for
//!   other kernels of this crate).
//!
//! Tiles: 64x64 outputs per workgroup of 16x16 threads, 4x4 per thread in
//! registers, K in steps of `TILE_K`. Operands whose rows start on 16-byte
//! boundaries (dense matrices and weights at aligned offsets — the parameter
//! store aligns every view, see [`crate::PARAM_ALIGN`] — and 1x1 stride-1
//! convolutions' activations) are read with `vec4` loads, the others (the
//! im2col gathers) element by element. Accumulating products (parameter
//! gradients) with a contraction longer than `SPLIT_K_CHUNK` are split into
//! chunks whose partial products go to a scratch buffer and are then added,
//! in chunk order, into the gradient buffer: results are deterministic (no
//! float atomics).
//!
//! Shapes are validated on the host by the CPU backend's own checks
//! ([`crate::cpu::conv`]), so a wrong shape is the same typed error on both
//! backends; views are checked against the flat buffers with
//! `view_range`.
#![allow(clippy::too_many_arguments)]

use sde_core::Shape;

use super::super::{WgpuBackend, WgpuTensor};
use super::{grads_range, view_range};
use crate::cpu::conv::{check_conv_dy, check_grads, check_linear_dy, conv_geom, linear_geom, Geom};
use crate::error::GpuError;
use crate::{Conv2dSpec, NetError, Result, View};

/// Output rows (M) per workgroup tile (`TM` in `gemm.wgsl`).
pub(crate) const TILE_M: u32 = 64;
/// Output columns (N) per workgroup tile (`TN` in `gemm.wgsl`).
pub(crate) const TILE_N: u32 = 64;
/// Contraction (K) step of the tiled loop (`TK` in `gemm.wgsl`).
pub(crate) const TILE_K: u32 = 16;
/// Contraction length per split-K chunk of an accumulating product (the
/// chunk grows when the product would otherwise need more than
/// [`MAX_SPLITS`] chunks).
pub(crate) const SPLIT_K_CHUNK: u32 = 1024;
/// Most split-K chunks of one product (bounds the scratch buffer).
pub(crate) const MAX_SPLITS: u32 = 64;

const FLAG_TRANS_A: u32 = 1;
const FLAG_TRANS_B: u32 = 2;
const FLAG_BIAS: u32 = 4;
const FLAG_ACCUMULATE: u32 = 8;
/// A is read as aligned `vec4`s (see [`vec_flags`]).
const FLAG_A_VEC: u32 = 16;
/// B is read as aligned `vec4`s (see [`vec_flags`]).
const FLAG_B_VEC: u32 = 32;

/// Whether every run of 4 consecutive elements the tile loader fetches
/// starts on a 16-byte boundary: offset and stride (in elements) multiples of 4.
fn aligned(offset: u32, stride: u32) -> bool {
    offset % 4 == 0 && stride % 4 == 0
}

/// The `FLAG_A_VEC` / `FLAG_B_VEC` bits for a convolution kernel: the
/// weight (A of the forward pass, rows of length `C_in·k·k`) when it starts
/// aligned and `C_in·k·k` is a multiple of 4; `dy` (A of the weight
/// gradient, walked along pixels) when each image plane has a multiple of 4
/// pixels; and the im2col operand (B) when it is plain `x` or `dy` — a 1x1
/// kernel with stride 1 and no padding on planes of a multiple of 4 pixels.
/// The transposed-convolution weight (A of `dx`) is always a gather.
fn conv_vec_flags(kernel: &str, p: &GemmParams) -> u32 {
    let pix = p.ho * p.wo;
    let plain_b = p.ks == 1 && p.stride == 1 && p.pad == 0 && aligned(p.b_off, pix);
    let a_vec = match kernel {
        "conv2d_fwd" => aligned(p.a_off, p.k),
        "conv2d_dw" => aligned(p.a_off, pix),
        _ => false,
    };
    let mut flags = 0;
    if a_vec {
        flags |= FLAG_A_VEC;
    }
    if plain_b {
        flags |= FLAG_B_VEC;
    }
    flags
}

/// The `Params` struct of `gemm.wgsl` (see the field comments there).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct GemmParams {
    m: u32,
    n: u32,
    k: u32,
    k_chunk: u32,
    a_off: u32,
    b_off: u32,
    bias_off: u32,
    out_off: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    flags: u32,
    cin: u32,
    h: u32,
    w: u32,
    cout: u32,
    ks: u32,
    stride: u32,
    pad: u32,
    ho: u32,
    wo: u32,
    split_stride: u32,
    splits: u32,
    _pad: u32,
}

/// `v` as the `u32` the kernels index with, or a [`GpuError::TooLarge`]
/// naming `what`.
fn idx32(what: &str, v: usize) -> Result<u32> {
    // Kernels form sums like `oh·stride + kh` and convert them to i32, so
    // stay below 2^31.
    match u32::try_from(v) {
        Ok(u) if u < 1 << 31 => Ok(u),
        _ => Err(NetError::Gpu(GpuError::TooLarge {
            what: what.to_string(),
            bytes: v as u64,
            limit: 1 << 31,
            limit_name: "2^31 (32-bit indexing)",
        })),
    }
}

/// The convolution geometry fields of [`GemmParams`].
fn conv_params(g: &Geom) -> Result<GemmParams> {
    // The largest index sum a kernel forms is `oh·stride + kh` < padded size.
    let padded = g.h.max(g.w).saturating_add(g.pad.saturating_mul(2));
    idx32("conv2d padded input size", padded)?;
    Ok(GemmParams {
        cin: idx32("conv2d C_in", g.cin)?,
        h: idx32("conv2d H", g.h)?,
        w: idx32("conv2d W", g.w)?,
        cout: idx32("conv2d C_out", g.cout)?,
        ks: idx32("conv2d kernel size", g.k)?,
        stride: idx32("conv2d stride", g.stride)?,
        pad: idx32("conv2d padding", g.pad)?,
        ho: idx32("conv2d H_out", g.ho)?,
        wo: idx32("conv2d W_out", g.wo)?,
        ..Default::default()
    })
}

/// Records one dispatch of a GEMM kernel over `splits` K chunks.
fn dispatch_gemm(
    be: &WgpuBackend,
    kernel: &'static str,
    params: &GemmParams,
    buffers: [&wgpu::Buffer; 4],
    splits: u32,
) -> Result<()> {
    if params.m == 0 || params.n == 0 {
        return Ok(());
    }
    let grid = [params.n.div_ceil(TILE_N), params.m.div_ceil(TILE_M), splits];
    be.context().dispatch(kernel, params, &buffers, grid)?;
    Ok(())
}

/// K per chunk when an accumulating product of contraction length `k` is split.
fn split_chunk(k: u32) -> u32 {
    SPLIT_K_CHUNK.max(k.div_ceil(MAX_SPLITS).next_multiple_of(TILE_K))
}

/// `dst[dst_off..][M, N] += A · B` with the GEMM `kernel` (`params` holds
/// M, N, K and the operand addressing): one accumulating pass when K fits
/// one chunk, else split-K into a scratch buffer plus `gemm_splitk_reduce`,
/// which adds the chunks' partials in order. Deterministic either way.
fn gemm_accumulate(
    be: &WgpuBackend,
    kernel: &'static str,
    mut params: GemmParams,
    a: &wgpu::Buffer,
    b: &wgpu::Buffer,
    dst: &wgpu::Buffer,
    dst_off: u32,
) -> Result<()> {
    let (m, n, k) = (params.m, params.n, params.k);
    if m == 0 || n == 0 || k == 0 {
        return Ok(());
    }
    params.ldc = n;
    params.flags &= !FLAG_BIAS;
    let chunk = split_chunk(k);
    let splits = k.div_ceil(chunk);
    if splits <= 1 {
        params.k_chunk = k;
        params.out_off = dst_off;
        params.flags |= FLAG_ACCUMULATE;
        // The bias binding is unused: bind an input (read-only) buffer.
        return dispatch_gemm(be, kernel, &params, [a, b, a, dst], 1);
    }
    let mn = u64::from(m) * u64::from(n);
    let total = mn * u64::from(splits);
    let mn32 = idx32("split-K partial product", mn as usize)?;
    idx32("split-K partials", total as usize)?;
    let ctx = be.context();
    let scratch = ctx.storage_buffer("split-K partials", total * 4)?;
    params.k_chunk = chunk;
    params.out_off = 0;
    params.split_stride = mn32;
    params.flags &= !FLAG_ACCUMULATE;
    dispatch_gemm(be, kernel, &params, [a, b, a, &scratch], splits)?;
    let reduce = GemmParams {
        n: mn32,
        splits,
        split_stride: mn32,
        out_off: dst_off,
        ..Default::default()
    };
    let grid = ctx.grid_1d("gemm_splitk_reduce", mn)?;
    ctx.dispatch("gemm_splitk_reduce", &reduce, &[&scratch, dst], grid)?;
    Ok(())
}

/// `dst[dst_off + c] += Σ_{o, i} dy[(o·C + c)·inner + i]` for each of the
/// `channels` channels of `dy` viewed as `[outer, C, inner]`.
fn bias_grad(
    be: &WgpuBackend,
    dy: &wgpu::Buffer,
    outer: usize,
    channels: usize,
    inner: usize,
    dst: &wgpu::Buffer,
    dst_off: u32,
) -> Result<()> {
    let params = GemmParams {
        m: idx32("bias_grad channels", channels)?,
        n: idx32("bias_grad outer", outer)?,
        k: idx32("bias_grad inner", inner)?,
        out_off: dst_off,
        ..Default::default()
    };
    let ctx = be.context();
    // One 256-thread workgroup per channel.
    let grid = ctx.grid_1d("bias_grad", channels as u64 * 256)?;
    ctx.dispatch("bias_grad", &params, &[dy, dst], grid)?;
    Ok(())
}

/// One dense row-major operand of `matmul`: the stored matrix's element
/// `(i, j)` is `buffer[offset + i·ld + j]`; with `trans` the product uses the
/// stored matrix transposed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Operand<'a> {
    /// The storage buffer.
    pub(crate) buffer: &'a wgpu::Buffer,
    /// Element offset of the matrix in the buffer.
    pub(crate) offset: u32,
    /// Row length (leading dimension) of the stored matrix.
    pub(crate) ld: u32,
    /// Use the stored matrix transposed.
    pub(crate) trans: bool,
}

impl Operand<'_> {
    /// Checks that the stored matrix (`rows x cols` as used, transposed when
    /// `trans`) lies inside the buffer and its rows fit `ld`.
    fn check(&self, what: &str, rows: u32, cols: u32) -> Result<()> {
        let (sr, sc) = if self.trans {
            (cols, rows)
        } else {
            (rows, cols)
        };
        let end = u64::from(self.offset)
            + u64::from(sr.saturating_sub(1)) * u64::from(self.ld)
            + u64::from(sc);
        let len = self.buffer.size() / 4;
        if sc > self.ld || end > len {
            return Err(NetError::Shape {
                op: "matmul",
                reason: format!(
                    "{what}: a {sr} x {sc} matrix with row length {} at offset {} does not fit a buffer of {len} elements",
                    self.ld, self.offset
                ),
            });
        }
        Ok(())
    }
}

/// How `matmul` writes its product into `dst`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Store<'a> {
    /// `dst = A·B (+ bias)`, the optional bias `(buffer, offset)` holding one
    /// value per column.
    Overwrite {
        /// Per-column bias: buffer and element offset.
        bias: Option<(&'a wgpu::Buffer, u32)>,
    },
    /// `dst += A·B`, split-K when K is longer than `SPLIT_K_CHUNK`
    /// (deterministic: the chunks are added in order).
    Accumulate,
}

/// Tiled matrix product `dst[dst_off..] [m, n] (+)= op(A) [m, k] · op(B) [k, n]`
/// on the GPU (`gemm_matmul`), `dst` dense row-major with row length `n`.
///
/// # Errors
/// [`NetError::Shape`] when an operand or `dst` does not fit its buffer;
/// [`GpuError`]s from the dispatch (grid or sizes over the device limits).
pub(crate) fn matmul(
    be: &WgpuBackend,
    m: u32,
    n: u32,
    k: u32,
    a: Operand<'_>,
    b: Operand<'_>,
    dst: &wgpu::Buffer,
    dst_off: u32,
    store: Store<'_>,
) -> Result<()> {
    a.check("lhs", m, k)?;
    b.check("rhs", k, n)?;
    Operand {
        buffer: dst,
        offset: dst_off,
        ld: n,
        trans: false,
    }
    .check("dst", m, n)?;
    let mut flags = 0;
    if a.trans {
        flags |= FLAG_TRANS_A;
    }
    if b.trans {
        flags |= FLAG_TRANS_B;
    }
    // Dense operands: rows (or, transposed, columns) of `ld` elements.
    if aligned(a.offset, a.ld) {
        flags |= FLAG_A_VEC;
    }
    if aligned(b.offset, b.ld) {
        flags |= FLAG_B_VEC;
    }
    let mut params = GemmParams {
        m,
        n,
        k,
        k_chunk: k,
        a_off: a.offset,
        b_off: b.offset,
        out_off: dst_off,
        lda: a.ld,
        ldb: b.ld,
        ldc: n,
        flags,
        ..Default::default()
    };
    match store {
        Store::Accumulate => {
            gemm_accumulate(be, "gemm_matmul", params, a.buffer, b.buffer, dst, dst_off)
        }
        Store::Overwrite { bias } => {
            let bias_buf = match bias {
                Some((buf, off)) => {
                    params.flags |= FLAG_BIAS;
                    params.bias_off = off;
                    buf
                }
                None => a.buffer,
            };
            dispatch_gemm(
                be,
                "gemm_matmul",
                &params,
                [a.buffer, b.buffer, bias_buf, dst],
                1,
            )
        }
    }
}

/// Offset of the bias view `b` in `params` (and, when given, checked against
/// `grads` too).
fn bias_offset(
    params: &WgpuTensor,
    grads: Option<&WgpuTensor>,
    b: Option<&View>,
) -> Result<Option<u32>> {
    b.map(|b| {
        if let Some(g) = grads {
            grads_range(g, b)?;
        }
        view_range(params, b).map(|(off, _)| off)
    })
    .transpose()
}

/// Forward 2-D convolution (see `NetBackend::conv2d`): `x [N, C_in, H, W]`,
/// weight view `[C_out, C_in, k, k]`, optional bias view `[C_out]`; returns
/// `y [N, C_out, H_out, W_out]`.
///
/// # Errors
/// The CPU backend's shape, view and configuration errors; [`NetError::View`]
/// for a view past the end of `params`; [`GpuError`]s from the device.
pub fn conv2d(
    be: &WgpuBackend,
    x: &WgpuTensor,
    params: &WgpuTensor,
    w: &View,
    b: Option<&View>,
    spec: Conv2dSpec,
) -> Result<WgpuTensor> {
    let g = conv_geom("conv2d", x.shape(), w, b, spec)?;
    let (w_off, _) = view_range(params, w)?;
    let b_off = bias_offset(params, None, b)?;
    let (y, _) = be.output("conv2d", &Shape::new(g.out_dims().to_vec())?)?;
    let mut prm = GemmParams {
        m: idx32("conv2d C_out", g.cout)?,
        n: idx32("conv2d N·H_out·W_out", g.n * g.pixels())?,
        k: idx32("conv2d C_in·k·k", g.kdim())?,
        k_chunk: idx32("conv2d C_in·k·k", g.kdim())?,
        a_off: w_off,
        bias_off: b_off.unwrap_or(0),
        flags: if b_off.is_some() { FLAG_BIAS } else { 0 },
        ..conv_params(&g)?
    };
    prm.flags |= conv_vec_flags("conv2d_fwd", &prm);
    let pb = params.buffer();
    dispatch_gemm(be, "conv2d_fwd", &prm, [pb, x.buffer(), pb, y.buffer()], 1)?;
    Ok(y)
}

/// Backward of [`conv2d`] (see `NetBackend::conv2d_backward`): **accumulates**
/// `dW` (and `db` when `b` is given) into `grads` at the views' offsets and
/// returns `dx [N, C_in, H, W]` when `need_dx`.
///
/// # Errors
/// As [`conv2d`], plus [`NetError::Shape`] when `dy` is not
/// `[N, C_out, H_out, W_out]` or `grads` is not the size of `params`.
pub fn conv2d_backward(
    be: &WgpuBackend,
    x: &WgpuTensor,
    dy: &WgpuTensor,
    params: &WgpuTensor,
    w: &View,
    b: Option<&View>,
    spec: Conv2dSpec,
    grads: &mut WgpuTensor,
    need_dx: bool,
) -> Result<Option<WgpuTensor>> {
    const OP: &str = "conv2d_backward";
    let g = conv_geom(OP, x.shape(), w, b, spec)?;
    check_conv_dy(OP, &g, dy.shape())?;
    check_grads(OP, params.shape().numel(), grads.shape().numel())?;
    let (w_off, _) = view_range(params, w)?;
    grads_range(grads, w)?;
    let b_off = bias_offset(params, Some(grads), b)?;
    let base = conv_params(&g)?;

    if let Some(bo) = b_off {
        bias_grad(be, dy.buffer(), g.n, g.cout, g.pixels(), grads.buffer(), bo)?;
    }
    // dW [C_out, C_in·k·k] += dy [C_out, N·P] · im2col(x)^T [N·P, C_in·k·k].
    let mut dw = GemmParams {
        m: base.cout,
        n: idx32("conv2d C_in·k·k", g.kdim())?,
        k: idx32("conv2d N·H_out·W_out", g.n * g.pixels())?,
        ..base
    };
    dw.flags = conv_vec_flags("conv2d_dw", &dw);
    gemm_accumulate(
        be,
        "conv2d_dw",
        dw,
        dy.buffer(),
        x.buffer(),
        grads.buffer(),
        w_off,
    )?;
    if !need_dx {
        return Ok(None);
    }
    // dx [C_in, N·H·W] = W^T [C_in, C_out·k·k] · gather(dy) [C_out·k·k, N·H·W].
    let (dx, _) = be.output("conv2d_backward dx", x.shape())?;
    let kd = idx32("conv2d C_out·k·k", g.cout * g.k * g.k)?;
    let mut prm = GemmParams {
        m: base.cin,
        n: idx32("conv2d N·H·W", g.n * g.h * g.w)?,
        k: kd,
        k_chunk: kd,
        a_off: w_off,
        ..base
    };
    prm.flags = conv_vec_flags("conv2d_dx", &prm);
    let pb = params.buffer();
    dispatch_gemm(be, "conv2d_dx", &prm, [pb, dy.buffer(), pb, dx.buffer()], 1)?;
    Ok(Some(dx))
}

/// Affine layer on the last dimension (see `NetBackend::linear`):
/// `y = x W^T + b` for `x [..., in]` (rank >= 2), weight view `[out, in]`,
/// optional bias view `[out]`; returns `y [..., out]`.
///
/// # Errors
/// The CPU backend's shape and view errors; [`NetError::View`] for a view
/// past the end of `params`; [`GpuError`]s from the device.
pub fn linear(
    be: &WgpuBackend,
    x: &WgpuTensor,
    params: &WgpuTensor,
    w: &View,
    b: Option<&View>,
) -> Result<WgpuTensor> {
    let (rows, inp, out) = linear_geom("linear", x.shape(), w, b)?;
    let (w_off, _) = view_range(params, w)?;
    let b_off = bias_offset(params, None, b)?;
    let mut yd = x.shape().dims().to_vec();
    if let Some(last) = yd.last_mut() {
        *last = out;
    }
    let (y, _) = be.output("linear", &Shape::new(yd)?)?;
    let (rows, inp, out) = (
        idx32("linear rows", rows)?,
        idx32("linear in", inp)?,
        idx32("linear out", out)?,
    );
    matmul(
        be,
        rows,
        out,
        inp,
        Operand {
            buffer: x.buffer(),
            offset: 0,
            ld: inp,
            trans: false,
        },
        Operand {
            buffer: params.buffer(),
            offset: w_off,
            ld: inp,
            trans: true,
        },
        y.buffer(),
        0,
        Store::Overwrite {
            bias: b_off.map(|o| (params.buffer(), o)),
        },
    )?;
    Ok(y)
}

/// Backward of [`linear`] (see `NetBackend::linear_backward`):
/// **accumulates** `dW += dy^T x` (and `db += Σ dy`) into `grads` and returns
/// `dx = dy W` when `need_dx`.
///
/// # Errors
/// As [`linear`], plus [`NetError::Shape`] when `dy` is not `[..., out]` with
/// the leading dimensions of `x`, or `grads` is not the size of `params`.
pub fn linear_backward(
    be: &WgpuBackend,
    x: &WgpuTensor,
    dy: &WgpuTensor,
    params: &WgpuTensor,
    w: &View,
    b: Option<&View>,
    grads: &mut WgpuTensor,
    need_dx: bool,
) -> Result<Option<WgpuTensor>> {
    const OP: &str = "linear_backward";
    let (rows, inp, out) = linear_geom(OP, x.shape(), w, b)?;
    check_linear_dy(OP, x.shape(), out, dy.shape())?;
    check_grads(OP, params.shape().numel(), grads.shape().numel())?;
    let (w_off, _) = view_range(params, w)?;
    grads_range(grads, w)?;
    let b_off = bias_offset(params, Some(grads), b)?;
    if let Some(bo) = b_off {
        bias_grad(be, dy.buffer(), rows, out, 1, grads.buffer(), bo)?;
    }
    let (rows, inp, out) = (
        idx32("linear rows", rows)?,
        idx32("linear in", inp)?,
        idx32("linear out", out)?,
    );
    // dW [out, in] += dy^T [out, rows] · x [rows, in].
    matmul(
        be,
        out,
        inp,
        rows,
        Operand {
            buffer: dy.buffer(),
            offset: 0,
            ld: out,
            trans: true,
        },
        Operand {
            buffer: x.buffer(),
            offset: 0,
            ld: inp,
            trans: false,
        },
        grads.buffer(),
        w_off,
        Store::Accumulate,
    )?;
    if !need_dx {
        return Ok(None);
    }
    // dx [rows, in] = dy [rows, out] · W [out, in].
    let (dx, _) = be.output("linear_backward dx", x.shape())?;
    matmul(
        be,
        rows,
        inp,
        out,
        Operand {
            buffer: dy.buffer(),
            offset: 0,
            ld: out,
            trans: false,
        },
        Operand {
            buffer: params.buffer(),
            offset: w_off,
            ld: inp,
            trans: false,
        },
        dx.buffer(),
        0,
        Store::Overwrite { bias: None },
    )?;
    Ok(Some(dx))
}

#[cfg(test)]
mod tests {
    //! `matmul` on strided operands whose row lengths exceed the matrix
    //! (`ld` > columns): the `vec4` loads then meet vec4s that straddle the
    //! edge of K, M or N, which must fall back to per-element loads. (The
    //! layers in this crate always pass `ld` = columns; tests/gpu_net_gemm.rs
    //! covers those.) Requires a wgpu adapter, like every wgpu test.
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sde_core::Backend;

    fn gpu() -> WgpuBackend {
        WgpuBackend::new().unwrap_or_else(|e| panic!("the wgpu tests need an adapter: {e}"))
    }

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| {
                let h = (i ^ seed.wrapping_mul(0x9e37_79b9)).wrapping_mul(0x85eb_ca6b);
                let h = (h ^ (h >> 13)).wrapping_mul(0xc2b2_ae35);
                (h >> 8) as f32 / (1 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// `op(X)(i, j)` of a stored operand.
    fn at(x: &[f32], off: usize, ld: usize, trans: bool, i: usize, j: usize) -> f64 {
        let (r, c) = if trans { (j, i) } else { (i, j) };
        f64::from(x[off + r * ld + c])
    }

    #[test]
    fn strided_vec4_operands_with_ragged_edges_match_reference() {
        let be = gpu();
        // (m, n, k, accumulate): k = 1030 splits K into 1024 + 6.
        let shapes: [(usize, usize, usize, bool); 3] =
            [(67, 70, 21, false), (6, 10, 6, true), (5, 9, 1030, true)];
        for (m, n, k, acc) in shapes {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let name = format!("m {m} n {n} k {k} trans ({ta}, {tb}) accumulate {acc}");
                // Stored shapes and row lengths rounded up past the matrix to a multiple of 4.
                let (ar, ac) = if ta { (k, m) } else { (m, k) };
                let (br, bc) = if tb { (n, k) } else { (k, n) };
                let (lda, ldb) = (ac.next_multiple_of(4) + 4, bc.next_multiple_of(4) + 4);
                let (a_off, b_off, d_off) = (8, 4, 4);
                let a = values(a_off + ar * lda, 1);
                let b = values(b_off + br * ldb, 2);
                let d0 = values(d_off + m * n + 3, 3);
                let up = |v: &Vec<f32>| {
                    be.tensor(v.clone(), &Shape::new([v.len()]).unwrap())
                        .unwrap()
                };
                let (ag, bg, dg) = (up(&a), up(&b), up(&d0));
                let opa = Operand {
                    buffer: ag.buffer(),
                    offset: a_off as u32,
                    ld: lda as u32,
                    trans: ta,
                };
                let opb = Operand {
                    buffer: bg.buffer(),
                    offset: b_off as u32,
                    ld: ldb as u32,
                    trans: tb,
                };
                let store = if acc {
                    Store::Accumulate
                } else {
                    Store::Overwrite { bias: None }
                };
                matmul(
                    &be,
                    m as u32,
                    n as u32,
                    k as u32,
                    opa,
                    opb,
                    dg.buffer(),
                    d_off as u32,
                    store,
                )
                .unwrap();
                let got = be.to_vec(&dg).unwrap();
                let mut want: Vec<f64> = d0.iter().map(|&v| f64::from(v)).collect();
                let mut scale = 0.0f64;
                for i in 0..m {
                    for j in 0..n {
                        let s: f64 = (0..k)
                            .map(|l| at(&a, a_off, lda, ta, i, l) * at(&b, b_off, ldb, tb, l, j))
                            .sum();
                        let w = &mut want[d_off + i * n + j];
                        *w = if acc { *w + s } else { s };
                        scale = scale.max(w.abs());
                    }
                }
                let tol = 4.0 * f64::from(f32::EPSILON) * ((k as f64).sqrt() + 1.0) * scale;
                for (idx, (g, w)) in got.iter().zip(&want).enumerate() {
                    let inside = (d_off..d_off + m * n).contains(&idx);
                    if inside {
                        assert!(
                            (f64::from(*g) - w).abs() <= tol,
                            "{name}: C[{idx}] = {g}, want {w}"
                        );
                    } else {
                        assert_eq!(
                            g.to_bits(),
                            d0[idx].to_bits(),
                            "{name}: entry {idx} outside C changed"
                        );
                    }
                }
            }
        }
    }
}
