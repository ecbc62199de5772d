//! The commands that use a trained model: `sample` (PC or probability-flow
//! ODE, PNG grid and raw samples), `likelihood` (bits/dim with standard
//! errors), and `encode` / `decode` / `interpolate` through the ODE.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use score_net::NetBackend;
use sde_core::{AnySde, Backend, NoiseRng, ScoreModel, Sde, Shape};
use serde_json::json;
use solvers::{
    CorrectorKind, DataScale, Divergence, LikelihoodConfig, OdeConfig, PcConfig, PredictorKind,
    SamplerHooks, StepInfo,
};
use train::data::Transform;
use train::{TrainingCheckpoint, Weights};

use crate::common::{chunks, serde_enum, with_backend, Ctx, UserInterrupt, Watched};

/// Which checkpoint and weights to use.
#[derive(Clone, Debug, clap::Args)]
pub struct ModelArgs {
    /// Run directory (or checkpoint file) written by `scoresde train`.
    #[arg(long)]
    pub ckpt: PathBuf,
    /// Weights to use: the EMA (default, as in the paper) or the raw parameters.
    #[arg(long, default_value = "ema", value_parser = serde_enum::<Weights>)]
    pub weights: Weights,
    /// Override the SDE's number of discretisation steps N (PC samplers).
    #[arg(long)]
    pub steps: Option<usize>,
}

/// ODE tolerances.
#[derive(Clone, Debug, clap::Args)]
pub struct OdeArgs {
    /// Relative tolerance of the RK45 solver.
    #[arg(long, default_value_t = 1e-5)]
    pub rtol: f64,
    /// Absolute tolerance of the RK45 solver.
    #[arg(long, default_value_t = 1e-5)]
    pub atol: f64,
}

impl OdeArgs {
    fn config(&self) -> OdeConfig {
        OdeConfig {
            rtol: self.rtol,
            atol: self.atol,
            ..OdeConfig::default()
        }
    }
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
    /// Loads the checkpoint and builds the model on `b` (with `--steps` applied).
    pub fn load<B: NetBackend>(&self, b: B) -> Result<Loaded<B>> {
        let ck = TrainingCheckpoint::load(&self.ckpt)
            .with_context(|| format!("loading {}", self.ckpt.display()))?;
        let mut model = ck.model(&b, self.weights)?;
        if let Some(n) = self.steps {
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
    fn shape(&self, n: usize) -> Result<Shape> {
        let [c, h, w] = self.image_shape();
        Ok(Shape::new([n, c, h, w])?)
    }
}

/// Which sampler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SamplerKind {
    /// Predictor–corrector.
    Pc,
    /// Probability-flow ODE (adaptive RK45).
    Ode,
}

/// Arguments of `scoresde sample`.
#[derive(Clone, Debug, clap::Args)]
pub struct SampleArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Sampler.
    #[arg(long, value_enum, default_value_t = SamplerKind::Pc)]
    pub sampler: SamplerKind,
    #[command(flatten)]
    pub pc: PcArgs,
    #[command(flatten)]
    pub ode: OdeArgs,
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

/// The predictor–corrector sampler's settings (the paper's defaults).
#[derive(Clone, Debug, clap::Args)]
pub struct PcArgs {
    /// Predictor (euler-maruyama, reverse-diffusion, ancestral, none).
    #[arg(long, default_value = "reverse-diffusion", value_parser = serde_enum::<PredictorKind>)]
    pub predictor: PredictorKind,
    /// Corrector (langevin, annealed-langevin, none).
    #[arg(long, default_value = "langevin", value_parser = serde_enum::<CorrectorKind>)]
    pub corrector: CorrectorKind,
    /// Signal-to-noise ratio of the corrector.
    #[arg(long, default_value_t = 0.16)]
    pub snr: f64,
    /// Corrector steps per noise level.
    #[arg(long, default_value_t = 1)]
    pub corrector_steps: usize,
}

impl PcArgs {
    /// The sampler configuration (other fields at their defaults).
    pub fn config(&self) -> PcConfig {
        PcConfig {
            predictor: self.predictor,
            corrector: self.corrector,
            snr: self.snr,
            corrector_steps: self.corrector_steps,
            ..PcConfig::default()
        }
    }
}

/// Progress and Ctrl-C for the PC sampler.
pub(crate) struct PcHooks<'a> {
    bar: &'a indicatif::ProgressBar,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl<'a> PcHooks<'a> {
    /// Moves `bar` to each finished level and stops once Ctrl-C was pressed.
    pub(crate) fn new(bar: &'a indicatif::ProgressBar) -> Self {
        PcHooks {
            bar,
            stop: crate::common::interrupted(),
        }
    }
}

