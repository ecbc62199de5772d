//! The CPU implementation of [`Backend`]: `f32` storage shared copy-on-write
//! (cloning a tensor is free; writing to a shared one copies it first) with
//! cache-friendly loops. It is a first-class backend (what machines without a
//! GPU run) and the reference every other backend is tested against.

use std::mem::MaybeUninit;
use std::sync::Arc;

use rayon::prelude::*;

use crate::backend::{check_put_samples, check_same_shape, check_sample_indices};
use crate::{Backend, Coef, Error, NoiseKey, Result, Shape};

/// Elements from which [`zeros`] and `lincomb` use the rayon pool.
const PAR_MIN_ELEMS: usize = 1 << 16;

/// `len` zeros, written rather than `calloc`ed, large vectors by the rayon
/// pool. For output and accumulation buffers of the CPU kernels:
/// - an op's output is zeroed before its parallel loop runs, so a serial
///   fill would leave the other cores idle (malloc hands back reused memory,
///   which `calloc` must clear on the calling thread);
/// - freshly mapped `calloc` pages are first mapped read-only to the shared
///   zero page, so accumulating into them takes a second (copy-on-write)
///   fault per page that also flushes the other threads' TLBs; written zeros
///   fault each page once.
pub fn zeros(len: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    if len >= PAR_MIN_ELEMS {
        // Plain fills (memset) of 64 KiB pieces; rayon's `par_extend` would
        // write one element at a time through its collect consumer.
        v.spare_capacity_mut()[..len]
            .par_chunks_mut(PAR_MIN_ELEMS / 4)
            .for_each(|c| c.fill(std::mem::MaybeUninit::new(0.0)));
        // SAFETY: the capacity is at least `len`, and the loop above
        // initialised every one of the first `len` elements.
        unsafe { v.set_len(len) };
    } else {
        v.resize(len, 0.0);
    }
    v
}

/// A tensor in host memory. Clones share the elements (networks cache
/// their activations for the backward pass without copying them);
/// [`CpuTensor::data_mut`] copies them first when they are shared, so a
/// tensor still behaves as a value.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuTensor {
    shape: Shape,
    data: Arc<Vec<f32>>,
}

impl CpuTensor {
    /// Wraps `data` with `shape`, checking the element count.
    pub fn new(data: Vec<f32>, shape: Shape) -> Result<Self> {
        if data.len() != shape.numel() {
            return Err(Error::LengthMismatch {
                op: "CpuTensor::new",
                expected: shape.numel(),
                got: data.len(),
                shape,
            });
        }
        Ok(CpuTensor {
            shape,
            data: Arc::new(data),
        })
    }

    /// The shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The elements, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// Mutable access to the elements (copied first if another clone shares them).
    pub fn data_mut(&mut self) -> &mut [f32] {
        Arc::make_mut(&mut self.data).as_mut_slice()
    }

    /// The elements of sample `n`.
    pub fn sample(&self, n: usize) -> &[f32] {
        let d = self.shape.sample_numel();
        &self.data[n * d..(n + 1) * d]
    }

    /// Consumes the tensor, returning its elements.
    pub fn into_vec(self) -> Vec<f32> {
        Arc::try_unwrap(self.data).unwrap_or_else(|shared| (*shared).clone())
    }
}

/// The CPU backend. Stateless; cheap to copy.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

impl CpuBackend {
    fn filled(&self, shape: &Shape, fill: impl FnOnce(&mut [f32])) -> CpuTensor {
        let mut data = vec![0.0f32; shape.numel()];
        fill(&mut data);
        CpuTensor {
            shape: shape.clone(),
            data: Arc::new(data),
        }
    }
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;

    fn name(&self) -> String {
        "cpu".to_string()
    }

