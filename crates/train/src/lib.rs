//! `train`: training score models by denoising score matching.
//!
//! - [`data`]: the data sets (embedded `digits`, Fashion-MNIST, MNIST, emoji,
//!   folders of PNGs) with train/test splits, scaling, dequantisation and
//!   flips; [`images`]: PNG grids and `.npy` files;
//! - [`loss`]: continuous DSM (VE, VP, sub-VP; both weightings and
//!   reductions) and the discrete SMLD and DDPM losses;
//! - [`optim`]: Adam with warm-up and global-norm clipping, and the EMA of
//!   the weights;
//! - [`trainer`]: the loop with logging, periodic atomic checkpoints,
//!   interruption, non-finite detection and bit-exact resume.

pub mod data;
pub mod error;
pub mod images;
pub mod loss;
pub mod optim;
pub mod trainer;

pub use data::{
    DataConfig, DataError, DataSplits, Dataset, DatasetName, ImageSet, Scale, Transform,
};
pub use error::{Result, TrainError};
pub use loss::{LossConfig, LossKind};
pub use optim::{Adam, Ema, OptimConfig};
pub use trainer::{
    BatchSource, LogEntry, RunSummary, StepReport, TrainConfig, TrainObserver, TrainSet,
    TrainState, Trainer, TrainingCheckpoint, TrainingConfig, Weights,
};
