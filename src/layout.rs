//! Where a job keeps what it writes beside its outputs: the only code that names the journal
//! folder, the parts folder of a launched job, the ranks' manifest and part files, and a sweep's
//! run folders. The CLI, the jobs, `merge OUT_DIR` and `report` all ask a [`RunLayout`], so the
//! names cannot drift apart.
//!
//! A run folder (`fid`, `recon`, a sweep's scale) keeps `<dir>/.journal/` and `<dir>/.parts/`; a
//! single output file (`sample`, `features`, `stats`) keeps `<file>.journal/` and
//! `<file>.parts/` beside it.
//!
//! One writer per output: [`RunLayout::lock`] takes an exclusive `flock` on a lock file inside
//! the run folder (`<dir>/.lock`) or beside the output file (`<file>.lock`) for the whole run, so
//! a second run on the same output refuses at once, naming the holder's pid and host, and
//! touches nothing. The kernel releases the lock when its holder dies, so a lock file left by a
//! killed run is taken over. The ranks of a launched job lock apart: rank 0, which writes the
//! outputs, holds `.lock`; rank `r` holds `.rank-<r>.lock` beside it for its own part.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const JOURNAL: &str = ".journal";
const PARTS: &str = ".parts";
const RANK_PREFIX: &str = "rank-";
const MANIFEST_SUFFIX: &str = ".json";
const SCALE_PREFIX: &str = "cfg-";
const LOCK: &str = ".lock";

/// The places of one job's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunLayout {
    output: PathBuf,
    journal: PathBuf,
    parts: PathBuf,
}

impl RunLayout {
    /// A job whose output is the folder `dir`.
    pub fn folder(dir: &Path) -> Self {
        RunLayout {
            output: dir.to_path_buf(),
            journal: dir.join(JOURNAL),
            parts: dir.join(PARTS),
        }
    }

    /// A job whose output is the file `file`.
    pub fn file(file: &Path) -> Self {
        RunLayout {
            output: file.to_path_buf(),
            journal: sibling(file, JOURNAL),
            parts: sibling(file, PARTS),
        }
    }

    /// The layout whose parts folder is `parts`, if `parts` is named as one (`<dir>/.parts` or
    /// `<file>.parts`).
    pub fn of_parts(parts: &Path) -> Option<Self> {
        if parts.file_name().is_some_and(|n| n == PARTS) {
            return parts.parent().map(Self::folder);
        }
        let file = parts.to_str()?.strip_suffix(PARTS)?;
        Some(Self::file(Path::new(file)))
    }

    /// The output (run folder or file).
    pub fn output(&self) -> &Path {
        &self.output
    }

    /// The journal folder of a process on its own, and the folder holding the ranks' journals.
    pub fn journal(&self) -> &Path {
        &self.journal
    }

    /// The journal of `rank` in a job of `world_size` processes: the journal folder itself for a
    /// process on its own, else `rank-<r>/` inside it.
    pub fn rank_journal(&self, rank: usize, world_size: usize) -> PathBuf {
        if world_size > 1 {
            self.journal.join(format!("{RANK_PREFIX}{rank}"))
        } else {
            self.journal.clone()
        }
    }

    /// The parts folder of a launched job.
    pub fn parts(&self) -> &Path {
        &self.parts
    }

    /// The manifest that completes `rank`'s part.
    pub fn manifest(&self, rank: usize) -> PathBuf {
        self.parts.join(manifest_name(rank))
    }

    /// The name of `rank`'s part file of `kind` (`features`, `samples`, `grid`, ...).
    pub fn part_file_name(rank: usize, kind: &str) -> String {
        format!("{RANK_PREFIX}{rank}.{kind}.npz")
    }

    /// `rank`'s part file of `kind`.
    pub fn part_file(&self, rank: usize, kind: &str) -> PathBuf {
        self.parts.join(Self::part_file_name(rank, kind))
    }

