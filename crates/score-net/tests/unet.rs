//! The UNet end to end: shapes for grey and RGB images, whole-network
//! parameter and input gradients against finite differences, the score
//! model's VJP, and overfitting a batch with the DSM loss.
#![allow(clippy::unwrap_used)]

mod common;

use common::{check_grad, dot64, randn};
use score_net::{Embedding, ParamBuilder, Resample, Unet, UnetConfig, UnetScore};
use sde_core::{
    Backend, CpuBackend, CpuTensor, NoiseKey, ScoreModel, ScoreVjp, Shape, VeSde, VpSde,
};

fn tiny(embedding: Embedding, resample: Resample) -> UnetConfig {
    UnetConfig {
        in_channels: 1,
        base_channels: 4,
        channel_mult: vec![1, 2],
        num_res_blocks: 1,
        attn_resolutions: vec![4],
        dropout: 0.2,
        skip_rescale: true,
        embedding,
        fourier_scale: 16.0,
        resample,
        time_input: None,
        output: None,
    }
}

/// Random parameters (instead of the zero-initialised residual outputs) so
/// that every path carries gradient.
fn randomised(store_params: &CpuTensor, seed: u64) -> CpuTensor {
    let n = store_params.data().len();
    randn(&[n], seed, 0.3)
}

#[test]
fn shapes_grey_and_rgb_forward_and_backward() {
    let b = CpuBackend;
    for (c, size, attn) in [(1usize, 8usize, 4usize), (1, 28, 7), (3, 32, 8)] {
        let cfg = UnetConfig {
            in_channels: c,
            base_channels: 8,
            channel_mult: vec![1, 2, 2],
            num_res_blocks: 1,
            attn_resolutions: vec![attn],
            ..UnetConfig::default()
        };
        let mut pb = ParamBuilder::new();
        let net = Unet::new(&cfg, size, &mut pb, 0).unwrap();
        let mut store = pb.build(&b, 0).unwrap();
        let x = randn(&[2, c, size, size], 1, 1.0);
        let (y, cache) = net
            .forward(
                &b,
                store.params(),
                &x,
                &[10.0, 500.0],
                Some(NoiseKey::new(3, 0)),
            )
            .unwrap();
        assert_eq!(y.shape().dims(), &[2, c, size, size]);
        let dy = randn(&[2, c, size, size], 2, 1.0);
        let params = store.params().clone();
        let dx = net
            .backward(&b, &params, &cache, &dy, store.grads_mut())
            .unwrap();
        assert_eq!(dx.shape(), x.shape());
        assert!(dx.data().iter().all(|v| v.is_finite()));
        assert!(store.grads().data().iter().any(|&g| g != 0.0));
    }
    // Sizes not divisible by 2^(levels-1) and wrong channel counts are typed errors.
    let cfg = UnetConfig {
        base_channels: 8,
        ..UnetConfig::default()
    };
    let mut pb = ParamBuilder::new();
    let net = Unet::new(&cfg, 28, &mut pb, 0).unwrap();
    let store = pb.build(&b, 0).unwrap();
    assert!(net
        .forward(
            &b,
            store.params(),
            &randn(&[1, 1, 30, 30], 0, 1.0),
            &[1.0],
            None
        )
        .is_err());
    assert!(net
        .forward(
            &b,
            store.params(),
            &randn(&[1, 3, 28, 28], 0, 1.0),
            &[1.0],
            None
        )
        .is_err());
    assert!(net
        .forward(
            &b,
            store.params(),
            &randn(&[2, 1, 28, 28], 0, 1.0),
            &[1.0],
            None
        )
        .is_err());
}

/// Parameter and input gradients of the whole network match central finite
/// differences of `<unet(x), dy>` (dropout on, with a fixed key), for both
/// embeddings and both resampling kinds. Tolerance 2e-2 of the gradient
/// scale: f32 forward passes through ~40 layers with h = 1e-2.
#[test]
fn whole_unet_gradients_match_finite_differences() {
    let b = CpuBackend;
    for (emb, rs) in [
        (Embedding::Positional, Resample::Conv),
        (Embedding::Fourier, Resample::Pool),
    ] {
        let cfg = tiny(emb, rs);
        let mut pb = ParamBuilder::new();
        let net = Unet::new(&cfg, 8, &mut pb, 0).unwrap();
        let mut store = pb.build(&b, 0).unwrap();
        let p = randomised(store.params(), 11);
        store.set_params(&b, p.clone()).unwrap();
        let x = randn(&[2, 1, 8, 8], 5, 1.0);
        let dy = randn(&[2, 1, 8, 8], 6, 1.0);
        let tin = [0.3, 2.0];
        let key = Some(NoiseKey::new(9, 1));
        let (_, cache) = net.forward(&b, &p, &x, &tin, key).unwrap();
        let dx = net
            .backward(&b, &p, &cache, &dy, store.grads_mut())
            .unwrap();
        let shape = x.shape().clone();
        let loss_x = |xv: &[f32]| {
            let xt = CpuTensor::new(xv.to_vec(), shape.clone()).unwrap();
            dot64(
                net.forward(&b, &p, &xt, &tin, key).unwrap().0.data(),
                dy.data(),
            )
        };
        check_grad(
            &format!("{emb:?}/{rs:?} dx"),
            x.data(),
            dx.data(),
            loss_x,
            1e-2,
            2e-2,
            1,
        );
        let pshape = p.shape().clone();
        let loss_p = |pv: &[f32]| {
            let pt = CpuTensor::new(pv.to_vec(), pshape.clone()).unwrap();
            dot64(
                net.forward(&b, &pt, &x, &tin, key).unwrap().0.data(),
                dy.data(),
            )
        };
        // Every 7th parameter (a few hundred), covering every layer kind.
        check_grad(
            &format!("{emb:?}/{rs:?} dparams"),
            p.data(),
            store.grads().data(),
            loss_p,
            1e-2,
            2e-2,
            7,
        );
    }
}

