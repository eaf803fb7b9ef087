//! CMMD against the figures google-research `cmmd/distance.py` gives on the golden embeddings
//! (`feature_nets_public.json`, `feature_nets_public_io.safetensors`): synthetic 600 x 32 and
//! 500 x 32 sets, and the tiny CLIP model's normalised embeddings of two image sets.

use llamagen_metrics::cmmd::cmmd;
use llamagen_test_support as support;
use ndarray::Array2;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

/// The f32 matrix `name` of the golden safetensors file.
fn matrix(file: &SafeTensors<'_>, name: &str) -> Array2<f32> {
    let t = file
        .tensor(name)
        .unwrap_or_else(|e| panic!("{name} in feature_nets_public_io.safetensors: {e}"));
    assert_eq!(t.dtype(), Dtype::F32, "{name}");
    let shape = t.shape();
    assert_eq!(shape.len(), 2, "{name} is a matrix");
    let values = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Array2::from_shape_vec((shape[0], shape[1]), values).unwrap()
}

#[test]
fn golden_cmmd_matches_the_reference() {
    let dir = support::golden_dir();
    let manifest: Value = serde_json::from_reader(
        std::fs::File::open(dir.join("feature_nets_public.json"))
            .expect("feature_nets_public.json"),
    )
    .unwrap();
    let bytes = std::fs::read(dir.join("feature_nets_public_io.safetensors"))
        .expect("feature_nets_public_io.safetensors");
    let file = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(manifest["cmmd"]["sigma"].as_f64(), Some(10.0));
    assert_eq!(manifest["cmmd"]["scale"].as_f64(), Some(1000.0));
    for (key, x, y) in [
        ("synthetic", "cmmd_x", "cmmd_y"),
        ("images", "clip_a_normalized", "clip_b_normalized"),
    ] {
        let expected = manifest["cmmd"][key]
            .as_f64()
            .unwrap_or_else(|| panic!("cmmd.{key} in the manifest"));
        let (x, y) = (matrix(&file, x), matrix(&file, y));
        let got = cmmd(x.view(), y.view()).unwrap();
        let err = support::rel_diff(got, expected);
        println!("cmmd.{key}: {got} (reference {expected}, relative difference {err:.2e})");
        assert!(err <= 1e-6, "cmmd.{key}: {got} vs {expected}");
        let got64 = cmmd(x.mapv(f64::from).view(), y.mapv(f64::from).view()).unwrap();
        assert!(support::rel_diff(got64, got) <= 1e-12);
        // Symmetric in its arguments, up to the summation order (the MMD is a small difference of
        // kernel means near 1, so rounding is amplified about a thousandfold).
        let swapped = cmmd(y.view(), x.view()).unwrap();
        assert!(support::rel_diff(swapped, got) <= 1e-9);
    }
}
