//! `scoresde inpaint` and `scoresde colorize`: controllable generation with
//! a trained, unconditional score model (Song et al. 2021, section 5) through
//! the `cond` crate.
//!
//! - `inpaint` hides a region of each input (`--mask left|right|top|bottom|
//!   center|random:p` names the *missing* region; a grey PNG of the image
//!   size marks known pixels white) and completes it with the paper's
//!   replacement method or RePaint resampling (`--method`, `--jumps`). The
//!   PNG has one row per input: input | masked input (hidden pixels
//!   checkered) | the completions.
//! - `colorize` keeps the grey level (the channel mean) of each input and
//!   samples the colour of an RGB model. The row: grey input | the results |
//!   the original (when known).
//!
//! Inputs are data-set images (`--index`, with `--split`) or PNG files
//! (`--image`). Every argument and the output paths are checked before any
//! sampling; an output that would overwrite the run's checkpoint,
//! configuration or log is refused. With `--json` the summary carries the
//! number of score evaluations, the time and, when the truth is known (data-set
//! inputs; RGB PNGs for `colorize`), mean squared errors in the data range.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use cond::colorize::{self, GreyLevels};
use cond::{Constraint, KnownPixels, Method, NamedMask};
use score_net::NetBackend;
use sde_core::{NoiseRng, Sde, Shape};
use serde_json::json;

use crate::common::{chunks, with_backend, Ctx};
use crate::gen::{write_grid, Loaded, ModelArgs, PcArgs};
use crate::latent_cmd::ImageInputs;
use crate::sampler_args::CliHooks;

/// Which split `--index` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Split {
    /// The held-out images.
    Test,
    /// The training images.
    Train,
}

/// How the sampler enforces what is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MethodArg {
    /// The paper's: replace the known part by the perturbed data after every update.
    Replacement,
    /// RePaint: replacement, and each noise level repeated `--jumps` times.
    Resample,
}

/// Arguments `inpaint` and `colorize` share.
#[derive(Clone, Debug, clap::Args)]
pub struct CondArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub pc: PcArgs,
    #[command(flatten)]
    pub images: ImageInputs,
    /// The split `--index` reads.
    #[arg(long, value_enum, default_value_t = Split::Test)]
    pub split: Split,
    /// Conditional sampler.
    #[arg(long, value_enum, default_value_t = MethodArg::Replacement)]
    pub method: MethodArg,
    /// Passes per noise level of `--method resample` (default 8).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub jumps: Option<u16>,
    /// Results drawn per input image (side by side in its row).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub samples_per_image: u16,
    /// Images sampled per batch.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// Enlarge each image this many times in the PNG (default: to at least 32 pixels).
    #[arg(long)]
    pub zoom: Option<usize>,
    /// Also write the results as .npy (float32, NCHW, data range; the
    /// results of input `i` at `i * samples-per-image ..`).
    #[arg(long)]
    pub npy: Option<PathBuf>,
}

/// `--mask`: a named missing region or a grey PNG of known pixels.
#[derive(Clone, Debug)]
pub enum MaskArg {
    /// A named region ([`NamedMask`]).
    Named(NamedMask),
    /// A grey PNG of the image size: values of 0.5 and above are known.
    Png(PathBuf),
}

fn parse_mask(s: &str) -> std::result::Result<MaskArg, String> {
    match s.parse::<NamedMask>() {
        Ok(m) => Ok(MaskArg::Named(m)),
        Err(_) if has_png_extension(Path::new(s)) || Path::new(s).is_file() => {
            Ok(MaskArg::Png(PathBuf::from(s)))
        }
        Err(e) => Err(e.to_string()),
    }
}

fn has_png_extension(p: &Path) -> bool {
    p.extension().is_some_and(|x| x.eq_ignore_ascii_case("png"))
}

/// Arguments of `scoresde inpaint`.
#[derive(Clone, Debug, clap::Args)]
pub struct InpaintArgs {
    #[command(flatten)]
    pub common: CondArgs,
    /// The missing region: left, right, top, bottom, center, random:P (each
    /// pixel hidden with probability P), or a grey PNG of the image size
    /// (white = known, black = to generate).
    #[arg(long, value_parser = parse_mask)]
    pub mask: MaskArg,
    /// PNG: one row per input (input | masked input | results).
    #[arg(long, short, default_value = "inpaint.png")]
    pub out: PathBuf,
}

