//! A conformance check every [`Backend`] implementation must pass: golden
//! noise vectors (computed independently of this crate from the stream
//! layout in [`crate::rng`]) and every operation compared with
//! [`CpuBackend`] on random inputs of several shapes, odd sizes included
//! (copies, `select` and the gathering and scattering of whole samples bit
//! for bit, also against host copies; their index errors by kind).
//! The CPU backend's own tests run it; the wgpu backend's tests run it too.

use crate::{Backend, Coef, CpuBackend, Error, IndexProblem, NoiseKey, Shape};

/// Key of the golden vectors: a seed that uses both halves of the Philox key.
pub const GOLDEN_KEY: NoiseKey = NoiseKey {
    seed: 0x1234_5678_9abc_def0,
    stream: 7,
};

/// The first ten uniforms of [`GOLDEN_KEY`], as exact `f32` bit patterns.
pub const GOLDEN_UNIFORM: [f32; 10] = [
    f32::from_bits(0x3f62aedb),
    f32::from_bits(0x3e2dd3fc),
    f32::from_bits(0x3f1b175b),
    f32::from_bits(0x3f2de5d5),
    f32::from_bits(0x3dfee358),
    f32::from_bits(0x3e4a2f9c),
    f32::from_bits(0x3f3ff8c9),
    f32::from_bits(0x3f1cbcc5),
    f32::from_bits(0x3f645611),
    f32::from_bits(0x3ec6f08a),
];

/// The first ten Rademacher values of [`GOLDEN_KEY`].
pub const GOLDEN_RADEMACHER: [f32; 10] = [-1.0, 1.0, -1.0, -1.0, 1.0, 1.0, -1.0, -1.0, -1.0, 1.0];

/// The first ten standard normals of [`GOLDEN_KEY`] (computed in `f64`).
pub const GOLDEN_GAUSSIAN: [f64; 10] = [
    -0.238_270_337,
    -0.431_829_534,
    0.430_321_675,
    0.903_964_085,
    -0.661_907_061,
    -1.931_183_074,
    0.577_692_693,
    0.491_862_675,
    0.365_707_855,
    -0.308_179_287,
];

/// Tolerance for Gaussian fills across platforms (transcendental accuracy).
pub const GAUSSIAN_TOL: f64 = 2e-3;

fn close(a: &[f32], b: &[f32], rel: f32, abs: f32) -> Result<(), String> {
    if a.len() != b.len() {
        return Err(format!("length {} vs {}", a.len(), b.len()));
    }
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        // Written so that a NaN on either side fails.
        let within = (x - y).abs() <= (rel * y.abs()).max(abs);
        if !within {
            return Err(format!("element {i}: {x} vs reference {y}"));
        }
    }
    Ok(())
}

fn close64(a: &[f64], b: &[f64], rel: f64) -> Result<(), String> {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let within = (x - y).abs() <= rel * y.abs().max(1.0);
        if !within {
            return Err(format!("sample {i}: {x} vs reference {y}"));
        }
    }
    Ok(())
}

