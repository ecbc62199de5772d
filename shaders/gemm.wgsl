// gemm.wgsl: convolutions and linear layers of the wgpu `NetBackend`
// (score-net::gpu::net::gemm) as tiled GEMMs. Plain-Rust reference:
// `score_net::cpu::conv` (conv2d, conv2d_backward, linear, linear_backward).
//
// Every GEMM kernel computes `C [M, N] = A [M, K] · B [K, N]` with one shared
// tiled loop (`gemm_tile`); the kernels differ only in how they address A
// and B (an "implicit GEMM": the im2col matrix of a convolution is never
// materialised, its elements are gathered while loading a tile) and where
// they write C:
//
// - `gemm_matmul`: dense row-major operands at offsets, optionally
//   transposed (`FLAG_TRANS_A`, `FLAG_TRANS_B`), optional per-column bias,
//   overwrite or accumulate (`FLAG_ACCUMULATE`); the linear layers;
// - `conv2d_fwd`: M = C_out, N = batch·H_out·W_out, K = C_in·k·k;
//   A = the weight [C_out, C_in·k·k], B = im2col(x), C scattered to NCHW
//   `y` plus the per-row (channel) bias;
// - `conv2d_dx`: M = C_in, N = batch·H·W, K = C_out·k·k (transposed
//   convolution); A(ci, (co, kh, kw)) = W[co, ci, kh, kw], B gathers
//   dy[n, co, oh, ow] with `oh·stride + kh - pad = ih` (zero where `ih + pad
//   - kh` is negative, off the stride grid or past the output);
// - `conv2d_dw`: M = C_out, N = C_in·k·k, K = batch·H_out·W_out; A = dy,
//   B = im2col(x) transposed. Long K: the host splits K into chunks of
//   `k_chunk` (grid z = chunk), each writing its partial product at
//   `out_off + z·split_stride`; `gemm_splitk_reduce` then adds the partials
//   in chunk order into the gradient buffer (deterministic, no atomics).
//
// Tiling: a workgroup of 16x16 threads computes a 64x64 tile of C, each
// thread a 4x4 block in registers; K advances 16 at a time through two
// workgroup tiles A [16][64] and B [16][64] stored as vec4 along M and N so
// the inner product reads one vec4 of each per k. Every global load is
// bounds-checked (zero outside the matrix), so any M, N, K works. The grid is
// [ceil(N / 64), ceil(M / 64), chunks].
//
// vec4 global loads: A and B are bound as arrays of vec4 (the host keeps
// every buffer a multiple of 16 bytes). When the host finds an operand's
// rows 16-byte aligned along the direction the tile loader walks (offset and
// row length multiples of 4; see `FLAG_A_VEC`, `FLAG_B_VEC` in
// score-net::gpu::net::gemm), each thread fetches one vec4 per K step
// instead of four scalars; otherwise (im2col gathers, views at odd offsets)
// it loads scalars. A vec4 that straddles the edge of the matrix falls back
// to per-element loads, so both paths give identical results.
//
// `bias_grad` sums dy, viewed as [outer, C, inner], over outer and inner for
// each channel c (one workgroup per channel, a fixed-order tree reduction in
// workgroup memory) and adds the total to `out[out_off + c]`.

struct Params {
    // C is [m, n]; k is the contracted dimension.
    m: u32,
    n: u32,
    k: u32,
    // K per split-K chunk (grid z); `k` when there is one chunk.
    k_chunk: u32,
    // Element offsets of A, B, the bias and C in their buffers.
    a_off: u32,
    b_off: u32,
    bias_off: u32,
    out_off: u32,
    // gemm_matmul: leading dimensions (row lengths as stored) of A, B, C.
    lda: u32,
    ldb: u32,
    ldc: u32,
    // FLAG_* bits.
    flags: u32,
    // Convolution geometry: x [batch, cin, h, w], y [batch, cout, ho, wo],
    // square kernel ks x ks.
    cin: u32,
    h: u32,
    w: u32,
    cout: u32,
    ks: u32,
    stride: u32,
    pad: u32,
    ho: u32,
    wo: u32,
    // Elements between two chunks' partials (split-K), and the chunk count
    // (gemm_splitk_reduce).
    split_stride: u32,
    splits: u32,
    _pad: u32,
}

