//! Adaptive Dormand–Prince RK4(5) integration of batched ODEs (the method of
//! scipy's `RK45`, which the reference code uses), written over any
//! [`Backend`], and the probability-flow ODE built on it (Song et al. 2021,
//! eq. 13; SPEC.md sections 5 and 7): sampling, encoding data to latents and
//! decoding latents back.
//!
//! The state is a batch tensor plus, optionally, a few host-side scalars per
//! sample (the likelihood integrates `delta log p` alongside `x`). With
//! [`StepScope::PerSample`] every sample has its own time, step size and
//! error estimate, and a sample that finishes leaves the batch: the stages
//! and error norms of later steps are computed on the samples still running
//! only (gathered with [`Backend::take_samples`]; finished samples wait aside
//! and are put back with [`Backend::put_samples`]), so the evaluations a
//! sample saves by finishing early are saved work, not only a smaller
//! [`OdeSolution::nfe_per_sample`]. Every sample's arithmetic is the same as
//! in a full batch (and as when it is solved alone), so results are
//! bit-identical; hooks still see the whole batch. This needs the
//! right-hand side's consent ([`OdeRhs::restrict`]; the probability flow and
//! the likelihood give it when the score model evaluates samples
//! independently, [`ScoreModel::independent_samples`]); without it the whole
//! batch is evaluated, finished samples frozen (step zero) but evaluated. With [`StepScope::Batch`]
//! the solver is scipy's `RK45` on the flattened state: one RMS error norm
//! over all samples' elements and auxiliary scalars, one step size.

use sde_core::backend::coefs_f32;
use sde_core::{Backend, Coef, NoiseRng, ScoreModel, Sde, SdeExt, Shape};

use crate::config::{resolve_eps, OdeConfig, StepControl, StepScope};
use crate::error::{Result, SolverError};
use crate::hooks::{report_step, SampleOutput, SamplerHooks, StepInfo, Update};

/// Nodes `c_i` of the Dormand–Prince tableau.
const C: [f64; 7] = [0.0, 1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0, 1.0];
/// Rows `a_ij` (stage i uses `k_0..k_{i-1}`).
const A: [&[f64]; 6] = [
    &[1.0 / 5.0],
    &[3.0 / 40.0, 9.0 / 40.0],
    &[44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0],
    &[
        19372.0 / 6561.0,
        -25360.0 / 2187.0,
        64448.0 / 6561.0,
        -212.0 / 729.0,
    ],
    &[
        9017.0 / 3168.0,
        -355.0 / 33.0,
        46732.0 / 5247.0,
        49.0 / 176.0,
        -5103.0 / 18656.0,
    ],
    &[
        35.0 / 384.0,
        0.0,
        500.0 / 1113.0,
        125.0 / 192.0,
        -2187.0 / 6784.0,
        11.0 / 84.0,
    ],
];
/// Error weights `b_i - b*_i` (5th minus embedded 4th order), as scipy's `E`.
const E: [f64; 7] = [
    -71.0 / 57600.0,
    0.0,
    71.0 / 16695.0,
    -71.0 / 1920.0,
    17253.0 / 339200.0,
    -22.0 / 525.0,
    1.0 / 40.0,
];
const SAFETY: f64 = 0.9;
const MIN_FACTOR: f64 = 0.2;
const MAX_FACTOR: f64 = 10.0;
/// Error exponent `1 / (q + 1)` with `q = 4`, the embedded order.
const EXPONENT: f64 = 1.0 / 5.0;

/// The right-hand side of a batched ODE `dx/dt = F(x, t)`, `da/dt = G(x, t)`,
/// where `a` holds `aux_dim` host-side scalars per sample.
pub trait OdeRhs<B: Backend> {
    /// Evaluates the derivatives at per-sample times `t`. Returns `dx/dt` and
    /// `da/dt` (length `batch * aux_dim`). The batch is the one the solve
    /// started with, or after [`OdeRhs::restrict`] accepted a subset, that
    /// subset.
    fn eval(&mut self, b: &B, x: &B::Tensor, t: &[f64]) -> Result<(B::Tensor, Vec<f64>)>;

