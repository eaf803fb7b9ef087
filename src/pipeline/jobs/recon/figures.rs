//! `recon`'s figures from the accumulated [`Totals`]: the feature-set comparisons (rFID,
//! FD_DINOv2, CMMD) by the evaluation's own kernels ([`crate::evaluate::compute`], through
//! [`ReconMetric::shared`]), the per-image scores and codebook usage here.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use llamagen_metrics::stats::{GaussianStats, ReferenceStats};
use serde_json::Value;

use super::stage::{usage_from_counts, Totals, Track};
use super::ReconMetric;
use crate::evaluate::{compute, Metric, MetricOptions, Reference, SampleStats};
use crate::feature_set::FeatureSet;
use crate::metric::MetricKey;
use crate::record::MetricValues;

impl Totals {
    /// The figures: metric values, and the record fields that come with them. `reference`: the
    /// rFID reference's statistics (`None`: the inputs').
    pub(super) fn figures(
        &self,
        reference: Option<&GaussianStats>,
    ) -> Result<(MetricValues, Vec<(&'static str, Value)>)> {
        let mut values = self.shared_figures(reference)?;
        let mut record = Vec::new();
        if self.wanted.contains(&ReconMetric::Psnr) {
            let finite: Vec<f64> = self
                .psnr
                .iter()
                .copied()
                .filter(|v| v.is_finite())
                .collect();
            if finite.is_empty() {
                values.insert(MetricKey::Psnr, f64::INFINITY);
            } else {
                values.insert(
                    MetricKey::Psnr,
                    finite.iter().sum::<f64>() / finite.len() as f64,
                );
            }
            record.push((
                "psnr_identical_images",
                Value::from(self.psnr.len() - finite.len()),
            ));
        }
        if self.wanted.contains(&ReconMetric::Ssim) {
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            values.insert(MetricKey::Ssim, mean(&self.ssim));
            values.insert(MetricKey::SsimLlamagen, mean(&self.ssim_llamagen));
            record.push((
                "ssim_window",
                Value::from("gaussian 11x11, sigma 1.5, data range 255"),
            ));
            record.push((
                "ssim_llamagen_definition",
                Value::from("LlamaGen's call: uniform 7x7, float32 [0,1] inputs, data_range 2.0"),
            ));
        }
        if self.wanted.contains(&ReconMetric::Codebook) {
            let usage = usage_from_counts(&self.counts, &self.window, self.num_indices);
            values.insert(MetricKey::CodebookUsage, usage.usage);
            values.insert(MetricKey::CodebookPerplexity, usage.perplexity);
            record.push(("codebook_size", Value::from(usage.codebook_size)));
            record.push(("codebook_used_entries", Value::from(usage.used_entries)));
            record.push(("codebook_tokens", Value::from(usage.num_indices)));
            record.push(("codebook_entropy_bits", Value::from(usage.entropy_bits)));
            record.push((
                "codebook_usage_last_65536",
                Value::from(usage.llamagen_usage),
            ));
        }
        Ok((values, record))
    }

    /// The figures of the families computed by an evaluation kernel ([`ReconMetric::shared`]):
    /// the reconstructions are the samples, the originals (or, for rFID, `reference`) the
    /// reference; each kernel's figures are recorded under the recon family's keys.
    fn shared_figures(&self, reference: Option<&GaussianStats>) -> Result<MetricValues> {
        let families: Vec<(ReconMetric, Metric)> = self
            .wanted
            .iter()
            .filter_map(|m| m.shared().map(|shared| (*m, shared)))
            .collect();
        if families.is_empty() {
            return Ok(MetricValues::default());
        }
        let stats = |name: &str| self.track(name).map(Track::statistics).transpose();
        let rows = |name: &str| self.track(name).map(Track::all_rows).transpose();
        let sample = FeatureSet {
            clip: rows("recon_clip")?,
            ..Default::default()
        };
        let sample_stats = SampleStats {
            pool: stats("recon_pool")?,
            spatial: None,
            dinov2: stats("recon_dinov2")?,
        };
        let reference_pool = match reference {
            Some(r) => Some(r.clone()),
            None => stats("input_pool")?,
        };
        let reference = Reference {
            stats: ReferenceStats {
                pool: reference_pool,
                spatial: None,
            },
            features: Some(FeatureSet {
                clip: rows("input_clip")?,
                ..Default::default()
            }),
            dinov2_stats: stats("input_dinov2")?,
            // The run record's reference fingerprint is the job's (`reconstruct`).
            sha256: None,
        };
        let planned: BTreeSet<Metric> = families.iter().map(|&(_, shared)| shared).collect();
        let computed = compute(
            &planned,
            &sample,
            None,
            &sample_stats,
            Some(&reference),
            &MetricOptions::default(),
        )?;
        let mut values = MetricValues::default();
        for (family, shared) in families {
            for (from, to) in shared.keys().iter().zip(family.keys()) {
                let value = computed
                    .values
                    .get(*from)
                    .with_context(|| format!("`{family}` computed no `{from}`"))?;
                values.insert(*to, value);
            }
        }
        Ok(values)
    }
}