const FLAG_TRANS_A: u32 = 1u;
const FLAG_TRANS_B: u32 = 2u;
const FLAG_BIAS: u32 = 4u;
const FLAG_ACCUMULATE: u32 = 8u;
// A (B) is read as aligned vec4s: along K, or along M when A is the
// transposed matmul operand (along N, or along K for conv2d_dw and the
// transposed matmul operand).
const FLAG_A_VEC: u32 = 16u;
const FLAG_B_VEC: u32 = 32u;

const MODE_MATMUL: u32 = 0u;
const MODE_CONV_FWD: u32 = 1u;
const MODE_CONV_DX: u32 = 2u;
const MODE_CONV_DW: u32 = 3u;

// Tile of C per workgroup (TM x TN) and K step (TK); 16x16 threads, 4x4 each.
const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

// [TK][TM / 4] and [TK][TN / 4]: row kk holds the tile's M (N) values at k.
var<workgroup> a_tile: array<vec4<f32>, 256>;
var<workgroup> b_tile: array<vec4<f32>, 256>;
var<workgroup> red: array<f32, 256>;

fn has(flag: u32) -> bool {
    return (p.flags & flag) != 0u;
}

// Scalar element i of `a` / `b`.
fn a_at(i: u32) -> f32 {
    return a[i >> 2u][i & 3u];
}

fn b_at(i: u32) -> f32 {
    return b[i >> 2u][i & 3u];
}

// x[nb, ci, oh·stride + kh - pad, ow·stride + kw - pad] from `b`, zero in the padding.
fn im2col(nb: u32, ci: u32, oh: u32, ow: u32, kh: u32, kw: u32) -> f32 {
    let ih = i32(oh * p.stride + kh) - i32(p.pad);
    let iw = i32(ow * p.stride + kw) - i32(p.pad);
    if (ih < 0 || iw < 0 || ih >= i32(p.h) || iw >= i32(p.w)) {
        return 0.0;
    }
    return b_at(p.b_off + ((nb * p.cin + ci) * p.h + u32(ih)) * p.w + u32(iw));
}

// Index of A[m, kk] (m < M, kk < K) in `a` (A is never zero-padded).
fn a_idx(mode: u32, m: u32, kk: u32) -> u32 {
    switch mode {
        case 1u: {
            // The weight [C_out, C_in·k·k].
            return p.a_off + m * p.k + kk;
        }
        case 2u: {
            // W[co, ci = m, kh, kw] with kk = (co, kh, kw).
            let kk2 = p.ks * p.ks;
            let co = kk / kk2;
            let r = kk - co * kk2;
            return p.a_off + (co * p.cin + m) * kk2 + r;
        }
        case 3u: {
            // dy[nb, co = m, pix] with kk = (nb, pix).
            let pix_n = p.ho * p.wo;
            let nb = kk / pix_n;
            let px = kk - nb * pix_n;
            return p.a_off + (nb * p.cout + m) * pix_n + px;
        }
        default: {
            if (has(FLAG_TRANS_A)) {
                return p.a_off + kk * p.lda + m;
            }
            return p.a_off + m * p.lda + kk;
        }
    }
}

// Index of B[kk, n] in `b` where B is a plain strided matrix: the matmul
// operands, and the convolutions' when the kernel is 1x1 with stride 1 and
// no padding (im2col is then x itself; the host sets FLAG_B_VEC only so).
fn b_idx(mode: u32, kk: u32, n: u32) -> u32 {
    let pix_n = p.ho * p.wo;
    switch mode {
        case 1u: {
            // x[nb, ci = kk, pix] with n = (nb, pix).
            let nb = n / pix_n;
            return p.b_off + (nb * p.cin + kk) * pix_n + (n - nb * pix_n);
        }
        case 2u: {
            // dy[nb, co = kk, pix] with n = (nb, pix).
            let nb = n / pix_n;
            return p.b_off + (nb * p.cout + kk) * pix_n + (n - nb * pix_n);
        }
        case 3u: {
            // x[nb, ci = n, pix] with kk = (nb, pix).
            let nb = kk / pix_n;
            return p.b_off + (nb * p.cin + n) * pix_n + (kk - nb * pix_n);
        }
        default: {
            if (has(FLAG_TRANS_B)) {
                return p.b_off + n * p.ldb + kk;
            }
            return p.b_off + kk * p.ldb + n;
        }
    }
}

