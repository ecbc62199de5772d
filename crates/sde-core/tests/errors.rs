//! Bad arguments give typed errors with the offending value, never panics.
#![allow(clippy::unwrap_used)] // tests fail by panicking

use sde_core::analytic::{AnalyticScore, DiagGaussian, GaussianMixture};
use sde_core::{
    Backend, CpuBackend, Error, NoiseRng, ScoreModel, Sde, SdeConfig, SdeExt, Shape, SubVpSde,
    VeSde, VpSde,
};

#[test]
fn invalid_schedules() {
    for (smin, smax) in [
        (1.0, 0.5),
        (1.0, 1.0),
        (0.0, 1.0),
        (-0.1, 1.0),
        (0.01, f64::INFINITY),
        (f64::NAN, 1.0),
    ] {
        assert!(
            matches!(
                VeSde::new(smin, smax, 10),
                Err(Error::InvalidParameter { .. })
            ),
            "{smin} {smax}"
        );
    }
    assert!(matches!(
        VeSde::new(0.01, 50.0, 0),
        Err(Error::InvalidParameter {
            name: "num_steps",
            ..
        })
    ));
    for (bmin, bmax) in [(-0.1, 20.0), (20.0, 0.1), (1.0, 1.0), (0.1, f64::NAN)] {
        assert!(matches!(
            VpSde::new(bmin, bmax, 10),
            Err(Error::InvalidParameter { .. })
        ));
        assert!(matches!(
            SubVpSde::new(bmin, bmax, 10),
            Err(Error::InvalidParameter { .. })
        ));
    }
    // The DDPM chain needs beta_max / N < 1: N = 20 makes the last alpha 0,
    // N = 10 makes it negative (sqrt of a negative number). The SDEs still
    // build (the continuous samplers never use the chain); the chain's users
    // check it.
    for n in [10, 20] {
        let vp = VpSde::new(0.1, 20.0, n).unwrap();
        let sub = SubVpSde::new(0.1, 20.0, n).unwrap();
        for err in [vp.check_discrete_chain(), sub.check_discrete_chain()] {
            assert!(matches!(
                err,
                Err(Error::InvalidParameter {
                    name: "num_steps",
                    ..
                })
            ));
        }
    }
    assert!(VeSde::new(0.01, 50.0, 2)
        .unwrap()
        .check_discrete_chain()
        .is_ok());
    assert!(VpSde::new(0.1, 20.0, 21)
        .unwrap()
        .check_discrete_chain()
        .is_ok());
    assert!(SubVpSde::new(0.1, 20.0, 21)
        .unwrap()
        .check_discrete_chain()
        .is_ok());
    assert!(VpSde::new(0.1, 20.0, 21).is_ok() && SubVpSde::new(0.1, 20.0, 21).is_ok());
    // Sizes are bounded before the schedule tables are allocated.
    let huge = sde_core::sde::MAX_STEPS + 1;
    assert!(VeSde::new(0.01, 50.0, huge).is_err() && VpSde::new(0.1, 20.0, huge).is_err());
    assert!(sde_core::SdeConfig::default_for(sde_core::SdeKind::Cosine)
        .with_num_steps(usize::MAX)
        .build()
        .is_err());
    let msg = VeSde::new(1.0, 0.5, 10).unwrap_err().to_string();
    assert!(msg.contains("sigma_max") && msg.contains("0.5"), "{msg}");
}

#[test]
fn times_outside_range() {
    let b = CpuBackend;
    let sde = VpSde::new(0.1, 20.0, 100).unwrap();
    let x = b.zeros(&Shape::new([2, 3]).unwrap()).unwrap();
    for bad in [-1e-9, 1.0 + 1e-9, f64::NAN, f64::INFINITY] {
        assert!(
            matches!(
                sde.drift(&b, &x, &[0.5, bad]),
                Err(Error::TimeOutOfRange { .. })
            ),
            "{bad}"
        );
        assert!(matches!(
            sde.check_time(bad),
            Err(Error::TimeOutOfRange { .. })
        ));
    }
    assert!(matches!(
        sde.drift(&b, &x, &[0.5]),
        Err(Error::BatchMismatch {
            expected: 2,
            got: 1,
            ..
        })
    ));
    assert!(sde.check_time(0.0).is_ok() && sde.check_time(1.0).is_ok());
}

