//! Tests of the CPU convolution and linear layers: forward passes against
//! naive direct loops (f64 accumulation), backward passes against central
//! finite differences, gradient accumulation, and typed errors on bad input.
#![allow(clippy::unwrap_used)]

mod common;

use common::{check_grad, dot64, randn};
use score_net::cpu::conv::{self, matmul, MatMul};
use score_net::{Conv2dSpec, NetError, View};
use sde_core::{CpuTensor, Shape};

fn t(data: Vec<f32>, dims: &[usize]) -> CpuTensor {
    CpuTensor::new(data, Shape::new(dims.to_vec()).unwrap()).unwrap()
}

/// One convolution configuration.
#[derive(Clone, Copy, Debug)]
struct Cfg {
    n: usize,
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
    bias: bool,
}

impl Cfg {
    fn spec(&self) -> Conv2dSpec {
        Conv2dSpec {
            stride: self.stride,
            padding: self.pad,
        }
    }

    /// A parameter buffer with a few unused leading elements, the weight,
    /// one unused element, then the bias: views must be honoured exactly.
    fn params(&self, seed: u64) -> (CpuTensor, View, Option<View>) {
        let wn = self.cout * self.cin * self.k * self.k;
        let w = View::new(3, [self.cout, self.cin, self.k, self.k]);
        let b = self.bias.then(|| View::new(3 + wn + 1, [self.cout]));
        let total = 3 + wn + 1 + self.cout;
        let p = randn(&[total], seed, 0.5);
        (p, w, b)
    }

    fn out_hw(&self) -> (usize, usize) {
        let s = self.spec();
        (s.out_size(self.h, self.k), s.out_size(self.w, self.k))
    }
}

const CONFIGS: [Cfg; 13] = [
    // 3x3 pad 1 stride 1.
    Cfg {
        n: 2,
        cin: 3,
        cout: 5,
        h: 7,
        w: 5,
        k: 3,
        stride: 1,
        pad: 1,
        bias: true,
    },
    Cfg {
        n: 3,
        cin: 2,
        cout: 4,
        h: 6,
        w: 6,
        k: 3,
        stride: 1,
        pad: 1,
        bias: false,
    },
    // 3x3 pad 1 stride 2 (odd and even sizes).
    Cfg {
        n: 2,
        cin: 3,
        cout: 5,
        h: 7,
        w: 5,
        k: 3,
        stride: 2,
        pad: 1,
        bias: true,
    },
    Cfg {
        n: 3,
        cin: 4,
        cout: 2,
        h: 8,
        w: 6,
        k: 3,
        stride: 2,
        pad: 1,
        bias: false,
    },
    // 1x1 (the pointwise fast path) and 1x1 with stride (the general path).
    Cfg {
        n: 3,
        cin: 3,
        cout: 5,
        h: 7,
        w: 5,
        k: 1,
        stride: 1,
        pad: 0,
        bias: true,
    },
    Cfg {
        n: 2,
        cin: 3,
        cout: 5,
        h: 7,
        w: 5,
        k: 1,
        stride: 2,
        pad: 0,
        bias: false,
    },
    // Kernel 5x5, no padding, stride 1; a single sample.
    Cfg {
        n: 1,
        cin: 2,
        cout: 3,
        h: 7,
        w: 6,
        k: 5,
        stride: 1,
        pad: 0,
        bias: true,
    },
    // Images large enough (>= 512 output pixels) for one GEMM per sample,
    // pointwise and 3x3; smaller ones are grouped several samples per GEMM.
    Cfg {
        n: 2,
        cin: 2,
        cout: 3,
        h: 24,
        w: 24,
        k: 1,
        stride: 1,
        pad: 0,
        bias: true,
    },
    Cfg {
        n: 2,
        cin: 2,
        cout: 3,
        h: 23,
        w: 24,
        k: 3,
        stride: 1,
        pad: 1,
        bias: false,
    },
    // Kernel as large as the padded input: whole kernel columns see only
    // padding.
    Cfg {
        n: 2,
        cin: 2,
        cout: 3,
        h: 2,
        w: 1,
        k: 5,
        stride: 1,
        pad: 2,
        bias: true,
    },
    Cfg {
        n: 2,
        cin: 1,
        cout: 2,
        h: 3,
        w: 1,
        k: 5,
        stride: 2,
        pad: 2,
        bias: false,
    },
    // Padding >= kernel size (zero borders in the output).
    Cfg {
        n: 2,
        cin: 3,
        cout: 2,
        h: 4,
        w: 5,
        k: 1,
        stride: 1,
        pad: 1,
        bias: true,
    },
    // A batch of 5: uneven per-thread chunks in the batch-parallel backward.
    Cfg {
        n: 5,
        cin: 2,
        cout: 3,
        h: 5,
        w: 4,
        k: 3,
        stride: 1,
        pad: 1,
        bias: true,
    },
];

