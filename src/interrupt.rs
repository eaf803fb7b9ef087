//! Ctrl-C and `kill`: SIGINT and SIGTERM never end a run silently. While a batch loop runs
//! (holding [`catch`]) a signal asks it to stop at the next batch boundary, where its journal
//! holds every finished batch: the loop asks [`requested`] between batches and stops with
//! [`Interrupted`], and the command line says what was done and how to resume. Elsewhere (loading
//! models, computing metrics, writing outputs atomically) the process prints the message given
//! to [`install`] and exits at once. Either way the exit status is 128 + the signal's number, as a
//! shell reports a killed process, and a second signal kills at once (the default action).

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// The signal received, or 0.
static RECEIVED: AtomicI32 = AtomicI32::new(0);
/// How many batch loops are running (they check [`RECEIVED`] between batches).
static LOOPS: AtomicUsize = AtomicUsize::new(0);
/// What to print when a signal arrives outside a batch loop.
static MESSAGE: OnceLock<Vec<u8>> = OnceLock::new();

extern "C" fn record(signal: libc::c_int) {
    RECEIVED.store(signal, Ordering::SeqCst);
    // Only async-signal-safe calls here (atomics, signal, write, _exit).
    // SAFETY: each call below is async-signal-safe and its arguments are valid: SIG_DFL, and a
    // buffer that lives for the whole process.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        if LOOPS.load(Ordering::SeqCst) == 0 {
            if let Some(message) = MESSAGE.get() {
                libc::write(2, message.as_ptr().cast(), message.len());
            }
            libc::_exit(128 + signal);
        }
    }
}

/// Routes SIGINT and SIGTERM through this module for the rest of the process; `message` is
/// printed when one arrives outside a batch loop (what was interrupted and how to continue).
pub fn install(message: String) {
    let _ = MESSAGE.set(message.into_bytes());
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `record` makes only async-signal-safe calls.
        unsafe {
            libc::signal(
                signal,
                record as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
    }
}

/// While the returned value lives, a signal asks the batch loop to stop at its next batch
/// boundary ([`requested`]) instead of ending the process.
#[must_use = "signals are left to the loop only while the value lives"]
pub fn catch() -> Catching {
    LOOPS.fetch_add(1, Ordering::SeqCst);
    Catching(())
}

/// A batch loop's hold on signals; dropping it lets them end the process again.
pub struct Catching(());

impl Drop for Catching {
    fn drop(&mut self) {
        LOOPS.fetch_sub(1, Ordering::SeqCst);
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
