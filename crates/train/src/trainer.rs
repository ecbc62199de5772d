//! The training loop, written once for every [`Task`]: batches from a
//! [`BatchSource`], the task's objective, Adam with warm-up and clipping,
//! EMA, logging, periodic atomic checkpoints, interruption and exact resume.
//! [`Trainer`] trains the score UNet ([`ScoreTask`]).
//!
//! Exact resume: everything random is drawn from one [`NoiseRng`] (whose
//! state is two integers) and from per-epoch permutations that are a pure
//! function of `(seed, epoch)`; a checkpoint stores the parameters, the EMA,
//! both Adam moments in `f32` (bit-exact), the step, the generator and the
//! position in the epoch. Resuming from step `k` therefore reproduces the
//! uninterrupted run bit for bit on the same backend and thread count.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use score_net::checkpoint::{self, StorageDtype};
use score_net::{NetBackend, Network};
use sde_core::{AnySde, NoiseKey, NoiseRng, SdeConfig, Shape};
use serde::{Deserialize, Serialize};

use crate::data::{DataConfig, ImageSet, Transform};
use crate::error::{ensure_config, Result, TrainError};
use crate::optim::{Adam, Ema, OptimConfig};
use crate::run_checkpoint::{to_json, RunCheckpoint};
use crate::task::{Batch, ScoreTask, Task, TrainModel};

/// File name of the latest checkpoint inside a run directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// File name of the run's configuration (TOML) inside a run directory.
pub const CONFIG_FILE: &str = "config.toml";

/// A training set the trainer can draw batches from.
pub trait BatchSource {
    /// Number of training images.
    fn len(&self) -> usize;
    /// Whether there are no images.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// `[C, H, W]` of every image.
    fn image_shape(&self) -> [usize; 3];
    /// The images at `indices` (NCHW, in the model's data range), with any
    /// random augmentation drawn from `rng`.
    fn batch(&self, indices: &[usize], rng: &mut NoiseRng) -> Vec<f32>;
    /// The class labels of the images at `indices`, for labelled data.
    fn labels(&self, _indices: &[usize]) -> Option<Vec<u32>> {
        None
    }
}

/// An [`ImageSet`] with the transform of its training batches.
#[derive(Clone, Copy, Debug)]
pub struct TrainSet<'a> {
    /// The images.
    pub set: &'a ImageSet,
    /// Scale, dequantisation and flips.
    pub transform: Transform,
}

impl<'a> TrainSet<'a> {
    /// Wraps `set`.
    pub fn new(set: &'a ImageSet, transform: Transform) -> Self {
        TrainSet { set, transform }
    }
}

impl BatchSource for TrainSet<'_> {
    fn len(&self) -> usize {
        self.set.len()
    }
    fn image_shape(&self) -> [usize; 3] {
        self.set.image_shape()
    }
    fn batch(&self, indices: &[usize], rng: &mut NoiseRng) -> Vec<f32> {
        self.set.batch(indices, &self.transform, rng)
    }
    fn labels(&self, indices: &[usize]) -> Option<Vec<u32>> {
        self.set.labels_of(indices)
    }
}

/// Loop settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingConfig {
    /// Images per step (reference 128).
    pub batch_size: usize,
    /// Total optimiser steps.
    pub steps: u64,
    /// Steps between log entries.
    pub log_every: u64,
    /// Steps between checkpoints (0: only at the end and on interruption).
    pub checkpoint_every: u64,
}

impl Default for TrainingConfig {
    /// Batch 64, 2000 steps, log every 50, checkpoint every 500.
    fn default() -> Self {
        TrainingConfig {
            batch_size: 64,
            steps: 2000,
            log_every: 50,
            checkpoint_every: 500,
        }
    }
}

