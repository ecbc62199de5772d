//! Time embeddings (host-side; times are never differentiated):
//! - sinusoidal positional embedding of DDPM (Ho et al. 2020; Vaswani et al.
//!   2017), fed `999 t` for VP / sub-VP models;
//! - Gaussian Fourier features of NCSN++ (Tancik et al. 2020), fed `ln sigma`
//!   for VE models, with fixed random frequencies.

use sde_core::NoiseKey;

/// `[N, dim]` row-major: for each `x`, `[sin(x f_0), .., sin(x f_{h-1}), cos(x f_0), .., cos(x f_{h-1})]`
/// with `h = dim / 2` and `f_j = max_positions^(-j / (h - 1))`; an odd `dim`
/// gets a zero last column.
pub fn sinusoidal(x: &[f64], dim: usize, max_positions: f64) -> Vec<f32> {
    let half = dim / 2;
    let step = if half > 1 {
        max_positions.ln() / (half - 1) as f64
    } else {
        0.0
    };
    let mut out = vec![0.0f32; x.len() * dim];
    for (n, &xn) in x.iter().enumerate() {
        let row = &mut out[n * dim..(n + 1) * dim];
        for j in 0..half {
            let a = xn * (-step * j as f64).exp();
            row[j] = a.sin() as f32;
            row[half + j] = a.cos() as f32;
        }
    }
    out
}

/// Fixed Gaussian-Fourier frequencies `w ~ N(0, scale^2)` (NCSN++ uses scale 16).
pub fn fourier_weights(n: usize, scale: f32, seed: u64) -> Vec<f32> {
    let mut w = vec![0.0f32; n];
    NoiseKey::new(seed, 0xF0F0).fill_gaussian(&mut w);
    w.iter_mut().for_each(|v| *v *= scale);
    w
}

/// `[N, 2 len(w)]`: `[sin(2 pi x w), cos(2 pi x w)]` for each `x`.
pub fn gaussian_fourier(x: &[f64], w: &[f32]) -> Vec<f32> {
    let m = w.len();
    let mut out = vec![0.0f32; x.len() * 2 * m];
    for (n, &xn) in x.iter().enumerate() {
        for (j, &wj) in w.iter().enumerate() {
            let a = std::f64::consts::TAU * xn * f64::from(wj);
            out[n * 2 * m + j] = a.sin() as f32;
            out[n * 2 * m + m + j] = a.cos() as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinusoidal_matches_formula() {
        let e = sinusoidal(&[0.0, 500.0], 8, 10_000.0);
        assert_eq!(e.len(), 16);
        assert_eq!(&e[..8], &[0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
        // f_3 = 10000^(-1) for h = 4.
        assert!((e[8 + 3] - (500.0f64 / 10_000.0).sin() as f32).abs() < 1e-7);
        assert!((e[8] - 500f64.sin() as f32).abs() < 1e-6);
        let odd = sinusoidal(&[1.0], 5, 10_000.0);
        assert_eq!(odd[4], 0.0);
    }

    #[test]
    fn fourier_features_are_unit_circle_points() {
        let w = fourier_weights(6, 16.0, 1);
        assert_eq!(w, fourier_weights(6, 16.0, 1));
        let e = gaussian_fourier(&[0.3, -1.2], &w);
        for n in 0..2 {
            for j in 0..6 {
                let (s, c) = (e[n * 12 + j], e[n * 12 + 6 + j]);
                assert!((s * s + c * c - 1.0).abs() < 1e-6);
            }
        }
    }
}
