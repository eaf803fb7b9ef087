//! What the overlap buys where users feel it: whole `llamagen-eval fid --gpt` processes on the
//! demo's models (`demo::make_models`: VQ-16 layout, a 2-layer GPT, Inception-V3, 64x64 images),
//! with the default overlap (sampling and decoding on their own threads) against `--no-overlap`,
//! run alternately so load changes hit both alike. Prints each run's process wall time and its
//! generation pass's time split, the medians, and the ratio; checks that both give the same
//! metrics.
//!
//! `./x bench --bench overlap`; `OVERLAP_BENCH_SAMPLES` (default 192) samples per run,
//! `OVERLAP_BENCH_ROUNDS` (default 5) runs of each.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::Value;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}: not a number")))
        .unwrap_or(default)
}

/// One `fid --gpt` process: its wall time in seconds and its run record.
fn fid_run(
    dir: &Path,
    models: &[std::path::PathBuf; 3],
    samples: usize,
    overlap: bool,
) -> (f64, Value) {
    let [vq, gpt, inception] = models;
    let out = dir.join(if overlap { "overlap" } else { "sequential" });
    let mut command = Command::new(env!("CARGO_BIN_EXE_llamagen-eval"));
    command
        .args(["fid", "--gpt"])
        .arg(gpt)
        .args(["--n-head", "4", "--vq"])
        .arg(vq)
        .arg("--inception")
        .arg(inception)
        .arg("--ref")
        .arg(dir.join("reference_images.npz"))
        .args([
            "--image-size",
            "64",
            "--cfg-scale",
            "1.5",
            "--device",
            "cpu",
            "--quiet",
        ])
        .args(["--samples", &samples.to_string(), "--out"])
        .arg(&out)
        .env("LLAMAGEN_EVAL_CACHE", dir.join("cache"))
        .stdout(Stdio::null());
    if !overlap {
        command.arg("--no-overlap");
    }
    let start = Instant::now();
    let status = command.status().expect("llamagen-eval runs");
    let wall = start.elapsed().as_secs_f64();
    assert!(status.success(), "fid --gpt failed");
    let record = std::fs::read(out.join("metrics.json")).expect("metrics.json");
    (wall, serde_json::from_slice(&record).expect("a run record"))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn main() {
    let samples = env_number("OVERLAP_BENCH_SAMPLES", 192);
    let rounds = env_number("OVERLAP_BENCH_ROUNDS", 5).max(1);
    let dir = tempfile::tempdir().expect("a temporary folder");
    let models = llamagen_eval::demo::make_models(&dir.path().join("models")).expect("models");
    llamagen_eval::demo::make_reference_images(&dir.path().join("reference_images.npz"), 48)
        .expect("reference images");
    // Fills the reference's feature cache, so every timed run does the same work.
    fid_run(dir.path(), &models, 8, false);

    println!(
        "fid --gpt on the demo models, {samples} samples of 64x64, {} cores, whole processes",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "| run | overlap | wall s | pass s | sampling s | decoding s | Inception s | waiting s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut walls = [Vec::new(), Vec::new()];
    let mut metrics: [Option<Value>; 2] = [None, None];
    for round in 0..rounds {
        for (slot, overlap) in [(0, true), (1, false)] {
            let (wall, record) = fid_run(dir.path(), &models, samples, overlap);
            let t = &record["run"]["throughput"];
            let seconds = |key: &str| t[key].as_f64().unwrap_or(f64::NAN);
            println!(
                "| {} | {} | {wall:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                round + 1,
                if overlap { "on" } else { "off" },
                seconds("wall_s"),
                seconds("sampling_s"),
                seconds("decoding_s"),
                seconds("inception_s"),
                seconds("waiting_for_images_s"),
            );
            walls[slot].push(wall);
            match &metrics[slot] {
                Some(first) => {
                    assert_eq!(first, &record["metrics"], "metrics changed between runs")
                }
                None => metrics[slot] = Some(record["metrics"].clone()),
            }
        }
    }
    assert_eq!(metrics[0], metrics[1], "overlap changed the metrics");
    let (on, off) = (median(&mut walls[0]), median(&mut walls[1]));
    println!(
        "median wall: overlap {on:.2} s, --no-overlap {off:.2} s: the overlap takes {:.1}% less \
         ({:.3}x); fastest --no-overlap {:.2} s, slowest overlap {:.2} s",
        100.0 * (1.0 - on / off),
        off / on,
        walls[1][0],
        walls[0][rounds - 1]
    );
}
