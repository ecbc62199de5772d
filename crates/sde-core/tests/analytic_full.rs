//! Full-covariance Gaussians and mixtures (`sde_core::analytic::{FullGaussian,
//! FullMixture, FullMixtureScore}`): agreement with the diagonal types,
//! scores and Hessian-vector products against finite differences, class
//! posteriors, hand-computed perturbed / conditional / transformed laws,
//! `p(x_u | x_k) = p(x) / p(x_k)` for mixtures, sample moments, input
//! validation, and the `ScoreModel` implementation against the host maths.
#![allow(clippy::unwrap_used)] // tests fail by panicking

mod common;

use common::{name, reference_sdes};
use sde_core::analytic::{
    AnalyticScore, DiagGaussian, FullGaussian, FullMixture, FullMixtureScore, GaussianMixture,
};
use sde_core::{Backend, CpuBackend, Error, NoiseRng, ScoreModel, ScoreVjp, Sde, Shape};

/// Correlation matrix entries are chosen so every leading minor is clearly
/// positive (det = 0.336).
const COV3: [f64; 9] = [2.0, 0.6, -0.4, 0.6, 1.0, 0.3, -0.4, 0.3, 0.5];
const MEAN3: [f64; 3] = [1.0, -0.5, 2.0];

fn corr3() -> FullGaussian {
    FullGaussian::new(MEAN3.to_vec(), COV3.to_vec()).unwrap()
}

fn mix3() -> FullMixture {
    FullMixture::new(
        vec![0.2, 0.5, 0.3],
        vec![
            corr3(),
            FullGaussian::new(
                vec![-1.5, 0.5, 0.0],
                vec![1.0, -0.7, 0.2, -0.7, 1.5, 0.0, 0.2, 0.0, 0.8],
            )
            .unwrap(),
            // 0.3 I + u u^T with u = (0.5, 0.5, -0.5).
            FullGaussian::new(
                vec![0.0, 1.0, -1.0],
                vec![0.55, 0.25, -0.25, 0.25, 0.55, -0.25, -0.25, -0.25, 0.55],
            )
            .unwrap(),
        ],
    )
    .unwrap()
}

fn points() -> Vec<Vec<f64>> {
    vec![
        vec![0.3, -1.0, 0.2],
        vec![-1.0, 0.4, -0.3],
        vec![2.0, 2.0, -2.0],
        vec![0.0, 0.9, -0.8],
    ]
}

/// The clean mixture and its perturbed marginals at a few times of every
/// reference SDE, with labels for messages.
fn mixtures() -> Vec<(String, FullMixture)> {
    let mut out = vec![("data".to_string(), mix3())];
    for sde in reference_sdes() {
        let model = FullMixtureScore::new(mix3(), sde.clone());
        for t in [0.0, 0.01, 0.3, 1.0] {
            out.push((
                format!("{} t={t}", name(&sde)),
                model.marginal_at(t).unwrap(),
            ));
        }
    }
    out
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
}

/// Moves `x` by `h` along `dir`.
fn shifted(x: &[f64], dir: &[f64], h: f64) -> Vec<f64> {
    x.iter().zip(dir).map(|(a, b)| a + h * b).collect()
}

fn unit(d: usize, j: usize) -> Vec<f64> {
    (0..d).map(|i| if i == j { 1.0 } else { 0.0 }).collect()
}

fn diag_mixture() -> GaussianMixture {
    GaussianMixture::new(
        vec![0.3, 0.7],
        vec![
            DiagGaussian::new(vec![1.0, -2.0, 0.5], vec![0.3, 0.1, 1.0]).unwrap(),
            DiagGaussian::new(vec![-1.0, 0.5, 0.0], vec![2.0, 0.4, 0.05]).unwrap(),
        ],
    )
    .unwrap()
}

fn as_full(m: &GaussianMixture) -> FullMixture {
    let comps = m.components().iter().map(FullGaussian::from).collect();
    FullMixture::new(m.weights().to_vec(), comps).unwrap()
}

