//! The few LAPACK routines the metrics need, called directly: ndarray-linalg's `eigh` goes through
//! `dsyev`, which is ~15x slower than the divide-and-conquer `dsyevd` at 2048x2048.
//!
//! All matrices here are symmetric, so row-major (ndarray) and column-major (LAPACK) layouts hold
//! the same values and no transposition is needed on the way in.

use std::ops::Range;
use std::os::raw::c_int;
use std::sync::{Mutex, OnceLock};

use ndarray::{Array1, Array2, ArrayView2, ArrayViewMut2, CowArray, Ix2};

use crate::error::{MetricsError, Result};

// CBLAS enumerations (cblas.h).
const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;
const UPPER: c_int = 121;
const NON_UNIT: c_int = 131;
const LEFT: c_int = 141;
const RIGHT: c_int = 142;

extern "C" {
    fn cblas_dsyrk(
        layout: c_int,
        uplo: c_int,
        trans: c_int,
        n: c_int,
        k: c_int,
        alpha: f64,
        a: *const f64,
        lda: c_int,
        beta: f64,
        c: *mut f64,
        ldc: c_int,
    );
    fn cblas_ssyrk(
        layout: c_int,
        uplo: c_int,
        trans: c_int,
        n: c_int,
        k: c_int,
        alpha: f32,
        a: *const f32,
        lda: c_int,
        beta: f32,
        c: *mut f32,
        ldc: c_int,
    );
    fn cblas_dtrmm(
        layout: c_int,
        side: c_int,
        uplo: c_int,
        trans: c_int,
        diag: c_int,
        m: c_int,
        n: c_int,
        alpha: f64,
        a: *const f64,
        lda: c_int,
        b: *mut f64,
        ldb: c_int,
    );
    fn openblas_set_num_threads(threads: c_int);
    fn openblas_get_num_threads() -> c_int;
}

/// Row stride of a row-major view whose rows are contiguous, as BLAS's leading dimension.
fn leading_dim(what: &str, rows: usize, cols: usize, strides: &[isize]) -> Result<c_int> {
    let contiguous_rows = cols <= 1 || strides[1] == 1;
    let ld = if rows <= 1 {
        cols.max(1) as isize
    } else {
        strides[0]
    };
    if !contiguous_rows || ld < cols.max(1) as isize {
        return Err(MetricsError::Linalg(format!(
            "{what}: matrix rows must be contiguous (strides {strides:?})"
        )));
    }
    c_int::try_from(ld).map_err(|_| MetricsError::Linalg(format!("{what}: matrix too large")))
}

/// `C ← C + Aᵀ A` on the upper triangle of the square `C` only (`dsyrk`); the strictly lower part
/// of `C` is neither read nor written. `A` is row-major with contiguous rows (rows are samples).
pub fn syrk_upper_transposed(a: ArrayView2<'_, f64>, c: &mut Array2<f64>) -> Result<()> {
    let (k, n) = a.dim();
    if c.dim() != (n, n) {
        return Err(MetricsError::Linalg(format!(
            "syrk: output is {:?}, expected {n}x{n}",
            c.dim()
        )));
    }
    if k == 0 || n == 0 {
        return Ok(());
    }
    let lda = leading_dim("syrk", k, n, a.strides())?;
    let n_int = lapack_dim(n)?;
    let k_int = lapack_dim(k)?;
    let c = c.as_slice_mut().expect("an owned matrix is contiguous");
    // SAFETY: `a` spans k rows of lda >= n elements, `c` is n x n contiguous; BLAS writes only `c`.
    unsafe {
        cblas_dsyrk(
            ROW_MAJOR,
            UPPER,
            TRANS,
            n_int,
            k_int,
            1.0,
            a.as_ptr(),
            lda,
            1.0,
            c.as_mut_ptr(),
            n_int,
        );
    }
    Ok(())
}

