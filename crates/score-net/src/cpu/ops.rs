//! CPU kernels of the non-GEMM [`NetBackend`](crate::NetBackend) ops: group
//! norm, SiLU, nearest up-sampling, average pooling, channel concatenation,
//! channel biases, token layout changes, attention and dropout, each with its
//! backward pass.
//!
//! All tensors are `f32`, images `[N, C, H, W]` and token sequences
//! `[N, L, C]`, row-major. Statistics and reductions accumulate in `f64`.
//! Work is split over the batch with rayon once a tensor is large enough to
//! pay for the threading; bad shapes and views give typed errors, never panics.
//!
//! The argument checks work on [`Shape`]s and are `pub(crate)`: the wgpu
//! backend ([`crate::gpu::net::ops`]) calls the same functions, so a wrong
//! shape is the same typed error on both backends.

use std::mem::MaybeUninit;

use rayon::prelude::*;
use sde_core::{CpuTensor, NoiseKey, Shape};

use super::math::{self, sigmoid};
use super::{tensor, view_slice, view_slice_mut, zeros};
use crate::error::{ensure_shape, NetError};
use crate::{Result, View};

/// Elements of work below which an op runs on the calling thread.
const PAR_MIN_WORK: usize = 1 << 15;

/// Runs `f(index, chunk)` over the `chunk`-sized pieces of `out`, in parallel
/// when `work` (roughly the op's element operations) is large enough.
fn for_chunks<T, F>(out: &mut [T], chunk: usize, work: usize, f: F)
where
    T: Send,
    F: Fn(usize, &mut [T]) + Sync + Send,
{
    if chunk == 0 {
        return;
    }
    if work >= PAR_MIN_WORK && out.len() > chunk {
        out.par_chunks_mut(chunk).enumerate().for_each(|(i, c)| {
            simd(
                #[inline(always)]
                || f(i, c),
            )
        });
    } else {
        out.chunks_mut(chunk).enumerate().for_each(|(i, c)| {
            simd(
                #[inline(always)]
                || f(i, c),
            )
        });
    }
}

/// A new `len`-element output computed by `f(index, chunk)` over its
/// `chunk`-sized pieces as [`for_chunks`] runs them, without clearing the
/// memory first (most ops write every output element exactly once, so a
/// zero fill would be a wasted pass over memory).
///
/// # Safety
/// Every call of `f` must initialise every element of the chunk it is given
/// (for example by zipping the chunk with an input slice at least as long).
/// The callers' arguments for that rest on `sde_core::Shape`'s invariants:
/// no zero dimensions, and element counts that do not overflow.
unsafe fn build_chunks<F>(len: usize, chunk: usize, work: usize, f: F) -> Vec<f32>
where
    F: Fn(usize, &mut [MaybeUninit<f32>]) + Sync + Send,
{
    if len == 0 {
        return Vec::new();
    }
    // `for_chunks` does nothing for chunk 0, which would leave it all unwritten.
    assert!(chunk > 0, "build_chunks: chunk size 0 for {len} elements");
    let mut out = Vec::with_capacity(len);
    for_chunks(&mut out.spare_capacity_mut()[..len], chunk, work, f);
    // SAFETY: the capacity is at least `len`, and by the caller's contract
    // the chunks, which tile the first `len` elements, were all initialised.
    unsafe { out.set_len(len) };
    out
}

/// `f` itself: lets a closure bound with `let` carry `#[inline(always)]`
/// (attributes are allowed on closures in argument position only), so that
/// [`simd`] inlines it into its wide copy.
#[inline(always)]
fn closure<F>(f: F) -> F {
    f
}

/// Runs `f` from a copy of this function compiled for AVX2 and FMA when the
/// CPU has them (x86-64), so that `f`, inlined there, is vectorised 8 floats
/// wide instead of the baseline target's 4 (SSE2). Rust never contracts
/// `a * b + c` into a fused multiply-add on its own, and both copies perform
/// the same IEEE operations in the same order, so the results are
/// bit-identical either way.
#[inline(always)]
pub(crate) fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        fn wide<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports every feature `wide` is compiled for.
            return unsafe { wide(f) };
        }
    }
    f()
}

/// Checks that `a` and `b` have the same shape.
fn same_shape(op: &'static str, a: &CpuTensor, b: &CpuTensor) -> Result<()> {
    check_same_shape(op, a.shape(), b.shape())
}

/// Checks that shapes `a` and `b` are equal.
pub(crate) fn check_same_shape(op: &'static str, a: &Shape, b: &Shape) -> Result<()> {
    ensure_shape(a == b, op, || format!("shapes {a} and {b} differ"))
}

/// The dimensions of `shape`, checked to have rank `rank`.
pub(crate) fn rank_dims<'a>(
    shape: &'a Shape,
    rank: usize,
    op: &'static str,
) -> Result<&'a [usize]> {
    let d = shape.dims();
    ensure_shape(d.len() == rank, op, || {
        format!("expected a rank-{rank} tensor, got shape {shape}")
    })?;
    Ok(d)
}

/// Checks that `view` has exactly `c` elements (a per-channel parameter).
pub(crate) fn channel_view(view: &View, c: usize, what: &str) -> Result<()> {
    if view.numel() == c {
        Ok(())
    } else {
        Err(NetError::View {
            name: format!("{what}@{}", view.offset),
            reason: format!(
                "shape {:?} has {} elements, expected {c} (one per channel)",
                view.shape,
                view.numel()
            ),
        })
    }
}

/// The dimensions of a rank-4 image tensor, each at least 1.
fn image_dims(x: &CpuTensor, op: &'static str) -> Result<[usize; 4]> {
    image_shape(x.shape(), op)
}

