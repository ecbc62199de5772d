#![allow(clippy::unwrap_used)]
//! The non-GEMM `NetBackend` ops of the wgpu backend (`shaders/net_ops.wgsl`,
//! dropout in `shaders/rng.wgsl`) against the CPU reference
//! (`score_net::cpu::ops`), forward and backward, on random inputs of several
//! shapes (odd sizes, batch 1 and 3).
//!
//! These tests REQUIRE a wgpu adapter (CI: Mesa llvmpipe with
//! `WGPU_BACKEND=vulkan`); without one they fail, they never skip.
//!
//! Tolerances (`|gpu - cpu| <= rel * max|cpu| + abs`, see `common::gpu`):
//! - bit-exact: up-sampling, pooling and their backwards (the kernels add the
//!   four block elements in the CPU's order and scale by the same power of
//!   two), concatenation, splitting, channel bias, token layout, dropout
//!   (the same Philox uniforms and the same `f32` factor `1/(1-p)`);
//! - SiLU and its backward: rel 1e-6, abs 1e-7 (the device's `exp` may differ
//!   from Rust's by an ulp or two, the rest follows the CPU's order; llvmpipe
//!   measured: up to 2.3e-7 relative, a few ulps of the backward's product);
//! - `sum_spatial`: rel 1e-6 (a workgroup tree sum in f32 of at most 84
//!   terms, 667 in the large case with rel 4e-6, against the CPU's f64 sum:
//!   a few ulps of the largest partial sum; measured about 1.2e-7);
//! - group norm forward, `dx` and the parameter gradients: rel 5e-6, abs 1e-7
//!   (mean, variance and the backward's sums are f32 tree reductions over up
//!   to 32 * 84 elements where the CPU works in f64; measured below 1e-6);
//! - attention forward and backward: rel 1e-5, abs 1e-6 (f32 dot products
//!   in the CPU's order, but the softmax and `rowsum(P dP)` sums are tree
//!   sums and the device's `exp` differs by ulps; `dS = P (dP - rowsum)`
//!   cancels when one weight dominates a row, in f32 on both backends:
//!   measured up to 2e-6 relative on random inputs (`dq`, L = 300) and 4e-6
//!   for self-attention, whose rows are dominated by the diagonal).
//!
//! Parameter-gradient tests pre-fill `grads` with nonzero random values (the
//! backward must add, not overwrite) and check that entries outside the
//! views are bit-for-bit unchanged. Errors (wrong shapes, views past the
//! buffer, bad `groups`, `eps` or `p`) must be the CPU's typed errors.

mod common;

use std::time::Instant;

use common::gpu::{assert_close, assert_close_slices, down, gpu, up};
use common::randn;
use score_net::{NetBackend, NetError, View};
use sde_core::{CpuBackend, CpuTensor, NoiseKey, Shape};

const CPU: CpuBackend = CpuBackend;

/// Group norm tolerance (relative, absolute).
const GN_TOL: (f32, f32) = (5e-6, 1e-7);
/// Attention tolerance (relative, absolute).
const ATTN_TOL: (f32, f32) = (1e-5, 1e-6);
/// SiLU tolerance (relative, absolute).
const SILU_TOL: (f32, f32) = (1e-6, 1e-7);
/// `sum_spatial` tolerance (relative, absolute).
const SUM_TOL: (f32, f32) = (1e-6, 0.0);

/// Image shapes `[N, C, H, W]` covering batch 1 and 3, C 1/3/5/32 and odd,
/// non-square pixels.
const IMAGES: &[[usize; 4]] = &[
    [1, 1, 1, 1],
    [3, 3, 7, 6],
    [1, 5, 2, 14],
    [3, 32, 7, 7],
    [1, 32, 6, 14],
    [3, 5, 1, 2],
];

/// Image shapes with even H and W (pooling, up-sampling backward).
const EVEN_IMAGES: &[[usize; 4]] = &[[1, 1, 2, 2], [3, 3, 6, 14], [1, 5, 14, 2], [3, 32, 6, 6]];

/// `(N, L, C)` token shapes for attention.
/// (L = 130: a partial last 16-tile; C = 40: three K tiles, the last partial;
/// L = 300: softmax rows longer than the 256 threads of a workgroup.)
const TOKENS: &[[usize; 3]] = &[
    [1, 1, 3],
    [3, 7, 3],
    [1, 49, 16],
    [3, 64, 16],
    [1, 64, 3],
    [1, 130, 40],
    [1, 300, 3],
];

