//! Inpainting (Song et al. 2021, section 5 and appendix I.2) and the
//! conditional predictor–corrector loop shared with colourisation.
//!
//! The paper's method ([`Method::Replacement`]): sample the reverse SDE as
//! usual, and after every predictor and corrector update replace the known
//! pixels (`mask = 1`) by a fresh draw of the forward-perturbed data,
//! `m(t) y + s(t) z`. The unknown pixels then follow the reverse SDE in the
//! presence of known pixels that are perturbed *independently* of them, so
//! the result is only approximately a draw from `p(x_unknown | y)`: the
//! known pixels' noise carries no information about the current unknown
//! ones, and the unknown ones never get time to adapt to a late change.
//!
//! [`Method::Resample`] (RePaint, Lugmayr et al. 2022) repeats each level:
//! after the level's update it diffuses the state back to the level's time
//! with the forward transition kernel and denoises it again, `jumps` times,
//! so the unknown pixels can harmonise with the known ones. On Gaussian data
//! it is measurably closer to the exact conditional (the `cond` tests and
//! BENCHMARKS.md give the numbers); each level costs `jumps` times more.
//!
//! [`Constraint`] is the projection; [`KnownPixels`] implements it in pixel
//! space with backend ops, `crate::colorize` in a decoupled colour space.

use sde_core::sde::linspace;
use sde_core::{Backend, Coef, NoiseRng, ScoreModel, Sde, SdeExt, Shape};
use solvers::{pc_level, PcConfig, SampleOutput, SamplerHooks, StepInfo, Update};

use crate::error::{ensure, Result};

/// How the conditional sampler enforces the known part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// The paper's: replace the known part after every update.
    Replacement,
    /// Replacement plus RePaint resampling: each level (but the last) is run
    /// `jumps` times, diffusing back to the level's time in between.
    Resample {
        /// Passes per level (1 is [`Method::Replacement`]).
        jumps: usize,
    },
}

impl Method {
    /// Passes per level.
    pub fn jumps(self) -> usize {
        match self {
            Method::Replacement => 1,
            Method::Resample { jumps } => jumps,
        }
    }
}

/// What the sampler knows about the sample, as a projection applied after
/// every update.
pub trait Constraint<B: Backend> {
    /// The shape of the samples.
    fn shape(&self) -> &Shape;

    /// Replaces the known part of `update` (state and mean) at times `t` by
    /// the data perturbed to `t` (noise drawn from `rng`).
    fn project<S: Sde + ?Sized>(
        &self,
        b: &B,
        sde: &S,
        update: Update<B::Tensor>,
        t: &[f64],
        rng: &mut NoiseRng,
    ) -> sde_core::Result<Update<B::Tensor>>;
}

/// Known pixels: data `y` where `mask = 1`.
#[derive(Clone, Debug)]
pub struct KnownPixels<B: Backend> {
    data: B::Tensor,
    mask: B::Tensor,
    shape: Shape,
}

impl<B: Backend> KnownPixels<B> {
    /// `data` (the samples' shape; only its known pixels matter) and `mask`
    /// (the same shape, or one sample's shape with batch 1, broadcast over the
    /// batch), every mask value exactly 0 or 1, data finite where known.
    pub fn new(b: &B, data: B::Tensor, mask: B::Tensor) -> Result<Self> {
        let shape = b.shape(&data).clone();
        let ms = b.shape(&mask).clone();
        ensure(
            ms == shape || (ms.batch() == 1 && ms.sample_numel() == shape.sample_numel()),
            "mask",
            || format!("shape {ms} does not fit data of shape {shape}"),
        )?;
        let m = b.to_vec(&mask)?;
        ensure(m.iter().all(|&v| v == 0.0 || v == 1.0), "mask", || {
            "values must be 0 (unknown) or 1 (known)".into()
        })?;
        let y = b.to_vec(&data)?;
        // `m` has one sample (broadcast) or the whole batch: index modulo its length.
        let finite = y
            .iter()
            .enumerate()
            .all(|(i, v)| v.is_finite() || m[i % m.len()] == 0.0);
        ensure(finite, "data", || {
            "non-finite values at known pixels".into()
        })?;
        Ok(KnownPixels { data, mask, shape })
    }

    /// The known data.
    pub fn data(&self) -> &B::Tensor {
        &self.data
    }

    /// The mask (1 = known).
    pub fn mask(&self) -> &B::Tensor {
        &self.mask
    }
}

impl<B: Backend> Constraint<B> for KnownPixels<B> {
    fn shape(&self) -> &Shape {
        &self.shape
    }

    fn project<S: Sde + ?Sized>(
        &self,
        b: &B,
        sde: &S,
        update: Update<B::Tensor>,
        t: &[f64],
        rng: &mut NoiseRng,
    ) -> sde_core::Result<Update<B::Tensor>> {
        let z = b.gaussian(&self.shape, rng.next_key())?;
        let noisy = sde.perturb(b, &self.data, &z, t)?;
        let m: Vec<f32> = t
            .iter()
            .map(|&t| sde.marginal(t).mean_coef as f32)
            .collect();
        let mean = b.scale(&self.data, Coef::PerSample(&m))?;
        Ok(Update {
            x: b.masked_blend(&update.x, &noisy, &self.mask)?,
            x_mean: b.masked_blend(&update.x_mean, &mean, &self.mask)?,
        })
    }
}