// B[kk, n] (kk < K, n < N).
fn load_b(mode: u32, kk: u32, n: u32) -> f32 {
    switch mode {
        case 1u: {
            // im2col(x) with kk = (ci, kh, kw), n = (nb, oh, ow).
            let kk2 = p.ks * p.ks;
            let ci = kk / kk2;
            let r = kk - ci * kk2;
            let kh = r / p.ks;
            let pix_n = p.ho * p.wo;
            let nb = n / pix_n;
            let px = n - nb * pix_n;
            let oh = px / p.wo;
            return im2col(nb, ci, oh, px - oh * p.wo, kh, r - kh * p.ks);
        }
        case 2u: {
            // dy[nb, co, oh, ow] with kk = (co, kh, kw), n = (nb, ih, iw) and
            // oh·stride + kh - pad = ih (likewise ow); zero when no such oh, ow.
            let kk2 = p.ks * p.ks;
            let co = kk / kk2;
            let r = kk - co * kk2;
            let kh = r / p.ks;
            let kw = r - kh * p.ks;
            let hw = p.h * p.w;
            let nb = n / hw;
            let px = n - nb * hw;
            let ih = px / p.w;
            let iw = px - ih * p.w;
            let th = i32(ih + p.pad) - i32(kh);
            let tw = i32(iw + p.pad) - i32(kw);
            if (th < 0 || tw < 0) {
                return 0.0;
            }
            let oh = u32(th) / p.stride;
            let ow = u32(tw) / p.stride;
            if (oh * p.stride != u32(th) || ow * p.stride != u32(tw) || oh >= p.ho || ow >= p.wo) {
                return 0.0;
            }
            return b_at(p.b_off + ((nb * p.cout + co) * p.ho + oh) * p.wo + ow);
        }
        case 3u: {
            // im2col(x) transposed: kk = (nb, oh, ow), n = (ci, kh, kw).
            let kk2 = p.ks * p.ks;
            let ci = n / kk2;
            let r = n - ci * kk2;
            let kh = r / p.ks;
            let pix_n = p.ho * p.wo;
            let nb = kk / pix_n;
            let px = kk - nb * pix_n;
            let oh = px / p.wo;
            return im2col(nb, ci, oh, px - oh * p.wo, kh, r - kh * p.ks);
        }
        default: {
            return b_at(b_idx(mode, kk, n));
        }
    }
}

// Writes C[m, n] = v (m < M, n < N) for split-K chunk z.
fn store(mode: u32, m: u32, n: u32, z: u32, v: f32) {
    switch mode {
        case 1u: {
            // y[nb, co = m, pix] (+ bias[co]) with n = (nb, pix).
            let pix_n = p.ho * p.wo;
            let nb = n / pix_n;
            let px = n - nb * pix_n;
            var val = v;
            if (has(FLAG_BIAS)) {
                val = val + bias[p.bias_off + m];
            }
            out[p.out_off + (nb * p.cout + m) * pix_n + px] = val;
        }
        case 2u: {
            // dx[nb, ci = m, pix] with n = (nb, pix).
            let hw = p.h * p.w;
            let nb = n / hw;
            let px = n - nb * hw;
            out[p.out_off + (nb * p.cin + m) * hw + px] = v;
        }
        default: {
            let idx = p.out_off + z * p.split_stride + m * p.ldc + n;
            var val = v;
            if (has(FLAG_BIAS)) {
                val = val + bias[p.bias_off + n];
            }
            if (has(FLAG_ACCUMULATE)) {
                val = out[idx] + val;
            }
            out[idx] = val;
        }
    }
}

