#![allow(clippy::unwrap_used)]
//! The wgpu convolution and linear kernels (`shaders/gemm.wgsl`) against the
//! CPU reference (`score_net::cpu::conv` through `CpuBackend`), forward and
//! backward, on random inputs of odd sizes (not multiples of the 64x64x16
//! tiles), strides 1 and 2, padding 0 and 1, kernels 1x1 and 3x3, with and
//! without bias, and a weight-gradient contraction longer than one split-K
//! chunk. The CPU backward passes have their own finite-difference tests
//! (`tests/conv_fd.rs`).
//!
//! These tests REQUIRE a wgpu adapter (see `common::gpu::gpu`); they never skip.
//!
//! Tolerance: every output is a sum of `K` products (`K` = `C_in·k·k` for
//! the forward pass, the number of `dy` terms per `dx` element, `N·H_out·W_out`
//! for `dW` and `db`, `in` or `out` or `rows` for the linear layer), which the
//! GPU adds in a different order (and with or without fused multiply-adds)
//! than the CPU's `gemm`. With random-sign terms the rounding errors of each
//! sum add up like a random walk: about `eps·sqrt(K)` times the size of the
//! partial sums, which stay below `max |cpu|` up to a small factor. So each
//! comparison allows `|gpu - cpu| <= rel · max|cpu|` with
//! `rel = 4·eps·(sqrt(K) + 1)` ([`rel_tol`]; `eps = 2^-23`), e.g. 2.1e-5 for
//! the `dW` sum over 3·28·28 = 2352 pixels and 1.9e-6 for a 1x1 convolution of
//! 1 channel. Gradient buffers start from nonzero random values, so the
//! checks also prove the kernels accumulate rather than overwrite (an
//! overwrite would be off by O(1)), and entries outside the views must come
//! back bit-identical.

mod common;

use common::gpu::{assert_close, assert_close_slices, down, gpu, up};
use common::randn;
use score_net::{Conv2dSpec, NetBackend, NetError, View};
use sde_core::{CpuBackend, CpuTensor};

/// Relative tolerance (of `max |cpu|`) for sums of `k` products; see the
/// module docs.
fn rel_tol(k: usize) -> f32 {
    4.0 * f32::EPSILON * ((k as f32).sqrt() + 1.0)
}

/// One convolution case.
#[derive(Clone, Copy, Debug)]
struct Conv {
    n: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    bias: bool,
}

/// A flat parameter buffer with the weight and bias views placed between
/// untouched entries: `[3 | W | 2 | b | 5]` (odd offsets: the kernels'
/// scalar loads), or with [`Layout::aligned`] `[4 | W | pad | b | 5]` with
/// both views on 16-byte boundaries as the parameter store places them (the
/// `vec4` loads).
struct Layout {
    len: usize,
    w: View,
    b: Option<View>,
}

impl Layout {
    fn new(wshape: &[usize], bias: Option<usize>) -> Self {
        Self::at(wshape, bias, 3, |end| end + 2)
    }

    fn aligned(wshape: &[usize], bias: Option<usize>) -> Self {
        Self::at(wshape, bias, 4, |end| end.next_multiple_of(4) + 4)
    }

    /// W at `w_at`, the bias at `b_at(end of W)`, 5 entries after the last view.
    fn at(wshape: &[usize], bias: Option<usize>, w_at: usize, b_at: fn(usize) -> usize) -> Self {
        let wn: usize = wshape.iter().product();
        let w = View::new(w_at, wshape.to_vec());
        let b = bias.map(|len| View::new(b_at(w_at + wn), [len]));
        let end = b.as_ref().map_or(w_at + wn, |b| b.offset + b.numel());
        Layout { len: end + 5, w, b }
    }

    /// Indices not covered by a view (must stay unchanged by backward).
    fn untouched(&self) -> Vec<usize> {
        (0..self.len)
            .filter(|i| !self.w.range().contains(i))
            .filter(|i| !self.b.as_ref().is_some_and(|b| b.range().contains(i)))
            .collect()
    }
}

