//! The one error type of the metrics crate, and the input checks every metric shares.

use ndarray::{ArrayView2, Axis};

/// Why a metric could not be computed. Bad input is always one of these, never a panic or NaN.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("{what}: feature dimensions differ ({left} vs {right}); both sets must come from the same feature extractor")]
    DimensionMismatch {
        what: &'static str,
        left: usize,
        right: usize,
    },
    #[error("{what}: needs at least {need} samples, got {got}")]
    TooFewSamples {
        what: &'static str,
        need: usize,
        got: usize,
    },
    #[error("{what}: {rows} row(s) contain NaN or infinite values")]
    NonFinite { what: &'static str, rows: usize },
    #[error("images of different shapes: {left:?} vs {right:?}")]
    ShapeMismatch { left: Vec<usize>, right: Vec<usize> },
    #[error("k = {k} nearest neighbours needs more than k points in each set, got {n}")]
    KTooLarge { k: usize, n: usize },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("linear algebra failed: {0}")]
    Linalg(String),
}

pub type Result<T> = std::result::Result<T, MetricsError>;

/// Fails with [`MetricsError::NonFinite`] naming how many rows hold NaN or infinity (f32 or f64).
pub fn ensure_finite_rows<A: Copy + Into<f64>>(
    what: &'static str,
    features: ArrayView2<'_, A>,
) -> Result<()> {
    let rows = features
        .axis_iter(Axis(0))
        .filter(|row| row.iter().any(|&v| !v.into().is_finite()))
        .count();
    if rows > 0 {
        return Err(MetricsError::NonFinite { what, rows });
    }
    Ok(())
}

/// Fails with [`MetricsError::DimensionMismatch`] unless `left == right`.
pub fn ensure_same_dim(what: &'static str, left: usize, right: usize) -> Result<()> {
    if left != right {
        return Err(MetricsError::DimensionMismatch { what, left, right });
    }
    Ok(())
}

/// Fails with [`MetricsError::TooFewSamples`] when `got < need`.
pub fn ensure_min_samples(what: &'static str, need: usize, got: usize) -> Result<()> {
    if got < need {
        return Err(MetricsError::TooFewSamples { what, need, got });
    }
    Ok(())
}

/// How a metric comparing two sets of vectors names them in its errors.
pub struct TwoSets {
    /// The metric (`KID`).
    pub metric: &'static str,
    /// The metric and each set (`KID (reference)`, `KID (samples)`).
    pub sets: [&'static str; 2],
    /// What the rows are (`feature vectors`, `embeddings`).
    pub rows: &'static str,
}

/// The checks of two sets of vectors a metric compares, in this order: each holds at least
/// `need` rows, both rows are of one width, that width is not zero, and every value is finite.
pub fn ensure_two_sets<A: Copy + Into<f64>>(
    names: &TwoSets,
    need: usize,
    first: ArrayView2<'_, A>,
    second: ArrayView2<'_, A>,
) -> Result<()> {
    let TwoSets { metric, sets, rows } = *names;
    ensure_min_samples(sets[0], need, first.nrows())?;
    ensure_min_samples(sets[1], need, second.nrows())?;
    ensure_same_dim(metric, first.ncols(), second.ncols())?;
    if first.ncols() == 0 {
        return Err(MetricsError::InvalidArgument(format!(
            "{metric}: {rows} have no components"
        )));
    }
    ensure_finite_rows(sets[0], first)?;
    ensure_finite_rows(sets[1], second)?;
    Ok(())
}
