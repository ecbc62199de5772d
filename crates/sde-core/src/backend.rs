//! The [`Backend`] trait: batched tensor storage plus the elementwise and
//! per-sample reduction operations that the SDE maths, the samplers and the
//! likelihood need. Networks add their own ops on top (the `score-net` crate's
//! `NetBackend`), so this trait stays small enough to implement on any device.
//!
//! Conventions shared by all backends:
//! - tensors hold `f32`, row-major, batch first ([`Shape`]);
//! - per-sample quantities (coefficients, norms, dot products) have one entry per
//!   batch element, so every sample can have its own time and step size;
//! - reductions are returned as `f64` (the CPU backend accumulates in `f64`;
//!   GPU backends may sum in `f32`);
//! - random fills follow the stream layout documented in [`crate::rng`], so a
//!   [`NoiseKey`] yields the same numbers on every backend (Gaussian fills up to
//!   the platform's transcendental-function accuracy).

use crate::error::IndexProblem;
use crate::{Error, NoiseKey, Result, Shape};

/// A coefficient in [`Backend::lincomb`]: one value for the whole batch, or one per sample.
#[derive(Clone, Copy, Debug)]
pub enum Coef<'a> {
    /// The same coefficient for every element.
    Scalar(f32),
    /// Coefficient `c[n]` multiplies every element of sample `n`.
    PerSample(&'a [f32]),
}

impl Coef<'_> {
    /// The coefficient of sample `n`.
    #[inline]
    pub fn at(&self, n: usize) -> f32 {
        match self {
            Coef::Scalar(c) => *c,
            Coef::PerSample(c) => c[n],
        }
    }

    /// Checks that a per-sample coefficient has one value per sample.
    pub fn check(&self, op: &'static str, batch: usize) -> Result<()> {
        match self {
            Coef::PerSample(c) if c.len() != batch => Err(Error::BatchMismatch {
                op,
                expected: batch,
                got: c.len(),
            }),
            _ => Ok(()),
        }
    }
}

/// Converts per-sample `f64` values into the `f32` coefficients [`Coef::PerSample`] takes.
pub fn coefs_f32(values: impl IntoIterator<Item = f64>) -> Vec<f32> {
    values.into_iter().map(|v| v as f32).collect()
}

/// Returns [`Error::ShapeMismatch`] unless `got == expected`.
pub fn check_same_shape(op: &'static str, expected: &Shape, got: &Shape) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            op,
            expected: expected.clone(),
            got: got.clone(),
        })
    }
}

/// Validates the terms of [`Backend::lincomb`] (at least one; every tensor of
/// the first's shape; per-sample coefficients of batch length) and returns
/// that shape. Backends call it so that they reject the same inputs.
pub fn check_lincomb<'a, T>(
    terms: &[(Coef<'_>, &'a T)],
    shape_of: impl Fn(&'a T) -> &'a Shape,
) -> Result<&'a Shape> {
    let (_, first) = terms.first().ok_or_else(|| Error::InvalidParameter {
        name: "terms",
        value: "[]".into(),
        reason: "lincomb needs at least one term".into(),
    })?;
    let shape = shape_of(first);
    for (c, x) in terms {
        check_same_shape("lincomb", shape, shape_of(x))?;
        c.check("lincomb", shape.batch())?;
    }
    Ok(shape)
}

/// Validates the sample indices of [`Backend::take_samples`] and
/// [`Backend::put_samples`] against a batch of `batch`: at least one, each
/// below `batch`, none twice (any order). Backends call it so that they
/// reject the same inputs.
pub fn check_sample_indices(op: &'static str, indices: &[usize], batch: usize) -> Result<()> {
    let fail = |problem| Err(Error::SampleIndices { op, problem });
    if indices.is_empty() {
        return fail(IndexProblem::Empty);
    }
    let mut seen = vec![false; batch];
    for &index in indices {
        match seen.get_mut(index) {
            None => return fail(IndexProblem::OutOfRange { index, batch }),
            Some(true) => return fail(IndexProblem::Duplicate { index }),
            Some(s) => *s = true,
        }
    }
    Ok(())
}

