//! What the training loop trains: a [`Task`] ties a [`Network`] to its model
//! type (the network, its parameters and the SDE), its objective and the
//! objective's configuration. The loop ([`crate::trainer`]) — Adam, warm-up,
//! clipping, EMA, atomic checkpoints, exact resume, interruption, logging —
//! is written once over this trait.
//!
//! [`ScoreTask`] trains the score UNet by denoising score matching
//! ([`crate::loss`]).

use std::fmt::Debug;

use score_net::{NetBackend, Network, ParamStore, Unet, UnetScore};
use sde_core::{AnySde, NoiseRng};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{ensure_config, Result};
use crate::loss::{self, LossConfig, LossValue};
use crate::trainer::RunConfig;

/// A clean training batch: images on the device and, for labelled data, one
/// class label per image.
#[derive(Clone, Debug)]
pub struct Batch<'a, T> {
    /// The images `[N, C, H, W]` in the model's data range.
    pub x0: &'a T,
    /// The class labels, when the data set has them.
    pub labels: Option<&'a [u32]>,
}

/// A model the loop can update: a network with its parameter store.
pub trait TrainModel<B: NetBackend, N: Network> {
    /// The network structure.
    fn net(&self) -> &N;
    /// The parameters (and the gradient buffer).
    fn store(&self) -> &ParamStore<B>;
    /// Mutable parameters (the optimiser updates them in place).
    fn store_mut(&mut self) -> &mut ParamStore<B>;
}

impl<B: NetBackend> TrainModel<B, Unet> for UnetScore<B, AnySde> {
    fn net(&self) -> &Unet {
        &self.net
    }
    fn store(&self) -> &ParamStore<B> {
        &self.store
    }
    fn store_mut(&mut self) -> &mut ParamStore<B> {
        &mut self.store
    }
}

/// A kind of training run (a marker type): which network, which model,
/// which objective.
pub trait Task: Clone + Debug + Default + PartialEq + Send + Sync + 'static {
    /// The network trained.
    type Net: Network;
    /// The objective's configuration (the `[loss]` table of a run's config).
    type Loss: Clone + Debug + Default + PartialEq + Serialize + DeserializeOwned + Send + Sync;
    /// The trained model on backend `B`.
    type Model<B: NetBackend>: TrainModel<B, Self::Net>;

    /// What is trained, for messages (`"score model"`, `"classifier"`).
    const NAME: &'static str;

    /// Checks the network and objective configurations (the SDE is built).
    fn validate(cfg: &RunConfig<Self>, sde: &AnySde) -> Result<()>;

    /// Checks that images of `[C, H, W]` fit the configured network.
    fn check_image_shape(cfg: &RunConfig<Self>, shape: [usize; 3]) -> Result<()>;

    /// Records in a new run's configuration the choices made from its SDE
    /// (the score network's time input and output scale), so that the run's
    /// checkpoints and `config.toml` say what the network was trained with.
    fn record_sde_choices(_cfg: &mut RunConfig<Self>, _sde: &AnySde) {}

    /// Whether the network has dropout to switch on during training.
    fn uses_dropout(cfg: &RunConfig<Self>) -> bool;

    /// A freshly initialised model for square images of height `image_size`.
    fn build<B: NetBackend>(
        b: &B,
        cfg: &RunConfig<Self>,
        image_size: usize,
        sde: AnySde,
    ) -> Result<Self::Model<B>>;

    /// The objective on one batch; with `grads`, back-propagates and
    /// accumulates the parameter gradients into it.
    fn loss<B: NetBackend>(
        model: &Self::Model<B>,
        b: &B,
        batch: &Batch<'_, B::Tensor>,
        cfg: &Self::Loss,
        rng: &mut NoiseRng,
        dropout: bool,
        grads: Option<&mut B::Tensor>,
    ) -> Result<f64>;
}

/// Checks `[C, H, W]` against a network's input channels and number of
/// resolution levels (square images, size divisible by `2^(levels - 1)`).
pub fn check_square_image(in_channels: usize, levels: usize, [c, h, w]: [usize; 3]) -> Result<()> {
    ensure_config(c == in_channels, "net.in_channels", || {
        format!("is {in_channels}, the images have {c} channels")
    })?;
    ensure_config(h == w && h > 0, "data", || {
        format!("images must be square, got {h}x{w}")
    })?;
    let f = 1usize << levels.saturating_sub(1);
    ensure_config(h % f == 0, "net.channel_mult", || {
        format!("{levels} levels need the image size to be divisible by {f}; it is {h}")
    })
}

/// Training the score UNet by denoising score matching ([`crate::loss`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScoreTask;

impl Task for ScoreTask {
    type Net = Unet;
    type Loss = LossConfig;
    type Model<B: NetBackend> = UnetScore<B, AnySde>;
    const NAME: &'static str = "score model";

    fn validate(cfg: &RunConfig<Self>, sde: &AnySde) -> Result<()> {
        cfg.net.validate()?;
        cfg.loss.validate(sde)
    }

    fn check_image_shape(cfg: &RunConfig<Self>, shape: [usize; 3]) -> Result<()> {
        check_square_image(cfg.net.in_channels, cfg.net.channel_mult.len(), shape)
    }

    fn record_sde_choices(cfg: &mut RunConfig<Self>, sde: &AnySde) {
        cfg.net = cfg.net.with_conditioning_for(sde_core::Sde::kind(sde));
    }

    fn uses_dropout(cfg: &RunConfig<Self>) -> bool {
        cfg.net.dropout > 0.0
    }

    fn build<B: NetBackend>(
        b: &B,
        cfg: &RunConfig<Self>,
        image_size: usize,
        sde: AnySde,
    ) -> Result<UnetScore<B, AnySde>> {
        Ok(UnetScore::new(b, &cfg.net, image_size, sde, cfg.seed)?)
    }

    fn loss<B: NetBackend>(
        model: &UnetScore<B, AnySde>,
        b: &B,
        batch: &Batch<'_, B::Tensor>,
        cfg: &LossConfig,
        rng: &mut NoiseRng,
        dropout: bool,
        grads: Option<&mut B::Tensor>,
    ) -> Result<f64> {
        let LossValue { loss, .. } = loss::compute(b, model, batch.x0, cfg, rng, dropout, grads)?;
        Ok(loss)
    }
}
