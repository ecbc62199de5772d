//! The discretisations reproduce the SMLD and DDPM Markov chains (SPEC.md
//! section 2), map times to steps as the reference does, and approach the
//! continuous kernels as N grows.
#![allow(clippy::unwrap_used)] // tests fail by panicking

mod common;

use common::{assert_within_se, mean_var};
use sde_core::{Backend, Coef, CpuBackend, NoiseRng, Sde, SdeExt, Shape, SubVpSde, VeSde, VpSde};

/// Step `i` sits at time `i (T / (N - 1))`; the reference's `floor(t (N-1)/T)`
/// must map that time back to `i` for every step, and the sampler grid
/// `linspace(T, eps, N)` to `N - 1 - k`.
#[test]
fn times_map_to_steps() {
    let sde = VpSde::new(0.1, 20.0, 1000).unwrap();
    for i in 0..1000 {
        assert_eq!(sde.step_index(i as f64 / 999.0), i);
    }
    let grid = sde_core::sde::linspace(1.0, 1e-3, 1000);
    for (k, t) in grid.iter().enumerate() {
        assert_eq!(sde.step_index(*t), 999 - k, "grid point {k}, t = {t}");
    }
    assert_eq!(sde.step_index(0.0), 0);
    assert_eq!(sde.step_index(1.0), 999);
}

/// SMLD: applying steps `0..=k` to clean data adds variance exactly `sigma_k^2`
/// (the sum telescopes), and the levels are `sigma(i / (N - 1))`.
#[test]
fn smld_chain_reaches_each_noise_level() {
    let n = 1000;
    let sde = VeSde::new(0.01, 50.0, n).unwrap();
    let sig = sde.discrete_sigmas();
    assert_eq!(sig.len(), n);
    let mut var = 0.0;
    for (i, &sigma_i) in sig.iter().enumerate() {
        let d = sde.discretize(i as f64 / (n - 1) as f64);
        assert_eq!(d.drift_coef, 0.0);
        var += d.noise_std.powi(2);
        assert!(
            (var - sigma_i.powi(2)).abs() <= 1e-12 * sigma_i.powi(2),
            "step {i}"
        );
        let cont = sde.sigma(i as f64 / (n - 1) as f64);
        assert!((sigma_i - cont).abs() <= 1e-12 * cont);
    }
}

/// DDPM: `x_{i+1} = sqrt(alpha_i) x_i + sqrt(beta_i) z` — composing the steps
/// gives mean coefficient `sqrt(prod alpha)` and variance `1 - prod alpha`.
#[test]
fn ddpm_chain_matches_cumulative_alphas() {
    let n = 1000;
    let sde = VpSde::new(0.1, 20.0, n).unwrap();
    let disc = sde.discrete();
    assert!((disc.betas[0] - 0.1 / n as f64).abs() < 1e-15);
    assert!((disc.betas[n - 1] - 20.0 / n as f64).abs() < 1e-15);
    let (mut m, mut v) = (1.0f64, 0.0f64);
    for i in 0..n {
        let d = sde.discretize(i as f64 / (n - 1) as f64);
        assert!((d.drift_coef - (disc.alphas[i].sqrt() - 1.0)).abs() < 1e-15);
        assert!((d.noise_std - disc.betas[i].sqrt()).abs() < 1e-15);
        let c = 1.0 + d.drift_coef;
        m *= c;
        v = c * c * v + d.noise_std.powi(2);
        let ac = disc.alphas_cumprod[i];
        assert!((m - ac.sqrt()).abs() < 1e-12, "step {i}");
        assert!((v - (1.0 - ac)).abs() < 1e-12, "step {i}");
    }
}

/// The DDPM chain approximates the VP SDE: `ln prod alpha` after `k+1` steps
/// is `-B((k+1)/N)` up to the O(1/N) terms (< 1% relative at N = 1000), and
/// the error shrinks roughly tenfold at N = 10000.
#[test]
fn ddpm_chain_approaches_vp_kernel() {
    let rel_err = |n: usize, frac: f64| {
        let sde = VpSde::new(0.1, 20.0, n).unwrap();
        let k = ((frac * n as f64) as usize).max(1) - 1;
        let t = (k + 1) as f64 / n as f64;
        let ln_ac = sde.discrete().alphas_cumprod[k].ln();
        let ln_m2 = 2.0 * sde.marginal(t).mean_coef.ln();
        ((ln_ac - ln_m2) / ln_m2).abs()
    };
    for frac in [0.25, 0.5, 1.0] {
        let (e1, e2) = (rel_err(1000, frac), rel_err(10_000, frac));
        assert!(e1 < 1e-2, "N=1000 frac={frac}: {e1}");
        assert!(e2 < e1 / 5.0, "N=10000 frac={frac}: {e2} vs {e1}");
    }
}

