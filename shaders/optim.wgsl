// optim.wgsl: the optimiser updates over the flat parameter buffer
// (score-net::gpu). Plain-Rust reference: `score_net::cpu::optim`, whose
// f32 operation order these kernels follow (a driver may fuse a
// multiply-add: about one ulp per operation).
//
// Kernels: `adam_update` (in place on params, m, v), `ema_update` (in place
// on the shadow). One thread per element, 256 per workgroup, 2-D grids for
// large buffers (flat index `gid.x + gid.y * num_workgroups.x * 256`).
// The squared global norm uses `sample_dot` of reduce.wgsl.

struct Params {
    n: u32,
    grad_scale: f32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    step_size: f32,
    inv_bias2: f32,
    eps: f32,
    // ema_update: 1 - decay.
    one_minus_decay: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> params: array<f32>;
@group(0) @binding(2) var<storage, read> grads: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;
// ema_update: the averaged parameters (params is read only there).
@group(0) @binding(5) var<storage, read_write> shadow: array<f32>;
@group(0) @binding(6) var<storage, read> current: array<f32>;

fn flat_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

@compute @workgroup_size(256)
fn adam_update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.n) {
        return;
    }
    let g = grads[i] * p.grad_scale;
    let mi = p.beta1 * m[i] + p.one_minus_beta1 * g;
    let vi = p.beta2 * v[i] + p.one_minus_beta2 * g * g;
    m[i] = mi;
    v[i] = vi;
    params[i] = params[i] - p.step_size * mi / (sqrt(vi * p.inv_bias2) + p.eps);
}

@compute @workgroup_size(256)
fn ema_update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.n) {
        return;
    }
    shadow[i] = shadow[i] - p.one_minus_decay * (shadow[i] - current[i]);
}
