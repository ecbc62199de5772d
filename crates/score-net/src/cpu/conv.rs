//! Convolutions and affine layers of the CPU backend, as (im2col +) GEMM
//! through the `gemm` crate, with a safe, bounds-checked [`matmul`] wrapper.
//!
//! Layout conventions (all row-major): a convolution of sample `n` is the
//! product `Y_n [C_out, P] = W [C_out, K] · col_n [K, P]` with
//! `K = C_in·k·k` and `P = H_out·W_out`, where `col_n` is the im2col matrix
//! of `x_n` (row `(c, kh, kw)`, column `(oh, ow)`). A 1x1, stride-1,
//! unpadded convolution needs no im2col: `x_n [C_in, H·W]` already is
//! `col_n`. The backward pass is
//! `dW += Σ_n dY_n · col_nᵀ`, `db += Σ_{n,p} dY_n`, `dx_n = col2im(Wᵀ · dY_n)`.
//!
//! Threading: the convolutions run the batch in parallel with rayon, each
//! GEMM single-threaded (`Parallelism::None`). The per-sample GEMMs of a
//! UNet are small in one dimension (`C_out` = 32..256 rows), so splitting a
//! single one over cores synchronises per cache block and gives each core a
//! thin slice; whole samples per core need no synchronisation and keep each
//! core's im2col buffer in its own cache. Small images (fewer than
//! [`MIN_GEMM_COLS`] output pixels) put several samples side by side in one
//! im2col matrix, so each GEMM stays wide enough to run at full speed. When
//! the batch is smaller than the thread pool the groups run one after the
//! other with a threaded GEMM instead. (Measured in `benches/benches/conv.rs`.)

use std::mem::MaybeUninit;

use gemm::Parallelism;
use rayon::prelude::*;
use sde_core::{CpuTensor, Shape};

use super::ops::{lane_sum, simd, write_copy};
use super::{tensor, view_slice, view_slice_mut, zeros};
use crate::error::{ensure_shape, NetError};
use crate::{Conv2dSpec, Result, View};

/// Shape and flags of one [`matmul`] call:
/// `dst [m, n] (+)= op(lhs) [m, k] · op(rhs) [k, n]`, every matrix dense and
/// row-major, `op` the identity or the transpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatMul {
    /// Rows of `dst` and of `op(lhs)`.
    pub m: usize,
    /// Columns of `dst` and of `op(rhs)`.
    pub n: usize,
    /// The contracted dimension: columns of `op(lhs)`, rows of `op(rhs)`.
    pub k: usize,
    /// `lhs` is stored as `[k, m]` and used transposed.
    pub trans_lhs: bool,
    /// `rhs` is stored as `[n, k]` and used transposed.
    pub trans_rhs: bool,
    /// Add the product to `dst` instead of overwriting it.
    pub accumulate: bool,
    /// Let `gemm` split the product over the rayon thread pool (it stays
    /// single-threaded below its own size threshold).
    pub parallel: bool,
}

impl MatMul {
    /// `dst [m, n] = lhs [m, k] · rhs [k, n]`: no transposes, overwriting,
    /// single-threaded.
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        MatMul {
            m,
            n,
            k,
            trans_lhs: false,
            trans_rhs: false,
            accumulate: false,
            parallel: false,
        }
    }

    /// Use `lhs` (stored `[k, m]`) transposed.
    pub fn lhs_transposed(mut self) -> Self {
        self.trans_lhs = true;
        self
    }

    /// Use `rhs` (stored `[n, k]`) transposed.
    pub fn rhs_transposed(mut self) -> Self {
        self.trans_rhs = true;
        self
    }

    /// Add to `dst` when `yes` instead of overwriting it.
    pub fn accumulating(mut self, yes: bool) -> Self {
        self.accumulate = yes;
        self
    }

    /// Let `gemm` use the rayon pool when `yes`.
    pub fn threaded(mut self, yes: bool) -> Self {
        self.parallel = yes;
        self
    }

    /// FLOPs of the product (`2·m·n·k`).
    pub fn flops(&self) -> u64 {
        2 * self.m as u64 * self.n as u64 * self.k as u64
    }
}

fn numel2(op: &'static str, what: &str, a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b).ok_or_else(|| NetError::Shape {
        op,
        reason: format!("{what} of {a} x {b} elements overflows usize"),
    })
}

