//! Typed errors of `sde-core`: every fallible function in this crate (and the
//! `Backend` / `ScoreModel` traits that downstream crates implement) returns
//! [`Error`].

use crate::Shape;

/// Errors raised by the SDE maths, the backends and score models.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A time lies outside `[0, T]` or is not finite.
    #[error("time t = {t} is outside [0, {t_max}]")]
    TimeOutOfRange {
        /// The offending time.
        t: f64,
        /// The SDE's end time `T`.
        t_max: f64,
    },
    /// Two tensors (or a tensor and a requested shape) disagree.
    #[error("shape mismatch in {op}: expected {expected}, got {got}")]
    ShapeMismatch {
        /// The operation that detected the mismatch.
        op: &'static str,
        /// The shape that was required.
        expected: Shape,
        /// The shape that was supplied.
        got: Shape,
    },
    /// A per-sample vector (times, coefficients, ...) has the wrong length.
    #[error("batch mismatch in {op}: expected {expected} values (one per sample), got {got}")]
    BatchMismatch {
        /// The operation that detected the mismatch.
        op: &'static str,
        /// Number of samples in the batch.
        expected: usize,
        /// Number of values supplied.
        got: usize,
    },
    /// The number of elements does not match a shape.
    #[error("{op}: shape {shape} holds {expected} elements, got {got}")]
    LengthMismatch {
        /// The operation that detected the mismatch.
        op: &'static str,
        /// The shape in question.
        shape: Shape,
        /// Elements the shape holds.
        expected: usize,
        /// Elements supplied.
        got: usize,
    },
    /// A list of sample indices (for gathering or scattering whole samples,
    /// [`Backend::take_samples`](crate::Backend::take_samples) and
    /// [`Backend::put_samples`](crate::Backend::put_samples)) is unusable.
    #[error("invalid sample indices in {op}: {problem}")]
    SampleIndices {
        /// The operation that rejected them.
        op: &'static str,
        /// What is wrong with them.
        problem: IndexProblem,
    },
    /// A shape is unusable (no dimensions, or a zero-sized dimension).
    #[error("invalid shape {shape}: {reason}")]
    InvalidShape {
        /// The shape in question.
        shape: Shape,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A NaN or infinity where finite numbers are required.
    #[error("non-finite value in {what} at flat index {index}: {value}")]
    NonFinite {
        /// What was being checked (an argument name, a tensor's role).
        what: String,
        /// Flat index of the first offending element.
        index: usize,
        /// The offending value.
        value: f64,
    },
    /// A parameter (schedule, distribution, configuration) is invalid.
    #[error("invalid parameter {name} = {value}: {reason}")]
    InvalidParameter {
        /// Parameter name, as in the configuration.
        name: &'static str,
        /// The value given, rendered as text.
        value: String,
        /// Why it is invalid.
        reason: String,
    },
    /// An operation the chosen SDE or backend does not support.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// An error raised by a backend implementation (device lost, out of memory, ...).
    #[error("backend error: {0}")]
    Backend(String),
    /// An error raised inside a score model implemented in another crate.
    #[error("score model error: {0}")]
    Model(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}

/// What is wrong with a list of sample indices ([`Error::SampleIndices`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexProblem {
    /// No indices (a tensor cannot have an empty batch).
    Empty,
    /// An index at or past the batch size.
    OutOfRange {
        /// The offending index.
        index: usize,
        /// The batch size.
        batch: usize,
    },
    /// An index listed twice.
    Duplicate {
        /// The repeated index.
        index: usize,
    },
}

impl std::fmt::Display for IndexProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IndexProblem::Empty => write!(f, "no samples listed"),
            IndexProblem::OutOfRange { index, batch } => {
                write!(f, "index {index} is outside a batch of {batch}")
            }
            IndexProblem::Duplicate { index } => write!(f, "index {index} is listed twice"),
        }
    }
}

/// Result alias used throughout `sde-core`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Returns [`Error::InvalidParameter`] unless `ok` holds.
pub(crate) fn ensure_param(
    ok: bool,
    name: &'static str,
    value: impl std::fmt::Display,
    reason: impl Into<String>,
) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidParameter {
            name,
            value: value.to_string(),
            reason: reason.into(),
        })
    }
}

/// Checks that every value of `values` is finite, naming `what` in the error.
pub fn check_finite(what: &str, values: &[f32]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) => Err(Error::NonFinite {
            what: what.to_string(),
            index,
            value: f64::from(values[index]),
        }),
    }
}