/// Both backends' results must be the same error: same variant and the same
/// message.
fn assert_same_error<T: std::fmt::Debug, U: std::fmt::Debug>(
    what: &str,
    got: score_net::Result<T>,
    want: score_net::Result<U>,
) {
    let got = got.expect_err(&format!("{what}: the GPU accepted it"));
    let want = want.expect_err(&format!("{what}: the CPU accepted it"));
    match (&got, &want) {
        (NetError::Shape { .. }, NetError::Shape { .. })
        | (NetError::Config { .. }, NetError::Config { .. })
        | (NetError::View { .. }, NetError::View { .. }) => {
            assert_eq!(got.to_string(), want.to_string(), "{what}");
        }
        _ => panic!("{what}: GPU error {got:?}, CPU error {want:?}"),
    }
}

/// Asserts bit-identical results.
fn assert_exact(name: &str, got: &score_net::gpu::WgpuTensor, want: &CpuTensor) {
    assert_eq!(got.shape(), want.shape(), "{name}: shape");
    let g = down(got);
    for (i, (a, b)) in g.iter().zip(want.data()).enumerate() {
        assert_eq!(a.to_bits(), b.to_bits(), "{name}: element {i}: {a} vs {b}");
    }
}

/// A flat parameter buffer of `len` random values with `gamma [c]` at offset
/// 3 (around 1) and `beta [c]` right after it; returns (params, gamma, beta).
fn norm_params(c: usize, seed: u64) -> (CpuTensor, View, View) {
    let len = 2 * c + 7;
    let mut p = randn(&[len], seed, 0.5).into_vec();
    p[3..3 + c].iter_mut().for_each(|g| *g += 1.0);
    let params = CpuTensor::new(p, Shape::new(vec![len]).unwrap()).unwrap();
    (params, View::new(3, [c]), View::new(3 + c, [c]))
}

/// The group counts to try for `c` channels: 1, 2 and 8 where they divide `c`.
fn groups_for(c: usize) -> Vec<usize> {
    [1, 2, 8].into_iter().filter(|g| c % g == 0).collect()
}

fn timed(name: &str, f: impl FnOnce()) {
    let t = Instant::now();
    f();
    eprintln!("{name}: {:.2} s", t.elapsed().as_secs_f64());
}

#[test]
fn group_norm_forward_matches_cpu() {
    timed("group_norm", || {
        for (si, &d) in IMAGES.iter().enumerate() {
            for groups in groups_for(d[1]) {
                let name = format!("group_norm {d:?} groups {groups}");
                // An offset and scale far from 0 and 1: the statistics must be robust.
                let mut x = randn(&d, 10 + si as u64, 2.0).into_vec();
                x.iter_mut().for_each(|v| *v += 3.0);
                let x = CpuTensor::new(x, Shape::new(d.to_vec()).unwrap()).unwrap();
                let (params, gamma, beta) = norm_params(d[1], 20 + si as u64);
                let want = CPU
                    .group_norm(&x, &params, &gamma, &beta, groups, 1e-5)
                    .unwrap();
                let got = gpu()
                    .group_norm(&up(&x), &up(&params), &gamma, &beta, groups, 1e-5)
                    .unwrap();
                assert_close(&name, &got, &want, GN_TOL.0, GN_TOL.1);
            }
        }
    });
}

