//! The noise-conditional classifier trains through the shared loop: it
//! learns a labelled set (accurate on lightly perturbed images, at chance on
//! pure noise), resuming reproduces the straight run bit for bit, its
//! checkpoints are refused where a score model is expected (and the other
//! way round), and unlabelled data is a clear error.
#![allow(clippy::unwrap_used)]

use std::ops::ControlFlow;

use score_net::ClassifierConfig;
use sde_core::{CpuBackend, NoiseRng, SdeConfig, SdeKind};
use train::data::{ImageSet, Scale, Transform};
use train::{
    accuracy_at_times, BatchSource, ClassifierCheckpoint, ClassifierRunConfig, ClassifierTrainer,
    OptimConfig, StepReport, TrainObserver, TrainSet, Trainer, TrainingCheckpoint, TrainingConfig,
    Weights,
};

/// `n` 8x8 grey images of four stripe patterns (class `i % 4`) with random
/// amplitudes on the 8-bit grid.
fn stripes(n: usize, seed: u64) -> ImageSet {
    let amp = NoiseRng::new(seed).uniforms_f64(n);
    let mut images = Vec::with_capacity(n * 64);
    for (i, a) in amp.iter().enumerate() {
        let level = (128.0 + 127.0 * a).round() as f32 / 255.0;
        for y in 0..8 {
            for x in 0..8 {
                let on = match i % 4 {
                    0 => x % 2 == 0,
                    1 => y % 2 == 0,
                    2 => x < 4,
                    _ => (x + y) % 2 == 0,
                };
                images.push(if on { level } else { 0.0 });
            }
        }
    }
    let labels = (0..n).map(|i| (i % 4) as u32).collect();
    ImageSet::new([1, 8, 8], 256, images, Some(labels), Some(4)).unwrap()
}

fn transform() -> Transform {
    Transform {
        scale: Scale::ZeroOne,
        dequantize: false,
        random_flip: false,
    }
}

