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

/// Asserts that `ours` has the shape of `golden` and is within `tol` of it ([`rel_err`]), printing
/// the error under `what`; returns it.
#[track_caller]
pub fn assert_close(ours: &Tensor, golden: &Tensor, tol: f64, what: &str) -> f64 {
    assert_eq!(ours.size(), golden.size(), "{what}: shapes differ");
    let err = rel_err(ours, golden);
    eprintln!("{what}: max rel err {err:.3e} (tolerance {tol:e})");
    assert!(err <= tol, "{what}: relative error {err:e}");
    err
}

/// The error of a `result` that must be one, with its message (printed: the tests show the
/// messages people get).
#[track_caller]
pub fn refusal<T, E: std::fmt::Display>(result: Result<T, E>) -> (E, String) {
    match result {
        Ok(_) => panic!("accepted, not refused"),
        Err(e) => {
            let message = e.to_string();
            eprintln!("{message}");
            (e, message)
        }
    }
}

/// Asserts the tokenizer's rounding allowance on 8-bit pixel values: every value of `ours` within
/// 1 of `golden`'s, and at most 0.1% of them off.
#[track_caller]
pub fn assert_pixels_within_one(ours: &[u8], golden: &[u8], what: &str) {
    assert_eq!(ours.len(), golden.len(), "{what}: sizes differ");
    let off = ours.iter().zip(golden).filter(|(a, b)| a != b).count();
    let largest = ours
        .iter()
        .zip(golden)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap_or(0);
    eprintln!(
        "{what}: {off} of {} pixel values off by one (largest difference {largest})",
        golden.len()
    );
    assert!(largest <= 1, "{what}: a pixel value is off by {largest}");
    assert!(
        off * 1000 <= golden.len(),
        "{what}: {off} of {} pixel values differ (more than 0.1%)",
        golden.len()
    );
}

/// Panics unless `text` holds every one of `needles`.
#[track_caller]
pub fn assert_mentions(text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
}
