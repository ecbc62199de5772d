#![allow(clippy::unwrap_used)]
//! The wgpu backend against its plain-Rust reference, `sde_core::CpuBackend`.
//!
//! These tests REQUIRE a wgpu adapter: a missing adapter fails them with a
//! message saying how to get one (CI installs Mesa's `llvmpipe` and sets
//! `WGPU_BACKEND=vulkan`). They never skip.
//!
//! Tolerances (`|gpu - cpu| <= max(rel * |cpu|, abs)`):
//! - elementwise ops: rel 1e-6, abs 1e-6 (the kernels follow the CPU's order
//!   of operations; a driver may fuse a multiply-add, about one ulp);
//! - reductions: rel 1e-5 of `max(|cpu|, 1)` (the GPU sums up to 1024 terms
//!   per workgroup in f32, the CPU sums in f64);
//! - select, uniform and Rademacher fills: bit-exact;
//! - Gaussian fills: max([`GAUSS_REL`] * |cpu|, [`GAUSS_ABS`]): llvmpipe deviates by
//!   up to 2.5e-5 absolute (its `sin`/`cos` are accurate to a few 1e-6 absolute,
//!   times r <= 5.6; Vulkan allows 2^-11), while the integer Philox stream
//!   and the uniforms feeding Box–Muller are bit-identical.

use std::sync::OnceLock;

use score_net::gpu::{WgpuBackend, WgpuTensor};
use score_net::{GpuError, NetError};
use sde_core::{Backend, Coef, CpuBackend, CpuTensor, Error, NoiseKey, Shape};

/// Absolute part of the Gaussian tolerance.
const GAUSS_ABS: f32 = 5e-5;
/// Relative part of the Gaussian tolerance.
const GAUSS_REL: f32 = 1e-5;

/// One backend (and one device) shared by every test of this binary.
fn gpu() -> WgpuBackend {
    static B: OnceLock<WgpuBackend> = OnceLock::new();
    B.get_or_init(|| match WgpuBackend::new() {
        Ok(b) => {
            eprintln!("wgpu adapter: {}", b.context().describe());
            b
        }
        Err(e) => panic!(
            "the wgpu backend tests need an adapter and found none: {e}\n\
             (install mesa-vulkan-drivers and libvulkan1, then run with WGPU_BACKEND=vulkan)"
        ),
    })
    .clone()
}

fn shape(dims: &[usize]) -> Shape {
    Shape::new(dims.to_vec()).unwrap()
}

fn randn(shape: &Shape, stream: u64) -> Vec<f32> {
    let mut v = vec![0.0; shape.numel()];
    NoiseKey::new(0xabc, stream).fill_gaussian(&mut v);
    v
}

fn both(data: &[f32], s: &Shape) -> (WgpuTensor, CpuTensor) {
    (
        gpu().tensor(data.to_vec(), s).unwrap(),
        CpuBackend.tensor(data.to_vec(), s).unwrap(),
    )
}

#[track_caller]
fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f32, abs: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= (rel * w.abs()).max(abs);
        assert!(ok, "{what}: element {i}: gpu {g} vs cpu {w}");
    }
}

