//! The weights of a Hugging Face model, read tensor by tensor: a model folder (`model.safetensors`,
//! a sharded `model.safetensors.index.json`, `pytorch_model.bin` or a sharded
//! `pytorch_model.bin.index.json`, in the order `from_pretrained` looks for them), an index file, or
//! one weights file.
//!
//! Only the headers are read when the set is opened (the safetensors JSON header, the torch.save
//! pickle), so that a caller can pick the tensors it needs by name and shape: the T5 encoder takes
//! about 40 % of FLAN-T5-XL's 11 GB of float32 weights and skips the decoder. [`WeightSet::load_into`]
//! then reads the picked tensors one at a time straight into a `VarStore`, converting each to its
//! variable's dtype and device, so at most one tensor of the file is in memory beside the model.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use tch::nn::VarStore;
use tch::{Kind, Tensor};

use crate::checkpoint::{missing_variables, Checkpoint, CheckpointError, ErrorKind, Mismatch};

/// The file names `from_pretrained` tries in a model folder, in its order of preference.
pub const FOLDER_FILES: [&str; 4] = [
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
];

/// A safetensors header larger than this is refused (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100 << 20;

/// Why a set of weights could not be opened or read. Names the file.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// A folder with none of [`FOLDER_FILES`].
    #[error(
        "{}: no model weights in this folder (looked for model.safetensors, \
         model.safetensors.index.json, pytorch_model.bin and pytorch_model.bin.index.json)",
        dir.display()
    )]
    NoWeights {
        /// The folder.
        dir: PathBuf,
    },
    /// A file could not be opened or read.
    #[error("{}: cannot read it: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A sharded checkpoint's index (`*.index.json`) is unreadable or names missing shards.
    #[error("{}: bad shard index: {detail}", path.display())]
    Index {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A `.safetensors` file whose header is damaged or whose tensors lie outside the file.
    #[error("{}: bad safetensors file: {detail}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A torch.save file that the checkpoint reader refused, or names and shapes that do not
    /// match the model.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// One tensor of a safetensors file, as its header describes it.
#[derive(Debug, Clone)]
struct SafetensorsEntry {
    name: String,
    kind: Kind,
    shape: Vec<i64>,
    /// Absolute byte range in the file.
    begin: u64,
    end: u64,
}

#[derive(Debug)]
enum Source {
    Safetensors {
        path: PathBuf,
        entries: Vec<SafetensorsEntry>,
    },
    Torch(Box<Checkpoint>),
}

impl Source {
    fn path(&self) -> &Path {
        match self {
            Source::Safetensors { path, .. } => path,
            Source::Torch(ck) => ck.path(),
        }
    }
}

/// The tensors of one model, across one or more files, with nothing read but their names, dtypes
/// and shapes.
#[derive(Debug)]
pub struct WeightSet {
    /// What the caller named: the folder, index or file (used in mismatch errors).
    origin: PathBuf,
    sources: Vec<Source>,
}

impl WeightSet {
    /// Opens the weights at `path`: a model folder, a `*.index.json`, or one `.safetensors` /
    /// torch.save file.
    pub fn open(path: &Path) -> Result<WeightSet, WeightsError> {
        let files = if path.is_dir() {
            let found = FOLDER_FILES
                .iter()
                .map(|name| path.join(name))
                .find(|p| p.is_file())
                .ok_or_else(|| WeightsError::NoWeights {
                    dir: path.to_path_buf(),
                })?;
            files_of(&found)?
        } else {
            files_of(path)?
        };
        let sources = files
            .iter()
            .map(|file| open_file(file))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(WeightSet {
            origin: path.to_path_buf(),
            sources,
        })
    }

    /// The files that make up the set, in reading order.
    pub fn files(&self) -> Vec<PathBuf> {
        self.sources
            .iter()
            .map(|s| s.path().to_path_buf())
            .collect()
    }

    /// Every tensor's name and shape, file by file (names in a torch.save file are those of its
    /// state dict, under `model` / `module` / `state_dict` when it has one of them).
    pub fn shapes(&self) -> Result<Vec<(String, Vec<i64>)>, WeightsError> {
        let mut out = Vec::new();
        for source in &self.sources {
            match source {
                Source::Safetensors { entries, .. } => {
                    out.extend(entries.iter().map(|e| (e.name.clone(), e.shape.clone())));
                }
                Source::Torch(ck) => {
                    let key = ck.state_dict_key(false)?;
                    out.extend(
                        ck.tensor_metas_at(key.as_deref())?
                            .into_iter()
                            .map(|(n, m)| (n, m.shape.clone())),
                    );
                }
            }
        }
        Ok(out)
    }

    /// Copies the tensors that `pick` names into the variables of `vs`: `pick` maps a tensor's
    /// name in the files to a variable name, or to `None` to skip the tensor. Names and shapes are
    /// checked first, all at once: a variable left without a tensor, a picked tensor without a
    /// variable or a shape that differs fails with one error listing them, before anything is read.
    /// Then each tensor is read and converted to its variable's dtype and device. Returns how many
    /// variables were filled.
    pub fn load_into(
        &self,
        vs: &mut VarStore,
        pick: impl Fn(&str) -> Option<String>,
    ) -> Result<usize, WeightsError> {
        let vars = vs.variables();
        let mut mismatch = Mismatch::default();
        let mut filled = BTreeSet::new();
        for (name, shape) in self.shapes()? {
            let Some(var_name) = pick(&name) else {
                continue;
            };
            let Some(var) = vars.get(&var_name) else {
                mismatch.unexpected.push(name);
                continue;
            };
            if var.size() != shape {
                mismatch.mis_shaped.push((name, shape, var.size()));
            }
            filled.insert(var_name);
        }
        mismatch.missing = missing_variables(&vars, |name| filled.contains(name));
        if !mismatch.is_empty() {
            return Err(CheckpointError::new(&self.origin, ErrorKind::Mismatch(mismatch)).into());
        }
        let mut loaded = 0;
        for source in &self.sources {
            loaded += match source {
                Source::Safetensors { path, entries } => {
                    load_safetensors(path, entries, &vars, &pick)?
                }
                Source::Torch(ck) => load_torch(ck, &vars, &pick)?,
            };
        }
        Ok(loaded)
    }
}

/// The weight files an index or a single file stands for.
fn files_of(path: &Path) -> Result<Vec<PathBuf>, WeightsError> {
    let is_index = path
        .file_name()
        .is_some_and(|n| n.to_string_lossy().ends_with(".index.json"));
    if !is_index {
        return Ok(vec![path.to_path_buf()]);
    }
    let bad = |detail: String| WeightsError::Index {
        path: path.to_path_buf(),
        detail,
    };
    let text = std::fs::read_to_string(path).map_err(|source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(serde_json::Value::as_object)
        .ok_or_else(|| bad("no `weight_map` object".to_owned()))?;
    let mut shards = BTreeSet::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("the shard of `{tensor}` is not a file name")))?;
        // Shards are plain file names beside the index; anything else could leave the folder.
        if file.is_empty() || file.contains(['/', '\\']) || file == ".." {
            return Err(bad(format!(
                "the shard of `{tensor}` is `{file}`, not a file name"
            )));
        }
        shards.insert(file.to_owned());
    }
    if shards.is_empty() {
        return Err(bad("the weight map is empty".to_owned()));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let files: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
    if let Some(missing) = files.iter().find(|f| !f.is_file()) {
        return Err(bad(format!(
            "its shard {} is missing",
            missing.file_name().unwrap_or_default().to_string_lossy()
        )));
    }
    Ok(files)
}

