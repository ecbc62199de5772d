//! `train`: training (not yet built; see the issue tracker).
//!
//! It will hold the data sets (digits, Fashion-MNIST, MNIST, emoji, PNG folders),
//! the denoising score-matching loop (continuous VE/VP/sub-VP and the discrete
//! SMLD/DDPM losses), Adam with warm-up and clipping, EMA, atomic checkpoints with
//! exact resume, and classifier training for guidance.

pub mod data;
pub mod images;

pub use data::{
    DataConfig, DataError, DataSplits, Dataset, DatasetName, ImageSet, Scale, Transform,
};
