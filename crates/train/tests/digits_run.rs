//! A short real run: 150 steps on the embedded digits set, where the loss
//! must fall; and every example configuration in `configs/` parses and
//! validates.
#![allow(clippy::unwrap_used)]

use score_net::UnetConfig;
use sde_core::CpuBackend;
use train::data::{DataConfig, Scale};
use train::{LogEntry, OptimConfig, TrainConfig, TrainObserver, TrainSet, Trainer, TrainingConfig};

#[derive(Default)]
struct Logs(Vec<LogEntry>);

impl TrainObserver for Logs {
    fn on_log(&mut self, e: &LogEntry) {
        self.0.push(*e);
    }
}

#[test]
fn digits_loss_falls_in_150_steps() {
    let data_cfg = DataConfig {
        scale: Scale::MinusOneOne,
        ..DataConfig::default()
    };
    let splits = train::data::load(&data_cfg).unwrap();
    let cfg = TrainConfig {
        net: UnetConfig {
            base_channels: 8,
            channel_mult: vec![1, 2],
            num_res_blocks: 1,
            attn_resolutions: vec![],
            dropout: 0.0,
            ..UnetConfig::default()
        },
        optim: OptimConfig {
            lr: 2e-3,
            warmup: 20,
            ..OptimConfig::default()
        },
        training: TrainingConfig {
            batch_size: 32,
            steps: 150,
            log_every: 30,
            checkpoint_every: 0,
        },
        data: data_cfg.clone(),
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(CpuBackend, cfg, splits.train.image_shape()).unwrap();
    let mut logs = Logs::default();
    let source = TrainSet::new(&splits.train, data_cfg.transform());
    t.run(&source, None, &mut logs).unwrap();
    let l: Vec<f64> = logs.0.iter().map(|e| e.loss).collect();
    assert_eq!(l.len(), 5);
    // Noise prediction starts at |z|^2/D = 1; a trained net is far below.
    assert!(l[0] > 0.4, "{l:?}");
    assert!(l[4] < 0.5 * l[0], "loss did not fall: {l:?}");
}

#[test]
fn every_example_config_parses_and_validates() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&p).unwrap();
            // Classifier configurations (`*-classifier.toml`) have their own schema.
            let checked = if p.to_string_lossy().ends_with("-classifier.toml") {
                toml::from_str::<train::ClassifierRunConfig>(&text)
                    .map_err(|e| e.to_string())
                    .and_then(|c| c.validate().map(|_| ()).map_err(|e| e.to_string()))
            } else {
                toml::from_str::<TrainConfig>(&text)
                    .map_err(|e| e.to_string())
                    .and_then(|c| c.validate().map(|_| ()).map_err(|e| e.to_string()))
            };
            checked.unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 6, "only {n} configs found");
}
