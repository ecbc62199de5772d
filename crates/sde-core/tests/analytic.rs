//! The analytic distributions: exact score = finite difference of the exact
//! log-density, score Jacobian-vector products = finite differences of the
//! score, perturbed marginals = moments of perturbed samples, and the
//! `ScoreModel` implementation agrees with the host maths.
#![allow(clippy::unwrap_used)] // tests fail by panicking

mod common;

use common::{assert_within_se, mean_var, name, reference_sdes};
use sde_core::analytic::{AnalyticScore, DiagGaussian, GaussianMixture};
use sde_core::{Backend, CpuBackend, NoiseRng, ScoreModel, ScoreVjp, Sde, SdeExt, Shape};

fn mixture() -> GaussianMixture {
    GaussianMixture::new(
        vec![0.2, 0.5, 0.3],
        vec![
            DiagGaussian::new(
                vec![1.0, -2.0, 0.5, 0.0, 3.0],
                vec![0.3, 0.1, 1.0, 0.5, 0.2],
            )
            .unwrap(),
            DiagGaussian::isotropic(vec![-1.5, 0.5, 0.0, 2.0, -1.0], 0.4).unwrap(),
            DiagGaussian::new(
                vec![0.0, 1.0, -2.0, -1.0, 0.5],
                vec![0.05, 2.0, 0.3, 0.3, 0.8],
            )
            .unwrap(),
        ],
    )
    .unwrap()
}

fn points() -> Vec<Vec<f64>> {
    vec![
        vec![0.3, -1.0, 0.2, 0.5, 1.0],
        vec![-1.0, 0.4, -0.3, 1.5, -0.5],
        vec![2.0, 2.0, -2.0, -2.0, 0.0],
    ]
}

#[test]
fn score_is_gradient_of_log_density() {
    let h = 1e-5;
    for sde in reference_sdes() {
        let model = AnalyticScore::new(mixture(), sde.clone());
        for t in [0.0, 0.01, 0.3, 1.0] {
            let pt = model.marginal_at(t).unwrap();
            for x in points() {
                let score = pt.score(&x);
                for j in 0..x.len() {
                    let (mut xp, mut xm) = (x.clone(), x.clone());
                    xp[j] += h;
                    xm[j] -= h;
                    let fd = (pt.log_prob(&xp) - pt.log_prob(&xm)) / (2.0 * h);
                    assert!(
                        (fd - score[j]).abs() <= 1e-6 * (1.0 + score[j].abs()),
                        "{} t={t} dim {j}: score {} vs fd {fd}",
                        name(&sde),
                        score[j]
                    );
                }
            }
        }
    }
}

#[test]
fn hessian_vector_product_matches_finite_differences() {
    let h = 1e-5;
    let v = [0.7, -0.2, 1.1, 0.4, -0.9];
    for sde in reference_sdes() {
        let model = AnalyticScore::new(mixture(), sde.clone());
        for t in [0.0, 0.2, 0.8] {
            let pt = model.marginal_at(t).unwrap();
            for x in points() {
                let (_, hv) = pt.score_and_hvp(&x, Some(&v));
                let xp: Vec<f64> = x.iter().zip(&v).map(|(a, b)| a + h * b).collect();
                let xm: Vec<f64> = x.iter().zip(&v).map(|(a, b)| a - h * b).collect();
                let (sp, sm) = (pt.score(&xp), pt.score(&xm));
                for j in 0..x.len() {
                    let fd = (sp[j] - sm[j]) / (2.0 * h);
                    assert!(
                        (fd - hv[j]).abs() <= 1e-5 * (1.0 + hv[j].abs()),
                        "{} t={t} dim {j}: Hv {} vs fd {fd}",
                        name(&sde),
                        hv[j]
                    );
                }
            }
        }
    }
}

/// A single Gaussian's log-density against the textbook formula, and the
/// mixture against an explicit sum of weighted densities.
#[test]
fn densities_match_formulas() {
    let g = DiagGaussian::new(vec![1.0, -1.0], vec![0.5, 2.0]).unwrap();
    let x = [0.2, 0.7];
    let want = -0.5 * ((0.8f64).powi(2) / 0.5 + (1.7f64).powi(2) / 2.0)
        - 0.5 * (2.0 * std::f64::consts::PI * 0.5).ln()
        - 0.5 * (2.0 * std::f64::consts::PI * 2.0).ln();
    assert!((g.log_prob(&x) - want).abs() < 1e-13);
    let mix = mixture();
    let y = points()[0].clone();
    let sum: f64 = mix
        .weights()
        .iter()
        .zip(mix.components())
        .map(|(w, c)| w * c.log_prob(&y).exp())
        .sum();
    assert!((mix.log_prob(&y) - sum.ln()).abs() < 1e-12);
}

