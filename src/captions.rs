//! Captions for text-to-image (t2i) generators: a [`CaptionSet`] holds the T5 embeddings of N
//! captions as T5 returns them (right-padded, with masks), and optionally their texts; a generation
//! batch takes the left-padded rows LlamaGen's `sample_t2i.py` samples from
//! ([`CaptionEmbeddings::batch`]). Sample `i` of a run takes caption `i % N`.
//!
//! A set comes from an npz of precomputed embeddings ([`CaptionSet::from_npz`]: `caption_embs`
//! float32/float16 `[N, L, D]`, `emb_masks` `[N, L]` ints or bools, optional `captions`, a numpy
//! unicode array of N strings; `last_hidden_state` and `attention_mask`, Hugging Face's names, are
//! accepted too), or from embeddings computed in process ([`CaptionSet::from_right_padded`]).
//! Prompt files (`--prompts`) are read by [`read_prompts`].
//!
//! Only the valid rows of each caption are kept (captions are usually a few tokens of the 120),
//! in the dtype they came in.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use crate::data::npz::{read_npy_header, read_npy_strings, NpyHeader};
use crate::models::gpt::left_pad_captions;
use crate::models::t5::{T5Embedder, T5Precision};
use crate::progress::Progress;

/// Names of the embeddings entry of a caption npz: ours, then Hugging Face's T5 output name.
pub const EMBEDDING_KEYS: [&str; 2] = ["caption_embs", "last_hidden_state"];
/// Names of the masks entry: ours (LlamaGen's `emb_masks`), then the tokenizer's name.
pub const MASK_KEYS: [&str; 2] = ["emb_masks", "attention_mask"];
/// Name of the optional caption texts entry (and of the texts in a sample npz).
pub const TEXT_KEY: &str = "captions";

/// The entry of a t2i sample npz that says which caption of the set each sample shows (the
/// caption texts, when known, are in `captions`); c2i samples have their labels in `arr_1`.
pub const CAPTION_INDICES: &str = "caption_indices";

/// Why captions could not be read or used. Always names the file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct CaptionError {
    /// The caption file (embeddings npz or prompt file).
    pub path: PathBuf,
    /// What is wrong with it.
    pub message: String,
}

