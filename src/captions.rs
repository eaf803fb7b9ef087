//! Captions for text-to-image (t2i) generators: a [`CaptionSet`] holds the T5 embeddings of N
//! captions as T5 returns them (right-padded, with masks), and optionally their texts; a generation
//! batch takes the left-padded rows LlamaGen's `sample_t2i.py` samples from
//! ([`CaptionEmbeddings::batch`]). Sample `i` of a run takes caption `i % N`.
//!
//! A set comes from an npz of precomputed embeddings ([`CaptionSet::from_npz`]: `caption_embs`
//! float32/float16 `[N, L, D]`, `emb_masks` `[N, L]` ints or bools, optional `captions`, a numpy
//! unicode array of N strings; `last_hidden_state` and `attention_mask`, Hugging Face's names, are
//! accepted too), or from embeddings computed in process ([`CaptionSet::from_right_padded`]).
//! Prompt files (`--prompts`) are read by [`read_prompts`] (line by line, within limits) and
//! embedded by [`PromptSource::embed`], only the captions the job samples. A sample npz stores
//! the texts of its samples as a [`CaptionTable`].
//!
//! Only the valid rows of each caption are kept (captions are usually a few tokens of the 120),
//! in the dtype they came in.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use crate::data::npz::{read_npy_header, read_npy_strings, NpyHeader};
use crate::data::npz_writer::ImageNpzWriter;
use crate::models::gpt::left_pad_captions;
use crate::models::t5::{T5Embedder, T5Precision};
use crate::partition::Shard;
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

/// The caption texts of a sample npz: each distinct text once, as `captions` (a numpy unicode
/// array as wide as the longest of them), and each sample's row in it, as `caption_indices`
/// (`captions[caption_indices]` in NumPy: one text per sample). Storing a text per sample
/// instead would take 4 bytes per character of the longest caption for every sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptionTable {
    /// The distinct texts.
    pub texts: Vec<String>,
    /// Per sample: its text's row in `texts`.
    pub rows: Vec<i64>,
}

impl CaptionTable {
    /// The table of one text per sample: the distinct texts in the order they first appear.
    pub fn new<'a>(per_sample: impl IntoIterator<Item = &'a str>) -> Self {
        let mut texts = Vec::new();
        let mut row_of = std::collections::HashMap::new();
        let rows = per_sample
            .into_iter()
            .map(|text| {
                *row_of.entry(text).or_insert_with(|| {
                    texts.push(text.to_owned());
                    texts.len() as i64 - 1
                })
            })
            .collect();
        CaptionTable { texts, rows }
    }

    /// Sample `k`'s text (rows are checked when a table is read).
    pub fn text(&self, k: usize) -> &str {
        usize::try_from(self.rows[k])
            .ok()
            .and_then(|row| self.texts.get(row))
            .map_or("", String::as_str)
    }

    /// Reads the table of the sample npz `path`: `None` when it holds no `captions`. Refuses
    /// `captions` without `caption_indices` and rows outside the table.
    pub fn read(path: &Path) -> Result<Option<Self>, CaptionError> {
        let file = |e: crate::io::FileError| CaptionError::new(path, e.message);
        let Some(texts) = crate::io::read_strings(path, TEXT_KEY).map_err(file)? else {
            return Ok(None);
        };
        let rows = crate::io::read_i64(path, CAPTION_INDICES)
            .map_err(file)?
            .ok_or_else(|| {
                CaptionError::new(
                    path,
                    format!(
                        "has `{TEXT_KEY}` but no `{CAPTION_INDICES}` saying which of them each                          sample shows"
                    ),
                )
            })?;
        if let Some(&bad) = rows
            .iter()
            .find(|&&r| usize::try_from(r).map_or(true, |r| r >= texts.len()))
        {
            return Err(row_outside(path, bad, texts.len()));
        }
        Ok(Some(CaptionTable { texts, rows }))
    }

    /// Adds `captions` and `caption_indices` to a sample npz being written.
    pub fn write(&self, writer: &mut ImageNpzWriter) -> Result<(), crate::data::DataError> {
        writer.add_strings(TEXT_KEY, &self.texts)?;
        writer.add_array(CAPTION_INDICES, &ndarray::Array1::from(self.rows.clone()))
    }
}

