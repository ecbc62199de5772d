//! Closed-form properties of the forward SDEs and their perturbation kernels,
//! and a Monte-Carlo simulation of each forward SDE against its kernel.
#![allow(clippy::unwrap_used)] // tests fail by panicking

mod common;

use common::{assert_within_se, ks_critical, ks_normal, mean_var, name, reference_sdes};
use sde_core::{Backend, Coef, CpuBackend, NoiseRng, Sde, SdeExt, Shape, SubVpSde, VeSde, VpSde};

/// Times at which the kernels are checked.
const TIMES: [f64; 6] = [0.0, 1e-3, 0.1, 0.37, 0.8, 1.0];

#[test]
fn vp_kernel_preserves_variance() {
    let sde = VpSde::new(0.1, 20.0, 1000).unwrap();
    for t in TIMES {
        let k = sde.marginal(t);
        assert!(
            (k.mean_coef.powi(2) + k.std.powi(2) - 1.0).abs() < 1e-14,
            "t = {t}: m^2 + s^2 = {}",
            k.mean_coef.powi(2) + k.std.powi(2)
        );
    }
    assert_eq!(sde.marginal(0.0).std, 0.0);
    assert_eq!(sde.marginal(0.0).mean_coef, 1.0);
}

#[test]
fn sub_vp_std_is_below_vp_and_equals_one_minus_m2() {
    let vp = VpSde::new(0.1, 20.0, 1000).unwrap();
    let sub = SubVpSde::new(0.1, 20.0, 1000).unwrap();
    for t in TIMES.iter().copied().filter(|&t| t > 0.0) {
        let (kv, ks) = (vp.marginal(t), sub.marginal(t));
        assert_eq!(kv.mean_coef, ks.mean_coef, "same mean at t = {t}");
        assert!(
            ks.std < kv.std,
            "t = {t}: sub-VP std {} >= VP std {}",
            ks.std,
            kv.std
        );
        assert!((ks.std - (1.0 - ks.mean_coef.powi(2))).abs() < 1e-14);
    }
}

#[test]
fn closed_forms_of_reference_schedules() {
    // VE: sigma(t) = smin (smax/smin)^t; g^2 = d sigma^2 / dt.
    let ve = VeSde::new(0.01, 50.0, 1000).unwrap();
    assert!((ve.marginal(0.0).std - 0.01).abs() < 1e-15);
    assert!((ve.marginal(1.0).std - 50.0).abs() < 1e-12);
    assert!((ve.marginal(0.5).std - (0.01f64 * 50.0).sqrt()).abs() < 1e-12);
    assert_eq!(ve.prior_std(), 50.0);
    // VP: m(1) = exp(-(bmin + bmax)/4), beta(t) linear.
    let vp = VpSde::new(0.1, 20.0, 1000).unwrap();
    assert!((vp.marginal(1.0).mean_coef - (-(0.1f64 + 20.0) / 4.0).exp()).abs() < 1e-15);
    assert!((vp.beta(0.5) - 10.05).abs() < 1e-12);
    assert!((vp.drift_coef(0.5) + 5.025).abs() < 1e-12);
    assert!((vp.diffusion(0.5) - 10.05f64.sqrt()).abs() < 1e-12);
    // sub-VP: g(0) = 0 (the noise switches on gradually).
    let sub = SubVpSde::new(0.1, 20.0, 1000).unwrap();
    assert_eq!(sub.diffusion(0.0), 0.0);
}

/// The kernels solve the moment ODEs of the SDE: `d ln m / dt = a(t)` and
/// `d s^2 / dt = 2 a(t) s^2 + g(t)^2` — this ties `g`, `a` and the kernel together.
#[test]
fn kernels_solve_the_moment_odes() {
    for sde in reference_sdes() {
        let h = 1e-6;
        for t in [0.05, 0.3, 0.6, 0.95] {
            let (kp, km, k) = (sde.marginal(t + h), sde.marginal(t - h), sde.marginal(t));
            let dlnm = (kp.mean_coef.ln() - km.mean_coef.ln()) / (2.0 * h);
            let dvar = (kp.std.powi(2) - km.std.powi(2)) / (2.0 * h);
            let a = sde.drift_coef(t);
            let rhs = 2.0 * a * k.std.powi(2) + sde.diffusion(t).powi(2);
            assert!(
                (dlnm - a).abs() < 1e-6 * (1.0 + a.abs()),
                "{} t={t}: dlnm {dlnm} vs a {a}",
                name(&sde)
            );
            assert!(
                (dvar - rhs).abs() < 1e-6 * (1.0 + rhs.abs()),
                "{} t={t}: d s^2/dt {dvar} vs 2 a s^2 + g^2 {rhs}",
                name(&sde)
            );
        }
    }
}

