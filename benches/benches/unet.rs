//! UNet forward and forward+backward on the CPU backend for the reference
//! configuration of the score-net issue: 28x28x1 images, base 32 channels,
//! multipliers (1, 2, 2), 2 residual blocks per level, attention at 7x7,
//! batch 32 (dropout on during the training step, as in training).
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use score_net::{ParamBuilder, Unet, UnetConfig};
use sde_core::{Backend, CpuBackend, CpuTensor, NoiseKey, Shape};

fn bench_unet(c: &mut Criterion) {
    let b = CpuBackend;
    let cfg = UnetConfig::default();
    let mut pb = ParamBuilder::new();
    let net = Unet::new(&cfg, 28, &mut pb, 0).expect("valid config");
    let mut store = pb.build(&b, 0).expect("params");
    let shape = Shape::new([32, 1, 28, 28]).expect("shape");
    let x = b.gaussian(&shape, NoiseKey::new(1, 0)).expect("noise");
    let dy = b.gaussian(&shape, NoiseKey::new(1, 1)).expect("noise");
    let t: Vec<f64> = (0..32).map(|i| 10.0 + 30.0 * i as f64).collect();
    let params: CpuTensor = store.params().clone();
    let mut group = c.benchmark_group("cpu");
    group.sample_size(10);
    group.bench_function("unet_forward/28x28x1-b32-nf32", |bch| {
        bch.iter(|| net.forward(&b, &params, &x, &t, None).expect("forward").0)
    });
    group.bench_function("unet_forward_backward/28x28x1-b32-nf32", |bch| {
        bch.iter(|| {
            let (_, cache) = net
                .forward(&b, &params, &x, &t, Some(NoiseKey::new(2, 0)))
                .expect("forward");
            net.backward(&b, &params, &cache, &dy, store.grads_mut())
                .expect("backward")
        })
    });
    group.finish();
    eprintln!("unet parameters: {}", store.num_params());
}

criterion_group!(benches, bench_unet);
criterion_main!(benches);
