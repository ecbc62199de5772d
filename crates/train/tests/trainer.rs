//! The training loop: the loss falls on a small synthetic set, resuming from
//! a checkpoint reproduces the uninterrupted run bit for bit, interruption
//! writes a checkpoint, non-finite losses stop with the step named and the
//! last good checkpoint intact, and bad inputs are typed errors.
#![allow(clippy::unwrap_used)]

use std::cell::Cell;
use std::ops::ControlFlow;
use std::path::Path;

use score_net::UnetConfig;
use sde_core::{Backend, CpuBackend, NoiseRng, SdeConfig, SdeKind};
use train::{
    BatchSource, LogEntry, OptimConfig, StepReport, TrainConfig, TrainError, TrainObserver,
    Trainer, TrainingCheckpoint, TrainingConfig, Weights,
};

/// 32 8x8 grey images: four stripe patterns with random amplitudes; values in [0, 1].
struct Stripes {
    images: Vec<f32>,
    nan_after: Option<Cell<usize>>,
}

impl Stripes {
    fn new() -> Self {
        let mut images = Vec::new();
        let amp = NoiseRng::new(11).uniforms_f64(32);
        for (i, a) in amp.iter().enumerate() {
            for y in 0..8 {
                for x in 0..8 {
                    let on = match i % 4 {
                        0 => x % 2 == 0,
                        1 => y % 2 == 0,
                        2 => x < 4,
                        _ => (x + y) % 2 == 0,
                    };
                    images.push(if on { 0.5 + 0.5 * *a as f32 } else { 0.0 });
                }
            }
        }
        Stripes {
            images,
            nan_after: None,
        }
    }
}

impl BatchSource for Stripes {
    fn len(&self) -> usize {
        32
    }
    fn image_shape(&self) -> [usize; 3] {
        [1, 8, 8]
    }
    fn batch(&self, indices: &[usize], _rng: &mut NoiseRng) -> Vec<f32> {
        if let Some(c) = &self.nan_after {
            if c.get() == 0 {
                return vec![f32::NAN; indices.len() * 64];
            }
            c.set(c.get() - 1);
        }
        indices
            .iter()
            .flat_map(|&i| self.images[i * 64..(i + 1) * 64].iter().copied())
            .collect()
    }
}

fn tiny_config(kind: SdeKind, steps: u64) -> TrainConfig {
    TrainConfig {
        seed: 5,
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
            warmup: 10,
            ..OptimConfig::default()
        },
        training: TrainingConfig {
            batch_size: 8,
            steps,
            log_every: 5,
            checkpoint_every: 0,
        },
        ..TrainConfig::default()
    }
}

#[derive(Default)]
struct Recorder {
    logs: Vec<LogEntry>,
    stop_at: Option<u64>,
    checkpoints: Vec<u64>,
}