impl<B: Backend> SamplerHooks<B> for PcHooks<'_> {
    fn on_step(&mut self, info: &StepInfo) -> std::ops::ControlFlow<()> {
        self.bar.set_position(info.step as u64);
        if self.stop.load(std::sync::atomic::Ordering::SeqCst) {
            std::ops::ControlFlow::Break(())
        } else {
            std::ops::ControlFlow::Continue(())
        }
    }
}

/// Draws `labels.len()` samples (or `args.n` without guidance), sample `i`
/// guided towards `labels[i]`; returns the NCHW data and the total NFE.
pub fn draw_samples<B: NetBackend>(
    ctx: &Ctx,
    m: &Loaded<B>,
    args: &SampleArgs,
    guidance: Option<(&crate::guide::Guidance<B>, &[u32])>,
) -> Result<(Vec<f32>, usize)> {
    let b = &m.b;
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
        let x = match args.sampler {
            SamplerKind::Pc => {
                let cfg = args.pc.config();
                let bar = ctx.bar(m.model.sde.num_steps() as u64, "sample");
                let mut hooks = PcHooks::new(&bar);
                let o = solvers::pc_sample(
                    b,
                    &m.model.sde,
                    &*model,
                    &shape,
                    &cfg,
                    &mut rng,
                    &mut hooks,
                )?;
                bar.finish_and_clear();
                nfe += o.nfe;
                o.samples
            }
            SamplerKind::Ode => {
                let bar = ctx.spinner("ode nfe");
                let inner: &dyn ScoreModel<B> = &*model;
                let w = Watched::new(&inner, &bar);
                let o =
                    solvers::ode_sample(b, &m.model.sde, &w, &shape, &args.ode.config(), &mut rng)
                        .map_err(interrupt_aware)?;
                bar.finish_and_clear();
                nfe += o.nfe;
                o.x
            }
        };
        out.extend(b.to_vec(&x)?);
    }
    Ok((out, nfe))
}

/// Turns a wrapped [`UserInterrupt`] into a plain message.
pub fn interrupt_aware(e: solvers::SolverError) -> anyhow::Error {
    let text = e.to_string();
    if text.contains(&UserInterrupt.to_string()) {
        anyhow::anyhow!("interrupted by the user")
    } else {
        e.into()
    }
}

fn grid_cols(n: usize) -> usize {
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
    with_backend!(ctx, b => {
        let m = args.model.load(b)?;
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
        sample_on(ctx, m, args, guidance.as_ref())
    })
}

fn sample_on<B: NetBackend>(
    ctx: &Ctx,
    m: Loaded<B>,
    args: &SampleArgs,
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
    let (x, nfe) = draw_samples(ctx, &m, args, guidance.zip(labels.as_deref()))?;
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
        "sampler": format!("{:?}", args.sampler).to_lowercase(),
        "n": total,
        "classes": guidance.map(|g| g.classes.clone()),
        "guidance": guidance.map(|g| g.scale),
        "nfe": nfe,
        "seconds": secs,
        "png": args.out,
        "npy": args.npy,
    }))
}

/// Arguments of `scoresde likelihood`.
#[derive(Clone, Debug, clap::Args)]
pub struct LikelihoodArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub ode: OdeArgs,
    /// Split to evaluate.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Evaluate at most this many images (the first ones of the split).
    #[arg(short, long)]
    pub n: Option<usize>,
    /// Images per batch.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Exact divergence (D vector-Jacobian products per evaluation) instead of Hutchinson.
    #[arg(long)]
    pub exact: bool,
    /// Independent solves (dequantisation and probes) to average per image.
    #[arg(long, default_value_t = 1)]
    pub repeats: usize,
    /// Do not dequantise (a density of the grid values, not of the discrete data).
    #[arg(long)]
    pub no_dequantize: bool,
    /// Where the data set lives, if not where it was at training time.
    #[arg(long)]
    pub data_path: Option<PathBuf>,
}