/// A run's whole configuration: what `config.toml` holds. The trainer itself
/// takes its batches from a [`BatchSource`] (for a data set, a [`TrainSet`]);
/// `data` is stored so that sampling and likelihood commands know the data.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, bound = "")]
pub struct RunConfig<T: Task> {
    /// Seed of the initialisation, the noise, the batch order and dropout.
    pub seed: u64,
    /// The forward SDE.
    pub sde: SdeConfig,
    /// The network.
    pub net: <T::Net as Network>::Config,
    /// The objective.
    pub loss: T::Loss,
    /// The optimiser.
    pub optim: OptimConfig,
    /// The loop.
    pub training: TrainingConfig,
    /// The data set and how batches are presented.
    pub data: DataConfig,
}

// Written out: a derive would ask for `T::Net: PartialEq` (the network
// structure), where only its configuration is compared.
impl<T: Task> PartialEq for RunConfig<T> {
    fn eq(&self, other: &Self) -> bool {
        self.seed == other.seed
            && self.sde == other.sde
            && self.net == other.net
            && self.loss == other.loss
            && self.optim == other.optim
            && self.training == other.training
            && self.data == other.data
    }
}

impl<T: Task> Default for RunConfig<T> {
    fn default() -> Self {
        RunConfig {
            seed: 0,
            sde: SdeConfig::default(),
            net: Default::default(),
            loss: Default::default(),
            optim: OptimConfig::default(),
            training: TrainingConfig::default(),
            data: DataConfig::default(),
        }
    }
}

/// The configuration of a score-model run.
pub type TrainConfig = RunConfig<ScoreTask>;

impl<T: Task> RunConfig<T> {
    /// Checks the parts against each other.
    pub fn validate(&self) -> Result<AnySde> {
        let sde = self.sde.build()?;
        T::validate(self, &sde)?;
        self.optim.validate()?;
        let t = &self.training;
        ensure_config(t.batch_size > 0, "training.batch_size", || {
            "must be > 0".into()
        })?;
        ensure_config(t.log_every > 0, "training.log_every", || {
            "must be > 0".into()
        })?;
        ensure_config(t.steps > 0, "training.steps", || {
            "must be at least 1 (a run of 0 steps trains nothing)".into()
        })?;
        Ok(sde)
    }

    /// The sections in which `other` would train differently from this
    /// configuration if a run of this one were resumed with it: everything
    /// but the loop's target, logging and checkpointing intervals (which a
    /// resumed run may change). The network's recorded conditioning is
    /// compared as it resolves for the SDE, so a configuration that leaves
    /// it unset matches a run that recorded the default.
    pub fn resume_conflicts(&self, other: &Self) -> Vec<&'static str> {
        let resolve = |c: &Self| {
            let mut c = c.clone();
            if let Ok(sde) = c.sde.build() {
                T::record_sde_choices(&mut c, &sde);
            }
            c
        };
        let (a, b) = (resolve(self), resolve(other));
        let mut out = Vec::new();
        let mut check = |name, same: bool| {
            if !same {
                out.push(name);
            }
        };
        check("seed", a.seed == b.seed);
        check("sde", a.sde == b.sde);
        check("net", a.net == b.net);
        check("loss", a.loss == b.loss);
        check("optim", a.optim == b.optim);
        check(
            "training.batch_size",
            a.training.batch_size == b.training.batch_size,
        );
        let (mut da, mut db) = (a.data.clone(), b.data.clone());
        // Where the data live may change; what they are may not.
        da.path = None;
        db.path = None;
        check("data", da == db);
        out
    }
}

/// Where the loop stands; stored in checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimiser steps completed.
    pub step: u64,
    /// The generator of times, noise, dropout and augmentation.
    pub rng: NoiseRng,
    /// The current epoch (its permutation is a function of the seed and this).
    pub epoch: u64,
    /// Index of the next image in the epoch's permutation.
    pub pos: usize,
}

/// What one step did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    /// The step just completed (1-based).
    pub step: u64,
    /// Batch loss.
    pub loss: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
}

/// A log line: averages over the steps since the previous one.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LogEntry {
    /// The step of the entry.
    pub step: u64,
    /// Mean batch loss over the window.
    pub loss: f64,
    /// Mean gradient norm over the window.
    pub grad_norm: f64,
    /// Learning rate at `step`.
    pub lr: f64,
    /// Training throughput over the window.
    pub images_per_sec: f64,
}