#[test]
fn group_norm_backward_matches_cpu_and_accumulates() {
    timed("group_norm_backward", || {
        for (si, &d) in IMAGES.iter().enumerate() {
            for groups in groups_for(d[1]) {
                let name = format!("group_norm_backward {d:?} groups {groups}");
                let x = randn(&d, 30 + si as u64, 1.5);
                let dy = randn(&d, 40 + si as u64, 1.0);
                let (params, gamma, beta) = norm_params(d[1], 50 + si as u64);
                let grads0 = randn(&[params.data().len()], 60 + si as u64, 1.0);
                let mut want_g = grads0.clone();
                let want = CPU
                    .group_norm_backward(&x, &dy, &params, &gamma, &beta, groups, 1e-5, &mut want_g)
                    .unwrap();
                let mut got_g = up(&grads0);
                let got = gpu()
                    .group_norm_backward(
                        &up(&x),
                        &up(&dy),
                        &up(&params),
                        &gamma,
                        &beta,
                        groups,
                        1e-5,
                        &mut got_g,
                    )
                    .unwrap();
                assert_close(&format!("{name} dx"), &got, &want, GN_TOL.0, GN_TOL.1);
                let g = down(&got_g);
                for (view, what) in [(&gamma, "dgamma"), (&beta, "dbeta")] {
                    // Compare the accumulated gradient minus its starting
                    // value, so the tolerance scales with the gradient itself.
                    let r = view.range();
                    let delta = |v: &[f32]| -> Vec<f32> {
                        v[r.clone()]
                            .iter()
                            .zip(&grads0.data()[r.clone()])
                            .map(|(a, b)| a - b)
                            .collect()
                    };
                    let (gd, wd) = (delta(&g), delta(want_g.data()));
                    // (A one-element group normalises to 0: dgamma is 0 there.)
                    if what == "dbeta" || d[1] / groups * d[2] * d[3] > 1 {
                        assert!(wd.iter().any(|v| *v != 0.0), "{name} {what}: zero gradient");
                    }
                    assert_close_slices(&format!("{name} {what}"), &gd, &wd, GN_TOL.0, GN_TOL.1);
                    assert_close_slices(
                        &format!("{name} {what} (accumulated)"),
                        &g[r.clone()],
                        &want_g.data()[r.clone()],
                        GN_TOL.0,
                        GN_TOL.1,
                    );
                }
                for (i, (a, b)) in g.iter().zip(grads0.data()).enumerate() {
                    if !gamma.range().contains(&i) && !beta.range().contains(&i) {
                        assert_eq!(
                            a.to_bits(),
                            b.to_bits(),
                            "{name}: grads[{i}] outside the views changed"
                        );
                    }
                }
            }
        }
    });
}

/// Two backward calls accumulate twice (the gradient buffer is read, not assumed zero).
#[test]
fn group_norm_backward_accumulates_across_calls() {
    let d = [3, 8, 3, 5];
    let x = randn(&d, 1, 1.0);
    let dy = randn(&d, 2, 1.0);
    let (params, gamma, beta) = norm_params(8, 3);
    let mut want_g =
        CpuTensor::new(vec![0.0; params.data().len()], params.shape().clone()).unwrap();
    let mut got_g = up(&want_g);
    let (gx, gdy, gp) = (up(&x), up(&dy), up(&params));
    for _ in 0..2 {
        CPU.group_norm_backward(&x, &dy, &params, &gamma, &beta, 2, 1e-5, &mut want_g)
            .unwrap();
        gpu()
            .group_norm_backward(&gx, &gdy, &gp, &gamma, &beta, 2, 1e-5, &mut got_g)
            .unwrap();
    }
    assert_close("grads after two calls", &got_g, &want_g, GN_TOL.0, GN_TOL.1);
}

#[test]
fn silu_forward_and_backward_match_cpu() {
    for (si, &d) in IMAGES.iter().enumerate() {
        let x = randn(&d, 70 + si as u64, 4.0);
        let dy = randn(&d, 80 + si as u64, 1.0);
        let name = format!("{d:?}");
        assert_close(
            &format!("silu {name}"),
            &gpu().silu(&up(&x)).unwrap(),
            &CPU.silu(&x).unwrap(),
            SILU_TOL.0,
            SILU_TOL.1,
        );
        assert_close(
            &format!("silu_backward {name}"),
            &gpu().silu_backward(&up(&x), &up(&dy)).unwrap(),
            &CPU.silu_backward(&x, &dy).unwrap(),
            SILU_TOL.0,
            SILU_TOL.1,
        );
    }
    // Any rank works (SiLU is elementwise), including large magnitudes.
    let x = CpuTensor::new(
        vec![-100.0, -20.0, -1.0, 0.0, 1e-8, 1.0, 20.0, 100.0],
        Shape::new(vec![2, 4]).unwrap(),
    )
    .unwrap();
    assert_close(
        "silu extremes",
        &gpu().silu(&up(&x)).unwrap(),
        &CPU.silu(&x).unwrap(),
        SILU_TOL.0,
        SILU_TOL.1,
    );
}

