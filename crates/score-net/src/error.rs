//! Typed errors of the network crate.

/// Errors raised by `score-net`.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// An error from `sde-core` (shapes, backends, non-finite values).
    #[error(transparent)]
    Core(#[from] sde_core::Error),
    /// A layer received a tensor of the wrong rank or size.
    #[error("{op}: {reason}")]
    Shape {
        /// The operation.
        op: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A parameter view lies outside the parameter buffer or has the wrong size.
    #[error("parameter view {name}: {reason}")]
    View {
        /// The view's name (or its offset when unnamed).
        name: String,
        /// What is wrong.
        reason: String,
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
    /// A checkpoint is corrupt, truncated, or does not match the model.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// An invalid configuration value.
    #[error("invalid configuration {field} = {value}: {reason}")]
    Config {
        /// The field.
        field: &'static str,
        /// The value given.
        value: String,
        /// Why it is invalid.
        reason: String,
    },
}

/// Result alias for `score-net`.
pub type Result<T, E = NetError> = std::result::Result<T, E>;

impl From<NetError> for sde_core::Error {
    fn from(e: NetError) -> Self {
        match e {
            NetError::Core(c) => c,
            other => sde_core::Error::Model(Box::new(other)),
        }
    }
}

/// Returns [`NetError::Shape`] unless `ok`.
pub(crate) fn ensure_shape(
    ok: bool,
    op: &'static str,
    reason: impl FnOnce() -> String,
) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(NetError::Shape {
            op,
            reason: reason(),
        })
    }
}