fn check_conv(c: Conv, seed: u64) {
    check_conv_in(c, seed, false);
}

/// [`check_conv`] with the views at odd offsets or (`aligned`) on 16-byte
/// boundaries.
fn check_conv_in(c: Conv, seed: u64, aligned: bool) {
    let (cpu, g) = (CpuBackend, gpu());
    let name = format!("{c:?} (aligned views: {aligned})");
    let spec = Conv2dSpec {
        stride: c.stride,
        padding: c.pad,
    };
    let (ho, wo) = (spec.out_size(c.h, c.k), spec.out_size(c.w, c.k));
    let wshape = [c.cout, c.cin, c.k, c.k];
    let lay = if aligned {
        Layout::aligned(&wshape, c.bias.then_some(c.cout))
    } else {
        Layout::new(&wshape, c.bias.then_some(c.cout))
    };
    let params = randn(&[lay.len], seed, 0.5);
    let x = randn(&[c.n, c.cin, c.h, c.w], seed + 1, 1.0);
    let dy = randn(&[c.n, c.cout, ho, wo], seed + 2, 1.0);
    let grads0 = randn(&[lay.len], seed + 3, 1.0);
    let (xg, pg, dyg) = (up(&x), up(&params), up(&dy));

    // Forward: K = C_in·k·k products (plus the bias).
    let want = cpu
        .conv2d(&x, &params, &lay.w, lay.b.as_ref(), spec)
        .unwrap();
    let got = g.conv2d(&xg, &pg, &lay.w, lay.b.as_ref(), spec).unwrap();
    let kf = c.cin * c.k * c.k + 1;
    assert_close(&format!("{name} y"), &got, &want, rel_tol(kf), 0.0);

    // Backward.
    let mut gc = grads0.clone();
    let dx_want = cpu
        .conv2d_backward(
            &x,
            &dy,
            &params,
            &lay.w,
            lay.b.as_ref(),
            spec,
            &mut gc,
            true,
        )
        .unwrap()
        .unwrap();
    let mut gg = up(&grads0);
    let dx_got = g
        .conv2d_backward(&xg, &dyg, &pg, &lay.w, lay.b.as_ref(), spec, &mut gg, true)
        .unwrap()
        .unwrap();
    // dx: at most C_out·k·k terms per element (fewer with stride > 1).
    assert_close(
        &format!("{name} dx"),
        &dx_got,
        &dx_want,
        rel_tol(c.cout * c.k * c.k),
        0.0,
    );
    check_grads(&name, &lay, &down(&gg), &gc, &grads0, c.n * ho * wo);

    // need_dx = false: no dx, the same parameter gradients.
    let mut gg2 = up(&grads0);
    let none = g
        .conv2d_backward(
            &xg,
            &dyg,
            &pg,
            &lay.w,
            lay.b.as_ref(),
            spec,
            &mut gg2,
            false,
        )
        .unwrap();
    assert!(none.is_none(), "{name}: need_dx = false returned dx");
    assert_eq!(
        down(&gg2),
        down(&gg),
        "{name}: need_dx = false changed dW/db"
    );
}

/// Compares the accumulated gradients `got` with the CPU's `want` on the
/// views (sums of `k` terms added to `grads0`) and checks every other entry
/// is still exactly `grads0`.
fn check_grads(
    name: &str,
    lay: &Layout,
    got: &[f32],
    want: &CpuTensor,
    grads0: &CpuTensor,
    k: usize,
) {
    let r = lay.w.range();
    assert_close_slices(
        &format!("{name} dW"),
        &got[r.clone()],
        &want.data()[r],
        rel_tol(k + 1),
        0.0,
    );
    if let Some(b) = &lay.b {
        let r = b.range();
        assert_close_slices(
            &format!("{name} db"),
            &got[r.clone()],
            &want.data()[r],
            rel_tol(k + 1),
            0.0,
        );
    }
    for i in lay.untouched() {
        assert_eq!(
            got[i].to_bits(),
            grads0.data()[i].to_bits(),
            "{name}: gradient entry {i} outside the views changed"
        );
    }
}