/// A `caption_indices` row that is not one of the file's `count` caption texts.
fn row_outside(path: &Path, row: i64, count: usize) -> CaptionError {
    CaptionError::new(
        path,
        format!("`{CAPTION_INDICES}` holds {row}, outside its {count} `{TEXT_KEY}`"),
    )
}

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
    /// Per embedded caption: its first row in `rows` and its valid count.
    spans: Vec<(i64, i64)>,
    /// The captions of the set (N).
    count: usize,
    /// Which captions `spans` holds, ascending, when not all of them: a prompt file's captions
    /// are embedded only where the job samples them.
    embedded: Option<Arc<[usize]>>,
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
            count: self.count,
            embedded: self.embedded.clone(),
            tokens: self.tokens,
            dim: self.dim,
            source: self.source.clone(),
        }
    }

    /// Number of captions (embedded or not).
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there is none (never, for a set built by this module).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The span of caption `caption` of the set, when it is embedded.
    fn span(&self, caption: usize) -> Option<(i64, i64)> {
        let slot = match &self.embedded {
            None => caption,
            Some(embedded) => embedded.binary_search(&caption).ok()?,
        };
        self.spans.get(slot).copied()
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
        let spans = captions
            .iter()
            .map(|&c| {
                self.span(c).ok_or_else(|| {
                    CaptionError::new(
                        &self.source,
                        if c < self.count {
                            format!("caption {c} was not embedded: the job does not sample it")
                        } else {
                            format!("caption {c} of a set of {}", self.count)
                        },
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let fill = || -> Result<(Tensor, Tensor), tch::TchError> {
            let right = Tensor::f_zeros([b, l, d], (self.rows.kind(), Device::Cpu))?;
            let masks = Tensor::f_zeros([b, l], (Kind::Int64, Device::Cpu))?;
            for (row, &(start, len)) in spans.iter().enumerate() {
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
    /// How many distinct texts were embedded (prompt files), or the set's size (embeddings
    /// read from a file).
    embedded_texts: usize,
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
                count: n as usize,
                embedded: None,
                tokens: l,
                dim: d,
                source: source.to_path_buf(),
            },
            texts,
            source: source.to_path_buf(),
            encoder: None,
            embedded_texts: n as usize,
        })
    }

    /// Embeds the captions `used` (ascending indices into `texts`, the captions of the prompt
    /// file `prompts`) with LlamaGen's T5 embedder ([`T5Embedder`]: 120 tokens, right-padded),
    /// each distinct text once, `chunk` texts at a time so that only the valid rows of each are
    /// kept (a 30,000-caption set would be 30 GB as `[N, 120, 2048]`). The others are never
    /// embedded: a job sampling 2 of a million captions embeds 2. With a bar unless `progress`
    /// hides it.
    pub fn from_prompts(
        prompts: &Path,
        texts: Vec<String>,
        used: &[usize],
        embedder: &T5Embedder,
        encoder: String,
        chunk: usize,
        progress: Progress,
    ) -> Result<Self, CaptionError> {
        let bad = |message: String| CaptionError::new(prompts, message);
        if used.is_empty() {
            return Err(bad("no caption to embed: the job samples none".to_owned()));
        }
        if let Some(&c) = used.iter().find(|&&c| c >= texts.len()) {
            return Err(bad(format!(
                "caption {c} asked of a file of {} captions",
                texts.len()
            )));
        }
        // Each distinct text once (a caption repeated in the file is embedded once), in the
        // order of its first caption; `slots[k]`: the distinct text of caption `used[k]`.
        let mut distinct: Vec<&str> = Vec::new();
        let mut slot_of = std::collections::HashMap::new();
        let slots: Vec<usize> = used
            .iter()
            .map(|&c| {
                let text = texts[c].as_str();
                *slot_of.entry(text).or_insert_with(|| {
                    distinct.push(text);
                    distinct.len() - 1
                })
            })
            .collect();
        tracing::info!(
            "{}: embedding {} distinct captions of its {} (those the job samples)",
            prompts.display(),
            distinct.len(),
            texts.len()
        );
        let bar = progress.bar(distinct.len(), "t5", "caption");
        let mut rows = Vec::new();
        let mut spans = Vec::with_capacity(distinct.len());
        let mut offset = 0;
        let mut shape = (0, 0);
        for batch in distinct.chunks(chunk.max(1)) {
            let batch: Vec<String> = batch.iter().map(|&t| t.to_owned()).collect();
            let (embeddings, masks) = embedder
                .embed(&batch)
                .map_err(|e| bad(format!("cannot embed its captions: {e}")))?;
            let part = Self::from_right_padded(&embeddings, &masks, None, prompts)?;
            let part = part.embeddings;
            shape = (part.tokens, part.dim);
            spans.extend(part.spans.iter().map(|&(start, len)| (start + offset, len)));
            offset += part.rows.size()[0];
            rows.push(part.rows);
            bar.inc(batch.len() as u64);
        }
        bar.finish_and_clear();
        let rows = Tensor::f_cat(&rows, 0).map_err(|e| bad(format!("libtorch: {e}")))?;
        let embedded_texts = distinct.len();
        let embedded = (used.len() < texts.len()).then(|| Arc::from(used));
        Ok(CaptionSet {
            embeddings: CaptionEmbeddings {
                rows,
                spans: slots.iter().map(|&k| spans[k]).collect(),
                count: texts.len(),
                embedded,
                tokens: shape.0,
                dim: shape.1,
                source: prompts.to_path_buf(),
            },
            texts: Some(texts),
            source: prompts.to_path_buf(),
            encoder: Some(encoder),
            embedded_texts,
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
        // The layout of a sample npz (`captions` once each, `caption_indices` one per caption)
        // is read too: caption i's text is `captions[caption_indices[i]]`.
        let texts = match texts {
            Some(table)
                if archive
                    .index_for_name(&format!("{CAPTION_INDICES}.npy"))
                    .is_some() =>
            {
                let rows = read_tensor(&mut archive, CAPTION_INDICES, path)?;
                let rows = rows
                    .f_to_kind(Kind::Int64)
                    .and_then(|r| Vec::<i64>::try_from(r.f_view([-1])?))
                    .map_err(|e| CaptionError::new(path, format!("libtorch: {e}")))?;
                let text = |r: i64| usize::try_from(r).ok().and_then(|r| table.get(r)).cloned();
                Some(
                    rows.iter()
                        .map(|&r| text(r).ok_or_else(|| row_outside(path, r, table.len())))
                        .collect::<Result<_, _>>()?,
                )
            }
            other => other,
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

    /// How many captions were embedded: for a prompt file, its distinct texts that the job
    /// samples; for an embeddings file, all of them.
    pub fn embedded_count(&self) -> usize {
        self.embedded_texts
    }

    /// The caption texts, when known.
    pub fn texts(&self) -> Option<&[String]> {
        self.texts.as_deref()
    }

    /// The texts of the samples `indices` as a sample npz stores them, when the texts are
    /// known: the distinct texts in the order of their first caption in the set, so that with
    /// distinct captions the rows are the captions' indices in the set.
    pub fn table_of(&self, indices: &[u64]) -> Option<CaptionTable> {
        let texts = self.texts.as_ref()?;
        let mut used: Vec<usize> = indices.iter().map(|&i| self.caption_of(i)).collect();
        used.sort_unstable();
        used.dedup();
        let table = CaptionTable::new(used.iter().map(|&c| texts[c].as_str()));
        let row_of: std::collections::HashMap<usize, i64> =
            used.iter().copied().zip(table.rows).collect();
        Some(CaptionTable {
            texts: table.texts,
            rows: indices
                .iter()
                .map(|&i| row_of.get(&self.caption_of(i)).copied().unwrap_or_default())
                .collect(),
        })
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
/// whoever builds the configuration, and embeds only the captions its samples take.
#[derive(Debug, Clone)]
pub struct PromptSource {
    /// The captions, one per line, or JSON lines with `caption` ([`read_prompts`]).
    pub prompts: PathBuf,
    /// The T5 encoder folder (config.json, tokenizer.json, weights).
    pub t5: PathBuf,
    /// The encoder's dtype.
    pub precision: T5Precision,
    /// The job's sample count.
    pub samples: usize,
    /// The samples this process makes (its shard, or its rank's under a launcher): only their
    /// captions are embedded.
    pub shard: Shard,
    /// Bars or none.
    pub progress: Progress,
}

impl PromptSource {
    /// The prompts the samples of [`PromptSource::shard`] take, embedded by the T5 encoder on
    /// `device` (checked before anything else is loaded: the prompt file, then the encoder
    /// folder).
    pub fn embed(&self, device: Device) -> anyhow::Result<CaptionSet> {
        let texts: Vec<String> = read_prompts(&self.prompts)?
            .into_iter()
            .map(|p| p.caption)
            .collect();
        let used = captions_sampled(texts.len(), self.shard, self.samples);
        let embedder = T5Embedder::load(&self.t5, device, self.precision.kind())?;
        Ok(CaptionSet::from_prompts(
            &self.prompts,
            texts,
            &used,
            &embedder,
            format!(
                "t5 {} {} sha256 {}",
                self.t5.display(),
                self.precision,
                embedder.content_sha256()?
            ),
            T5_CHUNK,
            self.progress,
        )?)
    }
}

/// The captions of a set of `count` that the samples of `shard` of a job of `samples` take
/// (sample i takes caption i % count), ascending.
pub fn captions_sampled(count: usize, shard: Shard, samples: usize) -> Vec<usize> {
    let mut taken = vec![false; count];
    let mut left = count;
    // Past the first `count` samples of the shard the captions repeat; stop once all are taken.
    for i in (shard.index..samples).step_by(shard.count.max(1)) {
        let caption = i % count.max(1);
        if let Some(slot) = taken.get_mut(caption).filter(|t| !**t) {
            *slot = true;
            left -= 1;
            if left == 0 {
                break;
            }
        }
    }
    (0..count).filter(|&c| taken[c]).collect()
}

/// The longest line a prompt file may hold, in bytes (without its line break). T5 reads only the
/// first 120 tokens of a caption (a few hundred characters), so real captions, and JSON lines
/// carrying one, are far shorter; anything longer is most likely not a caption file (a binary,
/// `/dev/zero`), and reading it whole could exhaust memory.
pub const MAX_PROMPT_LINE: usize = 16 << 10;

/// Reads a prompt file: one caption per line (blank lines skipped), or, when the first non-blank
/// line starts with `{`, JSON lines with a `caption` string and an optional `image_id` (a number
/// or a string). The file is read line by line: a line longer than [`MAX_PROMPT_LINE`] bytes is
/// refused, and the captions kept count against the input memory budget
/// ([`crate::budget::allowance`] of the file's size), so neither an endless file nor a huge one
/// exhausts memory. Errors name the file and the line; a file without a caption is an error.
pub fn read_prompts(path: &Path) -> Result<Vec<Prompt>, CaptionError> {
    let file =
        File::open(path).map_err(|e| CaptionError::new(path, format!("cannot read: {e}")))?;
    // A pipe or device reports no size: the budget's slack alone then applies.
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    prompts_from(BufReader::new(file), path, crate::budget::allowance(size))
}

/// [`read_prompts`] from `reader` (the contents of `path`), keeping at most `allowance` bytes of
/// prompts.
fn prompts_from(
    mut reader: impl BufRead,
    path: &Path,
    allowance: u64,
) -> Result<Vec<Prompt>, CaptionError> {
    let mut prompts = Vec::new();
    // Bytes the prompts kept so far take: their texts and each one's own size.
    let mut held = 0u64;
    let mut jsonl = None;
    let mut line = Vec::new();
    for n in 1.. {
        line.clear();
        // A full line and its `\r\n`: reading stops there, so an endless line costs this much.
        let read = reader
            .by_ref()
            .take(MAX_PROMPT_LINE as u64 + 2)
            .read_until(b'\n', &mut line)
            .map_err(|e| CaptionError::new(path, format!("cannot read line {n}: {e}")))?;
        if read == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        if line.len() > MAX_PROMPT_LINE {
            return Err(CaptionError::new(
                path,
                format!(
                    "line {n} is longer than {}: a prompt file holds one caption per line, and \
                     T5 reads only a caption's first 120 tokens; shorten the line, or check that \
                     this is a caption file",
                    crate::budget::human_bytes(MAX_PROMPT_LINE as u64)
                ),
            ));
        }
        let mut text = std::str::from_utf8(&line)
            .map_err(|e| CaptionError::new(path, format!("line {n}: not UTF-8 text: {e}")))?;
        if n == 1 {
            text = text.strip_prefix('\u{feff}').unwrap_or(text);
        }
        if text.trim().is_empty() {
            continue;
        }
        let prompt = if *jsonl.get_or_insert_with(|| text.trim_start().starts_with('{')) {
            parse_json_line(text).map_err(|m| CaptionError::new(path, format!("line {n}: {m}")))?
        } else {
            Prompt {
                caption: text.to_owned(),
                image_id: None,
            }
        };
        held += (std::mem::size_of::<Prompt>()
            + prompt.caption.len()
            + prompt.image_id.as_ref().map_or(0, String::len)) as u64;
        if held > allowance {
            return Err(CaptionError::new(
                path,
                format!(
                    "its captions up to line {n} take more than {} of memory; {}",
                    crate::budget::human_bytes(allowance),
                    crate::budget::how_to_raise()
                ),
            ));
        }
        prompts.push(prompt);
    }
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
    fn tables_hold_each_distinct_text_once() {
        let (embs, masks) = right_padded(&[1, 1, 1], 2, 2);
        let texts = ["b", "a", "b"].map(String::from).to_vec();
        let set =
            CaptionSet::from_right_padded(&embs, &masks, Some(texts), Path::new("c.npz")).unwrap();
        // Samples 4, 2, 0, 1: captions 1, 2, 0, 1; distinct texts by their first caption.
        let table = set.table_of(&[4, 2, 0, 1]).unwrap();
        assert_eq!(table.texts, ["b", "a"]);
        assert_eq!(table.rows, [1, 0, 0, 1]);
        assert_eq!(table.text(0), "a");
        let merged = CaptionTable::new(["x", "y", "x", "z"]);
        assert_eq!(merged.texts, ["x", "y", "z"]);
        assert_eq!(merged.rows, [0, 1, 0, 2]);
        // Captions sampled by shards of a job.
        assert_eq!(captions_sampled(5, Shard::ALL, 2), [0, 1]);
        let second = Shard { index: 1, count: 2 };
        assert_eq!(captions_sampled(3, second, 4), [0, 1]);
        assert_eq!(captions_sampled(4, second, 100), [1, 3]);
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

    fn parse_prompts(text: &str, path: &Path) -> Result<Vec<Prompt>, CaptionError> {
        prompts_from(text.as_bytes(), path, u64::MAX)
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
    fn prompt_files_are_read_within_limits() {
        let p = Path::new("prompts.txt");
        let longest = "x".repeat(MAX_PROMPT_LINE);
        let text = format!("a cat\r\n{longest}\r\n");
        assert_eq!(parse_prompts(&text, p).unwrap()[1].caption, longest);
        let e = parse_prompts(&format!("a cat\n\n{longest}y\nok\n"), p)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("prompts.txt: line 3 is longer than 16 KiB"),
            "{e}"
        );
        // An endless line is refused after reading just past the limit.
        let e = prompts_from(
            BufReader::new(std::io::repeat(0).take(1 << 40)),
            p,
            u64::MAX,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 1 is longer"), "{e}");
        let each = std::mem::size_of::<Prompt>() as u64 + 3;
        let many = "cat\n".repeat(10);
        assert_eq!(
            prompts_from(many.as_bytes(), p, 10 * each).unwrap().len(),
            10
        );
        let e = prompts_from(many.as_bytes(), p, 10 * each - 1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("captions up to line 10 take more than") && e.contains("--max-input-memory"),
            "{e}"
        );
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