/// The dimensions of a rank-4 image shape `[N, C, H, W]`.
pub(crate) fn image_shape(shape: &Shape, op: &'static str) -> Result<[usize; 4]> {
    let d = rank_dims(shape, 4, op)?;
    Ok([d[0], d[1], d[2], d[3]])
}

/// Validates the group-norm arguments for input shape `x` (the per-channel
/// view sizes; not whether the views fit the buffers); returns `[N, C, H, W]`.
pub(crate) fn group_norm_check(
    x: &Shape,
    gamma: &View,
    beta: &View,
    groups: usize,
    eps: f32,
    op: &'static str,
) -> Result<[usize; 4]> {
    let d = image_shape(x, op)?;
    let c = d[1];
    ensure_shape(groups > 0 && c % groups == 0, op, || {
        format!("{c} channels cannot be split into {groups} groups")
    })?;
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(NetError::Config {
            field: "group_norm.eps",
            value: eps.to_string(),
            reason: "must be finite and non-negative".into(),
        });
    }
    channel_view(gamma, c, "gamma")?;
    channel_view(beta, c, "beta")?;
    Ok(d)
}

/// Lanes of the vectorisable sums: independent `f64` accumulators, added
/// together at the end (a single serial accumulator would chain every add on
/// the previous one and cannot be vectorised).
const LANES: usize = 8;

/// `sum_i f(x_i)` in `f64` over [`LANES`] accumulators.
#[inline(always)]
pub(crate) fn lane_sum(x: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0.0f64; LANES];
    let mut it = x.chunks_exact(LANES);
    for c in &mut it {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(f64::from(v));
        }
    }
    for (a, &v) in acc.iter_mut().zip(it.remainder()) {
        *a += f(f64::from(v));
    }
    acc.iter().sum()
}

/// `(sum_i d_i (x_i - mean), sum_i d_i)` in `f64` over [`LANES`] accumulators.
#[inline(always)]
fn lane_sums2(x: &[f32], d: &[f32], mean: f64) -> (f64, f64) {
    let (mut a, mut b) = ([0.0f64; LANES], [0.0f64; LANES]);
    let mut xi = x.chunks_exact(LANES);
    let mut di = d.chunks_exact(LANES);
    for (xc, dc) in (&mut xi).zip(&mut di) {
        for k in 0..LANES {
            let dv = f64::from(dc[k]);
            a[k] += dv * (f64::from(xc[k]) - mean);
            b[k] += dv;
        }
    }
    for (k, (&v, &dv)) in xi.remainder().iter().zip(di.remainder()).enumerate() {
        let dv = f64::from(dv);
        a[k] += dv * (f64::from(v) - mean);
        b[k] += dv;
    }
    (a.iter().sum(), b.iter().sum())
}

/// `mean` as two `f32`s, `hi + lo`: `(v - hi) - lo` is `v - mean` to about
/// one `f32` ulp of the difference even when `|mean|` dwarfs the spread
/// (`v - hi` is exact for `v` near `hi`), where `v - mean as f32` would
/// carry the rounding error of `mean` itself.
#[inline(always)]
fn split_mean(mean: f64) -> (f32, f32) {
    let hi = mean as f32;
    (hi, (mean - f64::from(hi)) as f32)
}

/// Mean and `1/sqrt(var + eps)` of `x`, in one pass over `x`: `f64` sums of
/// `d = x - x[0]` and `d^2` (shifting by a sample of the data keeps the
/// variance free of the cancellation that `E[x^2] - E[x]^2` suffers for a
/// large mean; `f64` leaves 29 bits to spare over the `f32` data).
#[inline(always)]
fn moments(x: &[f32], eps: f32) -> (f64, f64) {
    let m = x.len().max(1) as f64;
    let shift = f64::from(x.first().copied().unwrap_or(0.0));
    let (mut a, mut b) = ([0.0f64; LANES], [0.0f64; LANES]);
    let mut it = x.chunks_exact(LANES);
    for c in &mut it {
        for k in 0..LANES {
            let d = f64::from(c[k]) - shift;
            a[k] += d;
            b[k] += d * d;
        }
    }
    for (k, &v) in it.remainder().iter().enumerate() {
        let d = f64::from(v) - shift;
        a[k] += d;
        b[k] += d * d;
    }
    let dm = a.iter().sum::<f64>() / m;
    let var = (b.iter().sum::<f64>() / m - dm * dm).max(0.0);
    (shift + dm, 1.0 / (var + f64::from(eps)).sqrt())
}

/// Group normalisation of `x [N, C, H, W]`: per sample and group of `C/groups`
/// channels, `(x - mean) / sqrt(var + eps) * gamma[c] + beta[c]` with the biased
/// variance over the group's channels and pixels.
pub fn group_norm(
    x: &CpuTensor,
    params: &CpuTensor,
    gamma: &View,
    beta: &View,
    groups: usize,
    eps: f32,
) -> Result<CpuTensor> {
    group_norm_impl::<false>(x, params, gamma, beta, groups, eps, "group_norm")
}

/// `silu(group_norm(x))` in one pass over `x`: bit-identical to [`silu`] of
/// [`group_norm`], without writing or reading the normalised tensor.
pub fn group_norm_silu(
    x: &CpuTensor,
    params: &CpuTensor,
    gamma: &View,
    beta: &View,
    groups: usize,
    eps: f32,
) -> Result<CpuTensor> {
    group_norm_impl::<true>(x, params, gamma, beta, groups, eps, "group_norm_silu")
}

