//! Tests of the CPU non-GEMM ops (`score_net::cpu::ops`, reached through the
//! `NetBackend` impl of `CpuBackend`): every forward against a naive `f64`
//! reference on random odd-sized inputs, every backward against central
//! finite differences of `L(x) = <op(x), dy>` for a random `dy`, plus dropout
//! statistics, batch-splitting consistency of the threaded paths, and typed
//! errors for bad shapes, views and arguments.
//!
//! Finite differences use `h = 1e-2` and `tol = 1e-2` of the gradient's
//! scale (see `common::check_grad`): the ops are smooth on O(1) inputs, so the
//! `O(h^2)` truncation error is ~1e-4 relative, and the f32 round-off of a
//! loss of magnitude ~10 divided by `2h` is ~1e-5, both far below the
//! tolerance, while a wrong formula (a missing term, factor or transpose)
//! gives O(1) errors.
#![allow(clippy::unwrap_used)]

mod common;

use common::{check_grad, dot64, randn};
use score_net::{NetBackend, NetError, View};
use sde_core::{CpuBackend, CpuTensor, NoiseKey, Shape};

const H: f32 = 1e-2;
const TOL: f64 = 1e-2;
const BE: CpuBackend = CpuBackend;

fn t(data: Vec<f32>, dims: &[usize]) -> CpuTensor {
    CpuTensor::new(data, Shape::new(dims.to_vec()).unwrap()).unwrap()
}

fn dims(x: &CpuTensor) -> Vec<usize> {
    x.shape().dims().to_vec()
}

/// Asserts `|got - want| <= tol * (1 + |want|)` elementwise.
fn assert_close(name: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (f64::from(g) - w).abs();
        assert!(
            err <= tol * (1.0 + w.abs()),
            "{name}: element {i}: got {g}, want {w} (error {err:.2e})"
        );
    }
}

fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| f64::from(v)).collect()
}

fn is_shape_err<T: std::fmt::Debug>(r: score_net::Result<T>) -> bool {
    matches!(r, Err(NetError::Shape { .. }))
}

fn is_view_err<T: std::fmt::Debug>(r: score_net::Result<T>) -> bool {
    matches!(r, Err(NetError::View { .. }))
}

// ---------------------------------------------------------------- group norm

/// Parameters for a group norm over `c` channels: `gamma` at offset 3 and
/// `beta` after a gap of 2, inside a buffer with slack at both ends (so views
/// are really used and untouched entries can be checked).
struct GnParams {
    params: CpuTensor,
    gamma: View,
    beta: View,
}

fn gn_params(c: usize, seed: u64) -> GnParams {
    let gamma = View::new(3, [c]);
    let beta = View::new(3 + c + 2, [c]);
    let len = beta.offset + c + 4;
    let mut p = randn(&[len], seed, 0.5).into_vec();
    for v in &mut p[gamma.range()] {
        *v += 1.0;
    }
    GnParams {
        params: t(p, &[len]),
        gamma,
        beta,
    }
}

fn gn_reference(x: &CpuTensor, p: &GnParams, groups: usize, eps: f64) -> Vec<f64> {
    let d = dims(x);
    let (n, c, hw) = (d[0], d[1], d[2] * d[3]);
    let cg = c / groups;
    let xd = x.data();
    let pd = p.params.data();
    let mut out = vec![0.0f64; xd.len()];
    for s in 0..n {
        for g in 0..groups {
            let idx = |ci: usize, k: usize| (s * c + g * cg + ci) * hw + k;
            let m = (cg * hw) as f64;
            let mut mean = 0.0;
            for ci in 0..cg {
                for k in 0..hw {
                    mean += f64::from(xd[idx(ci, k)]);
                }
            }
            mean /= m;
            let mut var = 0.0;
            for ci in 0..cg {
                for k in 0..hw {
                    var += (f64::from(xd[idx(ci, k)]) - mean).powi(2);
                }
            }
            var /= m;
            for ci in 0..cg {
                let ch = g * cg + ci;
                let gamma = f64::from(pd[p.gamma.offset + ch]);
                let beta = f64::from(pd[p.beta.offset + ch]);
                for k in 0..hw {
                    out[idx(ci, k)] =
                        (f64::from(xd[idx(ci, k)]) - mean) / (var + eps).sqrt() * gamma + beta;
                }
            }
        }
    }
    out
}

#[test]
fn group_norm_forward_matches_reference() {
    for (groups, shift) in [(1, 0.0), (3, 5.0), (6, -2.0)] {
        let x = randn(&[2, 6, 5, 3], 1 + groups as u64, 1.5);
        // A common offset tests the variance computation's stability.
        let x = t(x.data().iter().map(|v| v + shift).collect(), &[2, 6, 5, 3]);
        let p = gn_params(6, 11);
        let y = BE
            .group_norm(&x, &p.params, &p.gamma, &p.beta, groups, 1e-5)
            .unwrap();
        assert_eq!(dims(&y), [2, 6, 5, 3]);
        assert_close(
            "group_norm",
            y.data(),
            &gn_reference(&x, &p, groups, 1e-5),
            1e-5,
        );
    }
}

