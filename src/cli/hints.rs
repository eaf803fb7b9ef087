//! The flag a user should reach for when a library error is about a setting: the library names
//! the problem, the command line adds which flag changes it.

use llamagen_eval::data::DataError;
use llamagen_eval::journal::JournalError;
use llamagen_eval::models::gpt::GptError;

/// A line naming the flag to change, when one is known for the cause of `err`.
pub fn flag_hint(err: &anyhow::Error) -> Option<String> {
    let mut hint = None;
    for cause in err.chain() {
        if let Some(gpt) = cause.downcast_ref::<GptError>() {
            hint = match gpt {
                GptError::UnknownHeads { path, .. } => Some(format!(
                    "pass --n-head N or --gpt-model NAME (`llamagen-eval inspect {}` lists the head counts its shapes allow)",
                    path.display()
                )),
                GptError::ImageSize { .. } => {
                    Some("set --image-size to the generator's training size (and --image-size-eval for the evaluated size)".into())
                }
                GptError::LabelsForTextToImage(_) => Some(
                    "pass the captions' T5 embeddings with --caption-embeddings FILE.npz (and no class-label flags)".into(),
                ),
                GptError::CaptionsForClassConditional(_) => {
                    Some("drop --caption-embeddings, or pass a text-to-image checkpoint as --gpt".into())
                }
                GptError::CaptionShape(_) => Some(
                    "compute --caption-embeddings with the T5 encoder and caption length the generator was trained with (FLAN-T5-XL, 120 tokens, for LlamaGen's t2i models)".into(),
                ),
                _ => None,
            };
        }
        if let Some(DataError::MixedSizes { .. }) = cause.downcast_ref::<DataError>() {
            hint = Some("pass --crop N to centre-crop every image to N x N".into());
        }
        if let Some(JournalError::SettingsChanged { changes, .. }) =
            cause.downcast_ref::<JournalError>()
        {
            let flags: Vec<String> = changes
                .iter()
                .map(|(key, then, _)| format!("--{} {then}", setting_flag(key)))
                .collect();
            hint = Some(format!(
                "to resume, rerun with the interrupted run's settings ({}), or without --resume to start over",
                flags.join(", ")
            ));
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull
                    | std::io::ErrorKind::FileTooLarge
                    | std::io::ErrorKind::QuotaExceeded
            ) {
                hint = Some("the disk (or a file size limit) is full: free space or write the output elsewhere; nothing half-written was kept, and a generating run continues with --resume".into());
            }
        }
        if cause.to_string().contains("resume the run to continue") {
            hint = Some("continue with --resume".into());
        }
    }
    hint
}

/// The flag (without its dashes) that sets a journal setting. Journals keep the key
/// `batch_size` for the feature networks' batch, the flag's old name, so that runs interrupted
/// before the rename still resume; every other key is its flag's name.
fn setting_flag(key: &str) -> String {
    match key {
        "batch_size" => "feature-batch-size".into(),
        _ => key.replace('_', "-"),
    }
}
