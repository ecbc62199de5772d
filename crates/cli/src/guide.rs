//! Class-conditional sampling for `scoresde sample --classifier RUN --class
//! SPEC [--guidance W]`: the class specification, loading the classifier
//! run, and checking that it was trained for the score model's SDE, images
//! and data scaling (guidance adds `w grad_x log p_t(y | x)` at the score
//! model's times, so both must describe the same perturbed data).

use std::path::Path;

use anyhow::{bail, Context, Result};
use score_net::{ClassifierModel, NetBackend};
use sde_core::{AnySde, Sde};
use train::{ClassifierCheckpoint, Weights};

/// The most samples one guided `sample` call draws (`-n` times the classes).
pub const MAX_GUIDED_SAMPLES: usize = 1_000_000;

/// The most classes one `--class` may name.
const MAX_CLASSES: u32 = 10_000;

/// Parses `3`, `0..9` (inclusive) or `1,4,7` into class labels.
pub fn parse_classes(spec: &str) -> Result<Vec<u32>> {
    let bad = || {
        anyhow::anyhow!("--class {spec:?}: expected a class (3), a range (0..9) or a list (1,4,7)")
    };
    let labels: Vec<u32> = if let Some((a, b)) = spec.split_once("..") {
        let (a, b): (u32, u32) = (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        );
        if a > b {
            bail!("--class {spec:?}: the range is empty");
        }
        if b - a >= MAX_CLASSES {
            bail!("--class {spec:?}: at most {MAX_CLASSES} classes");
        }
        (a..=b).collect()
    } else {
        spec.split(',')
            .map(|s| s.trim().parse().map_err(|_| bad()))
            .collect::<Result<_>>()?
    };
    if labels.is_empty() {
        return Err(bad());
    }
    if labels.len() > MAX_CLASSES as usize {
        bail!("--class {spec:?}: at most {MAX_CLASSES} classes");
    }
    Ok(labels)
}

/// A classifier for guidance, its labels (one per class row) and the scale.
pub struct Guidance<B: NetBackend> {
    /// The classifier (with its own copy of the SDE).
    pub classifier: ClassifierModel<B, AnySde>,
    /// The classes, one grid row each.
    pub classes: Vec<u32>,
    /// The guidance scale `w`.
    pub scale: f64,
}

/// Loads the classifier run at `path` for guiding `score` (a score-model
/// checkpoint), checking that both describe the same perturbed data.
pub fn load<B: NetBackend>(
    b: &B,
    path: &Path,
    score: &train::TrainingCheckpoint,
    classes: Vec<u32>,
    scale: f64,
) -> Result<Guidance<B>> {
    if !(scale.is_finite() && scale >= 0.0) {
        bail!("--guidance {scale}: must be finite and >= 0");
    }
    let ck = ClassifierCheckpoint::load(path)
        .with_context(|| format!("loading the classifier {}", path.display()))?;
    if ck.image_shape != score.image_shape {
        bail!(
            "the classifier was trained on images of {:?}, the score model on {:?}",
            ck.image_shape,
            score.image_shape
        );
    }
    if ck.config.data.scale != score.config.data.scale {
        bail!(
            "the classifier saw data scaled to {:?}, the score model to {:?}",
            ck.config.data.scale,
            score.config.data.scale
        );
    }
    let (a, s) = (ck.config.sde.build()?, score.config.sde.build()?);
    let same = a.kind() == s.kind()
        && a.t_max() == s.t_max()
        && [0.01, 0.1, 0.5, 1.0].iter().all(|&t| {
            let (p, q) = (a.marginal(t * a.t_max()), s.marginal(t * s.t_max()));
            (p.mean_coef - q.mean_coef).abs() <= 1e-9 * q.mean_coef.abs().max(1.0)
                && (p.std - q.std).abs() <= 1e-9 * q.std.abs().max(1.0)
        });
    if !same {
        bail!(
            "the classifier was trained for another SDE ({:?}) than the score model ({:?})",
            ck.config.sde,
            score.config.sde
        );
    }
    let classifier = ck.model(b, Weights::Ema)?;
    let k = classifier.num_classes();
    if let Some(c) = classes.iter().find(|&&c| c as usize >= k) {
        bail!("--class {c}: the classifier knows classes 0..{}", k - 1);
    }
    Ok(Guidance {
        classifier,
        classes,
        scale,
    })
}
