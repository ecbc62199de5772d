//! Typed errors of the training crate.

/// Errors raised by `train`.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// An error from `sde-core` (SDE parameters, shapes, non-finite values).
    #[error(transparent)]
    Core(#[from] sde_core::Error),
    /// An error from the network crate (shapes, checkpoints, configuration).
    #[error(transparent)]
    Net(#[from] score_net::NetError),
    /// A data set could not be loaded, or an image file read or written.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// An invalid configuration value.
    #[error("invalid configuration {field}: {reason}")]
    Config {
        /// The field (dotted path, e.g. `optim.lr`).
        field: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A configuration file could not be parsed.
    #[error("{path}: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message.
        reason: String,
    },
    /// The loss or the gradients became NaN or infinite; training stopped
    /// without updating the parameters or writing a checkpoint of this step
    /// (an earlier checkpoint, if any, is intact).
    #[error("non-finite {what} at step {step} (loss {loss}); training stopped without writing this step")]
    NonFinite {
        /// The step that produced it.
        step: u64,
        /// `"loss"` or `"gradient"`.
        what: &'static str,
        /// The loss value of that step.
        loss: f64,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A training checkpoint is missing pieces or does not match the configuration.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// Result alias for `train`.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

/// Returns [`TrainError::Config`] unless `ok`.
pub(crate) fn ensure_config(ok: bool, field: &str, reason: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(TrainError::Config {
            field: field.to_string(),
            reason: reason(),
        })
    }
}
