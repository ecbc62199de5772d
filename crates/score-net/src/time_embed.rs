//! The time embedding shared by the score network ([`crate::Unet`]) and the
//! noise-conditional classifier ([`crate::Classifier`]): host-side features of
//! the network's time input ([`crate::embed`]: sinusoidal for DDPM++,
//! Gaussian Fourier for NCSN++; Song et al. 2021, appendix H), followed by a
//! two-layer MLP `temb.1(silu(temb.0(features)))` whose output is projected
//! into every residual block. Also the network's conditioning on the SDE:
//! its time input ([`TimeInput`]) and output scale ([`OutputScale`]),
//! chosen once per run ([`Conditioning`]).

use sde_core::{Sde, SdeKind, Shape};
use serde::{Deserialize, Serialize};

use crate::embed;
use crate::layers::Linear;
use crate::params::ParamBuilder;
use crate::unet::Embedding;
use crate::{NetBackend, Result};

/// What a network sees as its time input (Song et al. 2021, appendix H).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimeInput {
    /// `999 t`, the DDPM step index scale (DDPM++; any schedule).
    DdpmSteps,
    /// The kernel's noise level `s(t)` (NCSN++ with the positional embedding).
    NoiseStd,
    /// `ln s(t)` (NCSN++ with Gaussian Fourier features).
    LogNoiseStd,
}

impl TimeInput {
    /// The input for each SDE time `t`.
    pub fn of<S: Sde + ?Sized>(self, sde: &S, t: &[f64]) -> Vec<f64> {
        t.iter()
            .map(|&t| match self {
                TimeInput::DdpmSteps => 999.0 * t,
                TimeInput::NoiseStd => sde.marginal(t).std,
                TimeInput::LogNoiseStd => sde.marginal(t).std.ln(),
            })
            .collect()
    }
}

/// How a score network's output becomes the score.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputScale {
    /// The network predicts the added noise: `score = -out / s(t)` (DDPM++).
    Noise,
    /// The network predicts `s(t)` times the score: `score = out / s(t)` (NCSN++).
    ScaledScore,
}

impl OutputScale {
    /// The factor `c` with `score = c * out` at noise level `s`.
    pub fn factor(self, s: f64) -> f64 {
        match self {
            OutputScale::Noise => -1.0 / s,
            OutputScale::ScaledScore => 1.0 / s,
        }
    }
}

/// A score network's conditioning: its time input and output scale. Chosen
/// once, from the SDE, when a run is configured (the configuration then
/// records it); [`Conditioning::paper_default`] is that choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conditioning {
    /// What the network sees as time.
    pub time_input: TimeInput,
    /// How its output becomes the score.
    pub output: OutputScale,
}

impl Conditioning {
    /// The paper's conditioning for an SDE family (appendix H): NCSN++'s for
    /// VE (`s(t)` with the positional embedding or `ln s(t)` with Fourier
    /// features; output `s(t)` times the score), DDPM++'s for every other
    /// family (`999 t`, noise prediction). Configurations written before the
    /// conditioning was recorded are read with this default.
    pub fn paper_default(kind: SdeKind, embedding: Embedding) -> Self {
        match (kind, embedding) {
            (SdeKind::Ve, Embedding::Positional) => Conditioning {
                time_input: TimeInput::NoiseStd,
                output: OutputScale::ScaledScore,
            },
            (SdeKind::Ve, Embedding::Fourier) => Conditioning {
                time_input: TimeInput::LogNoiseStd,
                output: OutputScale::ScaledScore,
            },
            _ => Conditioning {
                time_input: TimeInput::DdpmSteps,
                output: OutputScale::Noise,
            },
        }
    }
}

/// Time features plus the MLP `temb.0` (`nf -> 4 nf`), SiLU, `temb.1`
/// (`4 nf -> 4 nf`). The Fourier frequencies are fixed (drawn from the seed),
/// not parameters.
#[derive(Clone, Debug)]
pub struct TimeEmbed {
    embedding: Embedding,
    nf: usize,
    fourier: Vec<f32>,
    l0: Linear,
    l1: Linear,
}

/// What [`TimeEmbed::backward`] needs from the forward pass.
#[derive(Clone, Debug)]
pub struct TimeEmbedCache<T> {
    emb: T,
    t0: T,
    st0: T,
}

impl TimeEmbed {
    /// Declares `temb.0` and `temb.1` (in that order) for `nf` feature
    /// channels; `fourier_scale` and `seed` fix the Fourier frequencies.
    pub fn new(
        pb: &mut ParamBuilder,
        embedding: Embedding,
        nf: usize,
        fourier_scale: f32,
        seed: u64,
    ) -> Result<Self> {
        let dim = 4 * nf;
        let l0 = Linear::new(pb, "temb.0", nf, dim, 1.0)?;
        let l1 = Linear::new(pb, "temb.1", dim, dim, 1.0)?;
        let fourier = match embedding {
            Embedding::Fourier => embed::fourier_weights(nf / 2, fourier_scale, seed),
            Embedding::Positional => Vec::new(),
        };
        Ok(TimeEmbed {
            embedding,
            nf,
            fourier,
            l0,
            l1,
        })
    }

    /// Width of the embedding the residual blocks receive (`4 nf`).
    pub fn dim(&self) -> usize {
        4 * self.nf
    }

    /// The host-side features `[N, nf]` uploaded to `b`.
    fn features<B: NetBackend>(&self, b: &B, time_input: &[f64]) -> Result<B::Tensor> {
        let host = match self.embedding {
            Embedding::Positional => embed::sinusoidal(time_input, self.nf, 10_000.0),
            Embedding::Fourier => embed::gaussian_fourier(time_input, &self.fourier),
        };
        Ok(b.tensor(host, &Shape::new([time_input.len(), self.nf])?)?)
    }

    /// The embedding `[N, 4 nf]` of each time input, and its cache.
    pub fn forward<B: NetBackend>(
        &self,
        b: &B,
        p: &B::Tensor,
        time_input: &[f64],
    ) -> Result<(B::Tensor, TimeEmbedCache<B::Tensor>)> {
        let emb = self.features(b, time_input)?;
        let t0 = self.l0.forward(b, p, &emb)?;
        let st0 = b.silu(&t0)?;
        let temb = self.l1.forward(b, p, &st0)?;
        Ok((temb, TimeEmbedCache { emb, t0, st0 }))
    }

    /// Accumulates the MLP's parameter gradients from `dtemb` (the gradient
    /// with respect to the embedding) into `g`. Times are not differentiated.
    pub fn backward<B: NetBackend>(
        &self,
        b: &B,
        p: &B::Tensor,
        c: &TimeEmbedCache<B::Tensor>,
        dtemb: &B::Tensor,
        g: &mut B::Tensor,
    ) -> Result<()> {
        let dst0 = self.l1.backward(b, p, &c.st0, dtemb, g)?;
        let dt0 = b.silu_backward(&c.t0, &dst0)?;
        let _ = self.l0.backward(b, p, &c.emb, &dt0, g)?;
        Ok(())
    }
}

impl<T> TimeEmbedCache<T> {
    /// The cache with `f` applied to each tensor (the inference forward
    /// maps it to `()`, dropping the tensors).
    pub(crate) fn map<U>(self, mut f: impl FnMut(T) -> U) -> TimeEmbedCache<U> {
        TimeEmbedCache {
            emb: f(self.emb),
            t0: f(self.t0),
            st0: f(self.st0),
        }
    }
}