#[track_caller]
fn assert_close64(what: &str, got: &[f64], want: &[f64], rel: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= rel * w.abs().max(1.0);
        assert!(ok, "{what}: sample {i}: gpu {g} vs cpu {w}");
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Odd element counts (1, 3, 257, 4099) at batch sizes 1 and 5.
fn odd_shapes() -> Vec<Shape> {
    let mut v = Vec::new();
    for batch in [1, 5] {
        for d in [1, 3, 257, 4099] {
            v.push(shape(&[batch, d]));
        }
    }
    v.push(shape(&[5, 3, 7, 11]));
    v
}

/// An adapter exists, is described, and the name says `wgpu:`.
#[test]
fn adapter_is_found_and_described() {
    let b = gpu();
    assert!(b.name().starts_with("wgpu:"), "{}", b.name());
    let d = b.context().describe();
    assert!(!d.is_empty());
    println!("adapter: {d}");
}

/// Every kernel in the table compiles into a pipeline on this device (the
/// subgroup kernels only where the subgroup path is in use).
#[test]
fn every_kernel_compiles() {
    let b = gpu();
    b.context().warm_up().unwrap();
    let kernels = score_net::gpu::kernels::KERNELS;
    let expected = kernels
        .iter()
        .filter(|k| !k.subgroups || b.context().has_subgroups())
        .count();
    assert_eq!(b.context().cached_pipelines(), expected);
    if b.context().has_subgroups() {
        assert_eq!(expected, kernels.len());
    }
}

/// THE acceptance test: golden noise vectors and every op against the CPU
/// (`rel = 1e-6` for elementwise ops; the suite uses 1e-5 for reductions).
#[test]
fn conformance_suite_passes() {
    sde_core::conformance::check_backend(&gpu(), 1e-6).unwrap();
}

/// Uniform and Rademacher fills are bit-identical to the CPU stream for odd
/// sizes and keys that use both 32-bit halves of seed and stream.
#[test]
fn uniform_and_rademacher_fills_are_bit_exact() {
    let b = gpu();
    let keys = [
        NoiseKey::new(0, 0),
        NoiseKey::new(42, 3),
        NoiseKey::new(u64::MAX, u64::MAX - 1),
        NoiseKey::new(0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210),
    ];
    for s in odd_shapes() {
        for key in keys {
            let u = b.to_vec(&b.uniform(&s, key).unwrap()).unwrap();
            let uc = CpuBackend.uniform(&s, key).unwrap().into_vec();
            assert_eq!(bits(&u), bits(&uc), "uniform {s} {key:?}");
            let r = b.to_vec(&b.rademacher(&s, key).unwrap()).unwrap();
            let rc = CpuBackend.rademacher(&s, key).unwrap().into_vec();
            assert_eq!(bits(&r), bits(&rc), "rademacher {s} {key:?}");
        }
    }
}

/// Gaussian fills match the CPU stream within the stated tolerance, and the
/// largest deviation is printed (it measures the device's transcendentals).
#[test]
fn gaussian_fill_matches_cpu_stream() {
    let b = gpu();
    let (mut worst_abs, mut worst_rel) = (0.0f32, 0.0f32);
    for s in odd_shapes().into_iter().chain([shape(&[3, 65_537])]) {
        for key in [NoiseKey::new(7, 1), NoiseKey::new(u64::MAX, 1 << 40)] {
            let g = b.to_vec(&b.gaussian(&s, key).unwrap()).unwrap();
            let c = CpuBackend.gaussian(&s, key).unwrap().into_vec();
            for (x, y) in g.iter().zip(&c) {
                worst_abs = worst_abs.max((x - y).abs());
                worst_rel = worst_rel.max((x - y).abs() / y.abs());
            }
            assert_close(&format!("gaussian {s}"), &g, &c, GAUSS_REL, GAUSS_ABS);
        }
    }
    println!(
        "largest Gaussian deviation from the CPU: {worst_abs:e} absolute, {worst_rel:e} relative"
    );
}

/// lincomb with 1 to 9 terms (chained 4-term dispatches), scalar and
/// per-sample coefficients; mul; masked_blend with full and batch-1 masks;
/// full; the default scale/add/sub; all at odd sizes against the CPU.
#[test]
fn elementwise_ops_match_cpu_at_odd_sizes() {
    let b = gpu();
    let c = CpuBackend;
    for s in odd_shapes() {
        let n = s.batch();
        let xs: Vec<_> = (0..9).map(|k| both(&randn(&s, k), &s)).collect();
        let per: Vec<Vec<f32>> = (0..9)
            .map(|k| (0..n).map(|i| 0.3 * k as f32 - 0.7 * i as f32).collect())
            .collect();
        for nterms in [1, 2, 3, 4, 5, 8, 9] {
            let coef = |k: usize| {
                if k % 2 == 0 {
                    Coef::Scalar(0.5 - k as f32 * 0.25)
                } else {
                    Coef::PerSample(&per[k])
                }
            };
            let tg: Vec<_> = (0..nterms).map(|k| (coef(k), &xs[k].0)).collect();
            let tc: Vec<_> = (0..nterms).map(|k| (coef(k), &xs[k].1)).collect();
            let got = b.to_vec(&b.lincomb(&tg).unwrap()).unwrap();
            let want = c.lincomb(&tc).unwrap().into_vec();
            assert_close(&format!("lincomb{nterms} {s}"), &got, &want, 1e-6, 1e-6);
        }
        let (x, xc) = (&xs[0].0, &xs[0].1);
        let (y, yc) = (&xs[1].0, &xs[1].1);
        let got = b.to_vec(&b.mul(x, y).unwrap()).unwrap();
        assert_close("mul", &got, c.mul(xc, yc).unwrap().data(), 1e-6, 1e-6);
        let got = b.to_vec(&b.sub(x, y).unwrap()).unwrap();
        assert_close("sub", &got, c.sub(xc, yc).unwrap().data(), 1e-6, 1e-6);
        let got = b.to_vec(&b.add(x, y).unwrap()).unwrap();
        assert_close("add", &got, c.add(xc, yc).unwrap().data(), 1e-6, 1e-6);
        let got = b
            .to_vec(&b.scale(x, Coef::PerSample(&per[3])).unwrap())
            .unwrap();
        let want = c.scale(xc, Coef::PerSample(&per[3])).unwrap().into_vec();
        assert_close("scale", &got, &want, 1e-6, 1e-6);
        // Masks: full shape and one sample broadcast over the batch.
        for ms in [s.clone(), s.with_batch(1).unwrap()] {
            let mv: Vec<f32> = randn(&ms, 77).iter().map(|v| v.abs().min(1.0)).collect();
            let (m, mc) = both(&mv, &ms);
            let got = b.to_vec(&b.masked_blend(x, y, &m).unwrap()).unwrap();
            let want = c.masked_blend(xc, yc, &mc).unwrap().into_vec();
            assert_close(
                &format!("masked_blend {s} mask {ms}"),
                &got,
                &want,
                1e-6,
                1e-6,
            );
        }
        let got = b.to_vec(&b.full(&s, -2.5).unwrap()).unwrap();
        assert!(got.iter().all(|&v| v == -2.5), "full {s}");
        let got = b.to_vec(&b.zeros(&s).unwrap()).unwrap();
        assert!(got.iter().all(|&v| v.to_bits() == 0), "zeros {s}");
    }
}

/// Per-sample dot products, norms and scaled RMS norms against the CPU's f64
/// sums, for sample sizes that need one and several reduction workgroups.
#[test]
fn reductions_match_cpu_at_odd_sizes() {
    let b = gpu();
    let c = CpuBackend;
    for s in odd_shapes().into_iter().chain([shape(&[2, 70_001])]) {
        let (x, xc) = both(&randn(&s, 1), &s);
        let (y, yc) = both(&randn(&s, 2), &s);
        let (z, zc) = both(&randn(&s, 3), &s);
        let got = b.sample_dot(&x, &y).unwrap();
        let want = c.sample_dot(&xc, &yc).unwrap();
        assert_close64(&format!("sample_dot {s}"), &got, &want, 1e-5);
        let got = b.sample_norm(&x).unwrap();
        let want = c.sample_norm(&xc).unwrap();
        assert_close64(&format!("sample_norm {s}"), &got, &want, 1e-5);
        for (atol, rtol) in [(1e-3, 1e-2), (1e-5, 1e-5), (1.0, 0.0)] {
            let got = b.sample_scaled_rms(&x, &y, &z, atol, rtol).unwrap();
            let want = c.sample_scaled_rms(&xc, &yc, &zc, atol, rtol).unwrap();
            assert_close64(&format!("scaled_rms {s} {atol} {rtol}"), &got, &want, 1e-5);
        }
    }
}

/// Both reduction paths, subgroup (`reduce_subgroup.wgsl`, where the device
/// has `wgpu::Features::SUBGROUP`) and the shared-memory fallback
/// (`reduce.wgsl`), on a context of their own: they match the CPU at sizes
/// around the 256-thread and 1024-element chunk boundaries with several
/// samples, sums of ones are exact, and the kernel each path names is the one
/// compiled. On Mesa's llvmpipe (CI, this project's software adapter) the
/// subgroup path must be available and on by default.
#[test]
fn subgroup_and_fallback_reductions_match_cpu() {
    use score_net::gpu::{wgpu, GpuContext, NO_SUBGROUPS_ENV};
    let ctx = std::sync::Arc::new(GpuContext::new().unwrap());
    let supported = ctx.subgroups_supported();
    let name = ctx.info().name.clone();
    eprintln!("subgroups: {}", ctx.describe());
    assert_eq!(
        supported,
        ctx.adapter().features().contains(wgpu::Features::SUBGROUP),
        "the device has SUBGROUP exactly when the adapter offers it"
    );
    let disabled = std::env::var(NO_SUBGROUPS_ENV).is_ok_and(|v| !v.is_empty() && v != "0");
    assert_eq!(ctx.has_subgroups(), supported && !disabled);
    if name.to_lowercase().contains("llvmpipe") {
        assert!(supported, "llvmpipe offers subgroups, but {name} did not");
    }
    let b = WgpuBackend::from_context(ctx.clone());
    let c = CpuBackend;
    let mut shapes = Vec::new();
    for batch in [1, 3] {
        for d in [1, 7, 255, 257, 1023, 1024, 1025, 70_001] {
            shapes.push(shape(&[batch, d]));
        }
    }
    let paths: &[bool] = if supported { &[true, false] } else { &[false] };
    for &subgroups in paths {
        assert_eq!(ctx.set_subgroups_enabled(subgroups), subgroups);
        let path = if subgroups { "subgroup" } else { "fallback" };
        for s in &shapes {
            let xc = c.tensor(randn(s, 11), s).unwrap();
            let x = b.tensor(c.to_vec(&xc).unwrap(), s).unwrap();
            let yc = c.tensor(randn(s, 12), s).unwrap();
            let y = b.tensor(c.to_vec(&yc).unwrap(), s).unwrap();
            let zc = c.tensor(randn(s, 13), s).unwrap();
            let z = b.tensor(c.to_vec(&zc).unwrap(), s).unwrap();
            let got = b.sample_dot(&x, &y).unwrap();
            let want = c.sample_dot(&xc, &yc).unwrap();
            assert_close64(&format!("{path} sample_dot {s}"), &got, &want, 1e-5);
            for (atol, rtol) in [(1e-3, 1e-2), (1.0, 0.0)] {
                let got = b.sample_scaled_rms(&x, &y, &z, atol, rtol).unwrap();
                let want = c.sample_scaled_rms(&xc, &yc, &zc, atol, rtol).unwrap();
                assert_close64(
                    &format!("{path} scaled_rms {s} {atol} {rtol}"),
                    &got,
                    &want,
                    1e-5,
                );
            }
            // Every element counted exactly once: integer sums, exact in f32.
            let ones = b.full(s, 1.0).unwrap();
            let d = s.sample_numel() as f64;
            assert_eq!(
                b.sample_dot(&ones, &ones).unwrap(),
                vec![d; s.batch()],
                "{path} sum of ones {s}"
            );
            let rms = b.sample_scaled_rms(&ones, &ones, &ones, 0.0, 1.0).unwrap();
            assert_eq!(rms, vec![1.0; s.batch()], "{path} unit rms {s}");
        }
        assert!(ctx.is_compiled(if subgroups {
            "sample_dot_sg"
        } else {
            "sample_dot"
        }));
        assert!(ctx.is_compiled(if subgroups {
            "sample_scaled_rms_sg"
        } else {
            "sample_scaled_rms"
        }));
        if subgroups {
            assert!(
                !ctx.is_compiled("sample_dot"),
                "fallback ran on the subgroup path"
            );
        }
    }
    if !supported {
        assert!(!ctx.set_subgroups_enabled(true));
        assert!(!ctx.is_compiled("sample_dot_sg"));
        assert!(ctx.warm_up().is_ok());
        assert!(!ctx.is_compiled("sample_dot_sg"));
    }
    ctx.check_fault().unwrap();
}

/// select never mixes samples: NaN and infinity in the sample not taken do
/// not leak, NaN payloads in the sample taken are copied bit for bit, and the
/// result is bit-identical to the CPU's.
#[test]
fn select_is_nan_safe_and_bit_exact() {
    let b = gpu();
    let c = CpuBackend;
    for s in [shape(&[5, 3]), shape(&[5, 4099]), shape(&[1, 257])] {
        let n = s.batch();
        let d = s.sample_numel();
        let mut new = randn(&s, 5);
        let mut old = randn(&s, 6);
        // Poison every sample on one side or the other.
        for i in 0..n {
            let side = if i % 2 == 0 { &mut old } else { &mut new };
            side[i * d] = f32::NAN;
            side[i * d + d / 2] = f32::INFINITY;
            side[(i + 1) * d - 1] = f32::from_bits(0x7fc0_1234); // NaN with a payload
        }
        let take: Vec<bool> = (0..n).map(|i| i % 2 == 0).collect();
        let (gn, cn) = both(&new, &s);
        let (go, co) = both(&old, &s);
        let got = b.to_vec(&b.select(&take, &gn, &go).unwrap()).unwrap();
        let want = c.select(&take, &cn, &co).unwrap().into_vec();
        assert_eq!(bits(&got), bits(&want), "select {s}");
        if n > 1 {
            assert!(got.iter().all(|v| v.is_finite()), "select {s} leaked a NaN");
        }
        // Taking the poisoned side copies the NaN payload exactly.
        let all_old = vec![false; n];
        let got = b.to_vec(&b.select(&all_old, &gn, &go).unwrap()).unwrap();
        assert_eq!(bits(&got), bits(&old), "select all-old {s}");
    }
}

/// Gathering and scattering whole samples (buffer-to-buffer copies) is bit
/// for bit the CPU's at odd sizes, for index lists with runs, gaps, reversals
/// and a single sample, NaN payloads included; no kernel runs; the inputs
/// are left alone.
#[test]
fn take_and_put_samples_are_bit_exact_copies() {
    // A backend of its own: the dispatch counter of the shared one also
    // counts the kernels of the tests running beside this one.
    let _ = gpu();
    let b = WgpuBackend::new().expect("the shared backend found an adapter");
    let c = CpuBackend;
    let mut shapes = odd_shapes();
    shapes.push(shape(&[7, 3, 5]));
    shapes.push(shape(&[13, 257]));
    for s in shapes {
        let (n, d) = (s.batch(), s.sample_numel());
        let mut xv = randn(&s, 11);
        xv[d - 1] = f32::from_bits(0x7fc0_1234); // NaN with a payload
        xv[(n - 1) * d] = f32::NEG_INFINITY;
        let yv = randn(&s, 12);
        // Tensors of this test's own backend (`both` uses the shared one).
        let (x, xc) = (
            b.tensor(xv.clone(), &s).unwrap(),
            c.tensor(xv.clone(), &s).unwrap(),
        );
        let (y, yc) = (
            b.tensor(yv.clone(), &s).unwrap(),
            c.tensor(yv.clone(), &s).unwrap(),
        );
        let mut lists: Vec<Vec<usize>> = vec![
            (0..n).collect(),
            (0..n).rev().collect(),
            vec![n - 1],
            (0..n).filter(|i| i % 3 != 1).collect(),
        ];
        if n > 3 {
            lists.push(vec![n - 2, n - 1, 0, 1, 2]);
        }
        for idx in lists {
            let dispatches = b.context().dispatch_count();
            let part = b.take_samples(&x, &idx).unwrap();
            let part_c = c.take_samples(&xc, &idx).unwrap();
            assert_eq!(part.shape(), part_c.shape(), "take_samples {s} {idx:?}");
            let got = b.to_vec(&part).unwrap();
            assert_eq!(bits(&got), bits(part_c.data()), "take_samples {s} {idx:?}");
            let merged = b.put_samples(&y, &idx, &part).unwrap();
            let want = c.put_samples(&yc, &idx, &part_c).unwrap();
            assert_eq!(
                bits(&b.to_vec(&merged).unwrap()),
                bits(want.data()),
                "put_samples {s} {idx:?}"
            );
            assert_eq!(
                b.context().dispatch_count(),
                dispatches,
                "take/put_samples ran a kernel"
            );
        }
        assert_eq!(bits(&b.to_vec(&x).unwrap()), bits(&xv), "{s}: x changed");
        assert_eq!(bits(&b.to_vec(&y).unwrap()), bits(&yv), "{s}: y changed");
    }
}

/// Bad sample indices are the CPU's typed errors, before any device work.
#[test]
fn bad_sample_indices_are_the_cpus_typed_errors() {
    let b = gpu();
    let c = CpuBackend;
    let s = shape(&[5, 3]);
    let (x, xc) = both(&randn(&s, 1), &s);
    let (p, pc) = both(&randn(&shape(&[2, 3]), 2), &shape(&[2, 3]));
    let (q, qc) = both(&randn(&shape(&[2, 4]), 3), &shape(&[2, 4]));
    let check = |g: Error, c: Error| {
        assert_eq!(format!("{g:?}"), format!("{c:?}"));
        g
    };
    for idx in [&[][..], &[5], &[0, 9], &[1, 1], &[4, 0, 4]] {
        let e = check(
            b.take_samples(&x, idx).unwrap_err(),
            c.take_samples(&xc, idx).unwrap_err(),
        );
        assert!(
            matches!(
                e,
                Error::SampleIndices {
                    op: "take_samples",
                    ..
                }
            ),
            "{e:?}"
        );
    }
    for idx in [&[][..], &[5, 0], &[2, 2]] {
        let e = check(
            b.put_samples(&x, idx, &p).unwrap_err(),
            c.put_samples(&xc, idx, &pc).unwrap_err(),
        );
        assert!(
            matches!(
                e,
                Error::SampleIndices {
                    op: "put_samples",
                    ..
                }
            ),
            "{e:?}"
        );
    }
    let e = check(
        b.put_samples(&x, &[0, 1, 2], &p).unwrap_err(),
        c.put_samples(&xc, &[0, 1, 2], &pc).unwrap_err(),
    );
    assert!(matches!(e, Error::BatchMismatch { .. }), "{e:?}");
    let e = check(
        b.put_samples(&x, &[0, 1], &q).unwrap_err(),
        c.put_samples(&xc, &[0, 1], &qc).unwrap_err(),
    );
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e:?}");
}

