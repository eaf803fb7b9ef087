//! The subcommands: their flags (clap) and what they run. `main.rs` only parses and dispatches.

pub mod check;
pub mod features;
pub mod fid;
pub mod inspect;
pub mod metrics;
pub mod recon;
pub mod report;
pub mod sample;
pub mod stats;
pub mod sweep;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use serde_json::{Map, Value};

use crate::cache;
use crate::device::DeviceChoice;
use crate::features::{sha256_file, Extractor, RELEASED_WEIGHTS_SHA256_PREFIX};
use crate::models::inception::{self, Resize};

/// Flags shared by every command that runs Inception.
#[derive(Args, Debug, Clone)]
pub struct InceptionArgs {
    /// FID Inception-V3 weights (pytorch-fid's pt_inception-2015-12-05-6726825d.pth); default:
    /// $LLAMAGEN_EVAL_INCEPTION, else the cache directory.
    #[arg(long, value_name = "FILE")]
    pub inception: Option<PathBuf>,
    /// Preprocessing: `adm` (TF1 bilinear resize; the numbers papers report) or `pytorch-fid`.
    #[arg(long, value_enum, default_value_t = Resize::Adm)]
    pub resize: Resize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Images per Inception forward pass.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,
}

/// Inception weights located and fingerprinted, not yet loaded (loading is skipped when every
/// feature set comes from the cache).
#[derive(Debug, Clone)]
pub struct InceptionWeights {
    pub path: PathBuf,
    pub sha256: String,
}

impl InceptionArgs {
    /// Finds the weights file and hashes it, or says where to get it.
    pub fn locate(&self) -> Result<InceptionWeights> {
        let source = cache::inception_weights(self.inception.clone());
        let path = source.path();
        if !path.is_file() {
            anyhow::bail!(
                "Inception weights not found: {}\n  download {} there, set ${}, or pass --inception FILE",
                source.describe(),
                cache::INCEPTION_WEIGHTS_URL,
                cache::INCEPTION_WEIGHTS_ENV
            );
        }
        let sha256 =
            sha256_file(path).with_context(|| format!("cannot read {}", path.display()))?;
        if !sha256.starts_with(RELEASED_WEIGHTS_SHA256_PREFIX) {
            tracing::warn!(
                "{} (sha256 {}...) is not pytorch-fid's released FID Inception file: figures will not be comparable to published ones",
                path.display(),
                &sha256[..16]
            );
        }
        Ok(InceptionWeights {
            path: path.clone(),
            sha256,
        })
    }

    /// Loads located weights onto the chosen device.
    pub fn load(&self, weights: &InceptionWeights) -> Result<Extractor> {
        let device = self.device.resolve().map_err(anyhow::Error::msg)?;
        let (vs, model) = inception::load(&weights.path, device)?;
        tracing::info!(
            "Inception-V3 loaded from {} on {device:?}",
            weights.path.display()
        );
        Ok(Extractor::new(
            vs,
            model,
            self.resize,
            weights.sha256.clone(),
        ))
    }

    pub fn batch_size(&self) -> usize {
        usize::try_from(self.batch_size).unwrap_or(usize::MAX)
    }
}

/// Features of image files, cached by content: the file's sha256, the preprocessing mode and the
/// Inception weights' sha256 name the cache entry, so a rerun with another reference or metric
/// reuses them and any change to the images or weights does not.
pub struct FeatureCache<'a> {
    dir: PathBuf,
    args: &'a InceptionArgs,
    weights: InceptionWeights,
    extractor: Option<Extractor>,
    quiet: bool,
}

impl<'a> FeatureCache<'a> {
    pub fn new(dir: PathBuf, args: &'a InceptionArgs, quiet: bool) -> Result<Self> {
        Ok(FeatureCache {
            dir,
            weights: args.locate()?,
            args,
            extractor: None,
            quiet,
        })
    }

    pub fn weights(&self) -> &InceptionWeights {
        &self.weights
    }

    /// The features of the images in the npz or folder at `images`, from the cache or freshly
    /// extracted.
    pub fn features(&mut self, images: &Path) -> Result<crate::features::FeatureSet> {
        self.features_of(images, None)
    }

