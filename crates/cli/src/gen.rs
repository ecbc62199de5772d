//! The commands that sample a trained model: `sample` (PC or
//! probability-flow ODE, optionally class-guided; PNG grid and raw samples),
//! with the model loading, sampler flags, progress hooks and PNG grids the
//! other model commands share.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use score_net::NetBackend;
use sde_core::{AnySde, NoiseRng, ScoreModel, Shape};
use serde_json::json;
use solvers::SamplerConfig;
use train::{TrainingCheckpoint, Weights};

use crate::common::{chunks, serde_enum, with_backend, Ctx};
use crate::sampler_args::{progress_bar, steps_set_sde_n, CliHooks};
pub use crate::sampler_args::{OdeArgs, PcArgs, SamplerArgs, SamplerKind};

/// Which checkpoint and weights to use.
#[derive(Clone, Debug, clap::Args)]
pub struct ModelArgs {
    /// Run directory (or checkpoint file) written by `scoresde train`.
    #[arg(long)]
    pub ckpt: PathBuf,
    /// Weights to use: the EMA (default, as in the paper) or the raw parameters.
    #[arg(long, default_value = "ema", value_parser = serde_enum::<Weights>)]
    pub weights: Weights,
    /// Sampler steps: the fixed-step samplers' step count (PC's levels with
    /// --grid); for PC on the SDE's own grid (and inpaint, colorize) the
    /// SDE's number of discretisation steps N, whose grid its predictors need.
    #[arg(long)]
    pub steps: Option<usize>,
}

/// A loaded model with its run configuration, on the backend it runs on.
pub struct Loaded<B: NetBackend> {
    /// The checkpoint.
    pub ck: TrainingCheckpoint,
    /// The model.
    pub model: score_net::UnetScore<B, AnySde>,
    /// The backend.
    pub b: B,
}

impl ModelArgs {
    /// Loads the checkpoint and builds the model on `b` (with `--steps` as
    /// the SDE's N).
    pub fn load<B: NetBackend>(&self, b: B) -> Result<Loaded<B>> {
        self.load_with_sde_steps(b, self.steps)
    }

    /// Loads the checkpoint and builds the model on `b`, with the SDE's N
    /// set to `sde_steps` when given.
    pub fn load_with_sde_steps<B: NetBackend>(
        &self,
        b: B,
        sde_steps: Option<usize>,
    ) -> Result<Loaded<B>> {
        let ck = TrainingCheckpoint::load(&self.ckpt)
            .with_context(|| format!("loading {}", self.ckpt.display()))?;
        let mut model = ck.model(&b, self.weights)?;
        if let Some(n) = sde_steps {
            model.sde = ck.config.sde.with_num_steps(n).build()?;
        }
        Ok(Loaded { ck, model, b })
    }
}

impl<B: NetBackend> Loaded<B> {
    /// `[C, H, W]` of the model's images.
    pub fn image_shape(&self) -> [usize; 3] {
        self.ck.image_shape
    }
    /// The data range `(low, high)`.
    pub fn range(&self) -> (f64, f64) {
        self.ck.config.data.scale.range()
    }
    pub(crate) fn shape(&self, n: usize) -> Result<Shape> {
        let [c, h, w] = self.image_shape();
        Ok(Shape::new([n, c, h, w])?)
    }
}

/// Arguments of `scoresde sample`.
#[derive(Clone, Debug, clap::Args)]
pub struct SampleArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    /// Number of samples (per class with `--class`).
    #[arg(short, long, default_value_t = 64)]
    pub n: usize,
    /// Classifier run (from `scoresde train-classifier`) for class-conditional sampling.
    #[arg(long, requires = "class")]
    pub classifier: Option<PathBuf>,
    /// Classes to sample: `3`, `0..9` (inclusive) or `1,4,7`; one grid row per class.
    #[arg(long, requires = "classifier")]
    pub class: Option<String>,
    /// Guidance scale w: score + w grad log p_t(y|x) (1 is the paper's conditional score).
    #[arg(long, default_value_t = 1.0)]
    pub guidance: f64,
    /// Samples per batch.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Enlarge each image this many times in the PNG (default: to at least 32 pixels).
    #[arg(long)]
    pub zoom: Option<usize>,
    /// PNG grid of the samples.
    #[arg(long, short, default_value = "samples.png")]
    pub out: PathBuf,
    /// Also write the raw samples as .npy (float32, NCHW, data range).
    #[arg(long)]
    pub npy: Option<PathBuf>,
}

/// Draws `labels.len()` samples (or `args.n` without guidance), sample `i`
/// guided towards `labels[i]`; returns the NCHW data and the total NFE.
pub fn draw_samples<B: NetBackend>(
    ctx: &Ctx,
    m: &Loaded<B>,
    args: &SampleArgs,
    cfg: &SamplerConfig,
    guidance: Option<(&crate::guide::Guidance<B>, &[u32])>,
) -> Result<(Vec<f32>, usize)> {
    let b = &m.b;
    cfg.validate(&m.model.sde)?;
    let mut rng = NoiseRng::new(ctx.seed.unwrap_or(0));
    let mut out = Vec::new();
    let mut nfe = 0;
    let total = guidance.map_or(args.n, |(_, l)| l.len());
    for r in chunks(total, args.batch_size) {
        let shape = m.shape(r.len())?;
        let model: Box<dyn ScoreModel<B> + '_> = match guidance {
            Some((g, labels)) => Box::new(cond::Guided::new::<B>(
                &m.model,
                &g.classifier,
                labels[r.clone()].to_vec(),
                g.scale,
            )?),
            None => Box::new(&m.model),
        };
        let bar = progress_bar(ctx, cfg, &m.model.sde, "sample");
        let o = solvers::sample(
            b,
            &m.model.sde,
            &*model,
            &shape,
            cfg,
            &mut rng,
            &mut CliHooks::new(&bar),
        )
        .map_err(interrupt_aware)?;
        bar.finish_and_clear();
        nfe += o.nfe;
        out.extend(b.to_vec(&o.samples)?);
    }
    Ok((out, nfe))
}

