//! The checkpoint reader's error type: every error names the file and says what is wrong with it.

use std::fmt;
use std::path::{Path, PathBuf};

use super::value::shape_text;

/// An error while reading a checkpoint or loading it into a model; always names the file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {kind}", path.display())]
pub struct CheckpointError {
    /// The checkpoint file.
    pub path: PathBuf,
    /// What went wrong.
    pub kind: ErrorKind,
}

impl CheckpointError {
    pub(crate) fn new(path: &Path, kind: ErrorKind) -> Self {
        Self {
            path: path.to_path_buf(),
            kind,
        }
    }
}

/// What went wrong while reading a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    /// The file could not be opened or read.
    #[error("cannot read the file: {0}")]
    Io(#[source] std::io::Error),
    /// Neither a torch.save file (zip or legacy) nor a .safetensors file.
    #[error(
        "not a PyTorch checkpoint (torch.save zip or legacy format) nor a .safetensors file \
         (it starts with {0})"
    )]
    UnknownFormat(String),
    /// The file ends before the data it describes.
    #[error("truncated file: {0}")]
    Truncated(String),
    /// The zip container is damaged.
    #[error("damaged zip archive: {0}")]
    Zip(String),
    /// A zip entry torch.save always writes is absent.
    #[error("the zip archive has no `{0}` entry (not a torch.save checkpoint, or a damaged one)")]
    MissingEntry(String),
    /// The pickle uses an opcode this reader does not interpret.
    #[error("unsupported pickle opcode 0x{opcode:02x} ({name}) at offset {offset} of {part}")]
    UnsupportedOpcode {
        /// Which pickle (e.g. `archive/data.pkl`).
        part: String,
        /// Byte offset of the opcode inside that pickle.
        offset: u64,
        /// The opcode byte.
        opcode: u8,
        /// The opcode's name in Python's pickle module, or a note that it is no opcode at all.
        name: &'static str,
    },
    /// The pickle is inconsistent (wrong types on the stack, bad memo reference, ...).
    #[error("malformed pickle {part} at offset {offset}: {detail}")]
    Pickle {
        /// Which pickle.
        part: String,
        /// Byte offset of the offending opcode.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// A size, count or nesting depth is beyond what this reader accepts.
    #[error("{0}")]
    Limit(String),
    /// Reading would take more memory than the budget allows ([`super::ReadBudget`]).
    #[error(
        "{what} needs more memory than the input budget of {limit} ({how}); if the file is \
         trusted, raise the budget with --max-input-memory"
    )]
    Budget {
        /// What was being read or built (names the entry or tensor).
        what: String,
        /// The budget, human-readable.
        limit: String,
        /// Where the budget comes from.
        how: String,
    },
    /// A tensor's dtype is one this reader cannot build.
    #[error("tensor `{tensor}` has unsupported dtype `{dtype}`")]
    UnknownDtype {
        /// The tensor's name in the state dict.
        tensor: String,
        /// The dtype named by the file.
        dtype: String,
    },
    /// A storage class this reader cannot build (quantized storages, for one).
    #[error("{}unsupported storage type {class}{}", of_tensor(.tensor), quantized_note(.class))]
    UnsupportedStorage {
        /// The tensor that uses the storage, when one does.
        tensor: Option<String>,
        /// The storage class named by the file (`torch.QInt8Storage`).
        class: String,
    },
    /// A storage's size is impossible, or more than its data holds.
    #[error("{}storage `{storage}` {detail}", of_tensor(.tensor))]
    BadStorage {
        /// The storage: a zip entry (`archive/data/0`) or a legacy storage key.
        storage: String,
        /// The tensor that uses it, when one does.
        tensor: Option<String>,
        /// What is wrong.
        detail: String,
    },
    /// A tensor's metadata does not fit its storage.
    #[error("tensor `{tensor}`: {detail}")]
    BadTensor {
        /// The tensor's name.
        tensor: String,
        /// What is wrong.
        detail: String,
    },
    /// The legacy (pre-1.6) container is inconsistent.
    #[error("legacy torch.save format: {0}")]
    Legacy(String),
    /// The .safetensors file could not be read.
    #[error("safetensors: {0}")]
    Safetensors(String),
    /// The requested key is not in the checkpoint.
    #[error("no entry `{key}` in the checkpoint (top-level keys: {available})")]
    MissingKey {
        /// The key asked for.
        key: String,
        /// The top-level keys present, comma-separated.
        available: String,
    },
    /// The checkpoint's state dict does not match the model's variables.
    #[error("the state dict does not match the model: {0}")]
    Mismatch(Mismatch),
    /// libtorch refused an operation.
    #[error("libtorch: {0}")]
    Torch(#[source] tch::TchError),
}