fn config(steps: u64) -> ClassifierRunConfig {
    ClassifierRunConfig {
        seed: 3,
        sde: SdeConfig::default_for(SdeKind::Vp),
        net: ClassifierConfig {
            base_channels: 8,
            channel_mult: vec![1, 2],
            num_res_blocks: 1,
            attn_resolutions: vec![],
            dropout: 0.1,
            num_classes: 4,
            ..ClassifierConfig::default()
        },
        optim: OptimConfig {
            lr: 3e-3,
            warmup: 5,
            ema_rate: 0.9,
            ..OptimConfig::default()
        },
        training: TrainingConfig {
            batch_size: 16,
            steps,
            log_every: 10,
            checkpoint_every: 0,
        },
        ..ClassifierRunConfig::default()
    }
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("train-clf-{tag}-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct StopAt(u64);

impl TrainObserver for StopAt {
    fn on_step(&mut self, r: &StepReport) -> ControlFlow<()> {
        if r.step == self.0 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

#[test]
fn classifier_learns_resumes_exactly_and_keeps_its_own_format() {
    let set = stripes(64, 1);
    let test = stripes(64, 2);
    let data = TrainSet::new(&set, transform());
    let steps = 80;
    let dir = tempdir("straight");
    let mut straight = ClassifierTrainer::new(CpuBackend, config(steps), [1, 8, 8]).unwrap();
    let summary = straight.run(&data, Some(&dir), &mut ()).unwrap();
    assert_eq!(summary.steps, steps);

    // Accurate where the images are barely perturbed, at chance (1/4) on
    // noise: with m(1) = 0.0066 for VP, x(1) carries almost no signal, so a
    // classifier that scored well there would be reading something it cannot.
    let ck = ClassifierCheckpoint::load(&dir).unwrap();
    let model = ck.model(&CpuBackend, Weights::Params).unwrap();
    let acc = accuracy_at_times(
        &CpuBackend,
        &model,
        &test,
        &transform(),
        &[0.01, 0.3, 1.0],
        9,
        32,
    )
    .unwrap();
    assert!(acc[0].accuracy >= 0.95, "{acc:?}");
    assert!(acc[2].accuracy <= 0.5, "{acc:?}");
    assert_eq!(acc[0].n, 64);

    // Interrupted at step 30 and resumed: the same parameters, EMA and Adam
    // state, bit for bit.
    let dir2 = tempdir("resumed");
    let mut first = ClassifierTrainer::new(CpuBackend, config(steps), [1, 8, 8]).unwrap();
    let s = first.run(&data, Some(&dir2), &mut StopAt(30)).unwrap();
    assert!(s.interrupted);
    let mut resumed = ClassifierTrainer::resume(CpuBackend, &dir2, None).unwrap();
    assert_eq!(resumed.state.step, 30);
    resumed.run(&data, Some(&dir2), &mut ()).unwrap();
    assert_eq!(
        resumed.model.store.params().data(),
        straight.model.store.params().data()
    );
    assert_eq!(resumed.ema.shadow.data(), straight.ema.shadow.data());
    assert_eq!(resumed.adam.v.data(), straight.adam.v.data());

    // A classifier run is not a score-model run, and vice versa.
    let e = TrainingCheckpoint::load(&dir).unwrap_err().to_string();
    assert!(e.contains("noise-conditional classifier"), "{e}");
    assert!(e.contains("not a score UNet checkpoint"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
    std::fs::remove_dir_all(&dir2).ok();
}

#[test]
fn score_runs_are_refused_as_classifiers() {
    let set = stripes(16, 1);
    let data = TrainSet::new(&set, transform());
    let dir = tempdir("score");
    let mut cfg = train::TrainConfig {
        seed: 1,
        training: TrainingConfig {
            batch_size: 8,
            steps: 1,
            log_every: 1,
            checkpoint_every: 0,
        },
        ..train::TrainConfig::default()
    };
    cfg.net.base_channels = 8;
    cfg.net.channel_mult = vec![1];
    cfg.net.attn_resolutions = vec![];
    let mut t = Trainer::new(CpuBackend, cfg, [1, 8, 8]).unwrap();
    t.run(&data, Some(&dir), &mut ()).unwrap();
    let e = ClassifierCheckpoint::load(&dir).unwrap_err().to_string();
    assert!(
        e.contains("not a noise-conditional classifier checkpoint"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A source without labels.
struct Unlabelled;

impl BatchSource for Unlabelled {
    fn len(&self) -> usize {
        16
    }
    fn image_shape(&self) -> [usize; 3] {
        [1, 8, 8]
    }
    fn batch(&self, indices: &[usize], _rng: &mut NoiseRng) -> Vec<f32> {
        vec![0.5; indices.len() * 64]
    }
}

#[test]
fn unlabelled_data_and_bad_configs_are_clear_errors() {
    let mut t = ClassifierTrainer::new(CpuBackend, config(2), [1, 8, 8]).unwrap();
    let e = t.step(&Unlabelled).unwrap_err().to_string();
    assert!(e.contains("labelled data set"), "{e}");
    let mut bad = config(2);
    bad.loss.eps = 0.0;
    assert!(ClassifierTrainer::new(CpuBackend, bad, [1, 8, 8]).is_err());
    let mut bad = config(2);
    bad.net.num_classes = 1;
    assert!(ClassifierTrainer::new(CpuBackend, bad, [1, 8, 8]).is_err());
    assert!(ClassifierTrainer::new(CpuBackend, config(2), [3, 8, 8]).is_err());
    // Labels beyond the classifier's classes are refused, not indexed.
    let set = stripes(16, 1);
    let mut few = config(2);
    few.net.num_classes = 3;
    let mut t = ClassifierTrainer::new(CpuBackend, few, [1, 8, 8]).unwrap();
    let e = t
        .step(&TrainSet::new(&set, transform()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("label"), "{e}");
    // Evaluation times outside [0, T] are refused.
    let model = t.model.clone();
    assert!(accuracy_at_times(&CpuBackend, &model, &set, &transform(), &[1.5], 0, 8).is_err());
}
