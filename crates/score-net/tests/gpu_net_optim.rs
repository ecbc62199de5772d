#![allow(clippy::unwrap_used)]
//! The optimiser kernels (`shaders/optim.wgsl`) against their CPU reference
//! (`score_net::cpu::optim`): Adam and EMA in place, and the squared norm.
//! REQUIRES a wgpu adapter (fails loudly without one; CI uses llvmpipe).
//!
//! Tolerances: Adam/EMA follow the CPU's f32 operation order, so they differ
//! only by a fused multiply-add or the device's `sqrt`/division rounding
//! (a few ulps per step): after 5 steps parameters and moments agree within
//! 2e-6 of the largest magnitude (+1e-12). The squared norm sums 1024 terms
//! per workgroup in f32 (the CPU in f64): relative 1e-5.

mod common;

use common::gpu::{assert_close, gpu, up};
use common::randn;
use score_net::{AdamStep, NetBackend};
use sde_core::{CpuBackend, CpuTensor, Error};

fn step(t: i32, clip: f32) -> AdamStep {
    let (b1, b2) = (0.9f64, 0.999f64);
    AdamStep {
        grad_scale: clip,
        beta1: b1 as f32,
        one_minus_beta1: 1.0 - b1 as f32,
        beta2: b2 as f32,
        one_minus_beta2: 1.0 - b2 as f32,
        step_size: (1e-2 / (1.0 - b1.powi(t))) as f32,
        inv_bias2: (1.0 / (1.0 - b2.powi(t))) as f32,
        eps: 1e-8,
    }
}

#[test]
fn adam_and_ema_match_the_cpu_over_several_steps() {
    let (g, c) = (gpu(), CpuBackend);
    for n in [1usize, 255, 1023, 70_001] {
        let p0 = randn(&[n], 1, 1.0);
        let mut pc = p0.clone();
        let mut pg = up(&p0);
        let zeros = randn(&[n], 2, 0.0);
        let (mut mc, mut vc) = (zeros.clone(), zeros.clone());
        let (mut mg, mut vg) = (up(&zeros), up(&zeros));
        let mut ec = p0.clone();
        let mut eg = up(&p0);
        for t in 1..=5 {
            let grads: CpuTensor = randn(&[n], 10 + t as u64, 3.0);
            let s = step(t, if t % 2 == 0 { 0.25 } else { 1.0 });
            c.adam_update(&mut pc, &grads, &mut mc, &mut vc, &s)
                .unwrap();
            g.adam_update(&mut pg, &up(&grads), &mut mg, &mut vg, &s)
                .unwrap();
            c.ema_update(&mut ec, &pc, 0.2).unwrap();
            g.ema_update(&mut eg, &pg, 0.2).unwrap();
        }
        assert_close(&format!("params n={n}"), &pg, &pc, 2e-6, 1e-12);
        assert_close(&format!("m n={n}"), &mg, &mc, 2e-6, 1e-12);
        assert_close(&format!("v n={n}"), &vg, &vc, 2e-6, 1e-12);
        assert_close(&format!("ema n={n}"), &eg, &ec, 2e-6, 1e-12);
        // The update did something, and at most about lr per step (5 steps).
        let moved = pc
            .data()
            .iter()
            .zip(p0.data())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(moved > 1e-3 && moved < 6e-2, "n={n}: moved {moved}");
    }
}

#[test]
fn sum_squares_matches_the_cpu() {
    let (g, c) = (gpu(), CpuBackend);
    for dims in [vec![1usize], vec![7, 3], vec![100_003]] {
        let x = randn(&dims, 3, 2.0);
        let want = c.sum_squares(&x).unwrap();
        let got = g.sum_squares(&up(&x)).unwrap();
        assert!(
            (got - want).abs() <= 1e-5 * want,
            "{dims:?}: {got} vs {want}"
        );
    }
}

#[test]
fn mismatched_optimiser_buffers_are_the_cpus_typed_errors() {
    let (g, c) = (gpu(), CpuBackend);
    let a = randn(&[8], 1, 1.0);
    let b = randn(&[9], 1, 1.0);
    let s = step(1, 1.0);
    let ec = c
        .adam_update(&mut a.clone(), &b, &mut a.clone(), &mut a.clone(), &s)
        .unwrap_err();
    let eg = g
        .adam_update(&mut up(&a), &up(&b), &mut up(&a), &mut up(&a), &s)
        .unwrap_err();
    assert_eq!(ec.to_string(), eg.to_string());
    assert!(matches!(Error::from(eg), Error::ShapeMismatch { .. }));
    let ec = c.ema_update(&mut a.clone(), &b, 0.1).unwrap_err();
    let eg = g.ema_update(&mut up(&a), &up(&b), 0.1).unwrap_err();
    assert_eq!(ec.to_string(), eg.to_string());
}