/// `tensor `x`: ` before a message about the storage of tensor `x`.
fn of_tensor(tensor: &Option<String>) -> String {
    tensor
        .as_ref()
        .map(|t| format!("tensor `{t}`: "))
        .unwrap_or_default()
}

/// Says why quantized storages (`torch.QInt8Storage`, `torch.QUInt4x2Storage`, ...) fail.
fn quantized_note(class: &str) -> &'static str {
    let name = class.rsplit('.').next().unwrap_or(class);
    if name.starts_with('Q') && name.ends_with("Storage") {
        " (quantized tensors are not supported)"
    } else {
        ""
    }
}

/// Names the state dict and the model disagree on, for [`ErrorKind::Mismatch`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mismatch {
    /// Variables of the model with no tensor in the checkpoint.
    pub missing: Vec<String>,
    /// Tensors in the checkpoint with no variable in the model.
    pub unexpected: Vec<String>,
    /// `(name, checkpoint shape, model shape)` for tensors whose shapes differ.
    pub mis_shaped: Vec<(String, Vec<i64>, Vec<i64>)>,
}

impl Mismatch {
    /// True when nothing disagrees.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mis_shaped.is_empty()
    }
}

/// How many names of each kind the message lists before "and N more".
const SHOWN: usize = 5;

fn list_names(f: &mut fmt::Formatter<'_>, names: &[String]) -> fmt::Result {
    for (i, name) in names.iter().take(SHOWN).enumerate() {
        if i > 0 {
            write!(f, ", ")?;
        }
        write!(f, "{name}")?;
    }
    if names.len() > SHOWN {
        write!(f, ", ... and {} more", names.len() - SHOWN)?;
    }
    Ok(())
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut sep = |f: &mut fmt::Formatter<'_>| {
            let r = if first { Ok(()) } else { write!(f, "; ") };
            first = false;
            r
        };
        if !self.missing.is_empty() {
            sep(f)?;
            write!(f, "{} missing from the checkpoint (", self.missing.len())?;
            list_names(f, &self.missing)?;
            write!(f, ")")?;
        }
        if !self.unexpected.is_empty() {
            sep(f)?;
            write!(
                f,
                "{} unexpected in the checkpoint (",
                self.unexpected.len()
            )?;
            list_names(f, &self.unexpected)?;
            write!(f, ")")?;
        }
        if !self.mis_shaped.is_empty() {
            sep(f)?;
            write!(f, "{} with a different shape (", self.mis_shaped.len())?;
            for (i, (name, ck, model)) in self.mis_shaped.iter().take(SHOWN).enumerate() {
                if i > 0 {
                    write!(f, ", ")?;
                }
                write!(
                    f,
                    "{name}: checkpoint {} vs model {}",
                    shape_text(ck),
                    shape_text(model)
                )?;
            }
            if self.mis_shaped.len() > SHOWN {
                write!(f, ", ... and {} more", self.mis_shaped.len() - SHOWN)?;
            }
            write!(f, ")")?;
        }
        Ok(())
    }
}
