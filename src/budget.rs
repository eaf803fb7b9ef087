//! How much memory reading one input file may take.
//!
//! Every size in an input file's headers (an npy shape, a zip entry's claimed size, a pickle's
//! storage sizes, an image's dimensions) is a claim an attacker or a corrupt file controls. The
//! readers allocate only what the data has proven or what this budget allows, and refuse the rest
//! with a message naming the file and how to raise the limit (`--max-input-memory`), so a hostile
//! file costs a clean error instead of an abort or an exhausted machine.
//!
//! The limit is a process-wide setting (like libtorch's thread count): the command line sets it
//! once at start, and the readers deep in the library read it.

use std::sync::atomic::{AtomicU64, Ordering};

/// The default budget for what one input file may make us allocate: 1 GiB, or a small multiple of
/// the file's own size when that is larger (see [`allowance`]).
pub const DEFAULT_MAX_INPUT_MEMORY: u64 = 1 << 30;

/// How much more than its size on disk a file may expand into without an explicit budget.
/// Real float arrays and weights barely compress; anything that inflates further is refused
/// unless `--max-input-memory` allows it.
pub const EXPANSION_ALLOWED: u64 = 4;

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
/// set, otherwise [`DEFAULT_MAX_INPUT_MEMORY`] or [`EXPANSION_ALLOWED`] times the file size,
/// whichever is larger.
pub fn allowance(file_size: u64) -> u64 {
    max_input_memory().unwrap_or_else(|| {
        DEFAULT_MAX_INPUT_MEMORY.max(file_size.saturating_mul(EXPANSION_ALLOWED))
    })
}

/// The most bytes one decoded image may take (RGB, 8 bits): a quarter of the budget, since the
/// feature networks' resizing holds a few float copies of it (256 MiB by default: about 89
/// megapixels).
pub fn image_allowance() -> u64 {
    max_input_memory().unwrap_or(DEFAULT_MAX_INPUT_MEMORY) / 4
}

/// A sentence for error messages: what the limit is and how to raise it.
pub fn how_to_raise() -> String {
    let limit = max_input_memory().unwrap_or(DEFAULT_MAX_INPUT_MEMORY);
    format!(
        "the input memory budget is {} (raise it with --max-input-memory BYTES, e.g. 8G, if the file is genuine)",
        human_bytes(limit)
    )
}

/// `1.5 GiB`-style sizes for messages.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Parses `--max-input-memory` values: bytes, or a number with K, M, G or T (powers of 1024,
/// optionally followed by `iB` or `B`).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{text}` (use K, M, G or T)"
            ))
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size (e.g. 4G, 512M or 1073741824)"))?;
    let bytes = value * (1u64 << shift) as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("`{text}` is not a usable memory budget"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_bytes("4G").unwrap(), 4 << 30);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("4X").unwrap_err().contains("unit"));
        assert!(parse_bytes("lots").is_err());
    }

    #[test]
    fn allowance_grows_with_the_file() {
        assert_eq!(allowance(10), DEFAULT_MAX_INPUT_MEMORY);
        assert_eq!(allowance(1 << 30), 4 << 30);
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }
}