#[test]
fn group_norm_stable_for_large_mean() {
    // Mean 1e4, spread 1e-1: a one-pass E[x^2] - E[x]^2 in f32 would lose all precision.
    let x = randn(&[1, 4, 4, 4], 3, 0.1);
    let x = t(x.data().iter().map(|v| v + 1e4).collect(), &[1, 4, 4, 4]);
    let p = gn_params(4, 12);
    let y = BE
        .group_norm(&x, &p.params, &p.gamma, &p.beta, 2, 1e-6)
        .unwrap();
    // Input rounding to f32 at 1e4 (ulp ~1e-3) is ~1% of the spread, so compare loosely.
    assert_close(
        "group_norm large mean",
        y.data(),
        &gn_reference(&x, &p, 2, 1e-6),
        2e-3,
    );
}

#[test]
fn group_norm_backward_matches_finite_differences() {
    let xd = [2, 6, 5, 3];
    for groups in [1, 3, 6] {
        let x = randn(&xd, 20 + groups as u64, 1.0);
        let dy = randn(&xd, 30 + groups as u64, 1.0);
        let p = gn_params(6, 40);
        let eps = 1e-5;
        let mut grads = t(vec![0.0; p.params.data().len()], &dims(&p.params));
        let dx = BE
            .group_norm_backward(
                &x, &dy, &p.params, &p.gamma, &p.beta, groups, eps, &mut grads,
            )
            .unwrap();
        assert_eq!(dims(&dx), xd);

        let loss_x = |xs: &[f32]| {
            let y = BE
                .group_norm(
                    &t(xs.to_vec(), &xd),
                    &p.params,
                    &p.gamma,
                    &p.beta,
                    groups,
                    eps,
                )
                .unwrap();
            dot64(y.data(), dy.data())
        };
        check_grad("group_norm dx", x.data(), dx.data(), loss_x, H, TOL, 1);

        let loss_p = |ps: &[f32]| {
            let params = t(ps.to_vec(), &dims(&p.params));
            let y = BE
                .group_norm(&x, &params, &p.gamma, &p.beta, groups, eps)
                .unwrap();
            dot64(y.data(), dy.data())
        };
        // Checks dgamma, dbeta and that every other gradient entry stays 0.
        check_grad(
            "group_norm dgamma/dbeta",
            p.params.data(),
            grads.data(),
            loss_p,
            H,
            TOL,
            1,
        );
    }
}

#[test]
fn group_norm_backward_accumulates() {
    let xd = [2, 4, 3, 5];
    let x = randn(&xd, 50, 1.0);
    let dy = randn(&xd, 51, 1.0);
    let p = gn_params(4, 52);
    let pd = dims(&p.params);
    let mut fresh = t(vec![0.0; p.params.data().len()], &pd);
    BE.group_norm_backward(&x, &dy, &p.params, &p.gamma, &p.beta, 2, 1e-5, &mut fresh)
        .unwrap();
    let init = randn(&pd, 53, 1.0);
    let mut acc = init.clone();
    BE.group_norm_backward(&x, &dy, &p.params, &p.gamma, &p.beta, 2, 1e-5, &mut acc)
        .unwrap();
    let want: Vec<f64> = init
        .data()
        .iter()
        .zip(fresh.data())
        .map(|(a, b)| f64::from(*a) + f64::from(*b))
        .collect();
    assert_close("accumulated grads", acc.data(), &want, 1e-6);
    // Entries outside the views are untouched.
    assert_eq!(acc.data()[..3], init.data()[..3]);
    assert_eq!(acc.data()[3 + 4..3 + 4 + 2], init.data()[3 + 4..3 + 4 + 2]);
}

#[test]
fn group_norm_threaded_matches_per_sample() {
    // 4 x 32 x 16 x 16 is large enough for the threaded path; each sample alone is not.
    let xd = [4, 32, 16, 16];
    let x = randn(&xd, 60, 1.0);
    let dy = randn(&xd, 61, 1.0);
    let p = gn_params(32, 62);
    let pd = dims(&p.params);
    let y = BE
        .group_norm(&x, &p.params, &p.gamma, &p.beta, 8, 1e-5)
        .unwrap();
    assert_close(
        "group_norm threaded",
        y.data(),
        &gn_reference(&x, &p, 8, 1e-5),
        1e-5,
    );
    let mut grads = t(vec![0.0; p.params.data().len()], &pd);
    let dx = BE
        .group_norm_backward(&x, &dy, &p.params, &p.gamma, &p.beta, 8, 1e-5, &mut grads)
        .unwrap();
    let mut grads_sum = vec![0.0f64; grads.data().len()];
    let sd: Vec<usize> = [1].iter().chain(&xd[1..]).copied().collect();
    for s in 0..4 {
        let xs = t(x.sample(s).to_vec(), &sd);
        let dys = t(dy.sample(s).to_vec(), &sd);
        let mut g = t(vec![0.0; grads.data().len()], &pd);
        let dxs = BE
            .group_norm_backward(&xs, &dys, &p.params, &p.gamma, &p.beta, 8, 1e-5, &mut g)
            .unwrap();
        assert_close(
            "group_norm dx per sample",
            dx.sample(s),
            &f64s(dxs.data()),
            1e-5,
        );
        grads_sum
            .iter_mut()
            .zip(g.data())
            .for_each(|(a, b)| *a += f64::from(*b));
    }
    assert_close(
        "group_norm grads per sample",
        grads.data(),
        &grads_sum,
        1e-4,
    );
}