/// `take_samples` and `put_samples` on `shape` against host copies of `xv` and
/// `yv` (bit for bit: both copy), and their typed errors.
fn check_gather_scatter<B: Backend>(
    b: &B,
    shape: &Shape,
    xv: &[f32],
    yv: &[f32],
) -> Result<(), String> {
    let fail = |what: &'static str| move |err: crate::Error| format!("{what} {shape}: {err}");
    let (n, d) = (shape.batch(), shape.sample_numel());
    let x = b.tensor(xv.to_vec(), shape).map_err(fail("upload"))?;
    let y = b.tensor(yv.to_vec(), shape).map_err(fail("upload"))?;
    let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    // The last sample first, then a run of consecutive samples and gaps.
    let idx: Vec<usize> = std::iter::once(n - 1)
        .chain((0..n - 1).filter(|i| i % 3 != 1))
        .collect();
    let part = b.take_samples(&x, &idx).map_err(fail("take_samples"))?;
    let want: Vec<f32> = idx
        .iter()
        .flat_map(|&i| xv[i * d..(i + 1) * d].iter().copied())
        .collect();
    if b.shape(&part).dims() != [&[idx.len()], &shape.dims()[1..]].concat() {
        return Err(format!(
            "take_samples {shape}: shape {} for {} indices",
            b.shape(&part),
            idx.len()
        ));
    }
    let got = b.to_vec(&part).map_err(fail("download"))?;
    if bits(&got) != bits(&want) {
        return Err(format!("take_samples {shape} {idx:?} is not an exact copy"));
    }
    let all: Vec<usize> = (0..n).collect();
    let got = b
        .to_vec(&b.take_samples(&x, &all).map_err(fail("take_samples"))?)
        .map_err(fail("download"))?;
    if bits(&got) != bits(xv) {
        return Err(format!("take_samples {shape} of every sample is not x"));
    }
    let merged = b
        .put_samples(&y, &idx, &part)
        .map_err(fail("put_samples"))?;
    let mut want = yv.to_vec();
    for &i in &idx {
        want[i * d..(i + 1) * d].copy_from_slice(&xv[i * d..(i + 1) * d]);
    }
    let got = b.to_vec(&merged).map_err(fail("download"))?;
    if bits(&got) != bits(&want) || b.shape(&merged) != shape {
        return Err(format!("put_samples {shape} {idx:?} is not an exact copy"));
    }
    // The inputs are unchanged (backends never write into their inputs).
    let (xg, yg) = (
        b.to_vec(&x).map_err(fail("download"))?,
        b.to_vec(&y).map_err(fail("download"))?,
    );
    if bits(&xg) != bits(xv) || bits(&yg) != bits(yv) {
        return Err(format!("take/put_samples {shape} changed an input"));
    }
    // Typed errors, no panics.
    let index_err = |r: crate::Result<B::Tensor>, want: IndexProblem| match r {
        Err(Error::SampleIndices { problem, .. }) if problem == want => Ok(()),
        other => Err(format!(
            "{shape}: expected {want:?}, got {:?}",
            other.map(|_| ())
        )),
    };
    index_err(b.take_samples(&x, &[]), IndexProblem::Empty)?;
    index_err(
        b.take_samples(&x, &[0, n]),
        IndexProblem::OutOfRange { index: n, batch: n },
    )?;
    index_err(
        b.take_samples(&x, &[n - 1, 0, n - 1]),
        IndexProblem::Duplicate { index: n - 1 },
    )?;
    index_err(b.put_samples(&y, &[], &part), IndexProblem::Empty)?;
    index_err(
        b.put_samples(&y, &[usize::MAX], &part),
        IndexProblem::OutOfRange {
            index: usize::MAX,
            batch: n,
        },
    )?;
    if idx.len() > 1 {
        index_err(
            b.put_samples(&y, &vec![idx[0]; idx.len()], &part),
            IndexProblem::Duplicate { index: idx[0] },
        )?;
    }
    if n > idx.len() {
        match b.put_samples(&y, &all[..idx.len() + 1], &part) {
            Err(Error::BatchMismatch { .. }) => {}
            other => {
                return Err(format!(
                    "put_samples {shape}: a part of the wrong batch gave {:?}",
                    other.map(|_| ())
                ))
            }
        }
    }
    let other = Shape::new([n, d + 1]).map_err(fail("shape"))?;
    let wrong = b.full(&other, 1.0).map_err(fail("full"))?;
    match b.put_samples(&y, &all, &wrong) {
        Err(Error::ShapeMismatch { .. }) => Ok(()),
        other => Err(format!(
            "put_samples {shape}: a part of another sample shape gave {:?}",
            other.map(|_| ())
        )),
    }
}