/// Samples of data perturbed with the kernel have the moments of `p_t`
/// (mean and covariance of the perturbed mixture), within 5 standard errors.
#[test]
fn perturbed_samples_follow_marginal() {
    let b = CpuBackend;
    let n = 40_000;
    let data = mixture();
    let d = data.dim();
    for sde in reference_sdes() {
        let t = 0.35;
        let model = AnalyticScore::new(data.clone(), sde.clone());
        let mut rng = NoiseRng::new(11);
        let shape = Shape::new([n, d]).unwrap();
        let x0 = b.tensor(data.sample(n, &mut rng), &shape).unwrap();
        let z = b.gaussian(&shape, rng.next_key()).unwrap();
        let xt = b
            .to_vec(&sde.perturb(&b, &x0, &z, &vec![t; n]).unwrap())
            .unwrap();
        let pt = model.marginal_at(t).unwrap();
        let (mean, cov) = (pt.mean(), pt.covariance());
        for j in 0..d {
            let (m, v, _) = mean_var((0..n).map(|i| f64::from(xt[i * d + j])));
            let vj = cov[j * d + j];
            assert_within_se(
                &format!("{} mean[{j}]", name(&sde)),
                m,
                mean[j],
                (vj / n as f64).sqrt(),
                5.0,
            );
            // SE of the sample variance is sqrt((mu4 - var^2) / n); for these
            // marginals (mu4 - var^2) / var^2 <= 1.96, so the Gaussian SE bounds it.
            let se = vj * (2.0 / n as f64).sqrt();
            assert_within_se(&format!("{} var[{j}]", name(&sde)), v, vj, se, 5.0);
        }
    }
}

/// The `ScoreModel` implementation on the CPU backend equals the host maths
/// (to f32 rounding) and its VJP equals the Hessian-vector product.
#[test]
fn score_model_matches_host_maths() {
    let b = CpuBackend;
    let pts = points();
    let d = 5;
    let shape = Shape::new([pts.len(), d]).unwrap();
    let flat: Vec<f32> = pts.iter().flatten().map(|&v| v as f32).collect();
    let x = b.tensor(flat.clone(), &shape).unwrap();
    let vflat: Vec<f32> = (0..flat.len()).map(|i| (i as f32 * 0.37).sin()).collect();
    let v = b.tensor(vflat.clone(), &shape).unwrap();
    let t = [0.05, 0.5, 0.95];
    for sde in reference_sdes() {
        let model = AnalyticScore::new(mixture(), sde.clone());
        let (s, vjp) = model.score_and_vjp(&b, &x, &t, &v).unwrap();
        let s_only = model.score(&b, &x, &t).unwrap();
        assert_eq!(b.to_vec(&s).unwrap(), b.to_vec(&s_only).unwrap());
        let (s, vjp) = (b.to_vec(&s).unwrap(), b.to_vec(&vjp).unwrap());
        for (n, tn) in t.iter().enumerate() {
            let xn: Vec<f64> = flat[n * d..(n + 1) * d]
                .iter()
                .map(|&v| f64::from(v))
                .collect();
            let vn: Vec<f64> = vflat[n * d..(n + 1) * d]
                .iter()
                .map(|&v| f64::from(v))
                .collect();
            let (hs, hv) = model
                .marginal_at(*tn)
                .unwrap()
                .score_and_hvp(&xn, Some(&vn));
            for j in 0..d {
                assert!((f64::from(s[n * d + j]) - hs[j]).abs() <= 1e-6 * (1.0 + hs[j].abs()));
                assert!((f64::from(vjp[n * d + j]) - hv[j]).abs() <= 1e-6 * (1.0 + hv[j].abs()));
            }
        }
        assert!(model.log_prob(&pts[0], 0.5).unwrap().is_finite());
        assert_eq!(model.sde().kind(), sde.kind());
    }
}

/// Mixture sampling: the sample mean and covariance match the closed forms.
#[test]
fn mixture_samples_have_mixture_moments() {
    let data = mixture();
    let n = 60_000;
    let d = data.dim();
    let xs = data.sample(n, &mut NoiseRng::new(1));
    let (mean, cov) = (data.mean(), data.covariance());
    for j in 0..d {
        let (m, _, _) = mean_var((0..n).map(|i| f64::from(xs[i * d + j])));
        assert_within_se(
            &format!("mean[{j}]"),
            m,
            mean[j],
            (cov[j * d + j] / n as f64).sqrt(),
            5.0,
        );
    }
    // Off-diagonal covariance between dims 0 and 3 (non-zero through the means),
    // with the standard error of the product estimated from the samples.
    let (m0, m3) = (mean[0], mean[3]);
    let prods: Vec<f64> = (0..n)
        .map(|i| (f64::from(xs[i * d]) - m0) * (f64::from(xs[i * d + 3]) - m3))
        .collect();
    let (c03, pv, _) = mean_var(prods.iter().copied());
    let se = (pv / n as f64).sqrt();
    assert_within_se("cov[0,3]", c03, cov[3], se, 5.0);
    assert!(
        cov[3].abs() > 5.0 * se,
        "the check must be able to see the covariance"
    );
}

/// Sanity for the Gaussian special case: the score at `p_t` of `N(mu, v)` is
/// `-(x - m mu) / (m^2 v + s^2)` for every SDE.
#[test]
fn gaussian_score_closed_form() {
    for sde in reference_sdes() {
        let g = GaussianMixture::gaussian(DiagGaussian::isotropic(vec![0.5, -0.5], 0.2).unwrap());
        let model = AnalyticScore::new(g, sde.clone());
        for t in [0.1, 0.6] {
            let k = sde.marginal(t);
            let var = k.mean_coef.powi(2) * 0.2 + k.std.powi(2);
            let x = [1.0, 1.0];
            let s = model.marginal_at(t).unwrap().score(&x);
            assert!((s[0] - -(1.0 - k.mean_coef * 0.5) / var).abs() < 1e-12);
            assert!((s[1] - -(1.0 + k.mean_coef * 0.5) / var).abs() < 1e-12);
        }
    }
}
