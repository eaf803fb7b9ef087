//! `.safetensors` files: an 8-byte little-endian header length, a JSON header naming each tensor's
//! dtype, shape and byte range, then the bytes. Read with tch's reader (which uses the safetensors
//! crate), after checking the header length against the file so a damaged file fails cleanly.

use std::path::Path;

use super::error::ErrorKind;
use super::value::{DType, TensorData, TensorMeta, Value};

/// True when `head` (the file's first bytes) looks like a safetensors header.
pub(crate) fn sniff(head: &[u8]) -> bool {
    head.len() > 8 && head[8] == b'{'
}

/// Reads every tensor; returns the root dict (name -> tensor, sorted by name) and the tensors.
pub(crate) fn open(path: &Path, file_len: u64) -> Result<(Value, Vec<tch::Tensor>), ErrorKind> {
    let mut head = [0u8; 8];
    {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(ErrorKind::Io)?;
        f.read_exact(&mut head).map_err(|_| {
            ErrorKind::Truncated("shorter than a safetensors header length".to_owned())
        })?;
    }
    let header_len = u64::from_le_bytes(head);
    if header_len > file_len.saturating_sub(8) {
        return Err(ErrorKind::Truncated(format!(
            "the safetensors header claims {header_len} bytes but the file has {file_len}"
        )));
    }
    let mut named = tch::Tensor::read_safetensors(path).map_err(|e| match e {
        tch::TchError::SafeTensorError { err, .. } => ErrorKind::Safetensors(err.to_string()),
        other => ErrorKind::Safetensors(other.to_string()),
    })?;
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let mut items = Vec::with_capacity(named.len());
    let mut tensors = Vec::with_capacity(named.len());
    for (i, (name, t)) in named.into_iter().enumerate() {
        let kind = t.kind();
        let meta = TensorMeta {
            dtype: DType::from_kind(kind),
            dtype_name: DType::from_kind(kind)
                .map(|d| d.name().to_owned())
                .unwrap_or_else(|| format!("{kind:?}")),
            shape: t.size(),
            stride: t.stride(),
            offset: 0,
            data: TensorData::Loaded(i),
        };
        items.push((Value::Str(name), Value::Tensor(meta)));
        tensors.push(t);
    }
    Ok((Value::Dict(items), tensors))
}
