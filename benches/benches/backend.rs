//! Elementwise and noise ops of the CPU and wgpu backends at sampler-sized
//! tensors (`cpu/...` and `wgpu/...`; the wgpu group syncs the device inside
//! the timed closure and is skipped, with a message, when no adapter exists).
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use score_net::gpu::WgpuBackend;
use sde_core::{Backend, Coef, CpuBackend, NoiseKey, Shape};
use std::hint::black_box;

fn bench_ops<B: Backend>(c: &mut Criterion, group_name: &str, b: &B) {
    let mut group = c.benchmark_group(group_name);
    for dims in [[64usize, 1, 28, 28], [64, 3, 32, 32]] {
        let shape = Shape::new(dims).expect("valid shape");
        let label = shape.to_string();
        group.throughput(Throughput::Elements(shape.numel() as u64));
        let x = b.gaussian(&shape, NoiseKey::new(1, 0)).expect("noise");
        let y = b.gaussian(&shape, NoiseKey::new(1, 1)).expect("noise");
        let per: Vec<f32> = (0..shape.batch()).map(|i| i as f32 * 0.01).collect();
        group.bench_with_input(BenchmarkId::new("gaussian", &label), &shape, |bch, s| {
            bch.iter(|| {
                let t = b.gaussian(s, NoiseKey::new(2, 3)).expect("noise");
                b.sync().expect("sync");
                t
            })
        });
        group.bench_with_input(BenchmarkId::new("lincomb3", &label), &shape, |bch, _| {
            bch.iter(|| {
                let t = b
                    .lincomb(&[
                        (Coef::Scalar(0.5), &x),
                        (Coef::PerSample(&per), &y),
                        (Coef::Scalar(-1.0), &x),
                    ])
                    .expect("lincomb");
                b.sync().expect("sync");
                t
            })
        });
        group.bench_with_input(BenchmarkId::new("sample_norm", &label), &shape, |bch, _| {
            bch.iter(|| black_box(b.sample_norm(&x).expect("norm")))
        });
    }
    group.finish();
}

fn bench_backend(c: &mut Criterion) {
    bench_ops(c, "cpu", &CpuBackend);
    match WgpuBackend::new() {
        Ok(g) => {
            eprintln!("wgpu adapter: {}", g.context().describe());
            bench_ops(c, "wgpu", &g);
        }
        Err(e) => eprintln!("skipping the wgpu/... benches: {e}"),
    }
}

criterion_group!(benches, bench_backend);
criterion_main!(benches);
