//! Typed errors of the data-set layer ([`crate::data`] and [`crate::images`]).

use std::path::{Path, PathBuf};

/// Errors raised while loading data sets or reading and writing images.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A data set, file or folder is not where it was looked for; `hint` says
    /// how to get it (an install command, an `xtask` line or a config field).
    #[error("{what} not found at {path}\n  hint: {hint}")]
    NotFound {
        /// What was looked for (e.g. `Fashion-MNIST`).
        what: String,
        /// Where it was looked for.
        path: PathBuf,
        /// How to install it or point to it.
        hint: String,
    },
    /// A file exists but its content is not what its format requires.
    #[error("{path}: corrupt or unsupported file: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The images of a folder do not all have the same height and width.
    #[error(
        "images differ in size: {first} is {}x{} (width x height) but {other} is {}x{}",
        first_size[1], first_size[0], other_size[1], other_size[0]
    )]
    MixedSizes {
        /// The first image of the folder (by file name).
        first: PathBuf,
        /// Its `[height, width]`.
        first_size: [usize; 2],
        /// An image whose size differs from the first one's.
        other: PathBuf,
        /// Its `[height, width]`.
        other_size: [usize; 2],
    },
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An invalid argument or configuration value (shapes, ranges, fractions).
    #[error("invalid data argument: {0}")]
    Invalid(String),
}

impl DataError {
    /// A [`DataError::Io`] for `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A [`DataError::Corrupt`] for `path`.
    pub fn corrupt(path: &Path, reason: impl Into<String>) -> Self {
        DataError::Corrupt {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// Result alias for the data-set layer.
pub type DataResult<T> = std::result::Result<T, DataError>;