#[test]
fn analytic_distribution_errors() {
    assert!(DiagGaussian::new(vec![0.0, 1.0], vec![1.0]).is_err());
    assert!(DiagGaussian::new(vec![0.0], vec![0.0]).is_err());
    assert!(DiagGaussian::new(vec![f64::NAN], vec![1.0]).is_err());
    assert!(DiagGaussian::new(vec![], vec![]).is_err());
    let g1 = DiagGaussian::isotropic(vec![0.0], 1.0).unwrap();
    let g2 = DiagGaussian::isotropic(vec![0.0, 1.0], 1.0).unwrap();
    assert!(GaussianMixture::new(vec![1.0, 1.0], vec![g1.clone(), g2.clone()]).is_err());
    assert!(GaussianMixture::new(vec![1.0], vec![g1.clone(), g1.clone()]).is_err());
    assert!(GaussianMixture::new(vec![1.0, -1.0], vec![g1.clone(), g1.clone()]).is_err());
    assert!(GaussianMixture::new(vec![], vec![]).is_err());

    let b = CpuBackend;
    let model = AnalyticScore::new(
        GaussianMixture::gaussian(g2),
        VpSde::new(0.1, 20.0, 100).unwrap(),
    );
    let x3 = b.zeros(&Shape::new([1, 3]).unwrap()).unwrap();
    assert!(matches!(
        model.score(&b, &x3, &[0.5]),
        Err(Error::InvalidParameter { name: "x", .. })
    ));
    let x2 = b
        .tensor(vec![0.0, f32::NAN], &Shape::new([1, 2]).unwrap())
        .unwrap();
    assert!(matches!(
        model.score(&b, &x2, &[0.5]),
        Err(Error::NonFinite { .. })
    ));
    let ok = b.zeros(&Shape::new([1, 2]).unwrap()).unwrap();
    assert!(matches!(
        model.score(&b, &ok, &[2.0]),
        Err(Error::TimeOutOfRange { .. })
    ));
    assert!(model.log_prob(&[0.0], 0.5).is_err());
}

#[test]
fn config_round_trip_and_rejections() {
    let text = "kind = \"ve\"\nsigma_min = 0.01\nsigma_max = 50.0\nnum_steps = 1000\n";
    let cfg: SdeConfig = toml::from_str(text).unwrap();
    assert_eq!(cfg, SdeConfig::default_for(sde_core::SdeKind::Ve));
    let back: SdeConfig = toml::from_str(&toml::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(back, cfg);
    assert_eq!(cfg.build().unwrap().prior_std(), 50.0);
    // Unknown fields and kinds are rejected; invalid values fail at build().
    assert!(toml::from_str::<SdeConfig>(
        "kind = \"vp\"\nbeta_min = 0.1\nbeta_max = 20.0\nnum_steps = 10\nbeta = 1\n"
    )
    .is_err());
    assert!(toml::from_str::<SdeConfig>("kind = \"edm\"\n").is_err());
    let bad: SdeConfig =
        toml::from_str("kind = \"sub-vp\"\nbeta_min = -1.0\nbeta_max = 20.0\nnum_steps = 10\n")
            .unwrap();
    assert!(matches!(
        bad.build(),
        Err(Error::InvalidParameter {
            name: "beta_min",
            ..
        })
    ));
    assert!(Shape::new([2, 0]).is_err());
    assert!(
        toml::from_str::<Wrapper>("s = []").is_err(),
        "an empty shape must not deserialize"
    );
    assert_eq!(cfg.with_num_steps(37).build().unwrap().num_steps(), 37);
}

/// DSM at a time where the kernel has zero std (t = 0 for VP) is an error,
/// not a silent NaN.
#[test]
fn dsm_rejects_zero_kernel_std() {
    use sde_core::dsm::{dsm_loss, dsm_target, DsmBatch, Reduction, Weighting};
    let b = CpuBackend;
    let sde = VpSde::new(0.1, 20.0, 100).unwrap();
    let shape = Shape::new([2, 3]).unwrap();
    let z = b.gaussian(&shape, NoiseRng::new(1).next_key()).unwrap();
    let batch = DsmBatch {
        t: vec![0.5, 0.0],
        z: z.clone(),
        x_t: z.clone(),
    };
    assert!(matches!(
        dsm_target(&b, &sde, &batch),
        Err(Error::InvalidParameter { name: "t", .. })
    ));
    assert!(matches!(
        dsm_loss(
            &b,
            &sde,
            &z,
            &batch,
            Weighting::SigmaSquared,
            Reduction::Mean
        ),
        Err(Error::InvalidParameter { name: "t", .. })
    ));
}

#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct Wrapper {
    s: Shape,
}
