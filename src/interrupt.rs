//! Ctrl-C and `kill`: SIGINT and SIGTERM ask a run to stop at the next batch boundary, where its
//! journal holds every finished batch, instead of killing it mid-write. The batch loop asks
//! [`requested`] between batches (holding [`catch`]) and stops with [`Interrupted`]; the command
//! line says what was done and how to resume, and exits 128 + the signal's number, as a shell
//! reports a killed process. A second signal while the run is stopping kills it at once (the
//! default action).

use std::sync::atomic::{AtomicI32, Ordering};

/// The signal received, or 0.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn record(signal: libc::c_int) {
    RECEIVED.store(signal, Ordering::SeqCst);
    // Only async-signal-safe calls here: the next signal of this kind takes its default action.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
    }
}

/// While the returned value lives, SIGINT and SIGTERM are recorded for [`requested`] instead of
/// killing the process: held by the batch loop, which checks between batches. Outside it (loading
/// models, computing metrics) a signal keeps its default action.
#[must_use = "signals are caught only while the value lives"]
pub fn catch() -> Catching {
    set_handler(record as extern "C" fn(libc::c_int) as libc::sighandler_t);
    Catching(())
}

/// Signals caught for the batch loop; dropping it gives them back their default action.
pub struct Catching(());

impl Drop for Catching {
    fn drop(&mut self) {
        set_handler(libc::SIG_DFL);
    }
}

fn set_handler(handler: libc::sighandler_t) {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `record` only stores an atomic and resets the disposition, both
        // async-signal-safe; SIG_DFL is always valid.
        unsafe {
            libc::signal(signal, handler);
        }
    }
}

/// The signal that asked this process to stop, if one did.
pub fn requested() -> Option<Signal> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        number => Some(Signal(number)),
    }
}

/// A signal that asked the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal(i32);

impl Signal {
    /// The exit status a shell gives a process this signal killed: 128 + its number (130 for
    /// SIGINT, 143 for SIGTERM).
    pub fn exit_status(self) -> u8 {
        u8::try_from(128 + self.0).unwrap_or(u8::MAX)
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            libc::SIGINT => f.write_str("SIGINT (Ctrl-C)"),
            libc::SIGTERM => f.write_str("SIGTERM"),
            other => write!(f, "signal {other}"),
        }
    }
}

/// A run stopped at a batch boundary because a signal asked it to.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by {signal} after {done} of {total} images{kept}")]
pub struct Interrupted {
    /// The signal.
    pub signal: Signal,
    /// Images finished, including those resumed from the journal.
    pub done: usize,
    /// Images in the whole pass.
    pub total: usize,
    /// What became of the finished images: kept by a journal for a resumed run, or not.
    pub kept: &'static str,
}

impl Interrupted {
    /// What a journaled pass says of its finished images.
    pub const JOURNALED: &'static str = "; the journal keeps the finished batches";
}