/// Direct 6-loop convolution with f64 accumulation.
fn naive_conv(c: &Cfg, x: &[f32], p: &[f32], w: &View, b: Option<&View>) -> Vec<f32> {
    let (ho, wo) = c.out_hw();
    let wt = &p[w.range()];
    let mut y = vec![0.0f32; c.n * c.cout * ho * wo];
    for n in 0..c.n {
        for co in 0..c.cout {
            for oh in 0..ho {
                for ow in 0..wo {
                    let mut acc = b.map_or(0.0, |b| f64::from(p[b.offset + co]));
                    for ci in 0..c.cin {
                        for kh in 0..c.k {
                            for kw in 0..c.k {
                                let ih = (oh * c.stride + kh) as isize - c.pad as isize;
                                let iw = (ow * c.stride + kw) as isize - c.pad as isize;
                                if ih < 0 || iw < 0 || ih >= c.h as isize || iw >= c.w as isize {
                                    continue;
                                }
                                let xv =
                                    x[((n * c.cin + ci) * c.h + ih as usize) * c.w + iw as usize];
                                let wv = wt[((co * c.cin + ci) * c.k + kh) * c.k + kw];
                                acc += f64::from(xv) * f64::from(wv);
                            }
                        }
                    }
                    y[((n * c.cout + co) * ho + oh) * wo + ow] = acc as f32;
                }
            }
        }
    }
    y
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0.0f32, |m, x| m.max(x.abs()))
}

fn assert_close(name: &str, got: &[f32], want: &[f32], rel: f32) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let scale = max_abs(want).max(1e-6);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= rel * scale,
            "{name}: element {i}: got {g}, want {w} (scale {scale})"
        );
    }
}

#[test]
fn conv2d_forward_matches_naive() {
    for (i, c) in CONFIGS.iter().enumerate() {
        let x = randn(&[c.n, c.cin, c.h, c.w], 10 + i as u64, 1.0);
        let (p, w, b) = c.params(100 + i as u64);
        let y = conv::conv2d(&x, &p, &w, b.as_ref(), c.spec()).unwrap();
        let (ho, wo) = c.out_hw();
        assert_eq!(y.shape().dims(), &[c.n, c.cout, ho, wo], "{c:?}");
        let want = naive_conv(c, x.data(), p.data(), &w, b.as_ref());
        assert_close(&format!("{c:?}"), y.data(), &want, 1e-4);
    }
}

#[test]
fn conv2d_backward_matches_finite_differences() {
    for (i, c) in CONFIGS.iter().enumerate() {
        let x = randn(&[c.n, c.cin, c.h, c.w], 20 + i as u64, 1.0);
        let (p, w, b) = c.params(200 + i as u64);
        let (ho, wo) = c.out_hw();
        let dy = randn(&[c.n, c.cout, ho, wo], 300 + i as u64, 1.0);
        let spec = c.spec();
        let mut grads = t(vec![0.0; p.data().len()], p.shape().dims());
        let dx = conv::conv2d_backward(&x, &dy, &p, &w, b.as_ref(), spec, &mut grads, true)
            .unwrap()
            .unwrap();
        assert_eq!(dx.shape(), x.shape());

        let xdims = x.shape().dims().to_vec();
        check_grad(
            &format!("dx {c:?}"),
            x.data(),
            dx.data(),
            |xp| {
                let y = conv::conv2d(&t(xp.to_vec(), &xdims), &p, &w, b.as_ref(), spec).unwrap();
                dot64(y.data(), dy.data())
            },
            1e-2,
            1e-2,
            1,
        );
        // The whole parameter buffer: dW, db, and zeros outside the views.
        let pdims = p.shape().dims().to_vec();
        check_grad(
            &format!("dparams {c:?}"),
            p.data(),
            grads.data(),
            |pp| {
                let y = conv::conv2d(&x, &t(pp.to_vec(), &pdims), &w, b.as_ref(), spec).unwrap();
                dot64(y.data(), dy.data())
            },
            1e-2,
            1e-2,
            1,
        );
        assert!(
            grads.data()[..3].iter().all(|&g| g == 0.0),
            "outside the views"
        );
    }
}