#[allow(clippy::too_many_arguments)]
const fn conv(
    n: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    bias: bool,
) -> Conv {
    Conv {
        n,
        cin,
        h,
        w,
        cout,
        k,
        stride,
        pad,
        bias,
    }
}

#[test]
fn conv2d_1x1_kernels_match_cpu() {
    let cases = [
        conv(1, 1, 5, 5, 1, 1, 1, 0, true),
        conv(3, 17, 9, 5, 33, 1, 1, 0, false),
        // Stride 2 with padding: the border outputs see only padding (the bias).
        conv(3, 5, 7, 9, 7, 1, 2, 1, true),
        conv(1, 3, 1, 1, 4, 1, 1, 0, true),
    ];
    for (i, c) in cases.into_iter().enumerate() {
        check_conv(c, 100 + 10 * i as u64);
    }
}

#[test]
fn conv2d_3x3_kernels_match_cpu() {
    let cases = [
        conv(3, 3, 7, 9, 4, 3, 1, 1, true),
        conv(1, 5, 9, 7, 7, 3, 2, 1, false),
        conv(3, 17, 5, 5, 33, 3, 2, 0, true),
        conv(1, 1, 5, 7, 1, 3, 1, 0, true),
        // A 1-pixel-high image: only the middle kernel row ever sees data.
        conv(3, 3, 1, 7, 7, 3, 1, 1, false),
        // Several 64-row and 64-column tiles, K = 153 over many 16-steps.
        conv(1, 17, 9, 9, 70, 3, 1, 1, true),
    ];
    for (i, c) in cases.into_iter().enumerate() {
        check_conv(c, 200 + 10 * i as u64);
    }
}

/// The dW contraction N·H_out·W_out = 3·28·28 = 2352 is longer than one
/// split-K chunk (1024): three partial products, added in order.
#[test]
fn conv2d_split_k_weight_gradient_matches_cpu() {
    check_conv(conv(3, 3, 28, 28, 4, 3, 1, 1, true), 300);
    // Stride 2 on a non-square image: 3·14·5 = 210 (one chunk) for contrast.
    check_conv(conv(3, 5, 28, 9, 7, 3, 2, 1, true), 310);
}

/// Split-K results are deterministic: two runs give identical bits.
#[test]
fn conv2d_backward_is_deterministic() {
    let g = gpu();
    let c = conv(3, 3, 28, 28, 4, 3, 1, 1, true);
    let spec = Conv2dSpec {
        stride: 1,
        padding: 1,
    };
    let lay = Layout::new(&[c.cout, c.cin, 3, 3], Some(c.cout));
    let params = up(&randn(&[lay.len], 1, 0.5));
    let x = up(&randn(&[3, 3, 28, 28], 2, 1.0));
    let dy = up(&randn(&[3, 4, 28, 28], 3, 1.0));
    let run = || {
        let mut gr = up(&randn(&[lay.len], 4, 1.0));
        g.conv2d_backward(
            &x,
            &dy,
            &params,
            &lay.w,
            lay.b.as_ref(),
            spec,
            &mut gr,
            false,
        )
        .unwrap();
        down(&gr)
    };
    let (a, b) = (run(), run());
    assert!(
        a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()),
        "two identical backward passes differ"
    );
}

fn check_linear(xdims: &[usize], out: usize, bias: bool, seed: u64) {
    check_linear_in(xdims, out, bias, seed, false);
}

