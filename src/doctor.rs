//! `llamagen-eval doctor`: what this installation can do, and where it looks for things.

use std::fmt::Write as _;

use crate::cache;

/// Facts about the runtime, gathered once so they can be printed or tested.
#[derive(Debug, Clone)]
pub struct Report {
    pub tool_version: &'static str,
    pub libtorch_version: &'static str,
    pub libtorch_lib: &'static str,
    pub cuda_available: bool,
    pub cuda_devices: i64,
    pub cudnn_available: bool,
    pub torch_threads: i32,
    pub rayon_threads: usize,
    pub blas_backend: String,
    /// OpenBLAS threads of one call outside the parallel metric kernels (factorisations).
    pub blas_threads: usize,
    /// OpenBLAS threads of one call inside the rayon-parallel metric kernels.
    pub kernel_blas_threads: usize,
    pub cache_dir: std::path::PathBuf,
    pub inception: cache::WeightsSource,
}

impl Report {
    pub fn gather(inception_flag: Option<std::path::PathBuf>) -> Self {
        Report {
            tool_version: env!("CARGO_PKG_VERSION"),
            libtorch_version: env!("LLAMAGEN_LIBTORCH_VERSION"),
            libtorch_lib: env!("LLAMAGEN_LIBTORCH_LIB"),
            cuda_available: tch::Cuda::is_available(),
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
