//! How much memory reading one input file may take.
//!
//! Every size in an input file's headers (an npy shape, a zip entry's claimed size, a pickle's
//! storage sizes, an image's dimensions) is a claim an attacker or a corrupt file controls. The
//! readers allocate only what the data has proven or what this budget allows, and refuse the rest
//! with a message naming the file and how to raise the limit (`--max-input-memory`), so a hostile
//! file costs a clean error instead of an abort or an exhausted machine.
//!
//! The limit is a process-wide setting (like libtorch's thread count): the command line sets it
//! once at start, and the readers deep in the library read it (the checkpoint readers through
//! [`crate::checkpoint::ReadBudget::process_default`]).

use std::sync::atomic::{AtomicU64, Ordering};

/// The default budget of one decoded image is a quarter of this (see [`image_allowance`]).
pub const DEFAULT_MAX_INPUT_MEMORY: u64 = 1 << 30;

/// How much more than its size on disk a file may expand into without an explicit budget.
/// Real float arrays and weights barely compress; anything that inflates further is refused
/// unless `--max-input-memory` allows it.
pub const EXPANSION_ALLOWED: u64 = 4;

/// What the default budget allows on top of [`EXPANSION_ALLOWED`] times the file size (small
/// files, the objects a pickle builds, compressed entries).
pub const SLACK: u64 = 512 << 20;

/// 0 means "not set": the default applies.
static MAX_INPUT_MEMORY: AtomicU64 = AtomicU64::new(0);

/// Sets the budget for the rest of the process (`--max-input-memory`).
pub fn set_max_input_memory(bytes: u64) {
    MAX_INPUT_MEMORY.store(bytes, Ordering::Relaxed);
}

/// The budget set with [`set_max_input_memory`], if any.
pub fn max_input_memory() -> Option<u64> {
    match MAX_INPUT_MEMORY.load(Ordering::Relaxed) {
        0 => None,
        bytes => Some(bytes),
    }
}

/// The bytes reading a file of `file_size` bytes may materialise: the explicit budget when one is
/// set, otherwise [`default_allowance`].
pub fn allowance(file_size: u64) -> u64 {
    max_input_memory().unwrap_or_else(|| default_allowance(file_size))
}

/// The budget without `--max-input-memory`: [`EXPANSION_ALLOWED`] times the file size plus
/// [`SLACK`]. Every file written by `torch.save`, safetensors or `np.savez` fits it: their arrays
/// are stored whole (or deflated, which real weights and features barely shrink).
pub fn default_allowance(file_size: u64) -> u64 {
    file_size
        .saturating_mul(EXPANSION_ALLOWED)
        .saturating_add(SLACK)
}

/// The most bytes one decoded image may take (RGB, 8 bits): a quarter of the budget, since the
/// feature networks' resizing holds a few float copies of it (256 MiB by default: about 89
/// megapixels).
pub fn image_allowance() -> u64 {
    max_input_memory().unwrap_or(DEFAULT_MAX_INPUT_MEMORY) / 4
}

/// A sentence for error messages: how to raise the limit.
pub fn how_to_raise() -> String {
    match max_input_memory() {
        Some(limit) => format!(
            "--max-input-memory is {}; raise it if the file is genuine",
            human_bytes(limit)
        ),
        None => "raise the input memory budget with --max-input-memory BYTES (e.g. 8G) if the file is genuine".into(),
    }
}

/// `1.5 GiB`-style sizes for messages; exact byte counts below 1 KiB.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text} {}", UNITS[unit])
}

/// Parses `--max-input-memory` values: a byte count with an optional binary suffix (`800000000`,
/// `512M`, `8G`, `8GiB`, `1T`; K, M, G and T are powers of 1024, a trailing `B` or `iB` allowed).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let bad = || {
        format!(
            "`{text}` is not a memory size: give bytes with an optional K, M, G or T suffix (e.g. 8G)"
        )
    };
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    let shift = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(bad()),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let bytes = n
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("`{text}` is more bytes than fit in 64 bits"))?;
    if bytes == 0 {
        return Err(format!(
            "`{text}`: the memory budget must be more than 0 bytes"
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("8g"), Ok(8 << 30));
        assert_eq!(parse_bytes("8GiB"), Ok(8 << 30));
        assert_eq!(parse_bytes("2KB"), Ok(2048));
        assert_eq!(parse_bytes("1T"), Ok(1 << 40));
        for bad in [
            "",
            "G",
            "1.5G",
            "-1",
            "12iB",
            "0",
            "99999999999T",
            "8 apples",
        ] {
            assert!(parse_bytes(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn default_allowance_grows_with_the_file() {
        assert_eq!(default_allowance(0), 512 << 20);
        assert_eq!(default_allowance(1 << 30), (4 << 30) + (512 << 20));
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
        assert_eq!(human_bytes(1 << 30), "1 GiB");
        assert_eq!(human_bytes(100), "100 bytes");
    }
}