/// Runs the conformance check on `b`; returns the first failure. `rel` is the
/// relative tolerance for arithmetic (`1e-6` suits `f32` elementwise ops).
pub fn check_backend<B: Backend>(b: &B, rel: f32) -> Result<(), String> {
    fn e(what: &'static str) -> impl Fn(crate::Error) -> String {
        move |err| format!("{what}: {err}")
    }
    let c = CpuBackend;
    // Golden noise.
    let s10 = Shape::new([2, 5]).map_err(e("shape"))?;
    let u = b
        .to_vec(&b.uniform(&s10, GOLDEN_KEY).map_err(e("uniform"))?)
        .map_err(e("download"))?;
    if u != GOLDEN_UNIFORM {
        return Err(format!("uniform fill {u:?} differs from the golden vector"));
    }
    let r = b
        .to_vec(&b.rademacher(&s10, GOLDEN_KEY).map_err(e("rademacher"))?)
        .map_err(e("download"))?;
    if r != GOLDEN_RADEMACHER {
        return Err(format!(
            "rademacher fill {r:?} differs from the golden vector"
        ));
    }
    let g = b
        .to_vec(&b.gaussian(&s10, GOLDEN_KEY).map_err(e("gaussian"))?)
        .map_err(e("download"))?;
    for (i, (x, y)) in g.iter().zip(GOLDEN_GAUSSIAN).enumerate() {
        if (f64::from(*x) - y).abs() > GAUSSIAN_TOL {
            return Err(format!("gaussian element {i}: {x} vs golden {y}"));
        }
    }
    // Operations against the CPU reference on odd shapes.
    for (k, dims) in [
        vec![1usize, 1],
        vec![3, 7],
        vec![5, 3, 3, 3],
        vec![2, 1, 33, 17],
    ]
    .into_iter()
    .enumerate()
    {
        let shape = Shape::new(dims).map_err(e("shape"))?;
        let n = shape.batch();
        let host = |stream: u64| {
            let mut v = vec![0.0f32; shape.numel()];
            NoiseKey::new(99, stream + 10 * k as u64).fill_gaussian(&mut v);
            v
        };
        let (xv, yv, mv) = (
            host(0),
            host(1),
            host(2)
                .iter()
                .map(|v| (v.abs() * 0.7).min(1.0))
                .collect::<Vec<_>>(),
        );
        let up = |be: &B, v: &Vec<f32>| be.tensor(v.clone(), &shape).map_err(e("upload"));
        let upc = |v: &Vec<f32>| c.tensor(v.clone(), &shape).map_err(e("upload"));
        let (x, y, m) = (up(b, &xv)?, up(b, &yv)?, up(b, &mv)?);
        let (xc, yc, mc) = (upc(&xv)?, upc(&yv)?, upc(&mv)?);
        let per: Vec<f32> = (0..n).map(|i| 0.5 - i as f32 * 0.3).collect();
        let terms = |a: &B::Tensor, bb: &B::Tensor| {
            b.lincomb(&[
                (Coef::Scalar(0.25), a),
                (Coef::PerSample(&per), bb),
                (Coef::Scalar(-1.5), a),
            ])
        };
        let got = b
            .to_vec(&terms(&x, &y).map_err(e("lincomb"))?)
            .map_err(e("download"))?;
        let want = c
            .to_vec(
                &c.lincomb(&[
                    (Coef::Scalar(0.25), &xc),
                    (Coef::PerSample(&per), &yc),
                    (Coef::Scalar(-1.5), &xc),
                ])
                .map_err(e("lincomb"))?,
            )
            .map_err(e("download"))?;
        close(&got, &want, rel, 1e-6).map_err(|m| format!("lincomb {shape}: {m}"))?;
        let got = b
            .to_vec(&b.mul(&x, &y).map_err(e("mul"))?)
            .map_err(e("download"))?;
        let want = c
            .to_vec(&c.mul(&xc, &yc).map_err(e("mul"))?)
            .map_err(e("download"))?;
        close(&got, &want, rel, 1e-6).map_err(|m| format!("mul {shape}: {m}"))?;
        let got = b
            .to_vec(&b.masked_blend(&x, &y, &m).map_err(e("blend"))?)
            .map_err(e("download"))?;
        let want = c
            .to_vec(&c.masked_blend(&xc, &yc, &mc).map_err(e("blend"))?)
            .map_err(e("download"))?;
        close(&got, &want, rel, 1e-6).map_err(|m| format!("masked_blend {shape}: {m}"))?;
        let take: Vec<bool> = (0..n).map(|i| i % 2 == 0).collect();
        let got = b
            .to_vec(&b.select(&take, &x, &y).map_err(e("select"))?)
            .map_err(e("download"))?;
        let want = c
            .to_vec(&c.select(&take, &xc, &yc).map_err(e("select"))?)
            .map_err(e("download"))?;
        if got != want {
            return Err(format!("select {shape} differs from the reference"));
        }
        check_gather_scatter(b, &shape, &xv, &yv)?;
        let got = b.sample_dot(&x, &y).map_err(e("dot"))?;
        let want = c.sample_dot(&xc, &yc).map_err(e("dot"))?;
        close64(&got, &want, 1e-5).map_err(|m| format!("sample_dot {shape}: {m}"))?;
        let got = b
            .sample_scaled_rms(&x, &y, &m, 1e-3, 1e-2)
            .map_err(e("rms"))?;
        let want = c
            .sample_scaled_rms(&xc, &yc, &mc, 1e-3, 1e-2)
            .map_err(e("rms"))?;
        close64(&got, &want, 1e-5).map_err(|m| format!("sample_scaled_rms {shape}: {m}"))?;
        let gu = b
            .to_vec(&b.uniform(&shape, GOLDEN_KEY).map_err(e("uniform"))?)
            .map_err(e("download"))?;
        let cu = c
            .to_vec(&c.uniform(&shape, GOLDEN_KEY).map_err(e("uniform"))?)
            .map_err(e("download"))?;
        if gu != cu {
            return Err(format!(
                "uniform fill {shape} is not bit-identical to the reference"
            ));
        }
    }
    Ok(())
}
