//! Predictor–corrector sampling of the reverse-time SDE (Song et al. 2021,
//! section 4.2 and algorithms 2–5; SPEC.md section 5): the Euler–Maruyama,
//! reverse-diffusion and ancestral predictors, the Langevin and annealed
//! Langevin correctors, and the PC loop over the time grid
//! `linspace(T, eps, N)` (corrector(s) first, then the predictor).
//!
//! Everything is generic over the [`Backend`], the [`Sde`] and the
//! [`ScoreModel`], and works with per-sample times.

use sde_core::backend::coefs_f32;
use sde_core::sde::linspace;
use sde_core::{Backend, Coef, NoiseRng, ScoreModel, Sde, SdeExt, Shape};

use crate::config::{resolve_eps, CorrectorKind, NormMode, PcConfig, PredictorKind};
use crate::error::{Result, SolverError};
use crate::hooks::{report_step, SampleOutput, SamplerHooks, StepInfo, Update};

fn time_vec(t: f64, batch: usize) -> Vec<f64> {
    vec![t; batch]
}

/// One predictor update at times `t` (one score evaluation, none for `None`),
/// with the Euler–Maruyama step `dt = -T/N` of the SDE's own grid.
#[allow(clippy::too_many_arguments)]
pub fn predictor_update<B, S, M>(
    kind: PredictorKind,
    b: &B,
    sde: &S,
    model: &M,
    x: &B::Tensor,
    t: &[f64],
    rng: &mut NoiseRng,
) -> Result<Update<B::Tensor>>
where
    B: Backend,
    S: Sde + ?Sized,
    M: ScoreModel<B> + ?Sized,
{
    let dt = -sde.t_max() / sde.num_steps() as f64;
    predictor_update_dt(kind, b, sde, model, x, t, dt, rng)
}

/// [`predictor_update`] with the Euler–Maruyama time step `dt < 0` given
/// (the discrete predictors ignore it: their step is the SDE's).
#[allow(clippy::too_many_arguments)]
fn predictor_update_dt<B, S, M>(
    kind: PredictorKind,
    b: &B,
    sde: &S,
    model: &M,
    x: &B::Tensor,
    t: &[f64],
    dt: f64,
    rng: &mut NoiseRng,
) -> Result<Update<B::Tensor>>
where
    B: Backend,
    S: Sde + ?Sized,
    M: ScoreModel<B> + ?Sized,
{
    let shape = b.shape(x).clone();
    sde.check_times(t, shape.batch())?;
    if kind == PredictorKind::None {
        return Ok(Update {
            x: x.clone(),
            x_mean: x.clone(),
        });
    }
    let score = model.score(b, x, t)?;
    let (x_mean, noise_std): (B::Tensor, Vec<f64>) = match kind {
        PredictorKind::EulerMaruyama => {
            // x_mean = x + [f - g^2 s] dt (dt < 0); noise g sqrt(-dt).
            let drift = sde.reverse_drift(b, x, t, &score)?;
            let x_mean = b.lincomb(&[(Coef::Scalar(1.0), x), (Coef::Scalar(dt as f32), &drift)])?;
            let g = t.iter().map(|&t| sde.diffusion(t) * (-dt).sqrt()).collect();
            (x_mean, g)
        }
        PredictorKind::ReverseDiffusion => sde.reverse_discrete_step(b, x, t, &score)?,
        PredictorKind::Ancestral => ancestral_mean(b, sde, x, t, &score)?,
        PredictorKind::None => unreachable!("handled above"),
    };
    let z = b.gaussian(&shape, rng.next_key())?;
    let g = coefs_f32(noise_std);
    let x_new = b.lincomb(&[(Coef::Scalar(1.0), &x_mean), (Coef::PerSample(&g), &z)])?;
    Ok(Update { x: x_new, x_mean })
}

