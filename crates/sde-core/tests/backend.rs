//! The CPU backend's operations against direct formulas, and its errors.
#![allow(clippy::unwrap_used)] // tests fail by panicking

use sde_core::{Backend, Coef, CpuBackend, Error, Shape};

fn t(b: &CpuBackend, v: &[f32], dims: &[usize]) -> sde_core::CpuTensor {
    b.tensor(v.to_vec(), &Shape::new(dims.to_vec()).unwrap())
        .unwrap()
}

#[test]
fn lincomb_with_scalar_and_per_sample_coefficients() {
    let b = CpuBackend;
    let x = t(&b, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
    let y = t(&b, &[-1.0, 0.5, 0.0, 2.0, 1.0, -3.0], &[2, 3]);
    let per = [2.0, -1.0];
    let out = b
        .lincomb(&[
            (Coef::Scalar(0.5), &x),
            (Coef::PerSample(&per), &y),
            (Coef::Scalar(1.0), &x),
        ])
        .unwrap();
    let want = [-0.5, 4.0, 4.5, 4.0, 6.5, 12.0];
    assert_eq!(b.to_vec(&out).unwrap(), want);
    assert_eq!(
        b.to_vec(&b.sub(&x, &y).unwrap()).unwrap(),
        [2.0, 1.5, 3.0, 2.0, 4.0, 9.0]
    );
    assert_eq!(
        b.to_vec(&b.add(&x, &y).unwrap()).unwrap(),
        [0.0, 2.5, 3.0, 6.0, 6.0, 3.0]
    );
    assert_eq!(
        b.to_vec(&b.mul(&x, &y).unwrap()).unwrap(),
        [-1.0, 1.0, 0.0, 8.0, 5.0, -18.0]
    );
    assert_eq!(
        b.to_vec(&b.scale(&x, Coef::PerSample(&per)).unwrap())
            .unwrap(),
        [2.0, 4.0, 6.0, -4.0, -5.0, -6.0]
    );
}

#[test]
fn masked_blend_full_and_broadcast() {
    let b = CpuBackend;
    let x = t(&b, &[1.0, 2.0, 3.0, 4.0], &[2, 2]);
    let y = t(&b, &[10.0, 20.0, 30.0, 40.0], &[2, 2]);
    let full = t(&b, &[1.0, 0.0, 0.0, 1.0], &[2, 2]);
    assert_eq!(
        b.to_vec(&b.masked_blend(&x, &y, &full).unwrap()).unwrap(),
        [10.0, 2.0, 3.0, 40.0]
    );
    let one = t(&b, &[0.0, 0.5], &[1, 2]);
    assert_eq!(
        b.to_vec(&b.masked_blend(&x, &y, &one).unwrap()).unwrap(),
        [1.0, 11.0, 3.0, 22.0]
    );
    let bad = t(&b, &[0.0, 0.5, 1.0], &[1, 3]);
    assert!(matches!(
        b.masked_blend(&x, &y, &bad),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
fn per_sample_reductions() {
    let b = CpuBackend;
    let x = t(&b, &[3.0, 4.0, 1.0, 0.0], &[2, 2]);
    let y = t(&b, &[1.0, 1.0, -2.0, 5.0], &[2, 2]);
    assert_eq!(b.sample_dot(&x, &y).unwrap(), [7.0, -2.0]);
    assert_eq!(b.sample_norm(&x).unwrap(), [5.0, 1.0]);
    // err / (atol + rtol max(|y0|,|y1|)), RMS over each sample.
    let err = t(&b, &[0.1, 0.2, 0.0, 0.3], &[2, 2]);
    let rms = b.sample_scaled_rms(&err, &x, &y, 0.1, 0.5).unwrap();
    let s0 = ((0.1f64 / 1.6).powi(2) + (0.2f64 / 2.1).powi(2)) / 2.0;
    let s1 = (0.0 + (0.3f64 / 2.6).powi(2)) / 2.0;
    assert!((rms[0] - s0.sqrt()).abs() < 1e-7 && (rms[1] - s1.sqrt()).abs() < 1e-7);
}

/// The CPU backend passes the conformance check every backend must pass
/// (golden noise vectors computed outside this crate; ops vs the reference).
#[test]
fn cpu_backend_conforms() {
    sde_core::conformance::check_backend(&CpuBackend, 1e-6).unwrap();
    // Gaussian golden values to f32 accuracy on this platform.
    let b = CpuBackend;
    let g = b
        .to_vec(
            &b.gaussian(
                &Shape::new([10]).unwrap(),
                sde_core::conformance::GOLDEN_KEY,
            )
            .unwrap(),
        )
        .unwrap();
    for (x, y) in g.iter().zip(sde_core::conformance::GOLDEN_GAUSSIAN) {
        assert!((f64::from(*x) - y).abs() < 1e-5, "{x} vs {y}");
    }
}

#[test]
fn select_takes_whole_samples_without_mixing() {
    let b = CpuBackend;
    let x = t(&b, &[f32::INFINITY, f32::NAN, 1.0, 2.0], &[2, 2]);
    let y = t(&b, &[5.0, 6.0, 7.0, 8.0], &[2, 2]);
    // A 0/1 combination would turn 0 * inf into NaN; select must not.
    assert_eq!(
        b.to_vec(&b.select(&[false, true], &x, &y).unwrap())
            .unwrap(),
        [5.0, 6.0, 1.0, 2.0]
    );
    assert!(matches!(
        b.select(&[true], &x, &y),
        Err(Error::BatchMismatch { .. })
    ));
}

#[test]
fn shape_and_batch_errors() {
    let b = CpuBackend;
    let x = t(&b, &[1.0; 6], &[2, 3]);
    let y = t(&b, &[1.0; 6], &[3, 2]);
    assert!(matches!(
        b.lincomb(&[(Coef::Scalar(1.0), &x), (Coef::Scalar(1.0), &y)]),
        Err(Error::ShapeMismatch { op: "lincomb", .. })
    ));
    assert!(matches!(
        b.lincomb(&[(Coef::PerSample(&[1.0, 2.0, 3.0]), &x)]),
        Err(Error::BatchMismatch {
            expected: 2,
            got: 3,
            ..
        })
    ));
    assert!(matches!(
        b.lincomb(&[]),
        Err(Error::InvalidParameter { .. })
    ));
    assert!(matches!(
        b.sample_dot(&x, &y),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(b.mul(&x, &y), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(
        b.tensor(vec![1.0; 5], &Shape::new([2, 3]).unwrap()),
        Err(Error::LengthMismatch {
            expected: 6,
            got: 5,
            ..
        })
    ));
}

#[test]
fn non_finite_values_are_reported_with_their_index() {
    let b = CpuBackend;
    let x = t(&b, &[1.0, f32::NAN, 2.0, f32::INFINITY], &[2, 2]);
    match b.check_finite(&x, "samples") {
        Err(Error::NonFinite { what, index, .. }) => {
            assert_eq!(what, "samples");
            assert_eq!(index, 1);
        }
        other => panic!("expected NonFinite, got {other:?}"),
    }
    assert!(b.check_finite(&t(&b, &[1.0, 2.0], &[2]), "ok").is_ok());
}

/// A backend that delegates to the CPU but keeps the trait's default
/// `take_samples` and `put_samples` (host round trips), so that the
/// conformance check covers the defaults every new backend starts with.
#[derive(Clone, Debug)]
struct Defaults;

impl Backend for Defaults {
    type Tensor = sde_core::CpuTensor;
    fn name(&self) -> String {
        "cpu with default ops".into()
    }
    fn shape<'a>(&self, x: &'a Self::Tensor) -> &'a Shape {
        x.shape()
    }
    fn tensor(&self, data: Vec<f32>, shape: &Shape) -> sde_core::Result<Self::Tensor> {
        CpuBackend.tensor(data, shape)
    }
    fn to_vec(&self, x: &Self::Tensor) -> sde_core::Result<Vec<f32>> {
        CpuBackend.to_vec(x)
    }
    fn full(&self, shape: &Shape, value: f32) -> sde_core::Result<Self::Tensor> {
        CpuBackend.full(shape, value)
    }
    fn lincomb(&self, terms: &[(Coef<'_>, &Self::Tensor)]) -> sde_core::Result<Self::Tensor> {
        CpuBackend.lincomb(terms)
    }
    fn select(
        &self,
        take_new: &[bool],
        new: &Self::Tensor,
        old: &Self::Tensor,
    ) -> sde_core::Result<Self::Tensor> {
        CpuBackend.select(take_new, new, old)
    }
    fn mul(&self, x: &Self::Tensor, y: &Self::Tensor) -> sde_core::Result<Self::Tensor> {
        CpuBackend.mul(x, y)
    }
    fn masked_blend(
        &self,
        x: &Self::Tensor,
        y: &Self::Tensor,
        mask: &Self::Tensor,
    ) -> sde_core::Result<Self::Tensor> {
        CpuBackend.masked_blend(x, y, mask)
    }
    fn sample_dot(&self, x: &Self::Tensor, y: &Self::Tensor) -> sde_core::Result<Vec<f64>> {
        CpuBackend.sample_dot(x, y)
    }
    fn sample_scaled_rms(
        &self,
        err: &Self::Tensor,
        y0: &Self::Tensor,
        y1: &Self::Tensor,
        atol: f64,
        rtol: f64,
    ) -> sde_core::Result<Vec<f64>> {
        CpuBackend.sample_scaled_rms(err, y0, y1, atol, rtol)
    }
    fn gaussian(&self, shape: &Shape, key: sde_core::NoiseKey) -> sde_core::Result<Self::Tensor> {
        CpuBackend.gaussian(shape, key)
    }
    fn uniform(&self, shape: &Shape, key: sde_core::NoiseKey) -> sde_core::Result<Self::Tensor> {
        CpuBackend.uniform(shape, key)
    }
    fn rademacher(&self, shape: &Shape, key: sde_core::NoiseKey) -> sde_core::Result<Self::Tensor> {
        CpuBackend.rademacher(shape, key)
    }
    fn check_finite(&self, x: &Self::Tensor, what: &str) -> sde_core::Result<()> {
        CpuBackend.check_finite(x, what)
    }
}

#[test]
fn default_gather_and_scatter_conform() {
    sde_core::conformance::check_backend(&Defaults, 1e-6).unwrap();
}

/// Gathering and scattering whole samples on the CPU: any order, NaN and
/// infinities copied as they are, `put` leaves a shared `full` alone, and
/// bad indices are typed errors that name the problem.
#[test]
fn take_and_put_samples() {
    let b = CpuBackend;
    let x = t(&b, &[1.0, 2.0, f32::NAN, 4.0, 5.0, f32::INFINITY], &[3, 2]);
    let part = b.take_samples(&x, &[2, 1]).unwrap();
    assert_eq!(part.shape().dims(), &[2, 2]);
    let v = b.to_vec(&part).unwrap();
    assert_eq!((v[0], v[1], v[3]), (5.0, f32::INFINITY, 4.0));
    assert!(v[2].is_nan());
    let z = b.zeros(x.shape()).unwrap();
    let shared = z.clone();
    let merged = b.put_samples(&z, &[2, 1], &part).unwrap();
    assert_eq!(b.to_vec(&shared).unwrap(), [0.0; 6]);
    let m = b.to_vec(&merged).unwrap();
    assert_eq!(
        (m[0], m[1], m[3], m[4], m[5]),
        (0.0, 0.0, 4.0, 5.0, f32::INFINITY)
    );
    assert!(m[2].is_nan());
    let msg = b.take_samples(&x, &[1, 3]).unwrap_err().to_string();
    assert!(
        msg.contains("take_samples") && msg.contains("index 3 is outside a batch of 3"),
        "{msg}"
    );
    let msg = b.put_samples(&z, &[1, 1], &part).unwrap_err().to_string();
    assert!(msg.contains("index 1 is listed twice"), "{msg}");
    assert!(matches!(
        b.take_samples(&x, &[]),
        Err(Error::SampleIndices {
            op: "take_samples",
            problem: sde_core::IndexProblem::Empty
        })
    ));
}
