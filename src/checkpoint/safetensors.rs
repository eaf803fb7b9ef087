//! `.safetensors` files: an 8-byte little-endian header length, a JSON header naming each tensor's
//! dtype, shape and byte range (`data_offsets`, relative to the end of the header), then the bytes.
//! The header is checked as the format requires (the ranges tile the data exactly, each range is
//! its shape's size) with a sentence naming the problem; tensor bytes are read only when asked for.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use super::budget::Meter;
use super::error::ErrorKind;
use super::spans::{SpanLayout, SpanReader};
use super::value::{shape_text, DType, TensorData, TensorMeta, Value};
use super::ReadRange;

/// Longest header accepted, as the safetensors library.
const MAX_HEADER: u64 = 100_000_000;
/// What parsing one header byte may cost at most (a shape entry `1,` becomes 8 bytes).
const HEADER_EXPANSION: u64 = 8;

/// True when `head` (the file's first bytes) looks like a safetensors header.
pub(crate) fn sniff(head: &[u8]) -> bool {
    head.len() > 8 && head[8] == b'{'
}

/// Where each tensor's bytes are.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// Offset of the data section in the file.
    data_start: u64,
    /// Tensor name -> (start, end) in the data section.
    ranges: HashMap<String, (u64, u64)>,
}

/// One tensor of the header.
#[derive(Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

/// The header's tensors in file order; `__metadata__` (free-form strings) is skipped.
struct Header(Vec<(String, Entry)>);

impl<'de> Deserialize<'de> for Header {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct HeaderVisitor;
        impl<'de> Visitor<'de> for HeaderVisitor {
            type Value = Header;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of tensors")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Header, A::Error> {
                let mut entries = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    if name == "__metadata__" {
                        map.next_value::<IgnoredAny>()?;
                    } else {
                        let entry = map
                            .next_value::<Entry>()
                            .map_err(|e| de::Error::custom(format!("tensor `{name}`: {e}")))?;
                        entries.push((name, entry));
                    }
                }
                Ok(Header(entries))
            }
        }
        d.deserialize_map(HeaderVisitor)
    }
}

/// The element size of a safetensors dtype, and our [`DType`] when this reader builds it.
fn dtype_of(name: &str) -> Option<(u64, Option<DType>)> {
    Some(match name {
        "BOOL" => (1, Some(DType::Bool)),
        "U8" => (1, Some(DType::U8)),
        "I8" => (1, Some(DType::I8)),
        "F8_E5M2" | "F8_E4M3" => (1, None),
        "I16" => (2, Some(DType::I16)),
        "U16" => (2, None),
        "F16" => (2, Some(DType::F16)),
        "BF16" => (2, Some(DType::BF16)),
        "I32" => (4, Some(DType::I32)),
        "U32" => (4, None),
        "F32" => (4, Some(DType::F32)),
        "F64" => (8, Some(DType::F64)),
        "I64" => (8, Some(DType::I64)),
        "U64" => (8, None),
        _ => return None,
    })
}

fn invalid(detail: String) -> ErrorKind {
    ErrorKind::Safetensors(detail)
}

