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

mod budget;
mod error;
mod legacy;
mod load;
mod pickle;
mod safetensors;
mod spans;
mod summary;
mod value;
mod zipfmt;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use tch::{Device, Tensor};

use budget::Meter;
pub use budget::ReadBudget;
pub use error::{CheckpointError, ErrorKind, Mismatch};
pub(crate) use load::missing_variables;
pub use load::{load_into, LoadOptions, LoadReport};
pub use summary::{human_count, Section, Summary};
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
    Safetensors(safetensors::Layout),
}

/// An opened checkpoint: its object tree, with tensors described but not yet read.
#[derive(Debug)]
pub struct Checkpoint {
    path: PathBuf,
    format: Format,
    root: Value,
    source: Source,
    file_len: u64,
    budget: ReadBudget,
    /// Bytes charged to the budget while opening: an upper bound on what the open checkpoint
    /// holds (its object tree), counted against each later read.
    held: u64,
}

/// Top-level keys that hold a state dict, in the order [`Checkpoint::state_dict_key`] tries them.
pub const STATE_DICT_KEYS: [&str; 3] = ["model", "module", "state_dict"];

/// Prefixes that wrappers add to every parameter name: DDP/DataParallel and `torch.compile`.
const WRAPPER_PREFIXES: [&str; 2] = ["module.", "_orig_mod."];

/// Longest tensor name shown in a message about a storage.
const NAME_SHOWN: usize = 200;

/// Bytes `start..end` of a storage: the part its tensors' views cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadRange {
    pub start: u64,
    pub end: u64,
}

impl ReadRange {
    pub(crate) fn len(&self) -> u64 {
        self.end - self.start
    }
}

/// The text of a dict key as it appears in flattened names: the string itself, or a short
/// rendering of other keys.
fn key_text(k: &Value) -> Cow<'_, str> {
    match k {
        Value::Str(s) => Cow::Borrowed(s),
        other => Cow::Owned(other.render(60)),
    }
}

/// The path to a value: dict keys and list indices, outermost first.
type KeyPath<'a> = [Cow<'a, str>];

/// Calls `found` with the path and description of each tensor under `v`, in file order, until it
/// breaks.
fn walk<'a, B>(
    v: &'a Value,
    path: &mut Vec<Cow<'a, str>>,
    found: &mut dyn FnMut(&KeyPath<'a>, &'a TensorMeta) -> ControlFlow<B>,
) -> ControlFlow<B> {
    match v {
        Value::Tensor(t) => found(path, t),
        Value::Dict(items) => {
            for (k, x) in items {
                path.push(key_text(k));
                walk(x, path, found)?;
                path.pop();
            }
            ControlFlow::Continue(())
        }
        Value::List(items) | Value::Tuple(items) => {
            for (i, x) in items.iter().enumerate() {
                path.push(Cow::Owned(i.to_string()));
                walk(x, path, found)?;
                path.pop();
            }
            ControlFlow::Continue(())
        }
        _ => ControlFlow::Continue(()),
    }
}

/// Calls `f` with every tensor under `v`.
pub(crate) fn for_each_tensor<'a>(v: &'a Value, f: &mut dyn FnMut(&'a TensorMeta)) {
    let _ = walk::<()>(v, &mut Vec::new(), &mut |_, t| {
        f(t);
        ControlFlow::Continue(())
    });
}

/// The tensors under `v` with '.'-joined names (dict keys, list indices); the names are charged to
/// `meter` (keys may be long and a shared key may name many tensors).
fn flatten<'a>(
    v: &'a Value,
    meter: &mut Meter,
) -> Result<Vec<(String, &'a TensorMeta)>, ErrorKind> {
    let mut out = Vec::new();
    let flow = walk(v, &mut Vec::new(), &mut |path, t| {
        let len: usize = path.iter().map(|p| p.len() + 1).sum();
        let cost = len + std::mem::size_of::<(String, &TensorMeta)>();
        if let Err(e) = meter.charge(cost as u64, || "naming the tensors".to_owned()) {
            return ControlFlow::Break(e);
        }
        out.push((path.join("."), t));
        ControlFlow::Continue(())
    });
    match flow {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(out),
    }
}