/// Receives the loop's events; every method has a do-nothing default.
pub trait TrainObserver {
    /// After every step; returning `Break` stops the run after a checkpoint.
    fn on_step(&mut self, _report: &StepReport) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
    /// Every `log_every` steps.
    fn on_log(&mut self, _entry: &LogEntry) {}
    /// After a checkpoint was written.
    fn on_checkpoint(&mut self, _step: u64, _path: &Path) {}
}

/// An observer that ignores everything.
impl TrainObserver for () {}

/// How a [`Trainer::run`] ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunSummary {
    /// Steps completed in total (including steps before a resume).
    pub steps: u64,
    /// Steps completed by this call.
    pub steps_this_run: u64,
    /// Whether the observer stopped the run early.
    pub interrupted: bool,
    /// Mean loss of the last log window (NaN if no step ran).
    pub last_loss: f64,
    /// Wall time of this call in seconds.
    pub seconds: f64,
    /// Mean throughput of this call.
    pub images_per_sec: f64,
    /// The checkpoint written last, if any.
    pub checkpoint: Option<PathBuf>,
}

/// Model, optimiser state and loop position, for any [`Task`].
pub struct TrainLoop<B: NetBackend, T: Task> {
    /// The backend.
    pub backend: B,
    /// The model (current, not averaged, parameters).
    pub model: T::Model<B>,
    /// Adam's state.
    pub adam: Adam<B>,
    /// The EMA of the parameters.
    pub ema: Ema<B>,
    /// The loop position.
    pub state: TrainState,
    /// The configuration.
    pub cfg: RunConfig<T>,
    /// Caller's metadata stored in checkpoints (e.g. the data configuration).
    pub extra: HashMap<String, String>,
    image_shape: [usize; 3],
    order: Vec<usize>,
}

/// The batch-order permutation of `epoch`: a Fisher–Yates shuffle driven by
/// the Philox stream `epoch` of a seed derived from the run's seed.
pub fn epoch_permutation(seed: u64, epoch: u64, n: usize) -> Vec<usize> {
    let u = NoiseKey::new(seed ^ 0x5eed_0fba_7c4e_5000, epoch).uniforms_f64(n);
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = ((u[i] * (i + 1) as f64) as usize).min(i);
        p.swap(i, j);
    }
    p
}

/// The score-model trainer.
pub type Trainer<B> = TrainLoop<B, ScoreTask>;

pub(crate) fn key_of(s: &str) -> String {
    format!("train.{s}")
}

impl<B: NetBackend, T: Task> TrainLoop<B, T> {
    /// A fresh run for images of `image_shape` (`[C, H, W]`, square).
    pub fn new(backend: B, mut cfg: RunConfig<T>, image_shape: [usize; 3]) -> Result<Self> {
        let sde = cfg.validate()?;
        T::record_sde_choices(&mut cfg, &sde);
        T::check_image_shape(&cfg, image_shape)?;
        let model = T::build(&backend, &cfg, image_shape[1], sde)?;
        let pshape = backend.shape(model.store().params()).clone();
        let adam = Adam::new(&backend, cfg.optim.clone(), &pshape)?;
        let ema = Ema::new(&backend, cfg.optim.ema_rate, model.store().params())?;
        let state = TrainState {
            step: 0,
            // A stream family distinct from the initialisation's.
            rng: NoiseRng::new(cfg.seed.wrapping_add(0x9e37_79b9_7f4a_7c15)),
            epoch: 0,
            pos: 0,
        };
        Ok(TrainLoop {
            backend,
            model,
            adam,
            ema,
            state,
            cfg,
            extra: HashMap::new(),
            image_shape,
            order: Vec::new(),
        })
    }

    /// The image shape the model was built for.
    pub fn image_shape(&self) -> [usize; 3] {
        self.image_shape
    }

    /// Number of trainable scalars.
    pub fn num_params(&self) -> usize {
        self.model.store().num_params()
    }

