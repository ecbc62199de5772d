//! Inpainting masks: named regions and masks read from images. A mask is
//! `[C, H, W]` (the same for every sample of a batch) with 1 where the pixel
//! is known and 0 where it is to be generated. Named masks name the region
//! that is *missing*: `left` hides the left half, `center` the central
//! square of half the side, `random:p` each pixel independently with
//! probability `p` (all channels of a pixel together).

use sde_core::NoiseKey;

use crate::error::{ensure, CondError, Result};

/// A named mask.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NamedMask {
    /// The left half is missing.
    Left,
    /// The right half is missing.
    Right,
    /// The top half is missing.
    Top,
    /// The bottom half is missing.
    Bottom,
    /// The central square of half the side is missing.
    Center,
    /// Each pixel is missing with this probability.
    Random(f64),
}

impl std::str::FromStr for NamedMask {
    type Err = CondError;

    fn from_str(s: &str) -> Result<Self> {
        let m = match s {
            "left" => NamedMask::Left,
            "right" => NamedMask::Right,
            "top" => NamedMask::Top,
            "bottom" => NamedMask::Bottom,
            "center" | "centre" => NamedMask::Center,
            _ => {
                let p = s
                    .strip_prefix("random:")
                    .and_then(|p| p.parse::<f64>().ok())
                    .ok_or_else(|| CondError::Invalid {
                        what: "mask",
                        reason: format!(
                            "{s:?}: expected left, right, top, bottom, center or random:<p> \
                             (or a PNG file)"
                        ),
                    })?;
                ensure((0.0..=1.0).contains(&p), "mask", || {
                    format!("random:{p}: the probability must lie in [0, 1]")
                })?;
                NamedMask::Random(p)
            }
        };
        Ok(m)
    }
}

impl NamedMask {
    /// The `[C, H, W]` mask (1 = known); `seed` draws the random mask.
    pub fn build(self, c: usize, h: usize, w: usize, seed: u64) -> Vec<f32> {
        let known = |y: usize, x: usize| -> bool {
            match self {
                NamedMask::Left => x >= w / 2,
                NamedMask::Right => x < w / 2,
                NamedMask::Top => y >= h / 2,
                NamedMask::Bottom => y < h / 2,
                NamedMask::Center => {
                    let (y0, x0) = (h / 4, w / 4);
                    !((y0..y0 + h / 2).contains(&y) && (x0..x0 + w / 2).contains(&x))
                }
                NamedMask::Random(_) => true,
            }
        };
        let mut plane: Vec<f32> = (0..h * w)
            .map(|i| f32::from(u8::from(known(i / w, i % w))))
            .collect();
        if let NamedMask::Random(p) = self {
            let u = NoiseKey::new(seed, 0x6d61_736b).uniforms_f64(h * w);
            for (m, u) in plane.iter_mut().zip(u) {
                *m = f32::from(u8::from(u >= p));
            }
        }
        plane.repeat(c)
    }
}

/// A mask from grey values `[H, W]` in `[0, 1]` (e.g. a PNG): values of 0.5
/// and above are known. Repeated over `c` channels.
pub fn mask_from_grey(values: &[f32], c: usize) -> Vec<f32> {
    values
        .iter()
        .map(|&v| f32::from(u8::from(v >= 0.5)))
        .collect::<Vec<_>>()
        .repeat(c)
}
