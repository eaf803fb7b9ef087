//! File helpers every stage shares: writing atomically (temporary sibling, then rename), listing
//! and reading npz entries, and the ADM statistics file (`mu`, `sigma`, `mu_s`, `sigma_s`).
//!
//! The metric crate stays pure math; everything that touches a file goes through here.

#![warn(missing_docs)]

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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

/// `dir/.name.tmp-<pid>` beside `path`, for write-then-rename. Temporaries of the same file left
/// by processes that no longer run (killed mid-write: a 50,000-image npz is gigabytes) are
/// removed first.
pub fn temporary_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!(".{name}.tmp-");
    remove_stale_temporaries(path, &prefix);
    path.with_file_name(format!("{prefix}{}", std::process::id()))
}

/// The sha256 of the file `path`, in hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// The sha256 of the file `path` (hex) as the content identity of an input that decides a
/// result (a checkpoint, a caption file), hashed once per process: kept by path, size and
/// modification time, so a file replaced meanwhile is hashed again.
pub fn content_sha256(path: &Path) -> std::io::Result<String> {
    type Seen = std::collections::HashMap<(PathBuf, u64, Option<std::time::SystemTime>), String>;
    static SEEN: std::sync::OnceLock<std::sync::Mutex<Seen>> = std::sync::OnceLock::new();
    let meta = std::fs::metadata(path)?;
    let key = (path.to_path_buf(), meta.len(), meta.modified().ok());
    let seen = SEEN.get_or_init(Default::default);
    let known = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&key)
        .cloned();
    if let Some(sha256) = known {
        return Ok(sha256);
    }
    let sha256 = sha256_file(path)?;
    seen.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(key, sha256.clone());
    Ok(sha256)
}

/// Removes `prefix<pid>` siblings of `path` whose process is gone.
fn remove_stale_temporaries(path: &Path, prefix: &str) {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        if pid > 0 && !process_alive(pid) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!(
                    "removed {}, left by process {pid} that no longer runs",
                    entry.path().display()
                ),
                Err(e) => tracing::warn!("cannot remove {}: {e}", entry.path().display()),
            }
        }
    }
}

/// Whether process `pid` exists on this machine (signal 0 checks without sending anything).
fn process_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only asks whether the process exists.
    let status = unsafe { libc::kill(pid, 0) };
    status == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
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
    fill: impl FnOnce(&mut NpzWriter<Abandonable>) -> Result<(), ndarray_npy::WriteNpzError>,
) -> Result<(), FileError> {
    let tmp = temporary_sibling(path);
    let file = File::create(&tmp)
        .map_err(|e| FileError::new(path, format!("cannot create {}: {e}", tmp.display())))?;
    let (file, abandoned) = Abandonable::new(file);
    let mut npz = NpzWriter::new(file);
    let write = || -> Result<(), String> {
        fill(&mut npz).map_err(|e| e.to_string())?;
        let file = npz.finish().map_err(|e| e.to_string())?;
        file.file.sync_data().map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, path)
            .map_err(|e| format!("cannot move the finished file into place: {e}"))
    };
    write().map_err(|message| {
        abandoned.store(true, Ordering::Relaxed);
        let _ = std::fs::remove_file(&tmp);
        FileError::new(path, message)
    })
}

/// A temporary file under a zip writer. A `ZipWriter` dropped unfinished completes the
/// archive in its destructor and prints any failure to stderr ("ZipWriter drop failed" on a full
/// disk); once the writer is abandoned (its temporary file already removed), this file turns into
/// a sink that only keeps the position, so that completion writes nothing and cannot fail.
pub struct Abandonable {
    file: File,
    abandoned: Arc<AtomicBool>,
    position: u64,
    end: u64,
}

impl Abandonable {
    /// Wraps `file`; storing `true` in the returned flag abandons it.
    pub(crate) fn new(file: File) -> (Self, Arc<AtomicBool>) {
        let abandoned = Arc::new(AtomicBool::new(false));
        let wrapped = Abandonable {
            file,
            abandoned: Arc::clone(&abandoned),
            position: 0,
            end: 0,
        };
        (wrapped, abandoned)
    }

    fn is_abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Relaxed)
    }
}

impl Write for Abandonable {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = if self.is_abandoned() {
            buf.len()
        } else {
            self.file.write(buf)?
        };
        self.position += written as u64;
        self.end = self.end.max(self.position);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.is_abandoned() {
            Ok(())
        } else {
            self.file.flush()
        }
    }
}

impl Seek for Abandonable {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.position = if self.is_abandoned() {
            let offset = |base: u64, delta: i64| {
                base.checked_add_signed(delta)
                    .ok_or_else(|| std::io::Error::other("seek before the start"))
            };
            match to {
                SeekFrom::Start(at) => at,
                SeekFrom::Current(delta) => offset(self.position, delta)?,
                SeekFrom::End(delta) => offset(self.end, delta)?,
            }
        } else {
            self.file.seek(to)?
        };
        self.end = self.end.max(self.position);
        Ok(self.position)
    }
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

