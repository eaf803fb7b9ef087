//! torch.save's zip format (torch >= 1.6): a zip archive holding `<name>/data.pkl` (the pickled
//! object, whose storages are persistent ids), `<name>/data/<key>` (the raw bytes of each storage),
//! and `<name>/byteorder` (`little` or `big`; absent in files from before torch 1.10, which are
//! little-endian). torch writes entries stored (uncompressed), but deflated entries are read too.
//!
//! Nothing is inflated whole: the pickle is unpickled as it streams out of its entry, and a storage
//! is read only over the element range its tensors' views cover (a stored entry from that range's
//! start, a deflated one inflated up to that range's end), so an entry whose size claim is a
//! deflate bomb costs only what the tensors really use.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use super::budget::Meter;
use super::error::ErrorKind;
use super::pickle::{unpickle, Unpickled};
use super::{first_tensor_using, ReadRange};
use crate::budget::human_bytes;

/// Deflate cannot expand data more than about 1032 times; a larger size claim is a lie.
const MAX_DEFLATE_RATIO: u64 = 1100;
/// Longest `byteorder` entry read (`little` or `big`).
const MAX_BYTEORDER: u64 = 16;

/// Where the parts of a zip checkpoint are.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// The archive's top folder (`archive`, or the file stem in older files).
    pub prefix: String,
    /// Storage bytes are big-endian.
    pub big_endian: bool,
}

impl Layout {
    /// The entry holding storage `key`.
    pub(crate) fn entry(&self, key: &str) -> String {
        format!("{}/data/{key}", self.prefix)
    }
}

fn zip_err(e: zip::result::ZipError) -> ErrorKind {
    match e {
        zip::result::ZipError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            ErrorKind::Truncated("the zip archive ends early".to_owned())
        }
        zip::result::ZipError::Io(io) => ErrorKind::Io(io),
        zip::result::ZipError::InvalidArchive(msg)
            if msg.contains("EOCD") || msg.contains("entral directory") =>
        {
            ErrorKind::Truncated(format!(
                "no intact zip central directory ({msg}): the file is cut short or damaged"
            ))
        }
        other => ErrorKind::Zip(other.to_string()),
    }
}

/// An error reading the bytes of entry `name`.
fn entry_read_err(name: &str, e: std::io::Error) -> ErrorKind {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            ErrorKind::Truncated(format!("entry `{name}` ends early"))
        }
        _ => ErrorKind::Zip(format!("entry `{name}`: {e}")),
    }
}

fn open_archive(path: &Path) -> Result<(zip::ZipArchive<BufReader<File>>, u64), ErrorKind> {
    let file = File::open(path).map_err(ErrorKind::Io)?;
    let file_len = file.metadata().map_err(ErrorKind::Io)?.len();
    let archive = zip::ZipArchive::new(BufReader::new(file)).map_err(zip_err)?;
    Ok((archive, file_len))
}

/// Opens entry `name`, checking that its size claim is one its data can satisfy: no more than the
/// file for a stored entry, no more than deflate can inflate its compressed bytes to otherwise.
fn open_entry<'a>(
    archive: &'a mut zip::ZipArchive<BufReader<File>>,
    name: &str,
    file_len: u64,
) -> Result<zip::read::ZipFile<'a, BufReader<File>>, ErrorKind> {
    let entry = match archive.by_name(name) {
        Ok(e) => e,
        Err(zip::result::ZipError::FileNotFound) => {
            return Err(ErrorKind::MissingEntry(name.to_owned()))
        }
        Err(e) => return Err(zip_err(e)),
    };
    let bound = match entry.compression() {
        zip::CompressionMethod::Stored => file_len,
        _ => entry.compressed_size().saturating_mul(MAX_DEFLATE_RATIO),
    };
    if entry.size() > bound {
        return Err(ErrorKind::Truncated(format!(
            "entry `{name}` claims {} bytes, more than its data in the file can hold",
            entry.size()
        )));
    }
    Ok(entry)
}

/// Reads the archive's directory and its pickle, and checks that every storage the pickle refers to
/// has an entry large enough.
pub(crate) fn open(path: &Path, meter: &mut Meter) -> Result<(Unpickled, Layout), ErrorKind> {
    let (mut archive, file_len) = open_archive(path)?;
    let pkl_name = archive
        .file_names()
        .filter(|n| {
            n.strip_suffix("/data.pkl")
                .is_some_and(|prefix| !prefix.is_empty() && !prefix.contains('/'))
        })
        .min()
        .map(str::to_owned)
        .ok_or_else(|| ErrorKind::MissingEntry("<archive>/data.pkl".to_owned()))?;
    let prefix = pkl_name.trim_end_matches("/data.pkl").to_owned();
    let unpickled = {
        let entry = open_entry(&mut archive, &pkl_name, file_len)?;
        let size = entry.size();
        // The pickle's bytes are charged as they stream; a claim beyond the budget fails before
        // anything is inflated.
        if size > meter.remaining() {
            return Err(meter.over(format!(
                "`{pkl_name}`, which inflates to {} (a state dict's pickle is small),",
                human_bytes(size)
            )));
        }
        let mut reader = BufReader::new(entry);
        unpickle(&mut reader, size, &pkl_name, meter)?
    };
    let byteorder_name = format!("{prefix}/byteorder");
    let big_endian = match open_entry(&mut archive, &byteorder_name, file_len) {
        Ok(entry) => {
            let mut text = Vec::new();
            entry
                .take(MAX_BYTEORDER + 1)
                .read_to_end(&mut text)
                .map_err(|e| entry_read_err(&byteorder_name, e))?;
            match text.as_slice() {
                b"little" => false,
                b"big" => true,
                other => {
                    let shown: String = String::from_utf8_lossy(other)
                        .chars()
                        .take(MAX_BYTEORDER as usize)
                        .flat_map(char::escape_debug)
                        .collect();
                    return Err(ErrorKind::Zip(format!(
                        "`{byteorder_name}` says \"{shown}\", not little or big"
                    )));
                }
            }
        }
        Err(ErrorKind::MissingEntry(_)) => false,
        Err(e) => return Err(e),
    };
    let layout = Layout { prefix, big_endian };
    check_storages(&mut archive, &layout, &unpickled, file_len)?;
    Ok((unpickled, layout))
}