/// [`group_norm`], followed by SiLU when `SILU`.
fn group_norm_impl<const SILU: bool>(
    x: &CpuTensor,
    params: &CpuTensor,
    gamma: &View,
    beta: &View,
    groups: usize,
    eps: f32,
    op: &'static str,
) -> Result<CpuTensor> {
    let [n, c, h, w] = group_norm_check(x.shape(), gamma, beta, groups, eps, op)?;
    let g = view_slice(params, gamma)?;
    let b = view_slice(params, beta)?;
    let hw = h * w;
    let cg = c / groups;
    let xd = x.data();
    // One chunk per (sample, group): the group's channels are contiguous.
    // SAFETY: each chunk is `cg` planes of `hw` elements, all written below.
    let out = unsafe {
        build_chunks(
            xd.len(),
            cg * hw,
            xd.len(),
            #[inline(always)]
            |i, o| {
                let xs = &xd[i * cg * hw..(i + 1) * cg * hw];
                let (mean, rstd) = moments(xs, eps);
                let c0 = (i % groups) * cg;
                // Per element in f32: (x - mean) * (rstd * gamma) + beta (statistics in f64).
                let (hi, lo) = split_mean(mean);
                for (ci, (oc, xc)) in o.chunks_exact_mut(hw).zip(xs.chunks_exact(hw)).enumerate() {
                    let scale = (rstd * f64::from(g[c0 + ci])) as f32;
                    let shift = b[c0 + ci];
                    for (o, &v) in oc.iter_mut().zip(xc) {
                        let a = ((v - hi) - lo) * scale + shift;
                        o.write(if SILU { a * sigmoid(a) } else { a });
                    }
                }
            },
        )
    };
    tensor(out, &[n, c, h, w])
}

/// Backward of [`group_norm`] (statistics recomputed from `x`): accumulates
/// `dgamma`, `dbeta` into `grads` (same layout as `params`) and returns `dx`.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_backward(
    x: &CpuTensor,
    dy: &CpuTensor,
    params: &CpuTensor,
    gamma: &View,
    beta: &View,
    groups: usize,
    eps: f32,
    grads: &mut CpuTensor,
) -> Result<CpuTensor> {
    let op = "group_norm_backward";
    group_norm_backward_impl::<false>(x, dy, params, gamma, beta, groups, eps, grads, op)
}

/// Backward of [`group_norm_silu`]: the normalised value is recomputed from
/// `x` and `dy` turned into its gradient (as [`silu_backward`] does) one
/// channel at a time, in cache. Bit-identical to [`group_norm_backward`] of
/// [`silu_backward`].
#[allow(clippy::too_many_arguments)]
pub fn group_norm_silu_backward(
    x: &CpuTensor,
    dy: &CpuTensor,
    params: &CpuTensor,
    gamma: &View,
    beta: &View,
    groups: usize,
    eps: f32,
    grads: &mut CpuTensor,
) -> Result<CpuTensor> {
    let op = "group_norm_silu_backward";
    group_norm_backward_impl::<true>(x, dy, params, gamma, beta, groups, eps, grads, op)
}

