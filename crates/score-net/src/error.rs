//! Typed errors of the network crate.

/// Errors raised by `score-net`.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// An error from `sde-core` (shapes, backends, non-finite values).
    #[error(transparent)]
    Core(#[from] sde_core::Error),
    /// A layer received a tensor of the wrong rank or size.
    #[error("{op}: {reason}")]
    Shape {
        /// The operation.
        op: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A parameter view lies outside the parameter buffer or has the wrong size.
    #[error("parameter view {name}: {reason}")]
    View {
        /// The view's name (or its offset when unnamed).
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint is corrupt, truncated, or does not match the model.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// An error of the wgpu backend (no adapter, tensor too large, device lost, ...).
    #[error(transparent)]
    Gpu(#[from] GpuError),
    /// A class label outside `0..num_classes`.
    #[error("label {label} of sample {index} is outside 0..{num_classes}")]
    Label {
        /// The sample.
        index: usize,
        /// The label given.
        label: u32,
        /// The number of classes.
        num_classes: usize,
    },
    /// An invalid configuration value.
    #[error("invalid configuration {field} = {value}: {reason}")]
    Config {
        /// The field.
        field: &'static str,
        /// The value given.
        value: String,
        /// Why it is invalid.
        reason: String,
    },
}

/// Errors of the wgpu backend ([`crate::gpu`]).
#[derive(Clone, Debug, thiserror::Error)]
pub enum GpuError {
    /// No adapter matched the requested backends (and name filter).
    #[error(
        "no wgpu adapter found (backends: {backends}; name filter: {filter}; adapters seen: {seen}). \
         On Linux without a GPU install Mesa's software Vulkan driver \
         (`apt-get install mesa-vulkan-drivers libvulkan1`, adapter `llvmpipe`) and set \
         WGPU_BACKEND=vulkan; WGPU_ADAPTER_NAME selects an adapter by name substring"
    )]
    NoAdapter {
        /// The backends searched (from `WGPU_BACKEND`, else all).
        backends: String,
        /// The `WGPU_ADAPTER_NAME` filter, or `none`.
        filter: String,
        /// The adapters found before filtering, or `none`.
        seen: String,
    },
    /// The adapter refused to create a device.
    #[error("could not create a wgpu device on {adapter}: {reason}")]
    RequestDevice {
        /// The adapter's description.
        adapter: String,
        /// The driver's message.
        reason: String,
    },
    /// A buffer would exceed the device's storage-binding or buffer-size limit.
    #[error("{what} needs {bytes} bytes, over the device limit of {limit} bytes ({limit_name})")]
    TooLarge {
        /// What was being allocated or dispatched.
        what: String,
        /// The bytes (or workgroups) required.
        bytes: u64,
        /// The limit.
        limit: u64,
        /// Which limit (`max_storage_buffer_binding_size`, ...).
        limit_name: &'static str,
    },
    /// The device was lost (driver reset, out of memory, destroyed).
    #[error("wgpu device lost: {0}")]
    DeviceLost(String),
    /// Mapping a buffer for read-back failed, or waiting for the device failed.
    #[error("wgpu buffer read-back failed: {0}")]
    Map(String),
    /// wgpu reported a validation or out-of-memory error for recorded work.
    #[error("wgpu error: {0}")]
    Device(String),
    /// A kernel name that is not in the kernel table.
    #[error(
        "unknown kernel {0} (not in score_net::gpu::kernels::KERNELS; run `cargo xtask shaders`)"
    )]
    UnknownKernel(String),
    /// A dispatch supplied the wrong number of buffers for its kernel.
    #[error("kernel {kernel} takes {expected} storage buffer(s), got {got}")]
    Bindings {
        /// The kernel.
        kernel: &'static str,
        /// Storage bindings the kernel uses.
        expected: usize,
        /// Buffers supplied.
        got: usize,
    },
}

/// Result alias for `score-net`.
pub type Result<T, E = NetError> = std::result::Result<T, E>;

impl From<NetError> for sde_core::Error {
    fn from(e: NetError) -> Self {
        match e {
            NetError::Core(c) => c,
            other => sde_core::Error::Model(Box::new(other)),
        }
    }
}

/// Returns [`NetError::Shape`] unless `ok`.
pub(crate) fn ensure_shape(
    ok: bool,
    op: &'static str,
    reason: impl FnOnce() -> String,
) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(NetError::Shape {
            op,
            reason: reason(),
        })
    }
}