/// Bits/dim of `set[..n]` under `m`; returns (mean, standard error, NFE, n).
pub fn bits_per_dim<B: NetBackend>(
    ctx: &Ctx,
    m: &Loaded<B>,
    set: &train::data::ImageSet,
    n: usize,
    batch_size: usize,
    cfg: &LikelihoodConfig,
) -> Result<(f64, f64, usize, usize)> {
    let b = &m.b;
    let n = n.min(set.len());
    if n == 0 {
        bail!("the split has no images");
    }
    if set.image_shape() != m.image_shape() {
        bail!(
            "the data are {:?}, the model expects {:?}",
            set.image_shape(),
            m.image_shape()
        );
    }
    let t = Transform {
        scale: m.ck.config.data.scale,
        dequantize: false,
        random_flip: false,
    };
    let mut rng = NoiseRng::new(ctx.seed.unwrap_or(0));
    let mut bpd = Vec::with_capacity(n);
    let mut nfe = 0;
    let bar = ctx.spinner("nfe");
    for r in chunks(n, batch_size) {
        let idx: Vec<usize> = r.collect();
        let x = set.batch(&idx, &t, &mut rng);
        let x = b.tensor(x, &m.shape(idx.len())?)?;
        let w = Watched::new(&m.model, &bar);
        let o =
            solvers::likelihood(b, &m.model.sde, &w, &x, cfg, &mut rng).map_err(interrupt_aware)?;
        nfe += o.nfe;
        bpd.extend(o.bpd);
        bar.set_message(format!(
            "{} / {n} images, bpd so far {:.4}",
            bpd.len(),
            bpd.iter().sum::<f64>() / bpd.len() as f64
        ));
    }
    bar.finish_and_clear();
    let k = bpd.len() as f64;
    let mean = bpd.iter().sum::<f64>() / k;
    let var = bpd.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (k - 1.0).max(1.0);
    Ok((mean, (var / k).sqrt(), nfe, bpd.len()))
}

/// The likelihood configuration for a model's data.
pub fn likelihood_config<B: NetBackend>(
    m: &Loaded<B>,
    set_levels: u32,
    ode: &OdeArgs,
    exact: bool,
    repeats: usize,
    dequantize: bool,
) -> LikelihoodConfig {
    let (low, high) = m.range();
    LikelihoodConfig {
        ode: ode.config(),
        divergence: if exact {
            Divergence::Exact
        } else {
            Divergence::default()
        },
        scale: Some(DataScale {
            levels: set_levels,
            low,
            high,
        }),
        dequantize,
        repeats,
        ..LikelihoodConfig::default()
    }
}

/// `scoresde likelihood`.
pub fn likelihood(ctx: &Ctx, args: &LikelihoodArgs) -> Result<serde_json::Value> {
    with_backend!(ctx, b => likelihood_on(ctx, args.model.load(b)?, args))
}

fn likelihood_on<B: NetBackend>(
    ctx: &Ctx,
    m: Loaded<B>,
    args: &LikelihoodArgs,
) -> Result<serde_json::Value> {
    let splits = crate::common::load_data(&m.ck.config, args.data_path.clone())?;
    let set = match args.split.as_str() {
        "test" => &splits.test,
        "train" => &splits.train,
        other => bail!("--split must be `test` or `train`, not `{other}`"),
    };
    let cfg = likelihood_config(
        &m,
        set.levels(),
        &args.ode,
        args.exact,
        args.repeats,
        !args.no_dequantize,
    );
    let start = Instant::now();
    let (mean, se, nfe, n) = bits_per_dim(
        ctx,
        &m,
        set,
        args.n.unwrap_or(usize::MAX),
        args.batch_size,
        &cfg,
    )?;
    Ok(json!({
        "command": "likelihood",
        "device": m.b.name(),
        "split": args.split,
        "images": n,
        "bits_per_dim": mean,
        "bits_per_dim_se": se,
        "nfe": nfe,
        "seconds": start.elapsed().as_secs_f64(),
    }))
}

/// Arguments of `scoresde encode`.
#[derive(Clone, Debug, clap::Args)]
pub struct EncodeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub ode: OdeArgs,
    #[command(flatten)]
    pub images: ImageInputs,
    /// Latent codes (.npy, float32, NCHW).
    #[arg(long, short, default_value = "latents.npy")]
    pub out: PathBuf,
}