/// The ancestral-sampling mean and noise std ([`Sde::ancestral_step`]).
fn ancestral_mean<B: Backend, S: Sde + ?Sized>(
    b: &B,
    sde: &S,
    x: &B::Tensor,
    t: &[f64],
    score: &B::Tensor,
) -> Result<(B::Tensor, Vec<f64>)> {
    let (mut cx, mut cs, mut std) = (Vec::new(), Vec::new(), Vec::new());
    for &tn in t {
        let step = sde.ancestral_step(tn).ok_or(SolverError::Unsupported {
            what: "ancestral sampling",
            sde: sde.kind(),
        })?;
        cx.push(step.x_coef as f32);
        cs.push(step.score_coef as f32);
        std.push(step.noise_std);
    }
    Ok((
        b.lincomb(&[(Coef::PerSample(&cx), x), (Coef::PerSample(&cs), score)])?,
        std,
    ))
}

/// `steps` corrector updates at times `t` (one score evaluation each).
#[allow(clippy::too_many_arguments)]
pub fn corrector_update<B, S, M>(
    kind: CorrectorKind,
    b: &B,
    sde: &S,
    model: &M,
    x: &B::Tensor,
    t: &[f64],
    snr: f64,
    steps: usize,
    norm: NormMode,
    rng: &mut NoiseRng,
) -> Result<Update<B::Tensor>>
where
    B: Backend,
    S: Sde + ?Sized,
    M: ScoreModel<B> + ?Sized,
{
    let shape = b.shape(x).clone();
    sde.check_times(t, shape.batch())?;
    let mut update = Update {
        x: x.clone(),
        x_mean: x.clone(),
    };
    if kind == CorrectorKind::None {
        return Ok(update);
    }
    let alpha: Vec<f64> = t.iter().map(|&t| sde.langevin_alpha(t)).collect();
    for _ in 0..steps {
        let score = model.score(b, &update.x, t)?;
        let z = b.gaussian(&shape, rng.next_key())?;
        let step: Vec<f64> = match kind {
            CorrectorKind::Langevin => {
                let mut gn = b.sample_norm(&score)?;
                let mut zn = b.sample_norm(&z)?;
                if norm == NormMode::BatchMean {
                    let n = gn.len() as f64;
                    let (g, zz) = (gn.iter().sum::<f64>() / n, zn.iter().sum::<f64>() / n);
                    gn.fill(g);
                    zn.fill(zz);
                }
                gn.iter()
                    .zip(&zn)
                    .zip(&alpha)
                    .map(|((g, z), a)| {
                        if *g > 0.0 {
                            2.0 * a * (snr * z / g).powi(2)
                        } else {
                            0.0
                        }
                    })
                    .collect()
            }
            CorrectorKind::AnnealedLangevin => t
                .iter()
                .zip(&alpha)
                .map(|(&t, a)| 2.0 * a * (snr * sde.marginal(t).std).powi(2))
                .collect(),
            CorrectorKind::None => unreachable!("handled above"),
        };
        let e = coefs_f32(step.iter().copied());
        let noise = coefs_f32(step.iter().map(|e| (2.0 * e).sqrt()));
        let x_mean = b.lincomb(&[
            (Coef::Scalar(1.0), &update.x),
            (Coef::PerSample(&e), &score),
        ])?;
        let x_new = b.lincomb(&[(Coef::Scalar(1.0), &x_mean), (Coef::PerSample(&noise), &z)])?;
        update = Update { x: x_new, x_mean };
    }
    Ok(update)
}

/// Score evaluations per time level of a configuration.
pub fn nfe_per_level(cfg: &PcConfig) -> usize {
    let p = usize::from(cfg.predictor != PredictorKind::None);
    let c = if cfg.corrector == CorrectorKind::None {
        0
    } else {
        cfg.corrector_steps
    };
    p + c
}