#[test]
fn conv2d_backward_accumulates_and_skips_dx() {
    for (i, c) in CONFIGS.iter().enumerate() {
        let x = randn(&[c.n, c.cin, c.h, c.w], 40 + i as u64, 1.0);
        let (p, w, b) = c.params(400 + i as u64);
        let (ho, wo) = c.out_hw();
        let dy = randn(&[c.n, c.cout, ho, wo], 500 + i as u64, 1.0);
        let spec = c.spec();
        let zeros = t(vec![0.0; p.data().len()], p.shape().dims());

        let mut once = zeros.clone();
        let dx1 =
            conv::conv2d_backward(&x, &dy, &p, &w, b.as_ref(), spec, &mut once, false).unwrap();
        assert!(dx1.is_none(), "need_dx = false must return None");

        let mut twice = zeros.clone();
        for _ in 0..2 {
            conv::conv2d_backward(&x, &dy, &p, &w, b.as_ref(), spec, &mut twice, true).unwrap();
        }
        let doubled: Vec<f32> = once.data().iter().map(|g| 2.0 * g).collect();
        assert_close(&format!("twice {c:?}"), twice.data(), &doubled, 1e-5);

        // Starting from arbitrary gradients adds to them.
        let start = randn(p.shape().dims(), 600 + i as u64, 1.0);
        let mut acc = start.clone();
        conv::conv2d_backward(&x, &dy, &p, &w, b.as_ref(), spec, &mut acc, false).unwrap();
        let want: Vec<f32> = start
            .data()
            .iter()
            .zip(once.data())
            .map(|(s, g)| s + g)
            .collect();
        assert_close(&format!("offset {c:?}"), acc.data(), &want, 1e-5);
    }
}

/// Linear layer: params buffer with a gap before the weight and the bias.
fn linear_params(out: usize, inp: usize, bias: bool, seed: u64) -> (CpuTensor, View, Option<View>) {
    let w = View::new(2, [out, inp]);
    let b = bias.then(|| View::new(2 + out * inp + 1, [out]));
    (randn(&[2 + out * inp + 1 + out], seed, 0.5), w, b)
}

fn naive_linear(
    x: &[f32],
    inp: usize,
    out: usize,
    p: &[f32],
    w: &View,
    b: Option<&View>,
) -> Vec<f32> {
    let wt = &p[w.range()];
    let mut y = Vec::new();
    for row in x.chunks_exact(inp) {
        for o in 0..out {
            let mut acc = b.map_or(0.0, |b| f64::from(p[b.offset + o]));
            for (i, &xv) in row.iter().enumerate() {
                acc += f64::from(xv) * f64::from(wt[o * inp + i]);
            }
            y.push(acc as f32);
        }
    }
    y
}

#[test]
fn linear_forward_and_backward() {
    // Rank 2 and rank 3 inputs, with and without bias.
    let cases: [(&[usize], usize, bool); 4] = [
        (&[4, 6], 5, true),
        (&[3, 4, 6], 7, true),
        (&[2, 5, 3], 4, false),
        (&[1, 9], 1, true),
    ];
    for (i, (xd, out, bias)) in cases.into_iter().enumerate() {
        let inp = xd[xd.len() - 1];
        let x = randn(xd, 60 + i as u64, 1.0);
        let (p, w, b) = linear_params(out, inp, bias, 700 + i as u64);
        let y = conv::linear(&x, &p, &w, b.as_ref()).unwrap();
        let mut yd = xd.to_vec();
        *yd.last_mut().unwrap() = out;
        assert_eq!(y.shape().dims(), yd.as_slice());
        let want = naive_linear(x.data(), inp, out, p.data(), &w, b.as_ref());
        assert_close(&format!("linear {xd:?}"), y.data(), &want, 1e-5);

        let dy = randn(&yd, 800 + i as u64, 1.0);
        let mut grads = t(vec![0.0; p.data().len()], p.shape().dims());
        let dx = conv::linear_backward(&x, &dy, &p, &w, b.as_ref(), &mut grads, true)
            .unwrap()
            .unwrap();
        assert_eq!(dx.shape(), x.shape());
        check_grad(
            &format!("linear dx {xd:?}"),
            x.data(),
            dx.data(),
            |xp| {
                dot64(
                    conv::linear(&t(xp.to_vec(), xd), &p, &w, b.as_ref())
                        .unwrap()
                        .data(),
                    dy.data(),
                )
            },
            1e-2,
            1e-2,
            1,
        );
        let pdims = p.shape().dims().to_vec();
        check_grad(
            &format!("linear dparams {xd:?}"),
            p.data(),
            grads.data(),
            |pp| {
                dot64(
                    conv::linear(&x, &t(pp.to_vec(), &pdims), &w, b.as_ref())
                        .unwrap()
                        .data(),
                    dy.data(),
                )
            },
            1e-2,
            1e-2,
            1,
        );

        // Accumulation and need_dx = false.
        let before = grads.clone();
        let none = conv::linear_backward(&x, &dy, &p, &w, b.as_ref(), &mut grads, false).unwrap();
        assert!(none.is_none());
        let doubled: Vec<f32> = before.data().iter().map(|g| 2.0 * g).collect();
        assert_close("linear accumulate", grads.data(), &doubled, 1e-5);
    }
}

