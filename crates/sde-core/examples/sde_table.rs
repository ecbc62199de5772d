//! Prints, for each SDE with the reference defaults, a table of the kernel
//! mean coefficient `m(t)`, standard deviation `s(t)` and diffusion `g(t)`, then
//! simulates the forward SDE (Euler–Maruyama, 2000 steps, 20000 paths from
//! `x(0) = 1`) and checks the simulated mean and variance at each tabulated `t`
//! against the exact kernel. Exits non-zero if any check fails.
//!
//! Run: `cargo run --release -p sde-core --example sde_table`

use sde_core::{Backend, Coef, CpuBackend, NoiseRng, Sde, SdeConfig, SdeKind, Shape};

const PATHS: usize = 20_000;
const STEPS: usize = 2000;
const TIMES: [f64; 6] = [0.0, 0.1, 0.25, 0.5, 0.75, 1.0];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let b = CpuBackend;
    let shape = Shape::new([PATHS])?;
    let mut all_ok = true;
    for kind in [SdeKind::Ve, SdeKind::Vp, SdeKind::SubVp] {
        let cfg = SdeConfig::default_for(kind);
        let sde = cfg.build()?;
        println!("\n{kind} SDE  {cfg:?}");
        println!(
            "{:>6} {:>12} {:>12} {:>12} | {:>12} {:>12} {:>12} {:>12} {:>4}",
            "t", "m(t)", "s(t)", "g(t)", "sim mean", "exact mean", "sim var", "exact var", "ok"
        );
        let mut x = b.full(&shape, 1.0)?;
        let mut rng = NoiseRng::new(kind as u64);
        let dt = 1.0 / STEPS as f64;
        let mut step = 0;
        for &t in &TIMES {
            // Advance the simulation to t.
            while (step as f64) * dt < t - 1e-12 {
                let tk = step as f64 * dt;
                let z = b.gaussian(&shape, rng.next_key())?;
                let c = (1.0 + sde.drift_coef(tk) * dt) as f32;
                let g = (sde.diffusion(tk) * dt.sqrt()) as f32;
                x = b.lincomb(&[(Coef::Scalar(c), &x), (Coef::Scalar(g), &z)])?;
                step += 1;
            }
            let xs = b.to_vec(&x)?;
            let n = xs.len() as f64;
            let mean = xs.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
            let var = xs
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / (n - 1.0);
            let k = sde.marginal(t);
            // The simulation starts at x(0), so it must match the exact transition
            // from 0 (for VE this is sigma(t)^2 - sigma_min^2; see sde-core's docs).
            let exact = sde.transition(0.0, t);
            let exact_var = exact.std.powi(2);
            // 5 standard errors plus 1% for the first-order Euler–Maruyama bias.
            let mean_tol = 5.0 * (exact_var / n).sqrt() + 0.01 * exact.mean_coef.abs();
            let var_tol = (5.0 * (2.0 / n).sqrt() + 0.01) * exact_var;
            let ok = (mean - exact.mean_coef).abs() <= mean_tol + 1e-12
                && (var - exact_var).abs() <= var_tol + 1e-12;
            all_ok &= ok;
            println!(
                "{t:>6.2} {:>12.5e} {:>12.5e} {:>12.5e} | {mean:>12.5e} {:>12.5e} {var:>12.5e} {exact_var:>12.5e} {:>4}",
                k.mean_coef,
                k.std,
                sde.diffusion(t),
                exact.mean_coef,
                if ok { "yes" } else { "NO" }
            );
        }
    }
    if all_ok {
        println!("\nforward simulations match the exact kernels");
        Ok(())
    } else {
        Err("a forward simulation disagrees with its kernel".into())
    }
}
