//! Progress bars with a rate. Whether they are drawn is the caller's choice (`--quiet` in the
//! CLI), passed down as a [`Progress`] value rather than a flag threaded through every call.

use indicatif::{ProgressBar, ProgressStyle};

/// Whether long work draws progress bars (on stderr) and prints informational lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Progress {
    /// Bars with a rate, and informational lines on stderr.
    #[default]
    Shown,
    /// Nothing but errors.
    Hidden,
}

impl Progress {
    /// `Hidden` when `quiet`.
    pub fn quiet(quiet: bool) -> Self {
        if quiet {
            Progress::Hidden
        } else {
            Progress::Shown
        }
    }

    /// A progress bar over `total` items of `unit` (e.g. "img").
    pub fn bar(self, total: usize, label: &str, unit: &str) -> ProgressBar {
        if self == Progress::Hidden {
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

    /// Prints an informational line on stderr unless hidden.
    pub fn say(self, text: impl std::fmt::Display) {
        if self == Progress::Shown {
            eprintln!("{text}");
        }
    }
}
