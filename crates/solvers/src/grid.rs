//! Time grids of the fixed-step samplers: `n` steps from `T` down to `eps`,
//! placed uniformly in `t`, uniformly in the log signal-to-noise ratio
//! `lambda(t) = ln(m(t) / s(t))` (DPM-Solver's choice; Lu et al. 2022), or by
//! EDM's rule `sigma_i = (sigma_max^(1/rho) + i/n (sigma_min^(1/rho) -
//! sigma_max^(1/rho)))^rho` in the noise-to-signal ratio `sigma = s / m`
//! (Karras et al. 2022, eq. 5, rho = 7). The grid belongs to the sampler, not
//! to the SDE: any SDE can be sampled on any grid with any number of steps.
//!
//! Grids in `sigma` or `lambda` are mapped back to times by bisection on the
//! SDE's own (monotone) `s(t) / m(t)`, so they work for every schedule.

use std::fmt;
use std::str::FromStr;

pub use sde_core::schedule::noise_to_signal;
use sde_core::schedule::time_for_noise_to_signal as time_for_sigma;
use sde_core::sde::{linspace, MAX_STEPS};
use sde_core::Sde;
use serde::{Deserialize, Serialize};

use crate::error::{ensure, Result, SolverError};

/// Where the steps of a fixed-step sampler go. Written (in TOML, on the
/// command line) as `uniform`, `log-snr`, `edm` (rho = 7) or `edm:<rho>`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum TimeGrid {
    /// Uniform in `t`.
    #[default]
    Uniform,
    /// Uniform in `lambda = ln(m / s)` (half the log-SNR).
    LogSnr,
    /// EDM's polynomial spacing in `sigma = s / m` with exponent `rho`
    /// (larger `rho` puts more steps at low noise).
    Edm {
        /// The exponent (EDM: 7).
        rho: f64,
    },
}

impl fmt::Display for TimeGrid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimeGrid::Uniform => f.write_str("uniform"),
            TimeGrid::LogSnr => f.write_str("log-snr"),
            TimeGrid::Edm { rho } if *rho == 7.0 => f.write_str("edm"),
            TimeGrid::Edm { rho } => write!(f, "edm:{rho}"),
        }
    }
}

impl FromStr for TimeGrid {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("unknown time grid {s:?}: expected uniform, log-snr, edm or edm:<rho>");
        match s {
            "uniform" => Ok(TimeGrid::Uniform),
            "log-snr" => Ok(TimeGrid::LogSnr),
            "edm" => Ok(TimeGrid::Edm { rho: 7.0 }),
            _ => {
                let rho: f64 = s
                    .strip_prefix("edm:")
                    .ok_or_else(bad)?
                    .parse()
                    .map_err(|_| bad())?;
                if rho.is_finite() && rho > 0.0 {
                    Ok(TimeGrid::Edm { rho })
                } else {
                    Err(format!("edm grid: rho = {rho} must be finite and > 0"))
                }
            }
        }
    }
}

impl TryFrom<String> for TimeGrid {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<TimeGrid> for String {
    fn from(g: TimeGrid) -> String {
        g.to_string()
    }
}

impl TimeGrid {
    /// The `n + 1` times `T = t_0 > t_1 > ... > t_n = eps` of `n` steps.
    pub fn times<S: Sde + ?Sized>(&self, sde: &S, n: usize, eps: f64) -> Result<Vec<f64>> {
        ensure(n >= 1, "steps", n, "a sampler needs at least one step")?;
        ensure(
            n <= MAX_STEPS,
            "steps",
            n,
            format!("at most {MAX_STEPS} steps"),
        )?;
        let t_max = sde.t_max();
        ensure(
            eps.is_finite() && eps > 0.0 && eps < t_max,
            "eps",
            eps,
            format!("must lie in (0, T = {t_max})"),
        )?;
        let sigma_lo = noise_to_signal(sde, eps);
        let sigma_hi = noise_to_signal(sde, t_max);
        let monotone = sigma_lo.is_finite() && sigma_hi.is_finite() && sigma_lo < sigma_hi;
        let sigmas: Vec<f64> = match *self {
            TimeGrid::Uniform => return Ok(linspace(t_max, eps, n + 1)),
            _ if !monotone => {
                return Err(SolverError::InvalidConfig {
                    field: "grid",
                    value: self.to_string(),
                    reason: format!(
                        "needs s(t)/m(t) finite and increasing, got {sigma_lo} at eps and \
                         {sigma_hi} at T"
                    ),
                })
            }
            TimeGrid::LogSnr => linspace(-sigma_hi.ln(), -sigma_lo.ln(), n + 1)
                .into_iter()
                .map(|l| (-l).exp())
                .collect(),
            TimeGrid::Edm { rho } => {
                ensure(
                    rho.is_finite() && rho > 0.0,
                    "rho",
                    rho,
                    "must be finite and > 0",
                )?;
                let (a, b) = (sigma_hi.powf(1.0 / rho), sigma_lo.powf(1.0 / rho));
                (0..=n)
                    .map(|i| (a + i as f64 / n as f64 * (b - a)).powf(rho))
                    .collect()
            }
        };
        let mut times: Vec<f64> = sigmas
            .iter()
            .map(|&s| time_for_sigma(sde, s, eps, t_max))
            .collect();
        times[0] = t_max;
        times[n] = eps;
        Ok(times)
    }
}
