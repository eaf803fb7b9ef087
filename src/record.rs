//! STAND-IN until the metric-registry branch lands (replaced by its record.rs).

use std::path::Path;

use serde_json::{Map, Value};

pub use crate::evaluate::MetricValues;

/// A run's metrics and description.
pub struct RunRecord {
    /// The figures.
    pub metrics: MetricValues,
    /// The description.
    pub run: Map<String, Value>,
}

impl RunRecord {
    /// Writes metrics.json and metrics.csv.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        crate::evaluate::write_outputs(dir, &self.metrics, &self.run)
    }
}