fn open_file(path: &Path) -> Result<Source, WeightsError> {
    let io = |source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut head = Vec::with_capacity(9);
    (&mut file).take(9).read_to_end(&mut head).map_err(io)?;
    // A safetensors file starts with its header length, then the header's `{`.
    if head.get(8) == Some(&b'{') {
        let entries = safetensors_header(path, &mut file, len)?;
        return Ok(Source::Safetensors {
            path: path.to_path_buf(),
            entries,
        });
    }
    Ok(Source::Torch(Box::new(Checkpoint::open(path)?)))
}

/// Parses a safetensors header: `u64` little-endian length, then JSON naming each tensor's dtype,
/// shape and byte range (relative to the end of the header).
fn safetensors_header(
    path: &Path,
    file: &mut File,
    file_len: u64,
) -> Result<Vec<SafetensorsEntry>, WeightsError> {
    let bad = |detail: String| WeightsError::Safetensors {
        path: path.to_path_buf(),
        detail,
    };
    let io = |source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut len = [0u8; 8];
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    file.read_exact(&mut len).map_err(io)?;
    let header_len = u64::from_le_bytes(len);
    if header_len > MAX_HEADER || header_len > file_len.saturating_sub(8) {
        return Err(bad(format!(
            "the header claims {header_len} bytes but the file has {file_len}"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(io)?;
    let json: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header is not JSON: {e}")))?;
    let items = json
        .as_object()
        .ok_or_else(|| bad("the header is not a JSON object".to_owned()))?;
    let data_start = 8 + header_len;
    let mut entries = Vec::with_capacity(items.len());
    for (name, info) in items {
        if name == "__metadata__" {
            continue;
        }
        let bad_entry = |what: &str| bad(format!("tensor `{name}`: {what}"));
        let dtype = info
            .get("dtype")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| bad_entry("no dtype"))?;
        let (kind, size) = match dtype {
            "F32" => (Kind::Float, 4),
            "F16" => (Kind::Half, 2),
            "BF16" => (Kind::BFloat16, 2),
            "F64" => (Kind::Double, 8),
            "I64" => (Kind::Int64, 8),
            other => return Err(bad_entry(&format!("unsupported dtype {other}"))),
        };
        let shape = info
            .get("shape")
            .and_then(serde_json::Value::as_array)
            .and_then(|dims| {
                dims.iter()
                    .map(|d| d.as_u64().and_then(|d| i64::try_from(d).ok()))
                    .collect::<Option<Vec<i64>>>()
            })
            .ok_or_else(|| bad_entry("no shape of non-negative integers"))?;
        let offsets = info
            .get("data_offsets")
            .and_then(serde_json::Value::as_array)
            .and_then(|o| match o.as_slice() {
                [b, e] => Some((b.as_u64()?, e.as_u64()?)),
                _ => None,
            })
            .ok_or_else(|| bad_entry("no data_offsets [begin, end]"))?;
        let bytes = shape
            .iter()
            .try_fold(size, |acc: u64, &d| acc.checked_mul(d as u64));
        let (begin, end) = (
            data_start.saturating_add(offsets.0),
            data_start.saturating_add(offsets.1),
        );
        if bytes != Some(offsets.1.wrapping_sub(offsets.0)) || offsets.1 < offsets.0 {
            return Err(bad_entry(&format!(
                "shape {shape:?} of {dtype} does not fill its byte range {offsets:?}"
            )));
        }
        if end > file_len {
            return Err(bad_entry(&format!(
                "its bytes end at {end}, past the end of the {file_len}-byte file (truncated?)"
            )));
        }
        entries.push(SafetensorsEntry {
            name: name.clone(),
            kind,
            shape,
            begin,
            end,
        });
    }
    entries.sort_by_key(|e| e.begin);
    Ok(entries)
}

fn copy_into(var: &Tensor, t: &Tensor, path: &Path) -> Result<(), WeightsError> {
    let mut var = var.shallow_clone();
    tch::no_grad(|| var.f_copy_(t))
        .map_err(|e| CheckpointError::new(path, ErrorKind::Torch(e)).into())
}

fn load_safetensors(
    path: &Path,
    entries: &[SafetensorsEntry],
    vars: &HashMap<String, Tensor>,
    pick: &impl Fn(&str) -> Option<String>,
) -> Result<usize, WeightsError> {
    let io = |source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let mut loaded = 0;
    for entry in entries {
        let Some(var) = pick(&entry.name).and_then(|n| vars.get(&n)) else {
            continue;
        };
        let mut bytes = vec![0u8; (entry.end - entry.begin) as usize];
        file.seek(SeekFrom::Start(entry.begin)).map_err(io)?;
        file.read_exact(&mut bytes).map_err(io)?;
        let t = Tensor::f_from_data_size(&bytes, &entry.shape, entry.kind)
            .map_err(|e| CheckpointError::new(path, ErrorKind::Torch(e)))?;
        copy_into(var, &t, path)?;
        loaded += 1;
    }
    Ok(loaded)
}

fn load_torch(
    ck: &Checkpoint,
    vars: &HashMap<String, Tensor>,
    pick: &impl Fn(&str) -> Option<String>,
) -> Result<usize, WeightsError> {
    let key = ck.state_dict_key(false)?;
    let mut loaded = 0;
    for (name, meta) in ck.tensor_metas_at(key.as_deref())? {
        let Some(var) = pick(&name).and_then(|n| vars.get(&n)) else {
            continue;
        };
        let read = ck.read_tensors(&[(name, meta)])?;
        copy_into(var, &read[0].1, ck.path())?;
        loaded += 1;
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hf-weights-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A store with the zero variables `vars` (name, shape, kind).
    fn store(vars: &[(&str, &[i64], Kind)]) -> VarStore {
        let vs = VarStore::new(Device::Cpu);
        for (name, shape, kind) in vars {
            let _ = vs
                .root()
                .add(name, Tensor::zeros(*shape, (*kind, Device::Cpu)), false);
        }
        vs
    }

    #[test]
    fn sharded_safetensors_are_read_selectively_and_converted() {
        let dir = temp_dir("shards");
        let a = Tensor::arange(6, (Kind::Float, Device::Cpu)).view([2, 3]);
        let b = Tensor::from_slice(&[0.5f64, 1.5, -2.0, 3.25]);
        let skipped = Tensor::ones([5], (Kind::Float, Device::Cpu));
        Tensor::write_safetensors(
            &[("enc.a", &a), ("dec.x", &skipped)],
            dir.join("one.safetensors"),
        )
        .unwrap();
        Tensor::write_safetensors(&[("enc.b", &b)], dir.join("two.safetensors")).unwrap();
        std::fs::write(
            dir.join("model.safetensors.index.json"),
            r#"{"metadata": {}, "weight_map": {"enc.a": "one.safetensors",
                "dec.x": "one.safetensors", "enc.b": "two.safetensors"}}"#,
        )
        .unwrap();
        let set = WeightSet::open(&dir).unwrap();
        assert_eq!(set.files().len(), 2);
        let mut vs = store(&[("a", &[2, 3], Kind::Float), ("b", &[4], Kind::BFloat16)]);
        let pick = |n: &str| n.strip_prefix("enc.").map(str::to_owned);
        assert_eq!(set.load_into(&mut vs, pick).unwrap(), 2);
        let vars = vs.variables();
        assert!(vars["a"].equal(&a));
        assert_eq!(vars["b"].kind(), Kind::BFloat16);
        assert!(vars["b"].equal(&b.to_kind(Kind::BFloat16)));

        // A missing variable and a mis-shaped one are reported together, naming the folder.
        let mut other = store(&[("a", &[3, 2], Kind::Float), ("c", &[1], Kind::Float)]);
        let e = set.load_into(&mut other, pick).unwrap_err().to_string();
        assert!(e.contains(&dir.display().to_string()), "{e}");
        assert!(e.contains("1 missing") && e.contains("c"), "{e}");
        assert!(
            e.contains("enc.a: checkpoint [2, 3] vs model [3, 2]"),
            "{e}"
        );
        assert!(e.contains("1 unexpected") && e.contains("enc.b"), "{e}");

        // An index naming a shard that is not there.
        std::fs::remove_file(dir.join("two.safetensors")).unwrap();
        let e = WeightSet::open(&dir).unwrap_err();
        assert!(
            matches!(e, WeightsError::Index { .. }) && e.to_string().contains("two.safetensors"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_inputs_name_the_file() {
        let dir = temp_dir("bad");
        let e = WeightSet::open(&dir).unwrap_err();
        assert!(matches!(e, WeightsError::NoWeights { .. }), "{e}");
        let truncated = dir.join("t.safetensors");
        let a = Tensor::ones([64], (Kind::Float, Device::Cpu));
        Tensor::write_safetensors(&[("a", &a)], &truncated).unwrap();
        let bytes = std::fs::read(&truncated).unwrap();
        std::fs::write(&truncated, &bytes[..bytes.len() - 8]).unwrap();
        let e = WeightSet::open(&truncated).unwrap_err();
        assert!(
            matches!(e, WeightsError::Safetensors { .. })
                && e.to_string().contains("t.safetensors"),
            "{e}"
        );
        let text = dir.join("notes.txt");
        std::fs::write(&text, "hello, not weights").unwrap();
        let e = WeightSet::open(&text).unwrap_err();
        assert!(
            matches!(e, WeightsError::Checkpoint(_)) && e.to_string().contains("notes.txt"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