#[test]
fn resampling_matches_cpu_exactly() {
    for (si, &d) in IMAGES.iter().enumerate() {
        let x = randn(&d, 90 + si as u64, 1.0);
        let name = format!("{d:?}");
        assert_exact(
            &format!("upsample {name}"),
            &gpu().upsample_nearest2x(&up(&x)).unwrap(),
            &CPU.upsample_nearest2x(&x).unwrap(),
        );
        assert_exact(
            &format!("avg_pool2x_backward {name}"),
            &gpu().avg_pool2x_backward(&up(&x)).unwrap(),
            &CPU.avg_pool2x_backward(&x).unwrap(),
        );
    }
    for (si, &d) in EVEN_IMAGES.iter().enumerate() {
        let x = randn(&d, 100 + si as u64, 1.0);
        let name = format!("{d:?}");
        assert_exact(
            &format!("avg_pool2x {name}"),
            &gpu().avg_pool2x(&up(&x)).unwrap(),
            &CPU.avg_pool2x(&x).unwrap(),
        );
        assert_exact(
            &format!("upsample_backward {name}"),
            &gpu().upsample_nearest2x_backward(&up(&x)).unwrap(),
            &CPU.upsample_nearest2x_backward(&x).unwrap(),
        );
    }
}

#[test]
fn channel_ops_match_cpu_exactly() {
    for (si, &[n, c, h, w]) in IMAGES.iter().enumerate() {
        let s = si as u64;
        for cb in [1, 4] {
            let a = randn(&[n, c, h, w], 110 + s, 1.0);
            let b = randn(&[n, cb, h, w], 120 + s, 1.0);
            let name = format!("[{n}, {c}+{cb}, {h}, {w}]");
            let got = gpu().concat_channels(&up(&a), &up(&b)).unwrap();
            let want = CPU.concat_channels(&a, &b).unwrap();
            assert_exact(&format!("concat {name}"), &got, &want);
            let (ga, gb) = gpu().split_channels(&got, c).unwrap();
            let (wa, wb) = CPU.split_channels(&want, c).unwrap();
            assert_exact(&format!("split a {name}"), &ga, &wa);
            assert_exact(&format!("split b {name}"), &gb, &wb);
            assert_exact(&format!("split round trip {name}"), &ga, &a);
        }
        let x = randn(&[n, c, h, w], 130 + s, 1.0);
        let v = randn(&[n, c], 140 + s, 1.0);
        assert_exact(
            &format!("add_channel_bias {:?}", [n, c, h, w]),
            &gpu().add_channel_bias(&up(&x), &up(&v)).unwrap(),
            &CPU.add_channel_bias(&x, &v).unwrap(),
        );
        assert_close(
            &format!("sum_spatial {:?}", [n, c, h, w]),
            &gpu().sum_spatial(&up(&x)).unwrap(),
            &CPU.sum_spatial(&x).unwrap(),
            SUM_TOL.0,
            SUM_TOL.1,
        );
    }
    // More pixels than threads per workgroup: the strided loop and the tree.
    let x = randn(&[2, 3, 23, 29], 150, 1.0);
    assert_close(
        "sum_spatial [2, 3, 23, 29]",
        &gpu().sum_spatial(&up(&x)).unwrap(),
        &CPU.sum_spatial(&x).unwrap(),
        SUM_TOL.0 * 4.0,
        SUM_TOL.1,
    );
}

#[test]
fn token_layout_matches_cpu_exactly() {
    for (si, &[n, c, h, w]) in IMAGES.iter().enumerate() {
        let x = randn(&[n, c, h, w], 160 + si as u64, 1.0);
        let name = format!("{:?}", [n, c, h, w]);
        let got = gpu().image_to_tokens(&up(&x)).unwrap();
        let want = CPU.image_to_tokens(&x).unwrap();
        assert_exact(&format!("image_to_tokens {name}"), &got, &want);
        let back = gpu().tokens_to_image(&got, h, w).unwrap();
        assert_exact(
            &format!("tokens_to_image {name}"),
            &back,
            &CPU.tokens_to_image(&want, h, w).unwrap(),
        );
        assert_exact(&format!("token round trip {name}"), &back, &x);
    }
}

