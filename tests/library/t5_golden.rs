//! The T5 encoder against Hugging Face's `T5EncoderModel` on the tiny golden model
//! (`../shared/golden/t5_tiny_public.safetensors` + config, `t2i_public_io.safetensors`) in float32,
//! and in bfloat16 against float32; the loader on Hugging Face folder layouts
//! (`fixtures/t5_layouts.py`: `pytorch_model.bin`, sharded safetensors of a whole
//! T5ForConditionalGeneration, sharded torch files); `T5Embedder` from caption text against the
//! Python `tokenizers` package; and the inputs it must refuse.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::harness::{assert_close, golden, golden_tensors, refusal};
use llamagen_eval::models::t5::{T5Activation, T5Embedder, T5Encoder, T5Error, T5_MAX_LENGTH};
use llamagen_eval::models::tokenizer::TokenizerError;
use llamagen_test_support as support;
use tch::{Device, Kind, Tensor};

/// Largest difference between the bfloat16 and float32 encoders, relative to the largest float32
/// hidden value. bfloat16 keeps 8 significant bits (a relative rounding step of 2^-8 = 0.4 %); the
/// embeddings, every projection's input and output, the attention scores and probabilities and the
/// residual stream are rounded to it, and the errors add up through the blocks. Measured on the
/// golden inputs: 9.3 %, the figure Hugging Face's own bfloat16 run gives (transformers 4.42.4,
/// whose output ours equals bit for bit on the CPU; checked by hand, as that version cannot share
/// the project venv's numpy 2).
const BF16_TOLERANCE: f64 = 0.15;

fn io() -> HashMap<String, Tensor> {
    golden_tensors("t2i_public_io.safetensors")
}

fn golden_t5() -> PathBuf {
    golden("t5_tiny_public.safetensors")
}

