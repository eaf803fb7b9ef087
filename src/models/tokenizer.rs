//! Caption tokenizers read from a Hugging Face `tokenizer.json` through the `tokenizers` crate (the
//! Rust core of the Python `tokenizers` package that Hugging Face's fast tokenizers wrap), set up as
//! the two text encoders' callers use them:
//!
//! - [`CaptionTokenizer`], for T5: LlamaGen's T5Embedder calls its tokenizer with
//!   `max_length=120, padding="max_length", truncation=True, add_special_tokens=True`: the
//!   post-processor appends `</s>` (id 1), a caption longer than the limit is cut so that `</s>`
//!   is still its last token, and shorter ones are padded on the right with `<pad>` (id 0) and
//!   mask 0.
//! - [`ClipTokenizer`], for CLIP's text tower as torchmetrics' CLIPScore calls it: `<|startoftext|>`
//!   and `<|endoftext|>` added, no truncation by the tokenizer, then the ids cut to the model's
//!   context (77; a longer caption loses its end token, as there) and padded with `<|endoftext|>`.
//!
//! Whatever truncation or padding a `tokenizer.json` declares is replaced by these settings.

use std::path::{Path, PathBuf};

use tokenizers::{
    PaddingDirection, PaddingParams, PaddingStrategy, PostProcessor, Tokenizer,
    TruncationDirection, TruncationParams, TruncationStrategy,
};

/// The file a Hugging Face model folder keeps its fast tokenizer in.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// T5's padding token.
pub const T5_PAD: &str = "<pad>";
/// CLIP's end-of-text token, also its padding.
pub const CLIP_END: &str = "<|endoftext|>";

/// Why a tokenizer could not be loaded or used. Names the file.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The model folder has no `tokenizer.json`.
    #[error(
        "{}: no tokenizer.json in this folder; a Hugging Face model folder has one (for a \
         folder with only spiece.model, transformers writes it: \
         AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR))",
        dir.display()
    )]
    Missing {
        /// The folder.
        dir: PathBuf,
    },
    /// The file is not a tokenizer the `tokenizers` crate can read.
    #[error("{}: cannot read it as a Hugging Face tokenizer.json: {message}", path.display())]
    Load {
        /// The tokenizer file.
        path: PathBuf,
        /// The `tokenizers` crate's message.
        message: String,
    },
    /// The tokenizer lacks a token the caller needs (the tokenizer of another model?).
    #[error("{}: the tokenizer has no `{token}` token: not a {model} tokenizer", path.display())]
    NoToken {
        /// The tokenizer file.
        path: PathBuf,
        /// The token.
        token: &'static str,
        /// The model family it was loaded for.
        model: &'static str,
    },
    /// The requested length cannot hold the special tokens and one token of text.
    #[error("{}: a maximum length of {max_length} tokens leaves no room for text beside the {special} special token(s)", path.display())]
    MaxLength {
        /// The tokenizer file.
        path: PathBuf,
        /// The requested length.
        max_length: usize,
        /// The special tokens the post-processor adds.
        special: usize,
    },
    /// Encoding failed.
    #[error("{}: cannot tokenize the captions: {message}", path.display())]
    Encode {
        /// The tokenizer file.
        path: PathBuf,
        /// The `tokenizers` crate's message.
        message: String,
    },
    /// Token ids the model has no embedding for (the tokenizer of another model?).
    #[error(
        "{}: token id {id} is out of range for the {model}'s {vocab} embeddings: the tokenizer \
         does not belong to this model",
        tokenizer.display()
    )]
    TokenOutOfRange {
        /// The tokenizer file.
        tokenizer: PathBuf,
        /// The offending id.
        id: i64,
        /// The model's vocabulary size.
        vocab: i64,
        /// The model the ids were made for (`T5 encoder`).
        model: &'static str,
    },
}

/// Checks that `model`'s `vocab` embeddings cover every one of `ids`, which the tokenizer file
/// `tokenizer` made: else [`TokenizerError::TokenOutOfRange`] with the first id they do not.
pub(crate) fn check_vocab(
    ids: &[i64],
    vocab: i64,
    tokenizer: &Path,
    model: &'static str,
) -> Result<(), TokenizerError> {
    match ids.iter().find(|&&id| id < 0 || id >= vocab) {
        Some(&id) => Err(TokenizerError::TokenOutOfRange {
            tokenizer: tokenizer.to_path_buf(),
            id,
            vocab,
            model,
        }),
        None => Ok(()),
    }
}

/// `dir/tokenizer.json`, or [`TokenizerError::Missing`].
fn file_in(dir: &Path) -> Result<PathBuf, TokenizerError> {
    let path = dir.join(TOKENIZER_FILE);
    if path.is_file() {
        Ok(path)
    } else {
        Err(TokenizerError::Missing {
            dir: dir.to_path_buf(),
        })
    }
}