/// A diagonal covariance written out in full gives the diagonal Gaussian's
/// density and score to rounding (1e-12), both through `new` and `From`; a
/// mixture of them has `GaussianMixture`'s density, score and HVP, and the
/// same seed draws the very same samples.
#[test]
fn diagonal_covariance_agrees_with_diag_types() {
    let (mean, var) = (vec![0.5, -1.0, 2.0], vec![0.3, 1.7, 0.05]);
    let diag = DiagGaussian::new(mean.clone(), var.clone()).unwrap();
    let mut cov = vec![0.0; 9];
    (0..3).for_each(|i| cov[i * 3 + i] = var[i]);
    for full in [
        FullGaussian::new(mean, cov).unwrap(),
        FullGaussian::from(&diag),
    ] {
        for x in points() {
            assert!(close(full.log_prob(&x).unwrap(), diag.log_prob(&x), 1e-12));
            let s = full.score(&x).unwrap();
            let want: Vec<f64> = (0..3).map(|j| -(x[j] - diag.mean()[j]) / var[j]).collect();
            (0..3).for_each(|j| assert!(close(s[j], want[j], 1e-12), "{s:?} vs {want:?}"));
        }
    }
    let (dm, fm) = (diag_mixture(), as_full(&diag_mixture()));
    let v = [0.4, -1.2, 0.7];
    for x in points() {
        assert!(close(fm.log_prob(&x).unwrap(), dm.log_prob(&x), 1e-12));
        let (fs, fh) = fm.score_and_hvp(&x, Some(&v)).unwrap();
        let (ds, dh) = dm.score_and_hvp(&x, Some(&v));
        for j in 0..3 {
            assert!(close(fs[j], ds[j], 1e-12) && close(fh[j], dh[j], 1e-12));
        }
    }
    let (a, b) = (
        fm.sample(500, &mut NoiseRng::new(4)).unwrap(),
        dm.sample(500, &mut NoiseRng::new(4)),
    );
    assert_eq!(a, b);
}

/// The score is the gradient of the log-density: central differences with
/// `h = 1e-5` have truncation error `h^2 |f'''| / 6 ~ 1e-10` and rounding
/// error `eps |log p| / h ~ 1e-10` here, so 1e-6 (relative) is generous yet
/// far below any real discrepancy.
#[test]
fn score_is_gradient_of_log_density() {
    let h = 1e-5;
    let g = FullMixture::gaussian(corr3());
    for (label, p) in mixtures().into_iter().chain([("gaussian".into(), g)]) {
        for x in points() {
            let score = p.score(&x).unwrap();
            for (j, sj) in score.iter().enumerate() {
                let e = unit(3, j);
                let fd = (p.log_prob(&shifted(&x, &e, h)).unwrap()
                    - p.log_prob(&shifted(&x, &e, -h)).unwrap())
                    / (2.0 * h);
                assert!(
                    close(fd, *sj, 1e-6),
                    "{label} dim {j}: score {sj} vs fd {fd}"
                );
            }
        }
    }
}

/// `H v` equals the central difference of the score along `v` (same error
/// budget as above, one derivative lower).
#[test]
fn hessian_vector_product_matches_finite_differences() {
    let h = 1e-5;
    let v = [0.7, -0.2, 1.1];
    for (label, p) in mixtures() {
        for x in points() {
            let (s, hv) = p.score_and_hvp(&x, Some(&v)).unwrap();
            let (s_only, empty) = p.score_and_hvp(&x, None).unwrap();
            assert_eq!((s, empty.len()), (s_only, 0));
            let sp = p.score(&shifted(&x, &v, h)).unwrap();
            let sm = p.score(&shifted(&x, &v, -h)).unwrap();
            for j in 0..3 {
                let fd = (sp[j] - sm[j]) / (2.0 * h);
                assert!(
                    close(fd, hv[j], 1e-6),
                    "{label} dim {j}: Hv {} vs fd {fd}",
                    hv[j]
                );
            }
        }
    }
}