    fn next_indices(&mut self, n: usize) -> Result<Vec<usize>> {
        let bs = self.cfg.training.batch_size;
        ensure_config(n >= bs, "training.batch_size", || {
            format!("{bs} is larger than the training set ({n} images)")
        })?;
        if self.state.pos + bs > n {
            self.state.epoch += 1;
            self.state.pos = 0;
            self.order.clear();
        }
        if self.order.len() != n {
            self.order = epoch_permutation(self.cfg.seed, self.state.epoch, n);
        }
        let idx = self.order[self.state.pos..self.state.pos + bs].to_vec();
        self.state.pos += bs;
        Ok(idx)
    }

    /// One optimiser step on the next batch of `data`.
    pub fn step(&mut self, data: &dyn BatchSource) -> Result<StepReport> {
        ensure_config(data.image_shape() == self.image_shape, "data", || {
            format!(
                "images are {:?}, the model was built for {:?}",
                data.image_shape(),
                self.image_shape
            )
        })?;
        let idx = self.next_indices(data.len())?;
        let b = &self.backend;
        let x0 = data.batch(&idx, &mut self.state.rng);
        let labels = data.labels(&idx);
        let [c, h, w] = self.image_shape;
        let shape = Shape::new([idx.len(), c, h, w])?;
        let x0 = b.tensor(x0, &shape)?;
        let mut grads = b.zeros(b.shape(self.model.store().grads()))?;
        let batch = Batch {
            x0: &x0,
            labels: labels.as_deref(),
        };
        let loss = T::loss(
            &self.model,
            b,
            &batch,
            &self.cfg.loss,
            &mut self.state.rng,
            T::uses_dropout(&self.cfg),
            Some(&mut grads),
        )?;
        let step = self.state.step + 1;
        if !loss.is_finite() {
            return Err(TrainError::NonFinite {
                step,
                what: "loss",
                loss,
            });
        }
        match b.check_finite(&grads, "gradient") {
            Ok(()) => {}
            Err(sde_core::Error::NonFinite { .. }) => {
                return Err(TrainError::NonFinite {
                    step,
                    what: "gradient",
                    loss,
                })
            }
            // A device error (lost device, failed read-back) is not a NaN.
            Err(e) => return Err(e.into()),
        }
        let stats = self
            .adam
            .update(b, self.model.store_mut().params_mut(), &grads)?;
        self.ema.update(b, self.model.store().params())?;
        self.state.step = step;
        Ok(StepReport {
            step,
            loss,
            grad_norm: stats.grad_norm,
            lr: stats.lr,
        })
    }

    /// Trains until `cfg.training.steps`, logging, checkpointing into
    /// `run_dir` (when given) every `checkpoint_every` steps, at the end and
    /// when the observer stops the run. A non-finite loss or gradient stops
    /// with [`TrainError::NonFinite`] without writing, so the last checkpoint
    /// on disk is the last good state.
    pub fn run(
        &mut self,
        data: &dyn BatchSource,
        run_dir: Option<&Path>,
        observer: &mut dyn TrainObserver,
    ) -> Result<RunSummary> {
        let start = Instant::now();
        let first = self.state.step;
        let bs = self.cfg.training.batch_size as f64;
        let (mut win_loss, mut win_gn, mut win_n) = (0.0, 0.0, 0u64);
        let mut win_start = Instant::now();
        let mut last_loss = f64::NAN;
        let mut checkpoint = None;
        let mut interrupted = false;
        if let Some(dir) = run_dir {
            std::fs::create_dir_all(dir).map_err(|source| TrainError::Io {
                path: dir.display().to_string(),
                source,
            })?;
        }
        while self.state.step < self.cfg.training.steps {
            let r = self.step(data)?;
            win_loss += r.loss;
            win_gn += r.grad_norm;
            win_n += 1;
            if r.step % self.cfg.training.log_every == 0 || r.step == self.cfg.training.steps {
                let secs = win_start.elapsed().as_secs_f64().max(1e-9);
                let entry = LogEntry {
                    step: r.step,
                    loss: win_loss / win_n as f64,
                    grad_norm: win_gn / win_n as f64,
                    lr: r.lr,
                    images_per_sec: win_n as f64 * bs / secs,
                };
                last_loss = entry.loss;
                observer.on_log(&entry);
                (win_loss, win_gn, win_n) = (0.0, 0.0, 0);
                win_start = Instant::now();
            }
            let stop = observer.on_step(&r).is_break();
            let every = self.cfg.training.checkpoint_every;
            let due = every > 0 && r.step % every == 0;
            if let Some(dir) = run_dir {
                if due || stop || r.step == self.cfg.training.steps {
                    let path = self.save(dir)?;
                    observer.on_checkpoint(r.step, &path);
                    checkpoint = Some(path);
                }
            }
            if stop {
                interrupted = true;
                break;
            }
        }
        if win_n > 0 {
            last_loss = win_loss / win_n as f64;
        }
        let seconds = start.elapsed().as_secs_f64();
        let steps_this_run = self.state.step - first;
        Ok(RunSummary {
            steps: self.state.step,
            steps_this_run,
            interrupted,
            last_loss,
            seconds,
            images_per_sec: steps_this_run as f64 * bs / seconds.max(1e-9),
            checkpoint,
        })
    }