/// `A Aᵀ` (the Gram matrix of the rows of `A`) into `out`, computed on the upper triangle by
/// `dsyrk`/`ssyrk` and mirrored, so both triangles hold bit-identical values.
pub fn gram_symmetric<T: Element>(
    a: ArrayView2<'_, T>,
    mut out: ArrayViewMut2<'_, T>,
) -> Result<()> {
    let (n, k) = a.dim();
    if out.dim() != (n, n) {
        return Err(MetricsError::Linalg(format!(
            "gram: output is {:?}, expected {n}x{n}",
            out.dim()
        )));
    }
    if n == 0 {
        return Ok(());
    }
    if k == 0 {
        out.fill(T::default());
        return Ok(());
    }
    let lda = leading_dim("gram", n, k, a.strides())?;
    let ldc = leading_dim("gram output", n, n, out.strides())?;
    let n_int = lapack_dim(n)?;
    let k_int = lapack_dim(k)?;
    // SAFETY: `a` spans n rows of lda >= k elements; `out` spans n rows of ldc >= n elements.
    unsafe {
        T::syrk_upper(n_int, k_int, a.as_ptr(), lda, out.as_mut_ptr(), ldc);
    }
    for i in 1..n {
        for j in 0..i {
            out[[i, j]] = out[[j, i]];
        }
    }
    Ok(())
}

/// `U S Uᵀ` for an upper-triangular `U` (strictly lower part ignored) and a square `S`, by two
/// triangular multiplications (`dtrmm`): half the work of two general products.
pub fn triangular_congruence(u: &Array2<f64>, s: &Array2<f64>) -> Result<Array2<f64>> {
    let n = u.nrows();
    if u.dim() != (n, n) || s.dim() != (n, n) {
        return Err(MetricsError::Linalg(format!(
            "triangular congruence: shapes {:?} and {:?}",
            u.dim(),
            s.dim()
        )));
    }
    let n_int = lapack_dim(n)?;
    let u = u.as_standard_layout();
    let mut b = s.as_standard_layout().into_owned();
    if n == 0 {
        return Ok(b);
    }
    // B ← op(U) B from `side`, op(U) being U or Uᵀ as `transpose` says.
    let mut multiply_by_u = |side: c_int, transpose: c_int| {
        // SAFETY: both matrices are n x n contiguous row-major; BLAS writes only `b`.
        unsafe {
            cblas_dtrmm(
                ROW_MAJOR,
                side,
                UPPER,
                transpose,
                NON_UNIT,
                n_int,
                n_int,
                1.0,
                u.as_ptr(),
                n_int,
                b.as_mut_ptr(),
                n_int,
            );
        }
    };
    // B ← U S
    multiply_by_u(LEFT, NO_TRANS);
    // B ← (U S) Uᵀ
    multiply_by_u(RIGHT, TRANS);
    Ok(b)
}

/// Feature element types the metric kernels read in place, widening (or narrowing) one block of
/// rows at a time instead of copying a whole feature matrix.
pub trait Element: Copy + Default + Send + Sync + Into<f64> + 'static {
    /// The rows as f32: a view when they already are, else a rounded copy.
    fn rows_f32<'a>(rows: ArrayView2<'a, Self>) -> CowArray<'a, f32, Ix2>;
    /// The rows as f64: a view when they already are, else a widened copy.
    fn rows_f64<'a>(rows: ArrayView2<'a, Self>) -> CowArray<'a, f64, Ix2>;
    /// `C = A Aᵀ` on the upper triangle of row-major `C` (n x n), `A` row-major n x k: BLAS
    /// `ssyrk`/`dsyrk`.
    ///
    /// # Safety
    /// `a` must span n rows of `lda >= k` elements and `c` n rows of `ldc >= n` elements.
    unsafe fn syrk_upper(n: c_int, k: c_int, a: *const Self, lda: c_int, c: *mut Self, ldc: c_int);
}

