//! The few LAPACK routines the metrics need, called directly: ndarray-linalg's `eigh` goes through
//! `dsyev`, which is ~15x slower than the divide-and-conquer `dsyevd` at 2048x2048.
//!
//! All matrices here are symmetric, so row-major (ndarray) and column-major (LAPACK) layouts hold
//! the same values and no transposition is needed on the way in.

use ndarray::{Array1, Array2};

use crate::error::{MetricsError, Result};

/// Outcome of a Cholesky factorisation attempt.
pub enum Cholesky {
    /// Upper-triangular `U` (row-major) with `A = Uᵀ U`; the strictly lower part is zero.
    Factor(Array2<f64>),
    /// The matrix is not numerically positive definite.
    NotPositiveDefinite,
}

fn lapack_dim(n: usize) -> Result<i32> {
    i32::try_from(n)
        .map_err(|_| MetricsError::Linalg(format!("matrix of size {n} is too large for LAPACK")))
}

/// Cholesky factorisation of a symmetric matrix.
pub fn cholesky(matrix: &Array2<f64>) -> Result<Cholesky> {
    let n = lapack_dim(matrix.nrows())?;
    let mut a = matrix.as_standard_layout().to_owned();
    let mut info = 0;
    // Column-major 'L' on our row-major buffer is the upper triangle U with A = Uᵀ U.
    // SAFETY: `a` is an n x n contiguous buffer; LAPACK writes within it.
    unsafe {
        lapack_sys::dpotrf_(
            &(b'L' as std::os::raw::c_char),
            &n,
            a.as_mut_ptr(),
            &n.max(1),
            &mut info,
        );
    }
    if info > 0 {
        return Ok(Cholesky::NotPositiveDefinite);
    }
    if info < 0 {
        return Err(MetricsError::Linalg(format!(
            "dpotrf: invalid argument {}",
            -info
        )));
    }
    for i in 0..a.nrows() {
        for j in 0..i {
            a[[i, j]] = 0.0;
        }
    }
    Ok(Cholesky::Factor(a))
}

/// Eigen-decomposition of a symmetric matrix by `dsyevd`: ascending eigenvalues, and the
/// eigenvectors as columns when `vectors` is true.
pub fn symmetric_eigen(
    matrix: &Array2<f64>,
    vectors: bool,
) -> Result<(Array1<f64>, Option<Array2<f64>>)> {
    let size = matrix.nrows();
    let n = lapack_dim(size)?;
    let mut a = matrix.as_standard_layout().to_owned();
    let mut w = Array1::<f64>::zeros(size);
    let jobz = if vectors { b'V' } else { b'N' } as std::os::raw::c_char;
    let uplo = b'U' as std::os::raw::c_char;
    let lda = n.max(1);
    let mut info = 0;
    let mut work_query = 0.0f64;
    let mut iwork_query = 0i32;
    // SAFETY: workspace query (lwork = liwork = -1) writes only the two query outputs.
    unsafe {
        lapack_sys::dsyevd_(
            &jobz,
            &uplo,
            &n,
            a.as_mut_ptr(),
            &lda,
            w.as_mut_ptr(),
            &mut work_query,
            &-1,
            &mut iwork_query,
            &-1,
            &mut info,
        );
    }
    if info != 0 {
        return Err(MetricsError::Linalg(format!(
            "dsyevd workspace query failed (info {info})"
        )));
    }
    let lwork = work_query.ceil() as i32;
    let liwork = iwork_query.max(1);
    let mut work = vec![0.0f64; lwork.max(1) as usize];
    let mut iwork = vec![0i32; liwork as usize];
    // SAFETY: buffers sized as LAPACK asked for; `a` is n x n contiguous.
    unsafe {
        lapack_sys::dsyevd_(
            &jobz,
            &uplo,
            &n,
            a.as_mut_ptr(),
            &lda,
            w.as_mut_ptr(),
            work.as_mut_ptr(),
            &lwork,
            iwork.as_mut_ptr(),
            &liwork,
            &mut info,
        );
    }
    if info != 0 {
        return Err(MetricsError::Linalg(format!(
            "dsyevd did not converge (info {info})"
        )));
    }
    // LAPACK wrote eigenvectors as columns in column-major order, i.e. as rows of our buffer.
    Ok((
        w,
        vectors.then(|| a.reversed_axes().as_standard_layout().to_owned()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn cholesky_reconstructs() {
        let a = array![[4.0, 2.0, 0.4], [2.0, 5.0, 1.0], [0.4, 1.0, 3.0]];
        let Cholesky::Factor(u) = cholesky(&a).unwrap() else {
            panic!("a is positive definite")
        };
        let back = u.t().dot(&u);
        for (x, y) in back.iter().zip(a.iter()) {
            assert!((x - y).abs() < 1e-12);
        }
        assert!(matches!(
            cholesky(&array![[1.0, 2.0], [2.0, 1.0]]).unwrap(),
            Cholesky::NotPositiveDefinite
        ));
    }

    #[test]
    fn eigen_reconstructs() {
        let a = array![[2.0, 1.0, 0.0], [1.0, 3.0, 0.5], [0.0, 0.5, 1.0]];
        let (w, v) = symmetric_eigen(&a, true).unwrap();
        let v = v.unwrap();
        assert!(w[0] <= w[1] && w[1] <= w[2]);
        let back = v.dot(&Array2::from_diag(&w)).dot(&v.t());
        for (x, y) in back.iter().zip(a.iter()) {
            assert!((x - y).abs() < 1e-12);
        }
        let (w2, none) = symmetric_eigen(&a, false).unwrap();
        assert!(none.is_none());
        assert!((&w - &w2).iter().all(|d| d.abs() < 1e-12));
    }
}
