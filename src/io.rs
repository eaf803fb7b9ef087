//! File helpers every stage shares: writing atomically (temporary sibling, then rename), listing
//! and reading npz entries, and the ADM statistics file (`mu`, `sigma`, `mu_s`, `sigma_s`).
//!
//! The metric crate stays pure math; everything that touches a file goes through here.

#![warn(missing_docs)]

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use llamagen_metrics::stats::{GaussianStats, ReferenceStats};
use ndarray::{Ix1, Ix2};
use ndarray_npy::{NpzReader, NpzWriter, ReadNpzError};

/// Why a file could not be read or written. Always names the file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct FileError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

impl FileError {
    /// An error about `path`.
    pub fn new(path: &Path, message: impl Into<String>) -> Self {
        FileError {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// `dir/.name.tmp-<pid>` beside `path`, for write-then-rename.
pub fn temporary_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes through `fill` into a temporary sibling of `path`, flushed to disk and renamed into
/// place only when complete; on failure the temporary file is removed.
pub fn write_file_atomically(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<File>) -> std::io::Result<()>,
) -> Result<(), FileError> {
    let tmp = temporary_sibling(path);
    let write = || -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(File::create(&tmp)?);
        fill(&mut out)?;
        out.flush()?;
        out.get_ref().sync_data()?;
        drop(out);
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        FileError::new(path, format!("cannot write: {e}"))
    })
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    write_file_atomically(path, |out| out.write_all(bytes))
}

/// Writes an npz through `fill` into a temporary file beside `path`, renamed into place only when
/// complete; on failure the temporary file is removed and the error says why.
pub fn write_npz_atomically(
    path: &Path,
    fill: impl FnOnce(&mut NpzWriter<File>) -> Result<(), ndarray_npy::WriteNpzError>,
) -> Result<(), FileError> {
    let tmp = temporary_sibling(path);
    let write = || -> Result<(), String> {
        let file =
            File::create(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        let mut npz = NpzWriter::new(file);
        fill(&mut npz).map_err(|e| e.to_string())?;
        let file = npz.finish().map_err(|e| e.to_string())?;
        file.sync_data().map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, path)
            .map_err(|e| format!("cannot move the finished file into place: {e}"))
    };
    write().map_err(|message| {
        let _ = std::fs::remove_file(&tmp);
        FileError::new(path, message)
    })
}

/// Names of the entries of an npz, without `.npy`.
pub fn npz_entry_names(path: &Path) -> Result<Vec<String>, FileError> {
    let file = File::open(path).map_err(|e| FileError::new(path, format!("cannot open: {e}")))?;
    let archive = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| FileError::new(path, format!("not a readable npz (zip) file: {e}")))?;
    Ok(archive
        .file_names()
        .map(|n| n.strip_suffix(".npy").unwrap_or(n).to_string())
        .collect())
}

/// A 1-D int64 entry of an npz (such as `indices` or `arr_1`), or `None` when absent.
pub fn read_i64(path: &Path, key: &str) -> Result<Option<Vec<i64>>, FileError> {
    let names = npz_entry_names(path)?;
    if !names.iter().any(|n| n == key) {
        return Ok(None);
    }
    let file = File::open(path).map_err(|e| FileError::new(path, format!("cannot open: {e}")))?;
    let mut npz = NpzReader::new(file)
        .map_err(|e| FileError::new(path, format!("not a readable npz: {e}")))?;
    let array: ndarray::Array1<i64> = npz
        .by_name(key)
        .map_err(|e| FileError::new(path, format!("`{key}` must be a 1-D int64 array: {e}")))?;
    Ok(Some(array.to_vec()))
}

/// A numpy unicode string entry of an npz (such as `captions`), or `None` when absent.
pub fn read_strings(path: &Path, key: &str) -> Result<Option<Vec<String>>, FileError> {
    let file = File::open(path).map_err(|e| FileError::new(path, format!("cannot open: {e}")))?;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| FileError::new(path, format!("not a readable npz (zip) file: {e}")))?;
    let name = format!("{key}.npy");
    if archive.index_for_name(&name).is_none() {
        return Ok(None);
    }
    let mut entry = archive
        .by_name(&name)
        .map_err(|e| FileError::new(path, format!("cannot read `{key}`: {e}")))?;
    let strings = crate::data::npz::read_npy_header(&mut entry)
        .and_then(|header| crate::data::npz::read_npy_strings(&mut entry, &header))
        .map_err(|e| FileError::new(path, format!("`{key}`: {e}")))?;
    Ok(Some(strings))
}

