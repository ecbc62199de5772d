// net_ops.wgsl: the non-GEMM network primitives of the wgpu `NetBackend`
// (score-net::gpu::net::ops): group norm, SiLU, 2x resampling, channel
// concatenation and slicing, channel biases, token layout, attention.
// Plain-Rust reference: `score_net::cpu::ops`, whose evaluation order the
// elementwise kernels follow (so they agree to about one ulp, or exactly).
// Dropout lives in `rng.wgsl` beside the Philox stream it needs.
//
// Grids:
// - elementwise kernels: one thread per output element, 256 per workgroup; a
//   1-D grid becomes 2-D when large, flat index `gid.x + gid.y * nwg.x * 256`;
// - row kernels (group norm, sum_spatial, softmax rows): one 256-thread
//   workgroup per row (a (sample, group), an (n, c) plane, an attention row),
//   flat workgroup index `wid.x + wid.y * nwg.x`; each thread accumulates a
//   strided slice in f32, then a shared-memory tree reduction (no atomics, so
//   results are deterministic);
// - `attn_matmul`: a batched 16x16-tiled matrix product (shared-memory tiles
//   of both operands) for the attention scores, outputs and gradients.
//
// One `Params` struct serves every kernel; what `d0`..`d10` mean is listed
// at each kernel (the host side is `OpParams` in `gpu/net/ops.rs`).

struct Params {
    // Elements / rows / planes the dispatch covers (bounds check).
    n: u32,
    d0: u32,
    d1: u32,
    d2: u32,
    d3: u32,
    d4: u32,
    d5: u32,
    d6: u32,
    d7: u32,
    d8: u32,
    d9: u32,
    d10: u32,
    // A scale (SiLU none; resampling, attention: the factor applied).
    alpha: f32,
    // Group norm's epsilon.
    eps: f32,
    _pad0: u32,
    _pad1: u32,
}

const WG: u32 = 256u;
const TILE: u32 = 16u;
// The most negative finite f32 (WGSL has no infinity literal).
const F32_LOWEST: f32 = -3.4028235e38;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read> z: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> out2: array<f32>;
@group(0) @binding(6) var<storage, read_write> inout: array<f32>;

var<workgroup> red: array<f32, 256>;
var<workgroup> red2: array<vec2<f32>, 256>;
var<workgroup> tile_a: array<f32, 256>;
var<workgroup> tile_b: array<f32, 256>;

fn flat_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

