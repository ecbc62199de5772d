//! Shared helpers for the `score-net` op tests: random tensors and a central
//! finite-difference gradient check with f64 accumulation.
#![allow(dead_code, clippy::unwrap_used)]

pub mod gpu;

use sde_core::{CpuTensor, NoiseKey, Shape};

/// A tensor of `dims` filled with standard normals from `(seed, stream)`, times `scale`.
pub fn randn(dims: &[usize], seed: u64, scale: f32) -> CpuTensor {
    let shape = Shape::new(dims.to_vec()).unwrap();
    let mut v = vec![0.0f32; shape.numel()];
    NoiseKey::new(seed, 0x5eed).fill_gaussian(&mut v);
    v.iter_mut().for_each(|x| *x *= scale);
    CpuTensor::new(v, shape).unwrap()
}

/// `<a, b>` accumulated in f64.
pub fn dot64(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum()
}

/// Central finite-difference check of `analytic = dL/dx` at `x`, where
/// `loss(x)` is a scalar computed in f64 (typically `<op(x), dy>` for a fixed
/// random `dy`). Every element (or every `stride`-th one for large inputs) is
/// perturbed by `±h`. Passes when, for every checked element,
/// `|fd - analytic| <= tol * (max_j |analytic_j| + 1e-3)`: the error is measured
/// against the gradient's scale because f32 round-off in the forward pass
/// gives finite differences an absolute, not relative, error.
pub fn check_grad(
    name: &str,
    x: &[f32],
    analytic: &[f32],
    loss: impl Fn(&[f32]) -> f64,
    h: f32,
    tol: f64,
    stride: usize,
) {
    assert_eq!(x.len(), analytic.len(), "{name}: gradient length");
    let scale = analytic
        .iter()
        .fold(0.0f64, |m, g| m.max(f64::from(g.abs())))
        + 1e-3;
    let mut xp = x.to_vec();
    let mut worst = (0.0f64, 0usize, 0.0f64, 0.0f64);
    for i in (0..x.len()).step_by(stride.max(1)) {
        xp[i] = x[i] + h;
        let lp = loss(&xp);
        xp[i] = x[i] - h;
        let lm = loss(&xp);
        xp[i] = x[i];
        let fd = (lp - lm) / (2.0 * f64::from(h));
        let err = (fd - f64::from(analytic[i])).abs() / scale;
        if err > worst.0 {
            worst = (err, i, fd, f64::from(analytic[i]));
        }
    }
    assert!(
        worst.0 <= tol,
        "{name}: element {} analytic {} vs finite difference {} (error {:.2e} of the gradient scale {:.3e}, tolerance {tol:.0e})",
        worst.1,
        worst.3,
        worst.2,
        worst.0,
        scale
    );
}