// Loads A[m0.., k0..] (TM x TK, zero outside M and the chunk's K range)
// into a_tile. Load order: consecutive threads take consecutive addresses
// where the operand's layout makes that possible (coalescing on real GPUs).
fn load_a_tile(mode: u32, lid: u32, m0: u32, k0: u32, kend: u32) {
    let a_m_fast = mode == MODE_MATMUL && has(FLAG_TRANS_A);
    if (has(FLAG_A_VEC)) {
        if (a_m_fast) {
            // TK rows of TM / 4 vec4s along M: one per thread.
            let mq = lid % 16u;
            let kk = lid / 16u;
            let gm = m0 + mq * 4u;
            let gk = k0 + kk;
            var v = vec4<f32>(0.0);
            if (gk < kend) {
                if (gm + 3u < p.m) {
                    v = a[a_idx(mode, gm, gk) >> 2u];
                } else {
                    for (var j = 0u; j < 4u; j++) {
                        if (gm + j < p.m) {
                            v[j] = a_at(a_idx(mode, gm + j, gk));
                        }
                    }
                }
            }
            a_tile[kk * (TM / 4u) + mq] = v;
        } else {
            // TM rows of TK / 4 vec4s along K: one per thread.
            let kq = lid % 4u;
            let mm = lid / 4u;
            let gm = m0 + mm;
            let gk = k0 + kq * 4u;
            var v = vec4<f32>(0.0);
            if (gm < p.m) {
                if (gk + 3u < kend) {
                    v = a[a_idx(mode, gm, gk) >> 2u];
                } else {
                    for (var j = 0u; j < 4u; j++) {
                        if (gk + j < kend) {
                            v[j] = a_at(a_idx(mode, gm, gk + j));
                        }
                    }
                }
            }
            for (var j = 0u; j < 4u; j++) {
                a_tile[(kq * 4u + j) * (TM / 4u) + mm / 4u][mm % 4u] = v[j];
            }
        }
        return;
    }
    for (var i = 0u; i < 4u; i++) {
        let idx = lid + i * 256u;
        var mm: u32;
        var kk: u32;
        if (a_m_fast) {
            mm = idx % TM;
            kk = idx / TM;
        } else {
            kk = idx % TK;
            mm = idx / TK;
        }
        let gm = m0 + mm;
        let gk = k0 + kk;
        var v = 0.0;
        if (gm < p.m && gk < kend) {
            v = a_at(a_idx(mode, gm, gk));
        }
        a_tile[kk * (TM / 4u) + mm / 4u][mm % 4u] = v;
    }
}

// Loads B[k0.., n0..] (TK x TN, zero outside N and the chunk's K range)
// into b_tile, like load_a_tile.
fn load_b_tile(mode: u32, lid: u32, n0: u32, k0: u32, kend: u32) {
    let b_k_fast = mode == MODE_CONV_DW || (mode == MODE_MATMUL && has(FLAG_TRANS_B));
    if (has(FLAG_B_VEC)) {
        if (b_k_fast) {
            // TN columns of TK / 4 vec4s along K: one per thread.
            let kq = lid % 4u;
            let nn = lid / 4u;
            let gn = n0 + nn;
            let gk = k0 + kq * 4u;
            var v = vec4<f32>(0.0);
            if (gn < p.n) {
                if (gk + 3u < kend) {
                    v = b[b_idx(mode, gk, gn) >> 2u];
                } else {
                    for (var j = 0u; j < 4u; j++) {
                        if (gk + j < kend) {
                            v[j] = b_at(b_idx(mode, gk + j, gn));
                        }
                    }
                }
            }
            for (var j = 0u; j < 4u; j++) {
                b_tile[(kq * 4u + j) * (TN / 4u) + nn / 4u][nn % 4u] = v[j];
            }
        } else {
            // TK rows of TN / 4 vec4s along N: one per thread.
            let nq = lid % 16u;
            let kk = lid / 16u;
            let gn = n0 + nq * 4u;
            let gk = k0 + kk;
            var v = vec4<f32>(0.0);
            if (gk < kend) {
                if (gn + 3u < p.n) {
                    v = b[b_idx(mode, gk, gn) >> 2u];
                } else {
                    for (var j = 0u; j < 4u; j++) {
                        if (gn + j < p.n) {
                            v[j] = b_at(b_idx(mode, gk, gn + j));
                        }
                    }
                }
            }
            b_tile[kk * (TN / 4u) + nq] = v;
        }
        return;
    }
    for (var i = 0u; i < 4u; i++) {
        let idx = lid + i * 256u;
        var nn: u32;
        var kk: u32;
        if (b_k_fast) {
            kk = idx % TK;
            nn = idx / TK;
        } else {
            nn = idx % TN;
            kk = idx / TN;
        }
        let gn = n0 + nn;
        let gk = k0 + kk;
        var v = 0.0;
        if (gn < p.n && gk < kend) {
            v = load_b(mode, gk, gn);
        }
        b_tile[kk * (TN / 4u) + nn / 4u][nn % 4u] = v;
    }
}

