//! The flat parameter store (DESIGN.md section 2): all parameters in one
//! buffer and all gradients in another of the same layout, with named
//! [`View`]s, so that Adam, EMA and global-norm clipping are one pass each
//! and a checkpoint is one array. Initialisation is deterministic for a seed.

use std::collections::HashMap;

use sde_core::{Backend, Coef, NoiseKey, Shape};

use crate::error::NetError;
use crate::{Result, View};

/// How a parameter is initialised.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// All zeros (biases).
    Zeros,
    /// All ones (normalisation scales).
    Ones,
    /// DDPM++'s `default_init`: variance scaling with `fan_avg` and a uniform
    /// distribution, `U(-sqrt(3 s / fan_avg), +sqrt(3 s / fan_avg))`, where
    /// `fan_in = shape[1] * receptive`, `fan_out = shape[0] * receptive` and
    /// `receptive` is the product of the remaining dimensions. DDPM++ uses
    /// `scale = 1e-10` ("zero init") for the last conv of each residual branch.
    VarianceScaling {
        /// The scale `s`.
        scale: f32,
    },
    /// `N(0, std^2)` (Gaussian-Fourier embedding weights, which are not trained).
    Normal {
        /// Standard deviation.
        std: f32,
    },
}

impl Init {
    /// Fills `out` (a parameter of `shape`) from `key`.
    fn fill(&self, shape: &[usize], key: NoiseKey, out: &mut [f32]) {
        match *self {
            Init::Zeros => out.fill(0.0),
            Init::Ones => out.fill(1.0),
            Init::VarianceScaling { scale } => {
                let receptive: usize = shape.iter().skip(2).product();
                let fan_out = shape.first().copied().unwrap_or(1) * receptive;
                let fan_in = shape.get(1).copied().unwrap_or(1) * receptive;
                let fan_avg = (fan_in + fan_out) as f32 / 2.0;
                let bound = (3.0 * scale / fan_avg).sqrt();
                key.fill_uniform(out);
                out.iter_mut().for_each(|u| *u = (2.0 * *u - 1.0) * bound);
            }
            Init::Normal { std } => {
                key.fill_gaussian(out);
                out.iter_mut().for_each(|v| *v *= std);
            }
        }
    }
}

/// Every view starts at a multiple of this many elements (16 bytes), so the
/// wgpu kernels can load weights as `vec4`s; the few padding elements between
/// views are zero in the parameters and never receive a gradient.
pub const PARAM_ALIGN: usize = 4;

/// Collects parameter declarations, then allocates and initialises the store.
#[derive(Clone, Debug, Default)]
pub struct ParamBuilder {
    specs: Vec<(String, View, Init)>,
    index: HashMap<String, usize>,
    // End of the last view (the flat buffer's length).
    total: usize,
}

impl ParamBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        ParamBuilder::default()
    }

    /// Declares a parameter; returns its view. Names must be unique and
    /// shapes non-empty with no zero dimension.
    pub fn add(&mut self, name: impl Into<String>, shape: &[usize], init: Init) -> Result<View> {
        let name = name.into();
        if self.index.contains_key(&name) {
            return Err(NetError::View {
                name,
                reason: "declared twice".into(),
            });
        }
        if shape.is_empty() || shape.contains(&0) {
            return Err(NetError::View {
                name,
                reason: format!("invalid shape {shape:?}"),
            });
        }
        let view = View::new(self.total.next_multiple_of(PARAM_ALIGN), shape.to_vec());
        self.total = view.offset + view.numel();
        self.index.insert(name.clone(), self.specs.len());
        self.specs.push((name, view.clone(), init));
        Ok(view)
    }

    /// Names and views declared so far, in order.
    pub fn views(&self) -> impl Iterator<Item = (&str, &View)> {
        self.specs.iter().map(|(n, v, _)| (n.as_str(), v))
    }

    /// The named views declared so far as owned pairs (what checkpoints store).
    pub fn layout(&self) -> Vec<(String, View)> {
        layout_of(self.views())
    }

    /// Total number of scalars declared so far (alignment padding excluded).
    pub fn num_params(&self) -> usize {
        self.specs.iter().map(|(_, v, _)| v.numel()).sum()
    }

    /// Length of the flat buffers: the end of the last view, padding between
    /// views included (see [`PARAM_ALIGN`]).
    pub fn flat_len(&self) -> usize {
        self.total
    }

    /// Allocates the parameter and gradient buffers on `b` and initialises
    /// every parameter from `seed` (parameter `i` uses stream `i`).
    pub fn build<B: Backend>(self, b: &B, seed: u64) -> Result<ParamStore<B>> {
        let mut host = vec![0.0f32; self.flat_len().max(1)];
        for (i, (_, view, init)) in self.specs.iter().enumerate() {
            init.fill(
                &view.shape,
                NoiseKey::new(seed, i as u64),
                &mut host[view.range()],
            );
        }
        let shape = Shape::new([host.len()])?;
        let params = b.tensor(host, &shape)?;
        let grads = b.zeros(&shape)?;
        Ok(ParamStore {
            specs: self.specs.into_iter().map(|(n, v, _)| (n, v)).collect(),
            index: self.index,
            params,
            grads,
        })
    }
}

/// Owned `(name, view)` pairs.
fn layout_of<'a>(views: impl Iterator<Item = (&'a str, &'a View)>) -> Vec<(String, View)> {
    views.map(|(n, v)| (n.to_string(), v.clone())).collect()
}