#[test]
fn attention_matches_cpu() {
    timed("attention", || {
        for (si, &[n, l, c]) in TOKENS.iter().enumerate() {
            let s = si as u64;
            let d = [n, l, c];
            // Scale 2 makes the logits large enough for a peaked softmax.
            let (q, k, v) = (
                randn(&d, 200 + s, 2.0),
                randn(&d, 210 + s, 2.0),
                randn(&d, 220 + s, 1.0),
            );
            let want = CPU.attention(&q, &k, &v).unwrap();
            let got = gpu().attention(&up(&q), &up(&k), &up(&v)).unwrap();
            assert_close(
                &format!("attention {d:?}"),
                &got,
                &want,
                ATTN_TOL.0,
                ATTN_TOL.1,
            );
        }
    });
}

#[test]
fn attention_backward_matches_cpu() {
    timed("attention_backward", || {
        for (si, &[n, l, c]) in TOKENS.iter().enumerate() {
            let s = si as u64;
            let d = [n, l, c];
            let (q, k, v, dy) = (
                randn(&d, 300 + s, 2.0),
                randn(&d, 310 + s, 2.0),
                randn(&d, 320 + s, 1.0),
                randn(&d, 330 + s, 1.0),
            );
            let (wq, wk, wv) = CPU.attention_backward(&q, &k, &v, &dy).unwrap();
            let (gq, gk, gv) = gpu()
                .attention_backward(&up(&q), &up(&k), &up(&v), &up(&dy))
                .unwrap();
            for (what, g, w) in [("dq", &gq, &wq), ("dk", &gk, &wk), ("dv", &gv, &wv)] {
                assert_close(
                    &format!("attention {what} {d:?}"),
                    g,
                    w,
                    ATTN_TOL.0,
                    ATTN_TOL.1,
                );
            }
        }
    });
}

/// The batch processed in chunks of samples (as when `[N, L, L]` exceeds the
/// scratch budget): chunks of 2 and 1, and of 1, must give the unchunked
/// result, so the per-chunk offsets of q, k, v, dy and the outputs are right.
#[test]
fn attention_in_batch_chunks() {
    use score_net::gpu::net::ops::{attention_backward_chunked, attention_chunked};
    let d = [3, 49, 16];
    let (q, k, v, dy) = (
        randn(&d, 600, 1.0),
        randn(&d, 610, 1.0),
        randn(&d, 620, 1.0),
        randn(&d, 630, 1.0),
    );
    let (gq, gk, gv, gdy) = (up(&q), up(&k), up(&v), up(&dy));
    let want = CPU.attention(&q, &k, &v).unwrap();
    let (wq, wk, wv) = CPU.attention_backward(&q, &k, &v, &dy).unwrap();
    let g = gpu();
    for chunk in [1, 2] {
        let got = attention_chunked(&g, &gq, &gk, &gv, Some(chunk)).unwrap();
        assert_close(
            &format!("attention chunk {chunk}"),
            &got,
            &want,
            ATTN_TOL.0,
            ATTN_TOL.1,
        );
        let (dq, dk, dv) =
            attention_backward_chunked(&g, &gq, &gk, &gv, &gdy, Some(chunk)).unwrap();
        for (what, g, w) in [("dq", &dq, &wq), ("dk", &dk, &wk), ("dv", &dv, &wv)] {
            assert_close(
                &format!("attention {what} chunk {chunk}"),
                g,
                w,
                ATTN_TOL.0,
                ATTN_TOL.1,
            );
        }
    }
}

/// Self-attention passes the same tensor as q, k and v (one buffer bound three times).
#[test]
fn attention_with_shared_inputs() {
    let x = randn(&[3, 7, 16], 400, 1.0);
    let g = up(&x);
    assert_close(
        "self-attention",
        &gpu().attention(&g, &g, &g).unwrap(),
        &CPU.attention(&x, &x, &x).unwrap(),
        ATTN_TOL.0,
        ATTN_TOL.1,
    );
    let (gq, gk, gv) = gpu().attention_backward(&g, &g, &g, &g).unwrap();
    let (wq, wk, wv) = CPU.attention_backward(&x, &x, &x, &x).unwrap();
    for (what, g, w) in [("dq", &gq, &wq), ("dk", &gk, &wk), ("dv", &gv, &wv)] {
        assert_close(
            &format!("self-attention {what}"),
            g,
            w,
            ATTN_TOL.0,
            ATTN_TOL.1,
        );
    }
}