// The shared tiled GEMM loop: workgroup `wg` computes the 64x64 tile
// (wg.y, wg.x) of C over the K range of chunk wg.z.
fn gemm_tile(mode: u32, lid: u32, wg: vec3<u32>) {
    let tx = lid % 16u;
    let ty = lid / 16u;
    let m0 = wg.y * TM;
    let n0 = wg.x * TN;
    let kbeg = wg.z * p.k_chunk;
    let kend = min(p.k, kbeg + p.k_chunk);
    var acc = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    for (var k0 = kbeg; k0 < kend; k0 += TK) {
        load_a_tile(mode, lid, m0, k0, kend);
        load_b_tile(mode, lid, n0, k0, kend);
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let av = a_tile[kk * (TM / 4u) + ty];
            let bv = b_tile[kk * (TN / 4u) + tx];
            acc[0] += av.x * bv;
            acc[1] += av.y * bv;
            acc[2] += av.z * bv;
            acc[3] += av.w * bv;
        }
        workgroupBarrier();
    }
    let gm = m0 + ty * 4u;
    let gn = n0 + tx * 4u;
    store_row(mode, gm, gn, wg.z, acc[0]);
    store_row(mode, gm + 1u, gn, wg.z, acc[1]);
    store_row(mode, gm + 2u, gn, wg.z, acc[2]);
    store_row(mode, gm + 3u, gn, wg.z, acc[3]);
}

// Stores C[m, n..n + 4] = row (the columns inside N; nothing when m >= M).
fn store_row(mode: u32, m: u32, n: u32, z: u32, row: vec4<f32>) {
    if (m >= p.m) {
        return;
    }
    if (n < p.n) {
        store(mode, m, n, z, row.x);
    }
    if (n + 1u < p.n) {
        store(mode, m, n + 1u, z, row.y);
    }
    if (n + 2u < p.n) {
        store(mode, m, n + 2u, z, row.z);
    }
    if (n + 3u < p.n) {
        store(mode, m, n + 3u, z, row.w);
    }
}

@compute @workgroup_size(256)
fn gemm_matmul(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    gemm_tile(MODE_MATMUL, lid, wg);
}

@compute @workgroup_size(256)
fn conv2d_fwd(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    gemm_tile(MODE_CONV_FWD, lid, wg);
}

@compute @workgroup_size(256)
fn conv2d_dx(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    gemm_tile(MODE_CONV_DX, lid, wg);
}

@compute @workgroup_size(256)
fn conv2d_dw(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    gemm_tile(MODE_CONV_DW, lid, wg);
}

// out[out_off + i] += Σ_{z < splits} a[z·split_stride + i] (z in order) for
// i < n; one thread per element, 1-D flat index as in elementwise.wgsl.
@compute @workgroup_size(256)
fn gemm_splitk_reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n) {
        return;
    }
    var s = 0.0;
    for (var z = 0u; z < p.splits; z++) {
        s += a_at(z * p.split_stride + i);
    }
    let idx = p.out_off + i;
    out[idx] = out[idx] + s;
}

// out[out_off + c] += Σ_{o < n, i < k} a[(o·m + c)·k + i] for channel c < m
// (dy viewed as [outer = n, C = m, inner = k]); one workgroup per channel.
@compute @workgroup_size(256)
fn bias_grad(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let c = wg.x + wg.y * nwg.x;
    if (c >= p.m) {
        return;
    }
    let total = p.n * p.k;
    var s = 0.0;
    for (var j = lid; j < total; j += 256u) {
        let o = j / p.k;
        let i = j - o * p.k;
        s += a_at((o * p.m + c) * p.k + i);
    }
    red[lid] = s;
    workgroupBarrier();
    for (var width = 128u; width > 0u; width = width / 2u) {
        if (lid < width) {
            red[lid] = red[lid] + red[lid + width];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let idx = p.out_off + c;
        out[idx] = out[idx] + red[0];
    }
}