/// `p(k | x)` is Bayes' rule over the components (checked against an explicit
/// ratio), sums to 1, and its gradient `score_k - score` matches central
/// differences of `log p(k | x)`.
#[test]
fn class_posterior_is_normalised_and_its_gradient_matches_finite_differences() {
    let h = 1e-5;
    for (label, p) in mixtures() {
        for x in points() {
            let lp = p.class_log_posterior(&x).unwrap();
            let total: f64 = lp.iter().map(|l| l.exp()).sum();
            assert!((total - 1.0).abs() < 1e-12, "{label}: sum {total}");
            let joint: Vec<f64> = p
                .weights()
                .iter()
                .zip(p.components())
                .map(|(w, c)| w * c.log_prob(&x).unwrap().exp())
                .collect();
            let evidence: f64 = joint.iter().sum();
            for (k, jk) in joint.iter().enumerate() {
                assert!(
                    close(lp[k].exp(), jk / evidence, 1e-12),
                    "{label} class {k}"
                );
                let grad = p.class_log_posterior_grad(&x, k).unwrap();
                for (j, gj) in grad.iter().enumerate() {
                    let e = unit(3, j);
                    let fd = (p.class_log_posterior(&shifted(&x, &e, h)).unwrap()[k]
                        - p.class_log_posterior(&shifted(&x, &e, -h)).unwrap()[k])
                        / (2.0 * h);
                    assert!(
                        close(fd, *gj, 1e-6),
                        "{label} class {k} dim {j}: {gj} vs {fd}"
                    );
                }
            }
        }
    }
}

/// `N(mu, S)` perturbed with `m = 0.6`, `s = 0.8`, by hand:
/// mean `(0.6, -0.6)`, cov `0.36 S + 0.64 I = [[1.36, 0.18], [0.18, 1.0]]`;
/// and `FullMixtureScore::marginal_at` applies each SDE's `(m(t), s(t))`.
#[test]
fn perturbed_covariance_by_hand() {
    let g = FullGaussian::new(vec![1.0, -1.0], vec![2.0, 0.5, 0.5, 1.0]).unwrap();
    let p = g.perturbed(0.6, 0.8).unwrap();
    let (mean, cov) = ([0.6, -0.6], [1.36, 0.18, 0.18, 1.0]);
    (0..2).for_each(|i| assert!((p.mean()[i] - mean[i]).abs() < 1e-15));
    (0..4).for_each(|i| assert!((p.cov()[i] - cov[i]).abs() < 1e-15, "{:?}", p.cov()));
    for sde in reference_sdes() {
        let model = FullMixtureScore::new(FullMixture::gaussian(g.clone()), sde.clone());
        let t = 0.4;
        let k = sde.marginal(t);
        let pt = model.marginal_at(t).unwrap().components()[0].clone();
        let (m2, s2) = (k.mean_coef * k.mean_coef, k.std * k.std);
        let want = [2.0 * m2 + s2, 0.5 * m2, 0.5 * m2, m2 + s2];
        (0..4).for_each(|i| assert!(close(pt.cov()[i], want[i], 1e-14), "{}", name(&sde)));
        let x = [0.3, 0.1];
        let direct = pt.log_prob(&x).unwrap();
        assert!((model.log_prob(&x, t).unwrap() - direct).abs() < 1e-14);
    }
}

fn assert_gaussian(g: &FullGaussian, mean: &[f64], cov: &[f64]) {
    assert_eq!(g.dim(), mean.len());
    for (a, b) in g.mean().iter().zip(mean) {
        assert!((a - b).abs() < 1e-14, "mean {:?} vs {mean:?}", g.mean());
    }
    for (a, b) in g.cov().iter().zip(cov) {
        assert!((a - b).abs() < 1e-14, "cov {:?} vs {cov:?}", g.cov());
    }
}

/// Conditionals by hand. 2-D, `S = [[2, .5], [.5, 1]]`, `mu = (1, -1)`:
/// `x_1 = 0.5` gives `N(1 + .5 (0.5 + 1), 2 - .25) = N(1.75, 1.75)`; `x_0 = 2`
/// gives `N(-1 + .25 (2 - 1), 1 - .125) = N(-0.75, 0.875)`. 3-D (`COV3`):
/// `x_1 = 0.5` gives mean `(1 + .6, 2 + .3)`, cov `[[1.64, -.58], [-.58, .41]]`;
/// `(x_0, x_2) = (2, 1)` gives `S_uk S_kk^{-1} = (.5, 1)`, so
/// `N(-.5 + .5 - 1, 1 - (.5 .6 + 1 .3)) = N(-1, 0.4)`.
#[test]
fn conditional_matches_hand_computation() {
    let g = FullGaussian::new(vec![1.0, -1.0], vec![2.0, 0.5, 0.5, 1.0]).unwrap();
    assert_gaussian(
        &g.conditional(&[false, true], &[0.5]).unwrap(),
        &[1.75],
        &[1.75],
    );
    assert_gaussian(
        &g.conditional(&[true, false], &[2.0]).unwrap(),
        &[-0.75],
        &[0.875],
    );
    let g = corr3();
    assert_gaussian(
        &g.conditional(&[false, true, false], &[0.5]).unwrap(),
        &[1.6, 2.3],
        &[1.64, -0.58, -0.58, 0.41],
    );
    assert_gaussian(
        &g.conditional(&[true, false, true], &[2.0, 1.0]).unwrap(),
        &[-1.0],
        &[0.4],
    );
    // Nothing known: the Gaussian itself. Everything known: an error.
    assert_eq!(g.conditional(&[false; 3], &[]).unwrap(), g);
    assert!(g.conditional(&[true; 3], &[0.0; 3]).is_err());
}