/// [`check_linear`] with the views at odd offsets or (`aligned`) on 16-byte
/// boundaries.
fn check_linear_in(xdims: &[usize], out: usize, bias: bool, seed: u64, aligned: bool) {
    let (cpu, g) = (CpuBackend, gpu());
    let inp = *xdims.last().unwrap();
    let rows: usize = xdims[..xdims.len() - 1].iter().product();
    let name = format!("linear {xdims:?} -> {out} (bias {bias}, aligned views {aligned})");
    let lay = if aligned {
        Layout::aligned(&[out, inp], bias.then_some(out))
    } else {
        Layout::new(&[out, inp], bias.then_some(out))
    };
    let params = randn(&[lay.len], seed, 0.5);
    let x = randn(xdims, seed + 1, 1.0);
    let mut ydims = xdims.to_vec();
    *ydims.last_mut().unwrap() = out;
    let dy = randn(&ydims, seed + 2, 1.0);
    let grads0 = randn(&[lay.len], seed + 3, 1.0);
    let (xg, pg, dyg) = (up(&x), up(&params), up(&dy));

    let want = cpu.linear(&x, &params, &lay.w, lay.b.as_ref()).unwrap();
    let got = g.linear(&xg, &pg, &lay.w, lay.b.as_ref()).unwrap();
    assert_close(&format!("{name} y"), &got, &want, rel_tol(inp + 1), 0.0);

    let mut gc = grads0.clone();
    let dx_want = cpu
        .linear_backward(&x, &dy, &params, &lay.w, lay.b.as_ref(), &mut gc, true)
        .unwrap()
        .unwrap();
    let mut gg = up(&grads0);
    let dx_got = g
        .linear_backward(&xg, &dyg, &pg, &lay.w, lay.b.as_ref(), &mut gg, true)
        .unwrap()
        .unwrap();
    assert_close(&format!("{name} dx"), &dx_got, &dx_want, rel_tol(out), 0.0);
    check_grads(&name, &lay, &down(&gg), &gc, &grads0, rows);

    let mut gg2 = up(&grads0);
    let none = g
        .linear_backward(&xg, &dyg, &pg, &lay.w, lay.b.as_ref(), &mut gg2, false)
        .unwrap();
    assert!(none.is_none(), "{name}: need_dx = false returned dx");
    assert_eq!(
        down(&gg2),
        down(&gg),
        "{name}: need_dx = false changed dW/db"
    );
}

#[test]
fn linear_matches_cpu() {
    check_linear(&[1, 1], 1, true, 400);
    check_linear(&[3, 5], 4, false, 410);
    check_linear(&[2, 3, 17], 33, true, 420);
    // Several tiles in every dimension.
    check_linear(&[70, 65], 67, true, 430);
}

/// rows = 1200 > 1024: the dW product is split into two chunks.
#[test]
fn linear_split_k_weight_gradient_matches_cpu() {
    check_linear(&[2, 600, 3], 5, true, 500);
}

/// Views on 16-byte boundaries (as `ParamStore` lays them out) and sizes
/// that are multiples of 4 send the operands through the kernels' `vec4`
/// loads: the convolution weight along `C_in·k·k` (forward), `dy` along the
/// pixels (weight gradient), and `x` / `dy` themselves for 1x1 stride-1
/// convolutions (forward, `dx`, weight gradient along the pixels, split-K
/// included). The same CPU agreement as the scalar paths.
#[test]
fn conv2d_vec4_loads_match_cpu() {
    let cases = [
        // K = 72: weight vec4s, 6x6 = 36 pixels: dy vec4s in dW.
        conv(2, 8, 6, 6, 12, 3, 1, 1, true),
        // 1x1 on 4x5 planes: x, dy vec4s in every pass; C_out = 70 spans two M tiles.
        conv(3, 8, 4, 5, 70, 1, 1, 0, true),
        // 1x1 with dW's contraction 2·784 = 1568 > 1024: split-K on vec4s.
        conv(2, 4, 28, 28, 8, 1, 1, 0, false),
        // Stride 2: weight vec4s (K = 108), gathered x, 7x7 = 49-pixel dy (scalar).
        conv(1, 12, 14, 14, 20, 3, 2, 1, true),
        // Aligned views but C_in·k·k = 27: the weight falls back to scalars.
        conv(2, 3, 8, 8, 16, 3, 1, 1, true),
    ];
    for (i, c) in cases.into_iter().enumerate() {
        check_conv_in(c, 600 + 10 * i as u64, true);
    }
}