#[test]
fn group_norm_rejects_bad_input() {
    let x = randn(&[2, 6, 5, 3], 70, 1.0);
    let p = gn_params(6, 71);
    let gn = |x: &CpuTensor, g: &View, b: &View, groups: usize| {
        BE.group_norm(x, &p.params, g, b, groups, 1e-5)
    };
    assert!(
        is_shape_err(gn(&x, &p.gamma, &p.beta, 4)),
        "C % groups != 0"
    );
    assert!(is_shape_err(gn(&x, &p.gamma, &p.beta, 0)), "zero groups");
    assert!(
        is_shape_err(gn(&randn(&[2, 6, 15], 72, 1.0), &p.gamma, &p.beta, 3)),
        "rank 3"
    );
    assert!(
        is_view_err(gn(&x, &View::new(3, [5]), &p.beta, 3)),
        "gamma of the wrong size"
    );
    assert!(
        is_view_err(gn(&x, &p.gamma, &View::new(3, [2, 2]), 3)),
        "beta of the wrong size"
    );
    assert!(
        is_view_err(gn(&x, &View::new(100, [6]), &p.beta, 3)),
        "gamma past the buffer"
    );
    assert!(matches!(
        BE.group_norm(&x, &p.params, &p.gamma, &p.beta, 3, -1.0),
        Err(NetError::Config { .. })
    ));

    let pd = dims(&p.params);
    let mut grads = t(vec![0.0; p.params.data().len()], &pd);
    let dy_bad = randn(&[2, 6, 5, 2], 73, 1.0);
    assert!(is_shape_err(BE.group_norm_backward(
        &x, &dy_bad, &p.params, &p.gamma, &p.beta, 3, 1e-5, &mut grads
    )));
    let mut short = t(vec![0.0; 6], &[6]);
    assert!(is_view_err(BE.group_norm_backward(
        &x, &x, &p.params, &p.gamma, &p.beta, 3, 1e-5, &mut short
    )));
    assert!(
        short.data().iter().all(|&v| v == 0.0),
        "a failed backward must not write partial gradients"
    );
}

// ---------------------------------------------------------------- group norm + silu

// The fused op must equal what `NetBackend`'s default does (group norm, then
// SiLU; the wgpu backend runs the default), bit for bit.
#[test]
fn group_norm_silu_is_the_composition_bit_for_bit() {
    // Small (serial) and large (threaded) inputs, one and several groups.
    for (xd, groups, seed) in [
        ([2, 6, 5, 3], 3, 90),
        ([4, 32, 16, 16], 8, 91),
        ([3, 8, 7, 7], 1, 92),
    ] {
        let c = xd[1];
        let x = randn(&xd, seed, 1.5);
        let dy = randn(&xd, seed + 10, 1.0);
        let p = gn_params(c, seed + 20);
        let a = BE
            .group_norm(&x, &p.params, &p.gamma, &p.beta, groups, 1e-6)
            .unwrap();
        let want = BE.silu(&a).unwrap();
        let got = BE
            .group_norm_silu(&x, &p.params, &p.gamma, &p.beta, groups, 1e-6)
            .unwrap();
        assert_eq!(got, want, "forward, shape {xd:?}");

        let pd = dims(&p.params);
        let mut g_want = randn(&pd, seed + 30, 1.0);
        let mut g_got = g_want.clone();
        let da = BE.silu_backward(&a, &dy).unwrap();
        let dx_want = BE
            .group_norm_backward(
                &x,
                &da,
                &p.params,
                &p.gamma,
                &p.beta,
                groups,
                1e-6,
                &mut g_want,
            )
            .unwrap();
        let dx_got = BE
            .group_norm_silu_backward(
                &x, &dy, &p.params, &p.gamma, &p.beta, groups, 1e-6, &mut g_got,
            )
            .unwrap();
        assert_eq!(dx_got, dx_want, "dx, shape {xd:?}");
        assert_eq!(g_got, g_want, "grads, shape {xd:?}");
    }
}