/// The marginal of the known coordinates, as a mixture of selected components.
fn marginal(p: &FullMixture, known: &[bool]) -> FullMixture {
    let idx: Vec<usize> = (0..known.len()).filter(|&i| known[i]).collect();
    let sel: Vec<f64> = idx.iter().flat_map(|&i| unit(known.len(), i)).collect();
    let comps = p
        .components()
        .iter()
        .map(|c| c.linear_transform(&sel, idx.len()).unwrap())
        .collect();
    FullMixture::new(p.weights().to_vec(), comps).unwrap()
}

/// For mixtures (clean and perturbed), `log p(x_u | x_k)` from `conditional`
/// equals `log p(x) - log p(x_k)` computed independently (the marginal of the
/// known coordinates through `linear_transform` with a selection matrix), to 1e-10.
#[test]
fn mixture_conditional_is_joint_over_marginal() {
    for (label, p) in mixtures() {
        for known in [
            [true, false, true],
            [false, true, false],
            [true, true, false],
        ] {
            let pk = marginal(&p, &known);
            for x in points() {
                let xk: Vec<f64> = (0..3).filter(|&i| known[i]).map(|i| x[i]).collect();
                let cond = p.conditional(&known, &xk).unwrap();
                let total: f64 = cond.weights().iter().sum();
                assert!((total - 1.0).abs() < 1e-12);
                let lk = pk.log_prob(&xk).unwrap();
                for y in points() {
                    let mut full = x.clone();
                    (0..3).filter(|&i| !known[i]).for_each(|i| full[i] = y[i]);
                    let xu: Vec<f64> = (0..3).filter(|&i| !known[i]).map(|i| y[i]).collect();
                    let want = p.log_prob(&full).unwrap() - lk;
                    let got = cond.log_prob(&xu).unwrap();
                    assert!(
                        (got - want).abs() < 1e-10,
                        "{label} {known:?}: {got} vs {want}"
                    );
                }
            }
        }
    }
}

/// `y = A x` by hand: `A = [[1, 1], [1, -1]]` maps `N((1, -1), [[2, .5], [.5, 1]])`
/// to `N((0, 2), [[4, 1], [1, 2]])`; a one-row `A` gives the marginal of the
/// sum; an orthonormal `A` (a 3-D rotation, as colourisation uses) keeps
/// densities: `log p_y(A x) = log p_x(x)`.
#[test]
fn linear_transform_matches_hand_computation() {
    let g = FullGaussian::new(vec![1.0, -1.0], vec![2.0, 0.5, 0.5, 1.0]).unwrap();
    let y = g.linear_transform(&[1.0, 1.0, 1.0, -1.0], 2).unwrap();
    assert_gaussian(&y, &[0.0, 2.0], &[4.0, 1.0, 1.0, 2.0]);
    let y = g.linear_transform(&[1.0, 1.0], 1).unwrap();
    assert_gaussian(&y, &[0.0], &[4.0]);
    // Rows: (1,1,1)/sqrt3, (1,-1,0)/sqrt2, (1,1,-2)/sqrt6.
    let (r3, r2, r6) = (3f64.sqrt(), 2f64.sqrt(), 6f64.sqrt());
    let a = [
        1.0 / r3,
        1.0 / r3,
        1.0 / r3,
        1.0 / r2,
        -1.0 / r2,
        0.0,
        1.0 / r6,
        1.0 / r6,
        -2.0 / r6,
    ];
    let g = corr3();
    let rotated = g.linear_transform(&a, 3).unwrap();
    assert!((rotated.log_det() - g.log_det()).abs() < 1e-12);
    for x in points() {
        let ax: Vec<f64> = (0..3)
            .map(|i| (0..3).map(|j| a[i * 3 + j] * x[j]).sum())
            .collect();
        let (lx, ly) = (g.log_prob(&x).unwrap(), rotated.log_prob(&ax).unwrap());
        assert!((lx - ly).abs() < 1e-12, "{lx} vs {ly}");
    }
}