/// [`group_norm_backward`], of [`group_norm_silu`] when `SILU`.
#[allow(clippy::too_many_arguments)]
fn group_norm_backward_impl<const SILU: bool>(
    x: &CpuTensor,
    dy: &CpuTensor,
    params: &CpuTensor,
    gamma: &View,
    beta: &View,
    groups: usize,
    eps: f32,
    grads: &mut CpuTensor,
    op: &'static str,
) -> Result<CpuTensor> {
    let [n, c, h, w] = group_norm_check(x.shape(), gamma, beta, groups, eps, op)?;
    same_shape(op, x, dy)?;
    let g = view_slice(params, gamma)?;
    let b = view_slice(params, beta)?;
    // Check the gradient views before doing the work.
    view_slice_mut(grads, gamma)?;
    view_slice_mut(grads, beta)?;
    let hw = h * w;
    let cg = c / groups;
    let gs = cg * hw;
    let xd = x.data();
    let dyd = dy.data();
    // Per (sample, group), the group's `dgamma` then `dbeta` partial sums.
    let mut partial = vec![0.0f64; n * groups * 2 * cg];
    // `da` holds the SiLU-backward gradient of one group (unused otherwise).
    let body = closure(
        #[inline(always)]
        |i: usize, dxs: &mut [MaybeUninit<f32>], part: &mut [f64], da: &mut Vec<f32>| {
            let xs = &xd[i * gs..(i + 1) * gs];
            let dys = &dyd[i * gs..(i + 1) * gs];
            let (mean, rstd) = moments(xs, eps);
            let c0 = (i % groups) * cg;
            let (hi, lo) = split_mean(mean);
            if SILU {
                da.resize(gs, 0.0);
            }
            // Sums over the group of dxhat = dy * gamma and dxhat * xhat.
            let (mut s1, mut s2) = (0.0f64, 0.0f64);
            let (pg, pb) = part.split_at_mut(cg);
            for ci in 0..cg {
                let gc = f64::from(g[c0 + ci]);
                let r = ci * hw..(ci + 1) * hw;
                let dya = if SILU {
                    // The gradient at the normalised value `a`: the forward's
                    // arithmetic, then silu_backward's.
                    let scale = (rstd * gc) as f32;
                    let shift = b[c0 + ci];
                    let dac = &mut da[r.clone()];
                    for ((o, &v), &d) in dac.iter_mut().zip(&xs[r.clone()]).zip(&dys[r.clone()]) {
                        let a = ((v - hi) - lo) * scale + shift;
                        let s = sigmoid(a);
                        *o = d * s * (1.0 + a * (1.0 - s));
                    }
                    &da[r.clone()]
                } else {
                    &dys[r.clone()]
                };
                let (dxc, db) = lane_sums2(&xs[r], dya, mean);
                let dg = dxc * rstd;
                pg[ci] = dg;
                pb[ci] = db;
                s1 += gc * db;
                s2 += gc * dg;
            }
            let m = gs as f64;
            let (m1, m2) = (s1 / m, s2 / m);
            // Per element in f32: rstd * (dy * gamma - m1 - xhat * m2).
            let rstd32 = rstd as f32;
            let (m1, m2) = (m1 as f32, m2 as f32);
            let dyg: &[f32] = if SILU { da } else { dys };
            for ci in 0..cg {
                let gc = g[c0 + ci];
                let r = ci * hw..(ci + 1) * hw;
                for ((o, &v), &d) in dxs[r.clone()].iter_mut().zip(&xs[r.clone()]).zip(&dyg[r]) {
                    let xh = ((v - hi) - lo) * rstd32;
                    o.write(rstd32 * (d * gc - m1 - xh * m2));
                }
            }
        },
    );
    let mut dx = Vec::with_capacity(xd.len());
    let out = &mut dx.spare_capacity_mut()[..xd.len()];
    if xd.len() >= PAR_MIN_WORK && n * groups > 1 {
        out.par_chunks_mut(gs)
            .zip(partial.par_chunks_mut(2 * cg))
            .enumerate()
            .for_each_init(Vec::new, |da, (i, (d, p))| {
                simd(
                    #[inline(always)]
                    || body(i, d, p, da),
                )
            });
    } else {
        let mut da = Vec::new();
        out.chunks_mut(gs)
            .zip(partial.chunks_mut(2 * cg))
            .enumerate()
            .for_each(|(i, (d, p))| {
                simd(
                    #[inline(always)]
                    || body(i, d, p, &mut da),
                )
            });
    }
    // SAFETY: the capacity is at least `x`'s length, which is exactly
    // `n * groups * gs` (shapes have no zero dimensions and no overflowing
    // element counts); its `n * groups` chunks of `gs` are each visited, as
    // `partial` has as many chunks of `2 cg`, and `body` wrote each plane by
    // plane, `cg` planes of `hw` zipped with planes of `x` and `dy` (or
    // `da`) of the same length.
    unsafe { dx.set_len(xd.len()) };
    let mut dgamma = vec![0.0f64; c];
    let mut dbeta = vec![0.0f64; c];
    for (i, p) in partial.chunks_exact(2 * cg).enumerate() {
        let c0 = (i % groups) * cg;
        for ci in 0..cg {
            dgamma[c0 + ci] += p[ci];
            dbeta[c0 + ci] += p[cg + ci];
        }
    }
    for (o, v) in view_slice_mut(grads, gamma)?.iter_mut().zip(&dgamma) {
        *o += *v as f32;
    }
    for (o, v) in view_slice_mut(grads, beta)?.iter_mut().zip(&dbeta) {
        *o += *v as f32;
    }
    tensor(dx, &[n, c, h, w])
}

/// `silu(x) = x sigmoid(x)`, elementwise (any shape).
pub fn silu(x: &CpuTensor) -> Result<CpuTensor> {
    let xd = x.data();
    let chunk = PAR_MIN_WORK.min(xd.len()).max(1);
    // SAFETY: chunk `i` is zipped with the input from `i * chunk`, which is
    // at least as long.
    let out = unsafe {
        build_chunks(
            xd.len(),
            chunk,
            xd.len(),
            #[inline(always)]
            |i, o| {
                for (o, &v) in o.iter_mut().zip(&xd[i * chunk..]) {
                    o.write(v * sigmoid(v));
                }
            },
        )
    };
    tensor(out, x.shape().dims())
}

/// Backward of [`silu`]: `dy * silu'(x)` with `silu'(x) = s (1 + x (1 - s))`, `s = sigmoid(x)`.
pub fn silu_backward(x: &CpuTensor, dy: &CpuTensor) -> Result<CpuTensor> {
    same_shape("silu_backward", x, dy)?;
    let xd = x.data();
    let dyd = dy.data();
    let chunk = PAR_MIN_WORK.min(xd.len()).max(1);
    // SAFETY: chunk `i` is zipped with `x` and `dy` (same length) from
    // `i * chunk`, each at least as long.
    let out = unsafe {
        build_chunks(
            xd.len(),
            chunk,
            xd.len(),
            #[inline(always)]
            |i, o| {
                for ((o, &v), &d) in o.iter_mut().zip(&xd[i * chunk..]).zip(&dyd[i * chunk..]) {
                    let s = sigmoid(v);
                    o.write(d * s * (1.0 + v * (1.0 - s)));
                }
            },
        )
    };
    tensor(out, x.shape().dims())
}

/// Nearest-neighbour 2x up-sampling of `[N, C, H, W]` to `[N, C, 2H, 2W]`.
pub fn upsample_nearest2x(x: &CpuTensor) -> Result<CpuTensor> {
    let [n, c, h, w] = image_dims(x, "upsample_nearest2x")?;
    let xd = x.data();
    let (h2, w2) = (2 * h, 2 * w);
    // SAFETY: plane `p` (h2 x w2) is written as h pairs of rows: the top
    // row element by element (j < w covers its 2w = w2 entries), the bottom
    // row copied from it.
    let out = unsafe {
        build_chunks(
            4 * xd.len(),
            h2 * w2,
            4 * xd.len(),
            #[inline(always)]
            |p, o| {
                let xs = &xd[p * h * w..(p + 1) * h * w];
                for (i, xr) in xs.chunks_exact(w).enumerate() {
                    let (top, bottom) = o[2 * i * w2..(2 * i + 2) * w2].split_at_mut(w2);
                    for (j, &v) in xr.iter().enumerate() {
                        top[2 * j].write(v);
                        top[2 * j + 1].write(v);
                    }
                    bottom.copy_from_slice(top);
                }
            },
        )
    };
    tensor(out, &[n, c, h2, w2])
}

