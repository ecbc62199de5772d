//! The latent-space commands: `encode` (images to probability-flow ODE
//! latents), `decode` (latents back to images) and `interpolate` (spherical
//! interpolation between two images' latents), and the image inputs they and
//! the controllable-generation commands share (data-set indices or PNGs).

use std::path::PathBuf;

use anyhow::{bail, Result};
use score_net::NetBackend;
use sde_core::NoiseRng;
use serde_json::json;
use solvers::OdeConfig;
use train::data::Transform;

use crate::common::{with_backend, Ctx};
use crate::gen::{grid_cols, interrupt_aware, write_grid, Loaded, ModelArgs, OdeArgs};
use crate::sampler_args::CliHooks;

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
    let mut hooks = CliHooks::new(&bar);
    let o = match dir {
        Flow::Encode => solvers::encode(b, &m.model.sde, &m.model, x, ode, &mut hooks),
        Flow::Decode => solvers::decode(b, &m.model.sde, &m.model, x, ode, &mut hooks),
    }
    .map_err(interrupt_aware)?;
    bar.finish_and_clear();
    Ok((b.to_vec(&o.x)?, o.nfe))
}

/// `scoresde encode`.
pub fn encode(ctx: &Ctx, args: &EncodeArgs) -> Result<serde_json::Value> {
    crate::common::check_output(&args.out, &args.model.ckpt, "--out")?;
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
    crate::common::check_output(&args.out, &args.model.ckpt, "--out")?;
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
    crate::common::check_output(&args.out, &args.model.ckpt, "--out")?;
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
