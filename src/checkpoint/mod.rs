//! Reads model checkpoints without Python: PyTorch `torch.save` files in the zip format (torch >= 1.6)
//! and the legacy format, and `.safetensors` files. The pickled object is interpreted by a small
//! pickle reader that never runs code ([`pickle`]): tensors are rebuilt from their storages with any
//! size, stride and offset; unknown classes (LlamaGen's `argparse.Namespace` `args`, numpy scalars)
//! are kept as opaque values. Tensor bytes are read only when asked for.
//!
//! ```no_run
//! use llamagen_eval::checkpoint::Checkpoint;
//! let ck = Checkpoint::open("vq_ds16_c2i.pt")?;
//! println!("{}", ck.summary());
//! let weights = ck.state_dict(false)?; // `model`, `module`, `state_dict`, or the top level
//! # Ok::<(), llamagen_eval::checkpoint::CheckpointError>(())
//! ```

mod error;
mod legacy;
mod load;
mod pickle;
mod safetensors;
mod summary;
mod value;
mod zipfmt;

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use tch::Tensor;

pub use error::{CheckpointError, ErrorKind, Mismatch};
pub use load::{load_into, LoadOptions, LoadReport};
pub use summary::{Section, Summary};
pub use value::{DType, Object, TensorData, TensorMeta, Value};

/// The container format of a checkpoint file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// torch.save zip format (torch >= 1.6).
    Zip,
    /// torch.save legacy format (before torch 1.6, or `_use_new_zipfile_serialization=False`).
    Legacy,
    /// `.safetensors`.
    Safetensors,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Zip => "torch.save (zip)",
            Format::Legacy => "torch.save (legacy, pre-1.6)",
            Format::Safetensors => "safetensors",
        })
    }
}

#[derive(Debug)]
enum Source {
    Zip(zipfmt::Layout),
    Legacy(legacy::Layout),
    Safetensors(Vec<Tensor>),
}

/// An opened checkpoint: its object tree, with tensors described but not yet read.
#[derive(Debug)]
pub struct Checkpoint {
    path: PathBuf,
    format: Format,
    root: Value,
    source: Source,
}

/// Top-level keys that hold a state dict, in the order [`Checkpoint::state_dict_key`] tries them.
pub const STATE_DICT_KEYS: [&str; 3] = ["model", "module", "state_dict"];

/// Prefixes that wrappers add to every parameter name: DDP/DataParallel and `torch.compile`.
const WRAPPER_PREFIXES: [&str; 2] = ["module.", "_orig_mod."];

/// Collects the tensors under `v` with '.'-joined names (dict keys, list indices).
pub(crate) fn flatten<'a>(v: &'a Value, prefix: String, out: &mut Vec<(String, &'a TensorMeta)>) {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        Value::Tensor(t) => out.push((prefix, t)),
        Value::Dict(items) => {
            for (k, v) in items {
                flatten(v, join(&key_text(k)), out);
            }
        }
        Value::List(items) | Value::Tuple(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten(v, join(&i.to_string()), out);
            }
        }
        _ => {}
    }
}

/// The text of a dict key as it appears in flattened names.
fn key_text(k: &Value) -> String {
    match k {
        Value::Str(s) => s.clone(),
        other => other.render(60),
    }
}

/// Finds `path` under `v`: a dict key or list index, or several joined by '/' or '.' (keys may
/// themselves contain dots).
fn resolve<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return Some(v);
    }
    if let Value::List(items) | Value::Tuple(items) = v {
        let (first, rest) = match path.find(['.', '/']) {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (path, ""),
        };
        return resolve(items.get(first.parse::<usize>().ok()?)?, rest);
    }
    let entries = v.entries()?;
    if let Some((_, found)) = entries.iter().find(|(k, _)| key_text(k) == path) {
        return Some(found);
    }
    entries.iter().find_map(|(k, child)| {
        let rest = path.strip_prefix(key_text(k).as_str())?;
        let rest = rest.strip_prefix('/').or_else(|| rest.strip_prefix('.'))?;
        resolve(child, rest)
    })
}

