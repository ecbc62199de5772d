//! [`WgpuBackend`]: `sde_core::Backend` on a wgpu device.
//!
//! Shapes and per-sample vectors are validated on the host exactly as
//! `sde_core::CpuBackend` does, so a wrong shape is the same typed
//! `sde_core::Error` on both backends; device problems (no adapter, a tensor
//! over the storage-binding limit, device lost, read-back failure) are
//! [`GpuError`]s, carried as `sde_core::Error::Model(NetError::Gpu(..))`.
//!
//! Numerics versus the CPU reference: elementwise kernels follow the CPU's
//! evaluation order (a driver may still fuse a multiply-add, a difference of
//! about one `f32` ulp); `select` copies bits and is exact; reductions sum at
//! most 1024 terms per workgroup in `f32` and add the partials in `f64` (with
//! subgroup operations where the device has them, `reduce_subgroup.wgsl`,
//! else a shared-memory tree, `reduce.wgsl`; the order of the `f32` additions
//! differs between the two, so results may differ in the last bits);
//! uniform and Rademacher fills are bit-identical; Gaussian fills match to the
//! accuracy of the device's `log`/`sqrt`/`sin`/`cos`.

use std::sync::Arc;

use sde_core::backend::{check_put_samples, check_same_shape, check_sample_indices};
use sde_core::{Backend, Coef, Error, NoiseKey, Result, Shape};

use super::context::GpuContext;
use super::tensor::WgpuTensor;
use crate::error::{GpuError, NetError};

/// Elements per workgroup of the reduction kernels (`CHUNK` in `reduce.wgsl`).
const REDUCE_CHUNK: u32 = 1024;

/// Terms one `lincomb` dispatch handles (`a`, `b`, `c`, `e` in `elementwise.wgsl`).
const LINCOMB_TERMS: usize = 4;

/// The `Params` struct of `elementwise.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct ElemParams {
    n: u32,
    d: u32,
    nterms: u32,
    accumulate: u32,
    value: f32,
    batch: u32,
    mask_n: u32,
    _pad: u32,
}

/// The `Params` struct of `reduce.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct ReduceParams {
    d: u32,
    chunks: u32,
    atol: f32,
    rtol: f32,
}

/// The `Params` struct of `rng.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct RngParams {
    n: u32,
    seed_lo: u32,
    seed_hi: u32,
    stream_lo: u32,
    stream_hi: u32,
    _pad: [u32; 3],
}

