// elementwise.wgsl: elementwise kernels of the wgpu `Backend` (score-net::gpu).
//
// Kernels: `fill`, `lincomb` (up to four terms per dispatch with per-sample
// coefficients; longer combinations are chained with `accumulate = 1`),
// `select_samples` (per-sample bitwise copy, so NaNs on the side not taken
// never leak), `mul`, `masked_blend` (mask broadcast over the batch when it
// holds one sample). Plain-Rust reference: `sde_core::CpuBackend`, whose
// evaluation order these kernels follow term by term.
//
// One thread per element, 256 threads per workgroup. When a 1-D grid would
// exceed the per-dimension workgroup limit the host dispatches a 2-D grid;
// the flat index is `gid.x + gid.y * num_workgroups.x * 256`.

struct Params {
    // Elements in the output.
    n: u32,
    // Elements per sample.
    d: u32,
    // lincomb: terms in this dispatch (1..=4).
    nterms: u32,
    // lincomb: 1 adds to `out`, 0 overwrites it.
    accumulate: u32,
    // fill: the value.
    value: f32,
    // lincomb: samples in the batch (stride between the terms' coefficients).
    batch: u32,
    // masked_blend: elements in the mask (`n`, or `d` when broadcast).
    mask_n: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> c: array<f32>;
@group(0) @binding(4) var<storage, read> e: array<f32>;
// lincomb: coefficient of term k for sample s at `k * batch + s`.
@group(0) @binding(5) var<storage, read> coef: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
// select_samples: one flag per sample (non-zero takes `a_bits`).
@group(0) @binding(7) var<storage, read> flags: array<u32>;
@group(0) @binding(8) var<storage, read> a_bits: array<u32>;
@group(0) @binding(9) var<storage, read> b_bits: array<u32>;
@group(0) @binding(10) var<storage, read_write> out_bits: array<u32>;

fn flat_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

@compute @workgroup_size(256)
fn fill(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.n) {
        return;
    }
    out[i] = p.value;
}

@compute @workgroup_size(256)
fn lincomb(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.n) {
        return;
    }
    let s = i / p.d;
    var acc: f32;
    if (p.accumulate != 0u) {
        acc = out[i] + coef[s] * a[i];
    } else {
        acc = coef[s] * a[i];
    }
    if (p.nterms > 1u) {
        acc = acc + coef[p.batch + s] * b[i];
    }
    if (p.nterms > 2u) {
        acc = acc + coef[2u * p.batch + s] * c[i];
    }
    if (p.nterms > 3u) {
        acc = acc + coef[3u * p.batch + s] * e[i];
    }
    out[i] = acc;
}

@compute @workgroup_size(256)
fn select_samples(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.n) {
        return;
    }
    if (flags[i / p.d] != 0u) {
        out_bits[i] = a_bits[i];
    } else {
        out_bits[i] = b_bits[i];
    }
}

@compute @workgroup_size(256)
fn mul(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.n) {
        return;
    }
    out[i] = a[i] * b[i];
}

@compute @workgroup_size(256)
fn masked_blend(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.n) {
        return;
    }
    let m = c[i % p.mask_n];
    out[i] = a[i] * (1.0 - m) + b[i] * m;
}
