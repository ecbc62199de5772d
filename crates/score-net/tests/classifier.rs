//! The noise-conditional classifier on the CPU backend: input and parameter
//! gradients against finite differences (a random linear functional of the
//! logits and the cross-entropy), `grad_x log p(y | x)` for guidance, the
//! host-side log-softmax helpers, seeded initialisation and typed errors.
#![allow(clippy::unwrap_used)]

mod common;

use common::{check_grad, dot64, randn};
use score_net::{
    cross_entropy_grad, log_softmax, Classifier, ClassifierConfig, Embedding, NetError,
    ParamBuilder, ParamStore, Resample,
};
use sde_core::{CpuBackend, CpuTensor, NoiseKey, Shape, VeSde, VpSde};

const K: usize = 3;

fn tiny(embedding: Embedding, resample: Resample) -> ClassifierConfig {
    ClassifierConfig {
        in_channels: 1,
        base_channels: 8,
        channel_mult: vec![1, 2],
        num_res_blocks: 1,
        attn_resolutions: vec![4],
        dropout: 0.2,
        skip_rescale: true,
        embedding,
        fourier_scale: 16.0,
        resample,
        num_classes: K,
        time_input: None,
    }
}

/// A network with random parameters (instead of the zero-initialised
/// residual outputs) so that every path carries gradient.
fn build(cfg: &ClassifierConfig, seed: u64) -> (Classifier, ParamStore<CpuBackend>, CpuTensor) {
    let b = CpuBackend;
    let mut pb = ParamBuilder::new();
    let net = Classifier::new(cfg, 8, &mut pb, seed).unwrap();
    let mut store = pb.build(&b, seed).unwrap();
    let p = randn(&[store.flat_len()], seed + 100, 0.3);
    store.set_params(&b, p.clone()).unwrap();
    (net, store, p)
}

fn tensor(v: &[f32], shape: &Shape) -> CpuTensor {
    CpuTensor::new(v.to_vec(), shape.clone()).unwrap()
}

/// Mean cross-entropy in f64 from f32 logits.
fn mean_ce(logits: &[f32], labels: &[u32]) -> f64 {
    let (loss, _) = cross_entropy_grad(logits, labels, K).unwrap();
    loss.iter().sum::<f64>() / loss.len() as f64
}

/// Input and parameter gradients of the whole classifier match central finite
/// differences of a random linear functional `<logits, r>` and of the mean
/// cross-entropy (dropout on, with a fixed key), for both embeddings and both
/// resampling kinds. Tolerance 2e-2 of the gradient scale with h = 1e-2, as
/// in `tests/unet.rs`: f32 forward passes through ~20 layers (fewer than the
/// UNet's ~40), where the f32 round-off of the loss divided by 2h and the
/// O(h^2) truncation of group norms and attention stay well inside it
/// (measured: at most 1.4e-3 for the input gradients, 1e-5 for the
/// parameters), while a missing factor or term (errors of order 1) fails.
#[test]
fn classifier_gradients_match_finite_differences() {
    let b = CpuBackend;
    for (emb, rs) in [
        (Embedding::Positional, Resample::Conv),
        (Embedding::Fourier, Resample::Pool),
    ] {
        let cfg = tiny(emb, rs);
        let (net, mut store, p) = build(&cfg, 1);
        let x = randn(&[2, 1, 8, 8], 5, 1.0);
        let r = randn(&[2, K], 6, 1.0);
        let labels = [2u32, 0];
        let tin = [0.3, 2.0];
        let key = Some(NoiseKey::new(9, 1));
        let logits = |pt: &CpuTensor, xt: &CpuTensor| {
            net.forward(&b, pt, xt, &tin, key)
                .unwrap()
                .0
                .data()
                .to_vec()
        };
        let (shape, pshape) = (x.shape().clone(), p.shape().clone());

        // A random linear functional of the logits.
        let (l, cache) = net.forward(&b, &p, &x, &tin, key).unwrap();
        assert_eq!(l.shape().dims(), &[2, K]);
        store.zero_grads(&b).unwrap();
        let dx = net.backward(&b, &p, &cache, &r, store.grads_mut()).unwrap();
        let name = format!("{emb:?}/{rs:?} <logits, r>");
        let loss_x = |xv: &[f32]| dot64(&logits(&p, &tensor(xv, &shape)), r.data());
        check_grad(
            &format!("{name} dx"),
            x.data(),
            dx.data(),
            loss_x,
            1e-2,
            2e-2,
            1,
        );
        let loss_p = |pv: &[f32]| dot64(&logits(&tensor(pv, &pshape), &x), r.data());
        // Every 7th parameter (over a thousand), covering every layer kind.
        let g = store.grads().data().to_vec();
        check_grad(
            &format!("{name} dparams"),
            p.data(),
            &g,
            loss_p,
            1e-2,
            2e-2,
            7,
        );

        // The mean cross-entropy through `cross_entropy_grad`'s dlogits.
        let (_, dl) = cross_entropy_grad(l.data(), &labels, K).unwrap();
        let dl = tensor(&dl, l.shape());
        store.zero_grads(&b).unwrap();
        let dx = net
            .backward(&b, &p, &cache, &dl, store.grads_mut())
            .unwrap();
        let name = format!("{emb:?}/{rs:?} cross-entropy");
        let loss_x = |xv: &[f32]| mean_ce(&logits(&p, &tensor(xv, &shape)), &labels);
        check_grad(
            &format!("{name} dx"),
            x.data(),
            dx.data(),
            loss_x,
            1e-2,
            2e-2,
            1,
        );
        let loss_p = |pv: &[f32]| mean_ce(&logits(&tensor(pv, &pshape), &x), &labels);
        let g = store.grads().data().to_vec();
        check_grad(
            &format!("{name} dparams"),
            p.data(),
            &g,
            loss_p,
            1e-2,
            2e-2,
            11,
        );
    }
}