/// Validates the arguments of [`Backend::put_samples`]: `part` has the
/// per-sample shape of `full` and one sample per index, and the indices pass
/// [`check_sample_indices`] against `full`'s batch.
pub fn check_put_samples(full: &Shape, indices: &[usize], part: &Shape) -> Result<()> {
    const OP: &str = "put_samples";
    check_sample_indices(OP, indices, full.batch())?;
    if part.dims()[1..] != full.dims()[1..] {
        return Err(Error::ShapeMismatch {
            op: OP,
            expected: full.with_batch(part.batch())?,
            got: part.clone(),
        });
    }
    if part.batch() != indices.len() {
        return Err(Error::BatchMismatch {
            op: OP,
            expected: indices.len(),
            got: part.batch(),
        });
    }
    Ok(())
}

/// Batched `f32` tensors and the device-independent operations on them.
///
/// Implementations: [`crate::CpuBackend`] here; the wgpu backend in `score-net`.
/// Every operation validates shapes and returns a typed [`Error`] on mismatch.
pub trait Backend: Clone + Send + Sync + std::fmt::Debug + 'static {
    /// A tensor living on this backend's device.
    type Tensor: Clone + Send + Sync + std::fmt::Debug;

    /// A short human-readable name (`"cpu"`, `"wgpu:<adapter>"`).
    fn name(&self) -> String;

    /// The shape of `x`.
    fn shape<'a>(&self, x: &'a Self::Tensor) -> &'a Shape;

    /// Uploads host data. Fails when `data.len() != shape.numel()`.
    fn tensor(&self, data: Vec<f32>, shape: &Shape) -> Result<Self::Tensor>;

    /// Downloads a tensor to the host (row-major).
    fn to_vec(&self, x: &Self::Tensor) -> Result<Vec<f32>>;

    /// A tensor with every element equal to `value`.
    fn full(&self, shape: &Shape, value: f32) -> Result<Self::Tensor>;

    /// A tensor of zeros.
    fn zeros(&self, shape: &Shape) -> Result<Self::Tensor> {
        self.full(shape, 0.0)
    }

    /// `sum_k c_k * x_k` for same-shaped tensors, with scalar or per-sample
    /// coefficients. Needs at least one term.
    fn lincomb(&self, terms: &[(Coef<'_>, &Self::Tensor)]) -> Result<Self::Tensor>;

    /// `c * x`.
    fn scale(&self, x: &Self::Tensor, c: Coef<'_>) -> Result<Self::Tensor> {
        self.lincomb(&[(c, x)])
    }

    /// `x + y`.
    fn add(&self, x: &Self::Tensor, y: &Self::Tensor) -> Result<Self::Tensor> {
        self.lincomb(&[(Coef::Scalar(1.0), x), (Coef::Scalar(1.0), y)])
    }

    /// `x - y`.
    fn sub(&self, x: &Self::Tensor, y: &Self::Tensor) -> Result<Self::Tensor> {
        self.lincomb(&[(Coef::Scalar(1.0), x), (Coef::Scalar(-1.0), y)])
    }

    /// Per-sample selection: sample `n` of the result is sample `n` of `new`
    /// where `take_new[n]`, else of `old`. Unlike a 0/1 linear combination it
    /// never mixes the two, so an infinite or NaN sample in the side not taken
    /// cannot leak into the result (adaptive solvers reject such trial steps).
    fn select(
        &self,
        take_new: &[bool],
        new: &Self::Tensor,
        old: &Self::Tensor,
    ) -> Result<Self::Tensor>;

    /// Gathers whole samples: a batch of `indices.len()` samples whose sample
    /// `i` is sample `indices[i]` of `x`. The indices may come in any order but
    /// must be in range, distinct and at least one
    /// ([`Error::SampleIndices`] otherwise). A copy of the bits, exact on
    /// every backend. (The default goes through the host; backends copy on
    /// the device.)
    fn take_samples(&self, x: &Self::Tensor, indices: &[usize]) -> Result<Self::Tensor> {
        let shape = self.shape(x);
        check_sample_indices("take_samples", indices, shape.batch())?;
        let d = shape.sample_numel();
        let data = self.to_vec(x)?;
        let mut out = Vec::with_capacity(indices.len() * d);
        for &i in indices {
            out.extend_from_slice(&data[i * d..(i + 1) * d]);
        }
        self.tensor(out, &shape.with_batch(indices.len())?)
    }

    /// Scatters whole samples: a copy of `full` in which sample `indices[i]`
    /// is replaced by sample `i` of `part` (the inverse of
    /// [`Backend::take_samples`]: `put_samples(x, idx, take_samples(x, idx))`
    /// is `x`). `part` must have the per-sample shape of `full` and one sample
    /// per index; the indices follow the rules of `take_samples`. Exact on
    /// every backend. (The default goes through the host.)
    fn put_samples(
        &self,
        full: &Self::Tensor,
        indices: &[usize],
        part: &Self::Tensor,
    ) -> Result<Self::Tensor> {
        let shape = self.shape(full);
        check_put_samples(shape, indices, self.shape(part))?;
        let d = shape.sample_numel();
        let mut data = self.to_vec(full)?;
        let part = self.to_vec(part)?;
        for (&i, src) in indices.iter().zip(part.chunks_exact(d)) {
            data[i * d..(i + 1) * d].copy_from_slice(src);
        }
        self.tensor(data, shape)
    }

    /// Waits until all queued work on the device has finished (a no-op on the
    /// CPU). Benchmarks call it inside the timed closure.
    fn sync(&self) -> Result<()> {
        Ok(())
    }

    /// Elementwise product `x * y`.
    fn mul(&self, x: &Self::Tensor, y: &Self::Tensor) -> Result<Self::Tensor>;

    /// `x * (1 - mask) + y * mask`, elementwise. `mask` has the shape of `x`, or
    /// the shape of one sample with batch 1 (then it is broadcast over the batch).
    fn masked_blend(
        &self,
        x: &Self::Tensor,
        y: &Self::Tensor,
        mask: &Self::Tensor,
    ) -> Result<Self::Tensor>;

    /// Per-sample dot products `<x_n, y_n>`, accumulated in `f64`.
    fn sample_dot(&self, x: &Self::Tensor, y: &Self::Tensor) -> Result<Vec<f64>>;

    /// Per-sample Euclidean norms `|x_n|`.
    fn sample_norm(&self, x: &Self::Tensor) -> Result<Vec<f64>> {
        Ok(self.sample_dot(x, x)?.into_iter().map(f64::sqrt).collect())
    }

    /// Per-sample scaled RMS norm used by adaptive ODE solvers:
    /// `sqrt(mean_j (err_j / (atol + rtol * max(|y0_j|, |y1_j|)))^2)`.
    fn sample_scaled_rms(
        &self,
        err: &Self::Tensor,
        y0: &Self::Tensor,
        y1: &Self::Tensor,
        atol: f64,
        rtol: f64,
    ) -> Result<Vec<f64>>;

    /// Standard normal noise from `key` (see [`crate::rng`] for the stream layout).
    fn gaussian(&self, shape: &Shape, key: NoiseKey) -> Result<Self::Tensor>;

    /// Uniform noise in (0, 1) from `key`.
    fn uniform(&self, shape: &Shape, key: NoiseKey) -> Result<Self::Tensor>;

    /// Rademacher noise (±1 with equal probability) from `key`.
    fn rademacher(&self, shape: &Shape, key: NoiseKey) -> Result<Self::Tensor>;

    /// Fails with [`Error::NonFinite`] (naming `what`) if `x` holds a NaN or infinity.
    fn check_finite(&self, x: &Self::Tensor, what: &str) -> Result<()>;
}
