//! The statistics of a reference batch as a pass stage: the Gaussian statistics (mean and
//! covariance) of every batch's pool, spatial and (when the run has it) DINOv2 features,
//! accumulated as the batches pass, with the feature rows in the journal so a resumed run
//! accumulates the finished batches again from them.

use std::ops::Range;

use anyhow::{Context, Result};
use llamagen_metrics::stats::GaussianAccumulator;
use ndarray::Array2;

use crate::feature_set::{Extractor, FeatureSet, Network};
use crate::pipeline::stages::features::{FeatureRows, NetworkStage};

/// The statistics a reference batch holds, accumulated batch by batch: pool and spatial always,
/// DINOv2 when the run has it.
pub struct Accumulators {
    /// `(feature name, statistics)`, in the order of the journal streams.
    stats: Vec<(&'static str, GaussianAccumulator)>,
}

impl Accumulators {
    /// For the features `extractor` gives (its CLIP embeddings are not kept).
    fn for_extractor(extractor: &Extractor) -> Self {
        let mut stats = Vec::new();
        for network in extractor.networks() {
            for (name, dim) in extractor.outputs(network) {
                if matches!(name, "pool" | "spatial" | "dinov2") {
                    stats.push((name, GaussianAccumulator::new(dim)));
                }
            }
        }
        Accumulators { stats }
    }

    /// The same statistics for features named as in `features` (a gather's joined parts).
    pub fn for_features(features: &FeatureSet) -> Self {
        let stats = ["pool", "spatial", "dinov2"]
            .into_iter()
            .filter_map(|name| Some((name, GaussianAccumulator::new(features.get(name)?.ncols()))))
            .collect();
        Accumulators { stats }
    }

    /// Adds a batch of `name` features.
    pub fn add(&mut self, name: &str, rows: ndarray::ArrayView2<'_, f32>) -> Result<()> {
        let (_, acc) = self
            .stats
            .iter_mut()
            .find(|(n, _)| *n == name)
            .with_context(|| format!("no `{name}` statistics"))?;
        acc.add_batch_f32(rows)?;
        Ok(())
    }

    /// The statistics of `name` features, if kept.
    pub fn get(&self, name: &str) -> Option<&GaussianAccumulator> {
        self.stats.iter().find(|(n, _)| *n == name).map(|(_, a)| a)
    }

    /// The names of the features kept, in the order of the journal streams.
    pub fn names(&self) -> Vec<&'static str> {
        self.stats.iter().map(|(n, _)| *n).collect()
    }
}

/// Streams every image's features into the reference batch's statistics.
pub type StatsStage<'e> = NetworkStage<'e, Accumulators>;

impl<'e> StatsStage<'e> {
    /// Statistics of the features `extractor` gives (its CLIP embeddings are not kept).
    pub fn new(extractor: &'e Extractor) -> Self {
        let networks = extractor
            .networks()
            .into_iter()
            .filter(|n| *n != Network::Clip)
            .collect();
        Self::with_rows(extractor, networks, Accumulators::for_extractor(extractor))
    }

    /// The statistics accumulated so far.
    pub fn accumulators(&self) -> &Accumulators {
        self.rows()
    }
}

impl FeatureRows for Accumulators {
    fn arrays(&self) -> Vec<(&'static str, usize)> {
        self.stats
            .iter()
            .map(|(name, acc)| (*name, acc.dim()))
            .collect()
    }

    fn take(&mut self, index: usize, _positions: &Range<usize>, rows: &Array2<f32>) -> Result<()> {
        self.stats[index].1.add_batch_f32(rows.view())?;
        Ok(())
    }
}