fn flat_group(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// Sum of `v` over the workgroup (tree reduction); every thread gets it.
fn wg_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            red[lid] = red[lid] + red[lid + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

// Componentwise sum of `v` over the workgroup; every thread gets it.
fn wg_sum2(lid: u32, v: vec2<f32>) -> vec2<f32> {
    red2[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            red2[lid] = red2[lid] + red2[lid + s];
        }
        workgroupBarrier();
    }
    let r = red2[0];
    workgroupBarrier();
    return r;
}

// Maximum of `v` over the workgroup; every thread gets it.
fn wg_max(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

// Mean and 1/sqrt(var + eps) of x[base .. base + m] (two passes, biased
// variance, as the CPU's `moments`).
fn moments(lid: u32, base: u32, m: u32) -> vec2<f32> {
    var s = 0.0;
    for (var i = lid; i < m; i = i + WG) {
        s = s + x[base + i];
    }
    let mean = wg_sum(lid, s) / f32(m);
    var q = 0.0;
    for (var i = lid; i < m; i = i + WG) {
        let d = x[base + i] - mean;
        q = q + d * d;
    }
    let variance = wg_sum(lid, q) / f32(m);
    return vec2<f32>(mean, 1.0 / sqrt(variance + p.eps));
}

// Group norm forward, one workgroup per (sample, group) = row `n` of N*G.
// x = input [N, C, H, W], y = flat parameters, out = output.
// d0 = groups G, d1 = channels per group, d2 = H*W, d3 = gamma offset,
// d4 = beta offset; eps.
@compute @workgroup_size(256)
fn group_norm_fwd(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let slot = flat_group(wid, nwg);
    if (slot >= p.n) {
        return;
    }
    let cg = p.d1;
    let hw = p.d2;
    let gs = cg * hw;
    let base = slot * gs;
    let st = moments(lid, base, gs);
    let c0 = (slot % p.d0) * cg;
    for (var i = lid; i < gs; i = i + WG) {
        let c = c0 + i / hw;
        // (x - mean) first: the CPU's f64 form x * scale + (beta - mean *
        // scale) would cancel catastrophically in f32 when |mean| * rstd is large.
        out[base + i] = (x[base + i] - st.x) * (st.y * y[p.d3 + c]) + y[p.d4 + c];
    }
}

// Group norm backward, one workgroup per (sample, group).
// x = input, y = dy, z = flat parameters, out = dx, out2 = per-(sample,
// channel) partial sums [N*C, 2] of (dgamma, dbeta).
// d0 = groups G, d1 = channels per group, d2 = H*W, d3 = gamma offset; eps.
@compute @workgroup_size(256)
fn group_norm_bwd(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let slot = flat_group(wid, nwg);
    if (slot >= p.n) {
        return;
    }
    let cg = p.d1;
    let hw = p.d2;
    let gs = cg * hw;
    let base = slot * gs;
    let st = moments(lid, base, gs);
    let mean = st.x;
    let rstd = st.y;
    let c0 = (slot % p.d0) * cg;
    // Per channel: dgamma = sum dy * xhat, dbeta = sum dy; and over the
    // group s1 = sum gamma * dbeta, s2 = sum gamma * dgamma.
    var s1 = 0.0;
    var s2 = 0.0;
    for (var ci = 0u; ci < cg; ci = ci + 1u) {
        let cb = base + ci * hw;
        var acc = vec2<f32>(0.0, 0.0);
        for (var i = lid; i < hw; i = i + WG) {
            let xh = (x[cb + i] - mean) * rstd;
            let d = y[cb + i];
            acc = acc + vec2<f32>(d * xh, d);
        }
        let r = wg_sum2(lid, acc);
        let gc = z[p.d3 + c0 + ci];
        s1 = s1 + gc * r.y;
        s2 = s2 + gc * r.x;
        if (lid == 0u) {
            // slot * cg + ci = sample * C + channel.
            let k = 2u * (slot * cg + ci);
            out2[k] = r.x;
            out2[k + 1u] = r.y;
        }
    }
    let m1 = s1 / f32(gs);
    let m2 = s2 / f32(gs);
    for (var i = lid; i < gs; i = i + WG) {
        let gc = z[p.d3 + c0 + i / hw];
        let xh = (x[base + i] - mean) * rstd;
        out[base + i] = rstd * (y[base + i] * gc - m1 - xh * m2);
    }
}

// Adds group norm's parameter gradient to the flat gradient buffer: one
// thread per channel sums the batch's partials in sample order (deterministic).
// x = partials [N*C, 2], inout = gradients.
// n = channels C, d0 = batch N, d1 = offset in the gradients, d2 = which
// partial (0: dgamma, 1: dbeta).
@compute @workgroup_size(256)
fn group_norm_param_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = flat_index(gid, nwg);
    if (c >= p.n) {
        return;
    }
    var acc = 0.0;
    for (var s = 0u; s < p.d0; s = s + 1u) {
        acc = acc + x[2u * (s * p.n + c) + p.d2];
    }
    inout[p.d1 + c] = inout[p.d1 + c] + acc;
}

fn sigmoid(v: f32) -> f32 {
    return 1.0 / (1.0 + exp(-v));
}

// out = x * sigmoid(x). n = elements.
@compute @workgroup_size(256)
fn silu(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.n) {
        return;
    }
    let v = x[i];
    out[i] = v * sigmoid(v);
}

// out = dy * s * (1 + x (1 - s)), s = sigmoid(x). x = x, y = dy, n = elements.
@compute @workgroup_size(256)
fn silu_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.n) {
        return;
    }
    let v = x[i];
    let s = sigmoid(v);
    out[i] = y[i] * s * (1.0 + v * (1.0 - s));
}

