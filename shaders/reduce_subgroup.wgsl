// reduce_subgroup.wgsl: subgroup versions of the per-sample sum reductions of
// `reduce.wgsl` (score-net::gpu), used when the device has
// `wgpu::Features::SUBGROUP` (`GpuContext::has_subgroups`).
//
// Kernels: `sample_dot_sg` (partial sums of x*y), `sample_scaled_rms_sg`
// (partial sums of (err / (atol + rtol * max(|y0|, |y1|)))^2). Same bindings,
// `Params`, grid and output as `sample_dot` / `sample_scaled_rms`: workgroup
// (chunk, sample) sums CHUNK = 1024 elements of one sample (4 per thread,
// strided by 256) into one f32 at `partial[sample * chunks + chunk]`; the host
// adds the partials in f64. Plain-Rust reference: `sde_core::CpuBackend`.
//
// Instead of the 8-step shared-memory tree, each subgroup adds its threads'
// sums with `subgroupAdd`, one value per subgroup goes to shared memory
// (slot `subgroup_id`), and after one barrier every subgroup adds those
// `num_subgroups` values (strided over its invocations, then `subgroupAdd`
// again; every subgroup does it, so the subgroup operations stay in uniform
// control flow) and thread 0 stores the result. Any subgroup size works (1 to
// 256; none is assumed). Only compiled on devices with the feature: this file
// fails validation without naga's SUBGROUP capability. No `enable subgroups;`
// directive: naga 30 rejects it as not yet implemented and accepts the
// subgroup built-ins without it.

struct Params {
    // Elements per sample.
    d: u32,
    // Chunks (workgroups) per sample; the partial of (chunk, sample) lands at
    // `sample * chunks + chunk`.
    chunks: u32,
    // sample_scaled_rms_sg: absolute tolerance.
    atol: f32,
    // sample_scaled_rms_sg: relative tolerance.
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

// One slot per subgroup (at most 256 subgroups of 1 invocation).
var<workgroup> sg_sums: array<f32, 256>;

// The invocation ids of one thread, as the entry points receive them.
struct Ids {
    lid: u32,
    sg_id: u32,
    num_sg: u32,
    sg_lane: u32,
    sg_size: u32,
}

fn subgroup_reduce(ids: Ids, slot: u32, v: f32) {
    let s = subgroupAdd(v);
    if (ids.sg_lane == 0u) {
        sg_sums[ids.sg_id] = s;
    }
    workgroupBarrier();
    var acc = 0.0;
    for (var i = ids.sg_lane; i < ids.num_sg; i = i + ids.sg_size) {
        acc = acc + sg_sums[i];
    }
    let total = subgroupAdd(acc);
    if (ids.lid == 0u) {
        partial[slot] = total;
    }
}

@compute @workgroup_size(256)
fn sample_dot_sg(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) num_sg: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_size) sg_size: u32,
) {
    let base = wid.y * p.d;
    let start = wid.x * CHUNK;
    var acc = 0.0;
    for (var k = 0u; k < PER_THREAD; k = k + 1u) {
        let j = start + k * WG + lid;
        if (j < p.d) {
            acc = acc + x[base + j] * y[base + j];
        }
    }
    subgroup_reduce(Ids(lid, sg_id, num_sg, sg_lane, sg_size), wid.y * p.chunks + wid.x, acc);
}

@compute @workgroup_size(256)
fn sample_scaled_rms_sg(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) num_sg: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_size) sg_size: u32,
) {
    let base = wid.y * p.d;
    let start = wid.x * CHUNK;
    var acc = 0.0;
    for (var k = 0u; k < PER_THREAD; k = k + 1u) {
        let j = start + k * WG + lid;
        if (j < p.d) {
            let scale = p.atol + p.rtol * max(abs(y[base + j]), abs(z[base + j]));
            let r = x[base + j] / scale;
            acc = acc + r * r;
        }
    }
    subgroup_reduce(Ids(lid, sg_id, num_sg, sg_lane, sg_size), wid.y * p.chunks + wid.x, acc);
}