/// The score model's VJP is the input gradient of `<score(x), v>`, and the
/// score is `-out / s(t)` (VP) or `out / sigma(t)` (VE).
#[test]
fn score_model_vjp_and_output_scaling() {
    let b = CpuBackend;
    let cfg = UnetConfig {
        dropout: 0.0,
        ..tiny(Embedding::Positional, Resample::Conv)
    };
    let vp = VpSde::new(0.1, 20.0, 1000).unwrap();
    let mut model = UnetScore::new(&b, &cfg, 8, vp, 3).unwrap();
    let p = randomised(model.store.params(), 4);
    model.store.set_params(&b, p.clone()).unwrap();
    let x = randn(&[2, 1, 8, 8], 7, 1.0);
    let v = randn(&[2, 1, 8, 8], 8, 1.0);
    let t = [0.2, 0.9];
    let (score, vjp) = model.score_and_vjp(&b, &x, &t, &v).unwrap();
    let shape = x.shape().clone();
    let loss = |xv: &[f32]| {
        let xt = CpuTensor::new(xv.to_vec(), shape.clone()).unwrap();
        dot64(model.score(&b, &xt, &t).unwrap().data(), v.data())
    };
    check_grad("score vjp", x.data(), vjp.data(), loss, 1e-2, 2e-2, 1);
    // Output scaling against the raw network.
    let (out, _) = model
        .net
        .forward(&b, model.store.params(), &x, &model.time_input(&t), None)
        .unwrap();
    for (n, &tn) in t.iter().enumerate() {
        let s = sde_core::Sde::marginal(&model.sde, tn).std as f32;
        for j in 0..64 {
            let want = -out.data()[n * 64 + j] / s;
            assert!((score.data()[n * 64 + j] - want).abs() <= 1e-5 * want.abs().max(1.0));
        }
    }
    assert_eq!(model.time_input(&[0.5]), vec![499.5]);
    let ve = UnetScore::new(
        &b,
        &UnetConfig {
            embedding: Embedding::Fourier,
            ..cfg
        },
        8,
        VeSde::new(0.01, 50.0, 1000).unwrap(),
        0,
    )
    .unwrap();
    assert!((ve.time_input(&[0.0])[0] - 0.01f64.ln()).abs() < 1e-12);
    assert!(ve.output_scale(&[1.0])[0] > 0.0 && model.output_scale(&[1.0])[0] < 0.0);
}

/// Proves the gradients are wired end to end: with Adam on a fixed batch of 8
/// images and fixed (t, z) pairs, the DSM loss falls by at least 10x.
#[test]
fn tiny_unet_overfits_a_batch_with_dsm() {
    use sde_core::dsm::{dsm_loss, DsmBatch, Reduction, Weighting};
    use sde_core::{NoiseRng, SdeExt};
    let b = CpuBackend;
    let cfg = UnetConfig {
        base_channels: 8,
        channel_mult: vec![1, 2],
        num_res_blocks: 1,
        attn_resolutions: vec![],
        dropout: 0.0,
        ..UnetConfig::default()
    };
    let sde = VpSde::new(0.1, 20.0, 1000).unwrap();
    let mut model = UnetScore::new(&b, &cfg, 8, sde.clone(), 1).unwrap();
    let shape = Shape::new([8, 1, 8, 8]).unwrap();
    let mut rng = NoiseRng::new(2);
    let x0 = b
        .tensor(
            (0..512)
                .map(|i| ((i % 8) as f32 / 4.0 - 1.0) * if i / 64 % 2 == 0 { 1.0 } else { -1.0 })
                .collect(),
            &shape,
        )
        .unwrap();
    let t: Vec<f64> = (0..8).map(|i| 0.1 + 0.1 * i as f64).collect();
    let z = b.gaussian(&shape, rng.next_key()).unwrap();
    let x_t = sde.perturb(&b, &x0, &z, &t).unwrap();
    let batch = DsmBatch {
        t: t.clone(),
        z,
        x_t,
    };
    let n = model.store.flat_len();
    let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
    let (lr, b1, b2, eps) = (3e-3f32, 0.9f32, 0.999f32, 1e-8f32);
    let mut first = None;
    let mut last = 0.0;
    for step in 1..=300 {
        model.store.zero_grads(&b).unwrap();
        let (score, cache) = model.score_with_cache(&b, &batch.x_t, &t, None).unwrap();
        let l = dsm_loss(
            &b,
            &sde,
            &score,
            &batch,
            Weighting::SigmaSquared,
            Reduction::Mean,
        )
        .unwrap();
        first.get_or_insert(l.loss);
        last = l.loss;
        let mut grads = model.store.grads().clone();
        model
            .backward_score(&b, &cache, &t, &l.grad, &mut grads)
            .unwrap();
        let mut p = model.store.params().clone();
        let (c1, c2) = (1.0 - b1.powi(step), 1.0 - b2.powi(step));
        for (((pi, gi), mi), vi) in p
            .data_mut()
            .iter_mut()
            .zip(grads.data())
            .zip(&mut m)
            .zip(&mut v)
        {
            *mi = b1 * *mi + (1.0 - b1) * gi;
            *vi = b2 * *vi + (1.0 - b2) * gi * gi;
            *pi -= lr * (*mi / c1) / ((*vi / c2).sqrt() + eps);
        }
        model.store.set_params(&b, p).unwrap();
    }
    let first = first.unwrap();
    assert!(
        last < first / 10.0,
        "DSM loss went from {first} to {last}, not a 10x fall"
    );
}