// Nearest 2x up-sampling times alpha: out [N, C, 2H, 2W] from x [N, C, H, W]
// (alpha = 1: upsample_nearest2x; 1/4: avg_pool2x's backward).
// n = output elements, d0 = H, d1 = W.
@compute @workgroup_size(256)
fn upsample2x(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.n) {
        return;
    }
    let h = p.d0;
    let w = p.d1;
    let j = i % (2u * w);
    let r = (i / (2u * w)) % (2u * h);
    let plane = i / (4u * h * w);
    out[i] = x[plane * h * w + (r / 2u) * w + j / 2u] * p.alpha;
}

// Sums of the 2x2 blocks of x [N, C, 2Ho, 2Wo] times alpha, summed in the
// CPU's order (alpha = 1: upsample's backward; 1/4: avg_pool2x).
// n = output elements, d0 = Ho, d1 = Wo.
@compute @workgroup_size(256)
fn block_sum2x(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.n) {
        return;
    }
    let ho = p.d0;
    let wo = p.d1;
    let w = 2u * wo;
    let j = i % wo;
    let r = (i / wo) % ho;
    let plane = i / (ho * wo);
    let b = plane * 4u * ho * wo + 2u * r * w + 2u * j;
    out[i] = (x[b] + x[b + 1u] + x[b + w] + x[b + w + 1u]) * p.alpha;
}

// out [N, Ca + Cb, HW] = x [N, Ca, HW] ++ y [N, Cb, HW] along channels.
// n = output elements, d0 = Ca, d1 = Cb, d2 = HW.
@compute @workgroup_size(256)
fn concat_channels(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.n) {
        return;
    }
    let ca = p.d0;
    let cb = p.d1;
    let hw = p.d2;
    let pix = i % hw;
    let c = (i / hw) % (ca + cb);
    let s = i / (hw * (ca + cb));
    if (c < ca) {
        out[i] = x[(s * ca + c) * hw + pix];
    } else {
        out[i] = y[(s * cb + c - ca) * hw + pix];
    }
}

// out [N, Co, HW] = channels c0 .. c0 + Co of x [N, Cs, HW].
// n = output elements, d0 = Cs, d1 = Co, d2 = c0, d3 = HW.
@compute @workgroup_size(256)
fn slice_channels(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.n) {
        return;
    }
    let hw = p.d3;
    let pix = i % hw;
    let c = (i / hw) % p.d1;
    let s = i / (hw * p.d1);
    out[i] = x[(s * p.d0 + p.d2 + c) * hw + pix];
}

// out = x [N, C, HW] + y [N, C] broadcast over the pixels.
// n = elements, d0 = HW.
@compute @workgroup_size(256)
fn add_channel_bias(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.n) {
        return;
    }
    out[i] = x[i] + y[i / p.d0];
}

// out [N*C] = x [N*C, HW] summed over each plane, one workgroup per plane.
// n = planes N*C, d0 = HW.
@compute @workgroup_size(256)
fn sum_spatial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let plane = flat_group(wid, nwg);
    if (plane >= p.n) {
        return;
    }
    let hw = p.d0;
    let base = plane * hw;
    var s = 0.0;
    for (var i = lid; i < hw; i = i + WG) {
        s = s + x[base + i];
    }
    let total = wg_sum(lid, s);
    if (lid == 0u) {
        out[plane] = total;
    }
}

// Per-sample transpose: out [N, B, A] from x [N, A, B] (image_to_tokens with
// A = C, B = HW; tokens_to_image with A = L, B = C).
// n = elements, d0 = A, d1 = B.
@compute @workgroup_size(256)
fn transpose_samples(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = flat_index(gid, nwg);
    if (o >= p.n) {
        return;
    }
    let a = p.d0;
    let b = p.d1;
    let i = o % a;
    let j = (o / a) % b;
    let s = o / (a * b);
    out[o] = x[s * a * b + i * b + j];
}

