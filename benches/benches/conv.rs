//! CPU convolutions at the UNet's reference layer shapes, against the raw
//! `gemm` matrix product of the same size.
//!
//! Throughput is reported as `Throughput::Elements(flops)`: criterion's
//! "elem/s" here means **FLOP/s** (one multiply-add = 2 FLOPs). A convolution
//! forward pass costs `2·N·C_out·H_out·W_out·C_in·k·k` FLOPs, its backward
//! (dx and dW) twice that. The `gemm` rows are the products the convolution
//! reduces to: `gemm` one threaded `[C_out, C_in·k·k] x [C_in·k·k, N·H_out·W_out]`
//! product, `gemm_per_sample` the N per-sample products split over the
//! cores the way `conv2d` runs them (but without the im2col). `conv2d` can
//! beat both on large images: its per-thread im2col buffer stays in cache,
//! while these stream a batch-sized right-hand side from memory.
//!
//! The `wgpu` group runs the same convolutions on the wgpu backend's tiled
//! implicit-GEMM kernels (`shaders/gemm.wgsl`), synchronising with the device
//! inside the timed closure so the GPU work is counted. Without an adapter it
//! prints why and skips (on Linux without a GPU: Mesa's llvmpipe and
//! `WGPU_BACKEND=vulkan`).
//!
//! The allocator is tuned as the CLI tunes it (`benches::tune_allocator`);
//! `BENCH_DEFAULT_MALLOC=1` measures with malloc's defaults.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use score_net::cpu::conv::{self, matmul, MatMul};
use score_net::gpu::WgpuBackend;
use score_net::{Conv2dSpec, NetBackend, View};
use sde_core::{Backend, CpuBackend, CpuTensor, NoiseKey, Shape};
use std::hint::black_box;

/// `(batch, channels, size)`: `channels -> channels`, 3x3, padding 1, stride 1.
const LAYERS: [(usize, usize, usize); 3] = [(32, 32, 28), (32, 64, 14), (32, 64, 7)];

fn randn(dims: &[usize], seed: u64) -> CpuTensor {
    let shape = Shape::new(dims.to_vec()).expect("valid shape");
    CpuBackend
        .gaussian(&shape, NoiseKey::new(seed, 0))
        .expect("noise")
}

fn bench_conv(c: &mut Criterion) {
    benches::tune_allocator();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut group = c.benchmark_group("cpu");
    for (n, ch, size) in LAYERS {
        let k = 3;
        let spec = Conv2dSpec {
            stride: 1,
            padding: 1,
        };
        let (ho, wo) = (spec.out_size(size, k), spec.out_size(size, k));
        let (kd, pix) = (ch * k * k, ho * wo);
        let label = format!("{n}x{ch}x{size}x{size}_k3");
        let fwd_flops = 2 * (n * ch * pix * kd) as u64;

        // (a) The GEMM the convolution reduces to.
        let a = randn(&[ch, kd], 1).into_vec();
        let bm = randn(&[kd, n * pix], 2).into_vec();
        let mut out = vec![0.0f32; ch * n * pix];
        group.throughput(Throughput::Elements(fwd_flops));
        group.bench_function(BenchmarkId::new("gemm", &label), |bch| {
            let mm = MatMul::new(ch, n * pix, kd).threaded(true);
            bch.iter(|| matmul(&mut out, &a, &bm, mm).expect("matmul"))
        });
        let bs = randn(&[n, kd, pix], 3).into_vec();
        group.bench_function(BenchmarkId::new("gemm_per_sample", &label), |bch| {
            let mm = MatMul::new(ch, pix, kd);
            let per = n.div_ceil(threads);
            bch.iter(|| {
                std::thread::scope(|s| {
                    for (outs, ins) in out
                        .chunks_mut(per * ch * pix)
                        .zip(bs.chunks(per * kd * pix))
                    {
                        let a = &a;
                        s.spawn(move || {
                            for (o, b) in outs.chunks_mut(ch * pix).zip(ins.chunks(kd * pix)) {
                                matmul(o, a, b, mm).expect("matmul");
                            }
                        });
                    }
                })
            })
        });

        // (b) conv2d forward and (c) backward (dx + dW + db).
        let x = randn(&[n, ch, size, size], 4);
        let w = View::new(0, [ch, ch, k, k]);
        let b = View::new(ch * kd, [ch]);
        let params = randn(&[ch * kd + ch], 5);
        let dy = randn(&[n, ch, ho, wo], 6);
        let mut grads = randn(&[ch * kd + ch], 7);
        group.bench_function(BenchmarkId::new("conv2d_fwd", &label), |bch| {
            bch.iter(|| black_box(conv::conv2d(&x, &params, &w, Some(&b), spec).expect("conv2d")))
        });
        group.throughput(Throughput::Elements(2 * fwd_flops));
        group.bench_function(BenchmarkId::new("conv2d_bwd", &label), |bch| {
            bch.iter(|| {
                black_box(
                    conv::conv2d_backward(&x, &dy, &params, &w, Some(&b), spec, &mut grads, true)
                        .expect("conv2d_backward"),
                )
            })
        });
    }
    group.finish();
}

/// conv2d forward and backward (dx + dW + db) on the wgpu backend.
fn bench_conv_wgpu(c: &mut Criterion) {
    let be = match WgpuBackend::new() {
        Ok(be) => be,
        Err(e) => {
            eprintln!("wgpu conv benches skipped: {e}");
            return;
        }
    };
    eprintln!("wgpu adapter: {}", be.context().describe());
    let up = |t: &CpuTensor| be.tensor(t.data().to_vec(), t.shape()).expect("upload");
    let mut group = c.benchmark_group("wgpu");
    for (n, ch, size) in LAYERS {
        let k = 3;
        let spec = Conv2dSpec {
            stride: 1,
            padding: 1,
        };
        let (ho, wo) = (spec.out_size(size, k), spec.out_size(size, k));
        let (kd, pix) = (ch * k * k, ho * wo);
        let label = format!("{n}x{ch}x{size}x{size}_k3");
        let fwd_flops = 2 * (n * ch * pix * kd) as u64;
        let x = up(&randn(&[n, ch, size, size], 4));
        let w = View::new(0, [ch, ch, k, k]);
        let b = View::new(ch * kd, [ch]);
        let params = up(&randn(&[ch * kd + ch], 5));
        let dy = up(&randn(&[n, ch, ho, wo], 6));
        let mut grads = up(&randn(&[ch * kd + ch], 7));
        group.throughput(Throughput::Elements(fwd_flops));
        group.bench_function(BenchmarkId::new("conv2d_fwd", &label), |bch| {
            bch.iter(|| {
                let y = be.conv2d(&x, &params, &w, Some(&b), spec).expect("conv2d");
                be.sync().expect("sync");
                black_box(y)
            })
        });
        group.throughput(Throughput::Elements(2 * fwd_flops));
        group.bench_function(BenchmarkId::new("conv2d_bwd", &label), |bch| {
            bch.iter(|| {
                let dx = be
                    .conv2d_backward(&x, &dy, &params, &w, Some(&b), spec, &mut grads, true)
                    .expect("conv2d_backward");
                be.sync().expect("sync");
                black_box(dx)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_conv, bench_conv_wgpu);
criterion_main!(benches);