#[test]
fn matmul_transposes_and_accumulates() {
    let (m, n, k) = (5, 4, 3);
    let a = randn(&[m * k], 1, 1.0).into_vec(); // [m, k]
    let bm = randn(&[k * n], 2, 1.0).into_vec(); // [k, n]
    let mut want = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            want[i * n + j] = (0..k).map(|p| a[i * k + p] * bm[p * n + j]).sum();
        }
    }
    let mut c = vec![0.0f32; m * n];
    matmul(&mut c, &a, &bm, MatMul::new(m, n, k)).unwrap();
    assert_close("plain", &c, &want, 1e-6);

    let at: Vec<f32> = (0..k * m).map(|idx| a[(idx % m) * k + idx / m]).collect(); // [k, m]
    let bt: Vec<f32> = (0..n * k).map(|idx| bm[(idx % k) * n + idx / k]).collect(); // [n, k]
    let mut c2 = vec![1.0f32; m * n];
    matmul(
        &mut c2,
        &at,
        &bt,
        MatMul::new(m, n, k)
            .lhs_transposed()
            .rhs_transposed()
            .accumulating(true),
    )
    .unwrap();
    let plus_one: Vec<f32> = want.iter().map(|v| v + 1.0).collect();
    assert_close("transposed, accumulating", &c2, &plus_one, 1e-6);

    // Wrong lengths are errors, not undefined behaviour.
    assert!(matches!(
        matmul(&mut c, &a[1..], &bm, MatMul::new(m, n, k)),
        Err(NetError::Shape { .. })
    ));
    assert!(matches!(
        matmul(&mut c[1..], &a, &bm, MatMul::new(m, n, k)),
        Err(NetError::Shape { .. })
    ));
    assert!(matmul(&mut c, &a, &bm, MatMul::new(usize::MAX, 2, k)).is_err());
}

