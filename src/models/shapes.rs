//! Reading a configuration back from a checkpoint's tensor shapes: the (name, shape) lists the
//! models' `infer` functions take, and the lookups they share, whose messages say which tensor is
//! missing or misshapen (each model wraps them in its own "not a ... checkpoint" error).

use crate::checkpoint::TensorMeta;

/// The (name, shape) pairs of loaded tensors.
pub(crate) fn tensor_shapes(tensors: &[(String, tch::Tensor)]) -> Vec<(String, Vec<i64>)> {
    tensors.iter().map(|(n, t)| (n.clone(), t.size())).collect()
}

/// The (name, shape) pairs of a checkpoint's tensor records, before any tensor is read.
pub(crate) fn meta_shapes(metas: &[(String, &TensorMeta)]) -> Vec<(String, Vec<i64>)> {
    metas
        .iter()
        .map(|(n, m)| (n.clone(), m.shape.clone()))
        .collect()
}

/// ` (first: a, b, c, d)`: the first four names, for messages about a checkpoint that lacks what
/// was looked for; empty when there are no tensors.
pub(crate) fn first_names(tensors: &[(String, Vec<i64>)]) -> String {
    if tensors.is_empty() {
        return String::new();
    }
    let names: Vec<&str> = tensors.iter().take(4).map(|(n, _)| n.as_str()).collect();
    format!(" (first: {})", names.join(", "))
}

/// The shape of tensor `name`, if it is among `tensors`.
pub(crate) fn find<'a>(tensors: &'a [(String, Vec<i64>)], name: &str) -> Option<&'a [i64]> {
    tensors
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, s)| s.as_slice())
}

/// The shape of tensor `name`, or a message saying it is not among `tensors`.
fn shape<'a>(tensors: &'a [(String, Vec<i64>)], name: &str) -> Result<&'a [i64], String> {
    find(tensors, name).ok_or_else(|| {
        format!(
            "no `{name}` among its {} tensors{}",
            tensors.len(),
            first_names(tensors)
        )
    })
}

/// The shape of tensor `name` when it has `rank` dimensions; else a message saying why not.
pub(crate) fn dims<'a>(
    tensors: &'a [(String, Vec<i64>)],
    name: &str,
    rank: usize,
) -> Result<&'a [i64], String> {
    let s = shape(tensors, name)?;
    if s.len() == rank {
        Ok(s)
    } else {
        Err(format!(
            "`{name}` has shape {s:?}, expected {rank} dimensions"
        ))
    }
}

/// The (rows, columns) of tensor `name` when it is a matrix; else a message saying why not.
pub(crate) fn matrix(tensors: &[(String, Vec<i64>)], name: &str) -> Result<(i64, i64), String> {
    match shape(tensors, name)? {
        &[rows, columns] => Ok((rows, columns)),
        s => Err(format!("`{name}` has shape {s:?}, expected a matrix")),
    }
}
