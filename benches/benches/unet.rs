//! UNet forward and forward+backward for the reference configuration of the
//! score-net issue: 28x28x1 images, base 32 channels, multipliers (1, 2, 2),
//! 2 residual blocks per level, attention at 7x7 (dropout on during the
//! training step, as in training). Two forwards: `unet_forward` builds the
//! backward cache (as training does), `unet_forward_inference` keeps none
//! (as sampling does; what PyTorch's `no_grad` forward compares with).
//!
//! - group `cpu`: the CPU backend, batch 32;
//! - group `wgpu`: the wgpu backend (skipped with a message when there is no
//!   adapter), batch 32 on a real GPU and batch 1 on a software adapter
//!   (llvmpipe runs at well under 1 GFLOP/s); `UNET_WGPU_BATCH` overrides.
//!   The timed closure ends with `sync()` so the device work is counted.
//!
//! The allocator is tuned as the CLI tunes it (`benches::tune_allocator`);
//! `BENCH_DEFAULT_MALLOC=1` measures with malloc's defaults.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use score_net::gpu::WgpuBackend;
use score_net::{NetBackend, ParamBuilder, Unet, UnetConfig};
use sde_core::{NoiseKey, Shape};

fn bench_on<B: NetBackend>(c: &mut Criterion, group: &str, b: &B, batch: usize) {
    let cfg = UnetConfig::default();
    let mut pb = ParamBuilder::new();
    let net = Unet::new(&cfg, 28, &mut pb, 0).expect("valid config");
    let mut store = pb.build(b, 0).expect("params");
    let shape = Shape::new([batch, 1, 28, 28]).expect("shape");
    let x = b.gaussian(&shape, NoiseKey::new(1, 0)).expect("noise");
    let dy = b.gaussian(&shape, NoiseKey::new(1, 1)).expect("noise");
    let t: Vec<f64> = (0..batch).map(|i| 10.0 + 30.0 * i as f64).collect();
    let params = b
        .scale(store.params(), sde_core::Coef::Scalar(1.0))
        .expect("copy");
    let mut g = c.benchmark_group(group);
    g.sample_size(10);
    g.bench_function(format!("unet_forward/28x28x1-b{batch}-nf32"), |bch| {
        bch.iter(|| {
            let y = net.forward(b, &params, &x, &t, None).expect("forward").0;
            b.sync().expect("sync");
            y
        })
    });
    g.bench_function(
        format!("unet_forward_inference/28x28x1-b{batch}-nf32"),
        |bch| {
            bch.iter(|| {
                let y = net.forward_inference(b, &params, &x, &t).expect("forward");
                b.sync().expect("sync");
                y
            })
        },
    );
    g.bench_function(
        format!("unet_forward_backward/28x28x1-b{batch}-nf32"),
        |bch| {
            bch.iter(|| {
                let (_, cache) = net
                    .forward(b, &params, &x, &t, Some(NoiseKey::new(2, 0)))
                    .expect("forward");
                let dx = net
                    .backward(b, &params, &cache, &dy, store.grads_mut())
                    .expect("backward");
                b.sync().expect("sync");
                dx
            })
        },
    );
    g.finish();
    eprintln!("unet parameters: {}", store.num_params());
}

fn bench_unet(c: &mut Criterion) {
    benches::tune_allocator();
    bench_on(c, "cpu", &sde_core::CpuBackend, 32);
    let gpu = match WgpuBackend::new() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("wgpu UNet benches skipped: {e}");
            return;
        }
    };
    eprintln!("wgpu adapter: {}", gpu.context().describe());
    let software = gpu.context().info().device_type == score_net::gpu::wgpu::DeviceType::Cpu;
    let batch = std::env::var("UNET_WGPU_BATCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if software { 1 } else { 32 });
    bench_on(c, "wgpu", &gpu, batch);
}

criterion_group!(benches, bench_unet);
criterion_main!(benches);