    /// Asks to evaluate only the samples `active` from now on: indices into
    /// the batch the solve started with, increasing, at least one. Returns
    /// whether the right-hand side agrees; then every later
    /// [`OdeRhs::eval`] gets those samples only, in that order (until the
    /// next call), and must return their derivatives. A right-hand side with
    /// per-sample state of its own (probe vectors, per-sample parameters)
    /// selects it here; a stateless one just returns `true`. The default,
    /// `false`, keeps the batch as it is (the solve's, or the last subset
    /// accepted), with finished samples frozen in it but evaluated.
    ///
    /// The per-sample adaptive solver ([`StepScope::PerSample`]) calls it
    /// whenever samples finish while others go on, so that finished samples
    /// cost no more evaluations.
    fn restrict(&mut self, _b: &B, _active: &[usize]) -> Result<bool> {
        Ok(false)
    }
}

/// The solution at the end time with solver statistics.
#[derive(Clone, Debug)]
pub struct OdeSolution<T> {
    /// The state at the end time.
    pub x: T,
    /// The auxiliary scalars at the end time (`batch * aux_dim`).
    pub aux: Vec<f64>,
    /// Batched right-hand-side evaluations (model calls).
    pub nfe: usize,
    /// Evaluations during which each sample was still moving.
    pub nfe_per_sample: Vec<usize>,
    /// Samples evaluated, summed over the right-hand-side calls (the batch
    /// size of each call): the work done. When finished samples leave the
    /// batch (see [`OdeRhs::restrict`]) it equals the sum of
    /// [`OdeSolution::nfe_per_sample`]; otherwise `nfe` times the batch.
    pub sample_evals: usize,
    /// Accepted steps per sample.
    pub accepted: Vec<usize>,
    /// Rejected steps per sample.
    pub rejected: Vec<usize>,
}

/// The whole batch: `full` (holding the samples that left the working batch)
/// with the working batch `x`, whose sample `i` is sample `idx[i]`, written
/// in; `x` itself while no sample has left (`full` is `None`).
fn merged<B: Backend>(
    b: &B,
    full: &Option<B::Tensor>,
    idx: &[usize],
    x: &B::Tensor,
) -> Result<B::Tensor> {
    Ok(match full {
        None => x.clone(),
        Some(f) if idx.is_empty() => f.clone(),
        Some(f) => b.put_samples(f, idx, x)?,
    })
}

/// The `m` scalars per sample of the samples at `positions` of `a`.
fn gather_aux(a: &[f64], positions: &[usize], m: usize) -> Vec<f64> {
    positions
        .iter()
        .flat_map(|&i| a[i * m..(i + 1) * m].iter().copied())
        .collect()
}

/// Writes the `m` scalars per sample of the working batch `a` (sample `i`
/// is sample `idx[i]` of the whole batch) into `full`.
fn scatter_aux(full: &mut [f64], idx: &[usize], a: &[f64], m: usize) {
    for (i, &n) in idx.iter().enumerate() {
        full[n * m..(n + 1) * m].copy_from_slice(&a[i * m..(i + 1) * m]);
    }
}

