//! Which BLAS the metrics run on, for diagnostics (`llamagen-eval doctor`).

use std::ffi::CStr;
use std::os::raw::{c_char, c_int};

extern "C" {
    fn openblas_get_config() -> *const c_char;
    fn openblas_get_num_threads() -> c_int;
}

/// The linked BLAS library's self-description, e.g. `OpenBLAS 0.3.21 DYNAMIC_ARCH ... Haswell MAX_THREADS=64`.
pub fn backend_description() -> String {
    // SAFETY: OpenBLAS returns a pointer to a static NUL-terminated string.
    let config = unsafe { CStr::from_ptr(openblas_get_config()) };
    config.to_string_lossy().trim().to_owned()
}

/// Number of threads the linked OpenBLAS uses for one call.
pub fn num_threads() -> usize {
    // SAFETY: a plain query without arguments.
    let threads = unsafe { openblas_get_num_threads() };
    usize::try_from(threads).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_openblas() {
        assert!(backend_description().contains("OpenBLAS"));
        assert!(num_threads() >= 1);
    }
}