/// One level of the PC loop at times `t`: the corrector (unless `None`),
/// then the predictor (unless `None`), each followed by
/// `hooks.after_update`. Returns the new state and the score evaluations it
/// cost. [`pc_sample_from`] runs it once per level; loops that revisit levels
/// (RePaint-style resampling in `cond`) call it directly.
#[allow(clippy::too_many_arguments)]
pub fn pc_level<B, S, M, H>(
    b: &B,
    sde: &S,
    model: &M,
    state: Update<B::Tensor>,
    t: &[f64],
    cfg: &PcConfig,
    rng: &mut NoiseRng,
    hooks: &mut H,
) -> Result<(Update<B::Tensor>, usize)>
where
    B: Backend,
    S: Sde + ?Sized,
    M: ScoreModel<B> + ?Sized,
    H: SamplerHooks<B> + ?Sized,
{
    let dt = -sde.t_max() / sde.num_steps() as f64;
    pc_level_dt(b, sde, model, state, t, dt, cfg, rng, hooks)
}

/// [`pc_level`] with the Euler–Maruyama predictor's step `dt < 0` given.
#[allow(clippy::too_many_arguments)]
fn pc_level_dt<B, S, M, H>(
    b: &B,
    sde: &S,
    model: &M,
    state: Update<B::Tensor>,
    t: &[f64],
    dt: f64,
    cfg: &PcConfig,
    rng: &mut NoiseRng,
    hooks: &mut H,
) -> Result<(Update<B::Tensor>, usize)>
where
    B: Backend,
    S: Sde + ?Sized,
    M: ScoreModel<B> + ?Sized,
    H: SamplerHooks<B> + ?Sized,
{
    let mut state = state;
    let mut nfe = 0;
    if cfg.corrector != CorrectorKind::None {
        let u = corrector_update(
            cfg.corrector,
            b,
            sde,
            model,
            &state.x,
            t,
            cfg.snr,
            cfg.corrector_steps,
            cfg.norm,
            rng,
        )?;
        nfe += cfg.corrector_steps;
        state = hooks.after_update(b, u, t, rng)?;
    }
    if cfg.predictor != PredictorKind::None {
        let u = predictor_update_dt(cfg.predictor, b, sde, model, &state.x, t, dt, rng)?;
        nfe += 1;
        state = hooks.after_update(b, u, t, rng)?;
    }
    Ok((state, nfe))
}

/// Predictor–corrector sampling from the prior: draws `shape` samples.
pub fn pc_sample<B, S, M, H>(
    b: &B,
    sde: &S,
    model: &M,
    shape: &Shape,
    cfg: &PcConfig,
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
    pc_sample_from(b, sde, model, x, cfg, rng, hooks)
}

/// Predictor–corrector sampling starting from the state `x` at time `T`.
pub fn pc_sample_from<B, S, M, H>(
    b: &B,
    sde: &S,
    model: &M,
    x: B::Tensor,
    cfg: &PcConfig,
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
    let eps = resolve_eps(sde, cfg.eps)?;
    let batch = b.shape(&x).batch();
    // The levels and each level's Euler–Maruyama step: the SDE's own grid
    // (dt = -T/N, as the reference), or a sampler grid's consecutive points.
    let (grid, steps): (Vec<f64>, Vec<f64>) = match cfg.grid {
        None => {
            let levels = linspace(sde.t_max(), eps, sde.num_steps());
            let dt = -sde.t_max() / sde.num_steps() as f64;
            let steps = vec![dt; levels.len()];
            (levels, steps)
        }
        Some(g) => {
            let times = g.times(sde, cfg.steps.unwrap_or(sde.num_steps()), eps)?;
            let steps = times.windows(2).map(|w| w[1] - w[0]).collect();
            (times[..times.len() - 1].to_vec(), steps)
        }
    };
    let total = grid.len();
    let mut state = Update {
        x_mean: x.clone(),
        x,
    };
    let mut nfe = 0;
    for (k, &tk) in grid.iter().enumerate() {
        let t = time_vec(tk, batch);
        let (next, cost) = pc_level_dt(b, sde, model, state, &t, steps[k], cfg, rng, hooks)?;
        state = next;
        nfe += cost;
        let info = StepInfo {
            step: k + 1,
            total: Some(total),
            t: tk,
            nfe,
        };
        report_step(hooks, info)?;
    }
    SampleOutput::finish(b, state, cfg.denoise, eps, nfe)
}
