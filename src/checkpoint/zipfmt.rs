//! torch.save's zip format (torch >= 1.6): a zip archive holding `<name>/data.pkl` (the pickled
//! object, whose storages are persistent ids), `<name>/data/<key>` (the raw bytes of each storage),
//! and `<name>/byteorder` (`little` or `big`; absent in files from before torch 1.10, which are
//! little-endian). torch writes entries stored (uncompressed), but deflated entries are read too.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use super::error::ErrorKind;
use super::pickle::{unpickle, StorageRef, Unpickled};

/// Largest data.pkl accepted.
const MAX_PICKLE: u64 = 1 << 30;
/// Deflate cannot expand data more than about 1032 times; a larger claim is a lie.
const MAX_DEFLATE_RATIO: u64 = 1100;

/// Where the parts of a zip checkpoint are.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// The archive's top folder (`archive`, or the file stem in older files).
    pub prefix: String,
    /// Storage bytes are big-endian.
    pub big_endian: bool,
    file_len: u64,
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

fn open_archive(path: &Path) -> Result<(zip::ZipArchive<BufReader<File>>, u64), ErrorKind> {
    let file = File::open(path).map_err(ErrorKind::Io)?;
    let file_len = file.metadata().map_err(ErrorKind::Io)?.len();
    let archive = zip::ZipArchive::new(BufReader::new(file)).map_err(zip_err)?;
    Ok((archive, file_len))
}

/// Reads exactly `n` bytes of the named entry, after checking that the entry can hold them.
fn read_entry(
    archive: &mut zip::ZipArchive<BufReader<File>>,
    name: &str,
    n: Option<u64>,
    file_len: u64,
) -> Result<Vec<u8>, ErrorKind> {
    let entry = match archive.by_name(name) {
        Ok(e) => e,
        Err(zip::result::ZipError::FileNotFound) => {
            return Err(ErrorKind::MissingEntry(name.to_owned()))
        }
        Err(e) => return Err(zip_err(e)),
    };
    let size = entry.size();
    let want = n.unwrap_or(size);
    if want > size {
        return Err(ErrorKind::Zip(format!(
            "entry `{name}` holds {size} bytes but {want} are needed"
        )));
    }
    let bound = match entry.compression() {
        zip::CompressionMethod::Stored => file_len,
        _ => entry.compressed_size().saturating_mul(MAX_DEFLATE_RATIO),
    };
    if want > bound {
        return Err(ErrorKind::Truncated(format!(
            "entry `{name}` claims {want} bytes, more than the file can hold"
        )));
    }
    let cap = usize::try_from(want)
        .map_err(|_| ErrorKind::Limit(format!("entry `{name}` does not fit in memory")))?;
    let mut buf = Vec::with_capacity(cap);
    entry
        .take(want)
        .read_to_end(&mut buf)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                ErrorKind::Truncated(format!("entry `{name}` ends early"))
            }
            _ => ErrorKind::Zip(format!("entry `{name}`: {e}")),
        })?;
    if (buf.len() as u64) < want {
        return Err(ErrorKind::Truncated(format!(
            "entry `{name}` has {} of its {want} bytes",
            buf.len()
        )));
    }
    Ok(buf)
}

/// Reads the archive's directory and its pickle, and checks that every storage the pickle refers to
/// has an entry large enough.
pub(crate) fn open(path: &Path) -> Result<(Unpickled, Layout), ErrorKind> {
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
    let size = archive.by_name(&pkl_name).map_err(zip_err)?.size();
    if size > MAX_PICKLE {
        return Err(ErrorKind::Limit(format!(
            "`{pkl_name}` is {size} bytes, more than this reader accepts"
        )));
    }
    let pkl = read_entry(&mut archive, &pkl_name, None, file_len)?;
    let unpickled = unpickle(
        &mut std::io::Cursor::new(&pkl[..]),
        pkl.len() as u64,
        &pkl_name,
    )?;
    let byteorder_name = format!("{prefix}/byteorder");
    let big_endian = match read_entry(&mut archive, &byteorder_name, None, file_len) {
        Ok(b) => match b.as_slice() {
            b"little" => false,
            b"big" => true,
            other => {
                return Err(ErrorKind::Zip(format!(
                    "`{byteorder_name}` says {:?}, not little or big",
                    String::from_utf8_lossy(&other[..other.len().min(16)])
                )))
            }
        },
        Err(ErrorKind::MissingEntry(_)) => false,
        Err(e) => return Err(e),
    };
    let layout = Layout {
        prefix,
        big_endian,
        file_len,
    };
    check_storages(&mut archive, &layout, &unpickled.storages)?;
    Ok((unpickled, layout))
}

fn check_storages(
    archive: &mut zip::ZipArchive<BufReader<File>>,
    layout: &Layout,
    storages: &[StorageRef],
) -> Result<(), ErrorKind> {
    let names: HashMap<&str, ()> = archive.file_names().map(|n| (n, ())).collect();
    let mut missing = Vec::new();
    for s in storages {
        let name = format!("{}/data/{}", layout.prefix, s.key);
        if !names.contains_key(name.as_str()) {
            missing.push(name);
        }
    }
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
        let name = format!("{}/data/{}", layout.prefix, s.key);
        let entry = archive.by_name(&name).map_err(zip_err)?;
        if let Some(nbytes) = s.nbytes() {
            if entry.size() < nbytes {
                return Err(ErrorKind::Zip(format!(
                    "storage entry `{name}` holds {} bytes, but the pickle says {nbytes}",
                    entry.size()
                )));
            }
        }
    }
    Ok(())
}

/// Reads storages out of a zip checkpoint.
pub(crate) struct StorageReader {
    archive: zip::ZipArchive<BufReader<File>>,
    layout: Layout,
}

impl StorageReader {
    pub(crate) fn new(path: &Path, layout: &Layout) -> Result<Self, ErrorKind> {
        let (archive, _) = open_archive(path)?;
        Ok(Self {
            archive,
            layout: layout.clone(),
        })
    }

    pub(crate) fn big_endian(&self) -> bool {
        self.layout.big_endian
    }

    /// The first `nbytes` bytes of storage `key`.
    pub(crate) fn read(&mut self, key: &str, nbytes: u64) -> Result<Vec<u8>, ErrorKind> {
        let name = format!("{}/data/{key}", self.layout.prefix);
        read_entry(&mut self.archive, &name, Some(nbytes), self.layout.file_len)
    }
}
