//! How much memory reading one checkpoint may take. Every byte the readers materialise (the pickle's
//! bytes and the objects it builds, the tree of values, tensor names, the storage bytes read) is
//! charged to a [`Meter`] before it is allocated, so a hostile file (a deflate bomb, a pickle that
//! references one large object many times) ends in an error instead of exhausting memory.
//!
//! The limit is a [`ReadBudget`]: by default 4 x the file size + 512 MiB, which every file written by
//! `torch.save` or safetensors fits (their tensor bytes are stored uncompressed, so they cannot
//! exceed the file), or a number of bytes given by the user (the CLI's `--max-input-memory`).

use std::fmt;
use std::str::FromStr;

use super::error::ErrorKind;
use crate::budget::human_bytes;

/// How many bytes reading one checkpoint may materialise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadBudget {
    /// 4 x the file size + 512 MiB.
    #[default]
    Auto,
    /// At most this many bytes.
    Bytes(u64),
}

impl ReadBudget {
    /// The limit in bytes for a file of `file_len` bytes.
    pub fn limit(self, file_len: u64) -> u64 {
        match self {
            ReadBudget::Auto => crate::budget::default_allowance(file_len),
            ReadBudget::Bytes(n) => n,
        }
    }

    /// The budget [`super::Checkpoint::open`] uses: the process's `--max-input-memory`
    /// ([`crate::budget::set_max_input_memory`]) when set, else [`ReadBudget::Auto`].
    pub fn process_default() -> Self {
        crate::budget::max_input_memory().map_or(ReadBudget::Auto, ReadBudget::Bytes)
    }

    fn explain(self) -> String {
        match self {
            ReadBudget::Auto => format!(
                "the default, {} x the file size + {}",
                crate::budget::EXPANSION_ALLOWED,
                human_bytes(crate::budget::SLACK)
            ),
            ReadBudget::Bytes(_) => "set by --max-input-memory".to_owned(),
        }
    }
}

/// Parses `auto`, or a byte count with an optional binary suffix: `800000000`, `512M`, `8G`,
/// `8GiB`, `1T` (K, M, G and T are powers of 1024; a trailing `B` or `iB` is allowed).
impl FromStr for ReadBudget {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.trim().eq_ignore_ascii_case("auto") {
            return Ok(ReadBudget::Auto);
        }
        crate::budget::parse_bytes(text).map(ReadBudget::Bytes)
    }
}

impl fmt::Display for ReadBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadBudget::Auto => f.write_str("auto"),
            ReadBudget::Bytes(n) => f.write_str(&human_bytes(*n)),
        }
    }
}

/// Counts the bytes one read materialises against its budget. Charges only grow: what a step frees
/// is not given back, so the count is an upper bound on what is held at once.
#[derive(Debug, Clone)]
pub(crate) struct Meter {
    used: u64,
    limit: u64,
    budget: ReadBudget,
}

impl Meter {
    /// A meter for a file of `file_len` bytes, with `used` bytes already held.
    pub(crate) fn new(budget: ReadBudget, file_len: u64, used: u64) -> Self {
        Self {
            used,
            limit: budget.limit(file_len),
            budget,
        }
    }

    /// Bytes charged so far.
    pub(crate) fn used(&self) -> u64 {
        self.used
    }

    /// Bytes that may still be charged.
    pub(crate) fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.used)
    }

    /// Charges `bytes`, or fails naming `what` (lazily built: charges are frequent).
    pub(crate) fn charge(
        &mut self,
        bytes: u64,
        what: impl FnOnce() -> String,
    ) -> Result<(), ErrorKind> {
        let used = self.used.saturating_add(bytes);
        if used > self.limit {
            return Err(self.over(what()));
        }
        self.used = used;
        Ok(())
    }

    /// The error for `what` going past the budget.
    pub(crate) fn over(&self, what: String) -> ErrorKind {
        ErrorKind::Budget {
            what,
            limit: human_bytes(self.limit),
            how: self.budget.explain(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_or_a_size_as_budget_parses_it() {
        // The sizes themselves: `crate::budget`'s tests.
        assert_eq!("auto".parse(), Ok(ReadBudget::Auto));
        assert_eq!(" AUTO ".parse(), Ok(ReadBudget::Auto));
        assert_eq!("512M".parse(), Ok(ReadBudget::Bytes(512 << 20)));
        assert!("8 apples".parse::<ReadBudget>().is_err());
    }

    #[test]
    fn automatic_limit_grows_with_the_file() {
        assert_eq!(ReadBudget::Auto.limit(0), 512 << 20);
        assert_eq!(ReadBudget::Auto.limit(1 << 30), (4 << 30) + (512 << 20));
        assert_eq!(ReadBudget::Bytes(7).limit(1 << 30), 7);
        assert_eq!(ReadBudget::Auto.limit(u64::MAX), u64::MAX);
    }

    #[test]
    fn meter_refuses_past_the_limit_and_names_the_budget() {
        let mut m = Meter::new(ReadBudget::Bytes(100), 10, 0);
        m.charge(60, String::new).unwrap();
        assert_eq!(m.remaining(), 40);
        let err = m.charge(41, || "reading `x`".to_owned()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("reading `x`") && text.contains("100 bytes"),
            "{text}"
        );
        assert!(text.contains("--max-input-memory"), "{text}");
        assert_eq!(m.used(), 60);
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(512 << 20), "512 MiB");
    }
}
