//! A description of a checkpoint for the `inspect` command: its format and top-level keys, how many
//! tensors and parameters each part holds, and the configuration it carries (LlamaGen's `args`
//! Namespace, `steps`, and other plain values).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use super::value::Value;
use super::{for_each_tensor, Format};

/// Tensor counts of one top-level entry (or of the top level itself, for bare state dicts).
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    /// The top-level key, or `(top level)`.
    pub key: String,
    /// Number of tensors.
    pub tensors: usize,
    /// Total number of elements over those tensors (parameters and buffers).
    pub parameters: u64,
    /// `(dtype, tensor count)`, most common first.
    pub dtypes: Vec<(String, usize)>,
}

/// What a checkpoint holds; `Display` renders it for people.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The checkpoint file described.
    pub path: PathBuf,
    /// How it was serialized (torch.save zip or legacy, safetensors).
    pub format: Format,
    /// Keys of the top-level dict in file order (`model`, `args`, ... or parameter names for a
    /// bare state dict); empty when the top level is not a dict.
    pub top_level_keys: Vec<String>,
    /// One per top-level entry that holds tensors.
    pub sections: Vec<Section>,
    /// The entry [`super::Checkpoint::state_dict_key`] picks (`None`: the top level).
    pub state_dict_key: Option<String>,
    /// Tensors in the picked state dict.
    pub tensors: usize,
    /// Elements in the picked state dict.
    pub parameters: u64,
    /// `(name, rendered value)` for the plain values the file carries (`steps`, `args.<field>`, ...).
    pub config: Vec<(String, String)>,
}

/// Longest rendering of a configuration value.
const VALUE_LEN: usize = 160;

pub(crate) const TOP_LEVEL: &str = "(top level)";

/// Longest key shown: keys come from the file and may be megabytes long.
const KEY_LEN: usize = 80;

/// `text` cut to about [`KEY_LEN`] characters.
fn shown(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(KEY_LEN) {
        Some((cut, _)) => Cow::Owned(format!("{}...", &text[..cut])),
        None => Cow::Borrowed(text),
    }
}

/// A key as shown: the string itself when short, else a cut rendering.
fn key_text(k: &Value) -> String {
    match k {
        Value::Str(s) if s.len() <= KEY_LEN => s.to_string(),
        other => other.render(KEY_LEN),
    }
}

pub(crate) fn section(key: &str, v: &Value) -> Section {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    let mut parameters = 0u64;
    let mut tensors = 0;
    for_each_tensor(v, &mut |m| {
        tensors += 1;
        parameters = parameters.saturating_add(m.numel().unwrap_or(0));
        *counts.entry(m.dtype_name.as_str()).or_default() += 1;
    });
    let mut dtypes: Vec<(String, usize)> =
        counts.into_iter().map(|(d, n)| (d.to_owned(), n)).collect();
    dtypes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Section {
        key: key.to_owned(),
        tensors,
        parameters,
        dtypes,
    }
}

/// Sections and configuration of a root value.
pub(crate) fn describe(root: &Value) -> (Vec<Section>, Vec<(String, String)>) {
    let Some(entries) = root.entries().filter(|_| matches!(root, Value::Dict(_))) else {
        return (vec![section(TOP_LEVEL, root)], Vec::new());
    };
    let mut sections = Vec::new();
    let mut config = Vec::new();
    let mut bare = false;
    for (k, v) in entries {
        let key = key_text(k);
        match v {
            Value::Tensor(_) => bare = true,
            _ if v.contains_tensor() => sections.push(section(&key, v)),
            Value::Dict(_) | Value::Object(_) if v.entries().is_some() && v.as_f64().is_none() => {
                for (fk, fv) in v.entries().unwrap_or_default() {
                    config.push((format!("{key}.{}", key_text(fk)), fv.render(VALUE_LEN)));
                }
            }
            _ => config.push((key, v.render(VALUE_LEN))),
        }
    }
    if bare {
        sections.insert(0, section(TOP_LEVEL, root));
    }
    (sections, config)
}

/// A count as people read it: 9999, 10.0K, 1.50M, 2.00B.
pub fn human_count(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=999_999 => format!("{:.1}K", n as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.2}M", n as f64 / 1e6),
        _ => format!("{:.2}B", n as f64 / 1e9),
    }
}

/// Most top-level keys listed before the rest are only counted (bare state dicts have thousands).
const KEYS_SHOWN: usize = 12;

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "file        {}", self.path.display())?;
        writeln!(f, "format      {}", self.format)?;
        let keys = &self.top_level_keys;
        let listed = if keys.len() > KEYS_SHOWN {
            KEYS_SHOWN - 4
        } else {
            keys.len()
        };
        let list: Vec<Cow<'_, str>> = keys[..listed].iter().map(|k| shown(k)).collect();
        if keys.len() > KEYS_SHOWN {
            writeln!(
                f,
                "keys        {}, ... ({} in all)",
                list.join(", "),
                keys.len()
            )?;
        } else if !keys.is_empty() {
            writeln!(f, "keys        {}", list.join(", "))?;
        }
        for s in &self.sections {
            let dtypes: Vec<String> = s.dtypes.iter().map(|(d, n)| format!("{d} x{n}")).collect();
            writeln!(
                f,
                "tensors     {}: {} tensors, {} parameters ({})",
                s.key,
                s.tensors,
                human_count(s.parameters),
                dtypes.join(", ")
            )?;
        }
        writeln!(
            f,
            "state dict  {}: {} tensors, {} parameters ({})",
            self.state_dict_key.as_deref().unwrap_or(TOP_LEVEL),
            self.tensors,
            human_count(self.parameters),
            self.parameters
        )?;
        if !self.config.is_empty() {
            writeln!(f, "config")?;
            for (k, v) in &self.config {
                writeln!(f, "  {k} = {v}")?;
            }
        }
        Ok(())
    }
}