/// Checks that the image shape `x` has an even height and width; returns `[N, C, H, W]`.
pub(crate) fn even_image_dims(x: &Shape, op: &'static str) -> Result<[usize; 4]> {
    let d = image_shape(x, op)?;
    ensure_shape(d[2] % 2 == 0 && d[3] % 2 == 0, op, || {
        format!("needs an even height and width, got shape {x}")
    })?;
    Ok(d)
}

/// Sums of the 2x2 blocks of `[N, C, H, W]` (H, W even), times `scale`.
fn block_sum(x: &CpuTensor, scale: f32, op: &'static str) -> Result<CpuTensor> {
    let [n, c, h, w] = even_image_dims(x.shape(), op)?;
    let xd = x.data();
    let (ho, wo) = (h / 2, w / 2);
    // SAFETY: plane `p` is `ho` rows of `wo` elements, each written.
    let out = unsafe {
        build_chunks(
            xd.len() / 4,
            ho * wo,
            xd.len(),
            #[inline(always)]
            |p, o| {
                let xs = &xd[p * h * w..(p + 1) * h * w];
                for (i, orow) in o.chunks_exact_mut(wo).enumerate() {
                    let r0 = &xs[2 * i * w..(2 * i + 1) * w];
                    let r1 = &xs[(2 * i + 1) * w..(2 * i + 2) * w];
                    for (j, ov) in orow.iter_mut().enumerate() {
                        ov.write((r0[2 * j] + r0[2 * j + 1] + r1[2 * j] + r1[2 * j + 1]) * scale);
                    }
                }
            },
        )
    };
    tensor(out, &[n, c, ho, wo])
}

/// Backward of [`upsample_nearest2x`]: `dy [N, C, 2H, 2W]` summed over each 2x2
/// block to `[N, C, H, W]`.
pub fn upsample_nearest2x_backward(dy: &CpuTensor) -> Result<CpuTensor> {
    block_sum(dy, 1.0, "upsample_nearest2x_backward")
}

/// 2x2 average pooling with stride 2 of `[N, C, H, W]` (H, W even).
pub fn avg_pool2x(x: &CpuTensor) -> Result<CpuTensor> {
    block_sum(x, 0.25, "avg_pool2x")
}

/// Backward of [`avg_pool2x`]: each `dy [N, C, H, W]` value spread as `dy/4`
/// over its 2x2 block of `[N, C, 2H, 2W]`.
pub fn avg_pool2x_backward(dy: &CpuTensor) -> Result<CpuTensor> {
    let up = upsample_nearest2x(dy)
        .map_err(|e| rename_shape_error(e, "avg_pool2x_backward"))?
        .into_vec();
    let [n, c, h, w] = image_dims(dy, "avg_pool2x_backward")?;
    tensor(
        up.into_iter().map(|v| v * 0.25).collect(),
        &[n, c, 2 * h, 2 * w],
    )
}

/// Gives a shape error raised by a helper the name of the public op.
fn rename_shape_error(e: NetError, op: &'static str) -> NetError {
    match e {
        NetError::Shape { reason, .. } => NetError::Shape { op, reason },
        other => other,
    }
}

/// Validates the inputs of [`concat_channels`]; returns `[N, Ca, Cb, H, W]`.
pub(crate) fn concat_check(a: &Shape, b: &Shape) -> Result<[usize; 5]> {
    const OP: &str = "concat_channels";
    let [n, ca, h, w] = image_shape(a, OP)?;
    let [nb, cb, hb, wb] = image_shape(b, OP)?;
    ensure_shape(n == nb && h == hb && w == wb, OP, || {
        format!("shapes {a} and {b} differ outside the channels")
    })?;
    Ok([n, ca, cb, h, w])
}

/// Copies `src` into the uninitialised `dst` (same length).
#[inline(always)]
pub(crate) fn write_copy(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    for (d, &v) in dst.iter_mut().zip(src) {
        d.write(v);
    }
}

/// Concatenation along channels: `a [N, Ca, H, W] ++ b [N, Cb, H, W]`.
pub fn concat_channels(a: &CpuTensor, b: &CpuTensor) -> Result<CpuTensor> {
    let [n, ca, cb, h, w] = concat_check(a.shape(), b.shape())?;
    let (sa, sb) = (ca * h * w, cb * h * w);
    let (ad, bd) = (a.data(), b.data());
    // SAFETY: sample `s`'s chunk of `sa + sb` elements is split at `sa` and
    // each part copied from a slice of its length.
    let out = unsafe {
        build_chunks(
            n * (sa + sb),
            sa + sb,
            n * (sa + sb),
            #[inline(always)]
            |s, o| {
                let (oa, ob) = o.split_at_mut(sa);
                write_copy(oa, &ad[s * sa..(s + 1) * sa]);
                write_copy(ob, &bd[s * sb..(s + 1) * sb]);
            },
        )
    };
    tensor(out, &[n, ca + cb, h, w])
}

/// Validates the arguments of [`split_channels`]; returns `[N, C, H, W]` of `dy`.
pub(crate) fn split_check(dy: &Shape, ca: usize) -> Result<[usize; 4]> {
    const OP: &str = "split_channels";
    let [n, c, h, w] = image_shape(dy, OP)?;
    ensure_shape(ca > 0 && ca < c, OP, || {
        format!("cannot split {c} channels after {ca} (both parts need at least one)")
    })?;
    Ok([n, c, h, w])
}

