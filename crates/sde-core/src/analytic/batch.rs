//! Batch plumbing shared by the analytic score models ([`super::AnalyticScore`],
//! [`super::FullMixtureScore`]): the samples of a batch tensor are evaluated
//! one at a time on the host, in `f64`, by a per-sample function
//! `f(t_n, x_n, v_n) -> (score, hvp)`, and the results are gathered back into
//! tensors of the input's shape.

use crate::{Backend, Error, Result, Sde, SdeExt};

/// The score of `log p_t` at one point and its Hessian-vector product (empty
/// when no vector was given).
pub(super) type ScoreHvp = (Vec<f64>, Vec<f64>);

/// Runs `f(t_n, x_n, v_n)` for every sample `n` of `x` (each of `dim`
/// elements) after checking the shape, the times and the finiteness of `x`.
/// Returns the scores and, when `v` is given, the Hessian-vector products.
fn per_sample<B: Backend, S: Sde>(
    b: &B,
    sde: &S,
    dim: usize,
    x: &B::Tensor,
    t: &[f64],
    v: Option<&B::Tensor>,
    mut f: impl FnMut(f64, &[f64], Option<&[f64]>) -> Result<ScoreHvp>,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let shape = b.shape(x).clone();
    if shape.sample_numel() != dim {
        return Err(Error::InvalidParameter {
            name: "x",
            value: shape.to_string(),
            reason: format!("each sample must have {dim} elements"),
        });
    }
    sde.check_times(t, shape.batch())?;
    b.check_finite(x, "score input")?;
    let xs = b.to_vec(x)?;
    let vs = match v {
        Some(v) => {
            crate::backend::check_same_shape("score_and_vjp (v)", &shape, b.shape(v))?;
            Some(b.to_vec(v)?)
        }
        None => None,
    };
    let to_f64 = |s: &[f32]| -> Vec<f64> { s.iter().map(|&v| f64::from(v)).collect() };
    let mut score = Vec::with_capacity(xs.len());
    let mut vjp = Vec::with_capacity(if vs.is_some() { xs.len() } else { 0 });
    for ((n, &tn), xn) in t.iter().enumerate().zip(xs.chunks_exact(dim)) {
        let vn = vs.as_ref().map(|vs| to_f64(&vs[n * dim..(n + 1) * dim]));
        let (s, h) = f(tn, &to_f64(xn), vn.as_deref())?;
        score.extend(s.iter().map(|&v| v as f32));
        if vn.is_some() {
            vjp.extend(h.iter().map(|&v| v as f32));
        }
    }
    Ok((score, vjp))
}

/// The score tensor of a host model `f` (see [`per_sample`]).
pub(super) fn score<B: Backend, S: Sde>(
    b: &B,
    sde: &S,
    dim: usize,
    x: &B::Tensor,
    t: &[f64],
    f: impl FnMut(f64, &[f64], Option<&[f64]>) -> Result<ScoreHvp>,
) -> Result<B::Tensor> {
    let (score, _) = per_sample(b, sde, dim, x, t, None, f)?;
    b.tensor(score, b.shape(x))
}

/// The score and vector-Jacobian product tensors of a host model `f` (see
/// [`per_sample`]; the score's Jacobian is the symmetric Hessian of `log p_t`,
/// so the Hessian-vector product is the VJP).
pub(super) fn score_and_vjp<B: Backend, S: Sde>(
    b: &B,
    sde: &S,
    dim: usize,
    x: &B::Tensor,
    t: &[f64],
    v: &B::Tensor,
    f: impl FnMut(f64, &[f64], Option<&[f64]>) -> Result<ScoreHvp>,
) -> Result<(B::Tensor, B::Tensor)> {
    let (score, vjp) = per_sample(b, sde, dim, x, t, Some(v), f)?;
    let shape = b.shape(x);
    Ok((b.tensor(score, shape)?, b.tensor(vjp, shape)?))
}
