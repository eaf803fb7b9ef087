//! The CLIP text tower against Hugging Face's `CLIPTextModelWithProjection` on the tiny golden model
//! (`../shared/golden/clip_text_tiny_public.safetensors` + config, `t2i_public_io.safetensors`),
//! alone and inside a whole `CLIPModel` file; the CLIP score against the golden per-pair scores
//! (`clip_a_image_embeds[:5]` of `feature_nets_public_io.safetensors` with the caption embeddings)
//! and their mean in `t2i_public.json`; caption text to embeddings with a tokenizer trained in the
//! test; and the files it must refuse.

use std::collections::HashMap;
use std::path::PathBuf;

use llamagen_eval::models::clip::{ClipActivation, Heads};
use llamagen_eval::models::clip_text::{ClipTextEmbedder, ClipTextError, ClipTextModel};
use llamagen_eval::models::tokenizer::TokenizerError;
use llamagen_metrics::clip_score::clip_score;
use llamagen_test_support as support;
use ndarray::Array2;
use tch::{Device, Kind, Tensor};

use crate::harness::{assert_close, f32s, golden, golden_json, golden_tensors, refusal};
use crate::t5_golden::{add_tokens, captions, python_tokens};

fn read(name: &str) -> HashMap<String, Tensor> {
    golden_tensors(name)
}

fn golden_text() -> PathBuf {
    golden("clip_text_tiny_public.safetensors")
}

fn matrix(t: &Tensor) -> Array2<f32> {
    let (r, c) = t.size2().unwrap();
    Array2::from_shape_vec((r as usize, c as usize), f32s(t)).unwrap()
}

fn check_model(model: &ClipTextModel, io: &HashMap<String, Tensor>, what: &str) {
    let out = model.embed_ids(&io["clip_text_input_ids"]);
    assert_close(
        &out,
        &io["clip_text_embeds"],
        1e-4,
        &format!("{what}: text_embeds"),
    );
}

#[test]
fn clip_text_embeddings_match_hugging_face() {
    let io = read("t2i_public_io.safetensors");
    let (_vs, model) = ClipTextModel::load(&golden_text(), Device::Cpu, Heads::Auto).unwrap();
    let c = model.config();
    assert_eq!(
        (
            c.vocab_size,
            c.hidden,
            c.layers,
            c.heads,
            c.context,
            c.projection_dim,
            c.eos_token_id
        ),
        (300, 64, 2, 4, 77, 32, 299),
        "configuration from the shapes and clip_text_tiny_public_config.json"
    );
    assert_eq!(c.activation, ClipActivation::QuickGelu);
    check_model(&model, &io, "CLIPTextModelWithProjection");
}

#[test]
fn clip_text_tower_loads_from_a_whole_clip_model() {
    let io = read("t2i_public_io.safetensors");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut all: Vec<(String, Tensor)> = Tensor::read_safetensors(golden_text()).unwrap();
    all.extend(Tensor::read_safetensors(golden("clip_vision_tiny_public.safetensors")).unwrap());
    all.push(("logit_scale".to_owned(), Tensor::from(2.6592f32)));
    all.push((
        "text_model.embeddings.position_ids".to_owned(),
        Tensor::arange(77, (Kind::Int64, Device::Cpu)).unsqueeze(0),
    ));
    let file = dir.path().join("model.safetensors");
    Tensor::write_safetensors(&all, &file).unwrap();
    let config = |name: &str| -> serde_json::Value { golden_json(name) };
    let clip_config = serde_json::json!({
        "model_type": "clip",
        "projection_dim": 32,
        "text_config": config("clip_text_tiny_public_config.json"),
        "vision_config": config("clip_vision_tiny_public_config.json"),
    });
    std::fs::write(dir.path().join("config.json"), clip_config.to_string()).unwrap();
    let (_vs, model) = ClipTextModel::load(&file, Device::Cpu, Heads::Auto).unwrap();
    assert_eq!(model.config().eos_token_id, 299);
    check_model(&model, &io, "CLIPModel");
}

