//! [`GpuContext`]: the one owner of the wgpu device and queue, the compiled
//! pipelines (cached by kernel name, with explicit bind-group layouts built
//! from the generated kernel table) and the pending command encoder.
//!
//! Work is batched: [`GpuContext::dispatch`] records a compute pass into the
//! pending encoder, and the encoder is submitted only when the host needs data
//! ([`GpuContext::read_back`]), on [`GpuContext::sync`] /
//! [`GpuContext::flush`], or after [`MAX_PENDING_DISPATCHES`] dispatches.
//! wgpu keeps every buffer a recorded pass uses alive until the GPU is done
//! with it, so temporaries may be dropped right after recording.
//!
//! Allocation is cheap in steady state: tensor storage comes from a
//! [`BufferPool`] (a dropped tensor's buffer is reused by the next tensor of
//! the same size class; safe because every kernel runs on the one queue in
//! recording order), and kernel parameters are written into one uniform
//! arena per pending encoder, bound at an offset, instead of a new uniform
//! buffer per dispatch.
//!
//! Subgroups: the device is created with `wgpu::Features::SUBGROUP` when the
//! adapter offers it, and then the reductions use the subgroup kernels of
//! `shaders/reduce_subgroup.wgsl` ([`GpuContext::has_subgroups`]). Setting the
//! environment variable [`NO_SUBGROUPS_ENV`] (`SCORE_NET_NO_SUBGROUPS=1`)
//! forces the shared-memory fallback, as does
//! [`GpuContext::set_subgroups_enabled`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::kernels::KERNELS;
use crate::error::GpuError;

/// Threads per workgroup of the 1-D kernels (the WGSL files use the same).
pub const WORKGROUP: u32 = 256;

/// Dispatches recorded before the pending encoder is submitted on its own.
///
/// Large enough that a whole forward and backward pass of the reference
/// UNet (285 dispatches forward and 642 backward, counted with
/// [`GpuContext::dispatch_count`]) goes into one encoder.
pub const MAX_PENDING_DISPATCHES: usize = 2048;

/// Environment variable that, set to anything but empty or `0`, disables the
/// subgroup kernels (the shared-memory fallback runs even where the device has
/// subgroups). Read when a context is created.
pub const NO_SUBGROUPS_ENV: &str = "SCORE_NET_NO_SUBGROUPS";

/// Bytes of the uniform arena: one slot of up to 256 bytes per pending dispatch.
const UNIFORM_ARENA_BYTES: u64 = 256 * MAX_PENDING_DISPATCHES as u64;

/// Pooled buffers are sized in multiples of this many bytes (their size class).
pub const POOL_GRANULE: u64 = 256;

/// Default cap on the bytes the pool keeps idle (more are freed on drop).
pub const DEFAULT_POOL_BYTES: u64 = 1 << 30;

/// Idle storage buffers by size class, reused for new tensors.
///
/// A tensor's buffer returns here when its last handle drops; the next
/// request of the same class takes it instead of allocating. Work reaches the
/// device in recording order on one queue, so a kernel recorded later that
/// overwrites a reused buffer runs after every earlier reader of it.
/// Reused buffers hold stale data: kernels write every output element.
#[derive(Debug)]
pub struct BufferPool {
    state: Mutex<PoolState>,
}

#[derive(Debug, Default)]
struct PoolState {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    idle_bytes: u64,
    cap_bytes: u64,
    hits: u64,
    misses: u64,
}

/// Counters of the [`BufferPool`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Requests served from the pool.
    pub hits: u64,
    /// Requests that allocated a new buffer.
    pub misses: u64,
    /// Bytes held idle in the pool now.
    pub idle_bytes: u64,
    /// Cap on idle bytes.
    pub cap_bytes: u64,
}

impl BufferPool {
    fn new(cap_bytes: u64) -> Self {
        BufferPool {
            state: Mutex::new(PoolState {
                cap_bytes,
                ..Default::default()
            }),
        }
    }

    fn take(&self, class: u64) -> Option<wgpu::Buffer> {
        let mut st = lock(&self.state);
        let found = st.free.get_mut(&class).and_then(Vec::pop);
        match &found {
            Some(_) => {
                st.hits += 1;
                st.idle_bytes -= class;
            }
            None => st.misses += 1,
        }
        found
    }

