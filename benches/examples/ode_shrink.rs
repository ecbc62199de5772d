//! Wall time of probability-flow ODE sampling with finished samples leaving
//! the batch (what `ode_sample` does) against the frozen batch (every sample
//! evaluated until the last one finishes, what it did before), on the CPU
//! backend, interleaved in one run (medians of `reps` repetitions):
//!
//! - the 16-D two-component Gaussian mixture of the solver tests with its
//!   exact score, 256 prior draws, and the same draws scaled by 0.25..4;
//!   the results must be bit-identical (the analytic score evaluates every
//!   sample on its own), which this checks;
//! - the UNet of `configs/digits-vp.toml` (8x8 images), untrained or from the
//!   checkpoint named by `ODE_SHRINK_CHECKPOINT`, batch 64
//!   (`ODE_SHRINK_UNET_BATCH`), prior draws and scaled ones. The CPU UNet is
//!   not bit-independent of its batch size (its `linear` layers go through
//!   `gemm`, whose rounding changes with the number of rows), so there the
//!   two runs may differ by rounding, which this reports.
//!
//! `ODE_SHRINK_ONLY=mixture|unet` runs one part.
//!
//! `cargo run --release -p benches --example ode_shrink [reps]`
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use sde_core::analytic::{AnalyticScore, DiagGaussian, GaussianMixture};
use sde_core::{Backend, CpuBackend, CpuTensor, NoiseRng, ScoreModel, Sde, SdeExt, Shape, VpSde};
use solvers::ode::FlowRhs;
use solvers::{integrate_with_hooks, ode_sample_from, OdeConfig, OdeRhs};

/// Refuses `restrict`: the solver keeps the whole batch (finished samples frozen).
struct Frozen<R>(R);

impl<B: Backend, R: OdeRhs<B>> OdeRhs<B> for Frozen<R> {
    fn eval(&mut self, b: &B, x: &B::Tensor, t: &[f64]) -> solvers::Result<(B::Tensor, Vec<f64>)> {
        self.0.eval(b, x, t)
    }
}

/// The 2-component 16-D mixture of the solver tests.
fn mixture_16d() -> GaussianMixture {
    let d = 16;
    let m1 = (0..d)
        .map(|j| if j % 2 == 0 { 1.0 } else { -0.5 })
        .collect();
    let m2 = (0..d).map(|j| -0.6 + 0.08 * j as f64).collect();
    let v1 = (0..d).map(|j| 0.1 + 0.02 * j as f64).collect();
    let v2 = (0..d).map(|j| 0.3 - 0.01 * j as f64).collect();
    GaussianMixture::new(
        vec![0.4, 0.6],
        vec![
            DiagGaussian::new(m1, v1).expect("component"),
            DiagGaussian::new(m2, v2).expect("component"),
        ],
    )
    .expect("mixture")
}

struct Run {
    time: Duration,
    x: Vec<f32>,
    nfe: usize,
    nfe_per_sample: Vec<usize>,
    sample_evals: usize,
}

