//! Elementwise and noise ops of the CPU backend at sampler-sized tensors.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sde_core::{Backend, Coef, CpuBackend, NoiseKey, Shape};
use std::hint::black_box;

fn bench_backend(c: &mut Criterion) {
    let b = CpuBackend;
    let mut group = c.benchmark_group("cpu");
    for dims in [[64usize, 1, 28, 28], [64, 3, 32, 32]] {
        let shape = Shape::new(dims).expect("valid shape");
        let label = shape.to_string();
        group.throughput(Throughput::Elements(shape.numel() as u64));
        let x = b.gaussian(&shape, NoiseKey::new(1, 0)).expect("noise");
        let y = b.gaussian(&shape, NoiseKey::new(1, 1)).expect("noise");
        let per: Vec<f32> = (0..shape.batch()).map(|i| i as f32 * 0.01).collect();
        group.bench_with_input(BenchmarkId::new("gaussian", &label), &shape, |bch, s| {
            bch.iter(|| b.gaussian(s, NoiseKey::new(2, 3)).expect("noise"))
        });
        group.bench_with_input(BenchmarkId::new("lincomb3", &label), &shape, |bch, _| {
            bch.iter(|| {
                b.lincomb(&[
                    (Coef::Scalar(0.5), &x),
                    (Coef::PerSample(&per), &y),
                    (Coef::Scalar(-1.0), &x),
                ])
                .expect("lincomb")
            })
        });
        group.bench_with_input(BenchmarkId::new("sample_norm", &label), &shape, |bch, _| {
            bch.iter(|| black_box(b.sample_norm(&x).expect("norm")))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_backend);
criterion_main!(benches);
