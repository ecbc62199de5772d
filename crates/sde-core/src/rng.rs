//! Counter-based random numbers: Philox4x32-10 (Salmon et al., SC'11, the
//! Random123 generator), chosen because it is stateless and can be evaluated
//! in Rust and in WGSL from the same integers, so a seed gives the same noise
//! on every backend (see below for the precision of Gaussian fills).
//!
//! # Stream layout (the contract every backend implements)
//! A [`NoiseKey`] `{seed, stream}` names one infinite sequence. Element `i` of a
//! tensor filled from it is computed from the Philox block
//! `philox4x32_10(counter = [lo(i/4), hi(i/4), lo(stream), hi(stream)], key = [lo(seed), hi(seed)])`,
//! lane `i % 4`:
//! - uniform: [`u32_to_unit_f32`] of the lane, in the open interval (0, 1);
//! - Gaussian: Box–Muller on the lane pair `(2p, 2p+1)`, `p = (i % 4) / 2`:
//!   `r = sqrt(max(0, -2 ln u_{2p}))`, `theta = pi (2 u_{2p+1} - 1)` (in
//!   `[-pi, pi]`, where WGSL bounds the error of `sin`/`cos`), element is
//!   `r cos(theta)` for an even lane and `r sin(theta)` for an odd lane;
//! - Rademacher: `-1` when the lane's top bit is set, `+1` otherwise.
//!
//! Uniform and Rademacher fills are bit-identical on every backend (integer
//! maths and exact conversions). Gaussian fills agree to within the accuracy
//! of each platform's `ln`, `sqrt`, `sin` and `cos` (WGSL allows absolute
//! errors around 1e-3 near the tails), so cross-backend tests compare them with
//! a tolerance. Philox in WGSL needs the 32x32 -> 64-bit multiply built from
//! 16-bit limbs; everything else is 32-bit integer arithmetic.
//!
//! [`NoiseRng`] hands out fresh keys (one stream per draw) and is serialisable,
//! so samplers and trainers can checkpoint and resume their noise exactly.

use serde::{Deserialize, Serialize};

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

#[inline(always)]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = u64::from(a) * u64::from(b);
    ((p >> 32) as u32, p as u32)
}

/// One Philox4x32 block with 10 rounds.
#[inline]
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(W0);
            k[1] = k[1].wrapping_add(W1);
        }
        let (hi0, lo0) = mulhilo(M0, c[0]);
        let (hi1, lo1) = mulhilo(M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// Maps 32 random bits to a uniform `f32` in the open interval (0, 1):
/// `((x >> 9) + 0.5) / 2^23`. Every step is exact in `f32` (23 bits plus a
/// half fit the 24-bit significand; 24 bits would round `u32::MAX` up to 1.0),
/// so WGSL reproduces it bit for bit; the values are never 0 or 1.
#[inline(always)]
pub fn u32_to_unit_f32(x: u32) -> f32 {
    ((x >> 9) as f32 + 0.5) * (1.0 / 8_388_608.0)
}

/// Maps 64 random bits to a uniform `f64` in the open interval (0, 1):
/// `((x >> 12) + 0.5) / 2^52`, exact in `f64` for the same reason as above.
#[inline(always)]
pub fn u64_to_unit_f64(x: u64) -> f64 {
    ((x >> 12) as f64 + 0.5) * (1.0 / 4_503_599_627_370_496.0)
}

/// Box–Muller transform of two uniforms in (0, 1) into two independent
/// standard normals, in the form every backend implements:
/// `r = sqrt(max(0, -2 ln u1))`, `theta = pi (2 u2 - 1)`, `(r cos theta, r sin theta)`.
#[inline(always)]
pub fn box_muller(u1: f32, u2: f32) -> (f32, f32) {
    let r = (-2.0 * u1.ln()).max(0.0).sqrt();
    let (s, c) = (std::f32::consts::PI * (2.0 * u2 - 1.0)).sin_cos();
    (r * c, r * s)
}

/// Names one stream of random numbers: a seed and a stream index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NoiseKey {
    /// The user's seed (the Philox key).
    pub seed: u64,
    /// The stream index (the high half of the Philox counter).
    pub stream: u64,
}

impl NoiseKey {
    /// A key for `seed` and `stream`.
    pub fn new(seed: u64, stream: u64) -> Self {
        NoiseKey { seed, stream }
    }

    /// The Philox block with index `block` of this stream.
    #[inline]
    pub fn block(&self, block: u64) -> [u32; 4] {
        philox4x32_10(
            [
                block as u32,
                (block >> 32) as u32,
                self.stream as u32,
                (self.stream >> 32) as u32,
            ],
            [self.seed as u32, (self.seed >> 32) as u32],
        )
    }

    /// The eight Philox blocks `first..first + 8` of this stream, word-major:
    /// `out[w][j]` is word `w` of [`NoiseKey::block`]`(first + j)` (the same
    /// values). The eight blocks are computed side by side, which vectorises
    /// where one block at a time cannot (each round depends on the last).
    #[inline(always)]
    pub fn blocks8(&self, first: u64) -> [[u32; 8]; 4] {
        let (mut c0, mut c1) = ([0u32; 8], [0u32; 8]);
        for j in 0..8 {
            let b = first.wrapping_add(j as u64);
            c0[j] = b as u32;
            c1[j] = (b >> 32) as u32;
        }
        let mut c2 = [self.stream as u32; 8];
        let mut c3 = [(self.stream >> 32) as u32; 8];
        let (mut k0, mut k1) = (self.seed as u32, (self.seed >> 32) as u32);
        for round in 0..10 {
            if round > 0 {
                k0 = k0.wrapping_add(W0);
                k1 = k1.wrapping_add(W1);
            }
            for j in 0..8 {
                let (hi0, lo0) = mulhilo(M0, c0[j]);
                let (hi1, lo1) = mulhilo(M1, c2[j]);
                (c0[j], c1[j], c2[j], c3[j]) = (hi1 ^ c1[j] ^ k0, lo1, hi0 ^ c3[j] ^ k1, lo0);
            }
        }
        [c0, c1, c2, c3]
    }

