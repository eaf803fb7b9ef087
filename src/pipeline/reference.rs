//! Every kind of reference resolved on one path: an ADM reference batch (its `mu`/`sigma`/`mu_s`/
//! `sigma_s`, and its `arr_0` images when features are needed), a `stats` file, a feature file,
//! an image npz, or a folder of images. Files are checked before any long work starts.

use std::path::Path;

use anyhow::{bail, Context, Result};
use llamagen_metrics::stats::GaussianStats;

use super::feature_cache::{content_fingerprint, FeatureCache};
use crate::evaluate::Reference;
use crate::feature_set::FeatureSet;
use crate::io::{npz_entry_names, read_reference_stats, read_stats_pairs};

/// What the metrics need of the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReferenceNeeds {
    /// Pool features themselves (precision/recall, KID), not only statistics.
    pub features: bool,
}

const FEATURE_KEYS: [&str; 5] = ["pool", "spatial", "logits", "dinov2", "clip"];

impl Reference {
    /// Fails at once, before any Inception or sampling work, on a reference that holds nothing
    /// usable (a folder is checked when it is read).
    pub fn check(path: &Path) -> Result<()> {
        if path.is_dir() {
            return Ok(());
        }
        let names = npz_entry_names(path)?;
        let usable = [
            "mu", "mu_s", "arr_0", "pool", "spatial", "logits", "dinov2", "clip",
        ];
        if !names.iter().any(|n| usable.contains(&n.as_str())) {
            bail!(
                "{}: the reference batch has neither statistics (mu/sigma, mu_s/sigma_s) nor images (arr_0) nor features; entries: {}",
                path.display(),
                names.join(", ")
            );
        }
        Ok(())
    }

    /// Reads a reference given as features or as statistics (whichever the file holds), without
    /// any network; identified by its content ([`Reference::sha256`]).
    pub fn from_file(path: &Path) -> Result<Reference> {
        Self::read_file(path)?.identified_by(path)
    }

    /// The reference at `path`: statistics from the file when it has them, features of its
    /// images (cropped to `crop`) when `needs` asks for them or there are no statistics;
    /// identified by its content ([`Reference::sha256`]).
    pub fn resolve(
        path: &Path,
        crop: Option<usize>,
        needs: ReferenceNeeds,
        cache: &mut FeatureCache,
    ) -> Result<Reference> {
        Self::read(path, crop, needs, cache)?.identified_by(path)
    }

    /// Records the content fingerprint of `path`, the one the feature cache keys the images by
    /// (hashed once per process, so a reference whose features were extracted is not hashed
    /// again).
    fn identified_by(mut self, path: &Path) -> Result<Reference> {
        self.sha256 = Some(content_fingerprint(path)?);
        Ok(self)
    }

    /// [`Reference::from_file`] without the fingerprint.
    fn read_file(path: &Path) -> Result<Reference> {
        let names = npz_entry_names(path)?;
        if names.iter().any(|n| FEATURE_KEYS.contains(&n.as_str())) {
            let features = FeatureSet::load(path)?;
            return Reference::from_features(features)
                .with_context(|| format!("reference features {}", path.display()));
        }
        let stats = read_reference_stats(path)?;
        if stats.pool.is_none() && stats.spatial.is_none() {
            bail!(
                "{}: holds neither features (pool/spatial/logits) nor statistics (mu/sigma, mu_s/sigma_s); entries: {}",
                path.display(),
                names.join(", ")
            );
        }
        Ok(Reference {
            stats,
            features: None,
            dinov2_stats: None,
            sha256: None,
        })
    }

    /// [`Reference::resolve`] without the fingerprint.
    fn read(
        path: &Path,
        crop: Option<usize>,
        needs: ReferenceNeeds,
        cache: &mut FeatureCache,
    ) -> Result<Reference> {
        if path.is_dir() {
            let features = cache
                .features_of(path, crop)
                .with_context(|| format!("reference images {}", path.display()))?;
            return Reference::from_features(features);
        }
        let names = npz_entry_names(path)?;
        let has = |key: &str| names.iter().any(|n| n == key);
        if FEATURE_KEYS.iter().any(|k| has(k)) {
            return Reference::read_file(path);
        }
        let stats = read_reference_stats(path)?;
        // `stats --features inception,dinov2` writes DINOv2 statistics over every image.
        let dinov2_stats = read_stats_pairs(path, &[("mu_dinov2", "sigma_dinov2")])?
            .pop()
            .flatten();
        let has_stats = stats.pool.is_some() || stats.spatial.is_some();
        // `stats --keep-images 0` writes an empty `arr_0`: statistics alone.
        let has_images = has("arr_0")
            && crate::data::npz::npz_entries(path)?
                .iter()
                .any(|(name, header)| name == "arr_0" && header.shape.first() != Some(&0));
        if !has_images {
            if !has_stats {
                bail!(
                    "{}: the reference batch has neither statistics (mu/sigma, mu_s/sigma_s) nor images (arr_0); entries: {}",
                    path.display(),
                    names.join(", ")
                );
            }
            return Ok(Reference {
                stats,
                features: None,
                dinov2_stats,
                sha256: None,
            });
        }
        // DINOv2 and CLIP features of the reference come from its images.
        let extra_networks = cache.weights().networks().len() > 1;
        if has_stats && !needs.features && !extra_networks {
            return Ok(Reference {
                stats,
                features: None,
                dinov2_stats,
                sha256: None,
            });
        }
        let features = cache
            .features_of(path, crop)
            .with_context(|| format!("reference images {}", path.display()))?;
        let mut reference = Reference::from_features(features)?;
        // Precomputed statistics (over the reference's full image set) win over the kept subset's.
        if stats.pool.is_some() {
            reference.stats.pool = stats.pool;
        }
        if stats.spatial.is_some() {
            reference.stats.spatial = stats.spatial;
        }
        if dinov2_stats.is_some() {
            reference.dinov2_stats = dinov2_stats;
        }
        Ok(reference)
    }

    /// Pool statistics of an rFID reference: from its statistics or features when the file has
    /// them, else from the features of its images.
    pub fn pool_stats(
        path: &Path,
        crop: Option<usize>,
        cache: &mut FeatureCache,
    ) -> Result<GaussianStats> {
        if !path.is_dir() {
            let names = npz_entry_names(path)?;
            if names.iter().any(|n| n == "pool" || n == "mu") {
                let reference = Reference::read_file(path)?;
                return reference.stats.pool.with_context(|| {
                    format!(
                        "{}: no pool statistics (mu/sigma) or pool features for rFID",
                        path.display()
                    )
                });
            }
        }
        let features = cache
            .features_of(path, crop)
            .with_context(|| format!("reference images {}", path.display()))?;
        let pool = features
            .pool
            .with_context(|| format!("{}: no pool features", path.display()))?;
        Ok(GaussianStats::from_features_f32(pool.view())?)
    }
}
