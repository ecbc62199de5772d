//! One predictor–corrector level and one full probability-flow ODE solve with
//! the exact score of Gaussian mixtures (2-D and 16-D), on the CPU backend,
//! and the ODE solve with finished samples leaving the batch (`shrinking`,
//! what `ode_sample` does) against the frozen batch (`frozen`).
//! The analytic score runs on the host, so these numbers measure the sampler
//! machinery plus a cheap model, not a network.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use sde_core::analytic::{AnalyticScore, DiagGaussian, GaussianMixture};
use sde_core::{Backend, CpuBackend, NoiseRng, Sde, SdeExt, Shape, VpSde};
use solvers::ode::FlowRhs;
use solvers::pc::{corrector_update, predictor_update};
use solvers::{
    integrate_with_hooks, ode_sample, CorrectorKind, NormMode, OdeConfig, OdeRhs, PredictorKind,
};

/// Refuses `restrict`: the solver keeps the whole batch, finished samples frozen.
struct Frozen<R>(R);

impl<B: Backend, R: OdeRhs<B>> OdeRhs<B> for Frozen<R> {
    fn eval(&mut self, b: &B, x: &B::Tensor, t: &[f64]) -> solvers::Result<(B::Tensor, Vec<f64>)> {
        self.0.eval(b, x, t)
    }
}

fn mixture(d: usize) -> GaussianMixture {
    let comps = (0..4)
        .map(|k| {
            let mean = (0..d).map(|j| ((k * 7 + j) % 5) as f64 - 2.0).collect();
            DiagGaussian::isotropic(mean, 0.1 + 0.05 * k as f64).expect("valid component")
        })
        .collect();
    GaussianMixture::new(vec![0.1, 0.2, 0.3, 0.4], comps).expect("valid mixture")
}

fn bench_solvers(c: &mut Criterion) {
    let b = CpuBackend;
    let sde = VpSde::new(0.1, 20.0, 1000).expect("valid SDE");
    let mut group = c.benchmark_group("cpu");
    for (d, batch) in [(2usize, 1000usize), (16, 256)] {
        let model = AnalyticScore::new(mixture(d), sde.clone());
        let shape = Shape::new([batch, d]).expect("valid shape");
        let label = format!("{d}d-x{batch}");
        let x = sde
            .prior_sample(&b, &shape, NoiseRng::new(1).next_key())
            .expect("prior");
        let t = vec![0.5; batch];
        group.bench_with_input(
            BenchmarkId::new("pc_level_rd_langevin", &label),
            &x,
            |bch, x| {
                let mut rng = NoiseRng::new(2);
                bch.iter(|| {
                    let u = corrector_update(
                        CorrectorKind::Langevin,
                        &b,
                        &sde,
                        &model,
                        x,
                        &t,
                        0.16,
                        1,
                        NormMode::BatchMean,
                        &mut rng,
                    )
                    .expect("corrector");
                    let p = predictor_update(
                        PredictorKind::ReverseDiffusion,
                        &b,
                        &sde,
                        &model,
                        &u.x,
                        &t,
                        &mut rng,
                    )
                    .expect("predictor");
                    b.sync().expect("sync");
                    p
                })
            },
        );
    }
    group.sample_size(10);
    for tol in [1e-5, 1e-3] {
        let model = AnalyticScore::new(mixture(16), sde.clone());
        let shape = Shape::new([64, 16]).expect("valid shape");
        let cfg = OdeConfig {
            rtol: tol,
            atol: tol,
            ..OdeConfig::default()
        };
        group.bench_function(
            BenchmarkId::new("ode_solve_16d-x64", format!("tol{tol:e}")),
            |bch| {
                bch.iter(|| {
                    let out = ode_sample(
                        &b,
                        &sde,
                        &model,
                        &shape,
                        &cfg,
                        &mut NoiseRng::new(3),
                        &mut (),
                    )
                    .expect("ode");
                    b.sync().expect("sync");
                    out.nfe
                })
            },
        );
    }
    // 256 samples of different difficulty (per-sample NFE from about 2/3 of
    // the batched NFE up to all of it), rtol = atol = 1e-5.
    let model = AnalyticScore::new(mixture(16), sde.clone());
    let shape = Shape::new([256, 16]).expect("valid shape");
    let cfg = OdeConfig {
        rtol: 1e-5,
        atol: 1e-5,
        ..OdeConfig::default()
    };
    group.bench_function(BenchmarkId::new("ode_solve_16d-x256", "shrinking"), |bch| {
        bch.iter(|| {
            let out = ode_sample(
                &b,
                &sde,
                &model,
                &shape,
                &cfg,
                &mut NoiseRng::new(3),
                &mut (),
            )
            .expect("ode");
            out.sample_evals
        })
    });
    group.bench_function(BenchmarkId::new("ode_solve_16d-x256", "frozen"), |bch| {
        bch.iter(|| {
            // What `ode_sample` does, with the batch kept whole.
            let mut rng = NoiseRng::new(3);
            let z = sde.prior_sample(&b, &shape, rng.next_key()).expect("prior");
            let mut rhs = Frozen(FlowRhs {
                sde: &sde,
                model: &model,
            });
            let eps = sde.default_sampling_eps();
            integrate_with_hooks(
                &b,
                &mut rhs,
                z,
                Vec::new(),
                sde.t_max(),
                eps,
                &cfg,
                &mut (),
                &mut rng,
            )
            .expect("ode")
            .sample_evals
        })
    });
    group.finish();
}

criterion_group!(benches, bench_solvers);
criterion_main!(benches);
