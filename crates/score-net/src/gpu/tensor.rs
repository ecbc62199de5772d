//! [`WgpuTensor`]: a batch of `f32` samples in a wgpu storage buffer. Cloning
//! is cheap (the buffer handle is reference-counted) and shares the storage;
//! backend ops never write into their inputs, so sharing is safe. The
//! storage returns to the context's buffer pool when the last clone drops.

use sde_core::Shape;

use super::context::PooledBuffer;

/// An `f32` tensor in device memory: a storage buffer of at least
/// `shape.numel()` elements (pooled buffers are rounded up to a size class).
#[derive(Clone)]
pub struct WgpuTensor {
    pub(crate) buffer: PooledBuffer,
    pub(crate) shape: Shape,
}

impl WgpuTensor {
    /// The shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The storage buffer (for custom kernels).
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Size of the data in bytes.
    pub fn bytes(&self) -> u64 {
        self.shape.numel() as u64 * 4
    }
}

impl std::fmt::Debug for WgpuTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuTensor")
            .field("shape", &self.shape)
            .field("buffer_bytes", &self.buffer.size())
            .finish()
    }
}