/// Backward of [`concat_channels`]: splits `dy [N, C, H, W]` into its first
/// `ca` channels and the rest (`0 < ca < C`).
pub fn split_channels(dy: &CpuTensor, ca: usize) -> Result<(CpuTensor, CpuTensor)> {
    let [n, c, h, w] = split_check(dy.shape(), ca)?;
    let cb = c - ca;
    let (sa, sb) = (ca * h * w, cb * h * w);
    let d = dy.data();
    let part = |start: usize, len: usize| {
        // SAFETY: sample `s`'s chunk (`len` elements) is copied from the
        // slice of that length at `s (sa + sb) + start` in `dy`.
        unsafe {
            build_chunks(
                n * len,
                len,
                n * len,
                #[inline(always)]
                |s, o| {
                    let from = s * (sa + sb) + start;
                    write_copy(o, &d[from..from + len]);
                },
            )
        }
    };
    let (a, b) = (part(0, sa), part(sa, sb));
    Ok((tensor(a, &[n, ca, h, w])?, tensor(b, &[n, cb, h, w])?))
}

/// Validates the inputs of [`add_channel_bias`]; returns `[N, C, H, W]` of `x`.
pub(crate) fn channel_bias_check(x: &Shape, v: &Shape) -> Result<[usize; 4]> {
    const OP: &str = "add_channel_bias";
    let [n, c, h, w] = image_shape(x, OP)?;
    let vd = rank_dims(v, 2, OP)?;
    ensure_shape(vd == [n, c], OP, || {
        format!("bias shape {v} does not match [N, C] = [{n}, {c}] of {x}")
    })?;
    Ok([n, c, h, w])
}

/// `x [N, C, H, W] + v [N, C]`, `v` broadcast over the pixels.
pub fn add_channel_bias(x: &CpuTensor, v: &CpuTensor) -> Result<CpuTensor> {
    let [n, c, h, w] = channel_bias_check(x.shape(), v.shape())?;
    let hw = h * w;
    let xd = x.data();
    let vv = v.data();
    // SAFETY: plane `p` is zipped with the input plane of the same length.
    let out = unsafe {
        build_chunks(
            xd.len(),
            hw,
            xd.len(),
            #[inline(always)]
            |p, o| {
                let b = vv[p];
                for (o, &xv) in o.iter_mut().zip(&xd[p * hw..(p + 1) * hw]) {
                    o.write(xv + b);
                }
            },
        )
    };
    tensor(out, &[n, c, h, w])
}

/// Backward of [`add_channel_bias`] for `v`: `dy [N, C, H, W]` summed over the
/// pixels to `[N, C]` (accumulated in `f64`).
pub fn sum_spatial(dy: &CpuTensor) -> Result<CpuTensor> {
    let [n, c, h, w] = image_dims(dy, "sum_spatial")?;
    let plane = |p: &[f32]| {
        simd(
            #[inline(always)]
            || lane_sum(p, |v| v) as f32,
        )
    };
    let d = dy.data();
    let out = if d.len() >= PAR_MIN_WORK {
        d.par_chunks_exact(h * w).map(plane).collect()
    } else {
        d.chunks_exact(h * w).map(plane).collect()
    };
    tensor(out, &[n, c])
}

/// Transposes each sample's `[A, B]` matrix (`x` holds `N` of them) to `[B, A]`.
fn transpose_samples(xd: &[f32], a: usize, b: usize) -> Vec<f32> {
    // SAFETY: sample `s` has `a * b` elements; `(i, j)` runs over all of
    // `[0, a) x [0, b)`, so `j * a + i` hits each of them.
    unsafe {
        build_chunks(
            xd.len(),
            a * b,
            xd.len(),
            #[inline(always)]
            |s, o| {
                let xs = &xd[s * a * b..(s + 1) * a * b];
                for (i, row) in xs.chunks_exact(b).enumerate() {
                    for (j, &v) in row.iter().enumerate() {
                        o[j * a + i].write(v);
                    }
                }
            },
        )
    }
}

/// `[N, C, H, W] -> [N, H*W, C]` (pixels as tokens).
pub fn to_tokens(x: &CpuTensor) -> Result<CpuTensor> {
    let [n, c, h, w] = image_dims(x, "to_tokens")?;
    tensor(transpose_samples(x.data(), c, h * w), &[n, h * w, c])
}

/// Validates the arguments of [`from_tokens`]; returns `[N, L, C]`.
pub(crate) fn from_tokens_check(x: &Shape, h: usize, w: usize) -> Result<[usize; 3]> {
    const OP: &str = "from_tokens";
    let d = rank_dims(x, 3, OP)?;
    let (n, l, c) = (d[0], d[1], d[2]);
    ensure_shape(h > 0 && w > 0 && h * w == l, OP, || {
        format!("{l} tokens do not form a {h}x{w} image")
    })?;
    Ok([n, l, c])
}

/// `[N, H*W, C] -> [N, C, H, W]` (inverse of [`to_tokens`]).
pub fn from_tokens(x: &CpuTensor, h: usize, w: usize) -> Result<CpuTensor> {
    let [n, l, c] = from_tokens_check(x.shape(), h, w)?;
    tensor(transpose_samples(x.data(), l, c), &[n, c, h, w])
}

/// Validates attention inputs; returns `(N, L, C)`.
fn attention_dims(
    q: &CpuTensor,
    k: &CpuTensor,
    v: &CpuTensor,
    op: &'static str,
) -> Result<(usize, usize, usize)> {
    attention_check(q.shape(), k.shape(), v.shape(), op)
}