/// Opens an npz for reading its arrays, after checking every entry's npy header against what the
/// entry holds and the input memory budget ([`crate::budget`]): a header that claims more
/// elements than the file can hold, or more bytes than the budget, is refused here, before the
/// array reader allocates from it.
pub fn open_npz(path: &Path) -> Result<NpzReader<File>, FileError> {
    let file = File::open(path).map_err(|e| FileError::new(path, format!("cannot open: {e}")))?;
    let file_size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(&file))
        .map_err(|e| FileError::new(path, format!("not a readable npz (zip) file: {e}")))?;
    let allowance = crate::budget::allowance(file_size);
    let mut claimed_total: u64 = 0;
    for index in 0..archive.len() {
        let mut entry = archive
            .by_index(index)
            .map_err(|e| FileError::new(path, format!("unreadable npz entry {index}: {e}")))?;
        let name = entry.name().trim_end_matches(".npy").to_string();
        let stored = entry.size();
        let header = crate::data::npz::read_npy_header(&mut entry)
            .map_err(|m| FileError::new(path, format!("entry `{name}`: {m}")))?;
        let claimed = npy_data_bytes(&header).ok_or_else(|| {
            FileError::new(
                path,
                format!(
                    "entry `{name}` claims an impossible size: shape {:?} of {}",
                    header.shape, header.descr
                ),
            )
        })?;
        if claimed > stored {
            return Err(FileError::new(
                path,
                format!(
                    "entry `{name}` is truncated or corrupt: its header claims shape {:?} of {} ({}) but the entry holds {}",
                    header.shape,
                    header.descr,
                    crate::budget::human_bytes(claimed),
                    crate::budget::human_bytes(stored)
                ),
            ));
        }
        claimed_total = claimed_total.saturating_add(claimed);
        if claimed_total > allowance {
            return Err(FileError::new(
                path,
                format!(
                    "entry `{name}` (shape {:?} of {}) brings the arrays to {}, over {}; {}",
                    header.shape,
                    header.descr,
                    crate::budget::human_bytes(claimed_total),
                    crate::budget::human_bytes(allowance),
                    crate::budget::how_to_raise()
                ),
            ));
        }
    }
    drop(archive);
    let file = File::open(path).map_err(|e| FileError::new(path, format!("cannot open: {e}")))?;
    NpzReader::new(file).map_err(|e| FileError::new(path, format!("not a readable npz file: {e}")))
}

/// The data bytes an npy header describes (`None` on overflow): the element count times the
/// dtype's item size (`<f8` 8, `|u1` 1, `<U10` 40, ...).
fn npy_data_bytes(header: &crate::data::npz::NpyHeader) -> Option<u64> {
    let descr = header.descr.as_str();
    let kind_at = descr.find(|c: char| c.is_ascii_alphabetic())?;
    let digits = &descr[kind_at + 1..];
    let count: u64 = if digits.is_empty() {
        8
    } else {
        digits.parse().ok()?
    };
    let item = if descr[kind_at..].starts_with('U') {
        count.checked_mul(4)?
    } else {
        count
    };
    header
        .shape
        .iter()
        .try_fold(item, |bytes, &d| bytes.checked_mul(d as u64))
}

/// A 1-D int64 entry of an npz (such as `indices` or `arr_1`), or `None` when absent.
pub fn read_i64(path: &Path, key: &str) -> Result<Option<Vec<i64>>, FileError> {
    let names = npz_entry_names(path)?;
    if !names.iter().any(|n| n == key) {
        return Ok(None);
    }
    let mut npz = open_npz(path)?;
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

/// Checks, before any long work, that `path` can be written as an output file: it is not a
/// folder (nor written as one, `out/`), and its folder (or, when that does not exist yet, the
/// nearest folder above it, where it will be created) is a folder a file can be created in.
/// Without this, a run could do all its work and fail at the end. Creates nothing.
pub fn check_output_file(path: &Path) -> Result<(), FileError> {
    let text = path.as_os_str().as_encoded_bytes();
    if path.is_dir() || text.ends_with(b"/") || path.file_name().is_none() {
        return Err(FileError::new(
            path,
            "is a folder: give a file name for the output (such as samples.npz inside it)",
        ));
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    check_writable_folder(parent).map_err(|message| FileError::new(path, message))
}

/// `path` from the filesystem root (relative to the working directory as it is now), so that it
/// names the same file from another working directory; `path` itself when that cannot be told.
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Checks, before any long work, that `dir` can be a run's output folder: not an existing file,
/// and writable (or creatable in the nearest existing folder above it). Creates nothing.
pub fn check_output_dir(dir: &Path) -> Result<(), FileError> {
    if dir.exists() && !dir.is_dir() {
        return Err(FileError::new(
            dir,
            "is a file, but the output is a folder (metrics.json, metrics.csv, ...): give a folder name",
        ));
    }
    check_writable_folder(dir).map_err(|message| FileError::new(dir, message))
}

/// `dir`, or the nearest existing folder above it, is a folder where files can be created.
fn check_writable_folder(dir: &Path) -> Result<(), String> {
    let existing = dir
        .ancestors()
        .find(|a| a.as_os_str().is_empty() || a.exists())
        .map(|a| {
            if a.as_os_str().is_empty() {
                Path::new(".")
            } else {
                a
            }
        })
        .unwrap_or(Path::new("."));
    if !existing.is_dir() {
        return Err(format!(
            "cannot be created: {} is a file, not a folder",
            existing.display()
        ));
    }
    let probe = existing.join(format!(".write-probe-{}", std::process::id()));
    File::create(&probe)
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| format!("cannot write into {}: {e}", existing.display()))
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
    let mut npz = open_npz(path)?;
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
    fn temporaries_of_gone_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.npz");
        // pid_max is at most 2^22 on Linux: this process cannot exist.
        let stale = dir.path().join(".out.npz.tmp-2147483000");
        let live = dir
            .path()
            .join(format!(".out.npz.tmp-{}", std::process::id()));
        let other = dir.path().join(".other.npz.tmp-2147483000");
        for p in [&stale, &live, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        assert_eq!(temporary_sibling(&out), live);
        assert!(!stale.exists());
        assert!(live.exists() && other.exists());
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
