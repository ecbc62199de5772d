//! `scoresde likelihood`: bits/dim of a data split under the probability-flow
//! ODE, with standard errors (Song et al. 2021, section 4.3), in batches with
//! a progress bar.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use score_net::NetBackend;
use sde_core::NoiseRng;
use serde_json::json;
use solvers::{DataScale, Divergence, LikelihoodConfig};
use train::data::Transform;

use crate::common::{chunks, with_backend, Ctx};
use crate::gen::{interrupt_aware, Loaded, ModelArgs, OdeArgs};
use crate::sampler_args::CliHooks;

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
        let o = solvers::likelihood_with_hooks(
            b,
            &m.model.sde,
            &m.model,
            &x,
            cfg,
            &mut rng,
            &mut CliHooks::new(&bar),
        )
        .map_err(interrupt_aware)?;
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
