#![allow(clippy::unwrap_used)]
//! A tiny training run on wgpu follows the CPU run: the same configuration,
//! data, dropout masks and noise (all from the checkpointed Philox streams)
//! give the same loss curve within tolerance, and the wgpu run's checkpoint
//! resumes on the CPU. REQUIRES a wgpu adapter (fails loudly without one; CI
//! uses llvmpipe).
//!
//! Tolerance: the backends differ by f32 summation order only (see
//! score-net's gpu_unet test). Measured on llvmpipe over 12 steps: losses
//! within 4.4e-8 relative, gradient norms within 1.7e-7, final parameters
//! within 2.8e-6 of their largest magnitude. The test allows 1e-6, 2e-6 and
//! 3e-5 (a 10-20x margin for other devices); a wrong mask, noise stream or
//! optimiser term moves them by orders of magnitude more.

use score_net::gpu::WgpuBackend;
use score_net::UnetConfig;
use sde_core::{Backend, CpuBackend, NoiseRng, SdeConfig, SdeKind};
use train::{BatchSource, OptimConfig, TrainConfig, Trainer, TrainingConfig};

/// 16 8x8 grey images: diagonal ramps with random offsets, in [0, 1].
struct Ramps(Vec<f32>);

impl Ramps {
    fn new() -> Self {
        let off = NoiseRng::new(3).uniforms_f64(16);
        let mut v = Vec::new();
        for o in off {
            for y in 0..8 {
                for x in 0..8 {
                    v.push((((x + y) as f64 / 14.0 + o) % 1.0) as f32);
                }
            }
        }
        Ramps(v)
    }
}

impl BatchSource for Ramps {
    fn len(&self) -> usize {
        16
    }
    fn image_shape(&self) -> [usize; 3] {
        [1, 8, 8]
    }
    fn batch(&self, indices: &[usize], _rng: &mut NoiseRng) -> Vec<f32> {
        indices
            .iter()
            .flat_map(|&i| self.0[i * 64..(i + 1) * 64].iter().copied())
            .collect()
    }
}

fn config(kind: SdeKind) -> TrainConfig {
    TrainConfig {
        seed: 7,
        sde: SdeConfig::default_for(kind),
        net: UnetConfig {
            base_channels: 8,
            channel_mult: vec![1, 2],
            num_res_blocks: 1,
            attn_resolutions: vec![4],
            dropout: 0.1,
            ..UnetConfig::default()
        },
        optim: OptimConfig {
            lr: 2e-3,
            warmup: 4,
            ..OptimConfig::default()
        },
        training: TrainingConfig {
            batch_size: 8,
            steps: 12,
            log_every: 100,
            checkpoint_every: 0,
        },
        ..TrainConfig::default()
    }
}

#[test]
fn tiny_training_run_gives_the_same_loss_curve_on_both_backends() {
    let gpu = match WgpuBackend::new() {
        Ok(b) => b,
        Err(e) => panic!(
            "this test needs a wgpu adapter and found none: {e}\n\
             (install mesa-vulkan-drivers and libvulkan1, then run with WGPU_BACKEND=vulkan)"
        ),
    };
    let data = Ramps::new();
    for kind in [SdeKind::Vp, SdeKind::Ve] {
        let mut tc = Trainer::new(CpuBackend, config(kind), [1, 8, 8]).unwrap();
        let mut tg = Trainer::new(gpu.clone(), config(kind), [1, 8, 8]).unwrap();
        let p0 = tc.model.store.params().data().to_vec();
        for _ in 0..12 {
            let rc = tc.step(&data).unwrap();
            let rg = tg.step(&data).unwrap();
            assert_eq!(rc.step, rg.step);
            let rel = (rg.loss - rc.loss).abs() / rc.loss;
            assert!(
                rel <= 1e-6,
                "{kind:?} step {}: loss {} on wgpu vs {} on the CPU",
                rc.step,
                rg.loss,
                rc.loss
            );
            let rel_norm = (rg.grad_norm - rc.grad_norm).abs() / rc.grad_norm;
            assert!(rel_norm <= 2e-6, "{kind:?} step {}: grad norm", rc.step);
        }
        let pc = tc.model.store.params().data().to_vec();
        let pg = gpu.to_vec(tg.model.store.params()).unwrap();
        let scale = pc.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let worst = pc
            .iter()
            .zip(&pg)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst <= 3e-5 * scale,
            "{kind:?}: parameters differ by {worst}"
        );
        // Training moved the parameters far more than the backends differ,
        // so the comparison is not vacuous.
        let moved = pc
            .iter()
            .zip(&p0)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            moved >= 1e-3 && moved >= 10.0 * worst,
            "{kind:?}: moved {moved}, differ by {worst}"
        );
        // A wgpu checkpoint resumes on the CPU with the same state.
        let dir = std::env::temp_dir().join(format!("gpu-train-{kind:?}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        tg.save(&dir).unwrap();
        let back = Trainer::resume(CpuBackend, &dir, None).unwrap();
        assert_eq!(back.state.step, 12);
        assert_eq!(back.model.store.params().data(), &pg[..]);
        assert_eq!(
            back.ema.shadow.data(),
            &gpu.to_vec(&tg.ema.shadow).unwrap()[..]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