impl TrainObserver for Recorder {
    fn on_step(&mut self, r: &StepReport) -> ControlFlow<()> {
        if Some(r.step) == self.stop_at {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
    fn on_log(&mut self, e: &LogEntry) {
        self.logs.push(*e);
    }
    fn on_checkpoint(&mut self, step: u64, _path: &Path) {
        self.checkpoints.push(step);
    }
}

fn state_of(t: &Trainer<CpuBackend>) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    (
        t.backend.to_vec(t.model.store.params()).unwrap(),
        t.ema.shadow.data().to_vec(),
        t.adam.m.data().to_vec(),
        t.adam.v.data().to_vec(),
    )
}

#[test]
fn loss_falls_on_a_small_set_for_every_sde() {
    let data = Stripes::new();
    for kind in [SdeKind::Ve, SdeKind::Vp, SdeKind::SubVp] {
        let mut cfg = tiny_config(kind, 150);
        cfg.training.log_every = 25;
        if kind == SdeKind::Ve {
            cfg.sde = SdeConfig::Ve {
                sigma_min: 0.01,
                sigma_max: 4.0,
                num_steps: 1000,
            };
        }
        let mut t = Trainer::new(CpuBackend, cfg, [1, 8, 8]).unwrap();
        let mut rec = Recorder::default();
        let summary = t.run(&data, None, &mut rec).unwrap();
        assert_eq!(summary.steps, 150);
        assert!(!summary.interrupted);
        assert_eq!(rec.logs.len(), 6);
        let (first, last) = (rec.logs[0].loss, rec.logs[5].loss);
        // Mean-reduced, lambda = s^2: the loss starts near 1 (|z|^2 / D with a
        // near-zero network output) and must fall well below it.
        assert!(
            last < 0.6 * first,
            "{kind:?}: loss {first} -> {last} did not fall"
        );
        assert!(rec.logs.iter().all(|e| e.images_per_sec > 0.0));
    }
}

#[test]
fn resume_reproduces_the_uninterrupted_run_bit_for_bit() {
    let data = Stripes::new();
    let dir = tempdir("resume");
    let mut full = Trainer::new(CpuBackend, tiny_config(SdeKind::Vp, 12), [1, 8, 8]).unwrap();
    full.run(&data, None, &mut ()).unwrap();

    // Interrupted at step 5 by the observer: a checkpoint is written there.
    let mut part = Trainer::new(CpuBackend, tiny_config(SdeKind::Vp, 12), [1, 8, 8]).unwrap();
    let mut rec = Recorder {
        stop_at: Some(5),
        ..Recorder::default()
    };
    let s = part.run(&data, Some(&dir), &mut rec).unwrap();
    assert!(s.interrupted);
    assert_eq!((s.steps, rec.checkpoints.clone()), (5, vec![5]));

    let mut resumed = Trainer::resume(CpuBackend, &dir, None).unwrap();
    assert_eq!(resumed.state, part.state);
    assert_eq!(state_of(&resumed), state_of(&part));
    let s2 = resumed.run(&data, Some(&dir), &mut ()).unwrap();
    assert_eq!((s2.steps, s2.steps_this_run), (12, 7));
    assert_eq!(resumed.state, full.state);
    let (a, b) = (state_of(&resumed), state_of(&full));
    assert!(a == b, "resumed run differs from the uninterrupted one");
    // A different seed gives a different run (the comparison above can fail).
    let mut cfg = tiny_config(SdeKind::Vp, 12);
    cfg.seed = 6;
    let mut other = Trainer::new(CpuBackend, cfg, [1, 8, 8]).unwrap();
    other.run(&data, None, &mut ()).unwrap();
    assert!(state_of(&other).0 != b.0);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn periodic_checkpoints_and_the_final_one_are_written() {
    let data = Stripes::new();
    let dir = tempdir("periodic");
    let mut cfg = tiny_config(SdeKind::Vp, 7);
    cfg.training.checkpoint_every = 3;
    let mut t = Trainer::new(CpuBackend, cfg, [1, 8, 8]).unwrap();
    let mut rec = Recorder::default();
    t.run(&data, Some(&dir), &mut rec).unwrap();
    assert_eq!(rec.checkpoints, vec![3, 6, 7]);
    let ck = TrainingCheckpoint::load(&dir).unwrap();
    assert_eq!(ck.state.step, 7);
    assert!(dir.join("config.toml").exists());
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    // The stored config parses back as TOML and equals the run's.
    let toml_cfg: TrainConfig =
        toml::from_str(&std::fs::read_to_string(dir.join("config.toml")).unwrap()).unwrap();
    assert_eq!(toml_cfg, t.cfg);
    // EMA and raw weights both load; they differ after training.
    let b = CpuBackend;
    let ema = ck.model(&b, Weights::Ema).unwrap();
    let raw = ck.model(&b, Weights::Params).unwrap();
    assert_eq!(b.to_vec(raw.store.params()).unwrap(), state_of(&t).0);
    assert_ne!(
        b.to_vec(ema.store.params()).unwrap(),
        b.to_vec(raw.store.params()).unwrap()
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn non_finite_loss_names_the_step_and_keeps_the_last_checkpoint() {
    let mut data = Stripes::new();
    data.nan_after = Some(Cell::new(4)); // batches 1..=4 fine, batch 5 NaN
    let dir = tempdir("nan");
    let mut cfg = tiny_config(SdeKind::Vp, 10);
    cfg.training.checkpoint_every = 2;
    let mut t = Trainer::new(CpuBackend, cfg, [1, 8, 8]).unwrap();
    let err = t.run(&data, Some(&dir), &mut ()).unwrap_err();
    match err {
        TrainError::NonFinite { step, .. } => assert_eq!(step, 5),
        other => panic!("unexpected {other}"),
    }
    // The checkpoint on disk is the last good one (step 4), and the bad step
    // did not touch the parameters.
    let ck = TrainingCheckpoint::load(&dir).unwrap();
    assert_eq!((ck.state.step, t.state.step), (4, 4));
    assert_eq!(ck.buffer("params").unwrap(), state_of(&t).0.as_slice());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_inputs_are_typed_errors() {
    let data = Stripes::new();
    // Wrong channel count for the data.
    let t = Trainer::new(CpuBackend, tiny_config(SdeKind::Vp, 1), [3, 8, 8]);
    assert!(matches!(t, Err(TrainError::Config { .. })));
    // Image size not divisible by 2^(levels-1).
    assert!(Trainer::new(CpuBackend, tiny_config(SdeKind::Vp, 1), [1, 7, 7]).is_err());
    // Batch larger than the data set.
    let mut cfg = tiny_config(SdeKind::Vp, 1);
    cfg.training.batch_size = 64;
    let mut t = Trainer::new(CpuBackend, cfg, [1, 8, 8]).unwrap();
    let e = t.run(&data, None, &mut ()).unwrap_err().to_string();
    assert!(e.contains("larger than the training set"), "{e}");
    // Data of another shape than the model's.
    let mut t = Trainer::new(CpuBackend, tiny_config(SdeKind::Vp, 1), [1, 16, 16]).unwrap();
    assert!(t.step(&data).is_err());
    // SMLD needs VE, DDPM needs VP.
    let mut cfg = tiny_config(SdeKind::Vp, 1);
    cfg.loss.kind = train::LossKind::Smld;
    assert!(Trainer::new(CpuBackend, cfg, [1, 8, 8]).is_err());
    let mut cfg = tiny_config(SdeKind::Ve, 1);
    cfg.loss.kind = train::LossKind::Ddpm;
    assert!(Trainer::new(CpuBackend, cfg, [1, 8, 8]).is_err());
    // Unknown configuration fields are rejected.
    assert!(toml::from_str::<TrainConfig>("seed = 1\nbogus = 2\n").is_err());
    // A missing checkpoint and a network-only checkpoint are errors.
    let dir = tempdir("bad");
    assert!(TrainingCheckpoint::load(&dir.join("nope.safetensors")).is_err());
    let b = CpuBackend;
    let model = score_net::UnetScore::new(
        &b,
        &tiny_config(SdeKind::Vp, 1).net,
        8,
        SdeConfig::default().build().unwrap(),
        0,
    )
    .unwrap();
    let p = dir.join("net.safetensors");
    model
        .save(
            &b,
            &p,
            score_net::checkpoint::StorageDtype::F32,
            &Default::default(),
        )
        .unwrap();
    let e = TrainingCheckpoint::load(&p).unwrap_err().to_string();
    assert!(e.contains("not a training checkpoint"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("train-test-{tag}-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}