/// sub-VP uses Euler–Maruyama: `f_i = a(t) x / N`, `G_i = g(t) / sqrt(N)`,
/// and exposes the DDPM alphas for the Langevin corrector.
#[test]
fn sub_vp_discretisation_is_euler_maruyama() {
    let sde = SubVpSde::new(0.1, 20.0, 500).unwrap();
    for t in [0.01, 0.5, 1.0] {
        let d = sde.discretize(t);
        assert!((d.drift_coef - sde.drift_coef(t) / 500.0).abs() < 1e-15);
        assert!((d.noise_std - sde.diffusion(t) / 500f64.sqrt()).abs() < 1e-15);
    }
    assert_eq!(sde.discrete().alphas.len(), 500);
}

/// Simulating the DDPM chain through `discretize(t)` on the backend reaches the
/// closed-form marginal `N(sqrt(prod alpha) x0, 1 - prod alpha)` (5 SE bounds).
#[test]
fn simulated_ddpm_chain_matches_closed_form() {
    let b = CpuBackend;
    let n_steps = 200;
    let sde = VpSde::new(0.1, 20.0, n_steps).unwrap();
    let paths = 20_000;
    let shape = Shape::new([paths]).unwrap();
    let mut x = b.full(&shape, 2.0).unwrap();
    let mut rng = NoiseRng::new(77);
    let stop = 120;
    for i in 0..stop {
        let d = sde.discretize(i as f64 / (n_steps - 1) as f64);
        let z = b.gaussian(&shape, rng.next_key()).unwrap();
        x = b
            .lincomb(&[
                (Coef::Scalar((1.0 + d.drift_coef) as f32), &x),
                (Coef::Scalar(d.noise_std as f32), &z),
            ])
            .unwrap();
    }
    let ac = sde.discrete().alphas_cumprod[stop - 1];
    let (mean, var, n) = mean_var(b.to_vec(&x).unwrap().into_iter().map(f64::from));
    let v = 1.0 - ac;
    assert_within_se(
        "DDPM mean",
        mean,
        2.0 * ac.sqrt(),
        (v / n as f64).sqrt(),
        5.0,
    );
    assert_within_se("DDPM var", var, v, v * (2.0 / n as f64).sqrt(), 5.0);
}

/// The reverse discretisation is `x - f_i + G_i^2 score` with noise `G_i`,
/// written out from the schedules: SMLD (`f = 0`, `G^2 = sigma_i^2 - sigma_{i-1}^2`),
/// DDPM (`x - f = (2 - sqrt(1 - beta_i)) x`, `G^2 = beta_i`) and Euler–Maruyama
/// for sub-VP (`f = a(t) x / N`, `G^2 = g(t)^2 / N`).
#[test]
fn reverse_discrete_step_formula() {
    let b = CpuBackend;
    let n = 100;
    let shape = Shape::new([2, 2]).unwrap();
    let xv = [1.0f64, 2.0, -1.0, 0.5];
    let sv = [0.3f64, -0.2, 1.0, 0.0];
    let x = b
        .tensor(xv.iter().map(|&v| v as f32).collect(), &shape)
        .unwrap();
    let s = b
        .tensor(sv.iter().map(|&v| v as f32).collect(), &shape)
        .unwrap();
    let t = [0.5, 1.0];
    let idx = |t: f64| ((t * (n - 1) as f64) + 1e-9).floor() as usize;
    let ve = VeSde::new(0.01, 50.0, n).unwrap();
    let vp = VpSde::new(0.1, 20.0, n).unwrap();
    let sub = SubVpSde::new(0.1, 20.0, n).unwrap();
    // Each case: the SDE and `t -> (coefficient of x, G^2)` written out by hand.
    type Expected<'a> = Box<dyn Fn(f64) -> (f64, f64) + 'a>;
    let cases: Vec<(&dyn Sde, Expected)> = vec![
        (
            &ve,
            Box::new(|t| {
                let sig = ve.discrete_sigmas();
                let i = idx(t);
                let g2 = sig[i].powi(2) - if i == 0 { 0.0 } else { sig[i - 1].powi(2) };
                (1.0, g2)
            }),
        ),
        (
            &vp,
            Box::new(|t| {
                let beta =
                    0.1 / n as f64 + (20.0 - 0.1) / n as f64 * idx(t) as f64 / (n - 1) as f64;
                (2.0 - (1.0 - beta).sqrt(), beta)
            }),
        ),
        (
            &sub,
            Box::new(|t| {
                (
                    1.0 - sub.drift_coef(t) / n as f64,
                    sub.diffusion(t).powi(2) / n as f64,
                )
            }),
        ),
    ];
    for (sde, want_of) in cases {
        let (mean, g) = sde.reverse_discrete_step(&b, &x, &t, &s).unwrap();
        let mean = b.to_vec(&mean).unwrap();
        for i in 0..4 {
            let (cx, g2) = want_of(t[i / 2]);
            let want = cx * xv[i] + g2 * sv[i];
            assert!(
                (f64::from(mean[i]) - want).abs() < 1e-5 * want.abs().max(1.0),
                "{:?} {i}: {} vs {want}",
                sde.kind(),
                mean[i]
            );
            assert!((g[i / 2] - g2.sqrt()).abs() < 1e-12);
        }
    }
}
