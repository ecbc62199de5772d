//! `scoresde`: the command-line front end of score-sde-rs.
//!
//! ```text
//! scoresde demo                                   # train on digits, sample, bits/dim
//! scoresde train --config configs/digits-vp.toml --out runs/digits
//! scoresde train-classifier --config configs/digits-classifier.toml --out runs/clf
//! scoresde eval-classifier --ckpt runs/clf
//! scoresde sample --ckpt runs/digits --sampler pc -n 64 --out grid.png
//! scoresde sample --ckpt runs/digits --classifier runs/clf --class 0..9 -n 8
//! scoresde likelihood --ckpt runs/digits --split test
//! scoresde encode|decode|interpolate --ckpt runs/digits ...
//! scoresde inpaint --ckpt runs/digits --index 0,1 --mask left --out inpaint.png
//! scoresde colorize --ckpt runs/emoji --index 0,1 --out colorize.png
//! scoresde info
//! ```
//! Every command takes `--json` (a JSON summary on stdout), `--seed`,
//! `--device auto|cpu|wgpu` and `--quiet`. Errors are one line on stderr with
//! exit code 1 (2 for bad arguments).

mod common;
mod cond_cmd;
mod demo;
mod frechet_cmd;
mod gen;
mod guide;
mod latent_cmd;
mod likelihood_cmd;
mod sampler_args;
mod train_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sde_core::{Sde, SdeConfig, SdeKind};
use serde_json::json;

use common::{Ctx, Device};

/// Score-based generative modelling through SDEs (Song et al. 2021).
#[derive(Debug, Parser)]
#[command(name = "scoresde", version, propagate_version = true)]
struct Cli {
    /// Print a JSON summary on stdout (progress and notes go to stderr).
    #[arg(long, global = true)]
    json: bool,
    /// Seed (training: overrides the config's; sampling and likelihood: default 0).
    #[arg(long, global = true)]
    seed: Option<u64>,
    /// Backend.
    #[arg(long, global = true, value_enum, default_value_t = Device::Auto)]
    device: Device,
    /// No progress bars or notes.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Version, backends and devices.
    Info,
    /// Train a score model.
    Train(train_cmd::TrainArgs),
    /// Train a noise-conditional classifier p_t(y | x(t)) for class guidance.
    TrainClassifier(train_cmd::TrainArgs),
    /// Test accuracy of a classifier run at t = 0, 0.25, 0.5, 0.75, 1.
    EvalClassifier(train_cmd::EvalClassifierArgs),
    /// Draw samples (PC, probability-flow ODE, DDIM, DPM-Solver++, Heun,
    /// reverse SDE) into a PNG grid.
    Sample(gen::SampleArgs),
    /// Fréchet distance of generated images (.npy) to the run's data, in
    /// pixel space and in a classifier's feature space.
    Frechet(frechet_cmd::FrechetArgs),
    /// Bits/dim of a data split under the probability-flow ODE.
    Likelihood(likelihood_cmd::LikelihoodArgs),
    /// Map images to latent codes with the probability-flow ODE.
    Encode(latent_cmd::EncodeArgs),
    /// Map latent codes back to images.
    Decode(latent_cmd::DecodeArgs),
    /// Interpolate between two images through the latent space.
    Interpolate(latent_cmd::InterpolateArgs),
    /// Fill in a hidden region of images (replacement or RePaint resampling).
    Inpaint(cond_cmd::InpaintArgs),
    /// Colour grey images with an RGB model.
    Colorize(cond_cmd::ColorizeArgs),
    /// Train on `digits`, sample a grid and report test bits/dim.
    Demo(demo::DemoArgs),
}