#[test]
fn dropout_mask_is_bit_identical() {
    let key = NoiseKey::new(0xd20b, 7);
    // Lengths not a multiple of 4 (the Philox block size) included.
    for (si, d) in [
        vec![1, 1],
        vec![3, 5, 7, 2],
        vec![1, 1001],
        vec![3, 32, 6, 6],
    ]
    .into_iter()
    .enumerate()
    {
        let x = randn(&d, 500 + si as u64, 1.0);
        for p in [0.0f32, 0.1, 0.5] {
            let name = format!("dropout {d:?} p {p}");
            let want = CPU.dropout(&x, p, key).unwrap();
            let got = gpu().dropout(&up(&x), p, key).unwrap();
            assert_exact(&name, &got, &want);
            let got_b = gpu().dropout_backward(&up(&x), p, key).unwrap();
            assert_exact(
                &format!("{name} backward"),
                &got_b,
                &CPU.dropout_backward(&x, p, key).unwrap(),
            );
            if p > 0.0 && x.data().len() > 100 {
                let zeros = down(&got).iter().filter(|v| **v == 0.0).count();
                let frac = zeros as f32 / x.data().len() as f32;
                assert!((frac - p).abs() < 0.1, "{name}: dropped {frac}");
            }
        }
    }
    // Another key gives another mask.
    let x = CpuTensor::new(vec![1.0; 64], Shape::new(vec![1, 64]).unwrap()).unwrap();
    let a = down(&gpu().dropout(&up(&x), 0.5, key).unwrap());
    let b = down(
        &gpu()
            .dropout(&up(&x), 0.5, NoiseKey::new(0xd20b, 8))
            .unwrap(),
    );
    assert_ne!(a, b);
}

