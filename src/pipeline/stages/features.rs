//! Inception features as a pass stage: every batch's `pool`, `spatial` and `logits` rows go into
//! arrays allocated once at their final size, and into the journal, so a resumed run reads the
//! finished rows back bit for bit instead of running the network again.

use std::ops::Range;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ndarray::{Array2, Array4};

use crate::feature_set::{Extractor, FeatureSet, Network};
use crate::journal::StreamSpec;
use crate::pipeline::pass::{crash_point, Stage};

/// Collects the features of `total` images from each of its networks.
pub struct FeatureStage<'e> {
    extractor: &'e Extractor,
    networks: Vec<Network>,
    /// `(name, width, rows so far)` of every feature array, in the networks' order; grown batch
    /// by batch, never sized from an image count a file header claims.
    outputs: Vec<(&'static str, usize, Vec<f32>)>,
    /// Time spent in the networks.
    pub elapsed: Duration,
}

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
        FeatureStage {
            extractor,
            networks,
            outputs,
            elapsed: Duration::ZERO,
        }
    }

    /// The collected features.
    pub fn into_features(self) -> FeatureSet {
        let mut set = FeatureSet::default();
        for (name, dim, values) in self.outputs {
            let rows = Array2::from_shape_vec((values.len() / dim.max(1), dim), values)
                .expect("whole rows of `dim` values");
            if let Some(slot) = set.slot(name) {
                *slot = Some(rows);
            }
        }
        set
    }

    /// Appends a batch's rows of one array; batches arrive in order.
    fn append(
        out: &mut (&'static str, usize, Vec<f32>),
        positions: &Range<usize>,
        rows: &Array2<f32>,
    ) -> Result<()> {
        let (name, dim, values) = out;
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

impl Stage for FeatureStage<'_> {
    fn streams(&self) -> Vec<StreamSpec> {
        self.outputs
            .iter()
            .map(|(name, dim, _)| StreamSpec::new(*name, dim * 4))
            .collect()
    }

    fn process(&mut self, positions: Range<usize>, images: &Array4<u8>) -> Result<Vec<Vec<u8>>> {
        let start = Instant::now();
        let batch = self.extractor.extract(images, &self.networks)?;
        self.elapsed += start.elapsed();
        crash_point("features");
        let mut records = Vec::with_capacity(self.outputs.len());
        for out in self.outputs.iter_mut() {
            let name = out.0;
            let array = batch
                .get(name)
                .with_context(|| format!("the network gave no `{name}` features"))?;
            Self::append(out, &positions, array)?;
            records.push(rows_to_record(array));
        }
        Ok(records)
    }

    fn restore(
        &mut self,
        positions: Range<usize>,
        _images: Option<&Array4<u8>>,
        records: &[Vec<u8>],
    ) -> Result<()> {
        for (out, bytes) in self.outputs.iter_mut().zip(records) {
            let rows = rows_from_record(bytes, positions.len(), out.1)?;
            Self::append(out, &positions, &rows)?;
        }
        Ok(())
    }
}
