//! Where llamagen-eval looks for the feature networks' weight files (downloaded by hand: flag, environment
//! variable, then the cache folder) and where that cache folder is; the features cached by content
//! live in [`crate::pipeline::feature_cache`].

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

/// A feature network's weights file: the flag and environment variable that name it, its
/// released file name in the cache directory, and where it is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkFile {
    /// The network, as errors name it.
    pub network: &'static str,
    /// The command-line flag.
    pub flag: &'static str,
    /// The environment variable.
    pub env: &'static str,
    /// The released file's name, looked for in the cache directory.
    pub file: &'static str,
    /// Where users can download it.
    pub url: &'static str,
}

/// pytorch-fid's FID Inception-V3.
pub const INCEPTION_FILE: NetworkFile = NetworkFile {
    network: "Inception",
    flag: "--inception",
    env: INCEPTION_WEIGHTS_ENV,
    file: INCEPTION_WEIGHTS_FILE,
    url: INCEPTION_WEIGHTS_URL,
};

/// facebookresearch/dinov2's ViT-L/14 (the FD_DINOv2 network of dgm-eval).
pub const DINOV2_FILE: NetworkFile = NetworkFile {
    network: "DINOv2",
    flag: "--dinov2",
    env: "LLAMAGEN_EVAL_DINOV2",
    file: "dinov2_vitl14_pretrain.pth",
    url: "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth",
};

/// OpenAI's CLIP ViT-L/14@336 (the CMMD network); Hugging Face's
/// `openai/clip-vit-large-patch14-336` `model.safetensors` works as well.
pub const CLIP_FILE: NetworkFile = NetworkFile {
    network: "CLIP",
    flag: "--clip",
    env: "LLAMAGEN_EVAL_CLIP",
    file: "ViT-L-14-336px.pt",
    url: "https://openaipublic.azureedge.net/clip/models/3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
};

/// Where a network's weights come from, in the order they are tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsSource {
    /// Given on the command line (`--inception`, `--dinov2`, `--clip`).
    Flag(PathBuf, NetworkFile),
    /// Named by the network's environment variable.
    Env(PathBuf, NetworkFile),
    /// The released file name in the cache directory.
    Cache(PathBuf, NetworkFile),
}

impl WeightsSource {
    /// The weights file, whichever source named it.
    pub fn path(&self) -> &PathBuf {
        match self {
            WeightsSource::Flag(p, _) | WeightsSource::Env(p, _) | WeightsSource::Cache(p, _) => p,
        }
    }

    /// The path with where it came from, for `doctor` and error messages.
    pub fn describe(&self) -> String {
        match self {
            WeightsSource::Flag(p, f) => format!("{} (from {})", p.display(), f.flag),
            WeightsSource::Env(p, f) => format!("{} (from ${})", p.display(), f.env),
            WeightsSource::Cache(p, _) => format!("{} (cache directory)", p.display()),
        }
    }

    /// Which network's file it is.
    pub fn file(&self) -> &NetworkFile {
        match self {
            WeightsSource::Flag(_, f) | WeightsSource::Env(_, f) | WeightsSource::Cache(_, f) => f,
        }
    }

    /// The error when the file is not there: where it was looked for and how to provide it.
    pub fn missing(&self) -> String {
        let file = self.file();
        format!(
            "{} weights not found: {}\n  download {} ({}) there, set ${}, or pass {} FILE",
            file.network,
            self.describe(),
            file.file,
            file.url,
            file.env,
            file.flag
        )
    }
}

/// Resolves a network's weights: its flag, then its environment variable, then the cache.
pub fn network_weights(file: NetworkFile, flag: Option<PathBuf>) -> WeightsSource {
    if let Some(path) = flag {
        return WeightsSource::Flag(path, file);
    }
    if let Some(path) = non_empty_env(file.env) {
        return WeightsSource::Env(PathBuf::from(path), file);
    }
    WeightsSource::Cache(cache_dir().join(file.file), file)
}

/// Resolves the Inception weights location: `--inception`, then the environment, then the cache.
pub fn inception_weights(flag: Option<PathBuf>) -> WeightsSource {
    network_weights(INCEPTION_FILE, flag)
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
        assert_eq!(
            source,
            WeightsSource::Flag(PathBuf::from("/x/w.pth"), INCEPTION_FILE)
        );
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