#[test]
fn group_norm_silu_backward_matches_finite_differences() {
    let xd = [2, 6, 5, 3];
    for groups in [1, 3] {
        let x = randn(&xd, 96 + groups as u64, 1.0);
        let dy = randn(&xd, 98, 1.0);
        let p = gn_params(6, 99);
        let eps = 1e-5;
        let mut grads = t(vec![0.0; p.params.data().len()], &dims(&p.params));
        let dx = BE
            .group_norm_silu_backward(
                &x, &dy, &p.params, &p.gamma, &p.beta, groups, eps, &mut grads,
            )
            .unwrap();
        let fwd = |x: &CpuTensor, params: &CpuTensor| {
            let y = BE
                .group_norm_silu(x, params, &p.gamma, &p.beta, groups, eps)
                .unwrap();
            dot64(y.data(), dy.data())
        };
        let loss_x = |xs: &[f32]| fwd(&t(xs.to_vec(), &xd), &p.params);
        check_grad("group_norm_silu dx", x.data(), dx.data(), loss_x, H, TOL, 1);
        let loss_p = |ps: &[f32]| fwd(&x, &t(ps.to_vec(), &dims(&p.params)));
        // dgamma, dbeta, and every other gradient entry left at 0.
        check_grad(
            "group_norm_silu dgamma/dbeta",
            p.params.data(),
            grads.data(),
            loss_p,
            H,
            TOL,
            1,
        );
    }
}

#[test]
fn group_norm_silu_rejects_bad_input() {
    let x = randn(&[2, 6, 5, 3], 100, 1.0);
    let p = gn_params(6, 101);
    let mut grads = t(vec![0.0; p.params.data().len()], &dims(&p.params));
    assert!(is_shape_err(
        BE.group_norm_silu(&x, &p.params, &p.gamma, &p.beta, 4, 1e-5)
    ));
    let short = View::new(p.params.data().len() - 2, [6]);
    assert!(is_view_err(
        BE.group_norm_silu(&x, &p.params, &p.gamma, &short, 3, 1e-5)
    ));
    assert!(is_shape_err(BE.group_norm_silu_backward(
        &x,
        &randn(&[2, 6, 5, 2], 102, 1.0),
        &p.params,
        &p.gamma,
        &p.beta,
        3,
        1e-5,
        &mut grads
    )));
    assert!(is_view_err(BE.group_norm_silu_backward(
        &x, &x, &p.params, &p.gamma, &short, 3, 1e-5, &mut grads
    )));
    assert!(
        grads.data().iter().all(|&v| v == 0.0),
        "a failed backward wrote gradients"
    );
}

// ---------------------------------------------------------------- silu

#[test]
fn silu_forward_and_backward() {
    let xd = [2, 6, 5, 3];
    let x = randn(&xd, 80, 2.0);
    let y = BE.silu(&x).unwrap();
    let want: Vec<f64> = x
        .data()
        .iter()
        .map(|&v| f64::from(v) / (1.0 + (-f64::from(v)).exp()))
        .collect();
    assert_close("silu", y.data(), &want, 1e-6);
    // Extreme inputs stay finite.
    let big = BE.silu(&t(vec![-100.0, 100.0, -1e30, 1e30], &[4])).unwrap();
    assert!(big.data().iter().all(|v| v.is_finite()));

    let dy = randn(&xd, 81, 1.0);
    let dx = BE.silu_backward(&x, &dy).unwrap();
    let loss = |xs: &[f32]| dot64(BE.silu(&t(xs.to_vec(), &xd)).unwrap().data(), dy.data());
    check_grad("silu dx", x.data(), dx.data(), loss, H, TOL, 1);
    assert!(is_shape_err(
        BE.silu_backward(&x, &randn(&[2, 6, 5, 2], 82, 1.0))
    ));
}

// ---------------------------------------------------------------- resampling

fn upsample_reference(x: &CpuTensor) -> Vec<f64> {
    let d = dims(x);
    let (h, w) = (d[2], d[3]);
    let mut out = Vec::new();
    for plane in x.data().chunks(h * w) {
        for i in 0..2 * h {
            for j in 0..2 * w {
                out.push(f64::from(plane[(i / 2) * w + j / 2]));
            }
        }
    }
    out
}

fn pool_reference(x: &CpuTensor) -> Vec<f64> {
    let d = dims(x);
    let (h, w) = (d[2], d[3]);
    let mut out = Vec::new();
    for plane in x.data().chunks(h * w) {
        for i in 0..h / 2 {
            for j in 0..w / 2 {
                let s: f64 = [(0, 0), (0, 1), (1, 0), (1, 1)]
                    .iter()
                    .map(|(a, b)| f64::from(plane[(2 * i + a) * w + 2 * j + b]))
                    .sum();
                out.push(s / 4.0);
            }
        }
    }
    out
}

