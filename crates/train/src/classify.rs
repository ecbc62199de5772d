//! Training the noise-conditional classifier `p_t(y | x(t))` that
//! class-conditional sampling needs (Song et al. 2021, section 5 and
//! appendix I.1): cross-entropy on data perturbed by the run's SDE,
//! `x(t) = m(t) x0 + s(t) z` with `t ~ U(eps, T)`, through the same loop as
//! the score model ([`ClassifierTask`] for [`crate::TrainLoop`]), and its
//! evaluation: test accuracy at chosen times.

use score_net::{cross_entropy_grad, Classifier, ClassifierModel, NetBackend, ParamStore};
use sde_core::{AnySde, NoiseKey, NoiseRng, Sde, SdeExt, Shape};
use serde::{Deserialize, Serialize};

use crate::data::{ImageSet, Transform};
use crate::error::{ensure_config, Result, TrainError};
use crate::run_checkpoint::RunCheckpoint;
use crate::task::{check_square_image, Batch, Task, TrainModel};
use crate::trainer::{RunConfig, TrainLoop};

/// The classifier's objective.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClassifierLoss {
    /// Smallest training time (times are drawn from `U(eps, T)`).
    pub eps: f64,
}

impl Default for ClassifierLoss {
    /// `eps = 1e-5`, as for the score model.
    fn default() -> Self {
        ClassifierLoss { eps: 1e-5 }
    }
}

impl<B: NetBackend> TrainModel<B, Classifier> for ClassifierModel<B, AnySde> {
    fn net(&self) -> &Classifier {
        &self.net
    }
    fn store(&self) -> &ParamStore<B> {
        &self.store
    }
    fn store_mut(&mut self) -> &mut ParamStore<B> {
        &mut self.store
    }
}

/// Training a noise-conditional classifier by cross-entropy on perturbed data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassifierTask;

/// The configuration of a classifier run (`net` is a
/// [`score_net::ClassifierConfig`], `loss` a [`ClassifierLoss`]).
pub type ClassifierRunConfig = RunConfig<ClassifierTask>;
/// The classifier trainer.
pub type ClassifierTrainer<B> = TrainLoop<B, ClassifierTask>;
/// A classifier training checkpoint.
pub type ClassifierCheckpoint = RunCheckpoint<ClassifierTask>;

impl Task for ClassifierTask {
    type Net = Classifier;
    type Loss = ClassifierLoss;
    type Model<B: NetBackend> = ClassifierModel<B, AnySde>;
    const NAME: &'static str = "classifier";

    fn validate(cfg: &RunConfig<Self>, sde: &AnySde) -> Result<()> {
        cfg.net.validate()?;
        let eps = cfg.loss.eps;
        ensure_config(
            eps.is_finite() && eps > 0.0 && eps < sde.t_max(),
            "loss.eps",
            || format!("{eps} must lie in (0, T)"),
        )
    }

    fn check_image_shape(cfg: &RunConfig<Self>, shape: [usize; 3]) -> Result<()> {
        check_square_image(cfg.net.in_channels, cfg.net.channel_mult.len(), shape)
    }

    fn record_sde_choices(cfg: &mut RunConfig<Self>, sde: &AnySde) {
        let c = cfg.net.backbone().conditioning(sde.kind());
        cfg.net.time_input = Some(c.time_input);
    }

    fn uses_dropout(cfg: &RunConfig<Self>) -> bool {
        cfg.net.dropout > 0.0
    }

    fn build<B: NetBackend>(
        b: &B,
        cfg: &RunConfig<Self>,
        image_size: usize,
        sde: AnySde,
    ) -> Result<ClassifierModel<B, AnySde>> {
        Ok(ClassifierModel::new(
            b, &cfg.net, image_size, sde, cfg.seed,
        )?)
    }

