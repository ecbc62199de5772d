//! `scoresde train` and `scoresde train-classifier`: train a score model or
//! a noise-conditional classifier from a TOML configuration, with flags for
//! the common fields, a progress bar, periodic atomic checkpoints, a
//! `log.jsonl` of the loss and throughput in the run directory, Ctrl-C to
//! stop after a checkpoint, and `--resume`. A classifier run ends with its
//! test accuracy at t = 0, 0.25, 0.5, 0.75 and 1 (`scoresde eval-classifier`
//! prints it for any classifier run).

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use score_net::NetBackend;
use serde_json::json;
use train::data::DatasetName;
use train::{
    ClassifierRunConfig, ClassifierTask, LogEntry, RunConfig, ScoreTask, StepReport, Task,
    TrainConfig, TrainLoop, TrainObserver,
};

use crate::common::{interrupted, with_backend, Ctx};

/// Arguments of `scoresde train`.
#[derive(Clone, Debug, clap::Args)]
pub struct TrainArgs {
    /// Configuration file (TOML; see `configs/`). Without it, the defaults.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Run directory: checkpoint.safetensors and config.toml go here.
    #[arg(long, short, default_value = "runs/latest")]
    pub out: PathBuf,
    /// Continue the run in `--out` from its checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Total optimiser steps.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Images per step.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Data set (digits, fashion-mnist, mnist, emoji, png).
    #[arg(long, value_parser = crate::common::serde_enum::<DatasetName>)]
    pub dataset: Option<DatasetName>,
    /// Where the data set lives (a folder of PNGs for `png`).
    #[arg(long)]
    pub data_path: Option<PathBuf>,
    /// Steps between checkpoints.
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Steps between log lines.
    #[arg(long)]
    pub log_every: Option<u64>,
}

/// Reads a configuration file (TOML) with a clear error.
pub fn read_config<C: serde::de::DeserializeOwned>(path: &Path) -> Result<C> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the configuration {}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: {}",
            path.display(),
            e.to_string().replace('\n', " ").trim()
        )
    })
}

impl TrainArgs {
    /// The configuration of the run to train: for a new run, the `--config`
    /// file (or the defaults) with the flags applied; for `--resume`, the
    /// configuration stored in the run's checkpoint, with a new target
    /// (`--steps`, else the run's own) and logging / checkpoint intervals,
    /// and an error for any flag or `--config` that would change how the run
    /// trains (data set, network, SDE, loss, optimiser, batch size, seed).
    pub fn run_config<T: Task>(
        &self,
        ctx: &Ctx,
        default: impl FnOnce() -> RunConfig<T>,
    ) -> Result<RunConfig<T>> {
        if !self.resume {
            let mut cfg = match &self.config {
                Some(p) => read_config(p)?,
                None => default(),
            };
            self.apply(&mut cfg, ctx.seed);
            cfg.validate()?;
            return Ok(cfg);
        }
        let ck_path = self.out.join(train::trainer::CHECKPOINT_FILE);
        if !ck_path.exists() {
            bail!("--resume: no checkpoint at {}", ck_path.display());
        }
        let ck = train::RunCheckpoint::<T>::load(&ck_path)
            .with_context(|| format!("loading {}", ck_path.display()))?;
        let stored = ck.config.clone();
        let step = ck.state.step;
        let run = self.out.display();
        if let Some(p) = &self.config {
            let file: RunConfig<T> = read_config(p)?;
            let conflicts = stored.resume_conflicts(&file);
            if !conflicts.is_empty() {
                bail!(
                    "--config {}: differs from the configuration stored in the run in {run} \
                     ({} differ); a resumed run keeps its own (drop --config, or start a new \
                     run with another --out)",
                    p.display(),
                    conflicts.join(", ")
                );
            }
        }
        let keep = |flag: &str, given: String, stored: String| -> Result<()> {
            if given != stored {
                bail!(
                    "{flag} {given}: the run in {run} has {stored}, and a resumed run keeps it \
                     (start a new run with another --out to change it)"
                );
            }
            Ok(())
        };
        if let Some(d) = self.dataset {
            keep("--dataset", d.to_string(), stored.data.dataset.to_string())?;
        }
        if let Some(lr) = self.lr {
            keep("--lr", lr.to_string(), stored.optim.lr.to_string())?;
        }
        if let Some(bs) = self.batch_size {
            keep(
                "--batch-size",
                bs.to_string(),
                stored.training.batch_size.to_string(),
            )?;
        }
        if let Some(seed) = ctx.seed {
            keep("--seed", seed.to_string(), stored.seed.to_string())?;
        }
        let mut cfg = stored;
        match self.steps {
            Some(s) if s <= step => bail!(
                "--steps {s}: the run in {run} is already at step {step}; give a larger target \
                 to train further"
            ),
            Some(s) => cfg.training.steps = s,
            None if cfg.training.steps <= step => bail!(
                "the run in {run} already reached its target of {} steps; pass --steps N with \
                 N > {step} to train further",
                cfg.training.steps
            ),
            None => {}
        }
        if let Some(l) = self.log_every {
            ctx.note(format!(
                "logging every {l} steps (the run logged every {})",
                cfg.training.log_every
            ));
            cfg.training.log_every = l;
        }
        if let Some(c) = self.checkpoint_every {
            ctx.note(format!(
                "a checkpoint every {c} steps (the run wrote one every {})",
                cfg.training.checkpoint_every
            ));
            cfg.training.checkpoint_every = c;
        }
        ctx.note(format!(
            "resuming the run in {run} at step {step} with the configuration stored in its \
             checkpoint ({} data), to step {}",
            cfg.data.dataset, cfg.training.steps
        ));
        Ok(cfg)
    }