#[test]
fn clip_score_matches_the_golden_pairs() {
    let io = read("t2i_public_io.safetensors");
    let features = read("feature_nets_public_io.safetensors");
    let manifest = golden_json("t2i_public.json");
    let mean = manifest["clip_text"]["clip_score"]
        .as_f64()
        .expect("clip_text.clip_score in t2i_public.json");
    let images = matrix(&features["clip_a_image_embeds"].narrow(0, 0, 5));
    let per_pair = f32s(&io["clip_score_per_pair"]);
    let (_vs, model) = ClipTextModel::load(&golden_text(), Device::Cpu, Heads::Auto).unwrap();
    let ours = model.embed_ids(&io["clip_text_input_ids"]);
    for (what, texts) in [
        ("golden text embeddings", matrix(&io["clip_text_embeds"])),
        ("our text embeddings", matrix(&ours)),
    ] {
        let score = clip_score(images.view(), texts.view()).unwrap();
        let got: Vec<f32> = score.per_pair.iter().map(|&v| v as f32).collect();
        let err = support::max_rel_err(&got, &per_pair);
        eprintln!(
            "CLIP score from {what}: per pair {:?} (max rel err {err:.2e}), mean {} (reference \
             {mean}), std {}, torchmetrics' clamped mean {}",
            score.per_pair,
            score.mean,
            score.std,
            score.torchmetrics()
        );
        assert!(err <= 1e-4, "{what}: per-pair relative error {err:e}");
        assert!(
            support::rel_diff(score.mean, mean) <= 1e-4,
            "{what}: mean {} vs {mean}",
            score.mean
        );
    }
}

#[test]
fn clip_text_embedder_embeds_caption_text() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    support::run_reference("fixtures/tiny_tokenizers.py", &[dir.path()]);
    let tokenizer = dir.path().join("clip/tokenizer.json");
    let embedder =
        ClipTextEmbedder::load(&golden_text(), Some(&tokenizer), Device::Cpu, Heads::Auto).unwrap();
    let captions = captions();
    let got = embedder.embed(&captions).unwrap();
    let n = captions.len() as i64;
    assert_eq!(got.size(), [n, 32]);
    let (ids, _) = python_tokens("clip", &tokenizer, &captions, 77, dir.path());
    let want = embedder
        .model()
        .embed_ids(&Tensor::from_slice(&ids.concat()).view([n, 77]));
    assert!(
        got.equal(&want),
        "embeddings differ from the model on the package's ids"
    );

    // A tokenizer with ids past the model's 300 embeddings.
    let big = add_tokens(&tokenizer, 10);
    let embedder =
        ClipTextEmbedder::load(&golden_text(), Some(&tokenizer), Device::Cpu, Heads::Auto).unwrap();
    let e = embedder.embed(&[format!("a {big} cat")]).unwrap_err();
    assert!(
        matches!(
            e,
            ClipTextError::Tokenizer(TokenizerError::TokenOutOfRange {
                id: 309,
                vocab: 300,
                ..
            })
        ) && e.to_string().contains("tokenizer.json"),
        "{e}"
    );

    // The tokenizer beside the weights by default: none there.
    let e = ClipTextEmbedder::load(&golden_text(), None, Device::Cpu, Heads::Auto).unwrap_err();
    assert!(
        matches!(e, ClipTextError::Tokenizer(TokenizerError::Missing { .. })),
        "{e}"
    );
}

#[test]
fn clip_text_refuses_other_files() {
    let dir = support::golden_dir();
    let vision = dir.join("clip_vision_tiny_public.safetensors");
    let (e, message) = refusal(ClipTextModel::load(&vision, Device::Cpu, Heads::Auto));
    assert!(
        matches!(e, ClipTextError::NotClipText { .. })
            && message.contains("vision tower only")
            && message.contains("clip_vision_tiny_public.safetensors"),
        "{message}"
    );

    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let archive = tmp.path().join("ViT-tiny-336px.pt");
    support::run_reference(
        "fixtures/openai_clip_torchscript.py",
        &[vision.as_os_str(), "4".as_ref(), archive.as_os_str()],
    );
    let (_, message) = refusal(ClipTextModel::load(
        &archive,
        Device::Cpu,
        Heads::Explicit(4),
    ));
    assert!(message.contains("OpenAI's own CLIP format"), "{message}");

    for other in ["t5_tiny_public.safetensors", "gpt_public.pt"] {
        let (e, message) = refusal(ClipTextModel::load(
            &dir.join(other),
            Device::Cpu,
            Heads::Auto,
        ));
        assert!(
            matches!(e, ClipTextError::NotClipText { .. }) && message.contains(other),
            "{message}"
        );
    }

    // A config of another model.
    let config = tmp.path().join("other_config.json");
    std::fs::write(
        &config,
        r#"{"text_config": {"hidden_size": 768, "num_attention_heads": 12}}"#,
    )
    .unwrap();
    let (e, message) = refusal(ClipTextModel::load(
        &golden_text(),
        Device::Cpu,
        Heads::ConfigFile(config),
    ));
    assert!(
        matches!(e, ClipTextError::Config { .. })
            && message.contains("other_config.json")
            && message.contains("hidden_size is 768"),
        "{message}"
    );
}
