//! torch.save's legacy format (torch < 1.6, or `_use_new_zipfile_serialization=False`): five pickles
//! back to back (the magic number, the protocol version 1001, a sys_info dict, the object itself, and
//! the list of storage keys), then each storage's raw bytes, in the order of that list, each after
//! an 8-byte little-endian element count. torch writes the bytes little-endian on every host.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use super::budget::Meter;
use super::error::ErrorKind;
use super::pickle::{unpickle, unpickle_value, Counting, Unpickled};
use super::spans::{SpanLayout, SpanReader};
use super::value::Value;
use super::{first_tensor_using, ReadRange};

/// The legacy format's magic number, 0x1950a86a20f9469cfc6c, in decimal.
const MAGIC: &str = "119547037146038801333356";
/// The only legacy protocol version torch ever wrote.
const PROTOCOL: i64 = 1001;

/// The first bytes of a legacy checkpoint: PROTO 2, then LONG1 of the 10-byte magic number.
pub(crate) const HEADER: [u8; 14] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
];

/// Where each storage's bytes are in the file.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// key -> (byte offset of the data, size in bytes).
    storages: HashMap<String, (u64, u64)>,
}

pub(crate) fn open(path: &Path, meter: &mut Meter) -> Result<(Unpickled, Layout), ErrorKind> {
    let file = File::open(path).map_err(ErrorKind::Io)?;
    let file_len = file.metadata().map_err(ErrorKind::Io)?.len();
    let mut reader = BufReader::new(file);
    let mut pos = 0u64;

    let (magic, n) = unpickle_value(&mut reader, file_len, "the magic-number pickle", meter)?;
    pos += n;
    if !matches!(&magic, Value::BigInt(m) if m == MAGIC) {
        return Err(ErrorKind::Legacy("wrong magic number".to_owned()));
    }
    let (protocol, n) = unpickle_value(
        &mut reader,
        file_len.saturating_sub(pos),
        "the protocol pickle",
        meter,
    )?;
    pos += n;
    if protocol != Value::Int(PROTOCOL) {
        return Err(ErrorKind::Legacy(format!(
            "protocol version {} (only {PROTOCOL} exists)",
            protocol.render(40)
        )));
    }
    let (_sys_info, n) = unpickle_value(
        &mut reader,
        file_len.saturating_sub(pos),
        "the sys_info pickle",
        meter,
    )?;
    pos += n;
    let mut counting = Counting {
        inner: &mut reader,
        n: 0,
    };
    let unpickled = unpickle(
        &mut counting,
        file_len.saturating_sub(pos),
        "the main pickle",
        meter,
    )?;
    pos += counting.n;
    let (keys, n) = unpickle_value(
        &mut reader,
        file_len.saturating_sub(pos),
        "the storage-keys pickle",
        meter,
    )?;
    pos += n;
    let Value::List(keys) = keys else {
        return Err(ErrorKind::Legacy(
            "the storage-keys pickle is not a list".to_owned(),
        ));
    };

    let by_key: HashMap<&str, _> = unpickled
        .storages
        .iter()
        .map(|s| (s.key.as_str(), s))
        .collect();
    let mut storages = HashMap::new();
    for key in &keys {
        let key = match key {
            Value::Str(s) => s.to_string(),
            Value::Int(i) => i.to_string(),
            other => {
                return Err(ErrorKind::Legacy(format!(
                    "storage key {} is not a string",
                    other.render(40)
                )))
            }
        };
        let storage = by_key.get(key.as_str()).ok_or_else(|| {
            ErrorKind::Legacy(format!("storage `{key}` is listed but never used"))
        })?;
        let tensor = || first_tensor_using(&unpickled.root, &key);
        let Some(elem) = storage.kind.elem_size() else {
            // The storage's length in bytes, and so where the next one starts, is unknown.
            return Err(ErrorKind::UnsupportedStorage {
                tensor: tensor(),
                class: storage.kind.name(),
            });
        };
        reader.seek(SeekFrom::Start(pos)).map_err(ErrorKind::Io)?;
        if file_len.saturating_sub(pos) < 8 {
            return Err(ErrorKind::Truncated(format!(
                "the file ends at byte {file_len}, before storage `{key}`"
            )));
        }
        let mut count = [0u8; 8];
        reader.read_exact(&mut count).map_err(ErrorKind::Io)?;
        let count = u64::from_le_bytes(count);
        if count != storage.numel {
            return Err(ErrorKind::Legacy(format!(
                "storage `{key}` has {count} elements in the data but {} in the pickle",
                storage.numel
            )));
        }
        let nbytes = count
            .checked_mul(elem)
            .ok_or_else(|| ErrorKind::BadStorage {
                storage: key.clone(),
                tensor: tensor(),
                detail: format!(
                    "claims {count} {} elements, more bytes than any file can hold",
                    storage.kind.name()
                ),
            })?;
        let start = pos + 8;
        let end = start
            .checked_add(nbytes)
            .filter(|&e| e <= file_len)
            .ok_or_else(|| {
                ErrorKind::Truncated(format!(
                    "storage `{key}` needs bytes {start}..{} but the file ends at {file_len}",
                    start.saturating_add(nbytes)
                ))
            })?;
        storages.insert(key, (start, nbytes));
        pos = end;
    }
    if let Some(s) = unpickled
        .storages
        .iter()
        .find(|s| !storages.contains_key(&s.key))
    {
        return Err(ErrorKind::Legacy(format!(
            "storage `{}` is used but its data is not in the file",
            s.key
        )));
    }
    Ok((unpickled, Layout { storages }))
}

/// Reads storages out of a legacy checkpoint.
pub(crate) type StorageReader = SpanReader<Layout>;

impl SpanLayout for Layout {
    fn span_start(&self, key: &str, range: &ReadRange) -> Result<u64, ErrorKind> {
        let &(start, size) = self
            .storages
            .get(key)
            .ok_or_else(|| ErrorKind::Legacy(format!("no data for storage `{key}`")))?;
        if range.end > size {
            return Err(ErrorKind::BadStorage {
                storage: key.to_owned(),
                tensor: None,
                detail: format!(
                    "holds {size} bytes, but the tensors need bytes up to {}",
                    range.end
                ),
            });
        }
        Ok(start)
    }
}
