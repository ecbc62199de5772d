//! `train`: training score models by denoising score matching.
//!
//! - [`data`]: the data sets (embedded `digits`, Fashion-MNIST, MNIST, emoji,
//!   folders of PNGs) with train/test splits, scaling, dequantisation and
//!   flips; [`images`]: PNG grids and `.npy` files;
//! - [`loss`]: continuous DSM (VE, VP, sub-VP; both weightings and
//!   reductions) and the discrete SMLD and DDPM losses;
//! - [`optim`]: Adam with warm-up and global-norm clipping, and the EMA of
//!   the weights;
//! - [`classify`]: the noise-conditional classifier's task (cross-entropy on
//!   perturbed data) and its accuracy at chosen times;
//! - [`task`]: what a run trains ([`Task`]: network, model, objective);
//!   [`ScoreTask`] is the score UNet by denoising score matching;
//! - [`trainer`]: the loop, generic over the task, with logging, periodic
//!   atomic checkpoints, interruption, non-finite detection and bit-exact
//!   resume; [`run_checkpoint`]: reading its checkpoints back.

pub mod classify;
pub mod data;
pub mod error;
pub mod images;
pub mod loss;
pub mod optim;
pub mod run_checkpoint;
pub mod task;
pub mod trainer;

pub use classify::{
    accuracy_at_times, Accuracy, ClassifierCheckpoint, ClassifierLoss, ClassifierRunConfig,
    ClassifierTask, ClassifierTrainer,
};
pub use data::{
    DataConfig, DataError, DataSplits, Dataset, DatasetName, ImageSet, Scale, Transform,
};
pub use error::{Result, TrainError};
pub use loss::{LossConfig, LossKind};
pub use optim::{Adam, Ema, OptimConfig};
pub use run_checkpoint::{RunCheckpoint, TrainingCheckpoint, Weights};
pub use task::{Batch, ScoreTask, Task, TrainModel};
pub use trainer::{
    BatchSource, LogEntry, RunConfig, RunSummary, StepReport, TrainConfig, TrainLoop,
    TrainObserver, TrainSet, TrainState, Trainer, TrainingConfig,
};