/// check_finite reports the first non-finite element like the CPU does.
#[test]
fn check_finite_reports_the_first_bad_element() {
    let b = gpu();
    let s = shape(&[5, 4099]);
    let mut v = randn(&s, 9);
    let (x, _) = both(&v, &s);
    b.check_finite(&x, "x").unwrap();
    for (first, bad) in [
        (12_345usize, f32::NAN),
        (4100, f32::NEG_INFINITY),
        (0, f32::INFINITY),
    ] {
        v[first] = bad;
        v[first + 3] = f32::NAN;
        let (x, xc) = both(&v, &s);
        let got = b.check_finite(&x, "x").unwrap_err();
        let want = CpuBackend.check_finite(&xc, "x").unwrap_err();
        match (&got, &want) {
            (
                Error::NonFinite {
                    index: gi,
                    value: gv,
                    what,
                },
                Error::NonFinite {
                    index: ci,
                    value: cv,
                    ..
                },
            ) => {
                assert_eq!(gi, ci);
                assert_eq!(gv.to_bits(), cv.to_bits());
                assert_eq!(what, "x");
            }
            _ => panic!("check_finite: {got:?} vs {want:?}"),
        }
    }
}

/// Wrong shapes and per-sample vectors give the same typed errors as on the CPU.
#[test]
fn wrong_shapes_are_the_cpus_typed_errors() {
    let b = gpu();
    let c = CpuBackend;
    let s = shape(&[3, 4]);
    let t = shape(&[3, 5]);
    let (x, xc) = both(&randn(&s, 1), &s);
    let (y, yc) = both(&randn(&t, 2), &t);
    let same = |g: Error, c: Error| {
        assert_eq!(
            std::mem::discriminant(&g),
            std::mem::discriminant(&c),
            "gpu {g:?} vs cpu {c:?}"
        );
        g
    };
    same(b.mul(&x, &y).unwrap_err(), c.mul(&xc, &yc).unwrap_err());
    same(b.add(&x, &y).unwrap_err(), c.add(&xc, &yc).unwrap_err());
    same(
        b.sample_dot(&x, &y).unwrap_err(),
        c.sample_dot(&xc, &yc).unwrap_err(),
    );
    same(
        b.sample_scaled_rms(&x, &x, &y, 1.0, 1.0).unwrap_err(),
        c.sample_scaled_rms(&xc, &xc, &yc, 1.0, 1.0).unwrap_err(),
    );
    same(
        b.masked_blend(&x, &x, &y).unwrap_err(),
        c.masked_blend(&xc, &xc, &yc).unwrap_err(),
    );
    same(
        b.select(&[true, false, true], &x, &y).unwrap_err(),
        c.select(&[true, false, true], &xc, &yc).unwrap_err(),
    );
    let e = same(
        b.select(&[true], &x, &x).unwrap_err(),
        c.select(&[true], &xc, &xc).unwrap_err(),
    );
    assert!(matches!(e, Error::BatchMismatch { op: "select", .. }));
    let e = same(
        b.lincomb(&[(Coef::PerSample(&[1.0, 2.0]), &x)])
            .unwrap_err(),
        c.lincomb(&[(Coef::PerSample(&[1.0, 2.0]), &xc)])
            .unwrap_err(),
    );
    assert!(matches!(e, Error::BatchMismatch { .. }));
    same(b.lincomb(&[]).unwrap_err(), c.lincomb(&[]).unwrap_err());
    same(
        b.tensor(vec![0.0; 5], &s).unwrap_err(),
        c.tensor(vec![0.0; 5], &s).unwrap_err(),
    );
}

