//! Progress bars with a rate, silenced by `--quiet`.

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar over `total` items of `unit` (e.g. "img"), hidden when `quiet`.
pub fn bar(total: usize, label: &str, unit: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    let template = format!("{{prefix}} {{bar:30}} {{pos}}/{{len}} {unit} [{{elapsed_precise}}<{{eta_precise}}, {{per_sec}}]");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar.set_prefix(label.to_string());
    bar
}
