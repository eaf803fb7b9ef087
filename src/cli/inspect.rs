//! `inspect`: what a file or run folder holds, and what the tool makes of it — a checkpoint's
//! keys and configuration, an npz's entries read as a sample batch, a reference, features or
//! caption embeddings, a run folder's record.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use llamagen_eval::captions::{CAPTION_INDICES, TEXT_KEY};
use llamagen_eval::checkpoint::Checkpoint;
use llamagen_eval::data::npz::{npz_entries, NpyHeader};
use llamagen_eval::feature_set::sha256_file;
use llamagen_eval::record::RunRecord;

/// Runs `inspect`.
pub fn run(path: &Path) -> Result<ExitCode> {
    let text = if path.is_dir() {
        run_folder(path)?
    } else if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npz"))
    {
        npz(path)?
    } else {
        Checkpoint::open(path)?.summary().to_string()
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

fn run_folder(dir: &Path) -> Result<String> {
    let record = RunRecord::read(dir)?;
    let mut text = format!("{}: a run folder\nmetrics:\n", dir.display());
    for line in record.table().lines() {
        let _ = writeln!(text, "  {line}");
    }
    text.push_str("run:\n");
    for (key, value) in &record.run {
        let _ = writeln!(text, "  {key:<28} {value}");
    }
    Ok(text)
}

/// numpy's name of an npy type string (`<f4` -> float32).
fn dtype(descr: &str) -> String {
    let kind = match descr.get(1..2) {
        Some("u") => "uint",
        Some("i") => "int",
        Some("f") => "float",
        Some("b") => return "bool".into(),
        Some("U") => return "str".into(),
        _ => return descr.into(),
    };
    let bytes: usize = descr.get(2..).and_then(|n| n.parse().ok()).unwrap_or(0);
    format!("{kind}{}", bytes * 8)
}

fn npz(path: &Path) -> Result<String> {
    let entries = npz_entries(path)?;
    let header = |name: &str| -> Option<&NpyHeader> {
        entries.iter().find(|(n, _)| n == name).map(|(_, h)| h)
    };
    let plural = if entries.len() == 1 {
        "entry"
    } else {
        "entries"
    };
    let mut text = format!("{}: npz, {} {plural}\n", path.display(), entries.len());
    for (name, header) in &entries {
        let _ = writeln!(
            text,
            "  {name:<16} {:<8} {:?}",
            dtype(&header.descr),
            header.shape
        );
    }
    let mut reading = Vec::new();
    let images = header("arr_0")
        .filter(|h| h.descr == "|u1")
        .map(|h| h.shape.as_slice());
    if let Some(&[n, height, width, channels]) = images.filter(|shape| shape.first() != Some(&0)) {
        let captions = header(CAPTION_INDICES).filter(|h| h.shape == [n]).map(|_| {
            match header(TEXT_KEY).and_then(|h| h.shape.first()) {
                Some(distinct) => format!(
                    ", with captions ({distinct} distinct texts in `{TEXT_KEY}`, each sample's row in `{CAPTION_INDICES}`)"
                ),
                None => format!(", with caption indices (`{CAPTION_INDICES}`)"),
            }
        });
        let labels = match header("arr_1").map(|h| h.shape.as_slice()) {
            Some([count]) if *count == n => ", with class labels (arr_1)".to_owned(),
            _ => captions.unwrap_or_default(),
        };
        reading.push(format!(
            "{n} images of {height}x{width} ({channels} channels){labels}: a sample batch (`fid SAMPLES REF`), or a reference's images for precision/recall/density/coverage and KID"
        ));
    }
    for (mean, covariance, what) in [
        ("mu", "sigma", "FID (Inception pool features)"),
        ("mu_s", "sigma_s", "sFID (Inception spatial features)"),
        ("mu_dinov2", "sigma_dinov2", "FD_DINOv2"),
    ] {
        if let (Some(mu), Some(_)) = (header(mean), header(covariance)) {
            reading.push(format!(
                "reference statistics for {what}: `{mean}`/`{covariance}` of dimension {}",
                mu.shape.first().copied().unwrap_or(0)
            ));
        }
    }
    if let Some(pool) = header("pool") {
        reading.push(format!(
            "a feature file of {} images (`features`): usable wherever images are, without running Inception",
            pool.shape.first().copied().unwrap_or(0)
        ));
    }
    if let Some(captions) = header("caption_embs") {
        reading.push(format!(
            "T5 caption embeddings of {} captions (`--caption-embeddings`)",
            captions.shape.first().copied().unwrap_or(0)
        ));
    }
    if reading.is_empty() {
        reading.push("nothing this tool reads: no `arr_0` images, statistics, features or caption embeddings".into());
    }
    text.push_str("what it is:\n");
    for line in reading {
        let _ = writeln!(text, "  {line}");
    }
    let sha = sha256_file(path).with_context(|| format!("cannot read {}", path.display()))?;
    let _ = writeln!(text, "content sha256: {sha}");
    Ok(text)
}
