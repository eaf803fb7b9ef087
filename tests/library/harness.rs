//! What the library tests share, over the support crate (which also starts their processes): the
//! golden files, read as tensors or JSON.

use std::collections::HashMap;

use tch::{Kind, Tensor};

pub use llamagen_test_support::golden;

/// The tensors of the golden safetensors file `name`, by name.
#[track_caller]
pub fn golden_tensors(name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(golden(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_iter()
        .collect()
}

/// The golden JSON file `name`, parsed.
#[track_caller]
pub fn golden_json(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(golden(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The elements of `t` as f32, in row-major order.
pub fn f32s(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).contiguous().flatten(0, -1)).unwrap()
}

/// The largest difference of `ours` from `golden` relative to the largest magnitude of `golden`
/// (see [`llamagen_test_support::max_rel_err`]).
pub fn rel_err(ours: &Tensor, golden: &Tensor) -> f64 {
    llamagen_test_support::max_rel_err(&f32s(ours), &f32s(golden))
}