/// Images given on the command line: PNG files or test-split indices.
#[derive(Clone, Debug, clap::Args)]
pub struct ImageInputs {
    /// PNG images (each must match the model's size and channels).
    #[arg(long, num_args = 1.., visible_alias = "image")]
    pub input: Vec<PathBuf>,
    /// Or: indices into the test split of the run's data set (`--index 3,17`;
    /// `inpaint` and `colorize` take `--split`).
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    pub index: Vec<usize>,
    /// Where the data set lives, if not where it was at training time.
    #[arg(long)]
    pub data_path: Option<PathBuf>,
}

impl ImageInputs {
    /// The images, in the model's data range.
    fn load<B: NetBackend>(&self, m: &Loaded<B>) -> Result<Vec<f32>> {
        let c = m.image_shape()[0];
        Ok(self
            .load_each(m, false, &[c])?
            .into_iter()
            .flatten()
            .collect())
    }

    /// Checks that exactly one of `--input` and `--index` was given.
    pub(crate) fn check(&self) -> Result<()> {
        if self.input.is_empty() == self.index.is_empty() {
            bail!("give either --input PNG... or --index I,J,... (exactly one of them)");
        }
        Ok(())
    }

    /// Each image, in the model's data range: the PNG files (of the model's
    /// height and width, with one of `channels` channels), or the images
    /// `--index` picks from the test split (the training split if `train`).
    pub(crate) fn load_each<B: NetBackend>(
        &self,
        m: &Loaded<B>,
        train: bool,
        channels: &[usize],
    ) -> Result<Vec<Vec<f32>>> {
        self.check()?;
        let (low, high) = m.range();
        let [_, h, w] = m.image_shape();
        if self.index.is_empty() {
            let mut out = Vec::new();
            for p in &self.input {
                let (shape, v) = train::images::read_png(p)?;
                if shape[1..] != [h, w] || !channels.contains(&shape[0]) {
                    bail!(
                        "{} is {:?}, the model expects {:?}",
                        p.display(),
                        shape,
                        m.image_shape()
                    );
                }
                out.push(
                    v.iter()
                        .map(|&x| (low + f64::from(x) * (high - low)) as f32)
                        .collect(),
                );
            }
            return Ok(out);
        }
        let splits = crate::common::load_data(&m.ck.config, self.data_path.clone())?;
        let (set, name) = if train {
            (&splits.train, "training")
        } else {
            (&splits.test, "test")
        };
        if let Some(&bad) = self.index.iter().find(|&&i| i >= set.len()) {
            bail!(
                "--index {bad} is out of range: the {name} split has {} images",
                set.len()
            );
        }
        let t = Transform {
            scale: m.ck.config.data.scale,
            dequantize: false,
            random_flip: false,
        };
        let x = set.batch(&self.index, &t, &mut NoiseRng::new(0));
        let d: usize = m.image_shape().iter().product();
        Ok(x.chunks_exact(d).map(<[f32]>::to_vec).collect())
    }
}

/// Which way to run the probability-flow ODE.
#[derive(Clone, Copy)]
enum Flow {
    /// Data to latent (t: eps -> T).
    Encode,
    /// Latent to data (t: T -> eps).
    Decode,
}

/// Runs the probability-flow ODE over a batch of flattened images.
fn flow<B: NetBackend>(
    ctx: &Ctx,
    m: &Loaded<B>,
    x: Vec<f32>,
    ode: &OdeConfig,
    dir: Flow,
) -> Result<(Vec<f32>, usize)> {
    let b = &m.b;
    let n = x.len() / m.image_shape().iter().product::<usize>();
    let x = b.tensor(x, &m.shape(n)?)?;
    let bar = ctx.spinner(match dir {
        Flow::Encode => "encode",
        Flow::Decode => "decode",
    });
    let w = Watched::new(&m.model, &bar);
    let o = match dir {
        Flow::Encode => solvers::encode(b, &m.model.sde, &w, x, ode),
        Flow::Decode => solvers::decode(b, &m.model.sde, &w, x, ode),
    }
    .map_err(interrupt_aware)?;
    bar.finish_and_clear();
    Ok((b.to_vec(&o.x)?, o.nfe))
}

/// `scoresde encode`.
pub fn encode(ctx: &Ctx, args: &EncodeArgs) -> Result<serde_json::Value> {
    with_backend!(ctx, b => encode_on(ctx, args.model.load(b)?, args))
}