/// The largest `|estimate - truth| / SE` over the sample mean and the sample
/// covariance (taken about the true mean) of `xs` (`n x 3`), against
/// `(mean, cov)`. For a Gaussian, `Var[(x_i - mu_i)(x_j - mu_j)] = S_ii S_jj
/// + S_ij^2`, so that product's SE is `sqrt((S_ii S_jj + S_ij^2) / n)`; a
/// mean's is `sqrt(S_ii / n)`.
fn max_z(xs: &[f32], mean: &[f64], cov: &[f64]) -> f64 {
    let d = 3;
    let n = xs.len() / d;
    let x = |i: usize, j: usize| f64::from(xs[i * d + j]);
    let mut worst: f64 = 0.0;
    for a in 0..d {
        let m = (0..n).map(|i| x(i, a)).sum::<f64>() / n as f64;
        worst = worst.max((m - mean[a]).abs() / (cov[a * d + a] / n as f64).sqrt());
        for b in 0..=a {
            let c = (0..n)
                .map(|i| (x(i, a) - mean[a]) * (x(i, b) - mean[b]))
                .sum::<f64>()
                / n as f64;
            let var = cov[a * d + a] * cov[b * d + b] + cov[a * d + b].powi(2);
            worst = worst.max((c - cov[a * d + b]).abs() / (var / n as f64).sqrt());
        }
    }
    worst
}

/// 20000 draws of the correlated 3-D Gaussian: all 3 means and 6 covariance
/// entries lie within 5 standard errors of the truth (each deviation is
/// ~N(0, 1) in SE units, so a false failure has probability < 9 x 6e-7).
/// The same check rejects a wrong covariance (`S_01 = 0.45` instead of 0.6:
/// 0.15 / sqrt((2 + 0.36) / 20000) = 13.8 SE away). Labelled mixture draws
/// follow the weights and their components.
#[test]
fn samples_match_moments_and_a_wrong_covariance_is_detected() {
    let n = 20_000;
    let xs = corr3().sample(n, &mut NoiseRng::new(7)).unwrap();
    assert_eq!(xs.len(), n * 3);
    let z = max_z(&xs, &MEAN3, &COV3);
    assert!(z <= 5.0, "true moments {z} SE away");
    let mut wrong = COV3;
    (wrong[1], wrong[3]) = (0.45, 0.45);
    let z = max_z(&xs, &MEAN3, &wrong);
    assert!(z > 5.0, "wrong covariance only {z} SE away");

    let mix = mix3();
    let (xs, labels) = mix.sample_labelled(n, &mut NoiseRng::new(8)).unwrap();
    assert_eq!(xs, mix.sample(n, &mut NoiseRng::new(8)).unwrap());
    for (k, (w, c)) in mix.weights().iter().zip(mix.components()).enumerate() {
        let mine: Vec<f32> = labels
            .iter()
            .enumerate()
            .filter(|(_, &l)| l == k)
            .flat_map(|(i, _)| xs[i * 3..i * 3 + 3].to_vec())
            .collect();
        let frac = (mine.len() / 3) as f64 / n as f64;
        assert!((frac - w).abs() <= 5.0 * (w * (1.0 - w) / n as f64).sqrt());
        let z = max_z(&mine, c.mean(), c.cov());
        assert!(z <= 5.0, "component {k}: {z} SE away");
    }
}

fn is_invalid<T: std::fmt::Debug>(r: sde_core::Result<T>) -> bool {
    matches!(r, Err(Error::InvalidParameter { .. }))
}

