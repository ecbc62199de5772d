//! Branch-free `f32` transcendental functions for the CPU backend's
//! elementwise loops (SiLU, softmax). `f32::exp` is a call into libm per
//! element, which keeps a loop scalar; [`exp`] is plain arithmetic and bit
//! manipulation with selects instead of branches, so LLVM vectorises the loops
//! that call it (SSE2 on the baseline x86-64 target, wider where enabled).

/// `log2(e)`.
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` split into a high part exact in few bits and the remainder
/// (Cody–Waite), so `x - n·ln 2` is computed without cancellation error.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// `1.5·2^23`: adding it rounds a float of magnitude below `2^22` to the
/// nearest integer, which then sits in the low mantissa bits.
const ROUND_MAGIC: f32 = 12_582_912.0;
/// Above this `e^x` overflows `f32` (ln of `f32::MAX`).
const EXP_HI: f32 = 88.722_84;
/// Below this `e^x` is subnormal (ln of `f32::MIN_POSITIVE`); [`exp`] returns 0.
const EXP_LO: f32 = -87.336_55;

/// `e^x` for `f32`, within 2 ulp of the correctly rounded value for
/// `x` in `[-87.3, 88.7]` (tested against `f64::exp`); `+inf` above that
/// range, `0` below it (where the true value is subnormal, below `1.2e-38`),
/// NaN for NaN.
///
/// Method: `x = n ln 2 + r` with integer `n` and `|r| <= ln 2 / 2`,
/// `e^r` by the degree-6 minimax polynomial of Cephes' `expf`, and `2^n`
/// built directly in the exponent bits.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // Clamp to the range where e^x is a normal float (n in [-126, 128]);
    // the selects at the end give the out-of-range results. NaN passes
    // through clamp and the arithmetic.
    let xc = x.clamp(EXP_LO, EXP_HI);
    let t = xc * LOG2E + ROUND_MAGIC;
    let n = t - ROUND_MAGIC;
    let ni = t.to_bits().wrapping_sub(ROUND_MAGIC.to_bits()) as i32;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let r2 = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let er = p * r2 + r + 1.0;
    // 2^n as 2^h · 2^(n - h), h = floor(n / 2): both factors are normal
    // floats for every n in [-126, 128] (2^128 alone is not).
    let h = ni >> 1;
    let pow2 = |e: i32| f32::from_bits((e.wrapping_add(127) << 23) as u32);
    let y = er * pow2(h) * pow2(ni - h);
    let y = if x > EXP_HI { f32::INFINITY } else { y };
    if x < EXP_LO {
        0.0
    } else {
        y
    }
}

/// The logistic sigmoid `1 / (1 + e^-x)` through [`exp`] (vectorisable).
#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between `got` and the f64 value.
    fn ulps(got: f32, want: f64) -> f64 {
        let w = want as f32;
        let ulp = f64::from((f32::from_bits(w.to_bits() + 1) - w).abs());
        (f64::from(got) - want).abs() / ulp
    }

    #[test]
    fn exp_is_within_two_ulp_over_the_normal_range() {
        let mut worst = (0.0f64, 0.0f32);
        let (lo, hi) = (EXP_LO + 1e-3, EXP_HI - 1e-3);
        let steps = 2_000_000;
        for i in 0..=steps {
            let x = lo + (hi - lo) * i as f32 / steps as f32;
            let u = ulps(exp(x), f64::from(x).exp());
            if u > worst.0 {
                worst = (u, x);
            }
        }
        // Small arguments, where e^x ~ 1 + x, relative accuracy matters most.
        for i in -100_000..=100_000 {
            let x = i as f32 * 1e-6;
            let u = ulps(exp(x), f64::from(x).exp());
            if u > worst.0 {
                worst = (u, x);
            }
        }
        assert!(worst.0 <= 2.0, "exp({}) is {} ulp off", worst.1, worst.0);
    }

    #[test]
    fn exp_handles_the_edges() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(89.0), f32::INFINITY);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(-88.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan());
        // Next to the ends of the range (the results need 2^128 and 2^-126).
        for x in [88.7f32, -87.3] {
            assert!(ulps(exp(x), f64::from(x).exp()) <= 2.0, "exp({x})");
        }
    }

    #[test]
    fn sigmoid_saturates_cleanly() {
        assert_eq!(sigmoid(0.0), 0.5);
        assert_eq!(sigmoid(100.0), 1.0);
        assert_eq!(sigmoid(-100.0), 0.0);
        assert!(sigmoid(f32::NAN).is_nan());
        for i in -2000..=2000 {
            let x = i as f32 * 0.01;
            let want = 1.0 / (1.0 + (-f64::from(x)).exp());
            assert!(
                (f64::from(sigmoid(x)) - want).abs() <= 2.5e-7 * want,
                "sigmoid({x})"
            );
        }
    }
}
