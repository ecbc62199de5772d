//! `sde-core`: the mathematics of score-based generative modelling through
//! stochastic differential equations (Song et al., ICLR 2021), with no GPU
//! dependency.
//!
//! - [`sde`]: the forward SDEs (VE, VP, sub-VP) with their perturbation kernels,
//!   discretisations, reverse-time and probability-flow drifts;
//! - [`schedule`]: an SDE from any noise schedule `m(t)`, `s(t)`, with the
//!   cosine and rectified-flow schedules;
//! - [`dsm`]: denoising score-matching targets, weightings and the loss;
//! - [`Backend`]: batched tensors and the elementwise / per-sample ops the
//!   samplers need, with the [`CpuBackend`] implementation;
//! - [`rng`]: the counter-based Philox generator shared by all backends;
//! - [`ScoreModel`]: what a score network (or an exact score) provides;
//! - [`analytic`]: Gaussian and Gaussian-mixture data (diagonal and full
//!   covariance) with exact scores and class posteriors at every `t`;
//! - [`stats`]: sample moments and an energy-distance two-sample test.
//!
//! # Example
//! Perturb a batch with the VP SDE and evaluate the exact score of the perturbed
//! distribution of Gaussian data:
//! ```
//! use sde_core::{analytic::{AnalyticScore, DiagGaussian, GaussianMixture},
//!                Backend, CpuBackend, NoiseRng, ScoreModel, Sde, SdeExt, Shape, VpSde};
//!
//! let sde = VpSde::new(0.1, 20.0, 1000)?;
//! let k = sde.marginal(0.5);
//! assert!((k.mean_coef.powi(2) + k.std.powi(2) - 1.0).abs() < 1e-12);
//!
//! let b = CpuBackend;
//! let mut rng = NoiseRng::new(0);
//! let shape = Shape::new([4, 2])?;
//! let x0 = b.tensor(vec![1.0; 8], &shape)?;
//! let z = b.gaussian(&shape, rng.next_key())?;
//! let t = [0.1, 0.4, 0.7, 1.0];
//! let xt = sde.perturb(&b, &x0, &z, &t)?;
//!
//! let data = GaussianMixture::gaussian(DiagGaussian::isotropic(vec![1.0, -1.0], 0.25)?);
//! let model = AnalyticScore::new(data, sde);
//! let score = model.score(&b, &xt, &t)?;
//! assert_eq!(b.shape(&score), &shape);
//! # Ok::<(), sde_core::Error>(())
//! ```

pub mod analytic;
pub mod backend;
pub mod conformance;
pub mod cpu;
pub mod dsm;
pub mod error;
pub mod model;
pub mod rng;
pub mod schedule;
pub mod sde;
pub mod shape;
pub mod stats;

pub use backend::{Backend, Coef};
pub use cpu::{CpuBackend, CpuTensor};
pub use error::{Error, IndexProblem, Result};
pub use model::{ScoreModel, ScoreVjp};
pub use rng::{NoiseKey, NoiseRng};
pub use schedule::{CosineSde, Kernel, RectifiedFlowSde, Rescheduled, ScheduleSde};
pub use sde::{
    AncestralStep, AnySde, DiscreteSchedule, Discretization, Marginal, Sde, SdeConfig, SdeExt,
    SdeKind, SubVpSde, VeSde, VpSde,
};
pub use shape::Shape;