/// Single-precision matrix product through `gemm::gemm`:
/// `dst [m, n] = op(lhs) [m, k] · op(rhs) [k, n]`, or `dst += ...` when
/// `mm.accumulate`, on dense row-major slices.
///
/// Safe: the slice lengths are checked to be exactly `m·n`, `m·k` and `k·n`
/// before the unsafe call, and `&mut dst` cannot alias the inputs, so every
/// element `gemm` touches lies inside its slice. Empty products (`k = 0`)
/// zero `dst` (or leave it, when accumulating) without calling `gemm`.
///
/// # Errors
/// [`NetError::Shape`] when a slice length does not match the dimensions.
pub fn matmul(dst: &mut [f32], lhs: &[f32], rhs: &[f32], mm: MatMul) -> Result<()> {
    const OP: &str = "matmul";
    let MatMul { m, n, k, .. } = mm;
    let want = [
        ("dst", numel2(OP, "dst", m, n)?, dst.len()),
        ("lhs", numel2(OP, "lhs", m, k)?, lhs.len()),
        ("rhs", numel2(OP, "rhs", k, n)?, rhs.len()),
    ];
    for (name, expected, got) in want {
        ensure_shape(expected == got, OP, || {
            format!("{name} has {got} elements, expected {expected} for m = {m}, n = {n}, k = {k}")
        })?;
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !mm.accumulate {
            dst.fill(0.0);
        }
        return Ok(());
    }
    // Here m, n, k are non-zero and each product is the length of a slice,
    // so every dimension (and every stride below) is at most isize::MAX.
    let (mi, ni, ki) = (m as isize, n as isize, k as isize);
    // (column stride, row stride) of op(lhs) [m, k] and op(rhs) [k, n].
    let (lhs_cs, lhs_rs) = if mm.trans_lhs { (mi, 1) } else { (1, ki) };
    let (rhs_cs, rhs_rs) = if mm.trans_rhs { (ki, 1) } else { (1, ni) };
    let parallelism = if mm.parallel {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // SAFETY: dst holds m·n elements addressed as i·n + j (cs 1, rs n);
    // lhs holds m·k elements addressed as i·k + p, or p·m + i when
    // transposed; rhs holds k·n elements addressed as p·n + j, or j·k + p
    // when transposed; i < m, j < n, p < k, so every access is in bounds.
    // `dst` is a unique borrow, so it does not overlap `lhs` or `rhs`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            ni,
            mm.accumulate,
            lhs.as_ptr(),
            lhs_cs,
            lhs_rs,
            rhs.as_ptr(),
            rhs_cs,
            rhs_rs,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}

/// Validated geometry of one convolution (shared with the wgpu backend, so
/// both validate shapes identically).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geom {
    /// Batch size.
    pub(crate) n: usize,
    /// Input channels.
    pub(crate) cin: usize,
    /// Input height.
    pub(crate) h: usize,
    /// Input width.
    pub(crate) w: usize,
    /// Output channels.
    pub(crate) cout: usize,
    /// Kernel size (square).
    pub(crate) k: usize,
    /// Stride.
    pub(crate) stride: usize,
    /// Zero padding on every side.
    pub(crate) pad: usize,
    /// Output height.
    pub(crate) ho: usize,
    /// Output width.
    pub(crate) wo: usize,
}

impl Geom {
    /// Rows of the im2col matrix, `C_in·k·k`.
    pub(crate) fn kdim(&self) -> usize {
        self.cin * self.k * self.k
    }

    /// Output pixels per channel.
    pub(crate) fn pixels(&self) -> usize {
        self.ho * self.wo
    }

    /// Elements of one input sample.
    fn in_numel(&self) -> usize {
        self.cin * self.h * self.w
    }

    /// Elements of one output sample.
    fn out_numel(&self) -> usize {
        self.cout * self.pixels()
    }

    /// A 1x1, stride-1, unpadded convolution: the input already is the
    /// im2col matrix.
    fn pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }

    /// `[N, C_out, H_out, W_out]`.
    pub(crate) fn out_dims(&self) -> [usize; 4] {
        [self.n, self.cout, self.ho, self.wo]
    }
}

fn view_name(v: &View) -> String {
    format!("@{}", v.offset)
}

/// Checks that the end of `v` (offset + element count) fits in `usize`, so
/// `View::range` cannot overflow; whether it lies inside the buffer is
/// checked when it is sliced.
fn check_view_end(v: &View) -> Result<()> {
    let end = v
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .and_then(|n| v.offset.checked_add(n));
    match end {
        Some(_) => Ok(()),
        None => Err(NetError::View {
            name: view_name(v),
            reason: format!("shape {:?} at offset {} overflows usize", v.shape, v.offset),
        }),
    }
}

/// Checks that `b` (when given) is a `[len]` view.
fn check_bias(b: Option<&View>, len: usize, what: &str) -> Result<()> {
    if let Some(b) = b {
        check_view_end(b)?;
        if b.shape.as_slice() != [len] {
            return Err(NetError::View {
                name: view_name(b),
                reason: format!("bias shape {:?}, expected [{len}] ({what})", b.shape),
            });
        }
    }
    Ok(())
}