/// The subgroup version (in `reduce_subgroup.wgsl`) of a reduction kernel of
/// `reduce.wgsl`.
fn subgroup_kernel(kernel: &'static str) -> &'static str {
    match kernel {
        "sample_dot" => "sample_dot_sg",
        "sample_scaled_rms" => "sample_scaled_rms_sg",
        other => other,
    }
}

/// Runs of consecutive indices: `(position, index, len)` for each maximal
/// stretch where `indices[position + k] == index + k` for `k < len`. A batch
/// position and a sample index per run, so one copy moves each run.
fn index_runs(indices: &[usize]) -> Vec<(usize, usize, usize)> {
    let mut runs: Vec<(usize, usize, usize)> = Vec::new();
    for (pos, &i) in indices.iter().enumerate() {
        match runs.last_mut() {
            Some((_, start, len)) if *start + *len == i => *len += 1,
            _ => runs.push((pos, i, 1)),
        }
    }
    runs
}

/// A [`GpuError`] as an `sde_core::Error`.
pub(crate) fn gpu(e: GpuError) -> Error {
    NetError::Gpu(e).into()
}

/// The wgpu backend: a cheaply clonable handle on a shared [`GpuContext`].
#[derive(Clone, Debug)]
pub struct WgpuBackend {
    ctx: Arc<GpuContext>,
}

impl WgpuBackend {
    /// Opens the adapter chosen by [`GpuContext::new`] (environment variables
    /// `WGPU_BACKEND`, `WGPU_ADAPTER_NAME`; real GPUs preferred).
    pub fn new() -> std::result::Result<Self, NetError> {
        Ok(Self::from_context(Arc::new(GpuContext::new()?)))
    }

    /// Wraps an existing context.
    pub fn from_context(ctx: Arc<GpuContext>) -> Self {
        WgpuBackend { ctx }
    }

    /// The shared context.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// Element count of `shape` as the `u32` kernels index with, after
    /// checking the buffer fits the storage-binding limit.
    pub(crate) fn elems(&self, what: &str, shape: &Shape) -> Result<u32> {
        let n = shape.numel() as u64;
        self.ctx
            .check_binding_size(&format!("{what} {shape}"), n * 4)
            .map_err(gpu)?;
        // Flat indices of 2-D grids stay below 2^32 with this margin.
        if n >= 1 << 31 {
            return Err(gpu(GpuError::TooLarge {
                what: format!("{what} {shape}"),
                bytes: n * 4,
                limit: (1 << 31) * 4,
                limit_name: "2^31 elements (32-bit indexing)",
            }));
        }
        Ok(n as u32)
    }

    /// A new output tensor of `shape` and its element count. Its contents are
    /// unspecified: kernels must write every element.
    pub(crate) fn output(&self, what: &str, shape: &Shape) -> Result<(WgpuTensor, u32)> {
        let n = self.elems(what, shape)?;
        let buffer = self
            .ctx
            .pooled_buffer(what, u64::from(n) * 4)
            .map_err(gpu)?;
        Ok((
            WgpuTensor {
                buffer,
                shape: shape.clone(),
            },
            n,
        ))
    }

    fn elementwise(
        &self,
        kernel: &'static str,
        shape: &Shape,
        params: ElemParams,
        inputs: &[&wgpu::Buffer],
    ) -> Result<WgpuTensor> {
        let (out, n) = self.output(kernel, shape)?;
        let grid = self.ctx.grid_1d(kernel, u64::from(n)).map_err(gpu)?;
        let mut buffers = inputs.to_vec();
        buffers.push(&out.buffer);
        self.ctx
            .dispatch(
                kernel,
                &ElemParams {
                    n,
                    d: shape.sample_numel() as u32,
                    batch: shape.batch() as u32,
                    ..params
                },
                &buffers,
                grid,
            )
            .map_err(gpu)?;
        Ok(out)
    }

    fn fill(&self, kernel: &'static str, shape: &Shape, key: NoiseKey) -> Result<WgpuTensor> {
        let (out, n) = self.output(kernel, shape)?;
        let grid = self
            .ctx
            .grid_1d(kernel, u64::from(n).div_ceil(4))
            .map_err(gpu)?;
        let params = RngParams {
            n,
            seed_lo: key.seed as u32,
            seed_hi: (key.seed >> 32) as u32,
            stream_lo: key.stream as u32,
            stream_hi: (key.stream >> 32) as u32,
            _pad: [0; 3],
        };
        self.ctx
            .dispatch(kernel, &params, &[&out.buffer], grid)
            .map_err(gpu)?;
        Ok(out)
    }

    /// Runs a reduction kernel and returns the per-sample sums (partials added
    /// in `f64`): `kernel` of `reduce.wgsl`, or its `<kernel>_sg` version of
    /// `reduce_subgroup.wgsl` when [`GpuContext::has_subgroups`].
    pub(crate) fn reduce(
        &self,
        kernel: &'static str,
        shape: &Shape,
        atol: f32,
        rtol: f32,
        inputs: &[&wgpu::Buffer],
    ) -> Result<Vec<f64>> {
        self.elems(kernel, shape)?;
        let d = shape.sample_numel() as u32;
        let batch = shape.batch() as u32;
        let chunks = d.div_ceil(REDUCE_CHUNK);
        let slots = u64::from(chunks) * u64::from(batch);
        let partial = self
            .ctx
            .storage_buffer("partial sums", slots * 4)
            .map_err(gpu)?;
        let mut buffers = inputs.to_vec();
        buffers.push(&partial);
        let kernel = if self.ctx.has_subgroups() {
            subgroup_kernel(kernel)
        } else {
            kernel
        };
        self.ctx
            .dispatch(
                kernel,
                &ReduceParams {
                    d,
                    chunks,
                    atol,
                    rtol,
                },
                &buffers,
                [chunks, batch, 1],
            )
            .map_err(gpu)?;
        let bytes = self.ctx.read_back(&partial, 0, slots * 4).map_err(gpu)?;
        let sums: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
        Ok(sums
            .chunks_exact(chunks as usize)
            .map(|c| c.iter().map(|&v| f64::from(v)).sum())
            .collect())
    }
}

impl Backend for WgpuBackend {
    type Tensor = WgpuTensor;

    fn name(&self) -> String {
        format!("wgpu:{}", self.ctx.info().name)
    }

    fn shape<'a>(&self, x: &'a WgpuTensor) -> &'a Shape {
        &x.shape
    }

    fn tensor(&self, data: Vec<f32>, shape: &Shape) -> Result<WgpuTensor> {
        if data.len() != shape.numel() {
            return Err(Error::LengthMismatch {
                op: "WgpuBackend::tensor",
                expected: shape.numel(),
                got: data.len(),
                shape: shape.clone(),
            });
        }
        self.elems("tensor", shape)?;
        let buffer = self
            .ctx
            .pooled_from("tensor", bytemuck::cast_slice(&data))
            .map_err(gpu)?;
        Ok(WgpuTensor {
            buffer,
            shape: shape.clone(),
        })
    }

    fn to_vec(&self, x: &WgpuTensor) -> Result<Vec<f32>> {
        let bytes = self.ctx.read_back(&x.buffer, 0, x.bytes()).map_err(gpu)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    fn full(&self, shape: &Shape, value: f32) -> Result<WgpuTensor> {
        self.elementwise(
            "fill",
            shape,
            ElemParams {
                value,
                ..Default::default()
            },
            &[],
        )
    }

    fn lincomb(&self, terms: &[(Coef<'_>, &WgpuTensor)]) -> Result<WgpuTensor> {
        let shape = sde_core::backend::check_lincomb(terms, |x: &WgpuTensor| &x.shape)?;
        let (out, n) = self.output("lincomb", shape)?;
        let grid = self.ctx.grid_1d("lincomb", u64::from(n)).map_err(gpu)?;
        let batch = shape.batch();
        for (k, chunk) in terms.chunks(LINCOMB_TERMS).enumerate() {
            let mut coefs = vec![0.0f32; LINCOMB_TERMS * batch];
            for (t, (c, _)) in chunk.iter().enumerate() {
                for (s, slot) in coefs[t * batch..(t + 1) * batch].iter_mut().enumerate() {
                    *slot = c.at(s);
                }
            }
            let coef_buf = self
                .ctx
                .storage_from("lincomb coefficients", bytemuck::cast_slice(&coefs))
                .map_err(gpu)?;
            // Unused term slots bind the first term's buffer (never read).
            let x = |t: usize| &chunk.get(t).unwrap_or(&chunk[0]).1.buffer;
            let buffers = [x(0), x(1), x(2), x(3), &coef_buf, &out.buffer];
            self.ctx
                .dispatch(
                    "lincomb",
                    &ElemParams {
                        n,
                        d: shape.sample_numel() as u32,
                        nterms: chunk.len() as u32,
                        accumulate: u32::from(k > 0),
                        batch: batch as u32,
                        ..Default::default()
                    },
                    &buffers,
                    grid,
                )
                .map_err(gpu)?;
        }
        Ok(out)
    }

    fn select(&self, take_new: &[bool], new: &WgpuTensor, old: &WgpuTensor) -> Result<WgpuTensor> {
        check_same_shape("select", &new.shape, &old.shape)?;
        if take_new.len() != new.shape.batch() {
            return Err(Error::BatchMismatch {
                op: "select",
                expected: new.shape.batch(),
                got: take_new.len(),
            });
        }
        let flags: Vec<u32> = take_new.iter().map(|&t| u32::from(t)).collect();
        let flag_buf = self
            .ctx
            .storage_from("select flags", bytemuck::cast_slice(&flags))
            .map_err(gpu)?;
        self.elementwise(
            "select_samples",
            &new.shape,
            ElemParams::default(),
            &[&flag_buf, &new.buffer, &old.buffer],
        )
    }

    fn take_samples(&self, x: &WgpuTensor, indices: &[usize]) -> Result<WgpuTensor> {
        check_sample_indices("take_samples", indices, x.shape.batch())?;
        let (out, _) = self.output("take_samples", &x.shape.with_batch(indices.len())?)?;
        let bytes = x.shape.sample_numel() as u64 * 4;
        for (pos, index, len) in index_runs(indices) {
            self.ctx.copy(
                &x.buffer,
                index as u64 * bytes,
                &out.buffer,
                pos as u64 * bytes,
                len as u64 * bytes,
            );
        }
        self.ctx.check_fault().map_err(gpu)?;
        Ok(out)
    }

    fn put_samples(
        &self,
        full: &WgpuTensor,
        indices: &[usize],
        part: &WgpuTensor,
    ) -> Result<WgpuTensor> {
        check_put_samples(&full.shape, indices, &part.shape)?;
        let (out, _) = self.output("put_samples", &full.shape)?;
        self.ctx.copy(&full.buffer, 0, &out.buffer, 0, full.bytes());
        let bytes = full.shape.sample_numel() as u64 * 4;
        for (pos, index, len) in index_runs(indices) {
            self.ctx.copy(
                &part.buffer,
                pos as u64 * bytes,
                &out.buffer,
                index as u64 * bytes,
                len as u64 * bytes,
            );
        }
        self.ctx.check_fault().map_err(gpu)?;
        Ok(out)
    }

    fn sync(&self) -> Result<()> {
        self.ctx.sync().map_err(gpu)
    }

    fn mul(&self, x: &WgpuTensor, y: &WgpuTensor) -> Result<WgpuTensor> {
        check_same_shape("mul", &x.shape, &y.shape)?;
        self.elementwise(
            "mul",
            &x.shape,
            ElemParams::default(),
            &[&x.buffer, &y.buffer],
        )
    }

    fn masked_blend(
        &self,
        x: &WgpuTensor,
        y: &WgpuTensor,
        mask: &WgpuTensor,
    ) -> Result<WgpuTensor> {
        check_same_shape("masked_blend", &x.shape, &y.shape)?;
        let broadcast = mask.shape != x.shape;
        if broadcast {
            check_same_shape("masked_blend (mask)", &x.shape.with_batch(1)?, &mask.shape)?;
        }
        self.elementwise(
            "masked_blend",
            &x.shape,
            ElemParams {
                mask_n: mask.shape.numel() as u32,
                ..Default::default()
            },
            &[&x.buffer, &y.buffer, &mask.buffer],
        )
    }

    fn sample_dot(&self, x: &WgpuTensor, y: &WgpuTensor) -> Result<Vec<f64>> {
        check_same_shape("sample_dot", &x.shape, &y.shape)?;
        self.reduce("sample_dot", &x.shape, 0.0, 0.0, &[&x.buffer, &y.buffer])
    }

    fn sample_scaled_rms(
        &self,
        err: &WgpuTensor,
        y0: &WgpuTensor,
        y1: &WgpuTensor,
        atol: f64,
        rtol: f64,
    ) -> Result<Vec<f64>> {
        check_same_shape("sample_scaled_rms", &err.shape, &y0.shape)?;
        check_same_shape("sample_scaled_rms", &err.shape, &y1.shape)?;
        let d = err.shape.sample_numel() as f64;
        let sums = self.reduce(
            "sample_scaled_rms",
            &err.shape,
            atol as f32,
            rtol as f32,
            &[&err.buffer, &y0.buffer, &y1.buffer],
        )?;
        Ok(sums.into_iter().map(|s| (s / d).sqrt()).collect())
    }

    fn gaussian(&self, shape: &Shape, key: NoiseKey) -> Result<WgpuTensor> {
        self.fill("rng_gaussian", shape, key)
    }

    fn uniform(&self, shape: &Shape, key: NoiseKey) -> Result<WgpuTensor> {
        self.fill("rng_uniform", shape, key)
    }

    fn rademacher(&self, shape: &Shape, key: NoiseKey) -> Result<WgpuTensor> {
        self.fill("rng_rademacher", shape, key)
    }

    fn check_finite(&self, x: &WgpuTensor, what: &str) -> Result<()> {
        let n = self.elems("check_finite", &x.shape)?;
        let first = self
            .ctx
            .storage_from("first non-finite", bytemuck::bytes_of(&u32::MAX))
            .map_err(gpu)?;
        let grid = self
            .ctx
            .grid_1d("first_nonfinite", u64::from(n))
            .map_err(gpu)?;
        self.ctx
            .dispatch(
                "first_nonfinite",
                &ReduceParams {
                    d: n,
                    ..Default::default()
                },
                &[&x.buffer, &first],
                grid,
            )
            .map_err(gpu)?;
        let bytes = self.ctx.read_back(&first, 0, 4).map_err(gpu)?;
        let index: u32 = bytemuck::pod_read_unaligned(&bytes);
        if index == u32::MAX {
            return Ok(());
        }
        let bytes = self
            .ctx
            .read_back(&x.buffer, u64::from(index) * 4, 4)
            .map_err(gpu)?;
        let value: f32 = bytemuck::pod_read_unaligned(&bytes);
        Err(Error::NonFinite {
            what: what.to_string(),
            index: index as usize,
            value: f64::from(value),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::index_runs;

    #[test]
    fn runs_of_consecutive_indices() {
        assert_eq!(index_runs(&[0]), [(0, 0, 1)]);
        assert_eq!(index_runs(&[0, 1, 2, 3]), [(0, 0, 4)]);
        assert_eq!(
            index_runs(&[4, 0, 2, 3, 1, 7, 8]),
            [(0, 4, 1), (1, 0, 1), (2, 2, 2), (4, 1, 1), (5, 7, 2)]
        );
        assert_eq!(index_runs(&[3, 2, 1]), [(0, 3, 1), (1, 2, 1), (2, 1, 1)]);
    }
}