    fn give_back(&self, buffer: wgpu::Buffer) {
        let class = buffer.size();
        let mut st = lock(&self.state);
        if st.idle_bytes + class <= st.cap_bytes {
            st.idle_bytes += class;
            st.free.entry(class).or_default().push(buffer);
        }
    }

    /// Frees every idle buffer.
    pub fn trim(&self) {
        let mut st = lock(&self.state);
        st.free.clear();
        st.idle_bytes = 0;
    }

    /// The counters.
    pub fn stats(&self) -> PoolStats {
        let st = lock(&self.state);
        PoolStats {
            hits: st.hits,
            misses: st.misses,
            idle_bytes: st.idle_bytes,
            cap_bytes: st.cap_bytes,
        }
    }
}

/// A storage buffer that goes back to its [`BufferPool`] when the last
/// handle (clone) drops. Dereferences to the `wgpu::Buffer`.
#[derive(Clone, Debug)]
pub struct PooledBuffer(Arc<PoolSlot>);

#[derive(Debug)]
struct PoolSlot {
    buffer: Option<wgpu::Buffer>,
    pool: Weak<BufferPool>,
}

impl Drop for PoolSlot {
    fn drop(&mut self) {
        if let (Some(buffer), Some(pool)) = (self.buffer.take(), self.pool.upgrade()) {
            pool.give_back(buffer);
        }
    }
}

impl std::ops::Deref for PooledBuffer {
    type Target = wgpu::Buffer;

    fn deref(&self) -> &wgpu::Buffer {
        // Only `Drop` takes the buffer out.
        self.0
            .buffer
            .as_ref()
            .unwrap_or_else(|| unreachable!("pooled buffer used after drop"))
    }
}

/// The kind of one binding of a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindingKind {
    /// `var<uniform>`: the kernel's parameter struct.
    Uniform,
    /// `var<storage, read>`.
    StorageRead,
    /// `var<storage, read_write>`.
    StorageReadWrite,
}

/// One binding (group 0) that a kernel's entry point uses.
#[derive(Clone, Copy, Debug)]
pub struct BindingSpec {
    /// The `@binding` index.
    pub binding: u32,
    /// Uniform or storage, and the access mode.
    pub kind: BindingKind,
}

/// One row of the generated kernel table ([`super::kernels::KERNELS`]).
#[derive(Clone, Copy, Debug)]
pub struct KernelSpec {
    /// The kernel's name (its entry point; unique across files).
    pub name: &'static str,
    /// The WGSL file under `shaders/`.
    pub file: &'static str,
    /// The entry point.
    pub entry: &'static str,
    /// The file's WGSL source.
    pub source: &'static str,
    /// `@workgroup_size`.
    pub workgroup_size: [u32; 3],
    /// The kernel uses subgroup operations (its file is `*_subgroup.wgsl`):
    /// it compiles only on devices with `wgpu::Features::SUBGROUP`.
    pub subgroups: bool,
    /// The bindings the entry point uses, sorted by index.
    pub bindings: &'static [BindingSpec],
}

impl KernelSpec {
    /// Looks a kernel up by name.
    pub fn find(name: &str) -> Result<&'static KernelSpec, GpuError> {
        KERNELS
            .iter()
            .find(|k| k.name == name)
            .ok_or_else(|| GpuError::UnknownKernel(name.to_string()))
    }

    /// Number of storage bindings (the buffers a dispatch passes).
    pub fn storage_count(&self) -> usize {
        self.bindings
            .iter()
            .filter(|b| b.kind != BindingKind::Uniform)
            .count()
    }
}