    /// [`Self::features`] with the images centre-cropped to `image_size` (ADM's `center_crop_arr`).
    pub fn features_of(
        &mut self,
        images: &Path,
        image_size: Option<usize>,
    ) -> Result<crate::features::FeatureSet> {
        let content = content_fingerprint(images)?;
        let crop = image_size.map(|s| format!("-crop{s}")).unwrap_or_default();
        let entry = self.dir.join(format!(
            "{}{crop}-{}-{}.npz",
            &content[..24],
            self.args.resize.name(),
            &self.weights.sha256[..12]
        ));
        if entry.is_file() {
            match crate::features::FeatureSet::load(&entry) {
                Ok(features) => {
                    tracing::info!(
                        "features of {} from the cache ({})",
                        images.display(),
                        entry.display()
                    );
                    return Ok(features);
                }
                Err(e) => tracing::warn!("ignoring unreadable cache entry: {e}"),
            }
        }
        // Check the images before spending time on loading the network.
        let mut source = crate::data::open_images(images, image_size, self.args.batch_size())?;
        if self.extractor.is_none() {
            self.extractor = Some(self.args.load(&self.weights)?);
        }
        let extractor = self.extractor.as_ref().context("extractor loaded")?;
        let features = extractor.extract(source.as_mut(), self.args.batch_size(), self.quiet)?;
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create the feature cache {}", self.dir.display()))?;
        features.save(&entry)?;
        Ok(features)
    }
}

/// What identifies a set of images for the cache: a file's sha256; for a folder, the sha256 of its
/// image files' relative paths, sizes and modification times (hashing every image would cost as
/// much as a large part of the evaluation).
pub fn content_fingerprint(images: &Path) -> Result<String> {
    if !images.is_dir() {
        return sha256_file(images).with_context(|| format!("cannot read {}", images.display()));
    }
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for file in crate::data::folder::list_images(images)? {
        let meta =
            std::fs::metadata(&file).with_context(|| format!("cannot read {}", file.display()))?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let relative = file.strip_prefix(images).unwrap_or(&file);
        hasher.update(format!(
            "{}\0{}\0{modified}\n",
            relative.display(),
            meta.len()
        ));
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// Where a run writes: `--out`, else `reports/<--name>`, else `reports/<UTC timestamp>`.
pub fn output_dir(out: Option<&Path>, name: Option<&str>) -> PathBuf {
    match (out, name) {
        (Some(out), _) => out.to_path_buf(),
        (None, Some(name)) => Path::new("reports").join(name),
        (None, None) => Path::new("reports").join(utc_timestamp()),
    }
}

/// `YYYYMMDD-HHMMSS` in UTC, for run folder names.
pub fn utc_timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// The `run` record every report carries: tool version and command line, plus command specifics.
pub fn run_record(extra: impl IntoIterator<Item = (&'static str, Value)>) -> Map<String, Value> {
    let mut run = Map::new();
    run.insert(
        "tool_version".into(),
        Value::from(env!("CARGO_PKG_VERSION")),
    );
    run.insert(
        "command_line".into(),
        Value::from(std::env::args().collect::<Vec<_>>().join(" ")),
    );
    for (key, value) in extra {
        run.insert(key.into(), value);
    }
    run
}

/// A 1-D int64 entry of an npz (such as `indices` or `arr_1`), or `None` when absent.
pub fn read_i64(path: &Path, key: &str) -> Result<Option<Vec<i64>>> {
    let names = npz_entry_names(path)?;
    if !names.iter().any(|n| n == key) {
        return Ok(None);
    }
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut npz = ndarray_npy::NpzReader::new(file)
        .with_context(|| format!("{}: not a readable npz", path.display()))?;
    let array: ndarray::Array1<i64> = npz
        .by_name(key)
        .with_context(|| format!("{}: `{key}` must be a 1-D int64 array", path.display()))?;
    Ok(Some(array.to_vec()))
}

/// Names of the entries of an npz, without `.npy`.
pub fn npz_entry_names(path: &Path) -> Result<Vec<String>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let archive = zip::ZipArchive::new(std::io::BufReader::new(file))
        .with_context(|| format!("{}: not a readable npz (zip) file", path.display()))?;
    Ok(archive
        .file_names()
        .map(|n| n.strip_suffix(".npy").unwrap_or(n).to_string())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_look_right() {
        let t = utc_timestamp();
        assert_eq!(t.len(), 15);
        assert!(t.starts_with("20"));
        assert_eq!(&t[8..9], "-");
    }
}