    /// Fills `out` with elements `offset..offset + out.len()` of the standard-normal stream.
    pub fn fill_gaussian_at(&self, offset: u64, out: &mut [f32]) {
        let mut i = offset;
        let mut pos = 0;
        while pos < out.len() {
            let b = self.block(i / 4);
            let (n0, n1) = box_muller(u32_to_unit_f32(b[0]), u32_to_unit_f32(b[1]));
            let (n2, n3) = box_muller(u32_to_unit_f32(b[2]), u32_to_unit_f32(b[3]));
            let lanes = [n0, n1, n2, n3];
            let start = (i % 4) as usize;
            let take = (4 - start).min(out.len() - pos);
            out[pos..pos + take].copy_from_slice(&lanes[start..start + take]);
            pos += take;
            i += take as u64;
        }
    }

    /// Fills `out` with the first `out.len()` elements of the standard-normal stream.
    pub fn fill_gaussian(&self, out: &mut [f32]) {
        self.fill_gaussian_at(0, out);
    }

    /// Fills `out` with the first `out.len()` elements of the uniform (0, 1) stream.
    pub fn fill_uniform(&self, out: &mut [f32]) {
        self.fill_lanes(out, u32_to_unit_f32);
    }

    /// Fills `out` with the first `out.len()` elements of the Rademacher (±1) stream.
    pub fn fill_rademacher(&self, out: &mut [f32]) {
        self.fill_lanes(out, |x| if x >> 31 == 1 { -1.0 } else { 1.0 });
    }

    fn fill_lanes(&self, out: &mut [f32], map: impl Fn(u32) -> f32) {
        for (block, chunk) in out.chunks_mut(4).enumerate() {
            let b = self.block(block as u64);
            for (o, &x) in chunk.iter_mut().zip(b.iter()) {
                *o = map(x);
            }
        }
    }

    /// `n` uniform `f64` values in (0, 1) (host-side; element `i` uses lanes
    /// `2(i%2), 2(i%2)+1` of block `i/2` as the high and low 32 bits).
    pub fn uniforms_f64(&self, n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| {
                let b = self.block((i / 2) as u64);
                let l = 2 * (i % 2);
                u64_to_unit_f64((u64::from(b[l]) << 32) | u64::from(b[l + 1]))
            })
            .collect()
    }
}

/// A seeded source of fresh [`NoiseKey`]s: each call to [`NoiseRng::next_key`]
/// returns the next stream of the same seed. Its whole state is two integers,
/// so it can be stored in a checkpoint and restored exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoiseRng {
    /// The seed shared by every stream.
    pub seed: u64,
    /// The stream the next key will use.
    pub next_stream: u64,
}

impl NoiseRng {
    /// A generator starting at stream 0 of `seed`.
    pub fn new(seed: u64) -> Self {
        NoiseRng {
            seed,
            next_stream: 0,
        }
    }

    /// The next key; advances the stream counter.
    pub fn next_key(&mut self) -> NoiseKey {
        let key = NoiseKey::new(self.seed, self.next_stream);
        self.next_stream = self.next_stream.wrapping_add(1);
        key
    }

    /// `n` uniform `f64` values in (0, 1) from a fresh stream.
    pub fn uniforms_f64(&mut self, n: usize) -> Vec<f64> {
        self.next_key().uniforms_f64(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks8_equals_eight_blocks() {
        for (seed, stream, first) in [(0, 0, 0), (7, 3, 12345), (u64::MAX, u64::MAX, u64::MAX - 3)]
        {
            let key = NoiseKey::new(seed, stream);
            let w = key.blocks8(first);
            let got = (0..8).map(|j| [w[0][j], w[1][j], w[2][j], w[3][j]]);
            for (j, g) in got.enumerate() {
                let b = key.block(first.wrapping_add(j as u64));
                assert_eq!(g, b, "block {j} of {first}");
            }
        }
    }

    /// Random123's published known-answer vectors for Philox4x32-10.
    #[test]
    fn philox_known_answers() {
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn unit_maps_stay_open() {
        assert!(u32_to_unit_f32(0) > 0.0);
        assert!(u32_to_unit_f32(u32::MAX) < 1.0);
        assert_eq!(u32_to_unit_f32(u32::MAX), 1.0 - f32::EPSILON / 2.0);
        assert_eq!(u32_to_unit_f32(1 << 31), 0.5 + 0.5 / 8_388_608.0);
        assert!(u64_to_unit_f64(0) > 0.0);
        assert!(u64_to_unit_f64(u64::MAX) < 1.0);
        assert_eq!(u64_to_unit_f64(u64::MAX), 1.0 - f64::EPSILON / 2.0);
    }

    #[test]
    fn offsets_address_the_same_stream() {
        let key = NoiseKey::new(7, 3);
        let mut whole = vec![0.0; 23];
        key.fill_gaussian(&mut whole);
        for offset in [0usize, 1, 2, 3, 5, 9] {
            let mut part = vec![0.0; 23 - offset];
            key.fill_gaussian_at(offset as u64, &mut part);
            assert_eq!(&whole[offset..], &part[..], "offset {offset}");
        }
    }

    #[test]
    fn rng_state_round_trips() {
        let mut a = NoiseRng::new(42);
        a.next_key();
        let text = toml::to_string(&a).unwrap();
        let mut b: NoiseRng = toml::from_str(&text).unwrap();
        assert_eq!(a.next_key(), b.next_key());
    }
}
