//! Dense row-major linear algebra in `f64` for the full-covariance Gaussians:
//! the Cholesky factorisation, triangular solves and products. Every function
//! trusts its caller to have checked the sizes (they are private to
//! [`super`]); none allocates more than its output.

/// The lower Cholesky factor `L` (`n x n`, row-major, `L L^T = a`) of the
/// symmetric matrix `a`, reading its lower triangle. Fails with the index and
/// value of the first pivot (the diagonal entry of the running Schur
/// complement) that is not finite or not above `n * f64::EPSILON * a_ii`:
/// such a matrix is not positive definite, or so ill-conditioned (condition
/// number beyond about `1 / (n eps)`) that its inverse is meaningless in `f64`.
pub(super) fn cholesky(a: &[f64], n: usize) -> Result<Vec<f64>, (usize, f64)> {
    let tol = n as f64 * f64::EPSILON;
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let (ri, rj) = (&l[i * n..i * n + j], &l[j * n..j * n + j]);
            let sum = a[i * n + j] - dot(ri, rj);
            if i == j {
                if !(sum.is_finite() && sum > 0.0 && sum > tol * a[i * n + i]) {
                    return Err((i, sum));
                }
                l[i * n + i] = sum.sqrt();
            } else {
                l[i * n + j] = sum / l[j * n + j];
            }
        }
    }
    Ok(l)
}

/// `sum_i a_i b_i`.
pub(super) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

/// Solves `L y = b` in place, for the leading `b.len() x b.len()` block of a
/// lower-triangular `L` stored with row stride `stride`.
pub(super) fn solve_lower(l: &[f64], stride: usize, b: &mut [f64]) {
    for i in 0..b.len() {
        let row = &l[i * stride..i * stride + i];
        let sum = b[i] - dot(row, &b[..i]);
        b[i] = sum / l[i * stride + i];
    }
}

/// Solves `L^T x = b` in place for a lower-triangular `n x n` `L`, `n = b.len()`.
pub(super) fn solve_lower_transpose(l: &[f64], b: &mut [f64]) {
    let n = b.len();
    for i in (0..n).rev() {
        let mut sum = b[i];
        for k in i + 1..n {
            sum -= l[k * n + i] * b[k];
        }
        b[i] = sum / l[i * n + i];
    }
}

/// `Sigma^{-1} b` in place, for `Sigma = L L^T`.
pub(super) fn chol_solve(l: &[f64], b: &mut [f64]) {
    solve_lower(l, b.len(), b);
    solve_lower_transpose(l, b);
}

/// `A B` for `A` (`rows x inner`) and `B` (`inner x cols`), row-major.
pub(super) fn matmul(a: &[f64], b: &[f64], rows: usize, inner: usize, cols: usize) -> Vec<f64> {
    let mut out = vec![0.0; rows * cols];
    for (orow, arow) in out.chunks_exact_mut(cols).zip(a.chunks_exact(inner)) {
        for (aik, brow) in arow.iter().zip(b.chunks_exact(cols)) {
            for (o, bkj) in orow.iter_mut().zip(brow) {
                *o += aik * bkj;
            }
        }
    }
    out
}

/// `A A^T` for `A` (`rows x cols`), row-major. Entry `(i, j)` and `(j, i)` are
/// the same sum in the same order, so the result is exactly symmetric.
pub(super) fn gram(a: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut out = vec![0.0; rows * rows];
    for i in 0..rows {
        for j in 0..=i {
            let v = dot(&a[i * cols..(i + 1) * cols], &a[j * cols..(j + 1) * cols]);
            out[i * rows + j] = v;
            out[j * rows + i] = v;
        }
    }
    out
}