#[test]
fn upsample_forward_and_backward() {
    let xd = [2, 3, 5, 3];
    let x = randn(&xd, 90, 1.0);
    let y = BE.upsample_nearest2x(&x).unwrap();
    assert_eq!(dims(&y), [2, 3, 10, 6]);
    assert_close("upsample", y.data(), &upsample_reference(&x), 0.0);

    let dy = randn(&[2, 3, 10, 6], 91, 1.0);
    let dx = BE.upsample_nearest2x_backward(&dy).unwrap();
    assert_eq!(dims(&dx), xd);
    let loss = |xs: &[f32]| {
        dot64(
            BE.upsample_nearest2x(&t(xs.to_vec(), &xd)).unwrap().data(),
            dy.data(),
        )
    };
    check_grad("upsample dx", x.data(), dx.data(), loss, H, TOL, 1);

    assert!(is_shape_err(BE.upsample_nearest2x(&randn(
        &[2, 3, 5],
        92,
        1.0
    ))));
    assert!(is_shape_err(BE.upsample_nearest2x_backward(&randn(
        &[2, 3, 5, 6],
        93,
        1.0
    ))));
}

#[test]
fn avg_pool_forward_and_backward() {
    let xd = [2, 3, 6, 4];
    let x = randn(&xd, 100, 1.0);
    let y = BE.avg_pool2x(&x).unwrap();
    assert_eq!(dims(&y), [2, 3, 3, 2]);
    assert_close("avg_pool", y.data(), &pool_reference(&x), 1e-6);

    let dy = randn(&[2, 3, 3, 2], 101, 1.0);
    let dx = BE.avg_pool2x_backward(&dy).unwrap();
    assert_eq!(dims(&dx), xd);
    let loss = |xs: &[f32]| {
        dot64(
            BE.avg_pool2x(&t(xs.to_vec(), &xd)).unwrap().data(),
            dy.data(),
        )
    };
    check_grad("avg_pool dx", x.data(), dx.data(), loss, H, TOL, 1);

    assert!(
        is_shape_err(BE.avg_pool2x(&randn(&[2, 3, 5, 4], 102, 1.0))),
        "odd height"
    );
    assert!(
        is_shape_err(BE.avg_pool2x(&randn(&[2, 3, 4, 3], 103, 1.0))),
        "odd width"
    );
    assert!(
        is_shape_err(BE.avg_pool2x_backward(&randn(&[2, 3, 4], 104, 1.0))),
        "rank 3"
    );
}

#[test]
fn resampling_threaded_matches_reference() {
    let x = randn(&[3, 16, 32, 24], 105, 1.0);
    assert_close(
        "upsample threaded",
        BE.upsample_nearest2x(&x).unwrap().data(),
        &upsample_reference(&x),
        0.0,
    );
    assert_close(
        "avg_pool threaded",
        BE.avg_pool2x(&x).unwrap().data(),
        &pool_reference(&x),
        1e-6,
    );
}

// ---------------------------------------------------------------- channels

#[test]
fn concat_and_split_channels() {
    let (ad, bd) = ([2, 2, 5, 3], [2, 4, 5, 3]);
    let a = randn(&ad, 110, 1.0);
    let b = randn(&bd, 111, 1.0);
    let y = BE.concat_channels(&a, &b).unwrap();
    assert_eq!(dims(&y), [2, 6, 5, 3]);
    let mut want = Vec::new();
    for s in 0..2 {
        want.extend(f64s(a.sample(s)));
        want.extend(f64s(b.sample(s)));
    }
    assert_close("concat", y.data(), &want, 0.0);

    let dy = randn(&[2, 6, 5, 3], 112, 1.0);
    let (da, db) = BE.split_channels(&dy, 2).unwrap();
    assert_eq!((dims(&da), dims(&db)), (ad.to_vec(), bd.to_vec()));
    let loss_a = |xs: &[f32]| {
        dot64(
            BE.concat_channels(&t(xs.to_vec(), &ad), &b).unwrap().data(),
            dy.data(),
        )
    };
    check_grad("concat da", a.data(), da.data(), loss_a, H, TOL, 1);
    let loss_b = |xs: &[f32]| {
        dot64(
            BE.concat_channels(&a, &t(xs.to_vec(), &bd)).unwrap().data(),
            dy.data(),
        )
    };
    check_grad("concat db", b.data(), db.data(), loss_b, H, TOL, 1);

    assert!(
        is_shape_err(BE.concat_channels(&a, &randn(&[1, 4, 5, 3], 113, 1.0))),
        "batch mismatch"
    );
    assert!(
        is_shape_err(BE.concat_channels(&a, &randn(&[2, 4, 5, 2], 114, 1.0))),
        "width mismatch"
    );
    assert!(
        is_shape_err(BE.concat_channels(&a, &randn(&[2, 4, 15], 115, 1.0))),
        "rank 3"
    );
    assert!(is_shape_err(BE.split_channels(&dy, 0)), "empty first part");
    assert!(is_shape_err(BE.split_channels(&dy, 6)), "empty second part");
    assert!(is_shape_err(BE.split_channels(&dy, 7)), "past the channels");
}