fn read(path: &Path) -> Result<Tokenizer, TokenizerError> {
    Tokenizer::from_file(path).map_err(|e| TokenizerError::Load {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn token(
    tokenizer: &Tokenizer,
    path: &Path,
    token: &'static str,
    model: &'static str,
) -> Result<u32, TokenizerError> {
    tokenizer
        .token_to_id(token)
        .ok_or_else(|| TokenizerError::NoToken {
            path: path.to_path_buf(),
            token,
            model,
        })
}

/// T5's caption tokenizer with LlamaGen's settings (see the module documentation).
#[derive(Debug, Clone)]
pub struct CaptionTokenizer {
    tokenizer: Tokenizer,
    path: PathBuf,
    pad_id: u32,
}

impl CaptionTokenizer {
    /// The `tokenizer.json` of the Hugging Face T5 folder `dir`.
    pub fn from_folder(dir: &Path) -> Result<Self, TokenizerError> {
        Self::from_file(&file_in(dir)?)
    }

    /// A T5 `tokenizer.json` (it must have the `<pad>` token).
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        let tokenizer = read(path)?;
        let pad_id = token(&tokenizer, path, T5_PAD, "T5")?;
        Ok(CaptionTokenizer {
            tokenizer,
            path: path.to_path_buf(),
            pad_id,
        })
    }

    /// The tokenizer file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Token ids and attention masks of `captions`, each exactly `max_length` long, row after row
    /// ([N * max_length] each): Hugging Face's `tokenizer(captions, max_length=max_length,
    /// padding="max_length", truncation=True, add_special_tokens=True)`.
    pub fn encode(
        &self,
        captions: &[String],
        max_length: usize,
    ) -> Result<(Vec<i64>, Vec<i64>), TokenizerError> {
        let special = self
            .tokenizer
            .get_post_processor()
            .map_or(0, |pp| pp.added_tokens(false));
        if max_length <= special {
            return Err(TokenizerError::MaxLength {
                path: self.path.clone(),
                max_length,
                special,
            });
        }
        let mut tokenizer = self.tokenizer.clone();
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| self.encode_error(e))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_length),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id: self.pad_id,
            pad_type_id: 0,
            pad_token: T5_PAD.to_owned(),
        }));
        let inputs: Vec<&str> = captions.iter().map(String::as_str).collect();
        let encodings = tokenizer
            .encode_batch(inputs, true)
            .map_err(|e| self.encode_error(e))?;
        let mut ids = Vec::with_capacity(captions.len() * max_length);
        let mut mask = Vec::with_capacity(captions.len() * max_length);
        for e in &encodings {
            // Fixed padding and truncation make every row `max_length` long.
            assert_eq!(e.get_ids().len(), max_length, "a padded, truncated row");
            ids.extend(e.get_ids().iter().map(|&i| i64::from(i)));
            mask.extend(e.get_attention_mask().iter().map(|&m| i64::from(m)));
        }
        Ok((ids, mask))
    }

    fn encode_error(&self, e: tokenizers::Error) -> TokenizerError {
        TokenizerError::Encode {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }
}

/// CLIP's text tokenizer as torchmetrics' CLIPScore uses it (see the module documentation).
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    path: PathBuf,
    end_id: u32,
}

impl ClipTokenizer {
    /// The `tokenizer.json` of the Hugging Face CLIP folder `dir`.
    pub fn from_folder(dir: &Path) -> Result<Self, TokenizerError> {
        Self::from_file(&file_in(dir)?)
    }

    /// A CLIP `tokenizer.json` (it must have the `<|endoftext|>` token).
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        let mut tokenizer = read(path)?;
        let end_id = token(&tokenizer, path, CLIP_END, "CLIP")?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| TokenizerError::Load {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        Ok(ClipTokenizer {
            tokenizer,
            path: path.to_path_buf(),
            end_id,
        })
    }

    /// The tokenizer file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The id of `<|endoftext|>`.
    pub fn end_id(&self) -> i64 {
        i64::from(self.end_id)
    }

    /// Token ids of `texts` with the start and end tokens, cut to `context` and padded with
    /// `<|endoftext|>`, row after row ([N * context]).
    pub fn encode(&self, texts: &[String], context: usize) -> Result<Vec<i64>, TokenizerError> {
        let inputs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let encodings =
            self.tokenizer
                .encode_batch(inputs, true)
                .map_err(|e| TokenizerError::Encode {
                    path: self.path.clone(),
                    message: e.to_string(),
                })?;
        let mut ids = Vec::with_capacity(texts.len() * context);
        for e in &encodings {
            let row = &e.get_ids()[..e.get_ids().len().min(context)];
            ids.extend(row.iter().map(|&i| i64::from(i)));
            ids.extend(std::iter::repeat_n(
                i64::from(self.end_id),
                context - row.len(),
            ));
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_foreign_tokenizers_are_named() {
        let dir = std::env::temp_dir().join(format!("tokenizer-missing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = CaptionTokenizer::from_folder(&dir).unwrap_err();
        assert!(
            matches!(e, TokenizerError::Missing { .. })
                && e.to_string().contains(&dir.display().to_string()),
            "{e}"
        );
        std::fs::write(dir.join(TOKENIZER_FILE), "{\"not\": \"a tokenizer\"}").unwrap();
        let e = ClipTokenizer::from_folder(&dir).unwrap_err();
        assert!(matches!(e, TokenizerError::Load { .. }), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
