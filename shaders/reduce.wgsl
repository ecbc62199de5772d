// reduce.wgsl: per-sample reductions of the wgpu `Backend` (score-net::gpu).
//
// Kernels: `sample_dot` (partial sums of x*y), `sample_scaled_rms` (partial
// sums of (err / (atol + rtol * max(|y0|, |y1|)))^2, the adaptive-solver error
// norm), `first_nonfinite` (smallest flat index holding a NaN or infinity).
// Plain-Rust reference: `sde_core::CpuBackend` (which accumulates in f64).
//
// The reductions run on a 2-D grid: workgroup (chunk, sample) sums CHUNK =
// 1024 elements of one sample (4 per thread, strided by 256 so loads
// coalesce), then a shared-memory tree reduction of 256 f32 values; the host
// adds the per-chunk partials of each sample in f64. So every f32 sum spans
// at most 1024 products (a rounding error around 1e-6 relative to the sum of
// magnitudes in the worst case, far less in practice).
//
// `reduce_subgroup.wgsl` has subgroup versions of the two sums (`*_sg`), used
// instead of these where the device supports subgroups; these are the fallback.

struct Params {
    // Elements per sample (first_nonfinite: elements in the tensor).
    d: u32,
    // Chunks (workgroups) per sample; the partial of (chunk, sample) lands at
    // `sample * chunks + chunk`.
    chunks: u32,
    // sample_scaled_rms: absolute tolerance.
    atol: f32,
    // sample_scaled_rms: relative tolerance.
    rtol: f32,
}

const WG: u32 = 256u;
const PER_THREAD: u32 = 4u;
const CHUNK: u32 = 1024u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read> z: array<f32>;
@group(0) @binding(4) var<storage, read_write> partial: array<f32>;
@group(0) @binding(5) var<storage, read_write> first_bad: atomic<u32>;

var<workgroup> scratch: array<f32, 256>;

fn tree_reduce(lid: u32, slot: u32, v: f32) {
    scratch[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            scratch[lid] = scratch[lid] + scratch[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        partial[slot] = scratch[0];
    }
}

@compute @workgroup_size(256)
fn sample_dot(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let base = wid.y * p.d;
    let start = wid.x * CHUNK;
    var acc = 0.0;
    for (var k = 0u; k < PER_THREAD; k = k + 1u) {
        let j = start + k * WG + lid.x;
        if (j < p.d) {
            acc = acc + x[base + j] * y[base + j];
        }
    }
    tree_reduce(lid.x, wid.y * p.chunks + wid.x, acc);
}

@compute @workgroup_size(256)
fn sample_scaled_rms(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let base = wid.y * p.d;
    let start = wid.x * CHUNK;
    var acc = 0.0;
    for (var k = 0u; k < PER_THREAD; k = k + 1u) {
        let j = start + k * WG + lid.x;
        if (j < p.d) {
            let scale = p.atol + p.rtol * max(abs(y[base + j]), abs(z[base + j]));
            let r = x[base + j] / scale;
            acc = acc + r * r;
        }
    }
    tree_reduce(lid.x, wid.y * p.chunks + wid.x, acc);
}

@compute @workgroup_size(256)
fn first_nonfinite(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.d) {
        return;
    }
    // Exponent all ones: infinity or NaN (bit test, immune to fast-math folding).
    if ((bitcast<u32>(x[i]) & 0x7f800000u) == 0x7f800000u) {
        atomicMin(&first_bad, i);
    }
}
