//! Where a job keeps what it writes beside its outputs: the only code that names the journal
//! folder, the parts folder of a launched job, the ranks' manifest and part files, and a sweep's
//! run folders. The CLI, the jobs, `merge OUT_DIR` and `report` all ask a [`RunLayout`], so the
//! names cannot drift apart.
//!
//! A run folder (`fid`, `recon`, a sweep's scale) keeps `<dir>/.journal/` and `<dir>/.parts/`; a
//! single output file (`sample`, `features`, `stats`) keeps `<file>.journal/` and
//! `<file>.parts/` beside it.

use std::path::{Path, PathBuf};

const JOURNAL: &str = ".journal";
const PARTS: &str = ".parts";
const RANK_PREFIX: &str = "rank-";
const MANIFEST_SUFFIX: &str = ".json";
const SCALE_PREFIX: &str = "cfg-";

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
    fn manifest_names_round_trip() {
        assert_eq!(manifest_rank(&manifest_name(12)), Some(12));
        assert_eq!(manifest_rank("rank-1.features.npz"), None);
        assert!(is_rank_file("rank-3.samples.npz", 3));
        assert!(!is_rank_file("rank-31.json", 3));
    }
}
