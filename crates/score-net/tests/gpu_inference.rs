#![allow(clippy::unwrap_used)]
//! The inference forward (no cache) on wgpu: the UNet's `forward_inference`,
//! the score model's `score` (what sampling calls) and the classifier's
//! `logits` give the wgpu cached forward's output without dropout bit for
//! bit (the same kernels are recorded in the same order; only the buffers'
//! lifetimes differ), and agree with the CPU backend within the tolerance of
//! `tests/gpu_unet.rs` (`rel * max|cpu| + abs`, rel 5e-6, abs 1e-6). The
//! inference forward also takes fewer bytes from the buffer pool (its
//! device-memory high-water mark). REQUIRES a wgpu adapter (fails loudly
//! without one; CI uses llvmpipe).

mod common;

use common::gpu::{assert_close, down, gpu, up};
use common::randn;
use score_net::gpu::{WgpuBackend, WgpuTensor};
use score_net::{
    ClassifierConfig, ClassifierModel, Embedding, ParamBuilder, Resample, Unet, UnetConfig,
    UnetScore,
};
use sde_core::{Backend, CpuBackend, ScoreModel, SdeConfig, SdeKind};

const REL: f32 = 5e-6;
const ABS: f32 = 1e-6;

/// Asserts two wgpu tensors hold the same shape and the same bits.
fn assert_bits(name: &str, got: &WgpuTensor, want: &WgpuTensor) {
    assert_eq!(got.shape(), want.shape(), "{name}: shape");
    let (g, w) = (down(got), down(want));
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert_eq!(a.to_bits(), b.to_bits(), "{name}: element {i}: {a} vs {b}");
    }
    assert!(w.iter().any(|v| *v != 0.0), "{name}: output all zero");
}

#[test]
fn inference_matches_the_cached_forward_on_wgpu() {
    let (g, c) = (gpu(), CpuBackend);
    let base = UnetConfig {
        in_channels: 1,
        base_channels: 8,
        channel_mult: vec![1, 2],
        num_res_blocks: 1,
        attn_resolutions: vec![4],
        dropout: 0.2,
        ..UnetConfig::default()
    };
    let cases = [
        ("8x8 attn 4 positional conv", SdeKind::Vp, base.clone(), 8),
        (
            "8x8 RGB Fourier pool attn 4",
            SdeKind::Ve,
            UnetConfig {
                in_channels: 3,
                embedding: Embedding::Fourier,
                resample: Resample::Pool,
                ..base.clone()
            },
            8,
        ),
        (
            "16x16 (1,2,2) x2 blocks, no attention",
            SdeKind::SubVp,
            UnetConfig {
                channel_mult: vec![1, 2, 2],
                num_res_blocks: 2,
                attn_resolutions: vec![],
                ..base
            },
            16,
        ),
    ];
    for (k, (name, kind, cfg, size)) in cases.into_iter().enumerate() {
        let sde = SdeConfig::default_for(kind).build().unwrap();
        let mut mc = UnetScore::new(&c, &cfg, size, sde.clone(), 3).unwrap();
        let mut mg = UnetScore::new(&g, &cfg, size, sde, 3).unwrap();
        let p = randn(&[mc.store.flat_len()], 60 + k as u64, 0.2);
        mc.store.set_params(&c, p.clone()).unwrap();
        mg.store.set_params(&g, up(&p)).unwrap();
        let x = randn(&[3, cfg.in_channels, size, size], 1, 1.0);
        let t = [0.05, 0.5, 0.93];
        let tin = mc.time_input(&t);
        let xg = up(&x);

        let (cached, _) = mg
            .net
            .forward(&g, mg.store.params(), &xg, &tin, None)
            .unwrap();
        let inference = mg
            .net
            .forward_inference(&g, mg.store.params(), &xg, &tin)
            .unwrap();
        assert_bits(&format!("{name}: output"), &inference, &cached);
        let cpu = mc
            .net
            .forward_inference(&c, mc.store.params(), &x, &tin)
            .unwrap();
        assert_close(
            &format!("{name}: output vs CPU"),
            &inference,
            &cpu,
            REL,
            ABS,
        );

        let (score_cached, _) = mg.score_with_cache(&g, &xg, &t, None).unwrap();
        let score = ScoreModel::score(&mg, &g, &xg, &t).unwrap();
        assert_bits(&format!("{name}: score"), &score, &score_cached);
        let score_cpu = ScoreModel::score(&mc, &c, &x, &t).unwrap();
        assert_close(
            &format!("{name}: score vs CPU"),
            &score,
            &score_cpu,
            REL,
            ABS,
        );
    }

    // The classifier's logits (predictions) through its inference forward.
    let cfg = ClassifierConfig {
        base_channels: 8,
        channel_mult: vec![1, 2],
        num_res_blocks: 1,
        attn_resolutions: vec![4],
        num_classes: 5,
        ..ClassifierConfig::default()
    };
    let sde = SdeConfig::default_for(SdeKind::Vp).build().unwrap();
    let mut cc = ClassifierModel::new(&c, &cfg, 8, sde.clone(), 4).unwrap();
    let mut cg = ClassifierModel::new(&g, &cfg, 8, sde, 4).unwrap();
    let p = randn(&[cc.store.flat_len()], 70, 0.3);
    cc.store.set_params(&c, p.clone()).unwrap();
    cg.store.set_params(&g, up(&p)).unwrap();
    let x = randn(&[3, 1, 8, 8], 2, 1.0);
    let t = [0.1, 0.5, 0.9];
    let (cached, _) = cg
        .net
        .forward(&g, cg.store.params(), &up(&x), &cg.time_input(&t), None)
        .unwrap();
    let logits = cg.logits(&g, &up(&x), &t).unwrap();
    assert_bits("classifier logits", &logits, &cached);
    let logits_cpu = cc.logits(&c, &x, &t).unwrap();
    assert_close("classifier logits vs CPU", &logits, &logits_cpu, REL, ABS);
}

