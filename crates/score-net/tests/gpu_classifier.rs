#![allow(clippy::unwrap_used)]
//! The noise-conditional classifier on wgpu against the CPU backend: logits,
//! the backward pass (input gradient and parameter gradients, dropout on with
//! its mask rebuilt from the same Philox key on both) and
//! `log_prob_and_input_grad` agree for grey and RGB inputs, both embeddings
//! and both resampling modes. REQUIRES a wgpu adapter (fails loudly without
//! one; CI uses llvmpipe).
//!
//! Tolerance: `rel * max|cpu| + abs` with rel 5e-6 on every tensor output, as
//! in `tests/gpu_unet.rs`: each layer sums up to a few hundred f32 products
//! in another order than the CPU (a real GPU may also fuse multiply-adds),
//! group norms rescale between layers, and the classifier has fewer layers
//! than the UNet; its pooling adds one sum over at most 64 pixels. Measured
//! on llvmpipe the worst element of every output is within 5.6e-7 of the
//! largest magnitude (the test prints each), a margin of about 9x, while a
//! wrong index or a missing term (errors of order 1) cannot pass. The
//! log-probabilities are compared in absolute terms: each is a difference of
//! logits of order 1 computed in f64 from f32 logits that agree to the same
//! tolerance, so `|dlogp| <= 2 * (rel * max|logit| + abs)`.

mod common;

use common::gpu::{assert_close, assert_close_slices, gpu, up};
use common::randn;
use score_net::{
    Classifier, ClassifierConfig, Embedding, NetBackend, ParamBuilder, ParamStore, Resample,
};
use sde_core::{Backend, CpuBackend, CpuTensor, NoiseKey, VeSde, VpSde};

const REL: f32 = 5e-6;
const ABS: f32 = 1e-6;

fn config(channels: usize, embedding: Embedding, resample: Resample) -> ClassifierConfig {
    ClassifierConfig {
        in_channels: channels,
        base_channels: 8,
        channel_mult: vec![1, 2],
        num_res_blocks: 1,
        attn_resolutions: vec![4],
        dropout: 0.2,
        embedding,
        resample,
        num_classes: 5,
        ..ClassifierConfig::default()
    }
}

fn store<B: NetBackend>(
    b: &B,
    cfg: &ClassifierConfig,
    p: &CpuTensor,
) -> (Classifier, ParamStore<B>) {
    let mut pb = ParamBuilder::new();
    let net = Classifier::new(cfg, 8, &mut pb, 3).unwrap();
    let mut s = pb.build(b, 3).unwrap();
    let p = b.tensor(p.data().to_vec(), p.shape()).unwrap();
    s.set_params(b, p).unwrap();
    (net, s)
}

/// Largest `|got - want| / max|want|` (what the tolerance is measured against).
fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .fold(0.0f32, |m, (g, w)| m.max((g - w).abs()))
        / scale.max(f32::MIN_POSITIVE)
}

#[test]
fn classifier_forward_backward_and_log_prob_agree_across_backends() {
    let (g, c) = (gpu(), CpuBackend);
    let vp = VpSde::new(0.1, 20.0, 1000).unwrap();
    let ve = VeSde::new(0.01, 50.0, 1000).unwrap();
    let cases = [
        (1, Embedding::Positional, Resample::Pool),
        (3, Embedding::Fourier, Resample::Conv),
        (1, Embedding::Positional, Resample::Conv),
    ];
    for (k, (ch, emb, resample)) in cases.into_iter().enumerate() {
        let name = format!("{ch}ch {emb:?} {resample:?}");
        let cfg = config(ch, emb, resample);
        let n = {
            let mut pb = ParamBuilder::new();
            Classifier::new(&cfg, 8, &mut pb, 3).unwrap();
            pb.flat_len()
        };
        // Random parameters, so the zero-initialised residual outputs carry gradient too.
        let p = randn(&[n], 40 + k as u64, 0.2);
        let (net, sc) = store(&c, &cfg, &p);
        let (_, sg) = store(&g, &cfg, &p);
        let t = [0.05, 0.5, 0.93];
        let tin = match emb {
            Embedding::Fourier => net.time_input(&ve, &t),
            Embedding::Positional => net.time_input(&vp, &t),
        };
        let x = randn(&[3, ch, 8, 8], 1, 1.0);
        let key = Some(NoiseKey::new(9, 1));
        let (lc, cache_c) = net.forward(&c, sc.params(), &x, &tin, key).unwrap();
        let (lg, cache_g) = net.forward(&g, sg.params(), &up(&x), &tin, key).unwrap();
        assert_close(&format!("{name}: logits"), &lg, &lc, REL, ABS);

        let dl = randn(&[3, 5], 2, 1.0);
        let g0 = randn(&[n], 7, 1.0);
        let (mut gradc, mut gradg) = (g0.clone(), up(&g0));
        let dxc = net
            .backward(&c, sc.params(), &cache_c, &dl, &mut gradc)
            .unwrap();
        let dxg = net
            .backward(&g, sg.params(), &cache_g, &up(&dl), &mut gradg)
            .unwrap();
        assert_close(&format!("{name}: input gradient"), &dxg, &dxc, REL, ABS);
        // Compare the increments (the buffers started at the same random values).
        let inc = |v: &[f32]| -> Vec<f32> { v.iter().zip(g0.data()).map(|(a, b)| a - b).collect() };
        let want = inc(gradc.data());
        let got = inc(&g.to_vec(&gradg).unwrap());
        assert_close_slices(
            &format!("{name}: parameter gradients"),
            &got,
            &want,
            REL,
            ABS,
        );
        assert!(want.iter().filter(|v| **v != 0.0).count() > n / 2);

        // Guidance: log p(y | x) and its input gradient (no dropout).
        let labels = [4u32, 0, 2];
        let (pc, gc) = net
            .log_prob_and_input_grad(&c, sc.params(), &x, &tin, &labels)
            .unwrap();
        let (pg, gg) = net
            .log_prob_and_input_grad(&g, sg.params(), &up(&x), &tin, &labels)
            .unwrap();
        let lmax = lc.data().iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (a, b) in pg.iter().zip(&pc) {
            let tol = 2.0 * f64::from(REL * lmax + ABS);
            assert!(
                (a - b).abs() <= tol,
                "{name}: log p {a} vs CPU {b} (tolerance {tol:.2e})"
            );
        }
        assert_close(&format!("{name}: grad_x log p"), &gg, &gc, REL, ABS);
        eprintln!(
            "{name}: relative errors logits {:.1e}, dx {:.1e}, grads {:.1e}, grad_x log p {:.1e}",
            rel_err(&g.to_vec(&lg).unwrap(), lc.data()),
            rel_err(&g.to_vec(&dxg).unwrap(), dxc.data()),
            rel_err(&got, &want),
            rel_err(&g.to_vec(&gg).unwrap(), gc.data()),
        );
    }
}