/// Checks that every storage has an entry, that its size is possible, and that the entry holds it.
fn check_storages(
    archive: &mut zip::ZipArchive<BufReader<File>>,
    layout: &Layout,
    unpickled: &Unpickled,
    file_len: u64,
) -> Result<(), ErrorKind> {
    let storages = &unpickled.storages;
    let missing: Vec<String> = storages
        .iter()
        .map(|s| layout.entry(&s.key))
        .filter(|name| archive.index_for_name(name).is_none())
        .collect();
    if let Some(first) = missing.first() {
        let more = if missing.len() > 1 {
            format!(
                " (and {} more of the {} storages)",
                missing.len() - 1,
                storages.len()
            )
        } else {
            String::new()
        };
        return Err(ErrorKind::MissingEntry(format!("{first}{more}")));
    }
    for s in storages {
        let name = layout.entry(&s.key);
        let bad = |detail: String| ErrorKind::BadStorage {
            storage: name.clone(),
            tensor: first_tensor_using(&unpickled.root, &s.key),
            detail,
        };
        if s.kind.elem_size().is_none() {
            // Reported when a tensor of it is read: the rest of the file may still be used.
            continue;
        }
        let Some(nbytes) = s.nbytes() else {
            return Err(bad(format!(
                "claims {} {} elements, more bytes than any file can hold",
                s.numel,
                s.kind.name()
            )));
        };
        let entry = open_entry(archive, &name, file_len)?;
        if entry.size() < nbytes {
            return Err(bad(format!(
                "holds {} bytes, but the pickle says {} elements of {} ({nbytes} bytes)",
                entry.size(),
                s.numel,
                s.kind.name()
            )));
        }
    }
    Ok(())
}

/// Reads storages out of a zip checkpoint.
pub(crate) struct StorageReader {
    archive: zip::ZipArchive<BufReader<File>>,
    layout: Layout,
    file_len: u64,
}

impl StorageReader {
    pub(crate) fn new(path: &Path, layout: &Layout) -> Result<Self, ErrorKind> {
        let (archive, file_len) = open_archive(path)?;
        Ok(Self {
            archive,
            layout: layout.clone(),
            file_len,
        })
    }

    pub(crate) fn big_endian(&self) -> bool {
        self.layout.big_endian
    }

    /// The entry name of storage `key`, for messages.
    pub(crate) fn name(&self, key: &str) -> String {
        self.layout.entry(key)
    }

    /// The bytes a read of `range` materialises: the range for a stored entry, everything up to
    /// its end for a deflated one (the bytes before the range are inflated too, then dropped).
    pub(crate) fn cost(&mut self, key: &str, range: &ReadRange) -> Result<u64, ErrorKind> {
        let name = self.layout.entry(key);
        let entry = open_entry(&mut self.archive, &name, self.file_len)?;
        Ok(match entry.compression() {
            zip::CompressionMethod::Stored => range.len(),
            _ => range.end,
        })
    }

    /// Calls `fill` with a reader of bytes `range` of storage `key`.
    pub(crate) fn read<T>(
        &mut self,
        key: &str,
        range: &ReadRange,
        fill: impl FnOnce(&mut dyn Read) -> Result<T, ErrorKind>,
    ) -> Result<T, ErrorKind> {
        let name = self.layout.entry(key);
        let entry = open_entry(&mut self.archive, &name, self.file_len)?;
        if range.end > entry.size() {
            return Err(ErrorKind::BadStorage {
                storage: name,
                tensor: None,
                detail: format!(
                    "holds {} bytes, but the tensors need bytes up to {}",
                    entry.size(),
                    range.end
                ),
            });
        }
        if entry.compression() == zip::CompressionMethod::Stored {
            drop(entry);
            let mut entry = self.archive.by_name_seek(&name).map_err(zip_err)?;
            entry
                .seek(SeekFrom::Start(range.start))
                .map_err(|e| entry_read_err(&name, e))?;
            return fill(&mut entry.take(range.len()));
        }
        let mut entry = entry;
        let skipped = std::io::copy(&mut (&mut entry).take(range.start), &mut std::io::sink())
            .map_err(|e| entry_read_err(&name, e))?;
        if skipped < range.start {
            return Err(ErrorKind::Truncated(format!("entry `{name}` ends early")));
        }
        fill(&mut entry.take(range.len()))
    }
}