/// The encoder's output on the golden ids and masks.
fn run(model: &T5Encoder, io: &HashMap<String, Tensor>) -> Tensor {
    model.forward(&io["input_ids"], &io["attention_mask"])
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// A Hugging Face-style folder with the golden weights and config (and what `extra` adds).
fn golden_folder(dir: &Path) -> PathBuf {
    let folder = dir.join("t5-tiny");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::copy(golden_t5(), folder.join("model.safetensors")).unwrap();
    std::fs::copy(
        golden("t5_tiny_public_config.json"),
        folder.join("config.json"),
    )
    .unwrap();
    folder
}

#[test]
fn t5_hidden_states_match_hugging_face() {
    let io = io();
    let (_vs, model) = T5Encoder::load(&golden_t5(), Device::Cpu, Kind::Float).unwrap();
    let c = model.config();
    assert_eq!(
        (
            c.vocab_size,
            c.d_model,
            c.num_layers,
            c.num_heads,
            c.d_kv,
            c.d_ff
        ),
        (200, 32, 2, 4, 8, 64),
        "configuration from t5_tiny_public_config.json"
    );
    assert!(c.gated && c.activation == T5Activation::GeluNew);
    assert_eq!(
        (
            c.relative_attention_num_buckets,
            c.relative_attention_max_distance
        ),
        (32, 128)
    );
    let out = run(&model, &io);
    assert_eq!(out.kind(), Kind::Float);
    let what = "T5 float32: last_hidden_state";
    assert_close(&out, &io["t5_last_hidden_state"], 1e-4, what);
}

#[test]
fn t5_bfloat16_follows_float32() {
    let io = io();
    let (vs, model) = T5Encoder::load(&golden_t5(), Device::Cpu, Kind::BFloat16).unwrap();
    // Hugging Face keeps `wo` in float32 for float16 only (`_keep_in_fp32_modules`).
    for (name, var) in vs.variables() {
        assert_eq!(var.kind(), Kind::BFloat16, "{name}");
    }
    let out = run(&model, &io);
    assert_eq!(
        out.kind(),
        Kind::BFloat16,
        "the final norm returns its weight's dtype"
    );
    let what = "T5 bfloat16 vs float32";
    let err = assert_close(&out, &io["t5_last_hidden_state"], BF16_TOLERANCE, what);
    assert!(
        err > 0.0,
        "a bfloat16 run that equals float32 is not running in bfloat16"
    );
}

#[test]
fn t5_folder_layouts_load_the_same_encoder() {
    let io = io();
    let (_vs, model) = T5Encoder::load(&golden_t5(), Device::Cpu, Kind::Float).unwrap();
    let want = run(&model, &io);
    let dir = tmp();
    support::run_reference(
        "fixtures/t5_layouts.py",
        &[
            golden_t5().as_os_str(),
            support::golden_dir()
                .join("t5_tiny_public_config.json")
                .as_os_str(),
            dir.path().as_os_str(),
        ],
    );
    let mut layouts = vec![golden_folder(dir.path())];
    for name in ["bin", "sharded", "sharded_bin"] {
        layouts.push(dir.path().join(name));
    }
    layouts.push(dir.path().join("sharded/model.safetensors.index.json"));
    for path in layouts {
        let (_vs, model) = T5Encoder::load(&path, Device::Cpu, Kind::Float)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(run(&model, &io).equal(&want), "{}", path.display());
    }
}

/// Captions of many lengths (the longest well past 120 tokens), blank ones, unicode, and the text
/// of special tokens.
pub fn captions() -> Vec<String> {
    let long =
        "A portrait photo of a kangaroo wearing an orange hoodie and blue sunglasses standing \
                on the grass in front of the Sydney Opera House holding a sign on the chest that \
                says Welcome Friends! ";
    let mut out: Vec<String> = [
        "",
        " ",
        "a cat",
        "A Blue PORSCHE 356 parked   in front of\ta yellow brick wall.\n",
        "café crème brûlée, 猫, 🐱 and Ünïcödé",
        "a </s> b <pad> <extra_id_1> <|endoftext|> c <|startoftext|>",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let repeated = long.repeat(4);
    for chars in [
        100, 110, 120, 130, 140, 150, 180, 190, 195, 200, 205, 210, 300, 600,
    ] {
        out.push(repeated.chars().take(chars).collect());
    }
    out
}

/// Token ids and masks from the Python `tokenizers` package (`oracles/tokenize_captions.py`).
pub fn python_tokens(
    mode: &str,
    tokenizer: &Path,
    captions: &[String],
    length: usize,
    dir: &Path,
) -> (Vec<Vec<i64>>, Vec<Vec<i64>>) {
    let file = dir.join(format!("{mode}-captions.json"));
    std::fs::write(&file, serde_json::to_string(captions).unwrap()).unwrap();
    let out = support::run_reference(
        "oracles/tokenize_captions.py",
        &[
            mode.as_ref(),
            tokenizer.as_os_str(),
            file.as_os_str(),
            length.to_string().as_ref(),
        ],
    );
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = |key: &str| -> Vec<Vec<i64>> {
        json[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_i64().unwrap())
                    .collect()
            })
            .collect()
    };
    (rows("ids"), rows("mask"))
}

/// Adds `count` special tokens `<extra_test_N>` to a `tokenizer.json`, which numbers them after its
/// vocabulary; returns the last one.
pub fn add_tokens(tokenizer: &Path, count: usize) -> String {
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tokenizer).unwrap()).unwrap();
    let added = json["added_tokens"].as_array_mut().unwrap();
    for i in 0..count {
        added.push(serde_json::json!({
            "id": 0, "content": format!("<extra_test_{i}>"), "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": false, "special": true
        }));
    }
    std::fs::write(tokenizer, json.to_string()).unwrap();
    format!("<extra_test_{}>", count - 1)
}

