//! `llamagen-eval doctor`: what this installation can do, and where it looks for things.

use std::fmt::Write as _;

use crate::cache;

/// Facts about the runtime, gathered once so they can be printed or tested.
#[derive(Debug, Clone)]
pub struct Report {
    /// This crate's version (`CARGO_PKG_VERSION`).
    pub tool_version: &'static str,
    /// The torch version of the libtorch built against, read from its `version.py` at build time.
    pub libtorch_version: &'static str,
    /// The libtorch directory baked into the rpath at build time.
    pub libtorch_lib: &'static str,
    /// Whether libtorch sees a usable CUDA runtime and GPU.
    pub cuda_available: bool,
    /// Number of CUDA devices (`--device cuda:N` needs `N` below it).
    pub cuda_devices: i64,
    /// Whether cuDNN is available to libtorch.
    pub cudnn_available: bool,
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
    /// Where weights and cached features are looked for ([`cache::cache_dir`]).
    pub cache_dir: std::path::PathBuf,
    /// Where the FID Inception weights would be taken from.
    pub inception: cache::WeightsSource,
}

impl Report {
    /// Collects the facts; `inception_flag` is `--inception`, which wins over the environment.
    pub fn gather(inception_flag: Option<std::path::PathBuf>) -> Self {
        Report {
            tool_version: env!("CARGO_PKG_VERSION"),
            libtorch_version: env!("LLAMAGEN_LIBTORCH_VERSION"),
            libtorch_lib: env!("LLAMAGEN_LIBTORCH_LIB"),
            cuda_available: crate::device::load_cuda() && tch::Cuda::is_available(),
            cuda_devices: tch::Cuda::device_count(),
            cudnn_available: tch::Cuda::cudnn_is_available(),
            torch_threads: tch::get_num_threads(),
            rayon_threads: rayon::current_num_threads(),
            blas_backend: llamagen_metrics::blas::backend_description(),
            blas_threads: llamagen_metrics::linalg::thread_counts().2,
            kernel_blas_threads: llamagen_metrics::linalg::thread_counts().1,
            cache_dir: cache::cache_dir(),
            inception: cache::inception_weights(inception_flag),
        }
    }

    /// The text `doctor` prints, with a download hint when the Inception weights are missing.
    pub fn render(&self) -> String {
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        let inception_state = if self.inception.path().is_file() {
            "found"
        } else {
            "not found"
        };
        let mut out = String::new();
        let _ = writeln!(out, "llamagen-eval     {}", self.tool_version);
        let _ = writeln!(
            out,
            "libtorch          {} ({})",
            self.libtorch_version, self.libtorch_lib
        );
        let _ = writeln!(
            out,
            "CUDA              {} ({} device{})",
            yes_no(self.cuda_available),
            self.cuda_devices,
            if self.cuda_devices == 1 { "" } else { "s" }
        );
        let _ = writeln!(out, "cuDNN             {}", yes_no(self.cudnn_available));
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
            cache::CACHE_DIR_ENV
        );
        let _ = writeln!(
            out,
            "Inception weights {}: {inception_state}",
            self.inception.describe()
        );
        if inception_state == "not found" {
            let _ = writeln!(
                out,
                "                  download {} there, set ${}, or pass --inception FILE",
                cache::INCEPTION_WEIGHTS_URL,
                cache::INCEPTION_WEIGHTS_ENV
            );
        }
        out
    }
}