/// `log_prob_and_input_grad` gives `log p(y_n | x_n)` (the log-softmax of the
/// dropout-free logits) and its input gradient, which matches finite
/// differences of `sum_n log p(y_n | x_n)` (samples are independent, so each
/// sample's block is its own gradient). Same tolerance as above (measured:
/// at most 6e-4).
#[test]
fn log_prob_and_input_grad_matches_finite_differences() {
    let b = CpuBackend;
    for (emb, rs) in [
        (Embedding::Fourier, Resample::Conv),
        (Embedding::Positional, Resample::Pool),
    ] {
        let cfg = tiny(emb, rs);
        let (net, store, p) = build(&cfg, 2);
        let x = randn(&[3, 1, 8, 8], 7, 1.0);
        let labels = [1u32, 2, 0];
        let vp = VpSde::new(0.1, 20.0, 1000).unwrap();
        let t = [0.1, 0.5, 0.9];
        let tin = net.time_input(&vp, &t);
        assert_eq!(tin, t.map(|t| 999.0 * t));
        let (logp, dx) = net
            .log_prob_and_input_grad(&b, store.params(), &x, &tin, &labels)
            .unwrap();
        let (logits, _) = net.forward(&b, &p, &x, &tin, None).unwrap();
        let lsm = log_softmax(logits.data(), K).unwrap();
        for (n, &y) in labels.iter().enumerate() {
            assert_eq!(logp[n], lsm[n * K + y as usize]);
            assert!(logp[n] < 0.0);
        }
        let shape = x.shape().clone();
        let loss = |xv: &[f32]| {
            let l = net
                .forward(&b, &p, &tensor(xv, &shape), &tin, None)
                .unwrap()
                .0;
            let lsm = log_softmax(l.data(), K).unwrap();
            labels
                .iter()
                .enumerate()
                .map(|(n, &y)| lsm[n * K + y as usize])
                .sum::<f64>()
        };
        let name = format!("{emb:?}/{rs:?} grad_x log p(y|x)");
        check_grad(&name, x.data(), dx.data(), loss, 1e-2, 2e-2, 1);
        assert!(dx.data().iter().any(|v| *v != 0.0));
    }
}

