//! The memory budget: every allocation a caller's arguments size (a copy of an array, a
//! covariance of its width, KID's subsets, a codebook's counters) is estimated before it is made,
//! and refused with a `MemoryError` naming the argument when it exceeds the budget, so no call can
//! abort the interpreter with "memory allocation failed" or exhaust the machine. Arrays read in
//! place cost nothing; broadcast and other zero-stride views count at their logical size, which is
//! what a copy of them takes.
//!
//! The budget is a process-wide setting, like the command line's `--max-input-memory`:
//! `llamagen_metrics.set_max_memory(bytes)`, read back with `llamagen_metrics.max_memory()`.

use std::sync::atomic::{AtomicU64, Ordering};

use pyo3::exceptions::{PyMemoryError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

/// The default budget: 4 GiB, enough for every metric on 50,000 x 2048 features.
pub const DEFAULT_MAX_MEMORY: u64 = 4 << 30;

static MAX_MEMORY: AtomicU64 = AtomicU64::new(DEFAULT_MAX_MEMORY);

/// Bytes of `elements` (a product of sizes, saturating at `u64::MAX`) of `width` bytes each.
pub fn bytes_of(elements: &[usize], width: usize) -> u64 {
    elements
        .iter()
        .fold(width as u64, |acc, &n| acc.saturating_mul(n as u64))
}

/// Sum of byte counts, saturating.
pub fn total(parts: &[u64]) -> u64 {
    parts.iter().fold(0u64, |acc, &b| acc.saturating_add(b))
}

/// A byte count for messages (`3.2 GB`).
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Fails with `MemoryError` when `need` bytes exceed the budget: `what` names the argument and
/// `purpose` what the memory is for; `hint` (may be empty) is appended.
pub fn ensure_fits(what: &str, purpose: &str, need: u64, hint: &str) -> PyResult<()> {
    let limit = MAX_MEMORY.load(Ordering::Relaxed);
    if need > limit {
        let hint = if hint.is_empty() {
            String::new()
        } else {
            format!("; {hint}")
        };
        return Err(PyMemoryError::new_err(format!(
            "{what}: {purpose} would take {}, above the memory budget of {} \
             (llamagen_metrics.set_max_memory(bytes) raises it){hint}",
            human(need),
            human(limit)
        )));
    }
    Ok(())
}

/// Sets the memory budget, in bytes, for every later call in this process (default 4 GiB).
///
/// Calls whose arguments would make the module allocate more (copies of non-contiguous or
/// broadcast arrays at their logical size, covariances of the feature width, KID's subsets,
/// codebook counters) raise ``MemoryError`` before allocating anything.
#[pyfunction]
#[pyo3(signature = (nbytes))]
pub fn set_max_memory(nbytes: u64) -> PyResult<()> {
    if nbytes == 0 {
        return Err(PyValueError::new_err(
            "set_max_memory: nbytes must be positive",
        ));
    }
    MAX_MEMORY.store(nbytes, Ordering::Relaxed);
    Ok(())
}

/// The memory budget in bytes (see ``set_max_memory``).
#[pyfunction]
pub fn max_memory() -> u64 {
    MAX_MEMORY.load(Ordering::Relaxed)
}

/// Runs `f`, turning a Rust panic into a `RuntimeError` instead of letting PyO3 raise its
/// `PanicException` (a `BaseException`, which `except Exception` does not catch). The last resort
/// behind the checks: no input is meant to reach a panic.
pub fn guarded<T>(what: &str, f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(PyRuntimeError::new_err(format!(
                "{what}: internal error ({message}); please report it with the call that caused it"
            )))
        }
    }
}
