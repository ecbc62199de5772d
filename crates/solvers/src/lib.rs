//! `solvers`: sampling and likelihood for score-based generative models
//! (Song et al., ICLR 2021), generic over [`sde_core::Backend`] and
//! [`sde_core::ScoreModel`], so the same code runs with an analytic score on the
//! CPU and with the UNet on a GPU.
//!
//! - [`pc`](mod@pc): the Euler–Maruyama, reverse-diffusion and ancestral predictors,
//!   the Langevin and annealed Langevin correctors, and PC sampling;
//! - [`ode`](mod@ode): an adaptive Dormand–Prince RK4(5) solver with per-sample step
//!   control, the probability-flow ODE sampler, encoding and decoding;
//! - [`likelihood`](mod@likelihood): exact log-likelihoods and bits/dim through the
//!   instantaneous change of variables, with Hutchinson or exact divergence;
//! - [`interp`](mod@interp): spherical interpolation of latents;
//! - [`config`](mod@config): serde configurations with the reference defaults.
//!
//! # Example
//! Sample a 2-D Gaussian mixture with the exact score and the PC sampler:
//! ```
//! use sde_core::analytic::{AnalyticScore, DiagGaussian, GaussianMixture};
//! use sde_core::{NoiseRng, Shape, VpSde, CpuBackend};
//! use solvers::{pc_sample, PcConfig};
//!
//! let data = GaussianMixture::new(
//!     vec![0.5, 0.5],
//!     vec![DiagGaussian::isotropic(vec![-1.0, 0.0], 0.05)?,
//!          DiagGaussian::isotropic(vec![1.0, 0.0], 0.05)?],
//! )?;
//! let sde = VpSde::new(0.1, 20.0, 200)?;
//! let model = AnalyticScore::new(data, sde.clone());
//! let out = pc_sample(&CpuBackend, &sde, &model, &Shape::new([16, 2])?,
//!                     &PcConfig::default(), &mut NoiseRng::new(0), &mut ())?;
//! assert_eq!(out.nfe, 400); // 200 levels x (1 predictor + 1 corrector)
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod config;
pub mod error;
pub mod interp;
pub mod likelihood;
pub mod ode;
pub mod pc;

pub use config::{
    CorrectorKind, NormMode, OdeConfig, PcConfig, PredictorKind, SamplerConfig, StepControl,
    StepScope,
};
pub use error::{Result, SolverError};
pub use likelihood::{
    likelihood, DataScale, Divergence, LikelihoodConfig, LikelihoodOutput, Probe,
};
pub use ode::{decode, encode, integrate, ode_sample, OdeOutput, OdeRhs, OdeSolution};
pub use pc::{
    pc_level, pc_sample, pc_sample_from, Progress, SampleOutput, SamplerHooks, StepInfo, Update,
};