#[test]
fn t5_embedder_embeds_caption_text() {
    let dir = tmp();
    support::run_reference("fixtures/tiny_tokenizers.py", &[dir.path()]);
    let folder = golden_folder(dir.path());
    std::fs::copy(
        dir.path().join("t5/tokenizer.json"),
        folder.join("tokenizer.json"),
    )
    .unwrap();
    let captions = captions();
    let embedder = T5Embedder::load(&folder, Device::Cpu, Kind::Float).unwrap();
    let (embeddings, mask) = embedder.embed(&captions).unwrap();
    let n = captions.len() as i64;
    assert_eq!(embeddings.size(), [n, T5_MAX_LENGTH as i64, 32]);
    assert_eq!((embeddings.kind(), mask.kind()), (Kind::Float, Kind::Int64));

    let (ids, masks) = python_tokens(
        "t5",
        &folder.join("tokenizer.json"),
        &captions,
        120,
        dir.path(),
    );
    let ids = Tensor::from_slice(&ids.concat()).view([n, 120]);
    let masks = Tensor::from_slice(&masks.concat()).view([n, 120]);
    assert!(
        mask.equal(&masks),
        "masks differ from the tokenizers package's"
    );
    let want = embedder.encoder().forward(&ids, &masks);
    assert!(
        embeddings.equal(&want),
        "embeddings differ from the encoder on the package's ids"
    );
    // A caption past 120 tokens keeps its end token last.
    assert_eq!(ids.int64_value(&[n - 1, 119]), 1);

    // bfloat16, as LlamaGen runs it: the bfloat16 encoder's output, widened to float32.
    let bf16 = T5Embedder::load(&folder, Device::Cpu, Kind::BFloat16).unwrap();
    let (low, _) = bf16.embed(&captions).unwrap();
    assert_eq!(low.kind(), Kind::Float);
    let want = bf16.encoder().forward(&ids, &masks);
    assert_eq!(want.kind(), Kind::BFloat16);
    assert!(low.equal(&want.to_kind(Kind::Float)));

    let (none, none_mask) = embedder.embed(&[]).unwrap();
    assert_eq!(
        (none.size(), none_mask.size()),
        (vec![0, 120, 32], vec![0, 120])
    );

    // A tokenizer with ids past the model's 200 embeddings.
    let big = add_tokens(&folder.join("tokenizer.json"), 100);
    let embedder = T5Embedder::load(&folder, Device::Cpu, Kind::Float).unwrap();
    let e = embedder.embed(&[format!("a {big} cat")]).unwrap_err();
    assert!(
        matches!(
            e,
            T5Error::Tokenizer(TokenizerError::TokenOutOfRange { id, vocab: 200, .. }) if id >= 200
        ) && e.to_string().contains("tokenizer.json"),
        "{e}"
    );
}

#[test]
fn t5_refuses_bad_inputs() {
    let dir = tmp();
    let folder = golden_folder(dir.path());
    // No tokenizer.json.
    let (e, message) = refusal(T5Embedder::load(&folder, Device::Cpu, Kind::BFloat16));
    assert!(
        matches!(e, T5Error::Tokenizer(TokenizerError::Missing { .. }))
            && message.contains(&folder.display().to_string())
            && message.contains("tokenizer.json"),
        "{message}"
    );
    // A config that does not describe the weights.
    std::fs::write(
        folder.join("config.json"),
        r#"{"d_model": 2048, "num_heads": 4, "num_layers": 2, "d_kv": 8, "d_ff": 64,
            "vocab_size": 200, "feed_forward_proj": "gated-gelu"}"#,
    )
    .unwrap();
    let (e, message) = refusal(T5Encoder::load(&folder, Device::Cpu, Kind::Float));
    assert!(
        matches!(e, T5Error::Config { .. })
            && message.contains("config.json")
            && message.contains("d_model 2048 vs 32"),
        "{message}"
    );
    // Other models' files.
    for other in ["clip_text_tiny_public.safetensors", "gpt_public.pt"] {
        let (e, message) = refusal(T5Encoder::load(&golden(other), Device::Cpu, Kind::Float));
        assert!(
            matches!(e, T5Error::NotT5 { .. }) && message.contains(other),
            "{message}"
        );
    }
    let garbage = dir.path().join("garbage.bin");
    std::fs::write(&garbage, b"definitely not a checkpoint").unwrap();
    let e = T5Encoder::load(&garbage, Device::Cpu, Kind::Float).unwrap_err();
    assert!(
        matches!(e, T5Error::Weights(_)) && e.to_string().contains("garbage.bin"),
        "{e}"
    );
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = T5Encoder::load(&empty, Device::Cpu, Kind::Float).unwrap_err();
    assert!(e.to_string().contains("no model weights"), "{e}");
}