/// Validates a convolution's input shape `x`, weight and bias views and
/// `spec` (everything but the views' ranges in the buffer) and returns its
/// geometry.
pub(crate) fn conv_geom(
    op: &'static str,
    x: &Shape,
    w: &View,
    b: Option<&View>,
    spec: Conv2dSpec,
) -> Result<Geom> {
    if spec.stride == 0 {
        return Err(NetError::Config {
            field: "stride",
            value: "0".into(),
            reason: format!("{op}: the stride must be at least 1"),
        });
    }
    let xd = x.dims();
    ensure_shape(xd.len() == 4, op, || {
        format!("expected a rank-4 tensor, got shape {x}")
    })?;
    check_view_end(w)?;
    let (n, cin, h, wd) = (xd[0], xd[1], xd[2], xd[3]);
    let ws = w.shape.as_slice();
    let &[cout, wcin, k, k2] = ws else {
        return Err(NetError::View {
            name: view_name(w),
            reason: format!("{op}: weight shape {ws:?} is not [C_out, C_in, k, k]"),
        });
    };
    if k != k2 || k == 0 || cout == 0 || wcin == 0 {
        return Err(NetError::View {
            name: view_name(w),
            reason: format!("{op}: weight shape {ws:?} is not [C_out, C_in, k, k] with a square, non-empty kernel"),
        });
    }
    ensure_shape(wcin == cin, op, || {
        format!("input has {cin} channels but the weight {ws:?} expects {wcin}")
    })?;
    check_bias(b, cout, "one per output channel")?;
    let padded = |len: usize| {
        spec.padding
            .checked_mul(2)
            .and_then(|p2| p2.checked_add(len))
            .ok_or_else(|| NetError::Config {
                field: "padding",
                value: spec.padding.to_string(),
                reason: format!("{op}: padded size overflows"),
            })
    };
    let (hp, wp) = (padded(h)?, padded(wd)?);
    ensure_shape(hp >= k && wp >= k, op, || {
        format!(
            "kernel {k}x{k} is larger than the padded input {hp}x{wp} (input {h}x{wd}, padding {})",
            spec.padding
        )
    })?;
    Ok(Geom {
        n,
        cin,
        h,
        w: wd,
        cout,
        k,
        stride: spec.stride,
        pad: spec.padding,
        ho: (hp - k) / spec.stride + 1,
        wo: (wp - k) / spec.stride + 1,
    })
}

/// Range `[lo, hi)` of output positions `o` whose input position
/// `o·stride + kofs - pad` lies inside `[0, len)`.
fn valid_range(len: usize, out: usize, kofs: usize, g: &Geom) -> (usize, usize) {
    let (s, p) = (g.stride, g.pad);
    let lo = if p > kofs { (p - kofs).div_ceil(s) } else { 0 }.min(out);
    let hi = if len + p > kofs {
        ((len - 1 + p - kofs) / s + 1).min(out)
    } else {
        0
    };
    (lo, hi.max(lo))
}

/// Zeroes `x`, a slice of a few elements (the padding columns of one image
/// row, usually one): stores, rather than the call to `memset` that `fill`
/// becomes.
#[inline(always)]
fn zero_few(x: &mut [f32]) {
    match x {
        [] => {}
        [a] => *a = 0.0,
        [a, b] => (*a, *b) = (0.0, 0.0),
        _ => x.fill(0.0),
    }
}

/// A half-open range `[lo, hi)` of output positions.
type Span = (usize, usize);

/// [`valid_range`] for every kernel offset `0..k`, along the height and the
/// width: computed once per call rather than per channel (the divisions
/// cost more than the copies on 7x7 planes).
fn valid_ranges(g: &Geom) -> (Vec<Span>, Vec<Span>) {
    let rows = (0..g.k).map(|kh| valid_range(g.h, g.ho, kh, g)).collect();
    let cols = (0..g.k).map(|kw| valid_range(g.w, g.wo, kw, g)).collect();
    (rows, cols)
}

