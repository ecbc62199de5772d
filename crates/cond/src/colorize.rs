//! Colourisation (Song et al. 2021, section 5 and appendix I.3): inpainting
//! in a decoupled colour space. The orthonormal matrix [`DECOUPLE`] maps an
//! RGB pixel `p` (a row vector) to `p M`, whose first channel is the grey
//! level `(r + g + b) / sqrt(3)` and whose other two channels carry the
//! colour; `M^T` maps back. Given a grey image, the first decoupled channel
//! is known everywhere and the other two are unknown, so colourisation is
//! [`crate::inpaint::sample_constrained`] with the projection
//! [`GreyLevels`], which replaces the first decoupled channel of every pixel
//! by the perturbed grey data after every update.
//!
//! The matrix is the paper's (`[[0.5774, -0.8165, 0], [0.5774, 0.4082,
//! 0.7071], [0.5774, 0.4082, -0.7071]]`) in exact form, so `M M^T = I` to
//! rounding and no inverse is needed. The projection runs on the host (the
//! backends have no per-pixel channel mixing op): one download and one
//! upload of the state per update.

use sde_core::{Backend, NoiseRng, Sde, Shape};
use solvers::Update;

use crate::error::{ensure, Result};
use crate::inpaint::Constraint;

const INV_SQRT3: f64 = 0.577_350_269_189_625_8;
const SQRT_2_3: f64 = 0.816_496_580_927_726;
const INV_SQRT6: f64 = 0.408_248_290_463_863;
const INV_SQRT2: f64 = std::f64::consts::FRAC_1_SQRT_2;

/// The decoupling matrix `M` (rows: R, G, B; columns: decoupled channels;
/// column 0 is the grey direction).
pub const DECOUPLE: [[f64; 3]; 3] = [
    [INV_SQRT3, -SQRT_2_3, 0.0],
    [INV_SQRT3, INV_SQRT6, INV_SQRT2],
    [INV_SQRT3, INV_SQRT6, -INV_SQRT2],
];

/// `p M` for one RGB pixel.
pub fn decouple_pixel(p: [f64; 3]) -> [f64; 3] {
    let mut d = [0.0; 3];
    for (j, dj) in d.iter_mut().enumerate() {
        *dj = (0..3).map(|i| p[i] * DECOUPLE[i][j]).sum();
    }
    d
}

/// `d M^T` for one decoupled pixel (the inverse of [`decouple_pixel`]).
pub fn couple_pixel(d: [f64; 3]) -> [f64; 3] {
    let mut p = [0.0; 3];
    for (i, pi) in p.iter_mut().enumerate() {
        *pi = (0..3).map(|j| d[j] * DECOUPLE[i][j]).sum();
    }
    p
}

/// Applies `f` to every pixel of NCHW images with 3 channels.
fn map_pixels(x: &mut [f32], hw: usize, f: impl Fn([f64; 3]) -> [f64; 3]) {
    for img in x.chunks_exact_mut(3 * hw) {
        for j in 0..hw {
            let p = [img[j] as f64, img[hw + j] as f64, img[2 * hw + j] as f64];
            let q = f(p);
            for (c, v) in q.iter().enumerate() {
                img[c * hw + j] = *v as f32;
            }
        }
    }
}

/// NCHW RGB images in the decoupled space.
pub fn decouple(x: &mut [f32], hw: usize) {
    map_pixels(x, hw, decouple_pixel);
}

/// NCHW decoupled images back in RGB.
pub fn couple(x: &mut [f32], hw: usize) {
    map_pixels(x, hw, couple_pixel);
}

/// The grey image of NCHW RGB images: `[N, 1, H, W]`, the channel mean.
pub fn to_grey(x: &[f32], hw: usize) -> Vec<f32> {
    let mut g = Vec::with_capacity(x.len() / 3);
    for img in x.chunks_exact(3 * hw) {
        g.extend((0..hw).map(|j| (img[j] + img[hw + j] + img[2 * hw + j]) / 3.0));
    }
    g
}

/// Known grey levels of RGB samples: the colourisation constraint.
#[derive(Clone, Debug)]
pub struct GreyLevels {
    // The first decoupled channel of the grey image, sqrt(3) * grey, [N, H*W].
    known: Vec<f64>,
    shape: Shape,
}

impl GreyLevels {
    /// `grey` holds `[N, 1, H, W]` grey levels (the channel mean of the RGB
    /// image, in the model's data range); the samples are `[N, 3, H, W]`.
    pub fn new(grey: &[f32], n: usize, h: usize, w: usize) -> Result<Self> {
        let shape = Shape::new([n, 3, h, w])?;
        ensure(grey.len() == n * h * w, "grey image", || {
            format!("{} values for {n} images of {h}x{w}", grey.len())
        })?;
        ensure(grey.iter().all(|v| v.is_finite()), "grey image", || {
            "non-finite values".into()
        })?;
        let s3 = 3f64.sqrt();
        Ok(GreyLevels {
            known: grey.iter().map(|&g| s3 * g as f64).collect(),
            shape,
        })
    }
}

impl<B: Backend> Constraint<B> for GreyLevels {
    fn shape(&self) -> &Shape {
        &self.shape
    }

    fn project<S: Sde + ?Sized>(
        &self,
        b: &B,
        sde: &S,
        update: Update<B::Tensor>,
        t: &[f64],
        rng: &mut NoiseRng,
    ) -> sde_core::Result<Update<B::Tensor>> {
        let d = self.shape.dims();
        let hw = d[2] * d[3];
        if t.len() != d[0] {
            return Err(sde_core::Error::BatchMismatch {
                op: "colorize (times)",
                expected: d[0],
                got: t.len(),
            });
        }
        sde_core::backend::check_same_shape("colorize", &self.shape, b.shape(&update.x))?;
        sde_core::backend::check_same_shape("colorize", &self.shape, b.shape(&update.x_mean))?;
        let mut z = vec![0.0f32; self.known.len()];
        rng.next_key().fill_gaussian(&mut z);
        let mut x = b.to_vec(&update.x)?;
        let mut x_mean = b.to_vec(&update.x_mean)?;
        for (n, &tn) in t.iter().enumerate() {
            let k = sde.marginal(tn);
            let known = &self.known[n * hw..(n + 1) * hw];
            let noise = &z[n * hw..(n + 1) * hw];
            // Replacing decoupled channel 0 by `v` adds (v - <p, M[:,0]>) M[:,0] to p.
            let set = |img: &mut [f32], j: usize, v: f64| {
                let cur = INV_SQRT3 * (img[j] as f64 + img[hw + j] as f64 + img[2 * hw + j] as f64);
                let delta = ((v - cur) * INV_SQRT3) as f32;
                for c in 0..3 {
                    img[c * hw + j] += delta;
                }
            };
            let xi = &mut x[n * 3 * hw..(n + 1) * 3 * hw];
            let mi = &mut x_mean[n * 3 * hw..(n + 1) * 3 * hw];
            for j in 0..hw {
                set(xi, j, k.mean_coef * known[j] + k.std * noise[j] as f64);
                set(mi, j, k.mean_coef * known[j]);
            }
        }
        Ok(Update {
            x: b.tensor(x, &self.shape)?,
            x_mean: b.tensor(x_mean, &self.shape)?,
        })
    }
}
