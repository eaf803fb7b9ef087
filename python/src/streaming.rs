//! `FrechetStatistics`: mean and covariance of features that arrive in batches (a training loop, a
//! data loader, one process per GPU), over the metrics crate's exact streaming accumulator.

use metrics::error::ensure_same_dim;
use metrics::stats::GaussianAccumulator;
use ndarray::{Array1, Array2};
use numpy::{IntoPyArray, PyArray1, PyArray2};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyType;

use crate::budget::{bytes_of, ensure_fits, guarded};
use crate::input::{f64_matrix, f64_vector, float_matrix, FloatView};
use crate::{to_py, MeanCov};

/// `(count, sum, outer)` of [`FrechetStatistics::state`].
type State<'py> = (usize, Bound<'py, PyArray1<f64>>, Bound<'py, PyArray2<f64>>);

/// Streaming mean and covariance of feature vectors, for FID over data that arrives in batches.
///
/// Keeps the count, the sum and the sum of outer products in float64, so ``update`` in any
/// batching, or ``merge`` of per-process instances (DDP ranks), gives the same statistics as
/// ``statistics`` on the whole set at once (to float64 rounding). ``compute`` returns
/// ``(mu, sigma)`` with the N-1 covariance of ``numpy.cov``.
///
/// Across processes, either pickle the instances (``torch.distributed.all_gather_object``) and
/// ``merge`` them, or add up ``state()`` with ``all_reduce`` (all three parts are sums) and rebuild
/// with ``FrechetStatistics.from_state``.
#[pyclass(module = "llamagen_metrics")]
pub struct FrechetStatistics {
    acc: GaussianAccumulator,
}

#[pymethods]
impl FrechetStatistics {
    #[new]
    #[pyo3(signature = (dim))]
    fn new(dim: usize) -> PyResult<Self> {
        if dim == 0 {
            return Err(PyValueError::new_err(
                "FrechetStatistics: dim must be at least 1",
            ));
        }
        // The sum of outer products, and the covariance ``compute`` makes from it.
        ensure_fits(
            "dim",
            &format!("two {dim} x {dim} float64 matrices"),
            bytes_of(&[2, dim, dim], 8),
            "",
        )?;
        guarded("FrechetStatistics", || {
            Ok(FrechetStatistics {
                acc: GaussianAccumulator::new(dim),
            })
        })
    }

    /// Feature dimension.
    #[getter]
    fn dim(&self) -> usize {
        self.acc.dim()
    }

    /// Number of feature vectors added so far.
    #[getter]
    fn count(&self) -> usize {
        self.acc.count()
    }

    /// Adds a batch of features (rows are samples; float32 or float64, read in place).
    ///
    /// A batch with NaN or infinite values, or of another dimension, raises ``ValueError`` and
    /// leaves the statistics unchanged.
    #[pyo3(signature = (batch))]
    fn update(&mut self, py: Python<'_>, batch: &Bound<'_, PyAny>) -> PyResult<()> {
        guarded("FrechetStatistics.update", || {
            let batch = float_matrix("batch", batch)?;
            let view = batch.view();
            let acc = &mut self.acc;
            py.detach(|| match &view {
                FloatView::F32(v) => acc.add_batch_f32(v.view()),
                FloatView::F64(v) => acc.add_batch(v.view()),
            })
            .map_err(to_py)
        })
    }

    /// Folds another instance's batches into this one (``other`` is unchanged).
    ///
    /// Runs holding the GIL (it is a few additions per covariance entry), so ``a.merge(b)`` and
    /// ``b.merge(a)`` in two threads are simply serialised; an instance that another thread is
    /// ``update``-ing meanwhile raises ``RuntimeError`` instead of being read half-written.
    #[pyo3(signature = (other))]
    fn merge(slf: &Bound<'_, Self>, other: &Bound<'_, Self>) -> PyResult<()> {
        guarded("FrechetStatistics.merge", || {
            let busy = |what: &str| {
                PyRuntimeError::new_err(format!(
                    "FrechetStatistics.merge: {what} is in use by another thread (an update \
                         in progress); merge after it returns"
                ))
            };
            // Merging an instance with itself would borrow it twice; it means counting it twice.
            let copy;
            let other_ref;
            let theirs = if slf.is(other) {
                copy = slf.try_borrow().map_err(|_| busy("self"))?.acc.clone();
                &copy
            } else {
                other_ref = other.try_borrow().map_err(|_| busy("other"))?;
                &other_ref.acc
            };
            let mut ours = slf.try_borrow_mut().map_err(|_| busy("self"))?;
            ours.acc.merge(theirs).map_err(to_py)
        })
    }

    /// ``(mu, sigma)``: the mean and the N-1 covariance, as ``numpy.mean(x, 0)`` and
    /// ``numpy.cov(x, rowvar=False)`` of all rows added. Needs at least two.
    fn compute<'py>(&self, py: Python<'py>) -> PyResult<MeanCov<'py>> {
        guarded("FrechetStatistics.compute", || {
            let acc = &self.acc;
            let stats = py.detach(|| acc.finalize()).map_err(to_py)?;
            Ok((stats.mu.into_pyarray(py), stats.sigma.into_pyarray(py)))
        })
    }

    /// ``(count, sum, outer)``: the number of rows, their sum and the sum of their outer products
    /// (upper triangle only; the strictly lower part is not maintained). All three add up across
    /// instances, so ``all_reduce`` of each part then ``from_state`` merges DDP ranks.
    fn state<'py>(&self, py: Python<'py>) -> State<'py> {
        let (count, sum, outer) = self.acc.parts();
        (
            count,
            sum.clone().into_pyarray(py),
            outer.clone().into_pyarray(py),
        )
    }

    /// An instance from ``state()`` parts (or their sums across processes).
    #[staticmethod]
    #[pyo3(signature = (count, sum, outer))]
    fn from_state(
        count: usize,
        sum: &Bound<'_, PyAny>,
        outer: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let sum = f64_vector("sum", sum)?;
        let outer = f64_matrix("outer", outer)?;
        from_parts(count, sum, outer)
    }

    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyType>, (usize,), State<'py>)> {
        let this = slf.borrow();
        Ok((slf.get_type(), (this.acc.dim(),), this.state(slf.py())))
    }

    fn __setstate__(&mut self, state: &Bound<'_, PyAny>) -> PyResult<()> {
        let (count, sum, outer): (usize, Bound<'_, PyAny>, Bound<'_, PyAny>) = state.extract()?;
        let restored = from_parts(
            count,
            f64_vector("sum", &sum)?,
            f64_matrix("outer", &outer)?,
        )?;
        ensure_same_dim(
            "FrechetStatistics state",
            self.acc.dim(),
            restored.acc.dim(),
        )
        .map_err(to_py)?;
        *self = restored;
        Ok(())
    }

    fn __repr__(&self) -> String {
        format!(
            "FrechetStatistics(dim={}, count={})",
            self.acc.dim(),
            self.acc.count()
        )
    }
}

fn from_parts(count: usize, sum: Array1<f64>, outer: Array2<f64>) -> PyResult<FrechetStatistics> {
    if sum.iter().chain(outer.iter()).any(|v| !v.is_finite()) {
        return Err(PyValueError::new_err(
            "FrechetStatistics state: sum or outer holds NaN or infinite values",
        ));
    }
    let acc = GaussianAccumulator::from_parts(count, sum, outer).map_err(to_py)?;
    if acc.dim() == 0 {
        return Err(PyValueError::new_err(
            "FrechetStatistics state: dim must be at least 1",
        ));
    }
    Ok(FrechetStatistics { acc })
}