/// Bytes a forward pass takes from a fresh buffer pool: every buffer it
/// allocates returns to the pool when its last handle drops, so once the
/// output and the cache are gone the pool's idle bytes are the most the
/// forward pass held at once (up to size-class rounding).
fn pool_bytes(b: &WgpuBackend, f: impl FnOnce()) -> u64 {
    b.sync().unwrap();
    b.context().pool().trim();
    f();
    b.sync().unwrap();
    b.context().pool().stats().idle_bytes
}

/// The digits configuration (configs/digits-vp.toml) at batch 64: the
/// inference forward's pool high-water mark is a fraction of the cached
/// forward's. A backend of its own, so other tests' buffers do not count.
#[test]
fn inference_forward_takes_less_device_memory() {
    let b = WgpuBackend::new().expect("the wgpu tests need an adapter");
    let cfg = UnetConfig {
        base_channels: 16,
        channel_mult: vec![1, 2],
        num_res_blocks: 1,
        attn_resolutions: vec![4],
        dropout: 0.0,
        ..UnetConfig::default()
    };
    let mut pb = ParamBuilder::new();
    let net = Unet::new(&cfg, 8, &mut pb, 0).unwrap();
    let store = pb.build(&b, 0).unwrap();
    let xc = randn(&[64, 1, 8, 8], 3, 1.0);
    let x = b.tensor(xc.data().to_vec(), xc.shape()).unwrap();
    let tin: Vec<f64> = (0..64).map(|i| 15.0 * i as f64).collect();
    let cached = pool_bytes(&b, || {
        drop(net.forward(&b, store.params(), &x, &tin, None).unwrap());
    });
    let inference = pool_bytes(&b, || {
        drop(net.forward_inference(&b, store.params(), &x, &tin).unwrap());
    });
    eprintln!(
        "digits UNet, batch 64, pool high-water: cached forward {:.2} MiB, inference {:.2} MiB",
        cached as f64 / (1 << 20) as f64,
        inference as f64 / (1 << 20) as f64
    );
    assert!(inference > 0);
    assert!(
        inference * 2 < cached,
        "inference {inference} bytes, cached {cached}"
    );
}