/// RMS of `(err_x, err_a)` scaled elementwise by `atol + rtol max(|y0|, |y1|)`:
/// per sample, over its `d` tensor elements and `m` auxiliary scalars, or with
/// [`StepScope::Batch`] over the whole flattened state (all samples' elements
/// and scalars together, as scipy's norm of the flat state), repeated for
/// every sample.
#[allow(clippy::too_many_arguments)]
fn error_norms<B: Backend>(
    b: &B,
    cfg: &OdeConfig,
    err: &B::Tensor,
    y0: &B::Tensor,
    y1: &B::Tensor,
    err_a: &[f64],
    a0: &[f64],
    a1: &[f64],
    m: usize,
) -> Result<Vec<f64>> {
    let d = b.shape(err).sample_numel() as f64;
    let rms = b.sample_scaled_rms(err, y0, y1, cfg.atol, cfg.rtol)?;
    // Per-sample sums of squares over the sample's `d + m` entries.
    let sums: Vec<f64> = rms
        .into_iter()
        .enumerate()
        .map(|(n, r)| {
            let mut sum = r * r * d;
            for j in n * m..(n + 1) * m {
                let scale = cfg.atol + cfg.rtol * a0[j].abs().max(a1[j].abs());
                sum += (err_a[j] / scale).powi(2);
            }
            sum
        })
        .collect();
    let per_sample = d + m as f64;
    Ok(match cfg.scope {
        StepScope::PerSample => sums.iter().map(|s| (s / per_sample).sqrt()).collect(),
        StepScope::Batch => {
            let whole = (sums.iter().sum::<f64>() / (per_sample * sums.len() as f64)).sqrt();
            vec![whole; sums.len()]
        }
    })
}

/// Integrates `rhs` from `t0` to `t1` (either direction) starting at `(x0, aux0)`.
pub fn integrate<B, R>(
    b: &B,
    rhs: &mut R,
    x0: B::Tensor,
    aux0: Vec<f64>,
    t0: f64,
    t1: f64,
    cfg: &OdeConfig,
) -> Result<OdeSolution<B::Tensor>>
where
    B: Backend,
    R: OdeRhs<B> + ?Sized,
{
    let mut rng = NoiseRng::new(0);
    integrate_with_hooks(b, rhs, x0, aux0, t0, t1, cfg, &mut (), &mut rng)
}

