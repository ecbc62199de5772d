//! The inference forward (no cache) on the CPU backend: the UNet's
//! `forward_inference`, the score model's `score` (what sampling calls) and
//! the classifier's `forward_inference` / `logits` give the cached forward's
//! output without dropout bit for bit (the same ops run in the same order;
//! only the lifetime of the activations differs), over configurations with
//! and without attention, both embeddings and resampling kinds, several
//! resolutions, channel multipliers and block counts, grey and RGB, and the
//! dropout setting ignored. Also through the `Network` trait, and the same
//! typed input errors as the cached forward.
#![allow(clippy::unwrap_used)]

mod common;

use common::randn;
use score_net::{
    Classifier, ClassifierConfig, ClassifierModel, Embedding, Network, ParamBuilder, Resample,
    Unet, UnetConfig, UnetScore,
};
use sde_core::{CpuBackend, CpuTensor, NoiseKey, ScoreModel, SdeConfig, SdeKind};

/// Asserts `got` and `want` have the same shape and the same bits in every element.
fn assert_bits(name: &str, got: &CpuTensor, want: &CpuTensor) {
    assert_eq!(got.shape(), want.shape(), "{name}: shape");
    for (i, (g, w)) in got.data().iter().zip(want.data()).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "{name}: element {i}: {g} vs {w}");
    }
    assert!(
        want.data().iter().any(|v| *v != 0.0),
        "{name}: output all zero"
    );
}

/// `(name, config, image size, time inputs)`: the UNets compared.
fn unet_cases() -> Vec<(&'static str, UnetConfig, usize, Vec<f64>)> {
    let tiny = UnetConfig {
        in_channels: 1,
        base_channels: 4,
        channel_mult: vec![1, 2],
        num_res_blocks: 1,
        attn_resolutions: vec![4],
        dropout: 0.2,
        ..UnetConfig::default()
    };
    vec![
        // The digits configuration (configs/digits-vp.toml): attention at 4x4.
        (
            "digits 8x8 nf16 (1,2) attn 4",
            UnetConfig {
                base_channels: 16,
                dropout: 0.0,
                ..tiny.clone()
            },
            8,
            vec![10.0, 500.0, 990.0],
        ),
        (
            "8x8 nf4 Fourier pool, no attention",
            UnetConfig {
                attn_resolutions: vec![],
                embedding: Embedding::Fourier,
                resample: Resample::Pool,
                ..tiny.clone()
            },
            8,
            vec![-2.0, 0.5, 3.0],
        ),
        (
            "16x16 RGB nf8 (1,2,2) x2 blocks, attention at 8 and 4, no rescale",
            UnetConfig {
                in_channels: 3,
                base_channels: 8,
                channel_mult: vec![1, 2, 2],
                num_res_blocks: 2,
                attn_resolutions: vec![8, 4],
                skip_rescale: false,
                ..tiny.clone()
            },
            16,
            vec![1.0, 250.0],
        ),
        (
            "32x32 nf8 (1,1,2,2) Fourier, attention at 8",
            UnetConfig {
                base_channels: 8,
                channel_mult: vec![1, 1, 2, 2],
                attn_resolutions: vec![8],
                embedding: Embedding::Fourier,
                ..tiny
            },
            32,
            vec![0.1, -1.0],
        ),
        (
            "28x28 reference UNet",
            UnetConfig::default(),
            28,
            vec![3.0, 700.0],
        ),
    ]
}

/// Random parameters (not the zero-initialised residual outputs), so every
/// block contributes to the output.
fn random_unet(cfg: &UnetConfig, size: usize, seed: u64) -> (Unet, CpuTensor) {
    let b = CpuBackend;
    let mut pb = ParamBuilder::new();
    let net = Unet::new(cfg, size, &mut pb, seed).unwrap();
    let store = pb.build(&b, seed).unwrap();
    (net, randn(&[store.flat_len()], seed + 100, 0.2))
}

#[test]
fn unet_inference_equals_the_cached_forward_bit_for_bit() {
    let b = CpuBackend;
    for (k, (name, cfg, size, tin)) in unet_cases().into_iter().enumerate() {
        let (net, p) = random_unet(&cfg, size, k as u64);
        let x = randn(
            &[tin.len(), cfg.in_channels, size, size],
            10 + k as u64,
            1.0,
        );
        let (want, _cache) = net.forward(&b, &p, &x, &tin, None).unwrap();
        let got = net.forward_inference(&b, &p, &x, &tin).unwrap();
        assert_bits(name, &got, &want);
        let via_trait = Network::forward_inference(&net, &b, &p, &x, &tin).unwrap();
        assert_bits(&format!("{name} (Network)"), &via_trait, &want);
        // Repeatable, and dropout (where the config has it) is off.
        let again = net.forward_inference(&b, &p, &x, &tin).unwrap();
        assert_bits(&format!("{name} (again)"), &again, &want);
        if cfg.dropout > 0.0 {
            let (dropped, _) = net
                .forward(&b, &p, &x, &tin, Some(NoiseKey::new(5, 0)))
                .unwrap();
            assert_ne!(dropped.data(), want.data(), "{name}: dropout had no effect");
        }
    }
}

