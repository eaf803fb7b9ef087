//! Python arguments as `ndarray` views: numpy arrays are read in place (float32 and float64
//! without a copy), anything else array-like goes through `numpy.asarray` first, and every shape or
//! type problem becomes a `ValueError` or `TypeError` that names the argument.
//!
//! Arrays that are not C-contiguous (slices with steps, transposes) are copied once into row-major
//! order, so every kernel below sees the layout BLAS wants.

use ndarray::{Array1, Array2, ArrayView, CowArray, Dimension, Ix2};
use numpy::{
    dtype, PyArray1, PyArray2, PyArray4, PyArrayDescrMethods, PyArrayMethods, PyReadonlyArray2,
    PyReadonlyArray4, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::budget::{bytes_of, ensure_fits};

/// A 2-D float array as the caller gave it: float32 and float64 are borrowed, other real dtypes
/// were converted to float64.
pub enum Floats<'py> {
    F32(PyReadonlyArray2<'py, f32>),
    F64(PyReadonlyArray2<'py, f64>),
}

/// Row-major views of a [`Floats`] (copies only for arrays that were not C-contiguous).
pub enum FloatView<'a> {
    F32(CowArray<'a, f32, Ix2>),
    F64(CowArray<'a, f64, Ix2>),
}

/// Two matrices in one element type: float32 when both are, else both float64.
pub enum FloatPair<'a> {
    F32(CowArray<'a, f32, Ix2>, CowArray<'a, f32, Ix2>),
    F64(CowArray<'a, f64, Ix2>, CowArray<'a, f64, Ix2>),
}

impl Floats<'_> {
    /// `(rows, columns)`.
    pub fn shape(&self) -> (usize, usize) {
        match self {
            Floats::F32(a) => a.as_array().dim(),
            Floats::F64(a) => a.as_array().dim(),
        }
    }

    pub fn is_f32(&self) -> bool {
        matches!(self, Floats::F32(_))
    }

    pub fn view(&self) -> FloatView<'_> {
        match self {
            Floats::F32(a) => FloatView::F32(row_major(a.as_array())),
            Floats::F64(a) => FloatView::F64(row_major(a.as_array())),
        }
    }

    /// The values as float32: a view for float32 input, a rounded copy for float64.
    pub fn view_f32(&self) -> CowArray<'_, f32, Ix2> {
        match self.view() {
            FloatView::F32(v) => v,
            FloatView::F64(v) => CowArray::from(v.mapv(|x| x as f32)),
        }
    }
}

impl<'a> FloatPair<'a> {
    /// `(reference rows, samples rows, columns of the reference)`.
    pub fn shape(&self) -> (usize, usize, usize) {
        match self {
            FloatPair::F32(r, s) => (r.nrows(), s.nrows(), r.ncols()),
            FloatPair::F64(r, s) => (r.nrows(), s.nrows(), r.ncols()),
        }
    }

    /// Pairs two matrices; a float32 one next to a float64 one is widened to float64 (a copy).
    pub fn of(a: &'a Floats<'_>, b: &'a Floats<'_>) -> Self {
        let widen = |v: FloatView<'a>| match v {
            FloatView::F32(v) => CowArray::from(v.mapv(f64::from)),
            FloatView::F64(v) => v,
        };
        match (a.view(), b.view()) {
            (FloatView::F32(a), FloatView::F32(b)) => FloatPair::F32(a, b),
            (a, b) => FloatPair::F64(widen(a), widen(b)),
        }
    }
}

/// `obj` as a numpy array: itself when it is one, else `numpy.asarray(obj)`.
fn ndarray_of<'py>(what: &str, obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyUntypedArray>> {
    if let Ok(array) = obj.cast::<PyUntypedArray>() {
        return Ok(array.clone());
    }
    let converted = obj
        .py()
        .import("numpy")?
        .call_method1("asarray", (obj,))
        .map_err(|e| {
            PyTypeError::new_err(format!("{what}: cannot be read as a numpy array ({e})"))
        })?;
    converted
        .cast_into::<PyUntypedArray>()
        .map_err(|_| PyTypeError::new_err(format!("{what}: numpy.asarray did not return an array")))
}

fn ensure_ndim(
    what: &str,
    array: &Bound<'_, PyUntypedArray>,
    ndim: usize,
    form: &str,
) -> PyResult<()> {
    if array.ndim() != ndim {
        return Err(PyValueError::new_err(format!(
            "{what}: expected a {ndim}-D array ({form}), got a {}-D array of shape {:?}",
            array.ndim(),
            array.shape()
        )));
    }
    Ok(())
}

/// Fails with `MemoryError` when a copy of `array` as `width`-byte elements, at its logical size,
/// exceeds the memory budget (a broadcast view of a huge shape holds little memory but copies to
/// its full size).
fn ensure_copy_fits(what: &str, array: &Bound<'_, PyUntypedArray>, width: usize) -> PyResult<()> {
    ensure_fits(
        what,
        &format!("a copy of the array of shape {:?}", array.shape()),
        bytes_of(array.shape(), width),
        "zero-stride (broadcast) and other non-contiguous views are copied at their logical size",
    )
}

/// The numpy dtype kinds read as real numbers: float, signed and unsigned integer, bool.
fn is_real_kind(kind: u8) -> bool {
    matches!(kind, b'f' | b'i' | b'u' | b'b')
}