/// The name of the first tensor under `root` whose data is storage `key`, shortened for messages.
pub(crate) fn first_tensor_using(root: &Value, key: &str) -> Option<String> {
    let flow = walk(root, &mut Vec::new(), &mut |path, t| match &t.data {
        TensorData::Storage { key: k, .. } if k == key => {
            let mut name = path.join(".");
            value::shorten(&mut name, NAME_SHOWN);
            ControlFlow::Break(name)
        }
        _ => ControlFlow::Continue(()),
    });
    match flow {
        ControlFlow::Break(name) => Some(name),
        ControlFlow::Continue(()) => None,
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
        let rest = path.strip_prefix(&*key_text(k))?;
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

/// Reads storage bytes from the file, whatever its format.
enum Reader {
    Zip(zipfmt::StorageReader),
    Legacy(legacy::StorageReader),
    Safetensors(safetensors::StorageReader),
}

impl Reader {
    /// How messages name storage `key`.
    fn name(&self, key: &str) -> String {
        match self {
            Reader::Zip(r) => r.name(key),
            Reader::Legacy(_) => format!("storage {key}"),
            Reader::Safetensors(_) => format!("the data of tensor `{key}`"),
        }
    }

    /// What reading storage `key` for tensor `tensor` is, for budget errors.
    fn reading(&self, key: &str, tensor: &str) -> String {
        match self {
            // A safetensors tensor is its own storage.
            Reader::Safetensors(_) => format!("reading tensor `{tensor}`"),
            _ => format!("reading {} for tensor `{tensor}`", self.name(key)),
        }
    }

    /// The bytes reading `range` of storage `key` materialises.
    fn cost(&mut self, key: &str, range: &ReadRange) -> Result<u64, ErrorKind> {
        match self {
            Reader::Zip(r) => r.cost(key, range),
            Reader::Legacy(_) | Reader::Safetensors(_) => Ok(range.len()),
        }
    }

    fn big_endian(&self) -> bool {
        match self {
            Reader::Zip(r) => r.big_endian(),
            // torch writes legacy storages little-endian on every host; safetensors is
            // little-endian by definition.
            Reader::Legacy(_) | Reader::Safetensors(_) => false,
        }
    }

    fn read<T>(
        &mut self,
        key: &str,
        range: &ReadRange,
        fill: impl FnOnce(&mut dyn Read) -> Result<T, ErrorKind>,
    ) -> Result<T, ErrorKind> {
        match self {
            Reader::Zip(r) => r.read(key, range, fill),
            Reader::Legacy(r) => r.read(key, range, fill),
            Reader::Safetensors(r) => r.read(key, range, fill),
        }
    }
}

/// A CPU tensor of `elems` elements of `dtype` filled from `src`, swapping byte order when
/// `swap`; `what` names the bytes in errors. The bytes go straight into the tensor's buffer: no
/// copy of the storage is ever held beside it.
fn fill_storage(
    src: &mut dyn Read,
    elems: u64,
    dtype: DType,
    swap: bool,
    what: &str,
) -> Result<Tensor, ErrorKind> {
    let too_large = || ErrorKind::Limit(format!("{what} is too large for this machine"));
    let n = i64::try_from(elems).map_err(|_| too_large())?;
    let len = usize::try_from(elems)
        .ok()
        .and_then(|e| e.checked_mul(dtype.size()))
        .ok_or_else(too_large)?;
    let storage = Tensor::f_empty([n], (dtype.kind(), Device::Cpu)).map_err(ErrorKind::Torch)?;
    if len == 0 {
        return Ok(storage);
    }
    // SAFETY: `storage` is a new contiguous CPU tensor of `elems` elements of `dtype.size()`
    // bytes, so its buffer is `len` bytes long; nothing else refers to it until this function
    // returns, and the slice does not outlive this function.
    let bytes: &mut [u8] =
        unsafe { std::slice::from_raw_parts_mut(storage.data_ptr().cast::<u8>(), len) };
    src.read_exact(bytes).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => ErrorKind::Truncated(format!("{what} ends early")),
        _ => ErrorKind::Io(std::io::Error::new(e.kind(), format!("{what}: {e}"))),
    })?;
    if swap && dtype.swap_unit() > 1 {
        for unit in bytes.chunks_exact_mut(dtype.swap_unit()) {
            unit.reverse();
        }
    }
    Ok(storage)
}

/// What reading one tensor needs: its storage and element type, and the storage elements its view
/// covers (`None`: the view is empty).
struct Plan<'a> {
    key: &'a str,
    dtype: DType,
    span: Option<(u64, u64)>,
}

/// Checks tensor `name`'s description and says what reading it needs.
fn plan<'a>(name: &str, meta: &'a TensorMeta) -> Result<Plan<'a>, ErrorKind> {
    let TensorData::Storage { key, nbytes } = &meta.data;
    let Some(dtype) = meta.dtype else {
        // The pickle reader names unknown storage classes (`torch.QInt8Storage`) where a dtype
        // would be.
        return Err(if meta.dtype_name.ends_with("Storage") {
            ErrorKind::UnsupportedStorage {
                tensor: Some(name.to_owned()),
                class: meta.dtype_name.clone(),
            }
        } else {
            ErrorKind::UnknownDtype {
                tensor: name.to_owned(),
                dtype: meta.dtype_name.clone(),
            }
        });
    };
    let Some(nbytes) = *nbytes else {
        return Err(ErrorKind::BadStorage {
            storage: key.clone(),
            tensor: Some(name.to_owned()),
            detail: "claims more bytes than any file can hold".to_owned(),
        });
    };
    let bad = |detail| ErrorKind::BadTensor {
        tensor: name.to_owned(),
        detail,
    };
    value::check_view(
        &meta.shape,
        &meta.stride,
        meta.offset,
        nbytes / dtype.size() as u64,
    )
    .map_err(bad)?;
    let span = value::view_span(&meta.shape, &meta.stride, meta.offset).map_err(bad)?;
    Ok(Plan { key, dtype, span })
}