/// Writes the im2col matrix `[C_in·k·k, H_out·W_out]` of one sample
/// `x [C_in, H, W]` into columns `off..off + H_out·W_out` of `col`, a
/// row-major matrix with `ld` columns (several samples side by side).
/// Every element of those columns is written, so `col` need not be cleared.
fn im2col(x: &[f32], g: &Geom, col: &mut [f32], ld: usize, off: usize) {
    let (s, p, wo, pix) = (g.stride, g.pad, g.wo, g.pixels());
    let plane = g.h * g.w;
    let (vr, vc) = valid_ranges(g);
    let mut rows = col.chunks_exact_mut(ld);
    for xc in x.chunks_exact(plane) {
        for (kh, &(oh_lo, oh_hi)) in vr.iter().enumerate() {
            for (kw, &(ow_lo, ow_hi)) in vc.iter().enumerate() {
                let Some(row) = rows.next() else { return };
                let row = &mut row[off..off + pix];
                row[..oh_lo * wo].fill(0.0);
                row[oh_hi * wo..].fill(0.0);
                if ow_lo == ow_hi {
                    // This kernel column only ever sees padding.
                    row.fill(0.0);
                    continue;
                }
                if s == 1 && wo == g.w && oh_hi > oh_lo {
                    // Input and output rows have the same length: the
                    // valid pixels of all output rows are one contiguous
                    // span of the input (shifted by kw - p), with the
                    // columns that wrap around between rows zeroed after.
                    // Small images have short rows, so this replaces many
                    // tiny copies by one.
                    let ih_lo = oh_lo + kh - p;
                    let (d0, d1) = (oh_lo * wo + ow_lo, (oh_hi - 1) * wo + ow_hi);
                    let s0 = ih_lo * g.w + ow_lo + kw - p;
                    row[d0..d1].copy_from_slice(&xc[s0..s0 + (d1 - d0)]);
                    if ow_lo > 0 || ow_hi < wo {
                        for r in row[oh_lo * wo..oh_hi * wo].chunks_exact_mut(wo) {
                            zero_few(&mut r[..ow_lo]);
                            zero_few(&mut r[ow_hi..]);
                        }
                    }
                    continue;
                }
                for oh in oh_lo..oh_hi {
                    let ih = oh * s + kh - p;
                    let src = &xc[ih * g.w..(ih + 1) * g.w];
                    let dst = &mut row[oh * wo..(oh + 1) * wo];
                    zero_few(&mut dst[..ow_lo]);
                    zero_few(&mut dst[ow_hi..]);
                    if s == 1 {
                        dst[ow_lo..ow_hi].copy_from_slice(&src[ow_lo + kw - p..ow_hi + kw - p]);
                    } else {
                        for (ow, d) in (ow_lo..ow_hi).zip(&mut dst[ow_lo..ow_hi]) {
                            *d = src[ow * s + kw - p];
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds each element of columns
/// `off..off + H_out·W_out` of `col` (row-major, `ld` columns) to the input
/// pixel it was gathered from, `dx [C_in, H, W] += col2im(col)`. Entries of
/// `col` that stand for padding may be overwritten (with zeros).
#[inline(always)]
fn col2im(col: &mut [f32], g: &Geom, dx: &mut [f32], ld: usize, off: usize) {
    let (s, p, wo, pix) = (g.stride, g.pad, g.wo, g.pixels());
    let plane = g.h * g.w;
    let (vr, vc) = valid_ranges(g);
    let mut rows = col.chunks_exact_mut(ld);
    for dxc in dx.chunks_exact_mut(plane) {
        for (kh, &(oh_lo, oh_hi)) in vr.iter().enumerate() {
            for (kw, &(ow_lo, ow_hi)) in vc.iter().enumerate() {
                let Some(row) = rows.next() else { return };
                let row = &mut row[off..off + pix];
                if ow_lo == ow_hi {
                    // This kernel column only ever sees padding.
                    continue;
                }
                if s == 1 && wo == g.w && oh_hi > oh_lo {
                    // As in `im2col`: the valid pixels of all output rows map
                    // to one contiguous span of the input. The entries in
                    // between (padding columns, which wrap around to the
                    // neighbouring row) are zeroed first, so one long add
                    // replaces many short ones.
                    if ow_lo > 0 || ow_hi < wo {
                        for r in row[oh_lo * wo..oh_hi * wo].chunks_exact_mut(wo) {
                            zero_few(&mut r[..ow_lo]);
                            zero_few(&mut r[ow_hi..]);
                        }
                    }
                    let ih_lo = oh_lo + kh - p;
                    let (d0, d1) = (oh_lo * wo + ow_lo, (oh_hi - 1) * wo + ow_hi);
                    let s0 = ih_lo * g.w + ow_lo + kw - p;
                    for (d, v) in dxc[s0..s0 + (d1 - d0)].iter_mut().zip(&row[d0..d1]) {
                        *d += v;
                    }
                    continue;
                }
                for oh in oh_lo..oh_hi {
                    let ih = oh * s + kh - p;
                    let dst = &mut dxc[ih * g.w..(ih + 1) * g.w];
                    let src = &row[oh * wo + ow_lo..oh * wo + ow_hi];
                    if s == 1 {
                        for (d, v) in dst[ow_lo + kw - p..ow_hi + kw - p].iter_mut().zip(src) {
                            *d += v;
                        }
                    } else {
                        for (ow, v) in (ow_lo..ow_hi).zip(src) {
                            dst[ow * s + kw - p] += v;
                        }
                    }
                }
            }
        }
    }
}

/// Fewest GEMM columns (output pixels) worth running on their own: smaller
/// images are grouped, several samples side by side in one im2col matrix,
/// because `gemm` runs a `[C_out, K] x [K, 49]` product (7x7 images) at
/// about two thirds of the speed of a `[C_out, K] x [K, 784]` one.
pub const MIN_GEMM_COLS: usize = 512;

/// How a convolution splits its batch.
#[derive(Clone, Copy, Debug)]
struct Batching {
    /// Run the samples (groups) in parallel with single-threaded GEMMs,
    /// rather than one after the other with a threaded GEMM.
    parallel: bool,
    /// Samples per GEMM.
    group: usize,
    /// Samples per thread (the batch-parallel backward's chunks).
    per_thread: usize,
}

impl Batching {
    fn new(n: usize, pixels: usize) -> Self {
        let threads = rayon::current_num_threads().max(1);
        // Batch parallelism needs at least one sample per thread; a smaller
        // batch runs one group at a time with a threaded GEMM.
        let parallel = n > 1 && n >= threads;
        let per_thread = if parallel { n.div_ceil(threads) } else { n };
        let target = MIN_GEMM_COLS.div_ceil(pixels.max(1));
        // Split each thread's samples into equal groups of about `target`
        // (at least one group per thread, so the cores stay balanced).
        let groups = (per_thread / target.max(1)).max(1);
        Batching {
            parallel,
            group: per_thread.div_ceil(groups).max(1),
            per_thread,
        }
    }
}

/// Reusable per-thread buffers of the convolution passes.
#[derive(Default)]
struct Scratch {
    col: Vec<f32>,
    aux: Vec<f32>,
}

/// Forward 2-D convolution: `x [N, C_in, H, W]`, weight view
/// `[C_out, C_in, k, k]` and optional bias view `[C_out]` in `params`,
/// stride and zero padding from `spec`; returns `y [N, C_out, H_out, W_out]`.
///
/// # Errors
/// [`NetError::Shape`] for a non-rank-4 input, a channel mismatch or a
/// kernel larger than the padded input; [`NetError::View`] for a malformed
/// weight or bias view or one past the end of `params`;
/// [`NetError::Config`] for stride 0.
pub fn conv2d(
    x: &CpuTensor,
    params: &CpuTensor,
    w: &View,
    b: Option<&View>,
    spec: Conv2dSpec,
) -> Result<CpuTensor> {
    let g = conv_geom("conv2d", x.shape(), w, b, spec)?;
    let wt = view_slice(params, w)?;
    let bias = b.map(|b| view_slice(params, b)).transpose()?;
    let (in_n, out_n, pix, kd) = (g.in_numel(), g.out_numel(), g.pixels(), g.kdim());
    let fill_bias = |out: &mut [f32], cols: usize| {
        if let Some(bias) = bias {
            for (row, &bv) in out.chunks_exact_mut(cols).zip(bias) {
                row.fill(bv);
            }
        }
    };
    // One group of samples: `xg [G, C_in, H, W] -> yg [G, C_out, H_out, W_out]`
    // (`yg` uninitialised on entry, every element written).
    let group =
        |xg: &[f32], yg: &mut [MaybeUninit<f32>], sc: &mut Scratch, par: bool| -> Result<()> {
            let gn = xg.len() / in_n;
            let cols = gn * pix;
            let mm = MatMul::new(g.cout, cols, kd)
                .accumulating(bias.is_some())
                .threaded(par);
            if gn == 1 {
                // One sample: the GEMM adds to `y_n` (set to the bias first)
                // directly, and a pointwise convolution needs no im2col at all.
                let yg = fill_rows(yg, pix, |co| bias.map_or(0.0, |b| b[co]));
                let rhs: &[f32] = if g.pointwise() {
                    xg
                } else {
                    sc.col.resize(kd * cols, 0.0);
                    im2col(xg, &g, &mut sc.col, cols, 0);
                    &sc.col
                };
                return matmul(yg, wt, rhs, mm);
            }
            sc.col.resize(kd * cols, 0.0);
            for (j, xn) in xg.chunks_exact(in_n).enumerate() {
                im2col(xn, &g, &mut sc.col, cols, j * pix);
            }
            sc.aux.resize(g.cout * cols, 0.0);
            fill_bias(&mut sc.aux, cols);
            matmul(&mut sc.aux, wt, &sc.col, mm)?;
            // [C_out, G·P] -> [G, C_out, P] (every element of `yg`: G samples
            // of C_out rows of P).
            for (j, yn) in yg.chunks_exact_mut(out_n).enumerate() {
                for (co, row) in yn.chunks_exact_mut(pix).enumerate() {
                    write_copy(row, &sc.aux[co * cols + j * pix..co * cols + (j + 1) * pix]);
                }
            }
            Ok(())
        };
    let bt = Batching::new(g.n, pix);
    let len = g.n * out_n;
    let mut y = Vec::with_capacity(len);
    let yu = &mut y.spare_capacity_mut()[..len];
    if bt.parallel {
        yu.par_chunks_mut(bt.group * out_n)
            .zip(x.data().par_chunks(bt.group * in_n))
            .try_for_each_init(Scratch::default, |sc, (yg, xg)| group(xg, yg, sc, false))?;
    } else {
        let mut sc = Scratch::default();
        for (yg, xg) in yu
            .chunks_mut(bt.group * out_n)
            .zip(x.data().chunks(bt.group * in_n))
        {
            group(xg, yg, &mut sc, true)?;
        }
    }
    // SAFETY: the capacity is at least `len`; the groups' chunks of `y` tile
    // the first `len` elements and are each visited, `x` having as many
    // chunks (`n` samples either way), and `group` wrote every element of
    // each (it returned Ok for all of them, or we returned above).
    unsafe { y.set_len(len) };
    tensor(y, &g.out_dims())
}

/// Writes `value(r)` to every element of row `r` of `out` (rows of `cols`
/// elements) and returns it, now initialised.
fn fill_rows(
    out: &mut [MaybeUninit<f32>],
    cols: usize,
    value: impl Fn(usize) -> f32,
) -> &mut [f32] {
    for (r, row) in out.chunks_mut(cols).enumerate() {
        row.fill(MaybeUninit::new(value(r)));
    }
    // SAFETY: the rows tile `out` (`chunks_mut` panics for cols = 0), so
    // every element was written above; `MaybeUninit<f32>` has the layout of
    // `f32`.
    unsafe { &mut *(out as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// Checks that the gradient buffer (`grads` elements) has the layout
/// (length) of the parameter buffer (`params` elements).
pub(crate) fn check_grads(op: &'static str, params: usize, grads: usize) -> Result<()> {
    ensure_shape(params == grads, op, || {
        format!("gradient buffer has {grads} elements but the parameter buffer {params}")
    })
}

/// Checks that `dy` is the output shape of the convolution `g`.
pub(crate) fn check_conv_dy(op: &'static str, g: &Geom, dy: &Shape) -> Result<()> {
    let want = g.out_dims();
    ensure_shape(dy.dims() == want, op, || {
        format!("dy has shape {dy}, expected {want:?}")
    })
}

/// Checks that `dy` is `x`'s shape with the last dimension `out`.
pub(crate) fn check_linear_dy(op: &'static str, x: &Shape, out: usize, dy: &Shape) -> Result<()> {
    let mut want = x.dims().to_vec();
    if let Some(last) = want.last_mut() {
        *last = out;
    }
    ensure_shape(dy.dims() == want.as_slice(), op, || {
        format!("dy has shape {dy}, expected {want:?}")
    })
}

/// Bias gradient of a convolution: `dy` viewed as rows of `len` pixels,
/// row `r` belonging to channel `r mod db.len()`; adds each channel's total
/// (accumulated in f64) to `db`.
fn add_row_sums(db: &mut [f32], dy: &[f32], len: usize) {
    // Row totals in parallel, then added per channel in row order (the
    // same sums, in the same order, for any thread count).
    let row = |row: &[f32]| {
        simd(
            #[inline(always)]
            || lane_sum(row, |v| v),
        )
    };
    let totals: Vec<f64> = dy.par_chunks_exact(len).map(row).collect();
    let mut acc = vec![0.0f64; db.len()];
    for (r, t) in totals.into_iter().enumerate() {
        acc[r % db.len()] += t;
    }
    for (d, a) in db.iter_mut().zip(acc) {
        *d += a as f32;
    }
}

/// `dst [cols, rows] += srcᵀ` for `src [rows, cols]` (row-major).
fn add_transposed(dst: &mut [f32], src: &[f32], rows: usize, cols: usize) {
    for (i, row) in src.chunks_exact(cols).take(rows).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            dst[j * rows + i] += v;
        }
    }
}

/// Backward of [`conv2d`]: **accumulates** `dW` (and `db` when `b` is given)
/// into `grads` (laid out like `params`) at the views `w`, `b`, and returns
/// `dx [N, C_in, H, W]` when `need_dx`.
///
/// The batch is split into one contiguous chunk per thread, each with its
/// own partial `dW`, summed in chunk order afterwards: the result is
/// deterministic for a given thread count.
///
/// # Errors
/// As [`conv2d`], plus [`NetError::Shape`] when `dy` is not
/// `[N, C_out, H_out, W_out]` or `grads` is not the size of `params`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward(
    x: &CpuTensor,
    dy: &CpuTensor,
    params: &CpuTensor,
    w: &View,
    b: Option<&View>,
    spec: Conv2dSpec,
    grads: &mut CpuTensor,
    need_dx: bool,
) -> Result<Option<CpuTensor>> {
    const OP: &str = "conv2d_backward";
    let g = conv_geom(OP, x.shape(), w, b, spec)?;
    check_conv_dy(OP, &g, dy.shape())?;
    check_grads(OP, params.data().len(), grads.data().len())?;
    let wt = view_slice(params, w)?;
    let (in_n, out_n, pix, kd) = (g.in_numel(), g.out_numel(), g.pixels(), g.kdim());
    let (xs, dys) = (x.data(), dy.data());

    if let Some(b) = b {
        add_row_sums(view_slice_mut(grads, b)?, dys, pix);
    }

    // For a group of G samples side by side (G·P columns):
    // dW += dY [C_out, G·P] · colᵀ [G·P, K]; dcol [K, G·P] = Wᵀ [K, C_out] · dY;
    // dx_n = col2im(dcol_n). (Computing dx instead as the stride-1
    // convolution of dY with the flipped kernel, a GEMM contracting over
    // C_out·k·k rather than C_out, measured no faster on the reference
    // layers, so there is one path.)
    let group = |s0: usize,
                 gn: usize,
                 dxg: &mut [f32],
                 dw: &mut [f32],
                 sc: &mut Scratch,
                 par: bool|
     -> Result<()> {
        let cols = gn * pix;
        let xg = &xs[s0 * in_n..(s0 + gn) * in_n];
        let dyg_in = &dys[s0 * out_n..(s0 + gn) * out_n];
        // dWᵀ [K, C_out] += col [K, G·P] · dYᵀ: gemm then transposes dY
        // while packing rather than the K/C_out times larger im2col matrix.
        let mm_dw = MatMul::new(kd, g.cout, cols)
            .rhs_transposed()
            .accumulating(true)
            .threaded(par);
        let mm_dx = MatMul::new(kd, cols, g.cout).lhs_transposed().threaded(par);
        // dY as [C_out, G·P] (a sample's dY already is, when G = 1).
        let dyg: &[f32] = if gn == 1 {
            dyg_in
        } else {
            sc.aux.resize(g.cout * cols, 0.0);
            for (j, dyn_) in dyg_in.chunks_exact(out_n).enumerate() {
                for (co, row) in dyn_.chunks_exact(pix).enumerate() {
                    sc.aux[co * cols + j * pix..co * cols + (j + 1) * pix].copy_from_slice(row);
                }
            }
            &sc.aux
        };
        let col: &[f32] = if gn == 1 && g.pointwise() {
            xg
        } else {
            sc.col.resize(kd * cols, 0.0);
            for (j, xn) in xg.chunks_exact(in_n).enumerate() {
                im2col(xn, &g, &mut sc.col, cols, j * pix);
            }
            &sc.col
        };
        matmul(dw, col, dyg, mm_dw)?;
        if !need_dx {
            return Ok(());
        }
        if gn == 1 && g.pointwise() {
            return matmul(dxg, wt, dyg, mm_dx);
        }
        // The im2col matrix is no longer needed: reuse it for dcol.
        let mut dcol = std::mem::take(&mut sc.col);
        dcol.resize(kd * cols, 0.0);
        let done = matmul(&mut dcol, wt, dyg, mm_dx);
        if done.is_ok() {
            simd(
                #[inline(always)]
                || {
                    for (j, dxn) in dxg.chunks_exact_mut(in_n).enumerate() {
                        col2im(&mut dcol, &g, dxn, cols, j * pix);
                    }
                },
            );
        }
        sc.col = dcol;
        done
    };
    // Samples `first..first + count` (their `dx` rows in `dxc`, empty
    // unless need_dx), in groups, accumulating into `dw`.
    let bt = Batching::new(g.n, pix);
    let chunk = |first: usize, count: usize, dxc: &mut [f32], dw: &mut [f32], par: bool| {
        let mut sc = Scratch::default();
        let mut done = 0;
        while done < count {
            let gn = bt.group.min(count - done);
            let dxg = if need_dx {
                &mut dxc[done * in_n..(done + gn) * in_n]
            } else {
                &mut []
            };
            group(first + done, gn, dxg, dw, &mut sc, par)?;
            done += gn;
        }
        Ok::<(), NetError>(())
    };

    let mut dx = if need_dx {
        zeros(g.n * in_n)
    } else {
        Vec::new()
    };
    if bt.parallel {
        let per = bt.per_thread;
        let chunks = g.n.div_ceil(per);
        let dx_chunks: Vec<&mut [f32]> = if need_dx {
            dx.chunks_mut(per * in_n).collect()
        } else {
            (0..chunks).map(|_| <&mut [f32]>::default()).collect()
        };
        let partials = dx_chunks
            .into_par_iter()
            .enumerate()
            .map(|(c, dxc)| {
                let first = c * per;
                let mut dw = zeros(g.cout * kd);
                chunk(first, per.min(g.n - first), dxc, &mut dw, false)?;
                Ok(dw)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut dwt = zeros(g.cout * kd);
        for p in partials {
            for (d, v) in dwt.iter_mut().zip(p) {
                *d += v;
            }
        }
        add_transposed(view_slice_mut(grads, w)?, &dwt, kd, g.cout);
    } else {
        let mut dwt = zeros(g.cout * kd);
        chunk(0, g.n, &mut dx, &mut dwt, true)?;
        add_transposed(view_slice_mut(grads, w)?, &dwt, kd, g.cout);
    }
    if need_dx {
        Ok(Some(tensor(dx, x.shape().dims())?))
    } else {
        Ok(None)
    }
}

/// Validates a linear layer's input shape `x` and its weight and bias views
/// (everything but the views' ranges in the buffer) and returns
/// `(rows, in, out)`.
pub(crate) fn linear_geom(
    op: &'static str,
    x: &Shape,
    w: &View,
    b: Option<&View>,
) -> Result<(usize, usize, usize)> {
    let xd = x.dims();
    ensure_shape(xd.len() >= 2, op, || {
        format!("expected an input of rank >= 2 [..., in], got shape {x}")
    })?;
    let inp = xd[xd.len() - 1];
    check_view_end(w)?;
    let &[out, win] = w.shape.as_slice() else {
        return Err(NetError::View {
            name: view_name(w),
            reason: format!("{op}: weight shape {:?} is not [out, in]", w.shape),
        });
    };
    if out == 0 || win == 0 {
        return Err(NetError::View {
            name: view_name(w),
            reason: format!("{op}: empty weight shape {:?}", w.shape),
        });
    }
    ensure_shape(win == inp, op, || {
        format!(
            "input has {inp} features but the weight {:?} expects {win}",
            w.shape
        )
    })?;
    check_bias(b, out, "one per output feature")?;
    Ok((x.numel() / inp, inp, out))
}

/// Affine layer on the last dimension: `y = x Wᵀ + b` for `x [..., in]`
/// (rank >= 2), weight view `[out, in]`, optional bias view `[out]`;
/// returns `y [..., out]`.
///
/// # Errors
/// [`NetError::Shape`] for a rank-1 input or a feature mismatch;
/// [`NetError::View`] for a malformed view or one past the end of `params`.
pub fn linear(x: &CpuTensor, params: &CpuTensor, w: &View, b: Option<&View>) -> Result<CpuTensor> {
    let (rows, inp, out) = linear_geom("linear", x.shape(), w, b)?;
    let wt = view_slice(params, w)?;
    let mut y = zeros(rows * out);
    if let Some(b) = b {
        let bias = view_slice(params, b)?;
        for row in y.chunks_exact_mut(out) {
            row.copy_from_slice(bias);
        }
    }
    let mm = MatMul::new(rows, out, inp)
        .rhs_transposed()
        .accumulating(b.is_some())
        .threaded(true);
    matmul(&mut y, x.data(), wt, mm)?;
    let mut yd = x.shape().dims().to_vec();
    if let Some(last) = yd.last_mut() {
        *last = out;
    }
    tensor(y, &yd)
}

/// Backward of [`linear`]: **accumulates** `dW += dyᵀ x` (and `db += Σ dy`)
/// into `grads` (laid out like `params`) and returns `dx = dy W` when
/// `need_dx`.
///
/// # Errors
/// As [`linear`], plus [`NetError::Shape`] when `dy` is not `[..., out]`
/// with the leading dimensions of `x`, or `grads` is not the size of
/// `params`.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    x: &CpuTensor,
    dy: &CpuTensor,
    params: &CpuTensor,
    w: &View,
    b: Option<&View>,
    grads: &mut CpuTensor,
    need_dx: bool,
) -> Result<Option<CpuTensor>> {
    const OP: &str = "linear_backward";
    let (rows, inp, out) = linear_geom(OP, x.shape(), w, b)?;
    check_linear_dy(OP, x.shape(), out, dy.shape())?;
    check_grads(OP, params.data().len(), grads.data().len())?;
    let wt = view_slice(params, w)?;
    if let Some(b) = b {
        let db = view_slice_mut(grads, b)?;
        let mut acc = vec![0.0f64; out];
        for row in dy.data().chunks_exact(out) {
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += f64::from(v);
            }
        }
        for (d, a) in db.iter_mut().zip(acc) {
            *d += a as f32;
        }
    }
    // dW [out, in] += dyᵀ [out, rows] · x [rows, in].
    let mm_dw = MatMul::new(out, inp, rows)
        .lhs_transposed()
        .accumulating(true)
        .threaded(true);
    matmul(view_slice_mut(grads, w)?, dy.data(), x.data(), mm_dw)?;
    if !need_dx {
        return Ok(None);
    }
    // dx [rows, in] = dy [rows, out] · W [out, in].
    let mut dx = zeros(rows * inp);
    matmul(
        &mut dx,
        dy.data(),
        wt,
        MatMul::new(rows, inp, out).threaded(true),
    )?;
    Ok(Some(tensor(dx, x.shape().dims())?))
}