/// Aligned views and row lengths that are multiples of 4: `x`, `W`, `dy` and
/// `dy^T` all take the `vec4` loads (along K, N and M), across several tiles
/// and with a split-K weight gradient.
#[test]
fn linear_vec4_loads_match_cpu() {
    check_linear_in(&[3, 8], 12, true, 700, true);
    check_linear_in(&[70, 68], 72, true, 710, true);
    check_linear_in(&[2, 600, 4], 8, true, 720, true);
    // in = 6: x and W rows are not 16-byte aligned (scalar), dy's are.
    check_linear_in(&[5, 6], 8, false, 730, true);
}

/// Asserts both backends fail, with the same variant and
/// the same message.
fn same_error<A: std::fmt::Debug, B: std::fmt::Debug>(
    what: &str,
    cpu: Result<A, NetError>,
    gpu: Result<B, NetError>,
) {
    let (c, g) = match (cpu, gpu) {
        (Err(c), Err(g)) => (c, g),
        (c, g) => panic!("{what}: expected errors on both backends, got {c:?} and {g:?}"),
    };
    assert_eq!(
        std::mem::discriminant(&c),
        std::mem::discriminant(&g),
        "{what}: CPU {c:?} vs GPU {g:?}"
    );
    assert_eq!(c.to_string(), g.to_string(), "{what}");
}

#[test]
fn conv2d_errors_match_cpu() {
    let (cpu, g) = (CpuBackend, gpu());
    let spec = Conv2dSpec {
        stride: 1,
        padding: 1,
    };
    let params = randn(&[60], 1, 1.0);
    let x = randn(&[2, 3, 5, 5], 2, 1.0);
    let dy = randn(&[2, 2, 5, 5], 3, 1.0);
    let (pg, xg, dyg) = (up(&params), up(&x), up(&dy));
    let w = View::new(0, [2, 3, 3, 3]);
    let b = View::new(54, [2]);

    // A weight view past the end of the buffer.
    let far = View::new(40, [2, 3, 3, 3]);
    let e = g.conv2d(&xg, &pg, &far, None, spec);
    assert!(matches!(e, Err(NetError::View { .. })), "{e:?}");
    same_error(
        "view past the end",
        cpu.conv2d(&x, &params, &far, None, spec),
        e,
    );
    let far_b = View::new(59, [2]);
    same_error(
        "bias view past the end",
        cpu.conv2d(&x, &params, &w, Some(&far_b), spec),
        g.conv2d(&xg, &pg, &w, Some(&far_b), spec),
    );
    // Shape and configuration errors come from the shared validation.
    let cases: Vec<(&str, CpuTensor, View, Option<View>, Conv2dSpec)> = vec![
        (
            "channel mismatch",
            randn(&[2, 4, 5, 5], 4, 1.0),
            w.clone(),
            None,
            spec,
        ),
        (
            "rank 3 input",
            randn(&[2, 3, 5], 5, 1.0),
            w.clone(),
            None,
            spec,
        ),
        (
            "non-square kernel",
            x.clone(),
            View::new(0, [2, 3, 3, 2]),
            None,
            spec,
        ),
        (
            "bias shape",
            x.clone(),
            w.clone(),
            Some(View::new(54, [3])),
            spec,
        ),
        (
            "kernel larger than the input",
            x.clone(),
            w.clone(),
            None,
            Conv2dSpec {
                stride: 1,
                padding: 0,
            },
        ),
        (
            "stride 0",
            x.clone(),
            w.clone(),
            None,
            Conv2dSpec {
                stride: 0,
                padding: 1,
            },
        ),
    ];
    let small = randn(&[1, 3, 2, 2], 6, 1.0);
    for (what, xc, wv, bv, sp) in cases {
        let xc = if what == "kernel larger than the input" {
            small.clone()
        } else {
            xc
        };
        same_error(
            what,
            cpu.conv2d(&xc, &params, &wv, bv.as_ref(), sp),
            g.conv2d(&up(&xc), &pg, &wv, bv.as_ref(), sp),
        );
    }
    // Backward: a wrong dy shape, a gradient buffer of the wrong size.
    let bad_dy = randn(&[2, 2, 4, 5], 7, 1.0);
    let mut gc = params.clone();
    let mut gg = up(&params);
    same_error(
        "dy shape",
        cpu.conv2d_backward(&x, &bad_dy, &params, &w, Some(&b), spec, &mut gc, true),
        g.conv2d_backward(&xg, &up(&bad_dy), &pg, &w, Some(&b), spec, &mut gg, true),
    );
    let mut gc = randn(&[59], 8, 1.0);
    let mut gg = up(&gc);
    same_error(
        "gradient buffer size",
        cpu.conv2d_backward(&x, &dy, &params, &w, Some(&b), spec, &mut gc, true),
        g.conv2d_backward(&xg, &dyg, &pg, &w, Some(&b), spec, &mut gg, true),
    );
    let mut gc = params.clone();
    let mut gg = up(&params);
    same_error(
        "backward view past the end",
        cpu.conv2d_backward(&x, &dy, &params, &far, None, spec, &mut gc, true),
        g.conv2d_backward(&xg, &dyg, &pg, &far, None, spec, &mut gg, true),
    );
}