/// Turns an interruption (Ctrl-C, reported through the sampler hooks) into a
/// plain message.
pub fn interrupt_aware(e: solvers::SolverError) -> anyhow::Error {
    if matches!(e, solvers::SolverError::Interrupted { .. }) {
        anyhow::anyhow!("interrupted by the user")
    } else {
        e.into()
    }
}

pub(crate) fn grid_cols(n: usize) -> usize {
    ((n as f64).sqrt().ceil() as usize).max(1)
}

/// Nearest-neighbour enlargement of NCHW images by `zoom`.
pub fn upscale(x: &[f32], [n, c, h, w]: [usize; 4], zoom: usize) -> (Vec<f32>, [usize; 4]) {
    let z = zoom.max(1);
    if z == 1 {
        return (x.to_vec(), [n, c, h, w]);
    }
    let (hz, wz) = (h * z, w * z);
    let mut out = Vec::with_capacity(n * c * hz * wz);
    for plane in x.chunks_exact(h * w) {
        for y in 0..hz {
            let row = &plane[(y / z) * w..(y / z + 1) * w];
            out.extend((0..wz).map(|xx| row[xx / z]));
        }
    }
    (out, [n, c, hz, wz])
}

/// Writes a PNG grid, enlarged by `zoom` (default: to at least 32 pixels a side).
pub fn write_grid(
    path: &std::path::Path,
    x: &[f32],
    shape: [usize; 4],
    range: (f64, f64),
    cols: usize,
    zoom: Option<usize>,
) -> Result<()> {
    let zoom = zoom.unwrap_or_else(|| 32usize.div_ceil(shape[2].max(1)));
    let (x, shape) = upscale(x, shape, zoom);
    train::images::write_png_grid(path, &x, shape, range, cols)?;
    Ok(())
}

/// `scoresde sample`.
pub fn sample(ctx: &Ctx, args: &SampleArgs) -> Result<serde_json::Value> {
    if args.n == 0 {
        bail!("-n must be at least 1");
    }
    let cfg = args.sampler.config(args.model.steps)?;
    crate::common::check_output(&args.out, &args.model.ckpt, "--out")?;
    if let Some(p) = &args.npy {
        crate::common::check_output(p, &args.model.ckpt, "--npy")?;
    }
    let classes = match &args.class {
        Some(spec) => {
            let classes = crate::guide::parse_classes(spec)?;
            let total = args.n.checked_mul(classes.len());
            if total.is_none_or(|t| t > crate::guide::MAX_GUIDED_SAMPLES) {
                bail!(
                    "-n {} for {} classes: at most {} guided samples in one call",
                    args.n,
                    classes.len(),
                    crate::guide::MAX_GUIDED_SAMPLES
                );
            }
            Some(classes)
        }
        None => None,
    };
    let sde_steps = args.model.steps.filter(|_| steps_set_sde_n(&cfg));
    with_backend!(ctx, b => {
        let m = args.model.load_with_sde_steps(b, sde_steps)?;
        let guidance = match (&args.classifier, classes) {
            (Some(path), Some(classes)) => Some(crate::guide::load(
                &m.b,
                path,
                &m.ck,
                classes,
                args.guidance,
            )?),
            _ => None,
        };
        sample_on(ctx, m, args, &cfg, guidance.as_ref())
    })
}

fn sample_on<B: NetBackend>(
    ctx: &Ctx,
    m: Loaded<B>,
    args: &SampleArgs,
    cfg: &SamplerConfig,
    guidance: Option<&crate::guide::Guidance<B>>,
) -> Result<serde_json::Value> {
    let start = Instant::now();
    // With guidance: `n` samples of each class, class-major (one grid row per class).
    let labels: Option<Vec<u32>> = guidance.map(|g| {
        g.classes
            .iter()
            .flat_map(|&c| std::iter::repeat_n(c, args.n))
            .collect()
    });
    let (x, nfe) = draw_samples(ctx, &m, args, cfg, guidance.zip(labels.as_deref()))?;
    let secs = start.elapsed().as_secs_f64();
    let [c, h, w] = m.image_shape();
    let total = labels.as_ref().map_or(args.n, Vec::len);
    let shape = [total, c, h, w];
    let cols = if guidance.is_some() {
        args.n
    } else {
        grid_cols(args.n)
    };
    write_grid(&args.out, &x, shape, m.range(), cols, args.zoom)?;
    if let Some(p) = &args.npy {
        train::images::write_npy(p, &x, &shape)?;
    }
    let finite = x.iter().all(|v| v.is_finite());
    if !finite {
        bail!("the samples contain NaN or infinite values (the model diverged)");
    }
    Ok(json!({
        "command": "sample",
        "device": m.b.name(),
        "sampler": serde_json::to_value(cfg)?,
        "n": total,
        "classes": guidance.map(|g| g.classes.clone()),
        "guidance": guidance.map(|g| g.scale),
        "nfe": nfe,
        "seconds": secs,
        "png": args.out,
        "npy": args.npy,
    }))
}