/// A tensor over the device's storage-binding limit is a typed GpuError, not
/// a wgpu panic or validation error.
#[test]
fn oversized_tensor_is_a_typed_error() {
    let b = gpu();
    let limit = b.context().max_binding_bytes();
    let elems = (limit / 4 + 1) as usize;
    let s = shape(&[1, elems]);
    let e = b.full(&s, 0.0).unwrap_err();
    let Error::Model(inner) = &e else {
        panic!("expected a wrapped GpuError, got {e:?}")
    };
    let net = inner.downcast_ref::<NetError>().expect("a NetError");
    assert!(
        matches!(net, NetError::Gpu(GpuError::TooLarge { .. })),
        "{net:?}"
    );
    assert!(e.to_string().contains("limit"), "{e}");
    // The device is still usable afterwards.
    b.check_finite(&b.full(&shape(&[2, 2]), 1.0).unwrap(), "after")
        .unwrap();
    b.sync().unwrap();
}

/// More workgroups than one grid dimension allows: a 2-D grid covers them,
/// and the noise stream stays the CPU's at large offsets.
#[test]
fn large_tensors_use_a_2d_grid() {
    let b = gpu();
    let max = b.context().limits().max_compute_workgroups_per_dimension as usize;
    let n = max * 256 + 1001;
    let s = shape(&[1, n]);
    let v = b.to_vec(&b.full(&s, 3.0).unwrap()).unwrap();
    assert!(v.iter().all(|&x| x == 3.0));
    let (x, xc) = both(&randn(&s, 1), &s);
    let got = b
        .to_vec(
            &b.lincomb(&[(Coef::Scalar(0.5), &x), (Coef::Scalar(2.0), &x)])
                .unwrap(),
        )
        .unwrap();
    let want = CpuBackend
        .lincomb(&[(Coef::Scalar(0.5), &xc), (Coef::Scalar(2.0), &xc)])
        .unwrap()
        .into_vec();
    assert_close("lincomb on a 2-D grid", &got, &want, 1e-6, 1e-6);
    // Noise at large offsets (a 2-D grid for noise needs 4x as many elements,
    // more than llvmpipe's 128 MiB binding limit).
    let key = NoiseKey::new(5, 6);
    let s = shape(&[1, n]);
    let u = b.to_vec(&b.uniform(&s, key).unwrap()).unwrap();
    let mut tail = vec![0.0f32; 4099];
    let offset = n - tail.len();
    // Element i is lane i % 4 of block i / 4 (offset is not a multiple of 4).
    for (j, t) in tail.iter_mut().enumerate() {
        let i = (offset + j) as u64;
        *t = sde_core::rng::u32_to_unit_f32(key.block(i / 4)[(i % 4) as usize]);
    }
    assert_eq!(bits(&u[offset..]), bits(&tail));
}