/// A 2-D array of samples x dimensions (features, logits).
pub fn float_matrix<'py>(what: &str, obj: &Bound<'py, PyAny>) -> PyResult<Floats<'py>> {
    let py = obj.py();
    let array = ndarray_of(what, obj)?;
    ensure_ndim(what, &array, 2, "samples x dimensions")?;
    let descr = array.dtype();
    let borrowed = |e: numpy::BorrowError| {
        PyValueError::new_err(format!(
            "{what}: the array is being written elsewhere ({e})"
        ))
    };
    let native = descr.is_equiv_to(&dtype::<f32>(py)) || descr.is_equiv_to(&dtype::<f64>(py));
    if !native || !array.is_c_contiguous() {
        ensure_copy_fits(what, &array, 8)?;
    }
    if descr.is_equiv_to(&dtype::<f32>(py)) {
        let typed = array.cast::<PyArray2<f32>>()?;
        return Ok(Floats::F32(typed.try_readonly().map_err(borrowed)?));
    }
    if !descr.is_equiv_to(&dtype::<f64>(py)) && !is_real_kind(descr.kind()) {
        return Err(PyTypeError::new_err(format!(
            "{what}: expected real numbers, got an array of dtype {descr}"
        )));
    }
    let wide = if descr.is_equiv_to(&dtype::<f64>(py)) {
        array.cast::<PyArray2<f64>>()?.clone()
    } else {
        // float16, integers, bool and non-native byte orders: a float64 copy.
        array
            .call_method1("astype", ("float64",))?
            .cast_into::<PyArray2<f64>>()?
    };
    Ok(Floats::F64(wide.try_readonly().map_err(borrowed)?))
}

/// A 1-D array of float64 values (a copy).
pub fn f64_vector(what: &str, obj: &Bound<'_, PyAny>) -> PyResult<Array1<f64>> {
    let array = ndarray_of(what, obj)?;
    ensure_ndim(what, &array, 1, "a vector")?;
    ensure_copy_fits(what, &array, 8)?;
    let kind = array.dtype().kind();
    if !is_real_kind(kind) {
        return Err(PyTypeError::new_err(format!(
            "{what}: expected real numbers, got an array of dtype {}",
            array.dtype()
        )));
    }
    let wide = array
        .call_method1("astype", ("float64",))?
        .cast_into::<PyArray1<f64>>()?;
    Ok(wide.to_owned_array())
}

/// A 2-D array of float64 values (a copy).
pub fn f64_matrix(what: &str, obj: &Bound<'_, PyAny>) -> PyResult<Array2<f64>> {
    let py = obj.py();
    let array = ndarray_of(what, obj)?;
    ensure_ndim(what, &array, 2, "a matrix")?;
    ensure_copy_fits(what, &array, 8)?;
    let descr = array.dtype();
    if descr.is_equiv_to(&dtype::<f64>(py)) {
        // Copied once, straight from the caller's buffer.
        return Ok(array.cast::<PyArray2<f64>>()?.to_owned_array());
    }
    if !is_real_kind(descr.kind()) {
        return Err(PyTypeError::new_err(format!(
            "{what}: expected real numbers, got an array of dtype {descr}"
        )));
    }
    let wide = array
        .call_method1("astype", ("float64",))?
        .cast_into::<PyArray2<f64>>()?;
    Ok(wide.to_owned_array())
}

/// A uint8 batch of images, `(N, H, W, C)`.
pub fn images<'py>(what: &str, obj: &Bound<'py, PyAny>) -> PyResult<PyReadonlyArray4<'py, u8>> {
    let py = obj.py();
    let array = ndarray_of(what, obj)?;
    ensure_ndim(what, &array, 4, "a batch of images N x H x W x C")?;
    if !array.dtype().is_equiv_to(&dtype::<u8>(py)) {
        return Err(PyTypeError::new_err(format!(
            "{what}: expected uint8 pixels (0..255), got dtype {}; convert float images with \
             (x * 255).round().clip(0, 255).astype(numpy.uint8) if that is what they mean",
            array.dtype()
        )));
    }
    if !array.is_c_contiguous() {
        ensure_copy_fits(what, &array, 1)?;
    }
    array.cast::<PyArray4<u8>>()?.try_readonly().map_err(|e| {
        PyValueError::new_err(format!(
            "{what}: the array is being written elsewhere ({e})"
        ))
    })
}

/// Row-major view of an image batch (a copy only when it was not C-contiguous).
pub fn image_view<'a>(images: &'a PyReadonlyArray4<'_, u8>) -> CowArray<'a, u8, ndarray::Ix4> {
    row_major(images.as_array())
}

/// The view itself when it is row-major contiguous, else a row-major copy.
fn row_major<A: Clone, D: Dimension>(view: ArrayView<'_, A, D>) -> CowArray<'_, A, D> {
    if view.is_standard_layout() {
        CowArray::from(view)
    } else {
        CowArray::from(view.as_standard_layout().into_owned())
    }
}

/// Token indices of any integer dtype and shape, flattened in C order, as int64.
pub fn indices(what: &str, obj: &Bound<'_, PyAny>) -> PyResult<Vec<i64>> {
    let array = ndarray_of(what, obj)?;
    let kind = array.dtype().kind();
    if !matches!(kind, b'i' | b'u') {
        return Err(PyTypeError::new_err(format!(
            "{what}: expected integer token indices, got dtype {}",
            array.dtype()
        )));
    }
    // numpy.ravel may copy, then astype copies as int64, then the values are copied out.
    ensure_copy_fits(what, &array, 24)?;
    let flat = obj
        .py()
        .import("numpy")?
        .call_method1("ravel", (array,))?
        .call_method1("astype", ("int64",))?
        .cast_into::<PyArray1<i64>>()?;
    Ok(flat.to_vec()?)
}