/// Log-softmax rows exponentiate to 1; the cross-entropy gradient matches
/// finite differences of the f64 mean loss (tolerance 1e-3 of the gradient
/// scale: h = 1e-3 perturbs f32 logits of order 1 with a relative step error
/// below 1e-4, and the truncation error h^2 |f'''| / 6 is below 1e-6;
/// measured 6e-5); huge
/// logits give exact, finite results.
#[test]
fn log_softmax_and_cross_entropy() {
    let logits = randn(&[4, 5], 3, 2.0);
    let lsm = log_softmax(logits.data(), 5).unwrap();
    for row in lsm.chunks_exact(5) {
        let s: f64 = row.iter().map(|v| v.exp()).sum();
        assert!((s - 1.0).abs() < 1e-12, "row sums to {s}");
        assert!(row.iter().all(|v| *v <= 0.0));
    }
    let labels = [4u32, 0, 2, 2];
    let (loss, grad) = cross_entropy_grad(logits.data(), &labels, 5).unwrap();
    for (n, &y) in labels.iter().enumerate() {
        assert_eq!(loss[n], -lsm[n * 5 + y as usize]);
        let row: f64 = grad[n * 5..n * 5 + 5].iter().map(|&g| f64::from(g)).sum();
        assert!(row.abs() < 1e-7);
    }
    let f = |v: &[f32]| {
        let (l, _) = cross_entropy_grad(v, &labels, 5).unwrap();
        l.iter().sum::<f64>() / 4.0
    };
    check_grad("cross-entropy", logits.data(), &grad, f, 1e-3, 1e-3, 1);

    // Huge logits: no overflow, no NaN.
    let huge = [1e4f32, -1e4, 0.0, 1e4, 1e4, -1e4];
    let lsm = log_softmax(&huge, 3).unwrap();
    assert!(lsm.iter().all(|v| v.is_finite()));
    assert_eq!(&lsm[..3], &[0.0, -2e4, -1e4]);
    assert!((lsm[3] + std::f64::consts::LN_2).abs() < 1e-12);
    let (loss, grad) = cross_entropy_grad(&huge, &[0, 2], 3).unwrap();
    assert_eq!(loss[0], 0.0);
    assert!((loss[1] - (2e4 + std::f64::consts::LN_2)).abs() < 1e-9);
    assert!(grad.iter().all(|g| g.is_finite()));
    assert_eq!(grad[..3], [0.0, 0.0, 0.0]);
    assert_eq!(grad[3..], [0.25, 0.25, -0.5]);

    // Typed errors.
    assert!(matches!(log_softmax(&huge, 0), Err(NetError::Shape { .. })));
    assert!(matches!(log_softmax(&huge, 4), Err(NetError::Shape { .. })));
    assert!(matches!(
        log_softmax(&[0.0, f32::NAN], 2),
        Err(NetError::Core(sde_core::Error::NonFinite { index: 1, .. }))
    ));
    assert!(matches!(
        cross_entropy_grad(&huge, &[0, 3], 3),
        Err(NetError::Label {
            index: 1,
            label: 3,
            num_classes: 3
        })
    ));
    assert!(matches!(
        cross_entropy_grad(&huge, &[0], 3),
        Err(NetError::Shape { .. })
    ));
}