/// Many queued ops before one read-back (exercises the batched encoder and
/// its automatic flush), then sync.
#[test]
fn long_op_chains_batch_correctly() {
    let b = gpu();
    let c = CpuBackend;
    let s = shape(&[5, 257]);
    let (mut x, mut xc) = both(&randn(&s, 1), &s);
    let (y, yc) = both(&randn(&s, 2), &s);
    // More dispatches than one encoder takes, so it is submitted on its own.
    for k in 0..score_net::gpu::context::MAX_PENDING_DISPATCHES + 300 {
        let a = if k % 2 == 0 { 0.999 } else { 1.001 };
        x = b
            .lincomb(&[(Coef::Scalar(a), &x), (Coef::Scalar(1e-3), &y)])
            .unwrap();
        xc = c
            .lincomb(&[(Coef::Scalar(a), &xc), (Coef::Scalar(1e-3), &yc)])
            .unwrap();
    }
    b.sync().unwrap();
    let got = b.to_vec(&x).unwrap();
    assert_close("chained lincombs", &got, xc.data(), 1e-5, 1e-5);
}

/// Dropped tensors' buffers are reused (pool hits) and a reused buffer is
/// fully rewritten: stale data of a bigger tensor in the same size class
/// never shows through, even when the reuse is recorded in the same encoder
/// as the last read of the old tensor.
#[test]
fn pooled_buffers_are_reused_and_fully_rewritten() {
    let b = gpu();
    let ctx = b.context();
    // 60 and 64 elements share one 256-byte size class.
    let big = shape(&[1, 64]);
    let small = shape(&[3, 20]);
    let before = ctx.pool().stats();
    let mut keep = Vec::new();
    for k in 0..20 {
        let stale = b.full(&big, f32::NAN).unwrap();
        // The last read of `stale` and the reuse of its buffer are both pending.
        keep.push(b.scale(&stale, Coef::Scalar(0.0)).unwrap());
        drop(stale);
        let fresh = b.full(&small, k as f32).unwrap();
        assert_eq!(b.to_vec(&fresh).unwrap(), vec![k as f32; 60], "round {k}");
    }
    // 0 * NaN is NaN: each pending read saw the old contents, not the reuse's.
    for (k, t) in keep.iter().enumerate() {
        assert!(b.to_vec(t).unwrap().iter().all(|v| v.is_nan()), "round {k}");
    }
    let after = ctx.pool().stats();
    assert!(
        after.hits >= before.hits + 19,
        "expected pool hits, {before:?} -> {after:?}"
    );
    assert!(after.idle_bytes <= after.cap_bytes);
    ctx.pool().trim();
    assert_eq!(ctx.pool().stats().idle_bytes, 0);
}