// Batched matrix product out[b] = alpha * op(A[b]) op(B[b]) with A = x,
// B = y, op(A) [M, K], op(B) [K, N], out [M, N]; workgroup (16, 16) computes
// a 16x16 output tile, grid (ceil(N/16), ceil(M/16), batch). Products are
// accumulated in increasing k, as the CPU's dot products and axpys do.
// d0 = M, d1 = N, d2 = K, d3 = flags (bit 0: A is stored [K, M]; bit 1: B is
// stored [N, K]), d4 / d5 / d6 = batch strides of A / B / out, d7 / d8 / d9 =
// element offsets of A / B / out; alpha.
@compute @workgroup_size(16, 16)
fn attn_matmul(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let m_dim = p.d0;
    let n_dim = p.d1;
    let k_dim = p.d2;
    let trans_a = (p.d3 & 1u) != 0u;
    let trans_b = (p.d3 & 2u) != 0u;
    let a0 = p.d7 + wid.z * p.d4;
    let b0 = p.d8 + wid.z * p.d5;
    let o0 = p.d9 + wid.z * p.d6;
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    var acc = 0.0;
    for (var k0 = 0u; k0 < k_dim; k0 = k0 + TILE) {
        // tile_a[m][k] = op(A)[row0 + m, k0 + k], loaded so that consecutive
        // threads read consecutive addresses in either layout.
        var am: u32;
        var ak: u32;
        if (trans_a) {
            am = lid.x;
            ak = lid.y;
        } else {
            am = lid.y;
            ak = lid.x;
        }
        var av = 0.0;
        if (row0 + am < m_dim && k0 + ak < k_dim) {
            if (trans_a) {
                av = x[a0 + (k0 + ak) * m_dim + row0 + am];
            } else {
                av = x[a0 + (row0 + am) * k_dim + k0 + ak];
            }
        }
        tile_a[am * TILE + ak] = av;
        // tile_b[k][n] = op(B)[k0 + k, col0 + n].
        var bk: u32;
        var bn: u32;
        if (trans_b) {
            bk = lid.x;
            bn = lid.y;
        } else {
            bk = lid.y;
            bn = lid.x;
        }
        var bv = 0.0;
        if (k0 + bk < k_dim && col0 + bn < n_dim) {
            if (trans_b) {
                bv = y[b0 + (col0 + bn) * k_dim + k0 + bk];
            } else {
                bv = y[b0 + (k0 + bk) * n_dim + col0 + bn];
            }
        }
        tile_b[bk * TILE + bn] = bv;
        workgroupBarrier();
        let kn = min(TILE, k_dim - k0);
        for (var k = 0u; k < kn; k = k + 1u) {
            acc = acc + tile_a[lid.y * TILE + k] * tile_b[k * TILE + lid.x];
        }
        workgroupBarrier();
    }
    let row = row0 + lid.y;
    let col = col0 + lid.x;
    if (row < m_dim && col < n_dim) {
        out[o0 + row * n_dim + col] = acc * p.alpha;
    }
}

// Row softmax in place (max-subtracted): one workgroup per row of inout.
// n = rows, d0 = row length.
@compute @workgroup_size(256)
fn attn_softmax(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = flat_group(wid, nwg);
    if (row >= p.n) {
        return;
    }
    let len = p.d0;
    let base = row * len;
    var m = F32_LOWEST;
    for (var i = lid; i < len; i = i + WG) {
        m = max(m, inout[base + i]);
    }
    m = wg_max(lid, m);
    var s = 0.0;
    for (var i = lid; i < len; i = i + WG) {
        let e = exp(inout[base + i] - m);
        inout[base + i] = e;
        s = s + e;
    }
    let inv = 1.0 / wg_sum(lid, s);
    for (var i = lid; i < len; i = i + WG) {
        inout[base + i] = inout[base + i] * inv;
    }
}

// Softmax backward in place: with P = x and dP = inout (one workgroup per
// row), dS = P * (dP - sum(P * dP)) * alpha overwrites dP.
// n = rows, d0 = row length; alpha.
@compute @workgroup_size(256)
fn attn_softmax_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = flat_group(wid, nwg);
    if (row >= p.n) {
        return;
    }
    let len = p.d0;
    let base = row * len;
    var s = 0.0;
    for (var i = lid; i < len; i = i + WG) {
        s = s + x[base + i] * inout[base + i];
    }
    let rowsum = wg_sum(lid, s);
    for (var i = lid; i < len; i = i + WG) {
        inout[base + i] = x[base + i] * (inout[base + i] - rowsum) * p.alpha;
    }
}
