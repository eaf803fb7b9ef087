//! The caption tokenizers against the Python `tokenizers` package (the pinned version of the Rust
//! crate's Python binding) on tiny T5- and CLIP-layout `tokenizer.json` files trained in the test
//! (`fixtures/tiny_tokenizers.py`), with the callers' settings (`oracles/tokenize_captions.py`):
//! LlamaGen's T5Embedder call (120 tokens, padding and truncation) and torchmetrics' CLIPScore
//! (77 tokens, cut after tokenizing).

use llamagen_eval::models::tokenizer::{CaptionTokenizer, ClipTokenizer};
use llamagen_test_support as support;

use crate::t5_golden::{captions, python_tokens};

#[test]
fn t5_caption_tokenizer_matches_the_python_package() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    support::run_reference("fixtures/tiny_tokenizers.py", &[dir.path()]);
    let tokenizer = CaptionTokenizer::from_folder(&dir.path().join("t5")).unwrap();
    let captions = captions();
    for length in [120, 16] {
        let (ids, mask) = tokenizer.encode(&captions, length).unwrap();
        let (want_ids, want_mask) =
            python_tokens("t5", tokenizer.path(), &captions, length, dir.path());
        for (i, caption) in captions.iter().enumerate() {
            let row = i * length..(i + 1) * length;
            assert_eq!(
                ids[row.clone()],
                want_ids[i],
                "ids of {caption:?} at {length}"
            );
            assert_eq!(mask[row], want_mask[i], "mask of {caption:?} at {length}");
        }
        let tokens: Vec<i64> = want_mask.iter().map(|m| m.iter().sum()).collect();
        eprintln!("T5 tokenizer, max length {length}: token counts {tokens:?}");
        // The captions must exercise both padding and truncation.
        assert!(tokens.iter().any(|&t| t < length as i64 / 2));
        assert!(tokens.iter().filter(|&&t| t == length as i64).count() >= 2);
    }
    let e = tokenizer.encode(&captions, 1).unwrap_err();
    assert!(e.to_string().contains("no room for text"), "{e}");
}

#[test]
fn clip_tokenizer_matches_the_python_package() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    support::run_reference("fixtures/tiny_tokenizers.py", &[dir.path()]);
    let tokenizer = ClipTokenizer::from_folder(&dir.path().join("clip")).unwrap();
    assert_eq!(tokenizer.end_id(), 299);
    let captions = captions();
    let ids = tokenizer.encode(&captions, 77).unwrap();
    let (want, mask) = python_tokens("clip", tokenizer.path(), &captions, 77, dir.path());
    for (i, caption) in captions.iter().enumerate() {
        assert_eq!(ids[i * 77..(i + 1) * 77], want[i], "ids of {caption:?}");
    }
    let tokens: Vec<i64> = mask.iter().map(|m| m.iter().sum()).collect();
    eprintln!("CLIP tokenizer: token counts {tokens:?}");
    assert!(tokens.contains(&77) && tokens.iter().any(|&t| t < 20));
    // A T5 tokenizer has no `<|endoftext|>`; a CLIP one no `<pad>`.
    let e = ClipTokenizer::from_folder(&dir.path().join("t5")).unwrap_err();
    assert!(e.to_string().contains("not a CLIP tokenizer"), "{e}");
    let e = CaptionTokenizer::from_folder(&dir.path().join("clip")).unwrap_err();
    assert!(e.to_string().contains("not a T5 tokenizer"), "{e}");
}