/// Validates the shapes of attention's `q`, `k`, `v`; returns `(N, L, C)`.
pub(crate) fn attention_check(
    q: &Shape,
    k: &Shape,
    v: &Shape,
    op: &'static str,
) -> Result<(usize, usize, usize)> {
    let d = rank_dims(q, 3, op)?;
    rank_dims(k, 3, op)?;
    rank_dims(v, 3, op)?;
    check_same_shape(op, q, k)?;
    check_same_shape(op, q, v)?;
    Ok((d[0], d[1], d[2]))
}

/// `<a, b>` in `f32` over [`LANES`] independent accumulators (vectorisable).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut ai = a.chunks_exact(LANES);
    let mut bi = b.chunks_exact(LANES);
    for (ac, bc) in (&mut ai).zip(&mut bi) {
        for k in 0..LANES {
            acc[k] += ac[k] * bc[k];
        }
    }
    for (k, (x, y)) in ai.remainder().iter().zip(bi.remainder()).enumerate() {
        acc[k] += x * y;
    }
    acc.iter().sum()
}

/// `y += alpha x`.
#[inline(always)]
fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

/// The row-softmax attention weights `P = softmax(q k^T / sqrt(C))` of one
/// sample, `[L, L]` (max-subtracted, so stable for large logits).
#[inline(always)]
fn attention_weights(q: &[f32], k: &[f32], l: usize, c: usize) -> Vec<f32> {
    let scale = 1.0 / (c as f32).sqrt();
    let mut p = vec![0.0f32; l * l];
    for (qi, prow) in q.chunks_exact(c).zip(p.chunks_exact_mut(l)) {
        let mut max = f32::NEG_INFINITY;
        for (pj, kj) in prow.iter_mut().zip(k.chunks_exact(c)) {
            *pj = dot(qi, kj) * scale;
            max = max.max(*pj);
        }
        let mut sum = 0.0f32;
        for pj in prow.iter_mut() {
            *pj = math::exp(*pj - max);
            sum += *pj;
        }
        let inv = 1.0 / sum;
        prow.iter_mut().for_each(|pj| *pj *= inv);
    }
    p
}

/// Scaled dot-product attention `softmax(q k^T / sqrt(C)) v` per sample,
/// `q, k, v [N, L, C]`.
pub fn attention(q: &CpuTensor, k: &CpuTensor, v: &CpuTensor) -> Result<CpuTensor> {
    let (n, l, c) = attention_dims(q, k, v, "attention")?;
    let s = l * c;
    let (qd, kd, vd) = (q.data(), k.data(), v.data());
    let mut out = zeros(qd.len());
    for_chunks(
        &mut out,
        s,
        2 * l * s,
        #[inline(always)]
        |b, o| {
            let r = b * s..(b + 1) * s;
            let p = attention_weights(&qd[r.clone()], &kd[r.clone()], l, c);
            let vs = &vd[r];
            for (orow, prow) in o.chunks_exact_mut(c).zip(p.chunks_exact(l)) {
                for (&pj, vj) in prow.iter().zip(vs.chunks_exact(c)) {
                    axpy(pj, vj, orow);
                }
            }
        },
    );
    tensor(out, &[n, l, c])
}

/// Backward of [`attention`]: `(dq, dk, dv)` for the output gradient `dy`
/// (the attention weights are recomputed). With `P` the weights and
/// `dS = P ⊙ (dy v^T - rowsum(P ⊙ dy v^T))`: `dv = P^T dy`,
/// `dq = dS k / sqrt(C)`, `dk = dS^T q / sqrt(C)`.
pub fn attention_backward(
    q: &CpuTensor,
    k: &CpuTensor,
    v: &CpuTensor,
    dy: &CpuTensor,
) -> Result<(CpuTensor, CpuTensor, CpuTensor)> {
    const OP: &str = "attention_backward";
    let (n, l, c) = attention_dims(q, k, v, OP)?;
    same_shape(OP, q, dy)?;
    let s = l * c;
    let scale = 1.0 / (c as f32).sqrt();
    let (qd, kd, vd, dyd) = (q.data(), k.data(), v.data(), dy.data());
    let mut dq = zeros(qd.len());
    let mut dk = zeros(qd.len());
    let mut dv = zeros(qd.len());
    let body = closure(
        #[inline(always)]
        |b: usize, dqs: &mut [f32], dks: &mut [f32], dvs: &mut [f32]| {
            let r = b * s..(b + 1) * s;
            let (qs, ks, vs, dys) = (&qd[r.clone()], &kd[r.clone()], &vd[r.clone()], &dyd[r]);
            let p = attention_weights(qs, ks, l, c);
            let mut ds = vec![0.0f32; l];
            for (i, (prow, dyi)) in p.chunks_exact(l).zip(dys.chunks_exact(c)).enumerate() {
                // dP_ij = <dy_i, v_j>, then dS_ij = P_ij (dP_ij - sum_j P_ij dP_ij) / sqrt(C).
                let mut rowsum = 0.0f32;
                for ((d, &pij), vj) in ds.iter_mut().zip(prow).zip(vs.chunks_exact(c)) {
                    *d = dot(dyi, vj);
                    rowsum += pij * *d;
                }
                for (d, &pij) in ds.iter_mut().zip(prow) {
                    *d = pij * (*d - rowsum) * scale;
                }
                let qi = &qs[i * c..(i + 1) * c];
                let dqi = &mut dqs[i * c..(i + 1) * c];
                for (((&dsij, &pij), kj), (dkj, dvj)) in ds
                    .iter()
                    .zip(prow)
                    .zip(ks.chunks_exact(c))
                    .zip(dks.chunks_exact_mut(c).zip(dvs.chunks_exact_mut(c)))
                {
                    axpy(dsij, kj, dqi);
                    axpy(dsij, qi, dkj);
                    axpy(pij, dyi, dvj);
                }
            }
        },
    );
    if 4 * l * qd.len() >= PAR_MIN_WORK && n > 1 {
        dq.par_chunks_mut(s)
            .zip(dk.par_chunks_mut(s))
            .zip(dv.par_chunks_mut(s))
            .enumerate()
            .for_each(|(b, ((a, bk), cv))| {
                simd(
                    #[inline(always)]
                    || body(b, a, bk, cv),
                )
            });
    } else {
        dq.chunks_mut(s)
            .zip(dk.chunks_mut(s))
            .zip(dv.chunks_mut(s))
            .enumerate()
            .for_each(|(b, ((a, bk), cv))| {
                simd(
                    #[inline(always)]
                    || body(b, a, bk, cv),
                )
            });
    }
    let d = [n, l, c];
    Ok((tensor(dq, &d)?, tensor(dk, &d)?, tensor(dv, &d)?))
}