impl CaptionError {
    fn new(path: &Path, message: impl Into<String>) -> Self {
        CaptionError {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// The valid embedding rows of every caption of a set. It moves to the sampling thread: a
/// [`CaptionEmbeddings::share`] reads the same rows.
#[derive(Debug)]
pub struct CaptionEmbeddings {
    /// `[valid rows of all captions, D]` on the CPU, caption after caption.
    rows: Tensor,
    /// Per caption: its first row in `rows` and its valid count.
    spans: Vec<(i64, i64)>,
    /// Positions per caption (L, the generator's `cls_token_num`).
    tokens: i64,
    /// Embedding width (D, the generator's `caption_dim`).
    dim: i64,
    /// The caption file, for messages.
    source: PathBuf,
}

impl CaptionEmbeddings {
    /// Another handle on the same rows (read-only on both sides).
    pub fn share(&self) -> Self {
        CaptionEmbeddings {
            rows: self.rows.shallow_clone(),
            spans: self.spans.clone(),
            tokens: self.tokens,
            dim: self.dim,
            source: self.source.clone(),
        }
    }

    /// Number of captions.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether there is none (never, for a set built by this module).
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Positions per caption (L).
    pub fn tokens(&self) -> i64 {
        self.tokens
    }

    /// Embedding width (D).
    pub fn dim(&self) -> i64 {
        self.dim
    }

    /// The conditions of a batch of captions (indices into the set), as LlamaGen samples them:
    /// left-padded embeddings `[B, L, D]` (padded rows zero, the set's dtype) and int64 masks
    /// `[B, L]`, on the CPU ([`left_pad_captions`] of the right-padded rows).
    pub fn batch(&self, captions: &[usize]) -> Result<(Tensor, Tensor), CaptionError> {
        let b = captions.len() as i64;
        let (l, d) = (self.tokens, self.dim);
        let fill = || -> Result<(Tensor, Tensor), tch::TchError> {
            let right = Tensor::f_zeros([b, l, d], (self.rows.kind(), Device::Cpu))?;
            let masks = Tensor::f_zeros([b, l], (Kind::Int64, Device::Cpu))?;
            for (row, &caption) in captions.iter().enumerate() {
                let (start, len) = self.spans[caption];
                right
                    .f_select(0, row as i64)?
                    .f_narrow(0, 0, len)?
                    .f_copy_(&self.rows.f_narrow(0, start, len)?)?;
                let _ = masks
                    .f_select(0, row as i64)?
                    .f_narrow(0, 0, len)?
                    .f_fill_(1)?;
            }
            left_pad_captions(&right, &masks)
        };
        if let Some(&bad) = captions.iter().find(|&&c| c >= self.len()) {
            return Err(CaptionError::new(
                &self.source,
                format!("caption {bad} of a set of {}", self.len()),
            ));
        }
        fill().map_err(|e| CaptionError::new(&self.source, format!("libtorch: {e}")))
    }
}

/// N captions for a t2i generator: their T5 embeddings and masks, and their texts when known.
#[derive(Debug)]
pub struct CaptionSet {
    embeddings: CaptionEmbeddings,
    texts: Option<Vec<String>>,
    source: PathBuf,
    /// The text encoder that embedded the captions here (prompt files): its folder and dtype,
    /// part of the fingerprint; `None` for embeddings read from a file.
    encoder: Option<String>,
}

impl CaptionSet {
    /// A set from T5 embeddings `[N, L, D]` (float32, float16 or bfloat16; float64 becomes
    /// float32) and masks `[N, L]` (bools, or integers or floats 0/1) right-padded as T5 returns
    /// them (each row's valid positions first); `texts`: the N captions, when known; `source`: the
    /// file they came from, for messages and the run record. Refuses empty sets, shapes that do
    /// not agree, masks that are not right-padded or leave a caption without a token, and
    /// non-finite embeddings.
    pub fn from_right_padded(
        embeddings: &Tensor,
        masks: &Tensor,
        texts: Option<Vec<String>>,
        source: &Path,
    ) -> Result<Self, CaptionError> {
        let bad = |message: String| CaptionError::new(source, message);
        let torch = |e: tch::TchError| bad(format!("libtorch: {e}"));
        // Fails with `message` unless every element of the boolean tensor `flags` is true.
        let require_all = |flags: Result<Tensor, tch::TchError>, message: &str| {
            let all = flags
                .and_then(|f| f.f_all())
                .and_then(|f| f.f_int64_value(&[]))
                .map_err(torch)?;
            if all == 0 {
                return Err(bad(message.to_owned()));
            }
            Ok(())
        };
        let size = embeddings.size();
        let [n, l, d] = size[..] else {
            return Err(bad(format!(
                "caption embeddings of shape {size:?}: expected [N, L, D] (N captions of L \
                 positions of width D)"
            )));
        };
        if n == 0 || l == 0 || d == 0 {
            return Err(bad(format!("empty caption embeddings (shape {size:?})")));
        }
        if masks.size() != [n, l] {
            return Err(bad(format!(
                "caption masks of shape {:?} for embeddings of shape {size:?}: expected [{n}, {l}]",
                masks.size()
            )));
        }
        let embeddings = match embeddings.kind() {
            Kind::Float | Kind::Half | Kind::BFloat16 => embeddings.shallow_clone(),
            Kind::Double => embeddings.f_to_kind(Kind::Float).map_err(torch)?,
            other => {
                return Err(bad(format!(
                    "caption embeddings of dtype {other:?}: expected float32 or float16"
                )))
            }
        };
        let embeddings = embeddings.f_to_device(Device::Cpu).map_err(torch)?;
        let masks = masks.f_to_device(Device::Cpu).map_err(torch)?;
        let valid = if masks.kind() == Kind::Bool {
            masks.shallow_clone()
        } else {
            require_all(
                masks
                    .f_eq(0)
                    .and_then(|zero| zero.f_logical_or(&masks.f_eq(1)?)),
                "caption masks hold values other than 0 and 1",
            )?;
            masks.f_ne(0).map_err(torch)?
        };
        let lengths = Vec::<i64>::try_from(
            valid
                .f_sum_dim_intlist(1, false, Kind::Int64)
                .map_err(torch)?,
        )
        .map_err(torch)?;
        let prefix = Tensor::f_arange(l, (Kind::Int64, Device::Cpu))
            .and_then(|a| {
                a.f_unsqueeze(0)?
                    .f_lt_tensor(&Tensor::from_slice(&lengths).f_unsqueeze(1)?)
            })
            .map_err(torch)?;
        let misplaced = Vec::<bool>::try_from(
            valid
                .f_ne_tensor(&prefix)
                .and_then(|m| m.f_any_dim(1, false))
                .map_err(torch)?,
        )
        .map_err(torch)?;
        if let Some(i) = misplaced.iter().position(|&m| m) {
            return Err(bad(format!(
                "the mask of caption {i} is not right-padded (its valid positions first, then \
                 the padding, as T5's tokenizer returns them){}",
                if lengths[i] > 0 && valid.get(i as i64).int64_value(&[l - 1]) != 0 {
                    "; it looks left-padded already: give the masks and embeddings from before \
                     sample_t2i.py's flip"
                } else {
                    ""
                }
            )));
        }
        if let Some(i) = lengths.iter().position(|&v| v == 0) {
            return Err(bad(format!(
                "caption {i} has no valid position (its mask is all 0)"
            )));
        }
        require_all(
            embeddings.f_isfinite(),
            "caption embeddings hold NaN or infinite values",
        )?;
        if let Some(texts) = &texts {
            if texts.len() as i64 != n {
                return Err(bad(format!(
                    "{} caption texts for {n} caption embeddings",
                    texts.len()
                )));
            }
        }
        // Row j of caption i is row i * L + j of the flattened embeddings.
        let mut spans = Vec::with_capacity(n as usize);
        let mut picked = Vec::new();
        for (i, &len) in lengths.iter().enumerate() {
            spans.push((picked.len() as i64, len));
            picked.extend((0..len).map(|j| i as i64 * l + j));
        }
        let rows = embeddings
            .f_reshape([n * l, d])
            .and_then(|flat| flat.f_index_select(0, &Tensor::from_slice(&picked)))
            .map_err(torch)?;
        Ok(CaptionSet {
            embeddings: CaptionEmbeddings {
                rows,
                spans,
                tokens: l,
                dim: d,
                source: source.to_path_buf(),
            },
            texts,
            source: source.to_path_buf(),
            encoder: None,
        })
    }

    /// Embeds the captions of a prompt file ([`read_prompts`]) with LlamaGen's T5 embedder
    /// ([`T5Embedder`]: 120 tokens, right-padded), `chunk` captions at a time so that only the
    /// valid rows of each are kept (a 30,000-caption set would be 30 GB as `[N, 120, 2048]`).
    /// `on_chunk` is told how many captions each chunk embedded (for a progress bar).
    pub fn from_prompts(
        prompts: &Path,
        embedder: &T5Embedder,
        encoder: String,
        chunk: usize,
        mut on_chunk: impl FnMut(usize),
    ) -> Result<Self, CaptionError> {
        let texts: Vec<String> = read_prompts(prompts)?
            .into_iter()
            .map(|p| p.caption)
            .collect();
        let mut rows = Vec::new();
        let mut spans = Vec::with_capacity(texts.len());
        let mut offset = 0;
        let mut shape = (0, 0);
        for batch in texts.chunks(chunk.max(1)) {
            let (embeddings, masks) = embedder.embed(batch).map_err(|e| {
                CaptionError::new(prompts, format!("cannot embed its captions: {e}"))
            })?;
            let part = Self::from_right_padded(&embeddings, &masks, None, prompts)?;
            let part = part.embeddings;
            shape = (part.tokens, part.dim);
            spans.extend(part.spans.iter().map(|&(start, len)| (start + offset, len)));
            offset += part.rows.size()[0];
            rows.push(part.rows);
            on_chunk(batch.len());
        }
        let rows = Tensor::f_cat(&rows, 0)
            .map_err(|e| CaptionError::new(prompts, format!("libtorch: {e}")))?;
        Ok(CaptionSet {
            embeddings: CaptionEmbeddings {
                rows,
                spans,
                tokens: shape.0,
                dim: shape.1,
                source: prompts.to_path_buf(),
            },
            texts: Some(texts),
            source: prompts.to_path_buf(),
            encoder: Some(encoder),
        })
    }

    /// Reads a caption npz: `caption_embs` `[N, L, D]` float32/float16 and `emb_masks` `[N, L]`
    /// ints or bools, right-padded as T5 returns them (or `last_hidden_state` and
    /// `attention_mask`), and the optional `captions`, a numpy unicode array of N strings.
    pub fn from_npz(path: &Path) -> Result<Self, CaptionError> {
        let mut archive = open(path)?;
        let embeddings_key = entry_name(&archive, &EMBEDDING_KEYS, path)?;
        let masks_key = entry_name(&archive, &MASK_KEYS, path)?;
        let embeddings = read_tensor(&mut archive, &embeddings_key, path)?;
        let masks = read_tensor(&mut archive, &masks_key, path)?;
        let texts = if archive.index_for_name(&format!("{TEXT_KEY}.npy")).is_some() {
            let mut entry = archive
                .by_name(&format!("{TEXT_KEY}.npy"))
                .map_err(|e| CaptionError::new(path, format!("cannot read `{TEXT_KEY}`: {e}")))?;
            let header = read_npy_header(&mut entry)
                .map_err(|e| CaptionError::new(path, format!("`{TEXT_KEY}`: {e}")))?;
            if header.shape.len() != 1 {
                return Err(CaptionError::new(
                    path,
                    format!(
                        "`{TEXT_KEY}` has shape {:?}: expected the N caption texts, 1-D",
                        header.shape
                    ),
                ));
            }
            Some(
                read_npy_strings(&mut entry, &header)
                    .map_err(|e| CaptionError::new(path, format!("`{TEXT_KEY}`: {e}")))?,
            )
        } else {
            None
        };
        Self::from_right_padded(&embeddings, &masks, texts, path)
    }

    /// The number of captions in a caption npz, from its masks' header (nothing else is read).
    pub fn count_in_npz(path: &Path) -> Result<usize, CaptionError> {
        let mut archive = open(path)?;
        let key = entry_name(&archive, &MASK_KEYS, path)?;
        let mut entry = archive
            .by_name(&format!("{key}.npy"))
            .map_err(|e| CaptionError::new(path, format!("cannot read `{key}`: {e}")))?;
        let header = read_npy_header(&mut entry)
            .map_err(|e| CaptionError::new(path, format!("`{key}`: {e}")))?;
        header.shape.first().copied().ok_or_else(|| {
            CaptionError::new(path, format!("`{key}` is a scalar, not masks [N, L]"))
        })
    }

    /// The embeddings, for the sampler.
    pub fn embeddings(&self) -> &CaptionEmbeddings {
        &self.embeddings
    }

    /// Number of captions.
    pub fn len(&self) -> usize {
        self.embeddings.len()
    }

    /// Whether the set is empty (never, for a set built by this module).
    pub fn is_empty(&self) -> bool {
        self.embeddings.is_empty()
    }

    /// The caption of sample `index`: `index % N`.
    pub fn caption_of(&self, index: u64) -> usize {
        (index % self.len().max(1) as u64) as usize
    }

    /// The caption texts, when known.
    pub fn texts(&self) -> Option<&[String]> {
        self.texts.as_deref()
    }

    /// The text of each sample of `indices`, when the texts are known.
    pub fn texts_of(&self, indices: &[u64]) -> Option<Vec<String>> {
        let texts = self.texts.as_ref()?;
        Some(
            indices
                .iter()
                .map(|&i| texts[self.caption_of(i)].clone())
                .collect(),
        )
    }

    /// The file the captions came from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// What identifies the set in resume fingerprints: its file (path and size) and shape.
    pub fn fingerprint(&self) -> Value {
        let bytes = std::fs::metadata(&self.source)
            .map(|m| m.len())
            .unwrap_or(0);
        let sha256 = crate::io::content_sha256(&self.source).unwrap_or_default();
        let mut fingerprint = json!({
            "path": self.source.display().to_string(),
            "bytes": bytes,
            "sha256": sha256,
            "count": self.len(),
            "tokens": self.embeddings.tokens,
            "dim": self.embeddings.dim,
        });
        if let Some(encoder) = &self.encoder {
            fingerprint["encoder"] = json!(encoder);
        }
        fingerprint
    }
}

fn open(path: &Path) -> Result<zip::ZipArchive<BufReader<File>>, CaptionError> {
    let file =
        File::open(path).map_err(|e| CaptionError::new(path, format!("cannot open: {e}")))?;
    zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| CaptionError::new(path, format!("not a readable npz (zip) file: {e}")))
}

/// The first of `keys` the archive holds.
fn entry_name(
    archive: &zip::ZipArchive<BufReader<File>>,
    keys: &[&str],
    path: &Path,
) -> Result<String, CaptionError> {
    if let Some(key) = keys
        .iter()
        .find(|k| archive.index_for_name(&format!("{k}.npy")).is_some())
    {
        return Ok((*key).to_owned());
    }
    let names: Vec<&str> = archive
        .file_names()
        .map(|n| n.strip_suffix(".npy").unwrap_or(n))
        .collect();
    Err(CaptionError::new(
        path,
        format!(
            "has no `{}` entry (entries: {}); a caption npz holds the T5 embeddings [N, L, D] as \
             `{}` and their masks [N, L] as `{}` (right-padded, as T5 returns them), and \
             optionally the texts as `{TEXT_KEY}`",
            keys.join("` or `"),
            names.join(", "),
            EMBEDDING_KEYS[0],
            MASK_KEYS[0]
        ),
    ))
}

/// The tensor kind and element size of an npy dtype.
fn kind_of(header: &NpyHeader) -> Result<(Kind, usize), String> {
    Ok(match header.descr.as_str() {
        "<f4" => (Kind::Float, 4),
        "<f2" => (Kind::Half, 2),
        "<f8" => (Kind::Double, 8),
        "|b1" => (Kind::Bool, 1),
        "<i8" => (Kind::Int64, 8),
        "<i4" => (Kind::Int, 4),
        "<i2" => (Kind::Int16, 2),
        "|i1" => (Kind::Int8, 1),
        "|u1" => (Kind::Uint8, 1),
        d if d.starts_with('>') => {
            return Err(format!(
            "big-endian dtype {d}: save it little-endian (arr.astype(arr.dtype.newbyteorder('<')))"
        ))
        }
        d => {
            return Err(format!(
                "dtype {d}: expected float32 or float16 embeddings and integer or bool masks"
            ))
        }
    })
}

/// An npz entry as a CPU tensor, read as its bytes arrive (never sized from the header alone).
fn read_tensor(
    archive: &mut zip::ZipArchive<BufReader<File>>,
    key: &str,
    path: &Path,
) -> Result<Tensor, CaptionError> {
    let bad = |message: String| CaptionError::new(path, format!("`{key}`: {message}"));
    let mut entry = archive
        .by_name(&format!("{key}.npy"))
        .map_err(|e| bad(format!("cannot read: {e}")))?;
    let header = read_npy_header(&mut entry).map_err(bad)?;
    if header.fortran_order && header.shape.len() > 1 {
        return Err(bad(
            "stored in Fortran order; save it with np.ascontiguousarray".to_owned(),
        ));
    }
    let (kind, item) = kind_of(&header).map_err(bad)?;
    let bytes = header
        .shape
        .iter()
        .try_fold(item, |n, &d| n.checked_mul(d))
        .ok_or_else(|| bad(format!("implausible shape {:?}", header.shape)))?;
    let mut data = Vec::new();
    entry
        .by_ref()
        .take(bytes as u64)
        .read_to_end(&mut data)
        .map_err(|e| bad(format!("cannot read: {e}")))?;
    if data.len() != bytes {
        return Err(bad(format!(
            "ends early: {} of the {bytes} bytes its shape {:?} needs",
            data.len(),
            header.shape
        )));
    }
    let shape: Vec<i64> = header.shape.iter().map(|&d| d as i64).collect();
    Tensor::f_from_data_size(&data, &shape, kind).map_err(|e| bad(format!("libtorch: {e}")))
}

/// One caption of a prompt file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    /// The caption text.
    pub caption: String,
    /// The image it describes (JSON lines' `image_id`, a number or a string), when given.
    pub image_id: Option<String>,
}

/// Captions the T5 encoder embeds at once.
pub const T5_CHUNK: usize = 64;

/// A prompt file the run embeds with a T5 encoder when it starts (`--prompts`, `--t5`): the
/// job runs the encoder ([`PromptSource::embed`], called by the generator as it loads), not
/// whoever builds the configuration.
#[derive(Debug, Clone)]
pub struct PromptSource {
    /// The captions, one per line, or JSON lines with `caption` ([`read_prompts`]).
    pub prompts: PathBuf,
    /// The T5 encoder folder (config.json, tokenizer.json, weights).
    pub t5: PathBuf,
    /// The encoder's dtype.
    pub precision: T5Precision,
    /// Bars or none.
    pub progress: Progress,
}

impl PromptSource {
    /// The prompts embedded by the T5 encoder on `device` (checked before anything else is
    /// loaded: the prompt file, then the encoder folder).
    pub fn embed(&self, device: Device) -> anyhow::Result<CaptionSet> {
        let count = read_prompts(&self.prompts)?.len();
        let embedder = T5Embedder::load(&self.t5, device, self.precision.kind())?;
        let bar = self.progress.bar(count, "t5", "caption");
        let set = CaptionSet::from_prompts(
            &self.prompts,
            &embedder,
            format!("t5 {} {}", self.t5.display(), self.precision),
            T5_CHUNK,
            |n| bar.inc(n as u64),
        )?;
        bar.finish_and_clear();
        Ok(set)
    }
}

/// Reads a prompt file: one caption per line (blank lines skipped), or, when the first non-blank
/// line starts with `{`, JSON lines with a `caption` string and an optional `image_id` (a number
/// or a string). Errors name the file and the line; a file without a caption is an error.
pub fn read_prompts(path: &Path) -> Result<Vec<Prompt>, CaptionError> {
    let bytes =
        std::fs::read(path).map_err(|e| CaptionError::new(path, format!("cannot read: {e}")))?;
    let text = String::from_utf8(bytes)
        .map_err(|e| CaptionError::new(path, format!("not UTF-8 text: {e}")))?;
    parse_prompts(&text, path)
}

/// [`read_prompts`] on the text of `path`.
pub fn parse_prompts(text: &str, path: &Path) -> Result<Vec<Prompt>, CaptionError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines = text
        .lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line))
        .filter(|(_, line)| !line.trim().is_empty());
    let jsonl = text
        .lines()
        .find(|line| !line.trim().is_empty())
        .is_some_and(|line| line.trim_start().starts_with('{'));
    let prompts: Vec<Prompt> = if jsonl {
        lines
            .map(|(n, line)| {
                parse_json_line(line).map_err(|m| CaptionError::new(path, format!("line {n}: {m}")))
            })
            .collect::<Result<_, _>>()?
    } else {
        lines
            .map(|(_, line)| Prompt {
                caption: line.to_owned(),
                image_id: None,
            })
            .collect()
    };
    if prompts.is_empty() {
        return Err(CaptionError::new(
            path,
            "holds no caption (write one caption per line, or JSON lines with a `caption`)",
        ));
    }
    Ok(prompts)
}

