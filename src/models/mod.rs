//! The networks, one file per model, with parameters named as in the original checkpoints.

pub mod clip;
pub mod clip_text;
pub mod dinov2;
pub mod gpt;
pub mod hf_weights;
pub mod inception;
pub mod t5;
pub mod tokenizer;
pub mod vq;

/// How many numbered children `prefix{i}.` the tensor names have: one past the largest `i`, 0 when
/// there are none (a checkpoint's layer or block count, read from its names).
pub(crate) fn numbered_children<'a>(names: impl IntoIterator<Item = &'a str>, prefix: &str) -> i64 {
    names
        .into_iter()
        .filter_map(|n| {
            n.strip_prefix(prefix)?
                .split('.')
                .next()?
                .parse::<i64>()
                .ok()
        })
        .max()
        .map_or(0, |m| m + 1)
}

/// The variables of a model built in `vs`, as sorted (name, shape) pairs: what a checkpoint of it
/// would hold, for the tests that infer configurations back from shapes.
#[cfg(test)]
pub(crate) fn variable_shapes(vs: &tch::nn::VarStore) -> Vec<(String, Vec<i64>)> {
    let mut out: Vec<(String, Vec<i64>)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.size()))
        .collect();
    out.sort();
    out
}
