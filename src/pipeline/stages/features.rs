//! Feature networks as a pass stage: [`NetworkStage`] runs the networks on every new batch, puts
//! each kept array's rows into the journal and hands them to what keeps them ([`FeatureRows`]), so
//! a resumed run hands over the finished rows, read back bit for bit, instead of running the
//! networks again.
//!
//! [`FeatureStage`] keeps the `pool`, `spatial` and `logits` rows (and any other network's) in
//! arrays allocated once at their final size; the reference batch's statistics
//! ([`crate::pipeline::stages::stats`]) accumulate them instead.

use std::ops::Range;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ndarray::{Array2, Array4};

use crate::feature_set::{Extractor, FeatureSet, Network};
use crate::journal::StreamSpec;
use crate::pipeline::pass::{crash_point, Stage};

/// What a [`NetworkStage`] hands each batch's feature rows to.
pub trait FeatureRows {
    /// `(name, width)` of every array kept, in the order of the journal streams.
    fn arrays(&self) -> Vec<(&'static str, usize)>;

    /// Takes the rows of the `index`-th array of [`FeatureRows::arrays`] for the images at
    /// `positions`; batches arrive in order.
    fn take(&mut self, index: usize, positions: &Range<usize>, rows: &Array2<f32>) -> Result<()>;
}

/// Runs `networks` of an extractor on every batch and hands the rows to `rows`.
pub struct NetworkStage<'e, R> {
    extractor: &'e Extractor,
    networks: Vec<Network>,
    rows: R,
    /// Time spent in the networks.
    pub elapsed: Duration,
}

impl<'e, R: FeatureRows> NetworkStage<'e, R> {
    /// Hands the rows of `networks` (each loaded in `extractor`) to `rows`.
    pub fn with_rows(extractor: &'e Extractor, networks: Vec<Network>, rows: R) -> Self {
        NetworkStage {
            extractor,
            networks,
            rows,
            elapsed: Duration::ZERO,
        }
    }

    /// What the rows were handed to.
    pub fn rows(&self) -> &R {
        &self.rows
    }
}

impl<R: FeatureRows> Stage for NetworkStage<'_, R> {
    fn streams(&self) -> Vec<StreamSpec> {
        self.rows
            .arrays()
            .into_iter()
            .map(|(name, dim)| StreamSpec::new(name, dim * 4))
            .collect()
    }

    fn process(&mut self, positions: Range<usize>, images: &Array4<u8>) -> Result<Vec<Vec<u8>>> {
        let start = Instant::now();
        let batch = self.extractor.extract(images, &self.networks)?;
        self.elapsed += start.elapsed();
        crash_point("features");
        let arrays = self.rows.arrays();
        let mut records = Vec::with_capacity(arrays.len());
        for (index, (name, _)) in arrays.into_iter().enumerate() {
            let rows = batch
                .get(name)
                .with_context(|| format!("the network gave no `{name}` features"))?;
            self.rows.take(index, &positions, rows)?;
            records.push(rows_to_record(rows));
        }
        Ok(records)
    }

    fn restore(
        &mut self,
        positions: Range<usize>,
        _images: Option<&Array4<u8>>,
        records: &[Vec<u8>],
    ) -> Result<()> {
        let arrays = self.rows.arrays();
        for (index, ((_, dim), bytes)) in arrays.into_iter().zip(records).enumerate() {
            let rows = rows_from_record(bytes, positions.len(), dim)?;
            self.rows.take(index, &positions, &rows)?;
        }
        Ok(())
    }
}

/// Collects the features of `total` images from each of its networks.
pub type FeatureStage<'e> = NetworkStage<'e, FeatureArrays>;

/// The feature arrays of a [`FeatureStage`]: `(name, width, rows so far)` of every array, in the
/// networks' order; grown batch by batch, never sized from an image count a file header claims.
pub struct FeatureArrays(Vec<(&'static str, usize, Vec<f32>)>);

impl<'e> FeatureStage<'e> {
    /// The features of about `total` images from every network `extractor` holds.
    pub fn new(extractor: &'e Extractor, total: usize) -> Self {
        Self::for_networks(extractor, total, extractor.networks())
    }

    /// The features of about `total` images from `networks` only (each loaded in `extractor`).
    /// `total` only sizes the first allocation, capped: a source's announced count is a header's
    /// claim until its images arrive.
    pub fn for_networks(extractor: &'e Extractor, total: usize, networks: Vec<Network>) -> Self {
        let rows = total.min(RESERVED_ROWS);
        let outputs = networks
            .iter()
            .flat_map(|n| extractor.outputs(*n))
            .map(|(name, dim)| (name, dim, Vec::with_capacity(rows * dim)))
            .collect();
        Self::with_rows(extractor, networks, FeatureArrays(outputs))
    }

    /// The collected features.
    pub fn into_features(self) -> FeatureSet {
        let mut set = FeatureSet::default();
        for (name, dim, values) in self.rows.0 {
            let rows = Array2::from_shape_vec((values.len() / dim.max(1), dim), values)
                .expect("whole rows of `dim` values");
            if let Some(slot) = set.slot(name) {
                *slot = Some(rows);
            }
        }
        set
    }
}

impl FeatureRows for FeatureArrays {
    fn arrays(&self) -> Vec<(&'static str, usize)> {
        self.0.iter().map(|(name, dim, _)| (*name, *dim)).collect()
    }

    /// Appends a batch's rows of one array.
    fn take(&mut self, index: usize, positions: &Range<usize>, rows: &Array2<f32>) -> Result<()> {
        let (name, dim, values) = &mut self.0[index];
        anyhow::ensure!(
            values.len() == positions.start * *dim && rows.dim() == (positions.len(), *dim),
            "`{name}` rows {positions:?} of width {} after {} rows of width {dim}",
            rows.ncols(),
            values.len() / (*dim).max(1)
        );
        values.extend(rows.iter());
        Ok(())
    }
}

/// Rows reserved before the first batch arrives.
const RESERVED_ROWS: usize = 4096;

/// Feature rows as little-endian f32 bytes, row after row (the journal's record format).
pub fn rows_to_record(rows: &Array2<f32>) -> Vec<u8> {
    rows.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The inverse of [`rows_to_record`]: `count` rows of `dim` features.
pub fn rows_from_record(bytes: &[u8], count: usize, dim: usize) -> Result<Array2<f32>> {
    let values = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(Array2::from_shape_vec((count, dim), values)?)
}
