//! Typed errors of the samplers, the ODE solver and the likelihood.

/// Errors raised by `solvers`.
#[derive(Debug, thiserror::Error)]
pub enum SolverError {
    /// An error from the SDE maths, a backend or a score model.
    #[error(transparent)]
    Core(#[from] sde_core::Error),
    /// A configuration value is invalid.
    #[error("invalid sampler configuration: {field} = {value}: {reason}")]
    InvalidConfig {
        /// The configuration field.
        field: &'static str,
        /// The value given.
        value: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A predictor or corrector that the chosen SDE does not support.
    #[error("{what} is not defined for the {sde} SDE")]
    Unsupported {
        /// The method.
        what: &'static str,
        /// The SDE family.
        sde: sde_core::SdeKind,
    },
    /// The adaptive solver used up `max_steps` before reaching the end time.
    #[error(
        "ODE step budget exhausted after {steps} steps: reached t = {t_reached} \
         (target {t_end}); raise max_steps or loosen rtol/atol"
    )]
    StepBudgetExhausted {
        /// Steps attempted.
        steps: usize,
        /// The time reached by the least advanced sample.
        t_reached: f64,
        /// The target time.
        t_end: f64,
    },
    /// The adaptive step size fell below `h_min` (the ODE is too stiff or
    /// the score is not smooth at this tolerance).
    #[error("ODE step size {h} fell below h_min = {h_min} at t = {t} (sample {sample})")]
    StepSizeUnderflow {
        /// The step size.
        h: f64,
        /// The configured minimum.
        h_min: f64,
        /// Where it happened.
        t: f64,
        /// Which sample.
        sample: usize,
    },
    /// The drift or the state became NaN or infinite.
    #[error("non-finite values in the {what} at t = {t}")]
    NonFinite {
        /// Which quantity.
        what: &'static str,
        /// Where.
        t: f64,
    },
    /// A progress hook asked the sampler to stop.
    #[error("sampling interrupted by the caller after step {step}{}", total.map(|n| format!(" of {n}")).unwrap_or_default())]
    Interrupted {
        /// The step after which it stopped.
        step: usize,
        /// The total number of steps, where known in advance.
        total: Option<usize>,
    },
}

/// Result alias for `solvers`.
pub type Result<T, E = SolverError> = std::result::Result<T, E>;

/// Returns [`SolverError::InvalidConfig`] unless `ok`.
pub(crate) fn ensure(
    ok: bool,
    field: &'static str,
    value: impl std::fmt::Display,
    reason: impl Into<String>,
) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(SolverError::InvalidConfig {
            field,
            value: value.to_string(),
            reason: reason.into(),
        })
    }
}