#[test]
fn channel_bias_and_sum_spatial() {
    let (xd, vd) = ([2, 6, 5, 3], [2, 6]);
    let x = randn(&xd, 120, 1.0);
    let v = randn(&vd, 121, 1.0);
    let y = BE.add_channel_bias(&x, &v).unwrap();
    let want: Vec<f64> = x
        .data()
        .iter()
        .enumerate()
        .map(|(i, &xv)| f64::from(xv) + f64::from(v.data()[i / 15]))
        .collect();
    assert_close("add_channel_bias", y.data(), &want, 1e-6);

    let dy = randn(&xd, 122, 1.0);
    let dv = BE.sum_spatial(&dy).unwrap();
    assert_eq!(dims(&dv), vd);
    let want: Vec<f64> = dy.data().chunks(15).map(|p| f64s(p).iter().sum()).collect();
    assert_close("sum_spatial", dv.data(), &want, 1e-6);
    let loss_v = |vs: &[f32]| {
        dot64(
            BE.add_channel_bias(&x, &t(vs.to_vec(), &vd))
                .unwrap()
                .data(),
            dy.data(),
        )
    };
    check_grad(
        "add_channel_bias dv",
        v.data(),
        dv.data(),
        loss_v,
        H,
        TOL,
        1,
    );
    // The input gradient is dy itself.
    let loss_x = |xs: &[f32]| {
        dot64(
            BE.add_channel_bias(&t(xs.to_vec(), &xd), &v)
                .unwrap()
                .data(),
            dy.data(),
        )
    };
    check_grad(
        "add_channel_bias dx",
        x.data(),
        dy.data(),
        loss_x,
        H,
        TOL,
        1,
    );

    assert!(
        is_shape_err(BE.add_channel_bias(&x, &randn(&[2, 5], 123, 1.0))),
        "wrong C"
    );
    assert!(
        is_shape_err(BE.add_channel_bias(&x, &randn(&[1, 6], 124, 1.0))),
        "wrong N"
    );
    assert!(
        is_shape_err(BE.add_channel_bias(&x, &randn(&[2, 6, 1], 125, 1.0))),
        "rank-3 bias"
    );
    assert!(is_shape_err(BE.sum_spatial(&v)), "rank 2");
}

// ---------------------------------------------------------------- tokens

#[test]
fn tokens_round_trip_and_gradients() {
    let xd = [2, 6, 5, 3];
    let x = randn(&xd, 130, 1.0);
    let tok = BE.image_to_tokens(&x).unwrap();
    assert_eq!(dims(&tok), [2, 15, 6]);
    let mut want = Vec::new();
    for s in 0..2 {
        for p in 0..15 {
            for c in 0..6 {
                want.push(f64::from(x.data()[(s * 6 + c) * 15 + p]));
            }
        }
    }
    assert_close("to_tokens", tok.data(), &want, 0.0);
    let back = BE.tokens_to_image(&tok, 5, 3).unwrap();
    assert_eq!(back, x);

    // to_tokens and from_tokens are each other's backward.
    let dy = randn(&[2, 15, 6], 131, 1.0);
    let dx = BE.tokens_to_image(&dy, 5, 3).unwrap();
    let loss = |xs: &[f32]| {
        dot64(
            BE.image_to_tokens(&t(xs.to_vec(), &xd)).unwrap().data(),
            dy.data(),
        )
    };
    check_grad("to_tokens dx", x.data(), dx.data(), loss, H, TOL, 1);
    let dyi = randn(&xd, 132, 1.0);
    let dt = BE.image_to_tokens(&dyi).unwrap();
    let loss = |ts: &[f32]| {
        dot64(
            BE.tokens_to_image(&t(ts.to_vec(), &[2, 15, 6]), 5, 3)
                .unwrap()
                .data(),
            dyi.data(),
        )
    };
    check_grad("from_tokens dx", tok.data(), dt.data(), loss, H, TOL, 1);

    assert!(is_shape_err(BE.tokens_to_image(&tok, 4, 4)), "h w != L");
    assert!(is_shape_err(BE.tokens_to_image(&tok, 15, 0)), "zero width");
    assert!(is_shape_err(BE.tokens_to_image(&x, 5, 3)), "rank 4");
    assert!(is_shape_err(BE.image_to_tokens(&tok)), "rank 3");
}

// ---------------------------------------------------------------- attention