/// Arguments of `scoresde colorize`.
#[derive(Clone, Debug, clap::Args)]
pub struct ColorizeArgs {
    #[command(flatten)]
    pub common: CondArgs,
    /// PNG: one row per input (grey input | results | original when known).
    #[arg(long, short, default_value = "colorize.png")]
    pub out: PathBuf,
}

impl CondArgs {
    /// Checks what needs no model (inputs given, `--jumps`, output paths)
    /// and returns the method.
    fn validate(&self, out: &Path) -> Result<Method> {
        self.images.check()?;
        let method = match (self.method, self.jumps) {
            (MethodArg::Replacement, Some(_)) => {
                bail!("--jumps applies to --method resample only")
            }
            (MethodArg::Replacement, None) => Method::Replacement,
            (MethodArg::Resample, j) => Method::Resample {
                jumps: usize::from(j.unwrap_or(8)),
            },
        };
        crate::common::check_output(out, &self.model.ckpt, "--out")?;
        if let Some(p) = &self.npy {
            crate::common::check_output(p, &self.model.ckpt, "--npy")?;
        }
        Ok(method)
    }

    /// The inputs (see [`ImageInputs::load_each`]) and the checks that need
    /// the model (the sampler's settings).
    fn inputs<B: NetBackend>(&self, m: &Loaded<B>, channels: &[usize]) -> Result<Vec<Vec<f32>>> {
        self.pc.config().validate(&m.model.sde)?;
        self.images
            .load_each(m, self.split == Split::Train, channels)
    }

    fn per_image(&self) -> usize {
        usize::from(self.samples_per_image)
    }

    /// Samples `n` results under the constraints `make(range)` builds for
    /// each batch; returns the NCHW results and the NFE.
    fn sample<B, K>(
        &self,
        ctx: &Ctx,
        m: &Loaded<B>,
        method: Method,
        n: usize,
        what: &str,
        make: impl Fn(std::ops::Range<usize>) -> Result<K>,
    ) -> Result<(Vec<f32>, usize)>
    where
        B: NetBackend,
        K: Constraint<B>,
    {
        let cfg = self.pc.config();
        let mut rng = NoiseRng::new(ctx.seed.unwrap_or(0));
        let (mut out, mut nfe) = (Vec::new(), 0);
        for r in chunks(n, self.batch_size as usize) {
            let k = make(r)?;
            let bar = ctx.bar(m.model.sde.num_steps() as u64, what);
            let mut hooks = CliHooks::new(&bar);
            let o = cond::sample_constrained(
                &m.b,
                &m.model.sde,
                &m.model,
                &k,
                &cfg,
                method,
                &mut rng,
                &mut hooks,
            )?;
            bar.finish_and_clear();
            nfe += o.nfe;
            out.extend(m.b.to_vec(&o.samples)?);
        }
        Ok((out, nfe))
    }

    /// Writes the PNG grid (and the .npy of the results).
    fn write<B: NetBackend>(
        &self,
        m: &Loaded<B>,
        out: &Path,
        cells: &[f32],
        cols: usize,
        results: &[f32],
    ) -> Result<()> {
        let [c, h, w] = m.image_shape();
        let d = c * h * w;
        write_grid(
            out,
            cells,
            [cells.len() / d, c, h, w],
            m.range(),
            cols,
            self.zoom,
        )?;
        if let Some(p) = &self.npy {
            train::images::write_npy(p, results, &[results.len() / d, c, h, w])?;
        }
        Ok(())
    }

    /// The JSON fields both commands report.
    #[allow(clippy::too_many_arguments)]
    fn summary<B: NetBackend>(
        &self,
        m: &Loaded<B>,
        command: &str,
        method: Method,
        inputs: usize,
        nfe: usize,
        start: Instant,
        out: &Path,
    ) -> serde_json::Value {
        json!({
            "command": command,
            "device": m.b.name(),
            "method": match method {
                Method::Replacement => "replacement",
                Method::Resample { .. } => "resample",
            },
            "jumps": method.jumps(),
            "images": inputs,
            "samples_per_image": self.per_image(),
            "nfe": nfe,
            "seconds": start.elapsed().as_secs_f64(),
            "data_range": [m.range().0, m.range().1],
            "png": out,
            "npy": self.npy,
        })
    }
}