/// A compiled kernel: pipeline plus its explicit bind-group layout.
struct Pipeline {
    spec: &'static KernelSpec,
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

/// The encoder that collects dispatches until the next submit, and the
/// kernel parameters its dispatches read from the uniform arena.
struct Pending {
    encoder: Option<wgpu::CommandEncoder>,
    dispatches: usize,
    uniforms: Vec<u8>,
}

/// Owns the wgpu device and queue, the pipeline cache and the pending encoder.
pub struct GpuContext {
    adapter: wgpu::Adapter,
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    /// The device was created with `wgpu::Features::SUBGROUP`.
    subgroup_feature: bool,
    /// The subgroup kernels are in use (only ever true with the feature).
    use_subgroups: AtomicBool,
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<&'static str, Arc<Pipeline>>>,
    pending: Mutex<Pending>,
    dispatched: std::sync::atomic::AtomicU64,
    arena: wgpu::Buffer,
    uniform_align: u64,
    pool: Arc<BufferPool>,
    fault: Arc<Mutex<Option<GpuError>>>,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.describe())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind
    // (maps, an encoder); keep going rather than poisoning every later call.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

impl GpuContext {
    /// Creates a context from the environment: `WGPU_BACKEND` picks the
    /// backends (default: all compiled in), `WGPU_ADAPTER_NAME` filters adapters
    /// by a case-insensitive name substring. Among the remaining adapters a
    /// real GPU wins (discrete, then integrated, then virtual, then CPU).
    pub fn new() -> Result<Self, GpuError> {
        let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
        let filter = std::env::var("WGPU_ADAPTER_NAME")
            .ok()
            .filter(|s| !s.is_empty());
        Self::with_options(backends, filter.as_deref())
    }