fn encode_on<B: NetBackend>(
    ctx: &Ctx,
    m: Loaded<B>,
    args: &EncodeArgs,
) -> Result<serde_json::Value> {
    let x = args.images.load(&m)?;
    let (z, nfe) = flow(ctx, &m, x, &args.ode.config(), Flow::Encode)?;
    let [c, h, w] = m.image_shape();
    let n = z.len() / (c * h * w);
    train::images::write_npy(&args.out, &z, &[n, c, h, w])?;
    Ok(json!({"command": "encode", "n": n, "nfe": nfe, "out": args.out}))
}

/// Arguments of `scoresde decode`.
#[derive(Clone, Debug, clap::Args)]
pub struct DecodeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub ode: OdeArgs,
    /// Latent codes (.npy written by `encode`).
    #[arg(long)]
    pub latent: PathBuf,
    /// Enlarge each image this many times in the PNG (default: to at least 32 pixels).
    #[arg(long)]
    pub zoom: Option<usize>,
    /// PNG grid of the decoded images.
    #[arg(long, short, default_value = "decoded.png")]
    pub out: PathBuf,
}

/// `scoresde decode`.
pub fn decode(ctx: &Ctx, args: &DecodeArgs) -> Result<serde_json::Value> {
    with_backend!(ctx, b => decode_on(ctx, args.model.load(b)?, args))
}

fn decode_on<B: NetBackend>(
    ctx: &Ctx,
    m: Loaded<B>,
    args: &DecodeArgs,
) -> Result<serde_json::Value> {
    let (shape, z) = train::images::read_npy(&args.latent)?;
    let [c, h, w] = m.image_shape();
    if shape.len() != 4 || shape[1..] != [c, h, w] {
        bail!(
            "{} holds shape {:?}, the model's latents are [N, {c}, {h}, {w}]",
            args.latent.display(),
            shape
        );
    }
    let (x, nfe) = flow(ctx, &m, z, &args.ode.config(), Flow::Decode)?;
    let n = shape[0];
    write_grid(
        &args.out,
        &x,
        [n, c, h, w],
        m.range(),
        grid_cols(n),
        args.zoom,
    )?;
    Ok(json!({"command": "decode", "n": n, "nfe": nfe, "png": args.out}))
}

/// Arguments of `scoresde interpolate`.
#[derive(Clone, Debug, clap::Args)]
pub struct InterpolateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub ode: OdeArgs,
    #[command(flatten)]
    pub images: ImageInputs,
    /// Frames including both end points.
    #[arg(long, default_value_t = 8)]
    pub frames: usize,
    /// Enlarge each image this many times in the PNG (default: to at least 32 pixels).
    #[arg(long)]
    pub zoom: Option<usize>,
    /// PNG strip of the frames.
    #[arg(long, short, default_value = "interpolation.png")]
    pub out: PathBuf,
}

/// `scoresde interpolate`: encode both ends, slerp the latents, decode.
pub fn interpolate(ctx: &Ctx, args: &InterpolateArgs) -> Result<serde_json::Value> {
    if args.frames < 2 {
        bail!("--frames must be at least 2");
    }
    with_backend!(ctx, b => interpolate_on(ctx, args.model.load(b)?, args))
}

fn interpolate_on<B: NetBackend>(
    ctx: &Ctx,
    m: Loaded<B>,
    args: &InterpolateArgs,
) -> Result<serde_json::Value> {
    let b = &m.b;
    if args.images.input.len() + args.images.index.len() != 2 {
        bail!("interpolate needs exactly two end points (--input A B or --index I,J)");
    }
    let x = args.images.load(&m)?;
    let ode = args.ode.config();
    let (z, nfe_e) = flow(ctx, &m, x, &ode, Flow::Encode)?;
    let d: usize = m.image_shape().iter().product();
    let one = m.shape(1)?;
    let z0 = b.tensor(z[..d].to_vec(), &one)?;
    let z1 = b.tensor(z[d..2 * d].to_vec(), &one)?;
    let mut frames = Vec::with_capacity(args.frames * d);
    for k in 0..args.frames {
        let a = k as f64 / (args.frames - 1) as f64;
        frames.extend(b.to_vec(&solvers::interp::slerp(b, &z0, &z1, a)?)?);
    }
    let (x, nfe_d) = flow(ctx, &m, frames, &ode, Flow::Decode)?;
    let [c, h, w] = m.image_shape();
    write_grid(
        &args.out,
        &x,
        [args.frames, c, h, w],
        m.range(),
        args.frames,
        args.zoom,
    )?;
    Ok(
        json!({"command": "interpolate", "frames": args.frames, "nfe": nfe_e + nfe_d, "png": args.out}),
    )
}
