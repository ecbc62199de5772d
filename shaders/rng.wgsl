// rng.wgsl: counter-based noise of the wgpu `Backend` (score-net::gpu):
// Philox4x32-10 (Salmon et al., SC'11) with the stream layout of
// `sde_core::rng` (its plain-Rust reference): element i uses block i / 4,
// lane i % 4, counter = [lo(i/4), hi(i/4), lo(stream), hi(stream)],
// key = [lo(seed), hi(seed)].
//
// Kernels (one thread per Philox block, i.e. per four elements):
// `rng_uniform` (((x >> 9) + 0.5) / 2^23, bit-exact), `rng_rademacher`
// (-1 when the top bit is set, bit-exact), `rng_gaussian` (Box–Muller on
// lanes (0, 1) and (2, 3): r = sqrt(max(0, -2 ln u1)), theta = pi (2 u2 - 1),
// r cos theta for the even lane, r sin theta for the odd one; equal to the CPU
// up to the accuracy of the platform's log/sqrt/sin/cos), `dropout`
// (inverted dropout of `src`: element i is zeroed when its uniform is
// < drop_p, else multiplied by keep_scale = 1 / (1 - drop_p) as computed on
// the host; bit-identical to `score_net::cpu::ops::dropout`, which is also
// the backward pass when applied to dy).
//
// WGSL has no 64-bit integers: the 32x32 -> 64-bit product is assembled from
// 16-bit halves. Tensors hold fewer than 2^32 elements, so the block index
// fits in its low word and the high word of the counter's first half is 0.

struct Params {
    // Elements to write.
    n: u32,
    seed_lo: u32,
    seed_hi: u32,
    stream_lo: u32,
    stream_hi: u32,
    // dropout: the drop probability (the fills leave it 0).
    drop_p: f32,
    // dropout: the factor of kept elements, 1 / (1 - drop_p) in f32.
    keep_scale: f32,
    _pad2: u32,
}

const M0: u32 = 0xD2511F53u;
const M1: u32 = 0xCD9E8D57u;
const W0: u32 = 0x9E3779B9u;
const W1: u32 = 0xBB67AE85u;
const PI: f32 = 3.1415927;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
// dropout: the input.
@group(0) @binding(2) var<storage, read> src: array<f32>;

// (hi, lo) words of the 64-bit product a * b.
fn mulhilo(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    let hi = p11 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u);
    return vec2<u32>(hi, a * b);
}

fn philox4x32_10(counter: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
    var c = counter;
    var k = key;
    for (var round = 0u; round < 10u; round = round + 1u) {
        if (round > 0u) {
            k = k + vec2<u32>(W0, W1);
        }
        let m0 = mulhilo(M0, c.x);
        let m1 = mulhilo(M1, c.z);
        c = vec4<u32>(m1.x ^ c.y ^ k.x, m1.y, m0.x ^ c.w ^ k.y, m0.y);
    }
    return c;
}

fn block(index: u32) -> vec4<u32> {
    return philox4x32_10(
        vec4<u32>(index, 0u, p.stream_lo, p.stream_hi),
        vec2<u32>(p.seed_lo, p.seed_hi),
    );
}

fn unit(x: u32) -> f32 {
    return (f32(x >> 9u) + 0.5) * (1.0 / 8388608.0);
}

fn box_muller(u1: f32, u2: f32) -> vec2<f32> {
    let r = sqrt(max(-2.0 * log(u1), 0.0));
    let theta = PI * (2.0 * u2 - 1.0);
    return vec2<f32>(r * cos(theta), r * sin(theta));
}

fn store4(t: u32, v: vec4<f32>) {
    let base = 4u * t;
    for (var lane = 0u; lane < 4u; lane = lane + 1u) {
        if (base + lane < p.n) {
            out[base + lane] = v[lane];
        }
    }
}

fn block_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

@compute @workgroup_size(256)
fn rng_uniform(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = block_index(gid, nwg);
    if (4u * t >= p.n) {
        return;
    }
    let x = block(t);
    store4(t, vec4<f32>(unit(x.x), unit(x.y), unit(x.z), unit(x.w)));
}

@compute @workgroup_size(256)
fn rng_rademacher(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = block_index(gid, nwg);
    if (4u * t >= p.n) {
        return;
    }
    let x = block(t);
    let v = select(vec4<f32>(1.0), vec4<f32>(-1.0), (x >> vec4<u32>(31u)) == vec4<u32>(1u));
    store4(t, v);
}

@compute @workgroup_size(256)
fn rng_gaussian(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = block_index(gid, nwg);
    if (4u * t >= p.n) {
        return;
    }
    let x = block(t);
    let g01 = box_muller(unit(x.x), unit(x.y));
    let g23 = box_muller(unit(x.z), unit(x.w));
    store4(t, vec4<f32>(g01.x, g01.y, g23.x, g23.y));
}

@compute @workgroup_size(256)
fn dropout(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = block_index(gid, nwg);
    if (4u * t >= p.n) {
        return;
    }
    let x = block(t);
    let base = 4u * t;
    for (var lane = 0u; lane < 4u; lane = lane + 1u) {
        let i = base + lane;
        if (i < p.n) {
            if (unit(x[lane]) < p.drop_p) {
                out[i] = 0.0;
            } else {
                out[i] = src[i] * p.keep_scale;
            }
        }
    }
}