/// Removes `module.` / `_orig_mod.` when every name carries it (DDP- or torch.compile-wrapped
/// models), repeatedly.
pub fn strip_wrapper_prefixes<T>(tensors: &mut [(String, T)]) {
    loop {
        let Some(prefix) = WRAPPER_PREFIXES
            .iter()
            .find(|p| !tensors.is_empty() && tensors.iter().all(|(n, _)| n.starts_with(*p)))
        else {
            return;
        };
        for (n, _) in tensors.iter_mut() {
            n.drain(..prefix.len());
        }
    }
}

enum Reader {
    Zip(zipfmt::StorageReader),
    Legacy(legacy::StorageReader),
    None,
}

impl Checkpoint {
    /// Opens a checkpoint, telling the format from the file's first bytes, and reads its object tree
    /// (not the tensor data, except for .safetensors files, which are read whole).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, CheckpointError> {
        let path = path.as_ref();
        Self::open_inner(path).map_err(|kind| CheckpointError::new(path, kind))
    }

    fn open_inner(path: &Path) -> Result<Self, ErrorKind> {
        let mut file = std::fs::File::open(path).map_err(ErrorKind::Io)?;
        let file_len = file.metadata().map_err(ErrorKind::Io)?.len();
        let mut head = Vec::with_capacity(512);
        file.by_ref()
            .take(512)
            .read_to_end(&mut head)
            .map_err(ErrorKind::Io)?;
        drop(file);
        let (format, root, source) = if head.starts_with(b"PK\x03\x04")
            || head.starts_with(b"PK\x05\x06")
        {
            let (unpickled, layout) = zipfmt::open(path)?;
            (Format::Zip, unpickled.root, Source::Zip(layout))
        } else if head.starts_with(&legacy::HEADER) {
            let (unpickled, layout) = legacy::open(path)?;
            (Format::Legacy, unpickled.root, Source::Legacy(layout))
        } else if safetensors::sniff(&head) || path.extension().is_some_and(|e| e == "safetensors")
        {
            let (root, tensors) = safetensors::open(path, file_len)?;
            (Format::Safetensors, root, Source::Safetensors(tensors))
        } else if head.get(257..262) == Some(b"ustar") {
            return Err(ErrorKind::Legacy(
                "this is the tar-based format of torch < 0.4, which is not supported; re-save \
                 it with a current torch"
                    .to_owned(),
            ));
        } else if head.is_empty() {
            return Err(ErrorKind::Truncated("the file is empty".to_owned()));
        } else {
            let shown: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
            return Err(ErrorKind::UnknownFormat(format!(
                "bytes {}",
                shown.join(" ")
            )));
        };
        Ok(Self {
            path: path.to_path_buf(),
            format,
            root,
            source,
        })
    }

    /// The file this checkpoint was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The container format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The whole object tree (usually a dict).
    pub fn root(&self) -> &Value {
        &self.root
    }

    /// The string keys of the top-level dict, in file order (empty when the top level is not a
    /// dict).
    pub fn top_level_keys(&self) -> Vec<String> {
        match &self.root {
            Value::Dict(items) => items.iter().map(|(k, _)| key_text(k)).collect(),
            _ => Vec::new(),
        }
    }

    /// A top-level entry by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.root.get(key)
    }

    /// The value at `key_path` (`None`: the top level); nested keys are joined with '/' or '.'.
    pub fn select(&self, key_path: Option<&str>) -> Result<&Value, CheckpointError> {
        match key_path {
            None => Ok(&self.root),
            Some(p) => resolve(&self.root, p).ok_or_else(|| self.missing_key(p)),
        }
    }

    fn missing_key(&self, key: &str) -> CheckpointError {
        let keys = self.top_level_keys();
        let mut available = keys.iter().take(20).cloned().collect::<Vec<_>>().join(", ");
        if keys.len() > 20 {
            available.push_str(&format!(", ... ({} in all)", keys.len()));
        }
        if keys.is_empty() {
            available = "none: the top level is not a dict".to_owned();
        }
        CheckpointError::new(
            &self.path,
            ErrorKind::MissingKey {
                key: key.to_owned(),
                available,
            },
        )
    }

    /// Descriptions of the tensors under `key_path`, named by their '.'-joined path below it.
    pub fn tensor_metas_at(
        &self,
        key_path: Option<&str>,
    ) -> Result<Vec<(String, &TensorMeta)>, CheckpointError> {
        let v = self.select(key_path)?;
        let mut out = Vec::new();
        flatten(v, String::new(), &mut out);
        Ok(out)
    }

    /// The tensors under `key_path` (`None`: everything), read from the file, in file order and named
    /// by their '.'-joined path below `key_path`. Tensors sharing a storage are views of one CPU
    /// tensor (as in PyTorch), with the file's size, stride and offset.
    pub fn tensors_at(
        &self,
        key_path: Option<&str>,
    ) -> Result<Vec<(String, Tensor)>, CheckpointError> {
        let metas = self.tensor_metas_at(key_path)?;
        self.read_tensors(&metas)
    }

    /// Reads the data of the given tensors (from [`Self::tensor_metas_at`]).
    pub fn read_tensors(
        &self,
        metas: &[(String, &TensorMeta)],
    ) -> Result<Vec<(String, Tensor)>, CheckpointError> {
        self.read_tensors_inner(metas)
            .map_err(|kind| CheckpointError::new(&self.path, kind))
    }

    fn read_tensors_inner(
        &self,
        metas: &[(String, &TensorMeta)],
    ) -> Result<Vec<(String, Tensor)>, ErrorKind> {
        let mut reader = match &self.source {
            Source::Zip(layout) => Reader::Zip(zipfmt::StorageReader::new(&self.path, layout)?),
            Source::Legacy(layout) => {
                Reader::Legacy(legacy::StorageReader::new(&self.path, layout)?)
            }
            Source::Safetensors(_) => Reader::None,
        };
        let mut cache = HashMap::new();
        metas
            .iter()
            .map(|(name, meta)| {
                Ok((
                    name.clone(),
                    self.materialize(name, meta, &mut reader, &mut cache)?,
                ))
            })
            .collect()
    }

    fn materialize(
        &self,
        name: &str,
        meta: &TensorMeta,
        reader: &mut Reader,
        cache: &mut HashMap<(String, DType), Tensor>,
    ) -> Result<Tensor, ErrorKind> {
        let (key, nbytes) = match &meta.data {
            TensorData::Loaded(i) => {
                return match &self.source {
                    Source::Safetensors(ts) => {
                        ts.get(*i)
                            .map(Tensor::shallow_clone)
                            .ok_or_else(|| ErrorKind::BadTensor {
                                tensor: name.to_owned(),
                                detail: "no such tensor in the file".to_owned(),
                            })
                    }
                    _ => Err(ErrorKind::BadTensor {
                        tensor: name.to_owned(),
                        detail: "no data".to_owned(),
                    }),
                }
            }
            TensorData::Storage { key, nbytes } => (key, nbytes),
        };
        let unknown = || ErrorKind::UnknownDtype {
            tensor: name.to_owned(),
            dtype: meta.dtype_name.clone(),
        };
        let dtype = meta.dtype.ok_or_else(unknown)?;
        let nbytes = nbytes.ok_or_else(unknown)?;
        let elems = nbytes / dtype.size() as u64;
        value::check_view(&meta.shape, &meta.stride, meta.offset, elems).map_err(|detail| {
            ErrorKind::BadTensor {
                tensor: name.to_owned(),
                detail,
            }
        })?;
        let cache_key = (key.clone(), dtype);
        let storage = match cache.get(&cache_key) {
            Some(t) => t.shallow_clone(),
            None => {
                let used = elems * dtype.size() as u64;
                let (mut bytes, big_endian) = match reader {
                    Reader::Zip(r) => (r.read(key, used)?, r.big_endian()),
                    Reader::Legacy(r) => (r.read(key, used)?, false),
                    Reader::None => {
                        return Err(ErrorKind::BadTensor {
                            tensor: name.to_owned(),
                            detail: "no storage data in this file".to_owned(),
                        })
                    }
                };
                if big_endian && dtype.swap_unit() > 1 {
                    for chunk in bytes.chunks_exact_mut(dtype.swap_unit()) {
                        chunk.reverse();
                    }
                }
                let n = i64::try_from(elems)
                    .map_err(|_| ErrorKind::Limit(format!("storage `{key}` is too large")))?;
                let t = Tensor::f_from_data_size(&bytes, &[n], dtype.kind())
                    .map_err(ErrorKind::Torch)?;
                cache.insert(cache_key, t.shallow_clone());
                t
            }
        };
        storage
            .f_as_strided(&meta.shape, &meta.stride, Some(meta.offset))
            .map_err(ErrorKind::Torch)
    }

    /// Which entry holds the model's state dict: `ema` when `prefer_ema` (an error if absent), else
    /// the first of [`STATE_DICT_KEYS`] that holds tensors, else `None` (the top level is the state
    /// dict, as in FSDP `consolidated.pth` files and safetensors).
    pub fn state_dict_key(&self, prefer_ema: bool) -> Result<Option<String>, CheckpointError> {
        if prefer_ema {
            return match self.get("ema") {
                Some(v) if v.contains_tensor() => Ok(Some("ema".to_owned())),
                _ => Err(self.missing_key("ema")),
            };
        }
        Ok(STATE_DICT_KEYS
            .iter()
            .find(|k| self.get(k).is_some_and(Value::contains_tensor))
            .map(|k| (*k).to_owned()))
    }

    /// The model's state dict (see [`Self::state_dict_key`]), with `module.` / `_orig_mod.` wrapper
    /// prefixes removed.
    pub fn state_dict(&self, prefer_ema: bool) -> Result<Vec<(String, Tensor)>, CheckpointError> {
        let key = self.state_dict_key(prefer_ema)?;
        let mut tensors = self.tensors_at(key.as_deref())?;
        strip_wrapper_prefixes(&mut tensors);
        Ok(tensors)
    }

    /// Loads the state dict ([`Self::state_dict`]) into the variables of `vs`.
    pub fn load_into(
        &self,
        vs: &mut tch::nn::VarStore,
        prefer_ema: bool,
        opts: &LoadOptions,
    ) -> Result<LoadReport, CheckpointError> {
        let tensors = self.state_dict(prefer_ema)?;
        load_into(vs, &tensors, &self.path, opts)
    }

    /// Keys, tensor counts and configuration, for `inspect`.
    pub fn summary(&self) -> Summary {
        let (sections, config) = summary::describe(&self.root);
        let key = self.state_dict_key(false).ok().flatten();
        let picked = match &key {
            Some(k) => sections.iter().find(|s| &s.key == k).cloned(),
            None => sections
                .iter()
                .find(|s| s.key == summary::TOP_LEVEL)
                .cloned(),
        };
        let (tensors, parameters) = picked.map_or((0, 0), |s| (s.tensors, s.parameters));
        Summary {
            path: self.path.clone(),
            format: self.format,
            top_level_keys: self.top_level_keys(),
            sections,
            state_dict_key: key,
            tensors,
            parameters,
            config,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Value {
        Value::Str(x.to_owned())
    }

    #[test]
    fn wrapper_prefixes_are_stripped_only_when_shared() {
        let mut names = vec![
            ("module._orig_mod.a.weight".to_owned(), ()),
            ("module._orig_mod.b".to_owned(), ()),
        ];
        strip_wrapper_prefixes(&mut names);
        assert_eq!(names[0].0, "a.weight");
        let mut mixed = vec![("module.a".to_owned(), ()), ("b".to_owned(), ())];
        strip_wrapper_prefixes(&mut mixed);
        assert_eq!(mixed[0].0, "module.a");
    }

    #[test]
    fn paths_resolve_through_dotted_keys_and_indices() {
        let leaf = Value::Int(3);
        let root = Value::Dict(vec![(
            s("state"),
            Value::Dict(vec![(
                s("layers.0"),
                Value::List(vec![
                    Value::None,
                    Value::Dict(vec![(Value::Int(7), leaf.clone())]),
                ]),
            )]),
        )]);
        assert_eq!(resolve(&root, "state/layers.0/1/7"), Some(&leaf));
        assert_eq!(resolve(&root, "state.layers.0.1.7"), Some(&leaf));
        assert_eq!(resolve(&root, "state.layers.1"), None);
    }

    #[test]
    fn mismatch_message_lists_counts_and_first_names() {
        let m = Mismatch {
            missing: (0..7).map(|i| format!("m{i}")).collect(),
            unexpected: vec!["u".to_owned()],
            mis_shaped: vec![("w".to_owned(), vec![2, 3], vec![3, 2])],
        };
        assert_eq!(
            m.to_string(),
            "7 missing from the checkpoint (m0, m1, m2, m3, m4, ... and 2 more); 1 unexpected in \
             the checkpoint (u); 1 with a different shape (w: checkpoint [2, 3] vs model [3, 2])"
        );
    }
}
