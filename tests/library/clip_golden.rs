//! The CLIP vision tower and CMMD's preprocessing against Hugging Face's `CLIPVisionModelWithProjection`
//! and google-research `cmmd` on the tiny golden model (`../shared/golden/
//! clip_vision_tiny_public.safetensors`, `feature_nets_public_io.safetensors`); OpenAI's
//! TorchScript release form (built from the same weights by `fixtures/openai_clip_torchscript.py`);
//! and the files it must refuse.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::harness::{assert_close, f32s, golden, golden_tensors, refusal};
use llamagen_eval::models::clip::{preprocess, ClipError, ClipVisionModel, Heads, CLIP_STD};
use llamagen_test_support as support;
use ndarray::Array4;
use tch::{Device, Tensor};

/// The golden inputs and outputs, by name.
struct Io(HashMap<String, Tensor>);

impl Io {
    fn read() -> Self {
        Io(golden_tensors("feature_nets_public_io.safetensors"))
    }

    fn get(&self, name: &str) -> &Tensor {
        self.0
            .get(name)
            .unwrap_or_else(|| panic!("{name} in feature_nets_public_io.safetensors"))
    }

    fn images(&self, set: &str) -> Array4<u8> {
        let t = self.get(&format!("clip_{set}_images_uint8_nhwc"));
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let values = Vec::<u8>::try_from(t.contiguous().flatten(0, -1)).unwrap();
        Array4::from_shape_vec((shape[0], shape[1], shape[2], shape[3]), values).unwrap()
    }
}

fn golden_clip() -> PathBuf {
    golden("clip_vision_tiny_public.safetensors")
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f64, |m, (x, y)| {
        m.max((f64::from(*x) - f64::from(*y)).abs())
    })
}

/// Checks both embeddings of `model` on the reference's input against the reference's.
fn check_embeddings(io: &Io, model: &ClipVisionModel, what: &str) {
    for set in ["a", "b"] {
        let out = model.embed(io.get(&format!("clip_{set}_input"))).unwrap();
        for (name, ours) in [
            ("image_embeds", &out.image_embeds),
            ("normalized", &out.normalized),
        ] {
            let golden = io.get(&format!("clip_{set}_{name}"));
            assert_close(ours, golden, 1e-4, &format!("{what}: set {set} {name}"));
        }
    }
}

#[test]
fn clip_preprocessing_matches_cmmd() {
    let io = Io::read();
    // One 8-bit level after normalisation is 1 / (255 std): at least 0.0142.
    let level = 1.0 / (255.0 * CLIP_STD.iter().copied().fold(0.0, f64::max));
    for set in ["a", "b"] {
        let ours = preprocess(io.images(set).view(), 336).unwrap();
        let golden = io.get(&format!("clip_{set}_input"));
        assert_eq!(ours.size(), golden.size(), "set {set}");
        let diff = max_abs_diff(&f32s(&ours), &f32s(golden));
        eprintln!(
            "CLIP preprocessing, set {set} ({:?}): max abs diff {diff:.3e} after normalisation \
             ({:.3} of an 8-bit level)",
            io.get(&format!("clip_{set}_images_uint8_nhwc")).size(),
            diff / level
        );
        assert!(diff <= level, "set {set}: preprocessing differs by {diff}");
    }
}

#[test]
fn clip_embeddings_match_hugging_face() {
    let (_vs, model) = ClipVisionModel::load(&golden_clip(), Device::Cpu, Heads::Auto).unwrap();
    let c = model.config();
    assert_eq!(
        (
            c.hidden,
            c.layers,
            c.heads,
            c.projection_dim,
            c.image_size,
            c.patch_size
        ),
        (64, 2, 4, 32, 336, 14),
        "configuration read from the shapes and clip_vision_tiny_public_config.json"
    );
    check_embeddings(&Io::read(), &model, "safetensors");
}

#[test]
fn clip_images_to_embeddings_end_to_end() {
    let io = Io::read();
    let (_vs, model) =
        ClipVisionModel::load(&golden_clip(), Device::Cpu, Heads::Explicit(4)).unwrap();
    for set in ["a", "b"] {
        let out = model.embed_images(io.images(set).view()).unwrap();
        for name in ["image_embeds", "normalized"] {
            let ours = if name == "normalized" {
                &out.normalized
            } else {
                &out.image_embeds
            };
            let golden = io.get(&format!("clip_{set}_{name}"));
            let what = format!("u8 images to embeddings: set {set} {name}");
            assert_close(ours, golden, 1e-4, &what);
        }
    }
}

#[test]
fn clip_openai_torchscript_release_form_loads() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let archive = dir.path().join("ViT-tiny-336px.pt");
    support::run_reference(
        "fixtures/openai_clip_torchscript.py",
        &[golden_clip().as_os_str(), "4".as_ref(), archive.as_os_str()],
    );
    // No config.json beside it and not a released width: the heads must be given.
    let e = ClipVisionModel::load(&archive, Device::Cpu, Heads::Auto).unwrap_err();
    assert!(
        matches!(e, ClipError::Heads { hidden: 64, .. }) && e.to_string().contains("ViT-tiny"),
        "{e}"
    );
    let (_vs, model) = ClipVisionModel::load(&archive, Device::Cpu, Heads::Explicit(4)).unwrap();
    check_embeddings(&Io::read(), &model, "OpenAI TorchScript");
}

#[test]
fn clip_refuses_text_models_and_other_files() {
    let dir = support::golden_dir();
    let text = dir.join("clip_text_tiny_public.safetensors");
    let (e, message) = refusal(ClipVisionModel::load(&text, Device::Cpu, Heads::Auto));
    assert!(matches!(e, ClipError::TextOnly { .. }), "{message}");
    assert!(
        message.contains("clip_text_tiny_public.safetensors"),
        "{message}"
    );

    for other in ["vq_public_io.safetensors", "gpt_public.pt"] {
        let path = dir.join(other);
        let (e, message) = refusal(ClipVisionModel::load(&path, Device::Cpu, Heads::Auto));
        assert!(matches!(e, ClipError::NotClip { .. }), "{message}");
        assert!(message.contains(other), "{message}");
    }

    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let garbage = tmp.path().join("garbage.bin");
    std::fs::write(&garbage, b"definitely not a checkpoint").unwrap();
    let e = ClipVisionModel::load(&garbage, Device::Cpu, Heads::Auto).unwrap_err();
    assert!(e.to_string().contains("garbage.bin"), "{e}");
}
