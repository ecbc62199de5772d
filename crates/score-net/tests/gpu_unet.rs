#![allow(clippy::unwrap_used)]
//! The whole UNet on wgpu against the CPU backend: forward (score), backward
//! (parameter gradients) and the input vector-Jacobian product agree for
//! grey and RGB inputs, both embeddings, both resampling modes, attention
//! and dropout (its mask is rebuilt from the same Philox key on both).
//! REQUIRES a wgpu adapter (fails loudly without one; CI uses llvmpipe).
//!
//! Tolerance: `rel * max|cpu| + abs` with rel 5e-6 on every output. Each
//! layer sums up to a few hundred f32 products in a different order than the
//! CPU, and group norms rescale between layers; measured on llvmpipe the
//! worst element of every output is within 4.4e-7 of the largest magnitude,
//! so 5e-6 leaves a 10x margin for other devices' rounding (fused
//! multiply-adds, `exp`/`sqrt` accuracy) while a wrong index or a missing
//! term (errors of order 1) cannot pass.

mod common;

use common::gpu::{assert_close, gpu, up};
use common::randn;
use score_net::{Embedding, Resample, UnetConfig, UnetScore};
use sde_core::{Backend, CpuBackend, NoiseKey, ScoreVjp, SdeConfig, SdeKind};

const REL: f32 = 5e-6;

fn config(channels: usize, embedding: Embedding, resample: Resample) -> UnetConfig {
    UnetConfig {
        in_channels: channels,
        base_channels: 8,
        channel_mult: vec![1, 2],
        num_res_blocks: 1,
        attn_resolutions: vec![4],
        dropout: 0.2,
        embedding,
        resample,
        ..UnetConfig::default()
    }
}

#[test]
fn unet_forward_backward_and_vjp_agree_across_backends() {
    let (g, c) = (gpu(), CpuBackend);
    let cases = [
        (1, SdeKind::Vp, Embedding::Positional, Resample::Pool),
        (3, SdeKind::Ve, Embedding::Fourier, Resample::Conv),
        (1, SdeKind::SubVp, Embedding::Positional, Resample::Conv),
    ];
    for (k, (ch, kind, emb, resample)) in cases.into_iter().enumerate() {
        let name = format!("{ch}ch {kind:?} {emb:?} {resample:?}");
        let sde = SdeConfig::default_for(kind).build().unwrap();
        let cfg = config(ch, emb, resample);
        let mut mc = UnetScore::new(&c, &cfg, 8, sde.clone(), 3).unwrap();
        let mut mg = UnetScore::new(&g, &cfg, 8, sde, 3).unwrap();
        // Random parameters, so the zero-initialised residual outputs carry gradient too.
        let n = mc.store.flat_len();
        let p = randn(&[n], 40 + k as u64, 0.2);
        mc.store.set_params(&c, p.clone()).unwrap();
        mg.store.set_params(&g, up(&p)).unwrap();

        let x = randn(&[3, ch, 8, 8], 1, 1.0);
        let t = [0.05, 0.5, 0.93];
        let key = Some(NoiseKey::new(9, 1));
        let (sc, cache_c) = mc.score_with_cache(&c, &x, &t, key).unwrap();
        let (sg, cache_g) = mg.score_with_cache(&g, &up(&x), &t, key).unwrap();
        assert_close(&format!("{name}: score"), &sg, &sc, REL, 1e-6);

        let dscore = randn(&[3, ch, 8, 8], 2, 1.0);
        let gc0 = randn(&[n], 7, 1.0);
        let mut gradc = gc0.clone();
        let mut gradg = up(&gc0);
        let dxc = mc
            .backward_score(&c, &cache_c, &t, &dscore, &mut gradc)
            .unwrap();
        let dxg = mg
            .backward_score(&g, &cache_g, &t, &up(&dscore), &mut gradg)
            .unwrap();
        assert_close(&format!("{name}: input gradient"), &dxg, &dxc, REL, 1e-6);
        // Compare the increments (the buffers started at the same random values).
        let inc =
            |v: Vec<f32>| -> Vec<f32> { v.iter().zip(gc0.data()).map(|(a, b)| a - b).collect() };
        let want = c.tensor(inc(gradc.data().to_vec()), gradc.shape()).unwrap();
        let got = g
            .tensor(inc(g.to_vec(&gradg).unwrap()), gradc.shape())
            .unwrap();
        assert_close(
            &format!("{name}: parameter gradients"),
            &got,
            &want,
            REL,
            1e-6,
        );
        assert!(want.data().iter().filter(|v| **v != 0.0).count() > n / 2);

        // The ScoreModel VJP (no dropout) used by likelihoods and guidance.
        let v = randn(&[3, ch, 8, 8], 5, 1.0);
        let (s2c, vjpc) = mc.score_and_vjp(&c, &x, &t, &v).unwrap();
        let (s2g, vjpg) = mg.score_and_vjp(&g, &up(&x), &t, &up(&v)).unwrap();
        assert_close(&format!("{name}: score (eval)"), &s2g, &s2c, REL, 1e-6);
        assert_close(&format!("{name}: vjp"), &vjpg, &vjpc, REL, 1e-6);
    }
}
