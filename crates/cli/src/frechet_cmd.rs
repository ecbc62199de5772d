//! `scoresde frechet`: the sample-quality metric of the benchmarks. The
//! Fréchet distance between Gaussians fitted to generated images (a `.npy`
//! from `scoresde sample --npy`) and to a split of the run's data set, in
//! pixel space and, with `--classifier`, in the pooled-feature space of a
//! noise-conditional classifier evaluated at a small time (the FID recipe
//! with a small in-repo network instead of Inception).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use score_net::NetBackend;
use sde_core::stats::frechet_distance;
use sde_core::{NoiseRng, Sde};
use serde_json::json;
use train::data::Transform;
use train::{ClassifierCheckpoint, TrainingCheckpoint, Weights};

use crate::common::{chunks, with_backend, Ctx};

/// Arguments of `scoresde frechet`.
#[derive(Clone, Debug, clap::Args)]
pub struct FrechetArgs {
    /// Run (or checkpoint) whose data set and data scaling the samples are compared with.
    #[arg(long)]
    pub ckpt: PathBuf,
    /// The generated images: a .npy of NCHW floats in the data range, as
    /// `scoresde sample --npy` writes.
    #[arg(long, required_unless_present = "real", conflicts_with = "real")]
    pub npy: Option<PathBuf>,
    /// Score the real images of this split instead of samples (the floor of
    /// the metric: `--real test` against the training images).
    #[arg(long)]
    pub real: Option<String>,
    /// Reference split.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// A classifier run (`scoresde train-classifier` on the same data): also
    /// the distance in its pooled-feature space.
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    /// The SDE time at which the classifier's features are taken.
    #[arg(long, default_value_t = 1e-3)]
    pub feature_time: f64,
    /// Where the data set lives, if not where it was at training time.
    #[arg(long)]
    pub data_path: Option<PathBuf>,
}

/// `scoresde frechet`.
pub fn frechet(ctx: &Ctx, args: &FrechetArgs) -> Result<serde_json::Value> {
    let ck = TrainingCheckpoint::load(&args.ckpt)
        .with_context(|| format!("loading {}", args.ckpt.display()))?;
    let [c, h, w] = ck.image_shape;
    let splits = crate::common::load_data(&ck.config, args.data_path.clone())?;
    let split = |name: &str| match name {
        "test" => Ok(&splits.test),
        "train" => Ok(&splits.train),
        other => Err(anyhow::anyhow!(
            "a split is `test` or `train`, not `{other}`"
        )),
    };
    let set = split(&args.split)?;
    if set.len() < 2 {
        bail!("the {} split has fewer than two images", args.split);
    }
    let transform = Transform {
        scale: ck.config.data.scale,
        dequantize: false,
        random_flip: false,
    };
    let all = |s: &train::data::ImageSet| {
        let idx: Vec<usize> = (0..s.len()).collect();
        s.batch(&idx, &transform, &mut NoiseRng::new(0))
    };
    let (samples, n, what) = match (&args.npy, &args.real) {
        (Some(path), _) => {
            let (shape, samples) = train::images::read_npy(path)
                .with_context(|| format!("reading {}", path.display()))?;
            if shape.len() != 4 || shape[1..] != [c, h, w] {
                bail!(
                    "{}: the samples are {shape:?}, the run's images [N, {c}, {h}, {w}]",
                    path.display()
                );
            }
            if let Some(i) = samples.iter().position(|v| !v.is_finite()) {
                bail!("{}: sample value {i} is not finite", path.display());
            }
            (samples, shape[0], path.display().to_string())
        }
        (None, Some(name)) => {
            let real = split(name)?;
            (all(real), real.len(), format!("the {name} split"))
        }
        (None, None) => bail!("give --npy or --real"),
    };
    if n < 2 {
        bail!("{what}: at least two samples are needed");
    }
    let reference = all(set);
    let d = c * h * w;
    let pixels = frechet_distance(&samples, &reference, d)?;
    let features = match &args.classifier {
        None => None,
        Some(path) => {
            let clf = ClassifierCheckpoint::load(path)
                .with_context(|| format!("loading the classifier {}", path.display()))?;
            if clf.image_shape != ck.image_shape || clf.config.data.scale != ck.config.data.scale {
                bail!(
                    "the classifier was trained on {:?} images scaled to {:?}, the run on {:?} \
                     scaled to {:?}",
                    clf.image_shape,
                    clf.config.data.scale,
                    ck.image_shape,
                    ck.config.data.scale
                );
            }
            Some(with_backend!(ctx, b => {
                let f_samples = features(&b, &clf, &samples, n, [c, h, w], args.feature_time)?;
                let f_ref = features(&b, &clf, &reference, set.len(), [c, h, w], args.feature_time)?;
                let dim = f_samples.len() / n;
                frechet_distance(&f_samples, &f_ref, dim)?
            }))
        }
    };
    Ok(json!({
        "command": "frechet",
        "scored": what,
        "samples": n,
        "reference": set.len(),
        "split": args.split,
        "frechet_pixels": pixels,
        "frechet_features": features,
        "feature_time": args.classifier.as_ref().map(|_| args.feature_time),
    }))
}

/// The classifier's pooled features of `n` images at time `t`, in batches.
fn features<B: NetBackend>(
    b: &B,
    clf: &ClassifierCheckpoint,
    images: &[f32],
    n: usize,
    [c, h, w]: [usize; 3],
    t: f64,
) -> Result<Vec<f32>> {
    let model = clf.model(b, Weights::Ema)?;
    model.sde.check_time(t)?;
    let d = c * h * w;
    let mut out = Vec::new();
    for r in chunks(n, 256) {
        let x = b.tensor(
            images[r.start * d..r.end * d].to_vec(),
            &sde_core::Shape::new([r.len(), c, h, w])?,
        )?;
        let f = model.features(b, &x, &vec![t; r.len()])?;
        out.extend(b.to_vec(&f)?);
    }
    Ok(out)
}