    /// Creates a context on `backends`, optionally restricted to adapters
    /// whose name contains `name_filter` (case-insensitive).
    pub fn with_options(
        backends: wgpu::Backends,
        name_filter: Option<&str>,
    ) -> Result<Self, GpuError> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle().with_env();
        desc.backends = backends;
        let instance = wgpu::Instance::new(desc);
        let adapters = pollster::block_on(instance.enumerate_adapters(backends));
        let seen: Vec<String> = adapters
            .iter()
            .map(|a| {
                let i = a.get_info();
                format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)
            })
            .collect();
        let wanted = name_filter.map(str::to_lowercase);
        let adapter = adapters
            .into_iter()
            .filter(|a| {
                wanted
                    .as_ref()
                    .is_none_or(|w| a.get_info().name.to_lowercase().contains(w))
            })
            .min_by_key(|a| rank(a.get_info().device_type))
            .ok_or_else(|| GpuError::NoAdapter {
                backends: format!("{backends:?}"),
                filter: name_filter.unwrap_or("none").to_string(),
                seen: if seen.is_empty() {
                    "none".into()
                } else {
                    seen.join(", ")
                },
            })?;
        Self::from_adapter(adapter)
    }

    /// Creates the device on `adapter` with the adapter's own limits, and with
    /// `wgpu::Features::SUBGROUP` when the adapter offers it (the subgroup
    /// kernels are then used unless [`NO_SUBGROUPS_ENV`] is set).
    pub fn from_adapter(adapter: wgpu::Adapter) -> Result<Self, GpuError> {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let features = adapter.features() & wgpu::Features::SUBGROUP;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("score-net"),
            required_features: features,
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| GpuError::RequestDevice {
            adapter: info.name.clone(),
            reason: e.to_string(),
        })?;
        let fault: Arc<Mutex<Option<GpuError>>> = Arc::new(Mutex::new(None));
        {
            let fault = fault.clone();
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                let mut f = lock(&fault);
                if f.is_none() {
                    *f = Some(GpuError::Device(e.to_string()));
                }
            }));
        }
        {
            let fault = fault.clone();
            device.set_device_lost_callback(move |reason, msg| {
                let mut f = lock(&fault);
                if f.is_none() {
                    *f = Some(GpuError::DeviceLost(format!("{reason:?}: {msg}")));
                }
            });
        }
        let arena = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("uniform arena"),
            size: UNIFORM_ARENA_BYTES,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let uniform_align = u64::from(limits.min_uniform_buffer_offset_alignment).max(16);
        let subgroup_feature = device.features().contains(wgpu::Features::SUBGROUP);
        let disabled = std::env::var(NO_SUBGROUPS_ENV).is_ok_and(|v| !v.is_empty() && v != "0");
        Ok(GpuContext {
            adapter,
            device,
            queue,
            info,
            limits,
            subgroup_feature,
            use_subgroups: AtomicBool::new(subgroup_feature && !disabled),
            modules: Mutex::new(HashMap::new()),
            pipelines: Mutex::new(HashMap::new()),
            pending: Mutex::new(Pending {
                encoder: None,
                dispatches: 0,
                uniforms: Vec::with_capacity(UNIFORM_ARENA_BYTES as usize),
            }),
            dispatched: std::sync::atomic::AtomicU64::new(0),
            arena,
            uniform_align,
            pool: Arc::new(BufferPool::new(DEFAULT_POOL_BYTES)),
            fault,
        })
    }

    /// `name (backend, device type, driver driver_info, subgroups ...)`, for
    /// logs; the last part says whether the subgroup kernels are in use, with
    /// the adapter's subgroup size range, or why not.
    pub fn describe(&self) -> String {
        let i = &self.info;
        let subgroups = if self.has_subgroups() {
            format!(
                "subgroups {}..={}",
                i.subgroup_min_size, i.subgroup_max_size
            )
        } else if self.subgroup_feature {
            format!(
                "subgroups {}..={} disabled",
                i.subgroup_min_size, i.subgroup_max_size
            )
        } else {
            "no subgroups".to_string()
        };
        format!(
            "{} ({:?}, {:?}, driver {} {}, {subgroups})",
            i.name, i.backend, i.device_type, i.driver, i.driver_info
        )
    }

    /// Whether the subgroup kernels are in use: the device has
    /// `wgpu::Features::SUBGROUP`, and neither [`NO_SUBGROUPS_ENV`] nor
    /// [`Self::set_subgroups_enabled`] turned them off. When false, the
    /// reductions run their shared-memory fallback.
    pub fn has_subgroups(&self) -> bool {
        self.use_subgroups.load(Ordering::Relaxed)
    }

    /// Whether the device has `wgpu::Features::SUBGROUP` (whatever
    /// [`Self::has_subgroups`] says).
    pub fn subgroups_supported(&self) -> bool {
        self.subgroup_feature
    }

    /// Turns the subgroup kernels on or off (on only takes effect where the
    /// device supports them); returns [`Self::has_subgroups`] afterwards.
    /// Work already recorded is unaffected.
    pub fn set_subgroups_enabled(&self, enabled: bool) -> bool {
        let on = enabled && self.subgroup_feature;
        self.use_subgroups.store(on, Ordering::Relaxed);
        on
    }

    /// The adapter's information.
    pub fn info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// The adapter.
    pub fn adapter(&self) -> &wgpu::Adapter {
        &self.adapter
    }

    /// The device's limits (the adapter's).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// The device.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The largest storage buffer a kernel can bind, in bytes.
    pub fn max_binding_bytes(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    /// Fails with [`GpuError::TooLarge`] when `bytes` exceed [`Self::max_binding_bytes`].
    pub fn check_binding_size(&self, what: &str, bytes: u64) -> Result<(), GpuError> {
        let limit = self.max_binding_bytes();
        if bytes > limit {
            return Err(GpuError::TooLarge {
                what: what.to_string(),
                bytes,
                limit,
                limit_name: if limit == self.limits.max_buffer_size {
                    "max_buffer_size"
                } else {
                    "max_storage_buffer_binding_size"
                },
            });
        }
        Ok(())
    }

    /// Returns (and keeps) the first asynchronous error wgpu reported.
    pub fn check_fault(&self) -> Result<(), GpuError> {
        match &*lock(&self.fault) {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// The first asynchronous error wgpu reported (say, a lost device),
    /// which explains a later failure better than the failure itself, or
    /// else `e`.
    fn fault_or(&self, e: GpuError) -> GpuError {
        // Let wgpu run pending callbacks (the device-lost one) first; a
        // failing poll says no more than `e` does.
        let _ = self.device.poll(wgpu::PollType::Poll);
        self.check_fault().err().unwrap_or(e)
    }

    /// The pool tensor storage comes from.
    pub fn pool(&self) -> &Arc<BufferPool> {
        &self.pool
    }

    fn pooled(&self, buffer: wgpu::Buffer) -> PooledBuffer {
        PooledBuffer(Arc::new(PoolSlot {
            buffer: Some(buffer),
            pool: Arc::downgrade(&self.pool),
        }))
    }

    fn storage_desc(label: &str, size: u64, mapped: bool) -> wgpu::BufferDescriptor<'_> {
        wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: mapped,
        }
    }

    /// A storage buffer of at least `bytes` from the pool (size rounded up to
    /// [`POOL_GRANULE`]). Its contents are unspecified (stale data of an
    /// earlier tensor, or zeros): the caller must write all of it.
    pub fn pooled_buffer(&self, label: &str, bytes: u64) -> Result<PooledBuffer, GpuError> {
        self.check_binding_size(label, bytes)?;
        let class = bytes.max(4).next_multiple_of(POOL_GRANULE);
        let buffer = match self.pool.take(class) {
            Some(b) => b,
            None => self
                .device
                .create_buffer(&Self::storage_desc(label, class, false)),
        };
        Ok(self.pooled(buffer))
    }

    /// A pooled storage buffer holding `contents` (a new allocation, which
    /// joins the pool when dropped).
    pub fn pooled_from(&self, label: &str, contents: &[u8]) -> Result<PooledBuffer, GpuError> {
        self.check_binding_size(label, contents.len() as u64)?;
        let class = (contents.len() as u64)
            .max(4)
            .next_multiple_of(POOL_GRANULE);
        Ok(self.pooled(self.mapped_from(label, class, contents)?))
    }

    /// A storage buffer of `size` bytes (at least `contents.len()`) created
    /// mapped, with `contents` at its start. Not `create_buffer_init`, which
    /// panics when the device is lost: a mapping failure is a `GpuError`
    /// (the recorded fault, when there is one).
    fn mapped_from(
        &self,
        label: &str,
        size: u64,
        contents: &[u8],
    ) -> Result<wgpu::Buffer, GpuError> {
        let buffer = self
            .device
            .create_buffer(&Self::storage_desc(label, size, true));
        {
            let mut view = buffer
                .get_mapped_range_mut(..)
                .map_err(|e| self.fault_or(GpuError::Map(e.to_string())))?;
            view.slice(..contents.len()).copy_from_slice(contents);
        }
        buffer.unmap();
        Ok(buffer)
    }

    /// A zero-initialised storage buffer of `bytes`, rounded up to a multiple
    /// of 16 (kernels may bind any buffer as an array of `vec4`s).
    pub fn storage_buffer(&self, label: &str, bytes: u64) -> Result<wgpu::Buffer, GpuError> {
        self.check_binding_size(label, bytes)?;
        Ok(self.device.create_buffer(&Self::storage_desc(
            label,
            bytes.max(16).next_multiple_of(16),
            false,
        )))
    }

    /// A storage buffer holding `contents` (at least 4 bytes).
    pub fn storage_from(&self, label: &str, contents: &[u8]) -> Result<wgpu::Buffer, GpuError> {
        self.check_binding_size(label, contents.len() as u64)?;
        if contents.is_empty() {
            return self.storage_buffer(label, 4);
        }
        self.check_fault()?;
        self.mapped_from(
            label,
            (contents.len() as u64).next_multiple_of(16),
            contents,
        )
    }

    fn module(&self, spec: &'static KernelSpec) -> wgpu::ShaderModule {
        lock(&self.modules)
            .entry(spec.file)
            .or_insert_with(|| {
                self.device
                    .create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(spec.file),
                        source: wgpu::ShaderSource::Wgsl(Cow::Borrowed(spec.source)),
                    })
            })
            .clone()
    }

    fn pipeline(&self, name: &str) -> Result<Arc<Pipeline>, GpuError> {
        let spec = KernelSpec::find(name)?;
        if let Some(p) = lock(&self.pipelines).get(spec.name) {
            return Ok(p.clone());
        }
        if spec.subgroups && !self.subgroup_feature {
            return Err(GpuError::Device(format!(
                "kernel {} uses subgroup operations, which {} does not support",
                spec.name, self.info.name
            )));
        }
        let entries: Vec<wgpu::BindGroupLayoutEntry> = spec
            .bindings
            .iter()
            .map(|b| wgpu::BindGroupLayoutEntry {
                binding: b.binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match b.kind {
                        BindingKind::Uniform => wgpu::BufferBindingType::Uniform,
                        BindingKind::StorageRead => {
                            wgpu::BufferBindingType::Storage { read_only: true }
                        }
                        BindingKind::StorageReadWrite => {
                            wgpu::BufferBindingType::Storage { read_only: false }
                        }
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(spec.name),
                entries: &entries,
            });
        let pipeline_layout = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(spec.name),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let module = self.module(spec);
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(spec.name),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(spec.entry),
                compilation_options: Default::default(),
                cache: None,
            });
        let p = Arc::new(Pipeline {
            spec,
            pipeline,
            layout,
        });
        lock(&self.pipelines).insert(spec.name, p.clone());
        Ok(p)
    }

    /// Compiles every kernel of the table now (otherwise each compiles on
    /// first use), except the subgroup kernels when [`Self::has_subgroups`]
    /// is false.
    pub fn warm_up(&self) -> Result<(), GpuError> {
        for k in KERNELS {
            if k.subgroups && !self.has_subgroups() {
                continue;
            }
            self.pipeline(k.name)?;
        }
        self.check_fault()
    }

    /// Dispatches recorded since the context was created (for profiling).
    pub fn dispatch_count(&self) -> u64 {
        self.dispatched.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Number of kernels compiled so far.
    pub fn cached_pipelines(&self) -> usize {
        lock(&self.pipelines).len()
    }

    /// Whether the kernel `name` has been compiled (used, or warmed up).
    pub fn is_compiled(&self, name: &str) -> bool {
        lock(&self.pipelines).contains_key(name)
    }

    /// A grid of `[x, y, 1]` workgroups covering `threads` threads of a 1-D
    /// kernel ([`WORKGROUP`] wide), 2-D when `x` would exceed the per-dimension
    /// limit; kernels compute the flat index `gid.x + gid.y * num_workgroups.x * WORKGROUP`.
    pub fn grid_1d(&self, what: &str, threads: u64) -> Result<[u32; 3], GpuError> {
        let groups = threads.div_ceil(u64::from(WORKGROUP)).max(1);
        let max = u64::from(self.limits.max_compute_workgroups_per_dimension);
        let x = groups.min(max);
        let y = groups.div_ceil(x);
        if y > max {
            return Err(GpuError::TooLarge {
                what: format!("{what} (workgroups)"),
                bytes: groups,
                limit: max * max,
                limit_name: "max_compute_workgroups_per_dimension squared",
            });
        }
        Ok([x as u32, y as u32, 1])
    }

    /// Checks a 2-D or 3-D grid against the per-dimension workgroup limit.
    pub fn check_grid(&self, what: &str, grid: [u32; 3]) -> Result<(), GpuError> {
        let max = self.limits.max_compute_workgroups_per_dimension;
        match grid.iter().find(|&&g| g > max) {
            Some(&g) => Err(GpuError::TooLarge {
                what: format!("{what} (workgroups in one dimension)"),
                bytes: u64::from(g),
                limit: u64::from(max),
                limit_name: "max_compute_workgroups_per_dimension",
            }),
            None => Ok(()),
        }
    }

    /// Records one dispatch of `kernel` into the pending encoder.
    ///
    /// `params` fills the kernel's uniform binding (if it has one; a `Pod`
    /// struct laid out like the WGSL `Params`, a multiple of 16 bytes);
    /// `buffers` go to its storage bindings in binding order.
    pub fn dispatch<P: bytemuck::Pod>(
        &self,
        kernel: &'static str,
        params: &P,
        buffers: &[&wgpu::Buffer],
        grid: [u32; 3],
    ) -> Result<(), GpuError> {
        let pipe = self.pipeline(kernel)?;
        let spec = pipe.spec;
        if buffers.len() != spec.storage_count() {
            return Err(GpuError::Bindings {
                kernel: spec.name,
                expected: spec.storage_count(),
                got: buffers.len(),
            });
        }
        self.check_grid(kernel, grid)?;
        let params = bytemuck::bytes_of(params);
        let uses_uniform = spec.bindings.iter().any(|b| b.kind == BindingKind::Uniform);
        if uses_uniform && (params.is_empty() || params.len() > 256 || params.len() % 16 != 0) {
            return Err(GpuError::Device(format!(
                "kernel {kernel}: parameter struct of {} bytes (must be 16..=256, a multiple of 16)",
                params.len()
            )));
        }
        // Hold the pending lock from reserving the uniform slot to recording,
        // so the slot belongs to the encoder the dispatch goes into.
        let mut pending = lock(&self.pending);
        if uses_uniform && pending.uniforms.len() as u64 + params.len() as u64 > UNIFORM_ARENA_BYTES
        {
            self.submit_pending(&mut pending);
        }
        let uniform_offset = pending.uniforms.len() as u64;
        if uses_uniform {
            pending.uniforms.extend_from_slice(params);
            let end = (pending.uniforms.len() as u64).next_multiple_of(self.uniform_align);
            pending.uniforms.resize(end as usize, 0);
        }
        let mut storage = buffers.iter();
        let mut entries = Vec::with_capacity(spec.bindings.len());
        for b in spec.bindings {
            let resource = if b.kind == BindingKind::Uniform {
                wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &self.arena,
                    offset: uniform_offset,
                    size: wgpu::BufferSize::new(params.len() as u64),
                })
            } else {
                storage
                    .next()
                    .copied()
                    .ok_or(GpuError::Bindings {
                        kernel: spec.name,
                        expected: spec.storage_count(),
                        got: buffers.len(),
                    })?
                    .as_entire_binding()
            };
            entries.push(wgpu::BindGroupEntry {
                binding: b.binding,
                resource,
            });
        }
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel),
            layout: &pipe.layout,
            entries: &entries,
        });
        let flush = {
            let encoder = pending.encoder.get_or_insert_with(|| {
                self.device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("score-net batch"),
                    })
            });
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(kernel),
                    timestamp_writes: None,
                });
                pass.set_pipeline(&pipe.pipeline);
                pass.set_bind_group(0, &bind_group, &[]);
                pass.dispatch_workgroups(grid[0], grid[1], grid[2]);
            }
            pending.dispatches += 1;
            self.dispatched
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            pending.dispatches >= MAX_PENDING_DISPATCHES
        };
        if flush {
            self.submit_pending(&mut pending);
        }
        drop(pending);
        self.check_fault()
    }

    /// Writes the uniform arena and submits the pending encoder (under the
    /// pending lock). The arena write lands before this submission's work
    /// and after every earlier submission's, in queue order.
    fn submit_pending(&self, pending: &mut Pending) {
        pending.dispatches = 0;
        if !pending.uniforms.is_empty() {
            self.queue.write_buffer(&self.arena, 0, &pending.uniforms);
            pending.uniforms.clear();
        }
        if let Some(encoder) = pending.encoder.take() {
            self.queue.submit([encoder.finish()]);
        }
    }

    /// Records a buffer-to-buffer copy into the pending encoder (sizes and
    /// offsets in bytes, multiples of 4).
    pub fn copy(
        &self,
        src: &wgpu::Buffer,
        src_offset: u64,
        dst: &wgpu::Buffer,
        dst_offset: u64,
        bytes: u64,
    ) {
        let mut pending = lock(&self.pending);
        let encoder = pending.encoder.get_or_insert_with(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("score-net batch"),
                })
        });
        encoder.copy_buffer_to_buffer(src, src_offset, dst, dst_offset, bytes);
    }

    /// Submits the pending encoder, if any.
    pub fn flush(&self) -> Result<(), GpuError> {
        // Submit under the lock: a thread that finds no pending encoder must
        // know that everything recorded before has reached the queue (a
        // read-back maps its staging buffer right after flushing).
        self.submit_pending(&mut lock(&self.pending));
        self.check_fault()
    }

    /// Submits pending work and waits until the device has finished it.
    pub fn sync(&self) -> Result<(), GpuError> {
        self.flush()?;
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::Map(e.to_string()))?;
        self.check_fault()
    }

    /// Copies `bytes` bytes from `offset` of `src` to the host (submitting
    /// pending work first and waiting for it).
    pub fn read_back(
        &self,
        src: &wgpu::Buffer,
        offset: u64,
        bytes: u64,
    ) -> Result<Vec<u8>, GpuError> {
        let size = bytes.max(4).next_multiple_of(4);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read-back"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.copy(src, offset, &staging, 0, size);
        self.flush()?;
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            // The receiver lives until after the poll below.
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::Map(e.to_string()))?;
        self.check_fault()?;
        rx.recv()
            .map_err(|_| GpuError::Map("the map callback never ran".into()))?
            .map_err(|e| GpuError::Map(e.to_string()))?;
        let out = {
            let view = staging
                .get_mapped_range(..)
                .map_err(|e| GpuError::Map(e.to_string()))?;
            view[..bytes as usize].to_vec()
        };
        staging.unmap();
        Ok(out)
    }
}