/// Checks dropout's drop probability `p` lies in `[0, 1)`.
pub(crate) fn dropout_check(p: f32) -> Result<()> {
    if p.is_finite() && (0.0..1.0).contains(&p) {
        Ok(())
    } else {
        Err(NetError::Config {
            field: "dropout.p",
            value: p.to_string(),
            reason: "the drop probability must lie in [0, 1)".into(),
        })
    }
}

/// The integer form of dropout's test `u32_to_unit_f32(bits) < p`: element
/// dropped iff `bits >> 9 < t`. With `m = bits >> 9`, the uniform is
/// `(m + 0.5) / 2^23` (exact), so the test is `m + 0.5 < p·2^23`, i.e.
/// `m < ceil(p·2^23 - 0.5)` for integer `m`; every step here is exact in
/// `f64`, so the two tests agree for every `bits` (the wgpu kernel keeps the
/// float form; the masks are compared bit for bit in the tests).
fn drop_threshold(p: f32) -> u32 {
    (f64::from(p) * 8_388_608.0 - 0.5).ceil().max(0.0) as u32
}

/// Elements per parallel dropout chunk (a multiple of 32: eight Philox blocks of 4).
const DROPOUT_CHUNK: usize = 1 << 14;

/// Inverted dropout with drop probability `p` in `[0, 1)`: element `i` is
/// zeroed when its uniform from `key` (as [`NoiseKey::fill_uniform`] gives it)
/// is `< p`, the others scaled by `1/(1-p)`. `p = 0` returns `x` unchanged.
/// Applied to `dy` with the same key, it is also the backward pass.
pub fn dropout(x: &CpuTensor, p: f32, key: NoiseKey) -> Result<CpuTensor> {
    dropout_check(p)?;
    if p == 0.0 {
        return Ok(x.clone());
    }
    let keep_scale = 1.0 / (1.0 - p);
    let t = drop_threshold(p);
    let xd = x.data();
    let apply = |bits: u32, xv: f32| if bits >> 9 < t { 0.0 } else { xv * keep_scale };
    // Element i's uniform is lane i % 4 of Philox block i / 4, exactly as
    // `NoiseKey::fill_uniform` lays the stream out; chunks start on block
    // boundaries so they can be generated independently, eight blocks
    // (32 elements) at a time.
    // SAFETY: each chunk is zipped with the input slice of its length, in
    // pieces of 32 and then of (at most) 4, both sides cut alike.
    let out = unsafe {
        build_chunks(
            xd.len(),
            DROPOUT_CHUNK,
            xd.len(),
            #[inline(always)]
            |ci, o| {
                let start = ci * DROPOUT_CHUNK;
                let xs = &xd[start..start + o.len()];
                let done = o.len() / 32 * 32;
                let mut oi = o.chunks_exact_mut(32);
                let mut xi = xs.chunks_exact(32);
                for (bi, (ob, xb)) in (&mut oi).zip(&mut xi).enumerate() {
                    let w = key.blocks8((start / 4 + 8 * bi) as u64);
                    for (e, (o, &xv)) in ob.iter_mut().zip(xb).enumerate() {
                        o.write(apply(w[e % 4][e / 4], xv));
                    }
                }
                for (bi, (ob, xb)) in oi
                    .into_remainder()
                    .chunks_mut(4)
                    .zip(xi.remainder().chunks(4))
                    .enumerate()
                {
                    let bits = key.block(((start + done) / 4 + bi) as u64);
                    for ((o, &xv), &u) in ob.iter_mut().zip(xb).zip(&bits) {
                        o.write(apply(u, xv));
                    }
                }
            },
        )
    };
    tensor(out, x.shape().dims())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sde_core::rng::u32_to_unit_f32;

    /// The integer dropout test agrees with the float one for every 23-bit
    /// mantissa class next to the threshold and across the range, for
    /// probabilities including the extremes.
    #[test]
    fn drop_threshold_matches_the_float_test() {
        let ps = [
            0.0f32,
            1e-7,
            0.1,
            0.25,
            0.3,
            0.5,
            0.9,
            0.999_999_9,
            f32::from_bits(0x3f7f_ffff),
        ];
        for p in ps {
            let t = drop_threshold(p);
            let near = (t.saturating_sub(3)..t.saturating_add(3)).filter(|&m| m < 1 << 23);
            let spread = (0..1u32 << 23).step_by(4099);
            for m in near.chain(spread) {
                for low in [0u32, 1, 0x1ff] {
                    let bits = m << 9 | low;
                    assert_eq!(
                        bits >> 9 < t,
                        u32_to_unit_f32(bits) < p,
                        "p = {p}, bits = {bits:#x}, t = {t}"
                    );
                }
            }
        }
    }
}