fn info(_ctx: &Ctx) -> serde_json::Value {
    let sdes: Vec<_> = [SdeKind::Ve, SdeKind::Vp, SdeKind::SubVp]
        .into_iter()
        .filter_map(|k| {
            let sde = SdeConfig::default_for(k).build().ok()?;
            Some(json!({"kind": k.to_string(), "num_steps": sde.num_steps(), "prior_std": sde.prior_std()}))
        })
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (gpu, auto) = match common::wgpu_backend() {
        Ok(b) => {
            let real = common::is_real_gpu(&b);
            (
                json!({"name": "wgpu", "available": true, "adapter": b.context().describe(),
                    "real_gpu": real}),
                if real { "wgpu" } else { "cpu" },
            )
        }
        Err(e) => (
            json!({"name": "wgpu", "available": false, "reason": e.to_string()}),
            "cpu",
        ),
    };
    json!({
        "command": "info",
        "version": env!("CARGO_PKG_VERSION"),
        "backends": [
            {"name": "cpu", "available": true, "threads": threads},
            gpu
        ],
        // What `--device auto` picks.
        "default_device": auto,
        "sdes": sdes,
    })
}

fn human(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(map) => map
            .iter()
            .filter(|(k, _)| k.as_str() != "command")
            .map(|(k, v)| match v {
                serde_json::Value::Object(_) | serde_json::Value::Array(_) => {
                    format!("{k}: {v}")
                }
                serde_json::Value::String(s) => format!("{k}: {s}"),
                other => format!("{k}: {other}"),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        other => other.to_string(),
    }
}

/// Exit status of a training run (`train`, `train-classifier`, `demo`)
/// stopped by Ctrl-C or SIGTERM after writing its checkpoint: distinct from
/// success (0), errors (1) and bad arguments (2), so scripts can tell that the
/// run can be resumed.
const EXIT_INTERRUPTED: u8 = 3;

fn main() -> ExitCode {
    // Reuse freed activation buffers instead of faulting fresh pages in every
    // training or sampling step (about 9% of a CPU training step).
    score_net::cpu::retain_freed_memory();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                };
            }
            let text = e.to_string();
            // One line: clap's message up to its usage block, joined.
            let head: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let msg = if head.is_empty() {
                "error: invalid arguments".to_string()
            } else {
                head.join(" ")
            };
            eprintln!("{msg} (see `scoresde --help`)");
            return ExitCode::from(2);
        }
    };
    let ctx = Ctx {
        json: cli.json,
        quiet: cli.quiet,
        seed: cli.seed,
        device: cli.device,
    };
    let result = match &cli.cmd {
        Cmd::Info => Ok(info(&ctx)),
        Cmd::Train(a) => train_cmd::run(&ctx, a),
        Cmd::TrainClassifier(a) => train_cmd::run_classifier(&ctx, a),
        Cmd::EvalClassifier(a) => train_cmd::eval_classifier(&ctx, a),
        Cmd::Sample(a) => gen::sample(&ctx, a),
        Cmd::Frechet(a) => frechet_cmd::frechet(&ctx, a),
        Cmd::Likelihood(a) => likelihood_cmd::likelihood(&ctx, a),
        Cmd::Encode(a) => latent_cmd::encode(&ctx, a),
        Cmd::Decode(a) => latent_cmd::decode(&ctx, a),
        Cmd::Interpolate(a) => latent_cmd::interpolate(&ctx, a),
        Cmd::Inpaint(a) => cond_cmd::inpaint(&ctx, a),
        Cmd::Colorize(a) => cond_cmd::colorize(&ctx, a),
        Cmd::Demo(a) => demo::run(&ctx, a),
    };
    match result {
        Ok(v) => {
            if ctx.json {
                println!("{v}");
            } else {
                println!("{}", human(&v));
            }
            if v["interrupted"].as_bool() == Some(true) {
                // Stopped by Ctrl-C / SIGTERM after saving a checkpoint.
                ExitCode::from(EXIT_INTERRUPTED)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            // The cause chain on one line, skipping causes already quoted
            // by the message above them (I/O errors repeat their source).
            let mut msg = String::new();
            for cause in e.chain() {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    if !msg.is_empty() {
                        msg.push_str(": ");
                    }
                    msg.push_str(&c);
                }
            }
            let msg = msg.replace('\n', " ");
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