    /// Writes `run_dir/checkpoint.safetensors` (parameters, EMA, Adam moments,
    /// loop state, configuration; atomically) and `run_dir/config.toml`.
    pub fn save(&self, run_dir: &Path) -> Result<PathBuf> {
        let b = &self.backend;
        let params = b.to_vec(self.model.store().params())?;
        let ema = b.to_vec(&self.ema.shadow)?;
        let adam_m = b.to_vec(&self.adam.m)?;
        let adam_v = b.to_vec(&self.adam.v)?;
        let layout = self.model.store().layout();
        let mut extra = self.extra.clone();
        extra.insert(key_of("state"), to_json(&self.state)?);
        extra.insert(key_of("config"), to_json(&self.cfg)?);
        extra.insert(key_of("adam_step"), self.adam.step.to_string());
        extra.insert(key_of("ema_updates"), self.ema.updates.to_string());
        extra.insert(key_of("image_shape"), to_json(&self.image_shape)?);
        let path = run_dir.join(CHECKPOINT_FILE);
        checkpoint::save(
            &path,
            self.model.net(),
            &layout,
            &[
                ("params", &params),
                ("ema", &ema),
                ("adam.m", &adam_m),
                ("adam.v", &adam_v),
            ],
            StorageDtype::F32,
            &extra,
        )?;
        let toml = toml::to_string_pretty(&self.cfg).map_err(|e| TrainError::Checkpoint {
            path: path.display().to_string(),
            reason: format!("cannot write the configuration as TOML: {e}"),
        })?;
        checkpoint::write_atomic(&run_dir.join(CONFIG_FILE), toml.as_bytes())?;
        Ok(path)
    }

    /// Restores a run from a checkpoint written by [`Trainer::save`] (a file,
    /// or a run directory holding `checkpoint.safetensors`). `steps`, when
    /// given, replaces the configured total (to train further).
    pub fn resume(backend: B, path: &Path, steps: Option<u64>) -> Result<Self> {
        let ck = RunCheckpoint::<T>::load(path)?;
        let mut cfg = ck.config.clone();
        if let Some(s) = steps {
            cfg.training.steps = s;
        }
        let mut t = TrainLoop::new(backend, cfg, ck.image_shape)?;
        let b = &t.backend;
        let shape = b.shape(t.model.store().params()).clone();
        let params = ck.buffer("params")?;
        t.model.store_mut().set_params_from_host(b, params)?;
        t.ema.shadow = b.tensor(ck.buffer("ema")?.to_vec(), &shape)?;
        t.ema.updates = ck.ema_updates;
        t.adam.m = b.tensor(ck.buffer("adam.m")?.to_vec(), &shape)?;
        t.adam.v = b.tensor(ck.buffer("adam.v")?.to_vec(), &shape)?;
        t.adam.step = ck.adam_step;
        t.state = ck.state;
        t.extra = ck
            .inner
            .extra
            .iter()
            .filter(|(k, _)| !k.starts_with("train."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(t)
    }
}