#[test]
fn linear_errors_match_cpu() {
    let (cpu, g) = (CpuBackend, gpu());
    let params = randn(&[30], 1, 1.0);
    let x = randn(&[3, 5], 2, 1.0);
    let dy = randn(&[3, 4], 3, 1.0);
    let (pg, xg, dyg) = (up(&params), up(&x), up(&dy));
    let w = View::new(0, [4, 5]);
    let b = View::new(20, [4]);

    let far = View::new(15, [4, 5]);
    let e = g.linear(&xg, &pg, &far, None);
    assert!(matches!(e, Err(NetError::View { .. })), "{e:?}");
    same_error("view past the end", cpu.linear(&x, &params, &far, None), e);
    let cases: Vec<(&str, CpuTensor, View, Option<View>)> = vec![
        ("rank 1 input", randn(&[5], 4, 1.0), w.clone(), None),
        ("feature mismatch", randn(&[3, 6], 5, 1.0), w.clone(), None),
        ("weight rank", x.clone(), View::new(0, [4, 5, 1]), None),
        ("bias shape", x.clone(), w.clone(), Some(View::new(20, [5]))),
    ];
    for (what, xc, wv, bv) in cases {
        same_error(
            what,
            cpu.linear(&xc, &params, &wv, bv.as_ref()),
            g.linear(&up(&xc), &pg, &wv, bv.as_ref()),
        );
    }
    let bad_dy = randn(&[3, 5], 6, 1.0);
    let mut gc = params.clone();
    let mut gg = up(&params);
    same_error(
        "dy shape",
        cpu.linear_backward(&x, &bad_dy, &params, &w, Some(&b), &mut gc, true),
        g.linear_backward(&xg, &up(&bad_dy), &pg, &w, Some(&b), &mut gg, true),
    );
    let mut gc = randn(&[31], 7, 1.0);
    let mut gg = up(&gc);
    same_error(
        "gradient buffer size",
        cpu.linear_backward(&x, &dy, &params, &w, Some(&b), &mut gc, true),
        g.linear_backward(&xg, &dyg, &pg, &w, Some(&b), &mut gg, true),
    );
    let far_b = View::new(28, [4]);
    let mut gc = params.clone();
    let mut gg = up(&params);
    same_error(
        "backward bias view past the end",
        cpu.linear_backward(&x, &dy, &params, &w, Some(&far_b), &mut gc, true),
        g.linear_backward(&xg, &dyg, &pg, &w, Some(&far_b), &mut gg, true),
    );
}
