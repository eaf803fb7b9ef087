//! Where llamagen-eval keeps downloaded-by-hand weights and cached features.

use std::path::PathBuf;

/// Environment variable that overrides the cache directory.
pub const CACHE_DIR_ENV: &str = "LLAMAGEN_EVAL_CACHE";
/// Environment variable naming the FID Inception-V3 weights file.
pub const INCEPTION_WEIGHTS_ENV: &str = "LLAMAGEN_EVAL_INCEPTION";
/// File name of the FID Inception-V3 weights released with pytorch-fid.
pub const INCEPTION_WEIGHTS_FILE: &str = "pt_inception-2015-12-05-6726825d.pth";
/// Where users can download [`INCEPTION_WEIGHTS_FILE`] (pytorch-fid's release).
pub const INCEPTION_WEIGHTS_URL: &str =
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth";

/// The cache directory: `$LLAMAGEN_EVAL_CACHE`, else `$XDG_CACHE_HOME/llamagen-eval`,
/// else `~/.cache/llamagen-eval`, else `.llamagen-eval-cache` in the working directory.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = non_empty_env(CACHE_DIR_ENV) {
        return PathBuf::from(dir);
    }
    if let Some(xdg) = non_empty_env("XDG_CACHE_HOME") {
        return PathBuf::from(xdg).join("llamagen-eval");
    }
    match non_empty_env("HOME") {
        Some(home) => PathBuf::from(home).join(".cache").join("llamagen-eval"),
        None => PathBuf::from(".llamagen-eval-cache"),
    }
}

/// Where the Inception weights come from, in the order they are tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsSource {
    /// Given on the command line (`--inception`).
    Flag(PathBuf),
    /// Named by [`INCEPTION_WEIGHTS_ENV`].
    Env(PathBuf),
    /// The default file in the cache directory.
    Cache(PathBuf),
}

impl WeightsSource {
    /// The weights file, whichever source named it.
    pub fn path(&self) -> &PathBuf {
        match self {
            WeightsSource::Flag(p) | WeightsSource::Env(p) | WeightsSource::Cache(p) => p,
        }
    }

    /// The path with where it came from, for `doctor` and error messages.
    pub fn describe(&self) -> String {
        match self {
            WeightsSource::Flag(p) => format!("{} (from --inception)", p.display()),
            WeightsSource::Env(p) => format!("{} (from ${INCEPTION_WEIGHTS_ENV})", p.display()),
            WeightsSource::Cache(p) => format!("{} (cache directory)", p.display()),
        }
    }
}

/// Resolves the Inception weights location: `--inception`, then the environment, then the cache.
pub fn inception_weights(flag: Option<PathBuf>) -> WeightsSource {
    if let Some(path) = flag {
        return WeightsSource::Flag(path);
    }
    if let Some(path) = non_empty_env(INCEPTION_WEIGHTS_ENV) {
        return WeightsSource::Env(PathBuf::from(path));
    }
    WeightsSource::Cache(cache_dir().join(INCEPTION_WEIGHTS_FILE))
}

fn non_empty_env(name: &str) -> Option<std::ffi::OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_wins_over_everything() {
        let source = inception_weights(Some(PathBuf::from("/x/w.pth")));
        assert_eq!(source, WeightsSource::Flag(PathBuf::from("/x/w.pth")));
        assert!(source.describe().contains("--inception"));
    }

    #[test]
    fn default_file_name_is_pytorch_fid_release() {
        if std::env::var_os(INCEPTION_WEIGHTS_ENV).is_none() {
            let source = inception_weights(None);
            assert!(source.path().ends_with(INCEPTION_WEIGHTS_FILE));
        }
    }
}