#[test]
fn bad_arguments_give_the_cpu_errors() {
    let g = gpu();
    let img = randn(&[2, 4, 3, 3], 1, 1.0);
    let odd = randn(&[2, 4, 3, 4], 2, 1.0);
    let tok = randn(&[2, 9, 4], 3, 1.0);
    let tok2 = randn(&[2, 9, 5], 4, 1.0);
    let (params, gamma, beta) = norm_params(4, 5);
    let (gi, go, gt, gt2, gp) = (up(&img), up(&odd), up(&tok), up(&tok2), up(&params));
    let past = View::new(params.data().len() - 2, [4]);
    let wrong = View::new(0, [3]);

    // Group norm: rank, groups, eps, view sizes, views past the buffer.
    assert_same_error(
        "group_norm rank",
        g.group_norm(&gt, &gp, &gamma, &beta, 1, 1e-5),
        CPU.group_norm(&tok, &params, &gamma, &beta, 1, 1e-5),
    );
    for groups in [0, 3] {
        assert_same_error(
            "group_norm groups",
            g.group_norm(&gi, &gp, &gamma, &beta, groups, 1e-5),
            CPU.group_norm(&img, &params, &gamma, &beta, groups, 1e-5),
        );
    }
    for eps in [-1.0, f32::NAN] {
        assert_same_error(
            "group_norm eps",
            g.group_norm(&gi, &gp, &gamma, &beta, 2, eps),
            CPU.group_norm(&img, &params, &gamma, &beta, 2, eps),
        );
    }
    assert_same_error(
        "group_norm gamma size",
        g.group_norm(&gi, &gp, &wrong, &beta, 2, 1e-5),
        CPU.group_norm(&img, &params, &wrong, &beta, 2, 1e-5),
    );
    assert_same_error(
        "group_norm beta past the buffer",
        g.group_norm(&gi, &gp, &gamma, &past, 2, 1e-5),
        CPU.group_norm(&img, &params, &gamma, &past, 2, 1e-5),
    );
    // Backward: dy shape, views past the gradient buffer (which stays untouched).
    let small = CpuTensor::new(vec![0.5; 9], Shape::new(vec![9]).unwrap()).unwrap();
    let mut cg = small.clone();
    let mut gg = up(&small);
    let in_params = View::new(0, [4]);
    let in_small = View::new(4, [4]);
    assert_same_error(
        "group_norm_backward dy",
        g.group_norm_backward(&gi, &go, &gp, &gamma, &beta, 2, 1e-5, &mut gg),
        CPU.group_norm_backward(&img, &odd, &params, &gamma, &beta, 2, 1e-5, &mut cg),
    );
    let far = View::new(8, [4]);
    assert_same_error(
        "group_norm_backward gamma past the gradients",
        g.group_norm_backward(&gi, &gi, &gp, &far, &in_small, 2, 1e-5, &mut gg),
        CPU.group_norm_backward(&img, &img, &params, &far, &in_small, 2, 1e-5, &mut cg),
    );
    assert_same_error(
        "group_norm_backward beta past the gradients",
        g.group_norm_backward(&gi, &gi, &gp, &in_params, &far, 2, 1e-5, &mut gg),
        CPU.group_norm_backward(&img, &img, &params, &in_params, &far, 2, 1e-5, &mut cg),
    );
    assert_eq!(down(&gg), small.data(), "a failed backward wrote to grads");

    // Elementwise and layout ops.
    assert_same_error(
        "silu_backward",
        g.silu_backward(&gi, &go),
        CPU.silu_backward(&img, &odd),
    );
    assert_same_error(
        "upsample rank",
        g.upsample_nearest2x(&gt),
        CPU.upsample_nearest2x(&tok),
    );
    assert_same_error("avg_pool2x odd", g.avg_pool2x(&gi), CPU.avg_pool2x(&img));
    assert_same_error(
        "avg_pool2x odd width",
        g.avg_pool2x(&go),
        CPU.avg_pool2x(&odd),
    );
    assert_same_error(
        "upsample_backward odd",
        g.upsample_nearest2x_backward(&gi),
        CPU.upsample_nearest2x_backward(&img),
    );
    assert_same_error(
        "avg_pool2x_backward rank",
        g.avg_pool2x_backward(&gt),
        CPU.avg_pool2x_backward(&tok),
    );
    assert_same_error(
        "concat",
        g.concat_channels(&gi, &go),
        CPU.concat_channels(&img, &odd),
    );
    assert_same_error(
        "concat rank",
        g.concat_channels(&gi, &gt),
        CPU.concat_channels(&img, &tok),
    );
    for ca in [0, 4, 5] {
        assert_same_error(
            "split",
            g.split_channels(&gi, ca),
            CPU.split_channels(&img, ca),
        );
    }
    let v_bad = randn(&[2, 3], 6, 1.0);
    assert_same_error(
        "add_channel_bias",
        g.add_channel_bias(&gi, &up(&v_bad)),
        CPU.add_channel_bias(&img, &v_bad),
    );
    assert_same_error(
        "add_channel_bias rank",
        g.add_channel_bias(&gi, &gi),
        CPU.add_channel_bias(&img, &img),
    );
    assert_same_error("sum_spatial", g.sum_spatial(&gt), CPU.sum_spatial(&tok));
    assert_same_error(
        "image_to_tokens",
        g.image_to_tokens(&gt),
        CPU.image_to_tokens(&tok),
    );
    for (h, w) in [(2, 4), (0, 9), (3, 3)] {
        let r = (
            g.tokens_to_image(&gt, h, w),
            CPU.tokens_to_image(&tok, h, w),
        );
        if (h, w) == (3, 3) {
            assert!(r.0.is_ok() && r.1.is_ok());
        } else {
            assert_same_error("tokens_to_image", r.0, r.1);
        }
    }
    assert_same_error(
        "tokens_to_image rank",
        g.tokens_to_image(&gi, 3, 3),
        CPU.tokens_to_image(&img, 3, 3),
    );

    // Attention.
    assert_same_error(
        "attention",
        g.attention(&gt, &gt2, &gt),
        CPU.attention(&tok, &tok2, &tok),
    );
    assert_same_error(
        "attention rank",
        g.attention(&gi, &gi, &gi),
        CPU.attention(&img, &img, &img),
    );
    assert_same_error(
        "attention_backward dy",
        g.attention_backward(&gt, &gt, &gt, &gt2),
        CPU.attention_backward(&tok, &tok, &tok, &tok2),
    );

    // Dropout.
    for p in [1.0, -0.1, f32::NAN, f32::INFINITY] {
        let key = NoiseKey::new(1, 2);
        assert_same_error(
            "dropout p",
            g.dropout(&gi, p, key),
            CPU.dropout(&img, p, key),
        );
        assert_same_error(
            "dropout_backward p",
            g.dropout_backward(&gi, p, key),
            CPU.dropout_backward(&img, p, key),
        );
    }
}