/// Bad inputs are `InvalidParameter` errors (shape and time errors of the
/// score model keep their own kinds), never panics; an asymmetry within
/// 1e-12 relative is accepted and symmetrised.
#[test]
fn invalid_inputs_are_errors_not_panics() {
    let new = |m: &[f64], c: &[f64]| FullGaussian::new(m.to_vec(), c.to_vec());
    let nan = f64::NAN;
    assert!(is_invalid(new(&[0.0, 0.0], &[1.0, 0.5, 0.4, 1.0]))); // not symmetric
    assert!(is_invalid(new(&[0.0, 0.0], &[1.0, 2.0, 2.0, 1.0]))); // indefinite
    assert!(is_invalid(new(&[0.0, 0.0], &[1.0, 1.0, 1.0, 1.0]))); // singular
    assert!(is_invalid(new(&[0.0, 0.0], &[-1.0, 0.0, 0.0, 1.0])));
    assert!(is_invalid(new(&[0.0, 0.0], &[1.0, 0.0, 1.0]))); // wrong size
    assert!(is_invalid(new(&[], &[])));
    assert!(is_invalid(new(&[nan, 0.0], &[1.0, 0.0, 0.0, 1.0])));
    assert!(is_invalid(new(&[0.0, 0.0], &[1.0, nan, nan, 1.0])));
    assert!(is_invalid(new(&[0.0], &[f64::INFINITY])));
    let g = new(&[0.0, 0.0], &[1.0, 0.5, 0.5 * (1.0 + 1e-14), 1.0]).unwrap();
    assert_eq!(g.cov()[1], g.cov()[2]);

    let g = corr3();
    assert!(is_invalid(g.log_prob(&[0.0, 0.0])));
    assert!(is_invalid(g.score(&[0.0, nan, 0.0])));
    assert!(is_invalid(g.perturbed(0.0, 0.0)));
    assert!(is_invalid(g.perturbed(nan, 1.0)));
    assert!(is_invalid(g.conditional(&[true, false], &[0.0])));
    assert!(is_invalid(
        g.conditional(&[true, false, false], &[0.0, 1.0])
    ));
    assert!(is_invalid(g.conditional(&[true, false, false], &[nan])));
    assert!(is_invalid(g.linear_transform(&[1.0, 0.0], 1)));
    assert!(is_invalid(g.linear_transform(&[], 0)));
    assert!(is_invalid(
        g.linear_transform(&[1.0, 1.0, 0.0, 2.0, 2.0, 0.0], 2)
    )); // rank 1
    assert!(is_invalid(g.linear_transform(&[nan, 0.0, 0.0], 1)));
    assert!(is_invalid(g.sample(usize::MAX, &mut NoiseRng::new(0))));

    let two = new(&[0.0, 0.0], &[1.0, 0.0, 0.0, 1.0]).unwrap();
    assert!(is_invalid(FullMixture::new(vec![], vec![])));
    assert!(is_invalid(FullMixture::new(
        vec![1.0],
        vec![g.clone(), g.clone()]
    )));
    assert!(is_invalid(FullMixture::new(
        vec![1.0, 0.0],
        vec![g.clone(), g.clone()]
    )));
    assert!(is_invalid(FullMixture::new(
        vec![1.0, nan],
        vec![g.clone(), g.clone()]
    )));
    assert!(is_invalid(FullMixture::new(
        vec![1.0, 1.0],
        vec![g.clone(), two]
    )));
    let mix = mix3();
    assert!(is_invalid(mix.class_log_posterior_grad(&[0.0; 3], 3)));
    assert!(is_invalid(mix.score_and_hvp(&[0.0; 3], Some(&[1.0]))));
    assert!(is_invalid(mix.class_log_posterior(&[nan; 3])));
    assert!(is_invalid(mix.conditional(&[true; 3], &[0.0; 3])));
    assert!(is_invalid(mix.perturbed(0.0, 0.0)));

    let b = CpuBackend;
    let sde = reference_sdes().remove(1);
    let model = FullMixtureScore::new(mix, sde);
    let x2 = b
        .tensor(vec![0.0; 4], &Shape::new([2, 2]).unwrap())
        .unwrap();
    assert!(is_invalid(model.score(&b, &x2, &[0.5, 0.5])));
    let shape = Shape::new([2, 3]).unwrap();
    let x = b.tensor(vec![0.0; 6], &shape).unwrap();
    let bad = b
        .tensor(vec![0.0, f32::NAN, 0.0, 0.0, 0.0, 0.0], &shape)
        .unwrap();
    let err = |r: sde_core::Result<_>| r.map(|_: <CpuBackend as Backend>::Tensor| ()).unwrap_err();
    assert!(matches!(
        err(model.score(&b, &x, &[0.5, 1.5])),
        Error::TimeOutOfRange { .. }
    ));
    assert!(matches!(
        err(model.score(&b, &x, &[0.5])),
        Error::BatchMismatch { .. }
    ));
    assert!(matches!(
        err(model.score(&b, &bad, &[0.5, 0.5])),
        Error::NonFinite { .. }
    ));
    assert!(matches!(
        model.score_and_vjp(&b, &x, &[0.5, 0.5], &x2),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        model.log_prob(&[0.0; 3], -0.1),
        Err(Error::TimeOutOfRange { .. })
    ));
    assert!(is_invalid(model.log_prob(&[0.0; 2], 0.5)));
}