/// Reads and checks the header; returns the root dict (name -> tensor, sorted by name) and where
/// the bytes are.
pub(crate) fn open(
    path: &Path,
    file_len: u64,
    meter: &mut Meter,
) -> Result<(Value, Layout), ErrorKind> {
    let mut file = BufReader::new(File::open(path).map_err(ErrorKind::Io)?);
    let mut head = [0u8; 8];
    file.read_exact(&mut head).map_err(|_| {
        ErrorKind::Truncated(
            "shorter than the 8-byte header length that starts a safetensors file".to_owned(),
        )
    })?;
    let header_len = u64::from_le_bytes(head);
    if header_len > file_len.saturating_sub(8) {
        return Err(ErrorKind::Truncated(format!(
            "the safetensors header claims {header_len} bytes but the file has {file_len}"
        )));
    }
    if header_len > MAX_HEADER {
        return Err(invalid(format!(
            "the header is {header_len} bytes, more than the {MAX_HEADER} the format allows"
        )));
    }
    meter.charge(header_len.saturating_mul(HEADER_EXPANSION), || {
        format!("the safetensors header ({header_len} bytes)")
    })?;
    let mut text = vec![0u8; header_len as usize];
    file.read_exact(&mut text).map_err(ErrorKind::Io)?;
    let text = std::str::from_utf8(&text)
        .map_err(|_| invalid("the header is not UTF-8 text".to_owned()))?;
    if !text.starts_with('{') {
        return Err(invalid("the header is not a JSON object".to_owned()));
    }
    let Header(mut entries) = serde_json::from_str(text)
        .map_err(|e| invalid(format!("the header is not valid safetensors JSON: {e}")))?;

    entries.sort_by_key(|(_, e)| e.data_offsets);
    let mut ranges = HashMap::with_capacity(entries.len());
    let mut metas = Vec::with_capacity(entries.len());
    let mut end_of_previous = 0u64;
    for (name, entry) in entries {
        let (start, end) = entry.data_offsets;
        if start != end_of_previous || end < start {
            return Err(invalid(format!(
                "tensor `{name}` has bytes {start}..{end}, but the tensors' bytes must follow one \
                 another from 0 (the previous ends at {end_of_previous})"
            )));
        }
        end_of_previous = end;
        let (size, dtype) = dtype_of(&entry.dtype).ok_or_else(|| {
            invalid(format!(
                "tensor `{name}` has dtype `{}`, which is not a safetensors dtype",
                entry.dtype
            ))
        })?;
        let shape: Vec<i64> = entry
            .shape
            .iter()
            .map(|&d| i64::try_from(d))
            .collect::<Result<_, _>>()
            .map_err(|_| invalid(format!("tensor `{name}` has a dimension beyond 2^63")))?;
        let nbytes = entry
            .shape
            .iter()
            .try_fold(size, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| {
                invalid(format!(
                    "tensor `{name}` has shape {}, more bytes than any file can hold",
                    shape_text(&shape)
                ))
            })?;
        if nbytes != end - start {
            return Err(invalid(format!(
                "tensor `{name}` has shape {} of {} ({nbytes} bytes), but its data_offsets span \
                 {} bytes",
                shape_text(&shape),
                entry.dtype,
                end - start
            )));
        }
        let mut stride = vec![0i64; shape.len()];
        let mut step = 1i64;
        for (s, &d) in stride.iter_mut().zip(&shape).rev() {
            *s = step;
            // Fits: the product of the dimensions is at most the byte count, which fits in u64,
            // unless a dimension is 0, when the strides do not matter.
            step = step.saturating_mul(d.max(1));
        }
        let dtype_name = dtype.map_or(entry.dtype.clone(), |d| d.name().to_owned());
        if ranges.insert(name.clone(), (start, end)).is_some() {
            return Err(invalid(format!(
                "tensor `{name}` appears twice in the header"
            )));
        }
        metas.push((
            name.clone(),
            TensorMeta {
                dtype,
                dtype_name,
                shape,
                stride,
                offset: 0,
                data: TensorData::Storage {
                    key: name,
                    nbytes: Some(nbytes),
                },
            },
        ));
    }
    let data_start = 8 + header_len;
    let data_len = file_len - data_start;
    if end_of_previous > data_len {
        return Err(ErrorKind::Truncated(format!(
            "the header describes {end_of_previous} bytes of tensor data, but the file holds \
             {data_len} after the header"
        )));
    }
    if end_of_previous < data_len {
        return Err(invalid(format!(
            "the file has {} bytes after the last tensor's data (damaged, or not a safetensors \
             file)",
            data_len - end_of_previous
        )));
    }
    metas.sort_by(|a, b| a.0.cmp(&b.0));
    let items = metas
        .into_iter()
        .map(|(name, meta)| (Value::Str(name.into()), Value::Tensor(meta)))
        .collect();
    Ok((Value::Dict(items), Layout { data_start, ranges }))
}

/// Reads tensor bytes out of a safetensors file.
pub(crate) type StorageReader = SpanReader<Layout>;

/// A tensor is its own storage: its name is the key.
impl SpanLayout for Layout {
    fn span_start(&self, name: &str, range: &ReadRange) -> Result<u64, ErrorKind> {
        let &(start, end) = self.ranges.get(name).ok_or_else(|| ErrorKind::BadTensor {
            tensor: name.to_owned(),
            detail: "no such tensor in the file".to_owned(),
        })?;
        if range.end > end - start {
            return Err(ErrorKind::BadTensor {
                tensor: name.to_owned(),
                detail: format!(
                    "holds {} bytes, but bytes up to {} are needed",
                    end - start,
                    range.end
                ),
            });
        }
        Ok(self.data_start + start)
    }
}