/// [`integrate`] with [`SamplerHooks`]: `on_step` after every step (accepted
/// or not for some samples; its `t` is the least advanced sample's time) can
/// stop the solver, and a hook that [`projects`](SamplerHooks::projects) gets
/// the state after every step (with per-sample times) and may replace it;
/// the solver then re-evaluates its first stage (one more `rhs` call per
/// step, none after the last sample has finished when finished samples
/// leave the batch). Hooks always get the whole batch, finished samples
/// included. `rng` is passed to the hooks only; the solver draws no noise.
///
/// With `t0 == t1` there is nothing to integrate: `x0` and `aux0` come back
/// without any evaluation.
#[allow(clippy::too_many_arguments)]
pub fn integrate_with_hooks<B, R, H>(
    b: &B,
    rhs: &mut R,
    x0: B::Tensor,
    aux0: Vec<f64>,
    t0: f64,
    t1: f64,
    cfg: &OdeConfig,
    hooks: &mut H,
    rng: &mut NoiseRng,
) -> Result<OdeSolution<B::Tensor>>
where
    B: Backend,
    R: OdeRhs<B> + ?Sized,
    H: SamplerHooks<B> + ?Sized,
{
    cfg.validate()?;
    let batch = b.shape(&x0).batch();
    if aux0.len() % batch != 0 {
        return Err(SolverError::InvalidConfig {
            field: "aux0",
            value: format!("{} values", aux0.len()),
            reason: format!("must hold the same number of scalars for each of {batch} samples"),
        });
    }
    let m = aux0.len() / batch;
    let dir = if t1 >= t0 { 1.0 } else { -1.0 };
    let span = (t1 - t0).abs();
    let mut nfe = 0;
    let mut sample_evals = 0;
    let mut nfe_per_sample = vec![0usize; batch];
    let mut accepted = vec![0usize; batch];
    let mut rejected = vec![0usize; batch];
    if span == 0.0 {
        b.check_finite(&x0, "ODE solution")
            .map_err(|_| SolverError::NonFinite {
                what: "ODE solution",
                t: t1,
            })?;
        return Ok(OdeSolution {
            x: x0,
            aux: aux0,
            nfe,
            nfe_per_sample,
            sample_evals,
            accepted,
            rejected,
        });
    }
    // The working batch, what `rhs` evaluates: sample `i` of `x` (and of
    // `k1`; scalars `i * m..(i + 1) * m` of `aux` and `k1a`) is sample
    // `idx[i]` of the whole batch. The per-sample bookkeeping (`t`, `h`,
    // `done`, ...) is indexed by the whole batch. With StepScope::PerSample,
    // samples that finish leave the working batch once `rhs` agrees
    // (`compact`), and their final states wait in `x_full` and `aux_full`.
    // (With StepScope::Batch all samples finish together, and the
    // whole-state norm needs them all until then.)
    let mut idx: Vec<usize> = (0..batch).collect();
    let mut compact = cfg.scope == StepScope::PerSample;
    let mut x = x0;
    let mut aux = aux0;
    let mut x_full: Option<B::Tensor> = None;
    let mut aux_full = vec![0.0; batch * m];
    let mut t = vec![t0; batch];
    let mut done = vec![false; batch];
    // One `rhs` call on the working batch.
    let count =
        |idx: &[usize], done: &[bool], nfe: &mut usize, evals: &mut usize, per: &mut [usize]| {
            *nfe += 1;
            *evals += idx.len();
            for &n in idx {
                per[n] += usize::from(!done[n]);
            }
        };

    let (mut k1, mut k1a) = rhs.eval(b, &x, &t)?;
    count(
        &idx,
        &done,
        &mut nfe,
        &mut sample_evals,
        &mut nfe_per_sample,
    );

    // Initial step magnitudes (per sample).
    let mut h: Vec<f64> = match cfg.h_init {
        Some(h) => vec![h; batch],
        None => {
            let h = initial_step(b, rhs, cfg, &x, &aux, &k1, &k1a, &t, dir, span, m)?;
            count(
                &idx,
                &done,
                &mut nfe,
                &mut sample_evals,
                &mut nfe_per_sample,
            );
            h
        }
    };
    for h in h.iter_mut() {
        *h = h.clamp(cfg.h_min, cfg.h_max).min(span.max(cfg.h_min));
    }
    let mut last_rejected = vec![false; batch];
    let mut err_prev = vec![1.0f64; batch];

    let mut steps = 0;
    while done.iter().any(|d| !d) {
        if steps >= cfg.max_steps {
            return Err(SolverError::StepBudgetExhausted {
                steps,
                t_reached: least_advanced(&t, &done, t1, dir),
                t_end: t1,
            });
        }
        steps += 1;
        // Signed step per working sample, clipped to land exactly on t1; 0
        // when done (a finished sample still in the working batch is frozen).
        let hs: Vec<f64> = idx
            .iter()
            .map(|&n| {
                if done[n] {
                    0.0
                } else {
                    dir * h[n].min((t1 - t[n]).abs())
                }
            })
            .collect();
        let mut ks: Vec<B::Tensor> = vec![k1.clone()];
        let mut kas: Vec<Vec<f64>> = vec![k1a.clone()];
        let mut y_stage = x.clone();
        let mut a_stage = aux.clone();
        for (i, row) in A.iter().enumerate() {
            let coefs: Vec<Vec<f32>> = row
                .iter()
                .map(|a| coefs_f32(hs.iter().map(|h| h * a)))
                .collect();
            let mut terms: Vec<(Coef<'_>, &B::Tensor)> = vec![(Coef::Scalar(1.0), &x)];
            for (c, k) in coefs.iter().zip(&ks) {
                terms.push((Coef::PerSample(c), k));
            }
            y_stage = b.lincomb(&terms)?;
            a_stage = aux.clone();
            for (a, ka) in row.iter().zip(&kas) {
                for (j, v) in a_stage.iter_mut().enumerate() {
                    *v += hs[j / m.max(1)] * a * ka[j];
                }
            }
            let ts: Vec<f64> = idx
                .iter()
                .zip(&hs)
                .map(|(&n, h)| t[n] + C[i + 1] * h)
                .collect();
            let (k, ka) = rhs.eval(b, &y_stage, &ts)?;
            count(
                &idx,
                &done,
                &mut nfe,
                &mut sample_evals,
                &mut nfe_per_sample,
            );
            ks.push(k);
            kas.push(ka);
        }
        // y_stage is the 5th-order solution (row 6 = b); ks[6] = F at it (FSAL).
        let ecoefs: Vec<Vec<f32>> = E
            .iter()
            .map(|e| coefs_f32(hs.iter().map(|h| h * e)))
            .collect();
        let terms: Vec<(Coef<'_>, &B::Tensor)> = ecoefs
            .iter()
            .zip(&ks)
            .map(|(c, k)| (Coef::PerSample(c), k))
            .collect();
        let err = b.lincomb(&terms)?;
        let mut err_a = vec![0.0; aux.len()];
        for (e, ka) in E.iter().zip(&kas) {
            for (j, v) in err_a.iter_mut().enumerate() {
                *v += hs[j / m.max(1)] * e * ka[j];
            }
        }
        // With StepScope::Batch every sample gets the whole-state norm, so all
        // share one time, step size and accept/reject decision.
        let en = error_norms(b, cfg, &err, &x, &y_stage, &err_a, &aux, &a_stage, m)?;
        // Accept / reject per sample and pick the next step size.
        let mut acc = vec![false; idx.len()];
        for (i, &n) in idx.iter().enumerate() {
            if done[n] {
                continue;
            }
            let e = en[i];
            if e <= 1.0 {
                acc[i] = true;
                accepted[n] += 1;
                let reached = (t1 - t[n]).abs() <= hs[i].abs();
                t[n] = if reached { t1 } else { t[n] + hs[i] };
                done[n] = reached;
                let mut factor = if e == 0.0 {
                    MAX_FACTOR
                } else {
                    match cfg.control {
                        StepControl::Standard => SAFETY * e.powf(-EXPONENT),
                        StepControl::Pi => {
                            SAFETY * e.powf(-0.7 * EXPONENT) * err_prev[n].powf(0.4 * EXPONENT)
                        }
                    }
                    .clamp(MIN_FACTOR, MAX_FACTOR)
                };
                if last_rejected[n] {
                    factor = factor.min(1.0);
                }
                err_prev[n] = e.max(1e-4);
                h[n] = (hs[i].abs() * factor).min(cfg.h_max);
                last_rejected[n] = false;
            } else {
                rejected[n] += 1;
                let factor = if e.is_finite() {
                    (SAFETY * e.powf(-EXPONENT)).max(MIN_FACTOR)
                } else {
                    MIN_FACTOR
                };
                h[n] = hs[i].abs() * factor;
                last_rejected[n] = true;
                if h[n] < cfg.h_min {
                    return Err(SolverError::StepSizeUnderflow {
                        h: h[n],
                        h_min: cfg.h_min,
                        t: t[n],
                        sample: n,
                    });
                }
            }
        }
        let k7 = ks.pop().ok_or(SolverError::NonFinite {
            what: "stages",
            t: t0,
        })?;
        let k7a = kas.pop().unwrap_or_default();
        // `select`, not a 0/1 combination: a rejected trial step may be inf/NaN.
        x = b.select(&acc, &y_stage, &x)?;
        k1 = b.select(&acc, &k7, &k1)?;
        for j in 0..aux.len() {
            if acc[j / m.max(1)] {
                aux[j] = a_stage[j];
                k1a[j] = k7a[j];
            }
        }
        // Finished samples leave the working batch (once `rhs` agrees).
        if compact && idx.iter().any(|&n| done[n]) {
            let keep: Vec<usize> = (0..idx.len()).filter(|&i| !done[idx[i]]).collect();
            let kept: Vec<usize> = keep.iter().map(|&i| idx[i]).collect();
            if kept.is_empty() || rhs.restrict(b, &kept)? {
                x_full = Some(merged(b, &x_full, &idx, &x)?);
                scatter_aux(&mut aux_full, &idx, &aux, m);
                if !kept.is_empty() {
                    x = b.take_samples(&x, &keep)?;
                    k1 = b.take_samples(&k1, &keep)?;
                    aux = gather_aux(&aux, &keep, m);
                    k1a = gather_aux(&k1a, &keep, m);
                }
                idx = kept;
            } else {
                compact = false;
            }
        }
        if hooks.projects() && acc.iter().any(|a| *a) {
            // The hook sees, and may change, the whole batch.
            let full = merged(b, &x_full, &idx, &x)?;
            let full = hooks.after_update(b, Update::exact(full), &t, rng)?.x;
            if x_full.is_some() {
                if !idx.is_empty() {
                    x = b.take_samples(&full, &idx)?;
                }
                x_full = Some(full);
            } else {
                x = full;
            }
            if !idx.is_empty() {
                let tw: Vec<f64> = idx.iter().map(|&n| t[n]).collect();
                (k1, k1a) = rhs.eval(b, &x, &tw)?;
                count(
                    &idx,
                    &done,
                    &mut nfe,
                    &mut sample_evals,
                    &mut nfe_per_sample,
                );
            }
        }
        let info = StepInfo {
            step: steps,
            total: None,
            t: least_advanced(&t, &done, t1, dir),
            nfe,
        };
        report_step(hooks, info)?;
    }
    let x = merged(b, &x_full, &idx, &x)?;
    scatter_aux(&mut aux_full, &idx, &aux, m);
    b.check_finite(&x, "ODE solution")
        .map_err(|_| SolverError::NonFinite {
            what: "ODE solution",
            t: t1,
        })?;
    Ok(OdeSolution {
        x,
        aux: aux_full,
        nfe,
        nfe_per_sample,
        sample_evals,
        accepted,
        rejected,
    })
}

/// The time of the unfinished sample furthest from `t1` (`t1` when all are done).
fn least_advanced(t: &[f64], done: &[bool], t1: f64, dir: f64) -> f64 {
    t.iter()
        .zip(done)
        .filter(|(_, d)| !**d)
        .map(|(t, _)| *t)
        .fold(t1, |acc, t| if dir > 0.0 { acc.min(t) } else { acc.max(t) })
}

/// Hairer's initial step size (as scipy's `select_initial_step`), per sample,
/// or from whole-state norms `d0, d1, d2` with [`StepScope::Batch`] (the
/// norms come from [`error_norms`]).
#[allow(clippy::too_many_arguments)]
fn initial_step<B, R>(
    b: &B,
    rhs: &mut R,
    cfg: &OdeConfig,
    x: &B::Tensor,
    aux: &[f64],
    f0: &B::Tensor,
    f0a: &[f64],
    t: &[f64],
    dir: f64,
    span: f64,
    m: usize,
) -> Result<Vec<f64>>
where
    B: Backend,
    R: OdeRhs<B> + ?Sized,
{
    let d0 = error_norms(b, cfg, x, x, x, aux, aux, aux, m)?;
    let d1 = error_norms(b, cfg, f0, x, x, f0a, aux, aux, m)?;
    let h0: Vec<f64> = d0
        .iter()
        .zip(&d1)
        .map(|(&d0, &d1)| {
            if d0 < 1e-5 || d1 < 1e-5 {
                1e-6
            } else {
                0.01 * d0 / d1
            }
        })
        .map(|h| h.min(span))
        .collect();
    let c = coefs_f32(h0.iter().map(|h| dir * h));
    let x1 = b.lincomb(&[(Coef::Scalar(1.0), x), (Coef::PerSample(&c), f0)])?;
    let t1: Vec<f64> = t.iter().zip(&h0).map(|(t, h)| t + dir * h).collect();
    let (f1, f1a) = rhs.eval(b, &x1, &t1)?;
    let df = b.sub(&f1, f0)?;
    let dfa: Vec<f64> = f1a.iter().zip(f0a).map(|(a, b)| a - b).collect();
    let d2 = error_norms(b, cfg, &df, x, x, &dfa, aux, aux, m)?;
    Ok((0..h0.len())
        .map(|n| {
            let d2 = d2[n] / h0[n];
            let h1 = if d1[n] <= 1e-15 && d2 <= 1e-15 {
                (h0[n] * 1e-3).max(1e-6)
            } else {
                (0.01 / d1[n].max(d2)).powf(EXPONENT)
            };
            (100.0 * h0[n]).min(h1).min(span)
        })
        .collect())
}

/// The probability-flow ODE `dx/dt = f(x,t) - g(t)^2 s(x,t) / 2` as an [`OdeRhs`].
pub struct FlowRhs<'a, S: ?Sized, M: ?Sized> {
    /// The SDE.
    pub sde: &'a S,
    /// The score model.
    pub model: &'a M,
}

impl<B, S, M> OdeRhs<B> for FlowRhs<'_, S, M>
where
    B: Backend,
    S: Sde + ?Sized,
    M: ScoreModel<B> + ?Sized,
{
    fn eval(&mut self, b: &B, x: &B::Tensor, t: &[f64]) -> Result<(B::Tensor, Vec<f64>)> {
        let score = self.model.score(b, x, t)?;
        Ok((
            self.sde.probability_flow_drift(b, x, t, &score)?,
            Vec::new(),
        ))
    }

    /// Stateless itself: any selection of samples can be evaluated on its
    /// own when the model's can ([`ScoreModel::independent_samples`]).
    fn restrict(&mut self, _b: &B, _active: &[usize]) -> Result<bool> {
        Ok(self.model.independent_samples())
    }
}

/// Samples, latents or reconstructions from the probability-flow ODE.
#[derive(Clone, Debug)]
pub struct OdeOutput<T> {
    /// The result.
    pub x: T,
    /// Batched score evaluations.
    pub nfe: usize,
    /// Score evaluations during which each sample was still moving.
    pub nfe_per_sample: Vec<usize>,
    /// Samples the score model evaluated, summed over its calls (the sum of
    /// `nfe_per_sample`: finished samples leave the batch).
    pub sample_evals: usize,
    /// Accepted steps per sample.
    pub accepted: Vec<usize>,
    /// Rejected steps per sample.
    pub rejected: Vec<usize>,
}

impl<T> OdeOutput<T> {
    fn from_solution(s: OdeSolution<T>) -> Self {
        OdeOutput {
            x: s.x,
            nfe: s.nfe,
            nfe_per_sample: s.nfe_per_sample,
            sample_evals: s.sample_evals,
            accepted: s.accepted,
            rejected: s.rejected,
        }
    }
}

/// Draws `shape` samples by integrating the probability-flow ODE from a prior
/// sample at `T` down to `eps` (with `hooks`: progress, interruption, and a
/// per-step projection).
pub fn ode_sample<B, S, M, H>(
    b: &B,
    sde: &S,
    model: &M,
    shape: &Shape,
    cfg: &OdeConfig,
    rng: &mut NoiseRng,
    hooks: &mut H,
) -> Result<OdeOutput<B::Tensor>>
where
    B: Backend,
    S: Sde + ?Sized,
    M: ScoreModel<B> + ?Sized,
    H: SamplerHooks<B> + ?Sized,
{
    let z = sde.prior_sample(b, shape, rng.next_key())?;
    ode_sample_from(b, sde, model, z, cfg, rng, hooks)
}

/// Probability-flow ODE sampling from the state `z` at `T` (with the
/// denoising step when `cfg.denoise`).
pub fn ode_sample_from<B, S, M, H>(
    b: &B,
    sde: &S,
    model: &M,
    z: B::Tensor,
    cfg: &OdeConfig,
    rng: &mut NoiseRng,
    hooks: &mut H,
) -> Result<OdeOutput<B::Tensor>>
where
    B: Backend,
    S: Sde + ?Sized,
    M: ScoreModel<B> + ?Sized,
    H: SamplerHooks<B> + ?Sized,
{
    run_flow(
        b,
        sde,
        model,
        z,
        cfg,
        Direction::Decode,
        cfg.denoise,
        rng,
        hooks,
    )
}

/// Maps latents `z` (at time `T`) to data (at `eps`) with the probability-flow
/// ODE. `hooks` see progress and may stop the solver (the ODE draws no noise:
/// a projecting hook gets a generator seeded with 0).
pub fn decode<B, S, M, H>(
    b: &B,
    sde: &S,
    model: &M,
    z: B::Tensor,
    cfg: &OdeConfig,
    hooks: &mut H,
) -> Result<OdeOutput<B::Tensor>>
where
    B: Backend,
    S: Sde + ?Sized,
    M: ScoreModel<B> + ?Sized,
    H: SamplerHooks<B> + ?Sized,
{
    let mut rng = NoiseRng::new(0);
    run_flow(
        b,
        sde,
        model,
        z,
        cfg,
        Direction::Decode,
        false,
        &mut rng,
        hooks,
    )
}

/// Maps data `x` (at `eps`) to latents (at `T`) with the probability-flow ODE.
/// Decoding the result with the same settings returns `x` up to the solver
/// tolerance (the encoding is unique, Song et al. 2021 section 4.3).
pub fn encode<B, S, M, H>(
    b: &B,
    sde: &S,
    model: &M,
    x: B::Tensor,
    cfg: &OdeConfig,
    hooks: &mut H,
) -> Result<OdeOutput<B::Tensor>>
where
    B: Backend,
    S: Sde + ?Sized,
    M: ScoreModel<B> + ?Sized,
    H: SamplerHooks<B> + ?Sized,
{
    b.check_finite(&x, "data to encode")?;
    let mut rng = NoiseRng::new(0);
    run_flow(
        b,
        sde,
        model,
        x,
        cfg,
        Direction::Encode,
        false,
        &mut rng,
        hooks,
    )
}

/// Which way the probability-flow ODE is integrated.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// From `T` to `eps` (sampling, decoding).
    Decode,
    /// From `eps` to `T` (encoding).
    Encode,
}

