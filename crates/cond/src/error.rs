//! Typed errors of the `cond` crate.

use solvers::SolverError;

/// Errors raised by controllable generation.
#[derive(Debug, thiserror::Error)]
pub enum CondError {
    /// An error from `sde-core` (shapes, backends, non-finite values).
    #[error(transparent)]
    Core(#[from] sde_core::Error),
    /// An error from the samplers.
    #[error(transparent)]
    Solver(#[from] SolverError),
    /// An error from the network crate (classifier shapes, checkpoints).
    #[error(transparent)]
    Net(#[from] score_net::NetError),
    /// An input (data, mask, labels, guidance scale) is invalid.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was given.
        what: &'static str,
        /// Why it is invalid.
        reason: String,
    },
}

/// Result alias of `cond`.
pub type Result<T, E = CondError> = std::result::Result<T, E>;

/// Returns [`CondError::Invalid`] unless `ok`.
pub(crate) fn ensure(ok: bool, what: &'static str, reason: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(CondError::Invalid {
            what,
            reason: reason(),
        })
    }
}