    fn shape<'a>(&self, x: &'a CpuTensor) -> &'a Shape {
        &x.shape
    }

    fn tensor(&self, data: Vec<f32>, shape: &Shape) -> Result<CpuTensor> {
        CpuTensor::new(data, shape.clone())
    }

    fn to_vec(&self, x: &CpuTensor) -> Result<Vec<f32>> {
        Ok(x.data.to_vec())
    }

    fn full(&self, shape: &Shape, value: f32) -> Result<CpuTensor> {
        Ok(CpuTensor {
            shape: shape.clone(),
            data: Arc::new(vec![value; shape.numel()]),
        })
    }

    fn lincomb(&self, terms: &[(Coef<'_>, &CpuTensor)]) -> Result<CpuTensor> {
        let shape = crate::backend::check_lincomb(terms, |x: &CpuTensor| &x.shape)?;
        let d = shape.sample_numel();
        // Sample n of the output (uninitialised on entry): the first term
        // written, the others added.
        let sample = |n: usize, o: &mut [MaybeUninit<f32>]| {
            let (c0, x0) = &terms[0];
            let c0 = c0.at(n);
            for (o, &x) in o.iter_mut().zip(x0.sample(n)) {
                o.write(c0 * x);
            }
            // SAFETY: every term has the output's shape (checked above), so
            // the zip above wrote all `d` elements of `o`; MaybeUninit<f32>
            // has the layout of f32.
            let o = unsafe { &mut *(o as *mut [MaybeUninit<f32>] as *mut [f32]) };
            for (c, x) in &terms[1..] {
                let c = c.at(n);
                for (o, &x) in o.iter_mut().zip(x.sample(n)) {
                    *o += c * x;
                }
            }
        };
        let len = shape.numel();
        let mut out = Vec::with_capacity(len);
        let ou = &mut out.spare_capacity_mut()[..len];
        if len >= PAR_MIN_ELEMS && shape.batch() > 1 {
            // Large batches (network activations, sampler states): samples in
            // parallel.
            ou.par_chunks_mut(d)
                .enumerate()
                .for_each(|(n, o)| sample(n, o));
        } else {
            for (n, o) in ou.chunks_exact_mut(d).enumerate() {
                sample(n, o);
            }
        }
        // SAFETY: the capacity is at least `len` = batch · d; the batch's
        // chunks of `d` elements (d > 0: shapes have no zero dimensions)
        // tile it, and `sample` wrote every element of each.
        unsafe { out.set_len(len) };
        Ok(CpuTensor {
            shape: shape.clone(),
            data: Arc::new(out),
        })
    }

    fn select(&self, take_new: &[bool], new: &CpuTensor, old: &CpuTensor) -> Result<CpuTensor> {
        check_same_shape("select", &new.shape, &old.shape)?;
        if take_new.len() != new.shape.batch() {
            return Err(Error::BatchMismatch {
                op: "select",
                expected: new.shape.batch(),
                got: take_new.len(),
            });
        }
        let mut data = Vec::with_capacity(new.data.len());
        for (n, &t) in take_new.iter().enumerate() {
            data.extend_from_slice(if t { new.sample(n) } else { old.sample(n) });
        }
        Ok(CpuTensor {
            shape: new.shape.clone(),
            data: Arc::new(data),
        })
    }

    fn take_samples(&self, x: &CpuTensor, indices: &[usize]) -> Result<CpuTensor> {
        check_sample_indices("take_samples", indices, x.shape.batch())?;
        let shape = x.shape.with_batch(indices.len())?;
        let mut data = Vec::with_capacity(shape.numel());
        for &i in indices {
            data.extend_from_slice(x.sample(i));
        }
        Ok(CpuTensor {
            shape,
            data: Arc::new(data),
        })
    }

    fn put_samples(
        &self,
        full: &CpuTensor,
        indices: &[usize],
        part: &CpuTensor,
    ) -> Result<CpuTensor> {
        check_put_samples(&full.shape, indices, &part.shape)?;
        let d = full.shape.sample_numel();
        // A clone shares `full`'s elements; `data_mut` copies them once.
        let mut out = full.clone();
        let data = out.data_mut();
        for (n, &i) in indices.iter().enumerate() {
            data[i * d..(i + 1) * d].copy_from_slice(part.sample(n));
        }
        Ok(out)
    }

    fn mul(&self, x: &CpuTensor, y: &CpuTensor) -> Result<CpuTensor> {
        check_same_shape("mul", &x.shape, &y.shape)?;
        let data = x
            .data
            .iter()
            .zip(y.data.iter())
            .map(|(a, b)| a * b)
            .collect();
        Ok(CpuTensor {
            shape: x.shape.clone(),
            data: Arc::new(data),
        })
    }

    fn masked_blend(&self, x: &CpuTensor, y: &CpuTensor, mask: &CpuTensor) -> Result<CpuTensor> {
        check_same_shape("masked_blend", &x.shape, &y.shape)?;
        let broadcast = mask.shape != x.shape;
        if broadcast {
            check_same_shape("masked_blend (mask)", &x.shape.with_batch(1)?, &mask.shape)?;
        }
        let d = x.shape.sample_numel();
        let mut data = Vec::with_capacity(x.data.len());
        for n in 0..x.shape.batch() {
            let m = if broadcast {
                mask.sample(0)
            } else {
                mask.sample(n)
            };
            data.extend(
                x.sample(n)
                    .iter()
                    .zip(y.sample(n))
                    .zip(m)
                    .map(|((&a, &b), &m)| a * (1.0 - m) + b * m),
            );
        }
        debug_assert_eq!(data.len(), d * x.shape.batch());
        Ok(CpuTensor {
            shape: x.shape.clone(),
            data: Arc::new(data),
        })
    }

    fn sample_dot(&self, x: &CpuTensor, y: &CpuTensor) -> Result<Vec<f64>> {
        check_same_shape("sample_dot", &x.shape, &y.shape)?;
        Ok((0..x.shape.batch())
            .map(|n| {
                x.sample(n)
                    .iter()
                    .zip(y.sample(n))
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum()
            })
            .collect())
    }

    fn sample_scaled_rms(
        &self,
        err: &CpuTensor,
        y0: &CpuTensor,
        y1: &CpuTensor,
        atol: f64,
        rtol: f64,
    ) -> Result<Vec<f64>> {
        check_same_shape("sample_scaled_rms", &err.shape, &y0.shape)?;
        check_same_shape("sample_scaled_rms", &err.shape, &y1.shape)?;
        let d = err.shape.sample_numel() as f64;
        Ok((0..err.shape.batch())
            .map(|n| {
                let sum: f64 = err
                    .sample(n)
                    .iter()
                    .zip(y0.sample(n))
                    .zip(y1.sample(n))
                    .map(|((&e, &a), &b)| {
                        let scale = atol + rtol * f64::from(a.abs().max(b.abs()));
                        let r = f64::from(e) / scale;
                        r * r
                    })
                    .sum();
                (sum / d).sqrt()
            })
            .collect())
    }

    fn gaussian(&self, shape: &Shape, key: NoiseKey) -> Result<CpuTensor> {
        Ok(self.filled(shape, |out| key.fill_gaussian(out)))
    }

    fn uniform(&self, shape: &Shape, key: NoiseKey) -> Result<CpuTensor> {
        Ok(self.filled(shape, |out| key.fill_uniform(out)))
    }

    fn rademacher(&self, shape: &Shape, key: NoiseKey) -> Result<CpuTensor> {
        Ok(self.filled(shape, |out| key.fill_rademacher(out)))
    }

    fn check_finite(&self, x: &CpuTensor, what: &str) -> Result<()> {
        crate::error::check_finite(what, &x.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_has_the_length_and_only_zeros() {
        // Below, at and above the parallel threshold, and a length that is
        // not a multiple of the fill pieces; buffers are reused from freed
        // non-zero memory to catch an element that is never written.
        for len in [
            0,
            1,
            1000,
            PAR_MIN_ELEMS - 1,
            PAR_MIN_ELEMS,
            5 * PAR_MIN_ELEMS + 123,
        ] {
            drop(vec![7.0f32; len + 16]);
            let z = zeros(len);
            assert_eq!(z.len(), len);
            assert!(z.iter().all(|&v| v.to_bits() == 0), "len {len}");
        }
    }
}