/// `ScoreModel::score` (sampling) runs the inference forward and gives the
/// score of `score_with_cache` without dropout bit for bit, for every SDE
/// family (they scale the output differently).
#[test]
fn score_model_score_equals_score_with_cache() {
    let b = CpuBackend;
    let cases = unet_cases();
    for (k, kind) in [SdeKind::Vp, SdeKind::Ve, SdeKind::SubVp]
        .into_iter()
        .enumerate()
    {
        let (name, cfg, size, _) = &cases[k % 2];
        let sde = SdeConfig::default_for(kind).build().unwrap();
        let mut model = UnetScore::new(&b, cfg, *size, sde, 7).unwrap();
        let p = randn(&[model.store.flat_len()], 30 + k as u64, 0.2);
        model.store.set_params(&b, p).unwrap();
        let x = randn(&[3, cfg.in_channels, *size, *size], 3, 1.0);
        let t = [0.02, 0.4, 0.97];
        let (want, _) = model.score_with_cache(&b, &x, &t, None).unwrap();
        let got = ScoreModel::score(&model, &b, &x, &t).unwrap();
        assert_bits(&format!("{name} {kind:?} score"), &got, &want);
        let direct = model.score_inference(&b, &x, &t).unwrap();
        assert_bits(&format!("{name} {kind:?} score_inference"), &direct, &want);
        // Times outside (0, T] are refused as by the cached path.
        assert!(model
            .score_with_cache(&b, &x, &[0.5, 2.0, 0.5], None)
            .is_err());
        assert!(model.score_inference(&b, &x, &[0.5, 2.0, 0.5]).is_err());
    }
}

#[test]
fn classifier_inference_equals_the_cached_forward_bit_for_bit() {
    let b = CpuBackend;
    let base = ClassifierConfig {
        in_channels: 1,
        base_channels: 8,
        channel_mult: vec![1, 2],
        num_res_blocks: 1,
        attn_resolutions: vec![4],
        dropout: 0.2,
        num_classes: 4,
        ..ClassifierConfig::default()
    };
    let cases = [
        ("8x8 attn 4", base.clone(), 8),
        (
            "16x16 RGB (1,2,2) x2 Fourier pool, no attention",
            ClassifierConfig {
                in_channels: 3,
                channel_mult: vec![1, 2, 2],
                num_res_blocks: 2,
                attn_resolutions: vec![],
                embedding: Embedding::Fourier,
                resample: Resample::Pool,
                ..base
            },
            16,
        ),
    ];
    for (k, (name, cfg, size)) in cases.into_iter().enumerate() {
        let sde = SdeConfig::default_for(SdeKind::Vp).build().unwrap();
        let mut model = ClassifierModel::new(&b, &cfg, size, sde, k as u64).unwrap();
        let p = randn(&[model.store.flat_len()], 50 + k as u64, 0.3);
        model.store.set_params(&b, p.clone()).unwrap();
        let x = randn(&[3, cfg.in_channels, size, size], 4, 1.0);
        let t = [0.1, 0.5, 0.9];
        let tin = model.time_input(&t);
        let net: &Classifier = &model.net;
        let (want, _cache) = net.forward(&b, &p, &x, &tin, None).unwrap();
        assert_bits(
            name,
            &net.forward_inference(&b, &p, &x, &tin).unwrap(),
            &want,
        );
        let via_trait = Network::forward_inference(net, &b, &p, &x, &tin).unwrap();
        assert_bits(&format!("{name} (Network)"), &via_trait, &want);
        assert_bits(
            &format!("{name} (logits)"),
            &model.logits(&b, &x, &t).unwrap(),
            &want,
        );
    }
}

/// The inference forward checks its input as the cached forward does.
#[test]
fn inference_forward_refuses_bad_inputs() {
    let b = CpuBackend;
    let cfg = UnetConfig {
        base_channels: 8,
        ..UnetConfig::default()
    };
    let (net, p) = random_unet(&cfg, 28, 0);
    for (dims, tin) in [
        ([1, 1, 30, 30], vec![1.0]),
        ([1, 3, 28, 28], vec![1.0]),
        ([2, 1, 28, 28], vec![1.0]),
    ] {
        let x = randn(&dims, 0, 1.0);
        let cached = net.forward(&b, &p, &x, &tin, None).unwrap_err();
        let inference = net.forward_inference(&b, &p, &x, &tin).unwrap_err();
        assert_eq!(inference.to_string(), cached.to_string());
    }
}