    fn apply<T: Task>(&self, cfg: &mut RunConfig<T>, seed: Option<u64>) {
        if let Some(s) = self.steps {
            cfg.training.steps = s;
        }
        if let Some(b) = self.batch_size {
            cfg.training.batch_size = b;
        }
        if let Some(lr) = self.lr {
            cfg.optim.lr = lr;
        }
        if let Some(d) = self.dataset {
            cfg.data.dataset = d;
        }
        if let Some(p) = &self.data_path {
            cfg.data.path = Some(p.clone());
        }
        if let Some(c) = self.checkpoint_every {
            cfg.training.checkpoint_every = c;
        }
        if let Some(l) = self.log_every {
            cfg.training.log_every = l;
        }
        if let Some(s) = seed {
            cfg.seed = s;
        }
    }
}

/// Ticks the bar, prints log lines, stops on Ctrl-C.
pub struct CliObserver {
    /// The bar.
    pub bar: ProgressBar,
    /// The Ctrl-C flag.
    pub stop: Arc<AtomicBool>,
    /// Log entries seen.
    pub logs: Vec<LogEntry>,
    /// Print log lines (not with --json).
    pub verbose: bool,
    /// `log.jsonl` in the run directory: one JSON object per log entry, appended.
    pub log_file: Option<std::fs::File>,
}