impl Element for f32 {
    fn rows_f32<'a>(rows: ArrayView2<'a, f32>) -> CowArray<'a, f32, Ix2> {
        CowArray::from(rows)
    }
    fn rows_f64<'a>(rows: ArrayView2<'a, f32>) -> CowArray<'a, f64, Ix2> {
        CowArray::from(rows.mapv(f64::from))
    }
    unsafe fn syrk_upper(n: c_int, k: c_int, a: *const f32, lda: c_int, c: *mut f32, ldc: c_int) {
        // SAFETY: the caller guarantees the extents.
        unsafe { cblas_ssyrk(ROW_MAJOR, UPPER, NO_TRANS, n, k, 1.0, a, lda, 0.0, c, ldc) }
    }
}

impl Element for f64 {
    fn rows_f32<'a>(rows: ArrayView2<'a, f64>) -> CowArray<'a, f32, Ix2> {
        CowArray::from(rows.mapv(|v| v as f32))
    }
    fn rows_f64<'a>(rows: ArrayView2<'a, f64>) -> CowArray<'a, f64, Ix2> {
        CowArray::from(rows)
    }
    unsafe fn syrk_upper(n: c_int, k: c_int, a: *const f64, lda: c_int, c: *mut f64, ldc: c_int) {
        // SAFETY: the caller guarantees the extents.
        unsafe { cblas_dsyrk(ROW_MAJOR, UPPER, NO_TRANS, n, k, 1.0, a, lda, 0.0, c, ldc) }
    }
}

/// Splits `0..n` into about equal ranges of at most `most` rows (the kernel blocks of KID and
/// CMMD).
pub fn even_blocks(n: usize, most: usize) -> Vec<Range<usize>> {
    let count = n.div_ceil(most).max(1);
    (0..count)
        .map(|b| (b * n / count)..((b + 1) * n / count))
        .filter(|r| !r.is_empty())
        .collect()
}

/// Rows `rows` of `source` (in that order), widened to f64, as a new row-major matrix.
pub fn gather_rows_f64<T: Element>(source: ArrayView2<'_, T>, rows: &[usize]) -> Array2<f64> {
    let cols = source.ncols();
    let mut data = Vec::with_capacity(rows.len() * cols);
    for &r in rows {
        data.extend(source.row(r).iter().map(|&v| v.into()));
    }
    Array2::from_shape_vec((rows.len(), cols), data).expect("rows x cols values")
}

/// OpenBLAS's own thread count when the process started (`OPENBLAS_NUM_THREADS`, else the cores).
fn default_blas_threads() -> usize {
    static DEFAULT: OnceLock<usize> = OnceLock::new();
    // SAFETY: a plain query.
    *DEFAULT.get_or_init(|| usize::try_from(unsafe { openblas_get_num_threads() }).unwrap_or(1))
}

/// Number of rayon-parallel regions currently running BLAS single-threaded.
static PARALLEL_REGIONS: Mutex<usize> = Mutex::new(0);

/// Thread hygiene for kernels that are parallel over blocks with rayon: while a guard lives,
/// OpenBLAS runs each call on the calling thread only, so rayon's workers (one per core) are the
/// only compute threads and no BLAS pool spins beside them. Outside such regions (the LAPACK
/// factorisations on one large matrix) OpenBLAS keeps its default thread count.
pub struct SerialBlas(());

impl SerialBlas {
    pub fn enter() -> Self {
        default_blas_threads();
        let mut regions = PARALLEL_REGIONS.lock().unwrap_or_else(|e| e.into_inner());
        if *regions == 0 {
            // SAFETY: sets a global count; takes effect for later calls.
            unsafe { openblas_set_num_threads(1) };
        }
        *regions += 1;
        SerialBlas(())
    }
}

impl Drop for SerialBlas {
    fn drop(&mut self) {
        let mut regions = PARALLEL_REGIONS.lock().unwrap_or_else(|e| e.into_inner());
        *regions -= 1;
        if *regions == 0 {
            let threads = c_int::try_from(default_blas_threads()).unwrap_or(1);
            // SAFETY: as above.
            unsafe { openblas_set_num_threads(threads) };
        }
    }
}