/// An adapter filter that matches nothing gives NoAdapter, whose message
/// says how to get an adapter (what a machine without a driver would see).
#[test]
fn no_adapter_is_a_clear_typed_error() {
    let e = score_net::gpu::GpuContext::with_options(
        score_net::gpu::wgpu::Backends::VULKAN,
        Some("no adapter has this name"),
    )
    .unwrap_err();
    assert!(matches!(e, GpuError::NoAdapter { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("mesa-vulkan-drivers"), "{msg}");
    assert!(msg.contains("WGPU_BACKEND"), "{msg}");
}

/// A lost device (here destroyed on purpose, as a driver reset would) turns
/// the next operation into a `DeviceLost` error instead of a hang or garbage.
#[test]
fn lost_device_is_a_typed_error() {
    // A device of its own: the shared one must stay usable for other tests.
    let b = WgpuBackend::new().expect("adapter");
    let s = shape(&[2, 3]);
    let x = b.tensor(randn(&s, 1), &s).unwrap();
    b.context().device().destroy();
    let e = b
        .scale(&x, Coef::Scalar(2.0))
        .and_then(|y| b.to_vec(&y))
        .unwrap_err();
    // The backend wraps its own error: find the GpuError in the source chain.
    let gpu_err = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<NetError>())
        .and_then(|n| match n {
            NetError::Gpu(g) => Some(g),
            _ => None,
        });
    assert!(matches!(gpu_err, Some(GpuError::DeviceLost(_))), "{e:?}");
    eprintln!("message: {e}");
    assert!(e.to_string().contains("device lost"), "{e}");
}