/// `FullMixtureScore` on the CPU backend equals the host maths of
/// `marginal_at(t)` to f32 rounding (relative 1e-6 >> 2^-24), with repeated
/// times in the batch (the marginal is cached between equal times); its VJP
/// equals the Hessian-vector product, and `score` equals `score_and_vjp`'s score.
#[test]
fn score_model_matches_host_maths() {
    let b = CpuBackend;
    let pts = points();
    let d = 3;
    let shape = Shape::new([pts.len(), d]).unwrap();
    let flat: Vec<f32> = pts.iter().flatten().map(|&v| v as f32).collect();
    let x = b.tensor(flat.clone(), &shape).unwrap();
    let vflat: Vec<f32> = (0..flat.len()).map(|i| (i as f32 * 0.37).sin()).collect();
    let v = b.tensor(vflat.clone(), &shape).unwrap();
    let t = [0.05, 0.05, 0.5, 0.95];
    let to64 = |s: &[f32]| -> Vec<f64> { s.iter().map(|&v| f64::from(v)).collect() };
    for sde in reference_sdes() {
        let model = FullMixtureScore::new(mix3(), sde.clone());
        let (s, vjp) = model.score_and_vjp(&b, &x, &t, &v).unwrap();
        let s_only = model.score(&b, &x, &t).unwrap();
        assert_eq!(b.to_vec(&s).unwrap(), b.to_vec(&s_only).unwrap());
        let (s, vjp) = (b.to_vec(&s).unwrap(), b.to_vec(&vjp).unwrap());
        for (n, tn) in t.iter().enumerate() {
            let r = n * d..(n + 1) * d;
            let (hs, hv) = model
                .marginal_at(*tn)
                .unwrap()
                .score_and_hvp(&to64(&flat[r.clone()]), Some(&to64(&vflat[r])))
                .unwrap();
            for j in 0..d {
                assert!(
                    close(f64::from(s[n * d + j]), hs[j], 1e-6),
                    "{}",
                    name(&sde)
                );
                assert!(
                    close(f64::from(vjp[n * d + j]), hv[j], 1e-6),
                    "{}",
                    name(&sde)
                );
            }
        }
        assert_eq!(model.sde().kind(), sde.kind());
        assert_eq!(model.data(), &mix3());
    }
}

/// With diagonal components, `FullMixtureScore` and `AnalyticScore` give the
/// same score and VJP tensors (to f32 rounding) for every reference SDE.
#[test]
fn diagonal_full_score_model_matches_analytic_score() {
    let b = CpuBackend;
    let shape = Shape::new([4, 3]).unwrap();
    let x = b
        .tensor(
            points().concat().iter().map(|&v| v as f32).collect(),
            &shape,
        )
        .unwrap();
    let v = b.tensor([0.5, -1.0, 0.25].repeat(4), &shape).unwrap();
    let t = [0.0, 0.2, 0.2, 1.0];
    for sde in reference_sdes() {
        let full = FullMixtureScore::new(as_full(&diag_mixture()), sde.clone());
        let diag = AnalyticScore::new(diag_mixture(), sde.clone());
        let (fs, fv) = full.score_and_vjp(&b, &x, &t, &v).unwrap();
        let (ds, dv) = diag.score_and_vjp(&b, &x, &t, &v).unwrap();
        for (f, d) in [(fs, ds), (fv, dv)] {
            let (f, d) = (b.to_vec(&f).unwrap(), b.to_vec(&d).unwrap());
            for (a, b) in f.iter().zip(&d) {
                assert!(close(f64::from(*a), f64::from(*b), 1e-6), "{}", name(&sde));
            }
        }
    }
}
