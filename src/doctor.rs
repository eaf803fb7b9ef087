//! `llamagen-eval doctor`: what this installation can do, and where it looks for things.

use std::fmt::Write as _;

use crate::feature_set::{is_released_inception, sha256_file};
use crate::{device, weight_files};

/// Facts about the runtime, gathered once so they can be printed or tested.
#[derive(Debug, Clone)]
pub struct Report {
    /// This crate's version (`CARGO_PKG_VERSION`).
    pub tool_version: &'static str,
    /// The torch version of the libtorch built against, read from its `version.py` at build time.
    pub libtorch_version: &'static str,
    /// The directory of the libtorch the process runs on (the one baked into the rpath at build
    /// time, unless `LD_LIBRARY_PATH` chose another).
    pub libtorch_lib: std::path::PathBuf,
    /// Whether libtorch sees a usable CUDA runtime and GPU.
    pub cuda_available: bool,
    /// Number of CUDA devices (`--device cuda:N` needs `N` below it).
    pub cuda_devices: i64,
    /// Whether cuDNN is available to libtorch.
    pub cudnn_available: bool,
    /// Each CUDA device as logs name it, with its free and total memory in bytes.
    pub gpus: Vec<(String, Option<u64>)>,
    /// The CUDA versions the driver supports and libtorch's runtime was built for.
    pub cuda_versions: (Option<String>, Option<String>),
    /// Why CUDA is unusable while an NVIDIA device is present, and what to do.
    pub cuda_problem: Option<String>,
    /// libtorch's intra-op CPU threads.
    pub torch_threads: i32,
    /// Threads of the rayon pool (image folders and metric code).
    pub rayon_threads: usize,
    /// The linked BLAS library's self-description (the metrics' matrix products).
    pub blas_backend: String,
    /// OpenBLAS threads of one call outside the parallel metric kernels (factorisations).
    pub blas_threads: usize,
    /// OpenBLAS threads of one call inside the rayon-parallel metric kernels.
    pub kernel_blas_threads: usize,
    /// Where weights and cached features are looked for ([`weight_files::cache_dir`]).
    pub cache_dir: std::path::PathBuf,
    /// Where the FID Inception weights would be taken from.
    pub inception: weight_files::WeightsSource,
    /// The sha256 of that file, when it is there and readable.
    pub inception_sha256: Option<String>,
    /// Where DINOv2's and CLIP's weights would be taken from (`--features dinov2,clip`).
    pub extra_networks: [weight_files::WeightsSource; 2],
}

impl Report {
    /// Collects the facts; `inception_flag` is `--inception`, which wins over the environment.
    pub fn gather(inception_flag: Option<std::path::PathBuf>) -> Self {
        let inception = weight_files::inception_weights(inception_flag);
        let inception_sha256 = sha256_file(inception.path()).ok();
        Report {
            tool_version: env!("CARGO_PKG_VERSION"),
            libtorch_version: env!("LLAMAGEN_LIBTORCH_VERSION"),
            libtorch_lib: device::libtorch_dir(),
            cuda_available: crate::device::load_cuda() && tch::Cuda::is_available(),
            cuda_devices: tch::Cuda::device_count(),
            cudnn_available: tch::Cuda::cudnn_is_available(),
            gpus: (0..usize::try_from(tch::Cuda::device_count()).unwrap_or(0))
                .map(|n| {
                    let d = tch::Device::Cuda(n);
                    (device::describe(d), device::free_memory(d))
                })
                .collect(),
            cuda_versions: device::cuda_versions(),
            cuda_problem: device::cuda_problem(),
            torch_threads: tch::get_num_threads(),
            rayon_threads: rayon::current_num_threads(),
            blas_backend: llamagen_metrics::blas::backend_description(),
            blas_threads: llamagen_metrics::linalg::thread_counts().2,
            kernel_blas_threads: llamagen_metrics::linalg::thread_counts().1,
            cache_dir: weight_files::cache_dir(),
            inception,
            inception_sha256,
            extra_networks: [
                weight_files::network_weights(weight_files::DINOV2_FILE, None),
                weight_files::network_weights(weight_files::CLIP_FILE, None),
            ],
        }
    }

    /// The text `doctor` prints, with a download hint when the Inception weights are missing.
    pub fn render(&self) -> String {
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        let inception_state = match &self.inception_sha256 {
            None => "not found".to_owned(),
            Some(sha) if is_released_inception(sha) => {
                format!("found, pytorch-fid's released file (sha256 {}...)", &sha[..16])
            }
            Some(sha) => format!(
                "found, but NOT pytorch-fid's released file (sha256 {}...): FID and the other Inception figures will not be comparable to published ones",
                &sha[..16]
            ),
        };
        let mut out = String::new();
        let _ = writeln!(out, "llamagen-eval     {}", self.tool_version);
        let _ = writeln!(
            out,
            "libtorch          {} ({})",
            self.libtorch_version,
            self.libtorch_lib.display()
        );
        let _ = writeln!(
            out,
            "CUDA              {} ({} device{})",
            yes_no(self.cuda_available),
            self.cuda_devices,
            if self.cuda_devices == 1 { "" } else { "s" }
        );
        if let (driver, Some(runtime)) = &self.cuda_versions {
            let driver = match driver {
                Some(v) => format!("supports CUDA {v}"),
                None => "not found".to_owned(),
            };
            let _ = writeln!(
                out,
                "CUDA versions     libtorch's runtime {runtime}; NVIDIA driver {driver}"
            );
        }
        for (name, free) in &self.gpus {
            let free = free
                .map(|b| format!(", {:.1} GiB free", b as f64 / (1u64 << 30) as f64))
                .unwrap_or_default();
            let _ = writeln!(out, "  {name}{free}");
        }
        if let Some(problem) = &self.cuda_problem {
            let _ = writeln!(out, "                  {problem}");
        }
        let _ = writeln!(out, "cuDNN             {}", yes_no(self.cudnn_available));
        let _ = writeln!(
            out,
            "TF32 on CUDA      off unless --tf32 on (GPU numbers then match CPU runs)"
        );
        let _ = writeln!(out, "libtorch threads  {}", self.torch_threads);
        let _ = writeln!(
            out,
            "rayon threads     {} (metric kernels: parallel blocks, {} BLAS thread per worker)",
            self.rayon_threads, self.kernel_blas_threads
        );
        let _ = writeln!(
            out,
            "BLAS              {} ({} threads for single factorisations)",
            self.blas_backend, self.blas_threads
        );
        let _ = writeln!(
            out,
            "cache dir         {} (override with ${})",
            self.cache_dir.display(),
            weight_files::CACHE_DIR_ENV
        );
        let _ = writeln!(
            out,
            "Inception weights {}: {inception_state}",
            self.inception.describe()
        );
        if self.inception_sha256.is_none() {
            let _ = writeln!(
                out,
                "                  download {} there, set ${}, or pass --inception FILE",
                weight_files::INCEPTION_WEIGHTS_URL,
                weight_files::INCEPTION_WEIGHTS_ENV
            );
        }
        for (name, source) in ["DINOv2", "CLIP"].iter().zip(&self.extra_networks) {
            let state = if source.path().is_file() {
                "found".to_owned()
            } else {
                // Only `--features dinov2/clip` needs them: say where they come from.
                let file = source.file();
                format!(
                    "not found (only --features {} needs it: {})",
                    name.to_lowercase(),
                    file.url
                )
            };
            let _ = writeln!(out, "{name:<17} {}: {state}", source.describe());
        }
        out
    }
}