/// A checkered stand-in for unknown pixel `j` (`y * w + x`) of a plane `w`
/// wide: two greys alternating pixel by pixel.
fn checker(j: usize, w: usize, (low, high): (f64, f64)) -> f32 {
    let f = if (j / w + j % w) % 2 == 0 { 0.35 } else { 0.65 };
    (low + f * (high - low)) as f32
}

/// The images one after the other, each `k` times.
fn repeat_each(images: &[Vec<f32>], k: usize) -> Vec<f32> {
    images
        .iter()
        .flat_map(|x| std::iter::repeat_n(x.as_slice(), k))
        .flatten()
        .copied()
        .collect()
}

/// Mean of `(a - b)^2` over the pairs (`None` if there are none).
fn mse(pairs: impl Iterator<Item = (f32, f32)>) -> Option<f64> {
    let (sum, n) = pairs.fold((0.0, 0usize), |(s, n), (a, b)| {
        (s + (f64::from(a) - f64::from(b)).powi(2), n + 1)
    });
    (n > 0).then(|| sum / n as f64)
}

/// Builds the `[C, H, W]` mask (1 = known) for images of `shape`.
fn build_mask(mask: &MaskArg, [c, h, w]: [usize; 3], seed: u64) -> Result<Vec<f32>> {
    match mask {
        MaskArg::Named(m) => Ok(m.build(c, h, w, seed)),
        MaskArg::Png(p) => {
            let (shape, v) =
                train::images::read_png(p).with_context(|| format!("--mask {}", p.display()))?;
            if shape[1..] != [h, w] {
                bail!(
                    "--mask {} is {}x{} pixels, the model's images are {h}x{w}",
                    p.display(),
                    shape[2],
                    shape[1]
                );
            }
            let grey = if shape[0] == 3 {
                colorize::to_grey(&v, h * w)
            } else {
                v
            };
            Ok(cond::mask::mask_from_grey(&grey, c))
        }
    }
}

/// `scoresde inpaint`.
pub fn inpaint(ctx: &Ctx, args: &InpaintArgs) -> Result<serde_json::Value> {
    let method = args.common.validate(&args.out)?;
    if let MaskArg::Png(p) = &args.mask {
        if !p.is_file() {
            bail!("--mask {}: no such file", p.display());
        }
    }
    with_backend!(ctx, b => inpaint_on(ctx, args.common.model.load(b)?, args, method))
}

fn inpaint_on<B: NetBackend>(
    ctx: &Ctx,
    m: Loaded<B>,
    args: &InpaintArgs,
    method: Method,
) -> Result<serde_json::Value> {
    let a = &args.common;
    let [c, h, w] = m.image_shape();
    let (d, hw, k) = (c * h * w, h * w, a.per_image());
    let mask = build_mask(&args.mask, [c, h, w], ctx.seed.unwrap_or(0))?;
    let inputs = a.inputs(&m, &[c])?;
    let data = repeat_each(&inputs, k);
    let mask_t = m.b.tensor(mask.clone(), &Shape::new([1, c, h, w])?)?;
    let start = Instant::now();
    let n = inputs.len() * k;
    let (results, nfe) = a.sample(ctx, &m, method, n, "inpaint", |r| {
        let x = m.b.tensor(
            data[r.start * d..r.end * d].to_vec(),
            &Shape::new([r.len(), c, h, w])?,
        )?;
        Ok(KnownPixels::new(&m.b, x, mask_t.clone())?)
    })?;
    let mut cells = Vec::with_capacity(inputs.len() * (2 + k) * d);
    for (i, x) in inputs.iter().enumerate() {
        cells.extend_from_slice(x);
        cells.extend(x.iter().enumerate().map(|(j, &v)| {
            if mask[j] == 1.0 {
                v
            } else {
                checker(j % hw, w, m.range())
            }
        }));
        cells.extend_from_slice(&results[i * k * d..(i + 1) * k * d]);
    }
    a.write(&m, &args.out, &cells, 2 + k, &results)?;
    // Known pixels of the results against the inputs, and (data-set inputs)
    // every pixel against the truth.
    let pairs = || {
        results
            .iter()
            .copied()
            .zip(data.iter().copied())
            .enumerate()
    };
    let known_max = pairs()
        .filter(|(j, _)| mask[j % d] == 1.0)
        .map(|(_, (r, x))| (r - x).abs())
        .fold(0.0f32, f32::max);
    let hidden = mask.iter().filter(|&&v| v == 0.0).count();
    let mut v = a.summary(&m, "inpaint", method, inputs.len(), nfe, start, &args.out);
    v["mask"] = json!(match &args.mask {
        MaskArg::Named(NamedMask::Random(p)) => format!("random:{p}"),
        MaskArg::Named(n) => format!("{n:?}").to_lowercase(),
        MaskArg::Png(p) => p.display().to_string(),
    });
    v["hidden_fraction"] = json!(hidden as f64 / d as f64);
    v["known_max_error"] = json!(known_max);
    if !a.images.index.is_empty() {
        let hid = mse(pairs().filter(|(j, _)| mask[j % d] == 0.0).map(|(_, p)| p));
        v["mse_hidden"] = json!(hid);
        v["mse_all"] = json!(mse(pairs().map(|(_, p)| p)));
    }
    Ok(v)
}

