//! One entry point for every sampler: [`sample`] draws from the prior and runs
//! the sampler a [`SamplerConfig`] names; [`sample_from`] starts from a given
//! state at `T`. Both take the same [`SamplerHooks`] whatever the sampler.

use sde_core::{Backend, NoiseRng, ScoreModel, Sde, SdeExt, Shape};

use crate::config::SamplerConfig;
use crate::error::Result;
use crate::fixed::FixedStepConfig;
use crate::hooks::{SampleOutput, SamplerHooks};

/// Draws `shape` samples with the sampler `cfg` names: validates `cfg`
/// against `sde`, draws the prior sample from `rng`, then runs the sampler.
///
/// ```
/// use sde_core::analytic::{AnalyticScore, DiagGaussian, GaussianMixture};
/// use sde_core::{CpuBackend, NoiseRng, Shape, VpSde};
/// use solvers::{sample, DpmSolverConfig, SamplerConfig};
///
/// let data = GaussianMixture::gaussian(DiagGaussian::isotropic(vec![1.0, -1.0], 0.1)?);
/// let sde = VpSde::new(0.1, 20.0, 1000)?;
/// let model = AnalyticScore::new(data, sde.clone());
/// let cfg = SamplerConfig::DpmSolver(DpmSolverConfig { steps: 10, ..Default::default() });
/// let out = sample(&CpuBackend, &sde, &model, &Shape::new([8, 2])?, &cfg,
///                  &mut NoiseRng::new(0), &mut ())?;
/// assert_eq!(out.nfe, 10);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn sample<B, S, M, H>(
    b: &B,
    sde: &S,
    model: &M,
    shape: &Shape,
    cfg: &SamplerConfig,
    rng: &mut NoiseRng,
    hooks: &mut H,
) -> Result<SampleOutput<B::Tensor>>
where
    B: Backend,
    S: Sde + ?Sized,
    M: ScoreModel<B> + ?Sized,
    H: SamplerHooks<B> + ?Sized,
{
    cfg.validate(sde)?;
    let x = sde.prior_sample(b, shape, rng.next_key())?;
    sample_from(b, sde, model, x, cfg, rng, hooks)
}

/// Runs the sampler `cfg` names from the state `x` at time `T`.
pub fn sample_from<B, S, M, H>(
    b: &B,
    sde: &S,
    model: &M,
    x: B::Tensor,
    cfg: &SamplerConfig,
    rng: &mut NoiseRng,
    hooks: &mut H,
) -> Result<SampleOutput<B::Tensor>>
where
    B: Backend,
    S: Sde + ?Sized,
    M: ScoreModel<B> + ?Sized,
    H: SamplerHooks<B> + ?Sized,
{
    cfg.validate(sde)?;
    match cfg {
        SamplerConfig::Pc(c) => crate::pc::pc_sample_from(b, sde, model, x, c, rng, hooks),
        SamplerConfig::Ode(c) => {
            crate::ode::ode_sample_from(b, sde, model, x, c, rng, hooks).map(Into::into)
        }
        SamplerConfig::Ddim(c) => c.sample_from(b, sde, model, x, rng, hooks),
        SamplerConfig::DpmSolver(c) => c.sample_from(b, sde, model, x, rng, hooks),
        SamplerConfig::Heun(c) => c.sample_from(b, sde, model, x, rng, hooks),
        SamplerConfig::ReverseSde(c) => c.sample_from(b, sde, model, x, rng, hooks),
    }
}