impl TrainObserver for CliObserver {
    fn on_step(&mut self, r: &StepReport) -> ControlFlow<()> {
        self.bar.set_position(r.step);
        if self.stop.load(Ordering::SeqCst) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
    fn on_log(&mut self, e: &LogEntry) {
        self.bar.set_message(format!(
            "loss {:.4} | {:.0} img/s",
            e.loss, e.images_per_sec
        ));
        if self.verbose {
            let line = format!(
                "step {:>6}  loss {:.5}  grad-norm {:.3}  lr {:.2e}  {:.1} img/s",
                e.step, e.loss, e.grad_norm, e.lr, e.images_per_sec
            );
            // A bar that is not drawn (stderr is not a terminal) drops println.
            if self.bar.is_hidden() {
                eprintln!("{line}");
            } else {
                self.bar.println(line);
            }
        }
        if let Some(f) = &mut self.log_file {
            use std::io::Write;
            if let Ok(line) = serde_json::to_string(e) {
                // Logging must not stop training; a full disk shows up at the checkpoint.
                let _ = writeln!(f, "{line}");
            }
        }
        self.logs.push(*e);
    }
}

/// Trains (or resumes) a run described by `cfg` into `out` on the backend
/// `--device` chose; returns the summary JSON.
pub fn train_run(
    ctx: &Ctx,
    cfg: TrainConfig,
    out: &Path,
    resume: bool,
    data_path: Option<PathBuf>,
) -> Result<serde_json::Value> {
    with_backend!(ctx, b => train_on(ctx, b, cfg, out, resume, data_path).map(|r| r.0))
}

fn train_on<B: NetBackend, T: Task>(
    ctx: &Ctx,
    b: B,
    cfg: RunConfig<T>,
    out: &Path,
    resume: bool,
    data_path: Option<PathBuf>,
) -> Result<(serde_json::Value, TrainLoop<B, T>, train::data::DataSplits)> {
    let device = b.name();
    let splits = crate::common::load_data(&cfg, data_path)?;
    let ck = out.join(train::trainer::CHECKPOINT_FILE);
    let mut trainer = if resume {
        if !ck.exists() {
            bail!("--resume: no checkpoint at {}", ck.display());
        }
        let mut t = TrainLoop::<B, T>::resume(b, &ck, Some(cfg.training.steps))?;
        let conflicts = t.cfg.resume_conflicts(&cfg);
        if !conflicts.is_empty() {
            bail!(
                "the run in {} was trained with another configuration ({} differ); a \
                 resumed run keeps its own (start a new run with another --out)",
                out.display(),
                conflicts.join(", ")
            );
        }
        if t.state.step >= cfg.training.steps {
            bail!(
                "the run in {} is at step {}; the target of {} steps must be larger to train \
                 further (--steps)",
                out.display(),
                t.state.step,
                cfg.training.steps
            );
        }
        t.cfg.training.log_every = cfg.training.log_every;
        t.cfg.training.checkpoint_every = cfg.training.checkpoint_every;
        t
    } else {
        if ck.exists() {
            bail!(
                "{} already holds a run; pass --resume to continue it or choose another --out",
                out.display()
            );
        }
        TrainLoop::new(b, cfg, splits.train.image_shape())?
    };
    let source = train::TrainSet::new(&splits.train, trainer.cfg.data.transform());
    ctx.note(format!(
        "training a {} on {} ({} train / {} test images of {:?}) with {device}, {} parameters, from step {} to {}",
        T::NAME,
        splits.name,
        splits.train.len(),
        splits.test.len(),
        splits.train.image_shape(),
        trainer.num_params(),
        trainer.state.step,
        trainer.cfg.training.steps
    ));
    let bar = ctx.bar(trainer.cfg.training.steps, "train");
    bar.set_position(trainer.state.step);
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    // Temporary files of writes a killed run left unfinished (the files
    // themselves are renamed into place only when complete).
    for name in [
        train::trainer::CHECKPOINT_FILE,
        train::trainer::CONFIG_FILE,
        "log.jsonl",
    ] {
        let tmp = out.join(format!("{name}.tmp"));
        if tmp.is_file() {
            std::fs::remove_file(&tmp)
                .with_context(|| format!("cannot remove the stale {}", tmp.display()))?;
            ctx.note(format!(
                "removed {}, left by an interrupted write",
                tmp.display()
            ));
        }
    }
    let log_path = out.join("log.jsonl");
    reconcile_log(&log_path, if resume { trainer.state.step } else { 0 })?;
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let mut obs = CliObserver {
        bar,
        stop: interrupted(),
        logs: Vec::new(),
        verbose: !ctx.json && !ctx.quiet,
        log_file: Some(log_file),
    };
    let summary = match trainer.run(&source, Some(out), &mut obs) {
        Ok(s) => s,
        Err(e @ train::TrainError::NonFinite { .. }) => {
            let kept = match train::RunCheckpoint::<T>::load(&ck) {
                Ok(c) => format!("the last checkpoint (step {}) is intact", c.state.step),
                Err(_) => "no checkpoint had been written yet".to_string(),
            };
            bail!("{e}; {kept}");
        }
        Err(e) => return Err(e.into()),
    };
    obs.bar.finish_and_clear();
    let value = json!({
        "command": if T::NAME == ClassifierTask::NAME { "train-classifier" } else { "train" },
        "run_dir": out,
        "steps": summary.steps,
        "steps_this_run": summary.steps_this_run,
        "interrupted": summary.interrupted,
        "last_loss": summary.last_loss,
        "seconds": summary.seconds,
        "images_per_sec": summary.images_per_sec,
        "checkpoint": summary.checkpoint,
        "params": trainer.num_params(),
        "dataset": splits.name,
        "device": device,
    });
    Ok((value, trainer, splits))
}

/// Makes `log.jsonl` continue exactly from the checkpoint's `step`: lines of
/// later steps (written after the last checkpoint by a run that was then
/// killed) and lines that are not log entries are dropped, so the resumed
/// run's lines follow without duplicates; for a new run (`step = 0`) a stale
/// log is emptied. Rewritten atomically.
fn reconcile_log(path: &Path, step: u64) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let kept: String = text
        .lines()
        .filter(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    if kept.len() != text.len() {
        let tmp = path.with_extension("jsonl.tmp");
        std::fs::write(&tmp, kept)
            .and_then(|()| std::fs::rename(&tmp, path))
            .with_context(|| format!("cannot rewrite {}", path.display()))?;
    }
    Ok(())
}

/// `scoresde train`.
pub fn run(ctx: &Ctx, args: &TrainArgs) -> Result<serde_json::Value> {
    let cfg = args.run_config::<ScoreTask>(ctx, TrainConfig::default)?;
    train_run(ctx, cfg, &args.out, args.resume, args.data_path.clone())
}

/// The times at which classifier accuracy is reported.
pub const EVAL_TIMES: [f64; 5] = [0.0, 0.25, 0.5, 0.75, 1.0];

/// `scoresde train-classifier`: trains, then reports the test accuracy at
/// [`EVAL_TIMES`] (of the EMA weights, as guidance uses them).
pub fn run_classifier(ctx: &Ctx, args: &TrainArgs) -> Result<serde_json::Value> {
    let cfg = args.run_config::<ClassifierTask>(ctx, ClassifierRunConfig::default)?;
    let (out, resume, data_path) = (&args.out, args.resume, args.data_path.clone());
    with_backend!(ctx, b => {
        let (mut value, trainer, splits) = train_on(ctx, b, cfg, out, resume, data_path)?;
        // The EMA weights the checkpoint just stored, taken from memory.
        let mut model = trainer.model.clone();
        model.store.set_params(&trainer.backend, trainer.ema.shadow.clone())?;
        let acc = accuracy_json(ctx, &trainer.backend, &model, &splits, &trainer.cfg)?;
        value["test_accuracy"] = acc;
        Ok(value)
    })
}

/// Test accuracy of a classifier at [`EVAL_TIMES`], as JSON (and a note).
fn accuracy_json<B: NetBackend>(
    ctx: &Ctx,
    b: &B,
    model: &score_net::ClassifierModel<B, sde_core::AnySde>,
    splits: &train::data::DataSplits,
    cfg: &ClassifierRunConfig,
) -> Result<serde_json::Value> {
    let acc = train::accuracy_at_times(
        b,
        model,
        &splits.test,
        &cfg.data.transform(),
        &EVAL_TIMES,
        cfg.seed,
        cfg.training.batch_size.max(1),
    )?;
    let line: Vec<String> = acc
        .iter()
        .map(|a| format!("t={:.2}: {:.1}%", a.t, 100.0 * a.accuracy))
        .collect();
    ctx.note(format!(
        "test accuracy ({} images): {}",
        splits.test.len(),
        line.join(", ")
    ));
    Ok(serde_json::to_value(&acc)?)
}

/// Arguments of `scoresde eval-classifier`.
#[derive(Clone, Debug, clap::Args)]
pub struct EvalClassifierArgs {
    /// Run directory (or checkpoint file) written by `scoresde train-classifier`.
    #[arg(long)]
    pub ckpt: PathBuf,
    /// Weights to use: the EMA (default) or the raw parameters.
    #[arg(long, default_value = "ema", value_parser = crate::common::serde_enum::<train::Weights>)]
    pub weights: train::Weights,
    /// Where the data set lives, if not where the run found it.
    #[arg(long)]
    pub data_path: Option<PathBuf>,
}

/// `scoresde eval-classifier`: test accuracy at t = 0, 0.25, 0.5, 0.75, 1.
pub fn eval_classifier(ctx: &Ctx, args: &EvalClassifierArgs) -> Result<serde_json::Value> {
    let ck = train::ClassifierCheckpoint::load(&args.ckpt)
        .with_context(|| format!("loading {}", args.ckpt.display()))?;
    let splits = crate::common::load_data(&ck.config, args.data_path.clone())?;
    with_backend!(ctx, b => {
        let model = ck.model(&b, args.weights)?;
        let acc = accuracy_json(ctx, &b, &model, &splits, &ck.config)?;
        Ok(json!({
            "command": "eval-classifier",
            "device": sde_core::Backend::name(&b),
            "dataset": splits.name,
            "test_accuracy": acc,
        }))
    })
}
