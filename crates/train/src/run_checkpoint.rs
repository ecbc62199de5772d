//! Training checkpoints read back ([`RunCheckpoint`], for any [`Task`]): the
//! network checkpoint of `score_net::checkpoint` plus the run's
//! configuration, the loop state, Adam's step and the EMA's update count,
//! stored as `train.*` metadata entries by [`crate::TrainLoop::save`].

use std::path::{Path, PathBuf};

use score_net::checkpoint::{self, Checkpoint};
use score_net::NetBackend;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::task::{ScoreTask, Task, TrainModel};
use crate::trainer::{key_of, RunConfig, TrainState, CHECKPOINT_FILE};

/// JSON text of a value stored in a checkpoint's header.
pub(crate) fn to_json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| TrainError::Checkpoint {
        path: String::new(),
        reason: e.to_string(),
    })
}

/// Which weights to take from a training checkpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Weights {
    /// The exponential moving average (what the paper samples with).
    #[default]
    Ema,
    /// The raw parameters of the last step.
    Params,
}

/// A training checkpoint read back: the network file plus the loop state.
#[derive(Clone, Debug)]
pub struct RunCheckpoint<T: Task> {
    /// The file that was read.
    pub path: PathBuf,
    /// The underlying network checkpoint (config, buffers, metadata).
    pub inner: Checkpoint<T::Net>,
    /// The run's configuration.
    pub config: RunConfig<T>,
    /// The loop state.
    pub state: TrainState,
    /// Adam's step count.
    pub adam_step: u64,
    /// EMA updates applied.
    pub ema_updates: u64,
    /// `[C, H, W]` of the training images.
    pub image_shape: [usize; 3],
}

/// A score-model training checkpoint.
pub type TrainingCheckpoint = RunCheckpoint<ScoreTask>;

impl<T: Task> RunCheckpoint<T> {
    /// Reads a checkpoint file, or `checkpoint.safetensors` inside a directory.
    pub fn load(path: &Path) -> Result<Self> {
        let path = if path.is_dir() {
            path.join(CHECKPOINT_FILE)
        } else {
            path.to_path_buf()
        };
        let inner = checkpoint::load::<T::Net>(&path)?;
        let bad = |reason: String| TrainError::Checkpoint {
            path: path.display().to_string(),
            reason,
        };
        let get = |k: &str| {
            inner
                .extra
                .get(&key_of(k))
                .ok_or_else(|| bad(format!("no {k:?} entry: not a training checkpoint")))
        };
        fn parse<T: serde::de::DeserializeOwned>(
            text: &str,
            k: &str,
            bad: &dyn Fn(String) -> TrainError,
        ) -> Result<T> {
            serde_json::from_str(text).map_err(|e| bad(format!("{k}: {e}")))
        }
        let config: RunConfig<T> = parse(get("config")?, "config", &bad)?;
        let state: TrainState = parse(get("state")?, "state", &bad)?;
        let image_shape: [usize; 3] = parse(get("image_shape")?, "image_shape", &bad)?;
        let num = |k: &str| -> Result<u64> {
            get(k)?
                .parse()
                .map_err(|_| bad(format!("{k} is not a number")))
        };
        let (adam_step, ema_updates) = (num("adam_step")?, num("ema_updates")?);
        if config.net != inner.config {
            return Err(bad(
                "the run configuration and the stored network disagree".into()
            ));
        }
        Ok(RunCheckpoint {
            path,
            inner,
            config,
            state,
            adam_step,
            ema_updates,
            image_shape,
        })
    }

    /// The flat buffer `name` (`params`, `ema`, `adam.m`, `adam.v`).
    pub fn buffer(&self, name: &str) -> Result<&[f32]> {
        self.inner
            .buffer(name)
            .ok_or_else(|| TrainError::Checkpoint {
                path: self.path.display().to_string(),
                reason: format!("no {name:?} buffer"),
            })
    }

    /// The model with the chosen weights, for sampling, likelihoods or guidance.
    pub fn model<B: NetBackend>(&self, b: &B, weights: Weights) -> Result<T::Model<B>> {
        let sde = self.config.sde.build()?;
        let mut model = T::build(b, &self.config, self.image_shape[1], sde)?;
        let name = match weights {
            Weights::Ema => "ema",
            Weights::Params => "params",
        };
        model
            .store_mut()
            .set_params_from_host(b, self.buffer(name)?)?;
        Ok(model)
    }
}