    /// The lock file of `rank` (see the module docs): `.lock` for rank 0 (or a process on its
    /// own), `.rank-<r>.lock` for another rank of a launched job.
    pub fn lock_file(&self, rank: usize) -> PathBuf {
        let name = if rank == 0 {
            LOCK.to_owned()
        } else {
            format!(".{RANK_PREFIX}{rank}{LOCK}")
        };
        if self.journal.parent() == Some(self.output.as_path()) {
            self.output.join(name)
        } else {
            sibling(&self.output, &name)
        }
    }

    /// Takes `rank`'s exclusive lock on the output for as long as the returned guard lives (see
    /// the module docs); another live holder is refused with [`LockError::Held`], before anything
    /// is written.
    pub fn lock(&self, rank: usize) -> Result<OutputLock, LockError> {
        OutputLock::take(&self.output, self.lock_file(rank))
    }

    /// The run folder of CFG scale `scale` in the sweep folder `self` (a folder layout).
    pub fn scale_run(&self, scale: f64) -> RunLayout {
        RunLayout::folder(&self.output.join(format!("{SCALE_PREFIX}{scale}")))
    }

    /// The run folders of the scales in the sweep folder `self`, sorted by name.
    pub fn scale_runs(&self) -> Vec<RunLayout> {
        let Ok(entries) = std::fs::read_dir(&self.output) else {
            return Vec::new();
        };
        let mut runs: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.is_dir()
                    && p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(SCALE_PREFIX))
            })
            .collect();
        runs.sort();
        runs.iter().map(|p| RunLayout::folder(p)).collect()
    }
}

/// How the manifests are named, for messages.
pub const MANIFEST_PATTERN: &str = "rank-<r>.json";

/// The manifest file name of `rank`.
pub fn manifest_name(rank: usize) -> String {
    format!("{RANK_PREFIX}{rank}{MANIFEST_SUFFIX}")
}

/// The rank whose manifest is named `name`, if it is one.
pub fn manifest_rank(name: &str) -> Option<usize> {
    name.strip_prefix(RANK_PREFIX)?
        .strip_suffix(MANIFEST_SUFFIX)?
        .parse()
        .ok()
}

/// Whether `name` is one of `rank`'s files in a parts folder (its manifest or a part file).
pub fn is_rank_file(name: &str, rank: usize) -> bool {
    name.starts_with(&format!("{RANK_PREFIX}{rank}."))
}

/// The journal of an extraction into the cache entry `entry`: `entry` with the extension
/// `journal` instead of its own.
pub fn entry_journal(entry: &Path) -> PathBuf {
    entry.with_extension(&JOURNAL[1..])
}

/// `path` with `suffix` appended to its file name (`out.npz` -> `out.npz.journal`).
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Why an output could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live process holds the output.
    #[error("{}: another run is writing this output ({holder}; lock file {}): wait for it to finish, or give another --out", output.display(), lock.display())]
    Held {
        /// The output (run folder or file).
        output: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// `pid <pid> on <host>`, as the holder wrote it.
        holder: String,
    },
    /// The lock file could not be made or locked.
    #[error("{}: cannot lock the output: {source}; check that its folder is writable", lock.display())]
    Io {
        /// The lock file.
        lock: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// An exclusive hold on an output (see the module docs); released, and its lock file removed,
/// when dropped.
#[derive(Debug)]
pub struct OutputLock {
    lock: PathBuf,
    file: Option<File>,
    made_folder: Option<PathBuf>,
}

impl OutputLock {
    fn take(output: &Path, lock: PathBuf) -> Result<Self, LockError> {
        let io = |source| LockError::Io {
            lock: lock.clone(),
            source,
        };
        let folder = match lock.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let made_folder = if folder.exists() {
            None
        } else {
            std::fs::create_dir_all(&folder).map_err(io)?;
            Some(folder)
        };
        let mut guard = OutputLock {
            lock: lock.clone(),
            file: None,
            made_folder,
        };
        loop {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&lock)
                .map_err(io)?;
            match try_flock(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    let holder = match holder.trim() {
                        "" => "a process that has not yet written its pid".to_owned(),
                        text => text.chars().take(200).collect(),
                    };
                    // Nothing of ours to undo: the file and its folder are the holder's.
                    guard.made_folder = None;
                    return Err(LockError::Held {
                        output: output.to_path_buf(),
                        lock,
                        holder,
                    });
                }
                Err(e) if unsupported(&e) => {
                    tracing::warn!(
                        "{}: this filesystem does not support flock ({e}): nothing stops a second run from writing the same output",
                        lock.display()
                    );
                    guard.file = Some(file);
                    return Ok(guard);
                }
                Err(e) => return Err(io(e)),
            }
            // A holder that finished removed the file after we opened it: lock the new one.
            let same = match (std::fs::metadata(&lock), file.metadata()) {
                (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                _ => false,
            };
            if !same {
                continue;
            }
            file.set_len(0).map_err(io)?;
            file.write_all(format!("pid {} on {}\n", std::process::id(), host_name()).as_bytes())
                .map_err(io)?;
            guard.file = Some(file);
            return Ok(guard);
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.lock
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        if self.file.is_some() {
            // Removed while still held: a process that opened it meanwhile sees another inode
            // than the path's once it gets the lock, and locks afresh.
            let _ = std::fs::remove_file(&self.lock);
        }
        self.file = None;
        if let Some(folder) = &self.made_folder {
            // Only when the run left it empty (it failed before writing anything).
            let _ = std::fs::remove_dir(folder);
        }
    }
}

/// An exclusive `flock` on `file`, without waiting (`WouldBlock` while another holds it).
fn try_flock(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: the descriptor is `file`'s, open for the whole call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) | Some(libc::ENOLCK)
    ) || e.kind() == std::io::ErrorKind::Unsupported
}