/// Moments of the Euler–Maruyama chain `x_{k+1} = (1 + a_k dt) x_k + g_k sqrt(dt) z`,
/// exactly (no sampling): mean coefficient and variance after `steps` steps to `t`.
fn em_moments(sde: &dyn Sde, t: f64, steps: usize) -> (f64, f64) {
    em_moments_from(sde, 0.0, t, steps)
}

/// The same chain started at time `s` with a fixed state.
fn em_moments_from(sde: &dyn Sde, s: f64, t: f64, steps: usize) -> (f64, f64) {
    let dt = (t - s) / steps as f64;
    let (mut m, mut v) = (1.0, 0.0);
    for k in 0..steps {
        let tk = s + k as f64 * dt;
        let c = 1.0 + sde.drift_coef(tk) * dt;
        m *= c;
        v = c * c * v + sde.diffusion(tk).powi(2) * dt;
    }
    (m, v)
}

/// `transition(s, t)` between two positive times is what the SDE does: the
/// exact moments of a fine Euler–Maruyama chain from `s` to `t` (16000 steps)
/// match it to 0.5% (this checks the general formula, not an identity of it).
#[test]
fn transition_between_two_times_matches_the_sde() {
    for sde in reference_sdes() {
        for (s, t) in [(0.1, 0.5), (0.25, 1.0), (0.6, 0.7)] {
            let k = sde.transition(s, t);
            let (m, v) = em_moments_from(&sde, s, t, 16_000);
            assert!(
                ((m - k.mean_coef) / k.mean_coef).abs() < 5e-3,
                "{} ({s},{t}) mean",
                name(&sde)
            );
            assert!(
                ((v - k.std.powi(2)) / k.std.powi(2)).abs() < 5e-3,
                "{} ({s},{t}) var {v} vs {}",
                name(&sde),
                k.std.powi(2)
            );
        }
    }
}

/// The EM chain's exact moments converge to the kernel (first order in dt):
/// the error shrinks by about 2x when dt halves, and is below 1% at dt = 1/4000.
#[test]
fn euler_maruyama_moments_converge_to_kernel() {
    for sde in reference_sdes() {
        for t in [0.3, 1.0] {
            let k = sde.transition(0.0, t);
            let err = |steps| {
                let (m, v) = em_moments(&sde, t, steps);
                (
                    (m - k.mean_coef).abs() / k.mean_coef,
                    (v - k.std.powi(2)).abs() / k.std.powi(2),
                )
            };
            let (em1, ev1) = err(2000);
            let (em2, ev2) = err(4000);
            assert!(
                em2 < 1e-2 && ev2 < 1e-2,
                "{} t={t}: rel errors {em2} {ev2}",
                name(&sde)
            );
            for (e1, e2) in [(em1, em2), (ev1, ev2)] {
                if e1 > 1e-9 {
                    let ratio = e1 / e2;
                    assert!(
                        (1.7..2.3).contains(&ratio),
                        "{} t={t}: order ratio {ratio}",
                        name(&sde)
                    );
                }
            }
        }
    }
}

/// Monte-Carlo simulation of each forward SDE with a fine Euler–Maruyama grid
/// (4000 steps, 20000 paths from a fixed x(0)): the sample mean and variance
/// match the chain's exact moments within 5 standard errors (pure sampling
/// error: the bias of the grid is computed exactly above), the chain's moments
/// match the kernel to < 1%, and the standardised samples pass a KS test
/// against N(0, 1) at level 1e-3.
#[test]
fn forward_simulation_matches_kernel() {
    let b = CpuBackend;
    let paths = 20_000;
    let steps = 4000;
    let x0 = 1.5f32;
    for (si, sde) in reference_sdes().into_iter().enumerate() {
        let t_end = 0.6;
        let shape = Shape::new([paths]).unwrap();
        let mut x = b.full(&shape, x0).unwrap();
        let mut rng = NoiseRng::new(100 + si as u64);
        let dt = t_end / steps as f64;
        for k in 0..steps {
            let tk = k as f64 * dt;
            let z = b.gaussian(&shape, rng.next_key()).unwrap();
            let c = (1.0 + sde.drift_coef(tk) * dt) as f32;
            let g = (sde.diffusion(tk) * dt.sqrt()) as f32;
            x = b
                .lincomb(&[(Coef::Scalar(c), &x), (Coef::Scalar(g), &z)])
                .unwrap();
        }
        let xs: Vec<f64> = b.to_vec(&x).unwrap().into_iter().map(f64::from).collect();
        let (mean, var, n) = mean_var(xs.iter().copied());
        let (em_m, em_v) = em_moments(&sde, t_end, steps);
        let kern = sde.transition(0.0, t_end);
        let who = name(&sde);
        assert_within_se(
            &format!("{who} mean"),
            mean,
            em_m * f64::from(x0),
            (em_v / n as f64).sqrt(),
            5.0,
        );
        assert_within_se(
            &format!("{who} var"),
            var,
            em_v,
            em_v * (2.0 / (n as f64 - 1.0)).sqrt(),
            5.0,
        );
        assert!(((em_m - kern.mean_coef) / kern.mean_coef).abs() < 1e-2);
        assert!(((em_v - kern.std.powi(2)) / kern.std.powi(2)).abs() < 1e-2);
        let mut z: Vec<f64> = xs.iter().map(|x| (x - mean) / var.sqrt()).collect();
        let d = ks_normal(&mut z);
        assert!(
            d < ks_critical(n),
            "{who}: KS distance {d} >= {}",
            ks_critical(n)
        );
    }
}

