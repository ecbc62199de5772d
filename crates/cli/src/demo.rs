//! `scoresde demo`: the README's main job. Trains a small score model on the
//! embedded `digits` data set (VP SDE, continuous DSM) on the CPU, draws a
//! grid of samples with the predictor–corrector sampler, and reports the
//! test-set bits/dim from the probability-flow ODE.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use score_net::{NetBackend, UnetConfig};
use sde_core::SdeConfig;
use serde_json::json;
use solvers::{CorrectorKind, PredictorKind};
use train::data::{DataConfig, DatasetName, Scale};
use train::{OptimConfig, TrainConfig, TrainingConfig, Weights};

use crate::common::{with_backend, Ctx};
use crate::gen::{self, ModelArgs, OdeArgs, SampleArgs, SamplerKind};

/// Arguments of `scoresde demo`.
#[derive(Clone, Debug, clap::Args)]
pub struct DemoArgs {
    /// Output directory (run, samples.png).
    #[arg(long, short, default_value = "demo")]
    pub out: PathBuf,
    /// Training steps.
    #[arg(long, default_value_t = 2000)]
    pub steps: u64,
    /// Test images for the bits/dim estimate.
    #[arg(long, default_value_t = 128)]
    pub eval_images: usize,
    /// Noise levels of the PC sampler.
    #[arg(long, default_value_t = 500)]
    pub sample_steps: usize,
}

/// The demo's training configuration (also in `configs/digits-vp.toml`).
pub fn demo_config(steps: u64) -> TrainConfig {
    TrainConfig {
        seed: 0,
        sde: SdeConfig::default_for(sde_core::SdeKind::Vp),
        net: UnetConfig {
            in_channels: 1,
            base_channels: 16,
            channel_mult: vec![1, 2],
            num_res_blocks: 1,
            attn_resolutions: vec![4],
            dropout: 0.0,
            ..UnetConfig::default()
        },
        optim: OptimConfig {
            lr: 2e-3,
            warmup: 100,
            ema_rate: 0.999,
            ..OptimConfig::default()
        },
        training: TrainingConfig {
            batch_size: 64,
            steps,
            log_every: 100,
            checkpoint_every: 500,
        },
        data: DataConfig {
            dataset: DatasetName::Digits,
            scale: Scale::MinusOneOne,
            ..DataConfig::default()
        },
        ..TrainConfig::default()
    }
}

/// `scoresde demo`.
pub fn run(ctx: &Ctx, args: &DemoArgs) -> Result<serde_json::Value> {
    let start = Instant::now();
    let run_dir = args.out.join("run");
    let resume = run_dir.join(train::trainer::CHECKPOINT_FILE).exists();
    if resume {
        ctx.note(format!("resuming the demo run in {}", run_dir.display()));
    }
    let mut cfg = demo_config(args.steps);
    if let Some(s) = ctx.seed {
        cfg.seed = s;
    }
    // Everything the later phases need is checked before training.
    cfg.validate()?;
    if args.eval_images == 0 {
        bail!("--eval-images must be at least 1");
    }
    let check_sampler = || -> Result<()> {
        let sde = cfg.sde.with_num_steps(args.sample_steps).build()?;
        Ok(solvers::SamplerConfig::default().validate(&sde)?)
    };
    check_sampler().with_context(|| format!("--sample-steps {}", args.sample_steps))?;
    crate::common::check_output(&args.out.join("samples.png"), &run_dir, "--out")?;
    let done = if resume {
        train::TrainingCheckpoint::load(&run_dir)?.state.step >= cfg.training.steps
    } else {
        false
    };
    let train_json = if done {
        ctx.note("the demo run has finished training; sampling and evaluating it");
        json!({"command": "train", "run_dir": run_dir, "skipped": true})
    } else {
        crate::train_cmd::train_run(ctx, cfg, &run_dir, resume, None)?
    };
    if train_json["interrupted"].as_bool() == Some(true) {
        return Ok(json!({"command": "demo", "train": train_json, "interrupted": true}));
    }
    let train_secs = start.elapsed().as_secs_f64();

    let png = args.out.join("samples.png");
    let sample_args = SampleArgs {
        model: ModelArgs {
            ckpt: run_dir.clone(),
            weights: Weights::Ema,
            steps: Some(args.sample_steps),
        },
        sampler: gen::SamplerArgs {
            sampler: SamplerKind::Pc,
            sampler_config: None,
            grid: None,
            eta: None,
            stochasticity: None,
            pc: gen::PcArgs {
                predictor: PredictorKind::ReverseDiffusion,
                corrector: CorrectorKind::Langevin,
                snr: 0.16,
                corrector_steps: 1,
            },
            ode: OdeArgs {
                rtol: 1e-5,
                atol: 1e-5,
            },
        },
        n: 64,
        classifier: None,
        class: None,
        guidance: 1.0,
        batch_size: 64,
        out: png.clone(),
        npy: None,
        zoom: None,
    };
    ctx.note("sampling 64 digits (reverse diffusion + Langevin)...");
    let t0 = Instant::now();
    let sample_json = gen::sample(ctx, &sample_args)?;
    let sample_secs = t0.elapsed().as_secs_f64();

    ctx.note(format!(
        "bits/dim on {} test images (probability-flow ODE)...",
        args.eval_images
    ));
    let t1 = Instant::now();
    let model = ModelArgs {
        ckpt: run_dir.clone(),
        weights: Weights::Ema,
        steps: None,
    };
    let (bpd, se, nfe, n) =
        with_backend!(ctx, b => demo_bpd(ctx, model.load(b)?, args.eval_images))?;
    let eval_secs = t1.elapsed().as_secs_f64();
    Ok(json!({
        "command": "demo",
        "train": train_json,
        "train_seconds": train_secs,
        "samples_png": png,
        "sample": sample_json,
        "sample_seconds": sample_secs,
        "test_images": n,
        "bits_per_dim": bpd,
        "bits_per_dim_se": se,
        "likelihood_nfe": nfe,
        "likelihood_seconds": eval_secs,
        "total_seconds": start.elapsed().as_secs_f64(),
    }))
}

/// Bits/dim of the first `n` test digits (probability-flow ODE, rtol 1e-4).
fn demo_bpd<B: NetBackend>(
    ctx: &Ctx,
    m: gen::Loaded<B>,
    n: usize,
) -> Result<(f64, f64, usize, usize)> {
    let splits = crate::common::load_data(&m.ck.config, None)?;
    let ode = OdeArgs {
        rtol: 1e-4,
        atol: 1e-4,
    };
    let lcfg =
        crate::likelihood_cmd::likelihood_config(&m, splits.test.levels(), &ode, false, 1, true);
    crate::likelihood_cmd::bits_per_dim(ctx, &m, &splits.test, n, 64, &lcfg)
}