/// This machine's host name (the lock files' holder line, the ranks' records).
pub fn host_name() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length, which is what we pass.
    let rc = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_and_files_keep_their_parts_apart() {
        let run = RunLayout::folder(Path::new("runs/a"));
        assert_eq!(run.journal(), Path::new("runs/a/.journal"));
        assert_eq!(run.manifest(2), Path::new("runs/a/.parts/rank-2.json"));
        assert_eq!(run.rank_journal(0, 1), Path::new("runs/a/.journal"));
        assert_eq!(run.rank_journal(1, 3), Path::new("runs/a/.journal/rank-1"));
        let file = RunLayout::file(Path::new("out/s.npz"));
        assert_eq!(file.parts(), Path::new("out/s.npz.parts"));
        assert_eq!(
            file.part_file(0, "grid"),
            Path::new("out/s.npz.parts/rank-0.grid.npz")
        );
        assert_eq!(RunLayout::of_parts(file.parts()), Some(file));
        assert_eq!(RunLayout::of_parts(run.parts()), Some(run.clone()));
        assert_eq!(run.scale_run(1.5).output(), Path::new("runs/a/cfg-1.5"));
    }

    #[test]
    fn a_second_lock_on_one_output_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let run = RunLayout::folder(&dir.path().join("run"));
        let held = run.lock(0).expect("the first lock");
        assert_eq!(held.path(), dir.path().join("run/.lock"));
        let err = run.lock(0).expect_err("a second writer");
        let text = err.to_string();
        assert!(
            text.contains(&format!("pid {} on ", std::process::id())),
            "{text}"
        );
        // Another rank of the same job locks apart.
        let rank1 = run.lock(1).expect("rank 1's own lock");
        assert_eq!(rank1.path(), dir.path().join("run/.rank-1.lock"));
        drop(rank1);
        drop(held);
        assert!(
            !dir.path().join("run").exists(),
            "an empty folder it made is removed"
        );
        let file = RunLayout::file(&dir.path().join("s.npz"));
        let lock = file.lock(0).expect("a file output's lock");
        assert_eq!(lock.path(), dir.path().join("s.npz.lock"));
        assert!(file.lock(0).is_err());
        drop(lock);
        assert!(file.lock(0).is_ok(), "released on drop");
    }

    #[test]
    fn manifest_names_round_trip() {
        assert_eq!(manifest_rank(&manifest_name(12)), Some(12));
        assert_eq!(manifest_rank("rank-1.features.npz"), None);
        assert!(is_rank_file("rank-3.samples.npz", 3));
        assert!(!is_rank_file("rank-31.json", 3));
    }
}