/// Diffuses `x` from time `from` forward to the later time `to` with the
/// SDE's exact transition kernel (RePaint's "jump back").
fn diffuse_forward<B: Backend, S: Sde + ?Sized>(
    b: &B,
    sde: &S,
    x: &B::Tensor,
    from: f64,
    to: f64,
    rng: &mut NoiseRng,
) -> Result<B::Tensor> {
    let k = sde.transition(from, to);
    let z = b.gaussian(b.shape(x), rng.next_key())?;
    Ok(b.lincomb(&[
        (Coef::Scalar(k.mean_coef as f32), x),
        (Coef::Scalar(k.std as f32), &z),
    ])?)
}

/// The constraint as sampler hooks: every update is projected, then handed
/// to the caller's hooks.
struct Projected<'a, K: ?Sized, S: ?Sized, H: ?Sized> {
    constraint: &'a K,
    sde: &'a S,
    inner: &'a mut H,
}

impl<B, K, S, H> SamplerHooks<B> for Projected<'_, K, S, H>
where
    B: Backend,
    K: Constraint<B> + ?Sized,
    S: Sde + ?Sized,
    H: SamplerHooks<B> + ?Sized,
{
    fn after_update(
        &mut self,
        b: &B,
        update: Update<B::Tensor>,
        t: &[f64],
        rng: &mut NoiseRng,
    ) -> solvers::Result<Update<B::Tensor>> {
        let u = self.constraint.project(b, self.sde, update, t, rng)?;
        self.inner.after_update(b, u, t, rng)
    }

    fn projects(&self) -> bool {
        true
    }

    fn on_step(&mut self, info: &StepInfo) -> std::ops::ControlFlow<()> {
        self.inner.on_step(info)
    }
}

/// Predictor–corrector sampling under a constraint: starts from the prior
/// projected at `T`, and after every corrector and predictor update projects
/// with `constraint`, then calls `hooks.after_update` (and `hooks.on_step`
/// once per level, which may interrupt). The grid is the SDE's, and each
/// level is [`solvers::pc_level`], as in [`solvers::pc_sample`].
#[allow(clippy::too_many_arguments)]
pub fn sample_constrained<B, S, M, K, H>(
    b: &B,
    sde: &S,
    model: &M,
    constraint: &K,
    cfg: &PcConfig,
    method: Method,
    rng: &mut NoiseRng,
    hooks: &mut H,
) -> Result<SampleOutput<B::Tensor>>
where
    B: Backend,
    S: Sde + ?Sized,
    M: ScoreModel<B> + ?Sized,
    K: Constraint<B> + ?Sized,
    H: SamplerHooks<B> + ?Sized,
{
    cfg.validate(sde)?;
    let jumps = method.jumps();
    ensure((1..=1000).contains(&jumps), "resampling jumps", || {
        format!("{jumps} must lie in 1..=1000")
    })?;
    let eps = solvers::config::resolve_eps(sde, cfg.eps)?;
    let shape = constraint.shape().clone();
    let batch = shape.batch();
    let grid = linspace(sde.t_max(), eps, sde.num_steps());
    let total = grid.len();
    let x = sde.prior_sample(b, &shape, rng.next_key())?;
    let t0 = vec![sde.t_max(); batch];
    let start = Update {
        x_mean: x.clone(),
        x,
    };
    let mut state = constraint.project(b, sde, start, &t0, rng)?;
    let mut hooks = Projected {
        constraint,
        sde,
        inner: hooks,
    };
    let mut nfe = 0;
    for (k, &tk) in grid.iter().enumerate() {
        let t = vec![tk; batch];
        let passes = if k + 1 < total { jumps } else { 1 };
        for pass in 0..passes {
            let (next, cost) = pc_level(b, sde, model, state, &t, cfg, rng, &mut hooks)?;
            state = next;
            nfe += cost;
            if pass + 1 < passes {
                let x = diffuse_forward(b, sde, &state.x, grid[k + 1], tk, rng)?;
                state = Update {
                    x_mean: x.clone(),
                    x,
                };
            }
        }
        let info = StepInfo {
            step: k + 1,
            total: Some(total),
            t: tk,
            nfe,
        };
        solvers::hooks::report_step(&mut hooks, info)?;
    }
    Ok(SampleOutput::finish(b, state, cfg.denoise, eps, nfe)?)
}

/// Inpaints the unknown pixels of `known` with `model` (see the module
/// documentation for the methods).
#[allow(clippy::too_many_arguments)]
pub fn inpaint<B, S, M, H>(
    b: &B,
    sde: &S,
    model: &M,
    known: &KnownPixels<B>,
    cfg: &PcConfig,
    method: Method,
    rng: &mut NoiseRng,
    hooks: &mut H,
) -> Result<SampleOutput<B::Tensor>>
where
    B: Backend,
    S: Sde + ?Sized,
    M: ScoreModel<B> + ?Sized,
    H: SamplerHooks<B> + ?Sized,
{
    sample_constrained(b, sde, model, known, cfg, method, rng, hooks)
}