/// `scoresde colorize`.
pub fn colorize(ctx: &Ctx, args: &ColorizeArgs) -> Result<serde_json::Value> {
    let method = args.common.validate(&args.out)?;
    with_backend!(ctx, b => colorize_on(ctx, args.common.model.load(b)?, args, method))
}

fn colorize_on<B: NetBackend>(
    ctx: &Ctx,
    m: Loaded<B>,
    args: &ColorizeArgs,
    method: Method,
) -> Result<serde_json::Value> {
    let a = &args.common;
    let [c, h, w] = m.image_shape();
    if c != 3 {
        bail!(
            "colorize needs an RGB model: {} generates {c}-channel {h}x{w} images \
             (train one on colour data, e.g. --dataset emoji)",
            a.model.ckpt.display()
        );
    }
    let (hw, d, k) = (h * w, 3 * h * w, a.per_image());
    // RGB inputs give their grey level and are the known originals; grey PNGs
    // are the grey level.
    let inputs = a.inputs(&m, &[1, 3])?;
    let (greys, originals): (Vec<Vec<f32>>, Vec<Option<&Vec<f32>>>) = inputs
        .iter()
        .map(|x| {
            if x.len() == d {
                (colorize::to_grey(x, hw), Some(x))
            } else {
                (x.clone(), None)
            }
        })
        .unzip();
    let grey = repeat_each(&greys, k);
    let start = Instant::now();
    let n = inputs.len() * k;
    let (results, nfe) = a.sample(ctx, &m, method, n, "colorize", |r| {
        Ok(GreyLevels::new(
            &grey[r.start * hw..r.end * hw],
            r.len(),
            h,
            w,
        )?)
    })?;
    let known = originals.iter().any(Option::is_some);
    let cols = 1 + k + usize::from(known);
    let mut cells = Vec::with_capacity(inputs.len() * cols * d);
    for (i, g) in greys.iter().enumerate() {
        for _ in 0..3 {
            cells.extend_from_slice(g);
        }
        cells.extend_from_slice(&results[i * k * d..(i + 1) * k * d]);
        match originals[i] {
            Some(x) => cells.extend_from_slice(x),
            None if known => cells.extend((0..d).map(|j| checker(j % hw, w, m.range()))),
            None => {}
        }
    }
    a.write(&m, &args.out, &cells, cols, &results)?;
    let result_grey = colorize::to_grey(&results, hw);
    let grey_max = result_grey
        .iter()
        .zip(&grey)
        .map(|(r, g)| (r - g).abs())
        .fold(0.0f32, f32::max);
    let mut v = a.summary(&m, "colorize", method, inputs.len(), nfe, start, &args.out);
    v["grey_max_error"] = json!(grey_max);
    if known {
        // Each result against its original, and the grey input (in every
        // channel) as the baseline a colourless answer scores.
        let with_truth = || (0..n).filter_map(|j| originals[j / k].map(|x| (j, x)));
        let color = with_truth().flat_map(|(j, x)| {
            results[j * d..(j + 1) * d]
                .iter()
                .copied()
                .zip(x.iter().copied())
        });
        v["mse_color"] = json!(mse(color));
        let baseline = with_truth().flat_map(|(j, x)| {
            let g = &grey[j * hw..(j + 1) * hw];
            (0..d).map(move |p| (g[p % hw], x[p]))
        });
        v["mse_grey_input"] = json!(mse(baseline));
    }
    Ok(v)
}