fn solve<M: ScoreModel<CpuBackend>>(
    sde: &VpSde,
    model: &M,
    z: &CpuTensor,
    cfg: &OdeConfig,
    shrink: bool,
) -> Run {
    let b = CpuBackend;
    let eps = cfg.eps.expect("eps set");
    let start = Instant::now();
    let (x, nfe, nfe_per_sample, sample_evals) = if shrink {
        let o = ode_sample_from(
            &b,
            sde,
            model,
            z.clone(),
            cfg,
            &mut NoiseRng::new(0),
            &mut (),
        )
        .expect("ode");
        (o.x, o.nfe, o.nfe_per_sample, o.sample_evals)
    } else {
        let o = integrate_with_hooks(
            &b,
            &mut Frozen(FlowRhs { sde, model }),
            z.clone(),
            Vec::new(),
            sde.t_max(),
            eps,
            cfg,
            &mut (),
            &mut NoiseRng::new(0),
        )
        .expect("ode");
        (o.x, o.nfe, o.nfe_per_sample, o.sample_evals)
    };
    Run {
        time: start.elapsed(),
        x: x.into_vec(),
        nfe,
        nfe_per_sample,
        sample_evals,
    }
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn case<M: ScoreModel<CpuBackend>>(
    name: &str,
    sde: &VpSde,
    model: &M,
    z: &CpuTensor,
    cfg: &OdeConfig,
    reps: usize,
) -> bool {
    let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let (mut t_new, mut t_old) = (Vec::new(), Vec::new());
    let mut first: Option<(Run, Run)> = None;
    for _ in 0..reps {
        // Interleaved, so that drift of a shared machine hits both alike.
        let new = solve(sde, model, z, cfg, true);
        let old = solve(sde, model, z, cfg, false);
        t_new.push(new.time);
        t_old.push(old.time);
        first.get_or_insert((new, old));
    }
    let (new, old) = first.expect("at least one repetition");
    let identical = bits(&new.x) == bits(&old.x) && new.nfe_per_sample == old.nfe_per_sample;
    let n = new.nfe_per_sample.len();
    let mean = new.nfe_per_sample.iter().sum::<usize>() as f64 / n as f64;
    let (mn, mo) = (median(&mut t_new), median(&mut t_old));
    println!(
        "{name}: batch {n}, nfe {} (frozen {}), per-sample nfe mean {mean:.1} min {} max {}; \
         sample evaluations {} vs {} ({:.1}%); bit-identical: {identical}",
        new.nfe,
        old.nfe,
        new.nfe_per_sample.iter().min().expect("samples"),
        new.nfe_per_sample.iter().max().expect("samples"),
        new.sample_evals,
        old.sample_evals,
        100.0 * new.sample_evals as f64 / old.sample_evals as f64
    );
    if !identical {
        let dx = new
            .x
            .iter()
            .zip(&old.x)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let moved = new
            .nfe_per_sample
            .iter()
            .zip(&old.nfe_per_sample)
            .filter(|(a, b)| a != b)
            .count();
        println!(
            "  (the model is not per-sample independent bit for bit: max |x - x_frozen| {dx:e}, \
             {moved} samples with another nfe)"
        );
    }
    println!(
        "  wall time, median of {reps}: shrinking {:.1} ms, frozen {:.1} ms, ratio {:.3} \
         (min {:.1} / {:.1} ms)",
        mn.as_secs_f64() * 1e3,
        mo.as_secs_f64() * 1e3,
        mn.as_secs_f64() / mo.as_secs_f64(),
        t_new.iter().min().expect("reps").as_secs_f64() * 1e3,
        t_old.iter().min().expect("reps").as_secs_f64() * 1e3,
    );
    identical
}

fn main() {
    benches::tune_allocator();
    let reps: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("reps: a number"))
        .unwrap_or(7);
    let only = std::env::var("ODE_SHRINK_ONLY").unwrap_or_default();
    let b = CpuBackend;
    let sde = VpSde::new(0.1, 20.0, 1000).expect("SDE");
    let cfg = OdeConfig {
        rtol: 1e-5,
        atol: 1e-5,
        eps: Some(sde.default_sampling_eps()),
        ..OdeConfig::default()
    };
    if only.is_empty() || only == "mixture" {
        let model = AnalyticScore::new(mixture_16d(), sde.clone());
        let shape = Shape::new([256, 16]).expect("shape");
        let z = sde
            .prior_sample(&b, &shape, NoiseRng::new(0).next_key())
            .expect("prior");
        let same = case("16-D mixture, prior draws", &sde, &model, &z, &cfg, reps);
        assert!(
            same,
            "the analytic score is per-sample independent: results must agree"
        );
        // Prior draws scaled by 0.25, 1, 2 or 4: a wider spread of difficulty.
        let mut v = z.into_vec();
        for (i, v) in v.iter_mut().enumerate() {
            *v *= [0.25, 1.0, 2.0, 4.0][(i / 16) % 4];
        }
        let z = b.tensor(v, &shape).expect("tensor");
        let same = case("16-D mixture, scaled draws", &sde, &model, &z, &cfg, reps);
        assert!(
            same,
            "the analytic score is per-sample independent: results must agree"
        );
    }
    if only.is_empty() || only == "unet" {
        // The network of configs/digits-vp.toml (8x8 digits), untrained.
        let net = score_net::UnetConfig {
            in_channels: 1,
            base_channels: 16,
            channel_mult: vec![1, 2],
            num_res_blocks: 1,
            attn_resolutions: vec![4],
            dropout: 0.0,
            ..score_net::UnetConfig::default()
        };
        // A trained checkpoint of that configuration instead, if given.
        let checkpoint = std::env::var_os("ODE_SHRINK_CHECKPOINT");
        let (model, label) = match &checkpoint {
            Some(path) => {
                let ck = score_net::checkpoint::load::<score_net::Unet>(path.as_ref())
                    .expect("checkpoint");
                let m = score_net::UnetScore::from_checkpoint(&b, &ck, sde.clone()).expect("unet");
                (m, "digits UNet (checkpoint)")
            }
            None => (
                score_net::UnetScore::new(&b, &net, 8, sde.clone(), 0).expect("unet"),
                "digits UNet (untrained)",
            ),
        };
        let batch: usize = std::env::var("ODE_SHRINK_UNET_BATCH")
            .ok()
            .map(|v| v.parse().expect("batch: a number"))
            .unwrap_or(64);
        let shape = Shape::new([batch, 1, 8, 8]).expect("shape");
        let z = sde
            .prior_sample(&b, &shape, NoiseRng::new(0).next_key())
            .expect("prior");
        let unet_reps = (reps / 2).max(1);
        case(label, &sde, &model, &z, &cfg, unet_reps);
        let mut v = z.into_vec();
        for (i, v) in v.iter_mut().enumerate() {
            *v *= [0.25, 1.0, 2.0, 4.0][(i / 64) % 4];
        }
        let z = b.tensor(v, &shape).expect("tensor");
        case(
            &format!("{label}, scaled draws"),
            &sde,
            &model,
            &z,
            &cfg,
            unet_reps,
        );
    }
}