#[allow(clippy::too_many_arguments)]
fn run_flow<B, S, M, H>(
    b: &B,
    sde: &S,
    model: &M,
    x: B::Tensor,
    cfg: &OdeConfig,
    direction: Direction,
    denoise: bool,
    rng: &mut NoiseRng,
    hooks: &mut H,
) -> Result<OdeOutput<B::Tensor>>
where
    B: Backend,
    S: Sde + ?Sized,
    M: ScoreModel<B> + ?Sized,
    H: SamplerHooks<B> + ?Sized,
{
    let eps = resolve_eps(sde, cfg.eps)?;
    if denoise {
        sde.check_discrete_chain()?;
    }
    let (t0, t1) = match direction {
        Direction::Decode => (sde.t_max(), eps),
        Direction::Encode => (eps, sde.t_max()),
    };
    let mut rhs = FlowRhs { sde, model };
    let sol = integrate_with_hooks(b, &mut rhs, x, Vec::new(), t0, t1, cfg, hooks, rng)?;
    let mut out = OdeOutput::from_solution(sol);
    if denoise {
        // One noise-free reverse-diffusion step at eps (the reference's denoising step).
        let t = vec![eps; b.shape(&out.x).batch()];
        let score = model.score(b, &out.x, &t)?;
        out.x = sde.reverse_discrete_step(b, &out.x, &t, &score)?.0;
        out.nfe += 1;
        out.sample_evals += out.nfe_per_sample.len();
        for n in out.nfe_per_sample.iter_mut() {
            *n += 1;
        }
    }
    Ok(out)
}

impl<T> From<OdeOutput<T>> for SampleOutput<T> {
    fn from(o: OdeOutput<T>) -> Self {
        SampleOutput {
            samples: o.x,
            nfe: o.nfe,
            nfe_per_sample: o.nfe_per_sample,
        }
    }
}