/// Thread counts the metric kernels run with: (rayon workers, OpenBLAS threads per call inside
/// rayon-parallel kernels, OpenBLAS threads for single large factorisations).
pub fn thread_counts() -> (usize, usize, usize) {
    (rayon::current_num_threads(), 1, default_blas_threads())
}

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
    // `dsyevd` on `a` (eigenvectors written over it) and `w`, with workspaces `work` of `lwork`
    // and `iwork` of `liwork` elements (both -1: a query of the sizes, written to their first
    // elements). Returns LAPACK's `info`.
    let mut dsyevd = |work: &mut [f64], lwork: i32, iwork: &mut [i32], liwork: i32| {
        let mut info = 0;
        // SAFETY: `a` is n x n contiguous and `w` holds n values; `work` and `iwork` are as long
        // as LAPACK asked for, or one element each for the query.
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
        info
    };
    let mut work_query = [0.0f64];
    let mut iwork_query = [0i32];
    let info = dsyevd(&mut work_query, -1, &mut iwork_query, -1);
    if info != 0 {
        return Err(MetricsError::Linalg(format!(
            "dsyevd workspace query failed (info {info})"
        )));
    }
    let lwork = work_query[0].ceil() as i32;
    let liwork = iwork_query[0].max(1);
    let mut work = vec![0.0f64; lwork.max(1) as usize];
    let mut iwork = vec![0i32; liwork as usize];
    let info = dsyevd(&mut work, lwork, &mut iwork, liwork);
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
    fn blas_helpers_match_plain_products() {
        let a = Array2::from_shape_fn((5, 3), |(i, j)| ((i * 7 + j * 3) % 5) as f64 - 1.5);
        let mut upper = Array2::<f64>::zeros((3, 3));
        syrk_upper_transposed(a.view(), &mut upper).unwrap();
        let ata = a.t().dot(&a);
        for i in 0..3 {
            for j in 0..3 {
                let expected = if j >= i { ata[[i, j]] } else { 0.0 };
                assert!((upper[[i, j]] - expected).abs() < 1e-12);
            }
        }
        let mut gram = Array2::<f64>::zeros((5, 5));
        gram_symmetric(a.view(), gram.view_mut()).unwrap();
        let mut gram32 = Array2::<f32>::zeros((5, 5));
        gram_symmetric(a.mapv(|v| v as f32).view(), gram32.view_mut()).unwrap();
        let aat = a.dot(&a.t());
        for ((x, y), z) in gram.iter().zip(aat.iter()).zip(gram32.iter()) {
            assert!((x - y).abs() < 1e-12 && (f64::from(*z) - y).abs() < 1e-5);
        }
        assert_eq!(gram, gram.t());
        let u = array![[2.0, 0.5, -1.0], [9.0, 1.5, 0.25], [7.0, 8.0, 3.0]];
        let s = array![[4.0, 2.0, 0.4], [2.0, 5.0, 1.0], [0.4, 1.0, 3.0]];
        let mut upper_u = u.clone();
        for i in 0..3 {
            for j in 0..i {
                upper_u[[i, j]] = 0.0;
            }
        }
        let expected = upper_u.dot(&s).dot(&upper_u.t());
        let got = triangular_congruence(&u, &s).unwrap();
        for (x, y) in got.iter().zip(expected.iter()) {
            assert!((x - y).abs() < 1e-12);
        }
        let rows = gather_rows_f64(a.mapv(|v| v as f32).view(), &[4, 0, 4]);
        assert_eq!(rows.row(0), a.row(4));
        assert_eq!(rows.row(1), a.row(0));
        assert_eq!(rows.row(2), a.row(4));
    }

    #[test]
    fn blas_is_single_threaded_inside_parallel_kernels() {
        let _serial = SerialBlas::enter();
        assert_eq!(crate::blas::num_threads(), 1);
        assert_eq!(thread_counts().1, 1);
        assert!(thread_counts().2 >= 1);
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
