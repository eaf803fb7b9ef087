//! Copies named tensors into a `tch::nn::VarStore`, after checking names and shapes all at once so
//! that a mismatch is reported in one error listing every missing, unexpected and mis-shaped name.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use tch::nn::VarStore;
use tch::Tensor;

use super::error::{CheckpointError, ErrorKind, Mismatch};

/// How strictly [`load_into`] matches checkpoint names to model variables.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Ignore checkpoint tensors that have no model variable (instead of failing).
    pub allow_unexpected: bool,
    /// Leave model variables that have no checkpoint tensor as they are (instead of failing).
    pub allow_missing: bool,
    /// Checkpoint names to skip: exact names, or prefixes written with a trailing `*`.
    pub ignore: Vec<String>,
}

impl LoadOptions {
    fn ignores(&self, name: &str) -> bool {
        self.ignore.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == p,
        })
    }
}

/// What [`load_into`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    /// Variables filled from the checkpoint.
    pub loaded: usize,
    /// Of those, how many were converted to the variable's dtype.
    pub converted: usize,
    /// Checkpoint tensors skipped through [`LoadOptions::ignore`].
    pub ignored: Vec<String>,
    /// Checkpoint tensors with no variable (only when allowed).
    pub unexpected: Vec<String>,
    /// Variables with no checkpoint tensor (only when allowed), sorted.
    pub missing: Vec<String>,
}

/// The names of the variables in `vars` that `filled` says got no tensor, sorted.
pub(crate) fn missing_variables(
    vars: &HashMap<String, Tensor>,
    filled: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut missing: Vec<String> = vars.keys().filter(|k| !filled(k)).cloned().collect();
    missing.sort();
    missing
}

/// Copies `tensors` into the variables of `vs` with the same names (converting dtype and device as
/// needed). `source` names the checkpoint in errors. Fails, changing nothing, when names or shapes
/// disagree beyond what `opts` allows.
pub fn load_into(
    vs: &mut VarStore,
    tensors: &[(String, Tensor)],
    source: &Path,
    opts: &LoadOptions,
) -> Result<LoadReport, CheckpointError> {
    let vars = vs.variables();
    let mut report = LoadReport::default();
    let mut mismatch = Mismatch::default();
    let mut seen = HashSet::new();
    let mut plan = Vec::new();
    for (name, t) in tensors {
        if opts.ignores(name) {
            report.ignored.push(name.clone());
            continue;
        }
        match vars.get(name) {
            None => report.unexpected.push(name.clone()),
            Some(var) => {
                seen.insert(name.as_str());
                if var.size() != t.size() {
                    mismatch
                        .mis_shaped
                        .push((name.clone(), t.size(), var.size()));
                } else {
                    plan.push((var, t));
                }
            }
        }
    }
    report.missing = missing_variables(&vars, |name| seen.contains(name));
    if !opts.allow_missing {
        mismatch.missing = std::mem::take(&mut report.missing);
    }
    if !opts.allow_unexpected {
        mismatch.unexpected = std::mem::take(&mut report.unexpected);
    }
    if !mismatch.is_empty() {
        return Err(CheckpointError::new(source, ErrorKind::Mismatch(mismatch)));
    }
    tch::no_grad(|| -> Result<(), CheckpointError> {
        for (var, t) in &plan {
            let mut var = var.shallow_clone();
            if var.kind() != t.kind() {
                report.converted += 1;
            }
            var.f_copy_(t)
                .map_err(|e| CheckpointError::new(source, ErrorKind::Torch(e)))?;
            report.loaded += 1;
        }
        Ok(())
    })?;
    Ok(report)
}
