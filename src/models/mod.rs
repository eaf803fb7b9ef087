//! The networks, one file per model, with parameters named as in the original checkpoints.

pub mod clip;
pub mod clip_text;
pub mod dinov2;
pub mod gpt;
pub mod hf_weights;
pub mod inception;
mod shapes;
pub mod t5;
pub mod tokenizer;
pub mod vq;

pub(crate) use shapes::{meta_shapes, tensor_shapes};

/// A state dict's entry in its checkpoint (`None`: the top level) and the (name, shape) pairs of
/// its tensors, as the models' `infer` functions take them.
pub type StateDictShapes = (Option<String>, Vec<(String, Vec<i64>)>);

/// A state dict's entry in its checkpoint and its tensor records, as a loader reads them.
pub(crate) type StateDictMetas<'a> = (
    Option<String>,
    Vec<(String, &'a crate::checkpoint::TensorMeta)>,
);

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

/// A model with a checkpoint's weights, in eval mode: `build` makes it in a fresh store on
/// `device`, `tensors` are copied in under `opts` (see [`crate::checkpoint::load_into`]), then the
/// store is frozen. Returns the store, the model and how many tensors were loaded.
pub(crate) fn build_loaded<M>(
    device: tch::Device,
    tensors: &[(String, tch::Tensor)],
    path: &std::path::Path,
    opts: &crate::checkpoint::LoadOptions,
    build: impl FnOnce(&tch::nn::Path) -> M,
) -> Result<(tch::nn::VarStore, M, usize), crate::checkpoint::CheckpointError> {
    let mut vs = tch::nn::VarStore::new(device);
    let model = build(&vs.root());
    let report = crate::checkpoint::load_into(&mut vs, tensors, path, opts)?;
    vs.freeze();
    Ok((vs, model, report.loaded))
}

/// The variables of the model `build` makes in a fresh CPU store, as sorted (name, shape) pairs:
/// what a checkpoint of it would hold, for the tests that infer configurations back from shapes.
#[cfg(test)]
pub(crate) fn variable_shapes<M>(
    build: impl FnOnce(&tch::nn::Path) -> M,
) -> Vec<(String, Vec<i64>)> {
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let _model = build(&vs.root());
    let mut out: Vec<(String, Vec<i64>)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.size()))
        .collect();
    out.sort();
    out
}