/// The same seed gives the same parameters and names; parameters are named
/// `temb.*`, `conv_in.*`, `down.{level}.{block}.*` (`.attn.*` at the attention
/// resolution), `down.{level}.resample.*`, `out.gn.*`, `head.*`, in that order.
#[test]
fn initialisation_is_seeded_and_names_are_stable() {
    let b = CpuBackend;
    let cfg = tiny(Embedding::Fourier, Resample::Conv);
    let make = |seed| {
        let mut pb = ParamBuilder::new();
        let net = Classifier::new(&cfg, 8, &mut pb, seed).unwrap();
        (net, pb.build(&b, seed).unwrap())
    };
    let (net, s1) = make(4);
    let (_, s2) = make(4);
    let (_, s3) = make(5);
    assert_eq!(s1.params().data(), s2.params().data());
    assert_ne!(s1.params().data(), s3.params().data());
    let names: Vec<&str> = s1.views().map(|(n, _)| n).collect();
    assert_eq!(
        &names[..6],
        &[
            "temb.0.weight",
            "temb.0.bias",
            "temb.1.weight",
            "temb.1.bias",
            "conv_in.weight",
            "conv_in.bias"
        ]
    );
    assert_eq!(
        &names[names.len() - 4..],
        &["out.gn.weight", "out.gn.bias", "head.weight", "head.bias"]
    );
    for n in [
        "down.0.0.conv1.weight",
        "down.0.resample.weight",
        "down.1.0.skip.weight",
        "down.1.0.attn.q.weight",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    assert!(!names
        .iter()
        .any(|n| n.starts_with("down.0.0.attn") || n.starts_with("down.1.resample")));
    assert_eq!(s1.view("head.weight").unwrap().shape, vec![K, 16]);
    assert_eq!((net.num_classes(), net.image_size(), net.seed()), (K, 8, 4));
    assert_eq!(net.config(), &cfg);
    // The VE Fourier time input is ln sigma(t).
    let ve = VeSde::new(0.01, 50.0, 1000).unwrap();
    assert!((net.time_input(&ve, &[0.0])[0] - 0.01f64.ln()).abs() < 1e-12);
}

/// Invalid configurations are `NetError::Config` naming the field; the
/// serde form rejects unknown fields and fills missing ones with defaults;
/// wrong inputs, labels and gradient shapes are typed errors.
#[test]
fn configuration_and_input_errors() {
    let b = CpuBackend;
    let base = tiny(Embedding::Positional, Resample::Conv);
    let field_of = |cfg: ClassifierConfig, size: usize| match Classifier::new(
        &cfg,
        size,
        &mut ParamBuilder::new(),
        0,
    ) {
        Err(NetError::Config { field, .. }) => field,
        other => panic!("expected a configuration error, got {other:?}"),
    };
    let with = |f: &dyn Fn(&mut ClassifierConfig)| {
        let mut c = base.clone();
        f(&mut c);
        c
    };
    assert_eq!(field_of(with(&|c| c.num_classes = 1), 8), "num_classes");
    assert_eq!(field_of(with(&|c| c.base_channels = 6), 8), "base_channels");
    assert_eq!(
        field_of(with(&|c| c.channel_mult = vec![]), 8),
        "channel_mult"
    );
    assert_eq!(field_of(with(&|c| c.dropout = 1.0), 8), "dropout");
    assert_eq!(field_of(with(&|c| c.in_channels = 0), 8), "in_channels");
    assert_eq!(field_of(base.clone(), 7), "image_size");
    assert!(base.validate().is_ok());
    assert!(ClassifierConfig::default().validate().is_ok());

    let parsed: ClassifierConfig = serde_json::from_str(r#"{"num_classes": 4}"#).unwrap();
    assert_eq!(parsed.num_classes, 4);
    assert_eq!(parsed.backbone(), score_net::UnetConfig::default());
    assert!(serde_json::from_str::<ClassifierConfig>(r#"{"classes": 4}"#).is_err());

    let (net, store, p) = build(&base, 3);
    let fwd = |x: &CpuTensor, t: &[f64]| net.forward(&b, &p, x, t, None).map(|r| r.0);
    assert!(fwd(&randn(&[2, 1, 8, 8], 0, 1.0), &[1.0, 2.0]).is_ok());
    for (dims, t) in [
        (vec![2, 3, 8, 8], vec![1.0, 2.0]),
        (vec![2, 1, 7, 7], vec![1.0, 2.0]),
        (vec![2, 64], vec![1.0, 2.0]),
        (vec![2, 1, 8, 8], vec![1.0]),
    ] {
        assert!(
            matches!(fwd(&randn(&dims, 0, 1.0), &t), Err(NetError::Shape { .. })),
            "{dims:?} with {} times",
            t.len()
        );
    }
    let x = randn(&[2, 1, 8, 8], 1, 1.0);
    let lp =
        |labels: &[u32]| net.log_prob_and_input_grad(&b, store.params(), &x, &[1.0, 2.0], labels);
    assert!(lp(&[0, 2]).is_ok());
    assert!(matches!(
        lp(&[0, K as u32]),
        Err(NetError::Label { index: 1, .. })
    ));
    assert!(matches!(lp(&[0]), Err(NetError::Shape { .. })));
    let (_, cache) = net.forward(&b, &p, &x, &[1.0, 2.0], None).unwrap();
    let mut g = randn(&[store.flat_len()], 0, 0.0);
    for bad in [[2, K + 1], [1, K]] {
        let dl = randn(&bad, 0, 1.0);
        assert!(matches!(
            net.backward(&b, &p, &cache, &dl, &mut g),
            Err(NetError::Shape { .. })
        ));
    }
}
