//! FID (and every metric the inputs allow) of a sample batch against a reference, through the
//! library alone — no command-line structs:
//!
//! ```sh
//! cargo run --release --example fid_of_npz -- SAMPLES.npz VIRTUAL_imagenet256_labeled.npz [OUT_DIR]
//! ```
//!
//! The Inception weights are looked for as `llamagen-eval` looks for them
//! (`$LLAMAGEN_EVAL_INCEPTION`, else the cache directory); sample features are cached by content
//! beside `OUT_DIR`, so a second run with another reference does not run the network again.

use std::path::PathBuf;

use anyhow::{bail, Result};
use llamagen_eval::evaluate::MetricRequest;
use llamagen_eval::metric::MetricKey;
use llamagen_eval::pipeline::jobs::fid::evaluate_sample_batch;
use llamagen_eval::pipeline::FidConfig;
use llamagen_eval::pipeline::InceptionConfig;
use llamagen_eval::progress::Progress;

fn main() -> Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let (samples, reference) = match args.as_slice() {
        [s, r] | [s, r, _] => (s.clone(), r.clone()),
        _ => bail!("usage: fid_of_npz SAMPLES.npz REFERENCE.npz [OUT_DIR]"),
    };
    let out_dir = args
        .get(2)
        .cloned()
        .unwrap_or_else(|| PathBuf::from("reports/example-fid"));
    let config = FidConfig {
        reference,
        reference_crop: None,
        inception: InceptionConfig::default(),
        metrics: MetricRequest::default(),
        progress: Progress::Shown,
    };
    let outcome = evaluate_sample_batch(&config, &samples, &out_dir)?;
    match outcome.record.metrics.get(MetricKey::Fid) {
        Some(fid) => println!("FID {fid:.4}"),
        None => println!("no FID (the reference has no pool statistics or features)"),
    }
    print!("{}", outcome.record.metrics.table());
    println!("written to {}", out_dir.display());
    Ok(())
}