/// Reads an npz entry stored as f64 or f32, as f64.
pub fn read_f64<D: ndarray::Dimension>(
    npz: &mut NpzReader<File>,
    key: &str,
) -> Result<ndarray::Array<f64, D>, ReadNpzError> {
    match npz.by_name::<ndarray::OwnedRepr<f64>, D>(key) {
        Ok(array) => Ok(array),
        Err(ReadNpzError::Npy(_)) => Ok(npz
            .by_name::<ndarray::OwnedRepr<f32>, D>(key)?
            .mapv(f64::from)),
        Err(e) => Err(e),
    }
}

/// Refuses an output path that is the input itself (writing it would destroy the input before
/// it is read); checked before any work starts.
pub fn ensure_distinct(input: &Path, output: &Path) -> Result<(), FileError> {
    let same = match (std::fs::canonicalize(input), std::fs::canonicalize(output)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        return Err(FileError::new(
            output,
            format!(
                "is the input {} itself: write the output to another file",
                input.display()
            ),
        ));
    }
    Ok(())
}

/// Reads `mu`/`sigma` and `mu_s`/`sigma_s` (f32 or f64) from an npz; other entries are ignored.
pub fn read_reference_stats(path: &Path) -> Result<ReferenceStats, FileError> {
    let mut pairs = read_stats_pairs(path, &[("mu", "sigma"), ("mu_s", "sigma_s")])?.into_iter();
    let pool = pairs.next().flatten();
    let spatial = pairs.next().flatten();
    Ok(ReferenceStats { pool, spatial })
}

/// Gaussian statistics stored as `(mu, sigma)` entry pairs of an npz (f32 or f64), each `None`
/// when both entries are absent.
pub fn read_stats_pairs(
    path: &Path,
    keys: &[(&str, &str)],
) -> Result<Vec<Option<GaussianStats>>, FileError> {
    let file_err = |message: String| FileError::new(path, message);
    let file = File::open(path).map_err(|e| file_err(format!("cannot open: {e}")))?;
    let mut npz =
        NpzReader::new(file).map_err(|e| file_err(format!("not a readable npz file: {e}")))?;
    let names = npz
        .names()
        .map_err(|e| file_err(format!("cannot list entries: {e}")))?;
    let has = |key: &str| {
        names
            .iter()
            .any(|n| n == key || n.strip_suffix(".npy") == Some(key))
    };
    let mut pair = |mu_key: &str, sigma_key: &str| -> Result<Option<GaussianStats>, FileError> {
        match (has(mu_key), has(sigma_key)) {
            (false, false) => Ok(None),
            (true, true) => {
                let mu = read_f64::<Ix1>(&mut npz, mu_key)
                    .map_err(|e| file_err(format!("entry `{mu_key}`: {e}")))?;
                let sigma = read_f64::<Ix2>(&mut npz, sigma_key)
                    .map_err(|e| file_err(format!("entry `{sigma_key}`: {e}")))?;
                GaussianStats::new(mu, sigma)
                    .map(Some)
                    .map_err(|e| file_err(format!("`{mu_key}`/`{sigma_key}`: {e}")))
            }
            (true, false) => Err(file_err(format!("has `{mu_key}` but no `{sigma_key}`"))),
            (false, true) => Err(file_err(format!("has `{sigma_key}` but no `{mu_key}`"))),
        }
    };
    keys.iter()
        .map(|(mu_key, sigma_key)| pair(mu_key, sigma_key))
        .collect()
}

/// Writes statistics as an ADM-compatible npz (f64 arrays), atomically.
pub fn write_reference_stats(stats: &ReferenceStats, path: &Path) -> Result<(), FileError> {
    write_npz_atomically(path, |npz| {
        for (stats, mu_key, sigma_key) in [
            (&stats.pool, "mu", "sigma"),
            (&stats.spatial, "mu_s", "sigma_s"),
        ] {
            if let Some(stats) = stats {
                npz.add_array(mu_key, &stats.mu)?;
                npz.add_array(sigma_key, &stats.sigma)?;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn statistics_round_trip_without_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ref.npz");
        let x = array![[1.0, 2.0], [2.0, 0.5], [4.0, 1.0]];
        let stats = ReferenceStats {
            pool: Some(GaussianStats::from_features(x.view()).unwrap()),
            spatial: None,
        };
        write_reference_stats(&stats, &path).unwrap();
        let back = read_reference_stats(&path).unwrap();
        assert!(back.spatial.is_none());
        let (a, b) = (back.pool.unwrap(), stats.pool.unwrap());
        assert_eq!(a.mu, b.mu);
        assert_eq!(a.sigma, b.sigma);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left behind"
        );
        assert_eq!(npz_entry_names(&path).unwrap(), ["mu", "sigma"]);
    }

    #[test]
    fn atomic_write_replaces_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_atomically(&path, b"first").unwrap();
        write_atomically(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let missing = dir.path().join("no/such/dir/x");
        let err = write_atomically(&missing, b"x").unwrap_err();
        assert!(err.to_string().contains("x: cannot write"), "{err}");
    }
}