fn attention_reference(q: &CpuTensor, k: &CpuTensor, v: &CpuTensor) -> Vec<f64> {
    let d = dims(q);
    let (n, l, c) = (d[0], d[1], d[2]);
    let (q, k, v) = (f64s(q.data()), f64s(k.data()), f64s(v.data()));
    let mut out = vec![0.0f64; n * l * c];
    for s in 0..n {
        let at = |i: usize, ch: usize| (s * l + i) * c + ch;
        for i in 0..l {
            let logits: Vec<f64> = (0..l)
                .map(|j| {
                    (0..c).map(|ch| q[at(i, ch)] * k[at(j, ch)]).sum::<f64>() / (c as f64).sqrt()
                })
                .collect();
            let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = logits.iter().map(|z| (z - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for ch in 0..c {
                out[at(i, ch)] = (0..l).map(|j| e[j] / sum * v[at(j, ch)]).sum();
            }
        }
    }
    out
}

#[test]
fn attention_forward_matches_reference() {
    for (l, c) in [(7, 5), (9, 4), (1, 3)] {
        let d = [2, l, c];
        let (q, k, v) = (
            randn(&d, 140, 1.0),
            randn(&d, 141, 1.0),
            randn(&d, 142, 1.0),
        );
        let y = BE.attention(&q, &k, &v).unwrap();
        assert_eq!(dims(&y), d);
        assert_close(
            "attention",
            y.data(),
            &attention_reference(&q, &k, &v),
            1e-5,
        );
    }
}

#[test]
fn attention_softmax_is_stable() {
    // Logits of order 1e3: a softmax without max subtraction overflows.
    let d = [2, 6, 4];
    let (q, k, v) = (
        randn(&d, 143, 60.0),
        randn(&d, 144, 60.0),
        randn(&d, 145, 1.0),
    );
    let y = BE.attention(&q, &k, &v).unwrap();
    assert!(y.data().iter().all(|x| x.is_finite()));
    assert_close(
        "attention large logits",
        y.data(),
        &attention_reference(&q, &k, &v),
        1e-4,
    );
    let (dq, dk, dv) = BE
        .attention_backward(&q, &k, &v, &randn(&d, 146, 1.0))
        .unwrap();
    for g in [&dq, &dk, &dv] {
        assert!(g.data().iter().all(|x| x.is_finite()));
    }
}

#[test]
fn attention_backward_matches_finite_differences() {
    for (l, c) in [(7, 5), (9, 8), (6, 4)] {
        let d = [2, l, c];
        let seed = (l * 10 + c) as u64;
        let (q, k, v) = (
            randn(&d, seed, 1.0),
            randn(&d, seed + 1, 1.0),
            randn(&d, seed + 2, 1.0),
        );
        let dy = randn(&d, seed + 3, 1.0);
        let (dq, dk, dv) = BE.attention_backward(&q, &k, &v, &dy).unwrap();
        let tt = |xs: &[f32]| t(xs.to_vec(), &d);
        let loss_q = |xs: &[f32]| dot64(BE.attention(&tt(xs), &k, &v).unwrap().data(), dy.data());
        check_grad("attention dq", q.data(), dq.data(), loss_q, H, TOL, 1);
        let loss_k = |xs: &[f32]| dot64(BE.attention(&q, &tt(xs), &v).unwrap().data(), dy.data());
        check_grad("attention dk", k.data(), dk.data(), loss_k, H, TOL, 1);
        let loss_v = |xs: &[f32]| dot64(BE.attention(&q, &k, &tt(xs)).unwrap().data(), dy.data());
        check_grad("attention dv", v.data(), dv.data(), loss_v, H, TOL, 1);
    }
}

#[test]
fn attention_threaded_matches_per_sample() {
    // 3 x 64 tokens x 32 channels takes the threaded path; one sample alone does not.
    let d = [3, 64, 32];
    let (q, k, v) = (
        randn(&d, 150, 1.0),
        randn(&d, 151, 1.0),
        randn(&d, 152, 1.0),
    );
    let dy = randn(&d, 153, 1.0);
    let y = BE.attention(&q, &k, &v).unwrap();
    assert_close(
        "attention threaded",
        y.data(),
        &attention_reference(&q, &k, &v),
        1e-5,
    );
    let (dq, dk, dv) = BE.attention_backward(&q, &k, &v, &dy).unwrap();
    let sd = [1, 64, 32];
    for s in 0..3 {
        let one = |x: &CpuTensor| t(x.sample(s).to_vec(), &sd);
        let (dqs, dks, dvs) = BE
            .attention_backward(&one(&q), &one(&k), &one(&v), &one(&dy))
            .unwrap();
        assert_close("dq per sample", dq.sample(s), &f64s(dqs.data()), 1e-6);
        assert_close("dk per sample", dk.sample(s), &f64s(dks.data()), 1e-6);
        assert_close("dv per sample", dv.sample(s), &f64s(dvs.data()), 1e-6);
    }
}

#[test]
fn attention_rejects_bad_shapes() {
    let d = [2, 7, 5];
    let (q, k, v) = (
        randn(&d, 160, 1.0),
        randn(&d, 161, 1.0),
        randn(&d, 162, 1.0),
    );
    let other = randn(&[2, 6, 5], 163, 1.0);
    assert!(is_shape_err(BE.attention(&q, &other, &v)), "k length");
    assert!(
        is_shape_err(BE.attention(&q, &k, &randn(&[2, 7, 4], 164, 1.0))),
        "v channels"
    );
    assert!(
        is_shape_err(BE.attention(&randn(&[2, 7, 5, 1], 165, 1.0), &k, &v)),
        "rank 4"
    );
    assert!(
        is_shape_err(BE.attention_backward(&q, &k, &v, &other)),
        "dy shape"
    );
    assert!(
        is_shape_err(BE.attention_backward(&q, &k, &other, &q)),
        "v shape"
    );
}

// ---------------------------------------------------------------- dropout

#[test]
fn dropout_mask_statistics_and_scaling() {
    // 8 whole parallel chunks of 16384; then 24969 = 16384 + 268·32 + 9
    // elements (a partial chunk ending in a partial Philox block).
    for (d, p, seed) in [
        ([4, 8, 64, 64], 0.1f32, 1u64),
        ([4, 8, 64, 64], 0.3, 2),
        ([4, 8, 64, 64], 0.5, 3),
        ([3, 7, 41, 29], 0.3, 4),
    ] {
        let x = randn(&d, 170, 1.0);
        let n = x.data().len();
        let key = NoiseKey::new(seed, 77);
        let y = BE.dropout(&x, p, key).unwrap();
        assert_eq!(dims(&y), d);
        let mut u = vec![0.0f32; n];
        key.fill_uniform(&mut u);
        let scale = 1.0 / (1.0 - f64::from(p));
        let mut dropped = 0usize;
        for (i, ((&ui, &xv), &yv)) in u.iter().zip(x.data()).zip(y.data()).enumerate() {
            let (xi, yi) = (f64::from(xv), f64::from(yv));
            if ui < p {
                dropped += 1;
                assert_eq!(yi, 0.0, "element {i} should be dropped");
            } else {
                assert!(
                    (yi - xi * scale).abs() <= 1e-6 * (1.0 + xi.abs() * scale),
                    "element {i}: kept value {yi} != {xi} * {scale}"
                );
            }
        }
        let frac = dropped as f64 / n as f64;
        let se = (f64::from(p) * (1.0 - f64::from(p)) / n as f64).sqrt();
        assert!(
            (frac - f64::from(p)).abs() <= 5.0 * se,
            "p = {p}: dropped fraction {frac} (5 SE = {})",
            5.0 * se
        );

        // Backward: the same mask and scale applied to dy.
        let dy = randn(&d, 171, 1.0);
        let dx = BE.dropout_backward(&dy, p, key).unwrap();
        for ((&ui, &d), &g) in u.iter().zip(dy.data()).zip(dx.data()) {
            let want = if ui < p { 0.0 } else { f64::from(d) * scale };
            assert!((f64::from(g) - want).abs() <= 1e-6 * (1.0 + want.abs()));
        }
    }
    // Another key gives another mask.
    let x = randn(&[4, 8, 64, 64], 170, 1.0);
    let a = BE.dropout(&x, 0.5, NoiseKey::new(1, 1)).unwrap();
    let b = BE.dropout(&x, 0.5, NoiseKey::new(1, 2)).unwrap();
    assert_ne!(a, b);
}

#[test]
fn dropout_backward_matches_finite_differences() {
    let d = [2, 6, 5, 3];
    let x = randn(&d, 180, 1.0);
    let dy = randn(&d, 181, 1.0);
    let key = NoiseKey::new(9, 4);
    let dx = BE.dropout_backward(&dy, 0.4, key).unwrap();
    let loss = |xs: &[f32]| {
        dot64(
            BE.dropout(&t(xs.to_vec(), &d), 0.4, key).unwrap().data(),
            dy.data(),
        )
    };
    check_grad("dropout dx", x.data(), dx.data(), loss, H, TOL, 1);
}

#[test]
fn dropout_zero_is_identity_and_bad_p_rejected() {
    let x = randn(&[2, 6, 5, 3], 190, 1.0);
    let key = NoiseKey::new(5, 6);
    assert_eq!(BE.dropout(&x, 0.0, key).unwrap(), x);
    assert_eq!(BE.dropout_backward(&x, 0.0, key).unwrap(), x);
    for p in [1.0, 1.5, -0.1, f32::NAN, f32::INFINITY] {
        assert!(
            matches!(BE.dropout(&x, p, key), Err(NetError::Config { .. })),
            "p = {p}"
        );
        assert!(
            matches!(
                BE.dropout_backward(&x, p, key),
                Err(NetError::Config { .. })
            ),
            "p = {p}"
        );
    }
}