/// `perturb` is `m(t) x0 + s(t) z` elementwise, with each sample's own time.
#[test]
fn perturb_is_the_kernel_draw() {
    let b = CpuBackend;
    let shape = Shape::new([3, 4]).unwrap();
    let t = [0.0, 0.42, 1.0];
    for sde in reference_sdes() {
        let x0 = b.gaussian(&shape, NoiseRng::new(8).next_key()).unwrap();
        let z = b.gaussian(&shape, NoiseRng::new(9).next_key()).unwrap();
        let xt = b.to_vec(&sde.perturb(&b, &x0, &z, &t).unwrap()).unwrap();
        let (xv, zv) = (b.to_vec(&x0).unwrap(), b.to_vec(&z).unwrap());
        for i in 0..12 {
            let k = sde.marginal(t[i / 4]);
            let want = k.mean_coef * f64::from(xv[i]) + k.std * f64::from(zv[i]);
            assert!(
                (f64::from(xt[i]) - want).abs() <= 1e-6 * want.abs().max(1.0),
                "{} {i}",
                name(&sde)
            );
        }
    }
}

/// Reverse-time and probability-flow drifts are `a x - g^2 score` and `a x - g^2 score / 2`.
#[test]
fn reverse_and_probability_flow_drifts() {
    let b = CpuBackend;
    let shape = Shape::new([3, 2]).unwrap();
    let x = b
        .tensor(vec![1.0, -2.0, 0.5, 0.25, 3.0, -1.0], &shape)
        .unwrap();
    let s = b
        .tensor(vec![-0.5, 1.0, 2.0, -1.5, 0.1, 0.3], &shape)
        .unwrap();
    let t = [0.1, 0.5, 0.9];
    for sde in reference_sdes() {
        let rev = b
            .to_vec(&sde.reverse_drift(&b, &x, &t, &s).unwrap())
            .unwrap();
        let pf = b
            .to_vec(&sde.probability_flow_drift(&b, &x, &t, &s).unwrap())
            .unwrap();
        let (xv, sv) = (b.to_vec(&x).unwrap(), b.to_vec(&s).unwrap());
        for i in 0..6 {
            let tn = t[i / 2];
            let (a, g2) = (sde.drift_coef(tn), sde.diffusion(tn).powi(2));
            let want_rev = a * f64::from(xv[i]) - g2 * f64::from(sv[i]);
            let want_pf = a * f64::from(xv[i]) - 0.5 * g2 * f64::from(sv[i]);
            assert!((f64::from(rev[i]) - want_rev).abs() <= 1e-5 * (1.0 + want_rev.abs()));
            assert!((f64::from(pf[i]) - want_pf).abs() <= 1e-5 * (1.0 + want_pf.abs()));
        }
    }
}

/// The prior log-density equals the Gaussian formula, written out independently.
#[test]
fn prior_log_density_is_gaussian() {
    let b = CpuBackend;
    let shape = Shape::new([5, 3, 2]).unwrap();
    for sde in reference_sdes() {
        let z = sde
            .prior_sample(&b, &shape, NoiseRng::new(3).next_key())
            .unwrap();
        let lp = sde.prior_log_prob(&b, &z).unwrap();
        let zs = b.to_vec(&z).unwrap();
        let v = sde.prior_std().powi(2);
        for (n, lp) in lp.iter().enumerate() {
            let mut want = 0.0;
            for &zi in &zs[n * 6..(n + 1) * 6] {
                let zi = f64::from(zi);
                want += -0.5 * (2.0 * std::f64::consts::PI * v).ln() - zi * zi / (2.0 * v);
            }
            assert!(
                (lp - want).abs() < 1e-9 * want.abs().max(1.0),
                "{}: {lp} vs {want}",
                name(&sde)
            );
        }
    }
}

/// Prior samples have the prior's standard deviation.
#[test]
fn prior_samples_have_prior_std() {
    let b = CpuBackend;
    let shape = Shape::new([40_000]).unwrap();
    for sde in reference_sdes() {
        let z = sde
            .prior_sample(&b, &shape, NoiseRng::new(5).next_key())
            .unwrap();
        let (_, var, n) = mean_var(b.to_vec(&z).unwrap().into_iter().map(f64::from));
        let v = sde.prior_std().powi(2);
        assert_within_se(
            &format!("{} prior var", name(&sde)),
            var,
            v,
            v * (2.0 / n as f64).sqrt(),
            5.0,
        );
    }
}