#[test]
fn bad_inputs_are_errors() {
    let c = CONFIGS[0];
    let x = randn(&[c.n, c.cin, c.h, c.w], 1, 1.0);
    let (p, w, b) = c.params(2);
    let spec = c.spec();
    let mut grads = t(vec![0.0; p.data().len()], p.shape().dims());
    let (ho, wo) = c.out_hw();
    let dy = randn(&[c.n, c.cout, ho, wo], 3, 1.0);

    // Channel mismatch.
    let x4 = randn(&[c.n, c.cin + 1, c.h, c.w], 1, 1.0);
    assert!(matches!(
        conv::conv2d(&x4, &p, &w, b.as_ref(), spec),
        Err(NetError::Shape { .. })
    ));
    assert!(matches!(
        conv::conv2d_backward(&x4, &dy, &p, &w, b.as_ref(), spec, &mut grads, true),
        Err(NetError::Shape { .. })
    ));
    // Wrong rank.
    let x3 = randn(&[c.n, c.cin, c.h * c.w], 1, 1.0);
    assert!(matches!(
        conv::conv2d(&x3, &p, &w, b.as_ref(), spec),
        Err(NetError::Shape { .. })
    ));
    // Kernel larger than the padded input.
    let tiny = randn(&[1, c.cin, 1, 1], 1, 1.0);
    let nopad = Conv2dSpec {
        stride: 1,
        padding: 0,
    };
    assert!(matches!(
        conv::conv2d(&tiny, &p, &w, b.as_ref(), nopad),
        Err(NetError::Shape { .. })
    ));
    // Stride 0.
    let s0 = Conv2dSpec {
        stride: 0,
        padding: 1,
    };
    assert!(conv::conv2d(&x, &p, &w, b.as_ref(), s0).is_err());
    // A view past the end of the buffer.
    let far = View::new(p.data().len() - 2, w.shape.clone());
    assert!(matches!(
        conv::conv2d(&x, &p, &far, b.as_ref(), spec),
        Err(NetError::View { .. })
    ));
    assert!(matches!(
        conv::conv2d_backward(&x, &dy, &p, &far, b.as_ref(), spec, &mut grads, true),
        Err(NetError::View { .. })
    ));
    // Views whose end overflows usize.
    let huge = View::new(usize::MAX - 1, w.shape.clone());
    assert!(matches!(
        conv::conv2d(&x, &p, &huge, b.as_ref(), spec),
        Err(NetError::View { .. })
    ));
    let huge_b = View::new(usize::MAX, [c.cout]);
    assert!(matches!(
        conv::conv2d(&x, &p, &w, Some(&huge_b), spec),
        Err(NetError::View { .. })
    ));
    let wide = View::new(0, [usize::MAX, c.cin, 3, 3]);
    assert!(conv::conv2d(&x, &p, &wide, b.as_ref(), spec).is_err());
    // Malformed weight views: wrong rank, non-square kernel.
    let flat = View::new(3, [c.cout, c.cin * 9]);
    assert!(matches!(
        conv::conv2d(&x, &p, &flat, b.as_ref(), spec),
        Err(NetError::View { .. })
    ));
    let rect = View::new(3, [c.cout, c.cin, 3, 1]);
    assert!(matches!(
        conv::conv2d(&x, &p, &rect, b.as_ref(), spec),
        Err(NetError::View { .. })
    ));
    // Wrong bias length.
    let bad_b = View::new(0, [c.cout + 1]);
    assert!(matches!(
        conv::conv2d(&x, &p, &w, Some(&bad_b), spec),
        Err(NetError::View { .. })
    ));
    // dy of the wrong shape.
    let dy_bad = randn(&[c.n, c.cout, ho + 1, wo], 3, 1.0);
    assert!(matches!(
        conv::conv2d_backward(&x, &dy_bad, &p, &w, b.as_ref(), spec, &mut grads, true),
        Err(NetError::Shape { .. })
    ));
    // A gradient buffer not laid out like params.
    let mut short = t(vec![0.0; p.data().len() - 1], &[p.data().len() - 1]);
    assert!(conv::conv2d_backward(&x, &dy, &p, &w, b.as_ref(), spec, &mut short, true).is_err());
    assert!(
        grads.data().iter().all(|&g| g == 0.0),
        "failed calls must not touch grads"
    );

    // Linear: feature mismatch, rank 1, bad view, dy mismatch.
    let (lp, lw, lb) = linear_params(4, 6, true, 9);
    let lx = randn(&[3, 6], 1, 1.0);
    let lx_bad = randn(&[3, 5], 1, 1.0);
    assert!(matches!(
        conv::linear(&lx_bad, &lp, &lw, lb.as_ref()),
        Err(NetError::Shape { .. })
    ));
    let r1 = randn(&[6], 1, 1.0);
    assert!(matches!(
        conv::linear(&r1, &lp, &lw, lb.as_ref()),
        Err(NetError::Shape { .. })
    ));
    let lfar = View::new(lp.data().len(), [4, 6]);
    assert!(matches!(
        conv::linear(&lx, &lp, &lfar, lb.as_ref()),
        Err(NetError::View { .. })
    ));
    let lhuge = View::new(usize::MAX, [4, 6]);
    assert!(matches!(
        conv::linear(&lx, &lp, &lhuge, lb.as_ref()),
        Err(NetError::View { .. })
    ));
    let mut lg = t(vec![0.0; lp.data().len()], lp.shape().dims());
    let ldy_bad = randn(&[3, 5], 1, 1.0);
    assert!(matches!(
        conv::linear_backward(&lx, &ldy_bad, &lp, &lw, lb.as_ref(), &mut lg, true),
        Err(NetError::Shape { .. })
    ));
}
