//! The DINOv2 feature network (FD_DINOv2) against the golden outputs of facebookresearch/dinov2's
//! own `DinoVisionTransformer` (`../shared/golden/dinov2_tiny_public_pretrain.pth`,
//! `feature_nets_public_io.safetensors`): dgm-eval's preprocessing, the class-token features at 224
//! (interpolated position embedding) and at 518 (none), the whole path from u8 images, and the
//! errors for files that are not DINOv2 ViT-*/14 state dicts.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::harness::{assert_close, f32s, golden, golden_tensors};
use llamagen_eval::checkpoint::Checkpoint;
use llamagen_eval::models::dinov2::{self, Dinov2, Dinov2Error, IMAGENET_STD};
use ndarray::Array4;
use tch::{Device, Kind, Tensor};

/// The golden tiny model's head count (embed 64, 4 heads: head dim 16, not a released width).
const TINY_HEADS: i64 = 4;
const SIZES: [&str; 2] = ["256x256", "64x64"];

fn golden_io() -> HashMap<String, Tensor> {
    golden_tensors("feature_nets_public_io.safetensors")
}

fn golden_weights() -> PathBuf {
    golden("dinov2_tiny_public_pretrain.pth")
}

fn load_tiny() -> (tch::nn::VarStore, Dinov2) {
    Dinov2::load(&golden_weights(), Device::Cpu, Some(TINY_HEADS)).expect("golden DINOv2 loads")
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    f32s(a).iter().zip(f32s(b)).fold(0f64, |m, (x, y)| {
        m.max((f64::from(*x) - f64::from(y)).abs())
    })
}

fn to_array(images: &Tensor) -> Array4<u8> {
    let size: Vec<usize> = images.size().iter().map(|&d| d as usize).collect();
    let data = Vec::<u8>::try_from(images.contiguous().flatten(0, -1)).unwrap();
    Array4::from_shape_vec((size[0], size[1], size[2], size[3]), data).unwrap()
}

#[test]
fn dinov2_golden_model_has_the_tiny_configuration() {
    let (_vs, model) = load_tiny();
    let c = model.config();
    assert_eq!(
        (c.embed_dim, c.depth, c.num_heads, c.patch_size, c.pos_grid),
        (64, 2, 4, 14, 37)
    );
    assert_eq!(c.num_register_tokens, 0);
    assert_eq!(c.ffn, dinov2::Ffn::Mlp { hidden: 256 });
    assert!(c.layer_scale);
}

#[test]
fn dinov2_preprocessing_matches_dgm_eval() {
    let io = golden_io();
    // One 8-bit level after normalisation, at the smallest std.
    let tol = 1.0 / 255.0 / f64::from(IMAGENET_STD[2]) + 1e-6;
    for size in SIZES {
        let images = to_array(&io[&format!("dinov2_{size}_images_uint8_nhwc")]);
        let ours = dinov2::preprocess(images.view());
        let reference = &io[&format!("dinov2_{size}_input")];
        let diff = max_abs_diff(&ours, reference);
        eprintln!("dinov2 {size} preprocessing: max abs diff {diff:.3e} (tolerance {tol:.3e})");
        assert!(diff <= tol, "{size}: preprocessing differs by {diff:e}");
    }
}

#[test]
fn dinov2_features_match_the_reference_at_224_and_518() {
    let io = golden_io();
    let (_vs, model) = load_tiny();
    let cases = [
        ("dinov2_256x256_input", "dinov2_256x256_cls"),
        ("dinov2_64x64_input", "dinov2_64x64_cls"),
        ("dinov2_at518_input", "dinov2_at518_cls"),
    ];
    for (input, cls) in cases {
        let ours = model.features(&io[input]);
        assert_close(
            &ours,
            &io[cls],
            1e-4,
            &format!("{cls} from the reference input"),
        );
    }
}

#[test]
fn dinov2_features_from_u8_images_match_the_reference() {
    let io = golden_io();
    let (_vs, model) = load_tiny();
    for size in SIZES {
        let images = to_array(&io[&format!("dinov2_{size}_images_uint8_nhwc")]);
        let ours = model.features(&dinov2::preprocess(images.view()));
        let reference = &io[&format!("dinov2_{size}_cls")];
        assert_close(
            &ours,
            reference,
            1e-4,
            &format!("dinov2 {size} u8 images -> features"),
        );
    }
}

fn assert_names_file(e: &Dinov2Error, file: &str) {
    let message = e.to_string();
    eprintln!("{message}");
    assert!(
        message.contains(file),
        "the error does not name {file}: {message}"
    );
}

#[test]
fn dinov2_refuses_other_networks_naming_the_file() {
    for file in ["vq_public.pt", "clip_vision_tiny_public.safetensors"] {
        let path = golden(file);
        let e = Dinov2::load(&path, Device::Cpu, None).unwrap_err();
        assert!(matches!(e, Dinov2Error::NotDinov2 { .. }), "{file}: {e}");
        assert!(e.to_string().contains("not a DINOv2"), "{e}");
        assert_names_file(&e, file);
    }
}

#[test]
fn dinov2_refuses_a_patch_size_other_than_14_naming_the_file() {
    let tensors = Checkpoint::open(golden_weights())
        .and_then(|ck| ck.state_dict(false))
        .expect("golden state dict");
    let doctored: Vec<(String, Tensor)> = tensors
        .into_iter()
        .map(|(name, t)| {
            let t = if name == "patch_embed.proj.weight" {
                Tensor::zeros([64, 3, 16, 16], (Kind::Float, Device::Cpu))
            } else {
                t.contiguous()
            };
            (name, t)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dinov2_patch16.safetensors");
    Tensor::write_safetensors(&doctored, &path).unwrap();
    let e = Dinov2::load(&path, Device::Cpu, Some(TINY_HEADS)).unwrap_err();
    assert!(matches!(e, Dinov2Error::PatchSize { .. }), "{e}");
    assert!(e.to_string().contains("patch size 14"), "{e}");
    assert_names_file(&e, "dinov2_patch16.safetensors");

    // Without the head count, a width outside the releases is refused, also naming the file.
    let e = Dinov2::load(&golden_weights(), Device::Cpu, None).unwrap_err();
    assert!(matches!(e, Dinov2Error::UnknownHeads { .. }), "{e}");
    assert_names_file(&e, "dinov2_tiny_public_pretrain.pth");
}