impl Checkpoint {
    /// Opens a checkpoint, telling the format from the file's first bytes, and reads its object tree
    /// (not the tensor data), within the process's [`ReadBudget::process_default`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, CheckpointError> {
        Self::open_with(path, ReadBudget::process_default())
    }

    /// [`Self::open`] within `budget`, which also bounds each later read of tensors.
    pub fn open_with(path: impl AsRef<Path>, budget: ReadBudget) -> Result<Self, CheckpointError> {
        let path = path.as_ref();
        Self::open_inner(path, budget).map_err(|kind| CheckpointError::new(path, kind))
    }

    fn open_inner(path: &Path, budget: ReadBudget) -> Result<Self, ErrorKind> {
        let mut file = std::fs::File::open(path).map_err(ErrorKind::Io)?;
        let file_len = file.metadata().map_err(ErrorKind::Io)?.len();
        let mut head = Vec::with_capacity(512);
        file.by_ref()
            .take(512)
            .read_to_end(&mut head)
            .map_err(ErrorKind::Io)?;
        drop(file);
        let mut meter = Meter::new(budget, file_len, 0);
        let (format, root, source) = if head.starts_with(b"PK\x03\x04")
            || head.starts_with(b"PK\x05\x06")
        {
            let (unpickled, layout) = zipfmt::open(path, &mut meter)?;
            (Format::Zip, unpickled.root, Source::Zip(layout))
        } else if head.starts_with(&legacy::HEADER) {
            let (unpickled, layout) = legacy::open(path, &mut meter)?;
            (Format::Legacy, unpickled.root, Source::Legacy(layout))
        } else if safetensors::sniff(&head) || path.extension().is_some_and(|e| e == "safetensors")
        {
            let (root, layout) = safetensors::open(path, file_len, &mut meter)?;
            (Format::Safetensors, root, Source::Safetensors(layout))
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
            file_len,
            budget,
            held: meter.used(),
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
            Value::Dict(items) => items
                .iter()
                .map(|(k, _)| key_text(k).into_owned())
                .collect(),
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
        let mut meter = self.meter();
        flatten(v, &mut meter).map_err(|kind| CheckpointError::new(&self.path, kind))
    }

    /// A meter for one read: the budget less what the open checkpoint holds.
    fn meter(&self) -> Meter {
        Meter::new(self.budget, self.file_len, self.held)
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
        let mut meter = self.meter();
        // Pass 1: check every view, and find the elements each storage (per element type) must
        // provide: only those are read.
        let mut plans = Vec::with_capacity(metas.len());
        let mut spans: HashMap<(&str, DType), (u64, u64, &str)> = HashMap::new();
        let mut order = Vec::new();
        for (name, meta) in metas {
            let plan = plan(name, meta)?;
            if let Some((first, end)) = plan.span {
                spans
                    .entry((plan.key, plan.dtype))
                    .and_modify(|s| {
                        s.0 = s.0.min(first);
                        s.1 = s.1.max(end);
                    })
                    .or_insert_with(|| {
                        order.push((plan.key, plan.dtype));
                        (first, end, name.as_str())
                    });
            }
            plans.push(plan);
        }
        // Pass 2: read each storage's range once; views of one storage share it, as in PyTorch.
        let mut reader = match &self.source {
            Source::Zip(layout) => Reader::Zip(zipfmt::StorageReader::new(&self.path, layout)?),
            Source::Legacy(layout) => {
                Reader::Legacy(legacy::StorageReader::new(&self.path, layout)?)
            }
            Source::Safetensors(layout) => {
                Reader::Safetensors(safetensors::StorageReader::new(&self.path, layout)?)
            }
        };
        let mut storages: HashMap<(&str, DType), (Tensor, u64)> = HashMap::new();
        for (key, dtype) in order {
            let Some(&(first, end, tensor)) = spans.get(&(key, dtype)) else {
                continue;
            };
            let size = dtype.size() as u64;
            // Cannot overflow: the view was checked against the storage's byte size.
            let range = ReadRange {
                start: first * size,
                end: end * size,
            };
            let cost = reader.cost(key, &range)?;
            meter.charge(cost, || reader.reading(key, tensor))?;
            let what = reader.name(key);
            let swap = reader.big_endian();
            let storage = reader.read(key, &range, |src| {
                fill_storage(src, end - first, dtype, swap, &what)
            })?;
            storages.insert((key, dtype), (storage, first));
        }
        metas
            .iter()
            .zip(&plans)
            .map(|((name, meta), plan)| {
                let tensor = match storages.get(&(plan.key, plan.dtype)) {
                    Some((storage, first)) if plan.span.is_some() => storage.f_as_strided(
                        &meta.shape,
                        &meta.stride,
                        Some(meta.offset - *first as i64),
                    ),
                    _ => Tensor::f_empty_strided(
                        &meta.shape,
                        &meta.stride,
                        (plan.dtype.kind(), Device::Cpu),
                    ),
                };
                Ok((name.clone(), tensor.map_err(ErrorKind::Torch)?))
            })
            .collect()
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
        Value::Str(x.into())
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