    fn loss<B: NetBackend>(
        model: &ClassifierModel<B, AnySde>,
        b: &B,
        batch: &Batch<'_, B::Tensor>,
        cfg: &ClassifierLoss,
        rng: &mut NoiseRng,
        dropout: bool,
        grads: Option<&mut B::Tensor>,
    ) -> Result<f64> {
        let labels = batch.labels.ok_or_else(|| TrainError::Config {
            field: "data".into(),
            reason: "training a classifier needs a labelled data set (digits, mnist, \
                     fashion-mnist, or a PNG folder with one sub-folder per class)"
                .into(),
        })?;
        let shape = b.shape(batch.x0).clone();
        let n = shape.batch();
        let sde = &model.sde;
        let t = sde_core::dsm::sample_times(rng, n, cfg.eps, sde.t_max())?;
        let z = b.gaussian(&shape, rng.next_key())?;
        let dropout_key = dropout.then(|| rng.next_key());
        let x_t = sde.perturb(b, batch.x0, &z, &t)?;
        let params = model.store.params();
        let (logits, cache) =
            model
                .net
                .forward(b, params, &x_t, &model.time_input(&t), dropout_key)?;
        let k = model.num_classes();
        let (per_sample, dlogits) = cross_entropy_grad(&b.to_vec(&logits)?, labels, k)?;
        if let Some(g) = grads {
            let dlogits = b.tensor(dlogits, &Shape::new([n, k])?)?;
            model.net.backward(b, params, &cache, &dlogits, g)?;
        }
        Ok(per_sample.iter().sum::<f64>() / n as f64)
    }
}

/// Test accuracy of a classifier at one time.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Accuracy {
    /// The SDE time the images were perturbed to.
    pub t: f64,
    /// Fraction of images classified correctly.
    pub accuracy: f64,
    /// Number of images.
    pub n: usize,
}

/// The accuracy of `model` on the labelled `set` (scaled by `transform`,
/// without augmentation) perturbed to each time of `times` (noise from
/// `seed`), in batches of `batch_size`.
pub fn accuracy_at_times<B: NetBackend>(
    b: &B,
    model: &ClassifierModel<B, AnySde>,
    set: &ImageSet,
    transform: &Transform,
    times: &[f64],
    seed: u64,
    batch_size: usize,
) -> Result<Vec<Accuracy>> {
    let labels = set.labels().ok_or_else(|| TrainError::Config {
        field: "data".into(),
        reason: "the evaluation set has no labels".into(),
    })?;
    ensure_config(!set.is_empty(), "data", || {
        "the evaluation set is empty".into()
    })?;
    ensure_config(batch_size > 0, "batch_size", || "must be > 0".into())?;
    let sde = &model.sde;
    if let Some(&bad) = times.iter().find(|&&t| !(0.0..=sde.t_max()).contains(&t)) {
        return Err(TrainError::Config {
            field: "times".into(),
            reason: format!("{bad} is outside [0, T = {}]", sde.t_max()),
        });
    }
    let plain = Transform {
        dequantize: false,
        random_flip: false,
        ..*transform
    };
    let [c, h, w] = set.image_shape();
    let mut out = Vec::with_capacity(times.len());
    for (ti, &t) in times.iter().enumerate() {
        let mut correct = 0usize;
        for (chunk, start) in (0..set.len()).step_by(batch_size).enumerate() {
            let idx: Vec<usize> = (start..(start + batch_size).min(set.len())).collect();
            let n = idx.len();
            let mut rng = NoiseRng::new(seed);
            let x0 = set.batch(&idx, &plain, &mut rng);
            let shape = Shape::new([n, c, h, w])?;
            let x0 = b.tensor(x0, &shape)?;
            let key = NoiseKey::new(seed, ((ti as u64) << 32) | chunk as u64);
            let z = b.gaussian(&shape, key)?;
            let tv = vec![t; n];
            let x_t = sde.perturb(b, &x0, &z, &tv)?;
            let pred = model.predict(b, &x_t, &tv)?;
            correct += pred
                .iter()
                .zip(&idx)
                .filter(|(p, &i)| **p == labels[i])
                .count();
        }
        out.push(Accuracy {
            t,
            accuracy: correct as f64 / set.len() as f64,
            n: set.len(),
        });
    }
    Ok(out)
}
