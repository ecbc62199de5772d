//! The Fréchet distance between fitted Gaussians against closed forms: zero
//! for identical sets, `(m1 - m2)^2 + (s1 - s2)^2` in one dimension,
//! `|(c - 1) mu + b|^2 + (1 - c)^2 tr C` for `y = c x + b` in several
//! dimensions, symmetric in its arguments, and large for different
//! distributions.
#![allow(clippy::unwrap_used)]

use sde_core::stats::{frechet_distance, moments};
use sde_core::NoiseRng;

/// `n` correlated 5-D points (a fixed mixing of Gaussian noise).
fn points(n: usize, seed: u64) -> Vec<f32> {
    let d = 5;
    let mut z = vec![0.0f32; n * d];
    NoiseRng::new(seed).next_key().fill_gaussian(&mut z);
    let mix = [
        [1.0, 0.3, 0.0, -0.2, 0.1],
        [0.0, 0.8, 0.5, 0.0, 0.0],
        [0.2, 0.0, 1.5, 0.3, 0.0],
        [0.0, -0.4, 0.0, 0.6, 0.2],
        [0.1, 0.0, 0.0, 0.0, 0.05],
    ];
    (0..n)
        .flat_map(|i| {
            let row = &z[i * d..(i + 1) * d];
            mix.iter()
                .map(|m| m.iter().zip(row).map(|(a, b)| a * b).sum::<f32>() + 0.5)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn frechet_distance_matches_closed_forms() {
    let x = points(400, 1);
    assert!(frechet_distance(&x, &x, 5).unwrap().abs() < 1e-9);
    // One dimension: the means' and the standard deviations' differences.
    let a: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
    let b: Vec<f32> = (0..70)
        .map(|i| 2.0 + 0.5 * (i as f32 * 0.91).cos())
        .collect();
    let (ma, va) = moments(&a, 1).unwrap();
    let (mb, vb) = moments(&b, 1).unwrap();
    let want = (ma[0] - mb[0]).powi(2) + (va[0].sqrt() - vb[0].sqrt()).powi(2);
    let got = frechet_distance(&a, &b, 1).unwrap();
    assert!((got - want).abs() < 1e-9 * (1.0 + want), "{got} vs {want}");
    // y = c x + b: C_y = c^2 C_x commutes with C_x.
    let (mx, cx) = moments(&x, 5).unwrap();
    let tr: f64 = (0..5).map(|i| cx[i * 5 + i]).sum();
    for (c, shift) in [(0.5f32, [0.0f32; 5]), (2.0, [1.0, -1.0, 0.5, 0.0, 2.0])] {
        let y: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(i, v)| c * v + shift[i % 5])
            .collect();
        let mean: f64 = (0..5)
            .map(|j| ((f64::from(c) - 1.0) * mx[j] + f64::from(shift[j])).powi(2))
            .sum();
        let want = mean + (1.0 - f64::from(c)).powi(2) * tr;
        let got = frechet_distance(&x, &y, 5).unwrap();
        assert!(
            (got - want).abs() < 1e-5 * (1.0 + want),
            "c {c}: {got} vs {want}"
        );
    }
}

#[test]
fn frechet_distance_is_symmetric_and_separates_distributions() {
    let x = points(500, 2);
    // A differently correlated set: swap coordinates of another draw.
    let y: Vec<f32> = points(500, 3)
        .chunks(5)
        .flat_map(|r| [r[2], r[0], r[4], r[1], r[3]])
        .collect();
    let xy = frechet_distance(&x, &y, 5).unwrap();
    let yx = frechet_distance(&y, &x, 5).unwrap();
    assert!((xy - yx).abs() < 1e-6 * xy, "{xy} vs {yx}");
    // Two draws of the same distribution are much closer than x and y.
    let same = frechet_distance(&x, &points(500, 4), 5).unwrap();
    assert!(
        same >= -1e-9 && same < 0.1 * xy,
        "same {same}, different {xy}"
    );
    // Bad input is an error, not a panic.
    assert!(frechet_distance(&x[..3], &y, 5).is_err());
    assert!(frechet_distance(&x, &y, 0).is_err());
}
