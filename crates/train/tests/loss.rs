//! The training objectives: each loss's parameter gradient matches central
//! finite differences of the loss (same times, noise and levels), the DDPM
//! loss of a zero network is `|z|^2 / D`, and SMLD draws only grid levels.
#![allow(clippy::unwrap_used)]

use score_net::{UnetConfig, UnetScore};
use sde_core::dsm::{Reduction, Weighting};
use sde_core::{AnySde, Backend, CpuBackend, NoiseRng, SdeConfig, SdeKind, Shape};
use train::loss::{compute, LossConfig, LossKind};

fn model(kind: SdeKind, randomise: bool) -> UnetScore<CpuBackend, AnySde> {
    let b = CpuBackend;
    let cfg = UnetConfig {
        base_channels: 4,
        channel_mult: vec![1, 2],
        num_res_blocks: 1,
        attn_resolutions: vec![],
        dropout: 0.0,
        ..UnetConfig::default()
    };
    let sde = match kind {
        SdeKind::Ve => SdeConfig::Ve {
            sigma_min: 0.01,
            sigma_max: 5.0,
            num_steps: 100,
        },
        k => SdeConfig::default_for(k).with_num_steps(100),
    }
    .build()
    .unwrap();
    let mut m = UnetScore::new(&b, &cfg, 8, sde, 3).unwrap();
    if randomise {
        // Random weights everywhere (the zero-initialised output layers would
        // hide most of the gradient).
        let n = m.store.flat_len();
        let mut v = vec![0.0f32; n];
        sde_core::NoiseKey::new(9, 0).fill_gaussian(&mut v);
        let v: Vec<f32> = v.iter().map(|x| 0.2 * x).collect();
        let shape = b.shape(m.store.params()).clone();
        m.store
            .set_params(&b, b.tensor(v, &shape).unwrap())
            .unwrap();
    }
    m
}

fn x0() -> sde_core::CpuTensor {
    let mut v = vec![0.0f32; 4 * 64];
    sde_core::NoiseKey::new(4, 0).fill_uniform(&mut v);
    CpuBackend
        .tensor(v, &Shape::new([4, 1, 8, 8]).unwrap())
        .unwrap()
}

fn check_fd(kind: SdeKind, cfg: &LossConfig) {
    let b = CpuBackend;
    let mut m = model(kind, true);
    let x = x0();
    let rng = NoiseRng::new(21);
    let mut grads = b.zeros(b.shape(m.store.grads())).unwrap();
    let base = compute(&b, &m, &x, cfg, &mut rng.clone(), false, Some(&mut grads)).unwrap();
    let g = b.to_vec(&grads).unwrap();
    let p0 = b.to_vec(m.store.params()).unwrap();
    let gmax = g.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    assert!(gmax > 0.0);
    // The 8 largest-gradient coordinates and 8 spread through the buffer.
    let mut order: Vec<usize> = (0..g.len()).collect();
    order.sort_by(|&i, &j| g[j].abs().total_cmp(&g[i].abs()));
    let mut picks: Vec<usize> = order[..8].to_vec();
    picks.extend((0..8).map(|k| k * g.len() / 8 + 7));
    let shape = b.shape(m.store.params()).clone();
    let h = 1e-2f32;
    for &i in &picks {
        let mut eval = |d: f32| {
            let mut p = p0.clone();
            p[i] += d;
            m.store
                .set_params(&b, b.tensor(p, &shape).unwrap())
                .unwrap();
            compute(&b, &m, &x, cfg, &mut rng.clone(), false, None)
                .unwrap()
                .loss
        };
        let fd = (eval(h) - eval(-h)) / (2.0 * f64::from(h));
        let err = (fd - f64::from(g[i])).abs();
        assert!(
            err < 1e-2 * f64::from(gmax) + 1e-6,
            "{kind:?} {cfg:?}: param {i}: analytic {} vs FD {fd} (max |g| {gmax}, loss {})",
            g[i],
            base.loss
        );
    }
}

#[test]
fn every_loss_gradient_matches_finite_differences() {
    for kind in [SdeKind::Ve, SdeKind::Vp, SdeKind::SubVp] {
        for weighting in [Weighting::SigmaSquared, Weighting::Likelihood] {
            for reduction in [Reduction::Mean, Reduction::HalfSum] {
                let cfg = LossConfig {
                    kind: LossKind::Dsm,
                    weighting,
                    reduction,
                    eps: 1e-3,
                };
                check_fd(kind, &cfg);
            }
        }
    }
    let smld = LossConfig {
        kind: LossKind::Smld,
        ..LossConfig::default()
    };
    check_fd(SdeKind::Ve, &smld);
    for reduction in [Reduction::Mean, Reduction::HalfSum] {
        let ddpm = LossConfig {
            kind: LossKind::Ddpm,
            reduction,
            ..LossConfig::default()
        };
        check_fd(SdeKind::Vp, &ddpm);
    }
}

#[test]
fn ddpm_loss_of_a_zero_network_is_the_noise_energy() {
    let b = CpuBackend;
    let mut m = model(SdeKind::Vp, false);
    let shape = b.shape(m.store.params()).clone();
    m.store.set_params(&b, b.zeros(&shape).unwrap()).unwrap();
    let cfg = LossConfig {
        kind: LossKind::Ddpm,
        ..LossConfig::default()
    };
    let x = x0();
    let mut rng = NoiseRng::new(3);
    let v = compute(&b, &m, &x, &cfg, &mut rng.clone(), false, None).unwrap();
    // Same draws as `compute`: the level uniforms, then the noise key.
    let _levels = rng.uniforms_f64(4);
    let mut z = vec![0.0f32; 4 * 64];
    rng.next_key().fill_gaussian(&mut z);
    for (k, l) in v.per_sample.iter().enumerate() {
        let want: f64 = z[k * 64..(k + 1) * 64]
            .iter()
            .map(|&z| f64::from(z) * f64::from(z))
            .sum::<f64>()
            / 64.0;
        assert!((l - want).abs() < 1e-6 * want.max(1.0), "{l} vs {want}");
    }
}

#[test]
fn discrete_losses_use_grid_times_and_continuous_dsm_does_not() {
    let b = CpuBackend;
    let x = x0();
    for (kind, loss) in [(SdeKind::Ve, LossKind::Smld), (SdeKind::Vp, LossKind::Ddpm)] {
        let m = model(kind, false);
        let cfg = LossConfig {
            kind: loss,
            ..LossConfig::default()
        };
        let v = compute(&b, &m, &x, &cfg, &mut NoiseRng::new(8), false, None).unwrap();
        for t in &v.t {
            let i = t * 99.0;
            assert!(
                (i - i.round()).abs() < 1e-9,
                "{loss:?}: t = {t} is off the grid"
            );
        }
    }
    let m = model(SdeKind::Vp, false);
    let v = compute(
        &b,
        &m,
        &x,
        &LossConfig::default(),
        &mut NoiseRng::new(8),
        false,
        None,
    )
    .unwrap();
    assert!(v
        .t
        .iter()
        .any(|t| ((t * 99.0) - (t * 99.0).round()).abs() > 1e-3));
}