fn parse_json_line(line: &str) -> Result<Prompt, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
    let object = value
        .as_object()
        .ok_or("not a JSON object (JSON lines need {\"caption\": ...} on every line)")?;
    let caption = match object.get("caption") {
        Some(Value::String(c)) => c.clone(),
        Some(other) => return Err(format!("`caption` is {other}, not a string")),
        None => return Err("no `caption`".to_owned()),
    };
    let image_id = match object.get("image_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(other) => return Err(format!("`image_id` is {other}, not a number or a string")),
    };
    Ok(Prompt { caption, image_id })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn right_padded(lengths: &[i64], l: i64, d: i64) -> (Tensor, Tensor) {
        let n = lengths.len() as i64;
        let masks = Tensor::from_slice(
            &lengths
                .iter()
                .flat_map(|&v| (0..l).map(move |j| i64::from(j < v)))
                .collect::<Vec<_>>(),
        )
        .view([n, l]);
        // Padded positions hold values too, as T5's output does.
        let embs = Tensor::arange(n * l * d, (Kind::Float, Device::Cpu)).view([n, l, d]) + 1.0;
        (embs, masks)
    }

    #[test]
    fn batches_are_left_padded_with_the_valid_rows() {
        let (embs, masks) = right_padded(&[2, 3, 1], 3, 2);
        let set = CaptionSet::from_right_padded(&embs, &masks, None, Path::new("c.npz")).unwrap();
        assert_eq!(set.len(), 3);
        let (left, m) = set.embeddings().batch(&[0, 2, 0]).unwrap();
        let (expected, expected_masks) = left_pad_captions(&embs, &masks).unwrap();
        let pick = Tensor::from_slice(&[0i64, 2, 0]);
        assert!(left.equal(&expected.index_select(0, &pick)));
        assert!(m.equal(&expected_masks.index_select(0, &pick)));
        assert_eq!(
            Vec::<f32>::try_from(left.get(0).view([-1])).unwrap(),
            vec![0., 0., 1., 2., 3., 4.]
        );
        assert_eq!(set.caption_of(7), 1);
        assert!(set.embeddings().batch(&[3]).is_err());
    }

    #[test]
    fn bad_sets_are_refused() {
        let p = Path::new("c.npz");
        let message = |embs: &Tensor, masks: &Tensor, texts: Option<Vec<String>>| {
            CaptionSet::from_right_padded(embs, masks, texts, p)
                .unwrap_err()
                .to_string()
        };
        let (embs, masks) = right_padded(&[2, 1], 3, 2);
        let m = message(&embs.narrow(0, 0, 0), &masks.narrow(0, 0, 0), None);
        assert!(m.contains("empty caption embeddings"), "{m}");
        let m = message(&embs, &masks.narrow(1, 0, 2), None);
        assert!(m.contains("masks of shape [2, 2]"), "{m}");
        let m = message(&embs.get(0), &masks, None);
        assert!(m.contains("expected [N, L, D]"), "{m}");
        let m = message(&embs, &masks.flip([1]), None);
        assert!(
            m.contains("caption 0 is not right-padded") && m.contains("left-padded already"),
            "{m}"
        );
        let m = message(&embs, &(&masks * 2), None);
        assert!(m.contains("other than 0 and 1"), "{m}");
        let (embs0, masks0) = right_padded(&[2, 0], 3, 2);
        let m = message(&embs0, &masks0, None);
        assert!(m.contains("caption 1 has no valid position"), "{m}");
        let m = message(&embs, &masks, Some(vec!["one".to_owned()]));
        assert!(m.contains("1 caption texts for 2"), "{m}");
        let nan = embs.copy();
        let _ = nan.get(1).get(2).fill_(f64::NAN);
        let m = message(&nan, &masks, None);
        assert!(m.contains("NaN"), "{m}");
        let m = message(&embs.to_kind(Kind::Int64), &masks, None);
        assert!(m.contains("dtype"), "{m}");
        // Bool masks and float16 embeddings are fine.
        let set = CaptionSet::from_right_padded(
            &embs.to_kind(Kind::Half),
            &masks.ne(0),
            Some(vec!["a".into(), "b".into()]),
            p,
        )
        .unwrap();
        assert_eq!(set.texts_of(&[3, 2]).unwrap(), vec!["b", "a"]);
        assert_eq!(set.embeddings().batch(&[1]).unwrap().0.kind(), Kind::Half);
    }

    #[test]
    fn prompt_files_are_lines_or_json_lines() {
        let p = Path::new("prompts.txt");
        let plain = parse_prompts("a cat\n\n  \r\na dog on a sofa\r\n", p).unwrap();
        let captions: Vec<&str> = plain.iter().map(|x| x.caption.as_str()).collect();
        assert_eq!(captions, ["a cat", "a dog on a sofa"]);
        assert!(plain.iter().all(|x| x.image_id.is_none()));
        let jsonl = parse_prompts(
            "\n{\"caption\": \"a cat\", \"image_id\": 139}\n{\"caption\": \"x {y}\", \"image_id\": \"a7\"}\n{\"caption\": \"no id\"}\n",
            p,
        )
        .unwrap();
        assert_eq!(
            jsonl,
            vec![
                Prompt {
                    caption: "a cat".into(),
                    image_id: Some("139".into())
                },
                Prompt {
                    caption: "x {y}".into(),
                    image_id: Some("a7".into())
                },
                Prompt {
                    caption: "no id".into(),
                    image_id: None
                },
            ]
        );
        let err = |text: &str| parse_prompts(text, p).unwrap_err().to_string();
        let e = err("{\"caption\": \"ok\"}\n\n{\"image_id\": 3}\n");
        assert!(e.starts_with("prompts.txt: line 3: no `caption`"), "{e}");
        let e = err("{\"caption\": \"ok\"}\n{\"caption\": \"broken\"\n");
        assert!(e.contains("line 2: not valid JSON"), "{e}");
        let e = err("{\"caption\": 5}");
        assert!(e.contains("line 1: `caption` is 5"), "{e}");
        let e = err("{\"caption\": \"a\", \"image_id\": [1]}");
        assert!(e.contains("`image_id` is [1]"), "{e}");
        let e = err("{\"caption\": \"a\"}\n[1, 2]\n");
        assert!(e.contains("line 2: not a JSON object"), "{e}");
        for empty in ["", "\n \n", "\u{feff}"] {
            let e = err(empty);
            assert!(e.contains("holds no caption"), "{e}");
        }
    }

    #[test]
    fn prompt_files_are_read_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.txt");
        std::fs::write(&path, b"one\ntwo\n").unwrap();
        assert_eq!(read_prompts(&path).unwrap().len(), 2);
        std::fs::write(&path, [0xffu8, 0xfe, b'\n']).unwrap();
        let e = read_prompts(&path).unwrap_err().to_string();
        assert!(e.contains("p.txt") && e.contains("not UTF-8"), "{e}");
        let e = read_prompts(&dir.path().join("missing.txt"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.txt: cannot read"), "{e}");
    }
}