/// Length of a flat buffer holding `views`: the end of the last one (at
/// least 1, as the store allocates).
pub fn flat_len<'a>(views: impl IntoIterator<Item = &'a View>) -> usize {
    views
        .into_iter()
        .map(|v| v.offset + v.numel())
        .max()
        .unwrap_or(0)
        .max(1)
}

/// Parameters and gradients in two flat buffers with named views.
#[derive(Clone, Debug)]
pub struct ParamStore<B: Backend> {
    specs: Vec<(String, View)>,
    index: HashMap<String, usize>,
    params: B::Tensor,
    grads: B::Tensor,
}

impl<B: Backend> ParamStore<B> {
    /// The view named `name`.
    pub fn view(&self, name: &str) -> Result<&View> {
        self.index
            .get(name)
            .map(|&i| &self.specs[i].1)
            .ok_or_else(|| NetError::View {
                name: name.to_string(),
                reason: "no such parameter".into(),
            })
    }

    /// Names and views in declaration order.
    pub fn views(&self) -> impl Iterator<Item = (&str, &View)> {
        self.specs.iter().map(|(n, v)| (n.as_str(), v))
    }

    /// Number of scalar parameters (alignment padding excluded).
    pub fn num_params(&self) -> usize {
        self.specs.iter().map(|(_, v)| v.numel()).sum()
    }

    /// Length of the flat parameter and gradient buffers (padding between
    /// views included, see [`PARAM_ALIGN`]).
    pub fn flat_len(&self) -> usize {
        flat_len(self.specs.iter().map(|(_, v)| v))
    }

    /// The flat parameter buffer.
    pub fn params(&self) -> &B::Tensor {
        &self.params
    }

    /// The flat gradient buffer.
    pub fn grads(&self) -> &B::Tensor {
        &self.grads
    }

    /// Mutable access to the parameter buffer (optimisers update it in place).
    pub fn params_mut(&mut self) -> &mut B::Tensor {
        &mut self.params
    }

    /// Mutable access to the gradient buffer (backward passes accumulate into it).
    pub fn grads_mut(&mut self) -> &mut B::Tensor {
        &mut self.grads
    }

    /// Replaces the parameters (e.g. after an optimiser step or a checkpoint
    /// load); the shape must match.
    pub fn set_params(&mut self, b: &B, params: B::Tensor) -> Result<()> {
        sde_core::backend::check_same_shape("set_params", b.shape(&self.params), b.shape(&params))?;
        self.params = params;
        Ok(())
    }

    /// Replaces the parameters by host values in the store's flat layout.
    pub fn set_params_from_host(&mut self, b: &B, values: &[f32]) -> Result<()> {
        let shape = b.shape(&self.params).clone();
        if values.len() != shape.numel() {
            return Err(NetError::View {
                name: "params".into(),
                reason: format!(
                    "{} values for a flat buffer of {}",
                    values.len(),
                    shape.numel()
                ),
            });
        }
        let params = b.tensor(values.to_vec(), &shape)?;
        self.set_params(b, params)
    }

    /// The named views as owned pairs (what checkpoints store).
    pub fn layout(&self) -> Vec<(String, View)> {
        layout_of(self.views())
    }

    /// Sets every gradient to zero.
    pub fn zero_grads(&mut self, b: &B) -> Result<()> {
        self.grads = b.scale(&self.grads, Coef::Scalar(0.0))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sde_core::CpuBackend;

    #[test]
    fn views_are_contiguous_named_and_seeded() {
        let mut pb = ParamBuilder::new();
        let w = pb
            .add(
                "conv.w",
                &[4, 3, 3, 3],
                Init::VarianceScaling { scale: 1.0 },
            )
            .unwrap();
        let bias = pb.add("conv.b", &[4], Init::Zeros).unwrap();
        let g = pb.add("norm.g", &[4], Init::Ones).unwrap();
        assert_eq!((w.offset, bias.offset, g.offset), (0, 108, 112));
        // Views start on PARAM_ALIGN boundaries; the padding stays zero.
        let odd = pb.add("odd", &[3], Init::Ones).unwrap();
        let after = pb.add("after", &[2], Init::Ones).unwrap();
        assert_eq!((odd.offset, after.offset), (116, 120));
        assert_eq!((pb.num_params(), pb.flat_len()), (121, 122));
        assert!(pb.add("conv.b", &[4], Init::Zeros).is_err());
        assert!(pb.add("bad", &[0, 2], Init::Zeros).is_err());
        let store = pb.clone().build(&CpuBackend, 7).unwrap();
        let again = pb.build(&CpuBackend, 7).unwrap();
        assert_eq!(store.params().data(), again.params().data());
        assert_eq!((store.num_params(), store.flat_len()), (121, 122));
        let p = store.params().data();
        // fan_in = 27, fan_out = 36: bound = sqrt(3 / 31.5).
        let bound = (3.0f32 / 31.5).sqrt();
        assert!(p[..108].iter().all(|v| v.abs() <= bound));
        assert!(p[..108].iter().any(|v| v.abs() > 0.5 * bound));
        assert!(p[108..112].iter().all(|&v| v == 0.0));
        assert!(p[112..119].iter().all(|&v| v == 1.0));
        assert_eq!((p[119], p[120], p[121]), (0.0, 1.0, 1.0));
        assert_eq!(store.view("norm.g").unwrap(), &g);
        assert!(store.view("nope").is_err());
        assert!(store.grads().data().iter().all(|&v| v == 0.0));
    }
}
