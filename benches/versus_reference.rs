//! Our metrics against the reference implementations on the same inputs, in one run, reporting
//! speed ratios (machines here are noisy, so only same-run ratios mean anything).
//!
//! Run with `./x bench --bench versus_reference` (add `-- NAME` for one comparison).
//!
//! The `process_*` comparisons time whole processes, as users feel them: our
//! `llamagen-eval metrics` against the peer scripts of `tests/python/bench/bench_feature_peers.py`
//! on the same float32 feature files, each run under `/usr/bin/time -v` (wall clock and peak
//! resident memory), the programs interleaved and the median of the repeats reported.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use llamagen_eval::models::inception::{self, Resize};
use llamagen_metrics::frechet::frechet_distance;
use llamagen_metrics::image_quality::{ssim, SsimMode};
use llamagen_metrics::stats::GaussianStats;
use llamagen_test_support as support;
use ndarray::{Array2, Array4};
use ndarray_npy::{write_npy, NpzWriter};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The JSON output of `tests/python/<script>`.
fn run_bench_script(script: &str, args: &[String]) -> serde_json::Value {
    serde_json::from_str(&support::run_script(script, args)).expect("reference prints JSON")
}

fn median_seconds(repeats: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..repeats)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn random_stats(rng: &mut ChaCha8Rng, n: usize, dim: usize, shift: f64) -> GaussianStats {
    let raw = Array2::from_shape_fn((n, dim), |_| rng.random::<f64>() + shift);
    let mixing = Array2::from_shape_fn((dim, dim), |_| rng.random::<f64>() / dim as f64);
    GaussianStats::from_features(raw.dot(&mixing).mapv(|v: f64| v.max(0.0)).view()).expect("stats")
}

fn frechet_vs_pytorch_fid() {
    let dim = 2048;
    let mut rng = ChaCha8Rng::seed_from_u64(2048);
    let a = random_stats(&mut rng, 4096, dim, 0.0);
    let b = random_stats(&mut rng, 4096, dim, 0.1);
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, value) in [("mu1", &a.mu), ("mu2", &b.mu)] {
        write_npy(dir.path().join(format!("{name}.npy")), value).expect("write");
    }
    for (name, value) in [("sigma1", &a.sigma), ("sigma2", &b.sigma)] {
        write_npy(dir.path().join(format!("{name}.npy")), value).expect("write");
    }
    let repeats = 3;
    let mut ours = 0.0;
    let our_seconds = median_seconds(repeats, || ours = frechet_distance(&a, &b).expect("fid"));
    let reference = run_bench_script(
        "bench/bench_pytorch_fid.py",
        &[dir.path().display().to_string(), repeats.to_string()],
    );
    let ref_seconds = reference["seconds"].as_f64().expect("seconds");
    let ref_fid = reference["fid"].as_f64().expect("fid");
    println!(
        "frechet_distance 2048-d: ours {our_seconds:.3} s, pytorch-fid {ref_seconds:.3} s, \
         ratio {:.1}x; values {ours:.9} vs {ref_fid:.9} (rel diff {:.1e})",
        ref_seconds / our_seconds,
        (ours - ref_fid).abs() / ref_fid.abs()
    );
}

fn ssim_vs_scikit_image() {
    let mut rng = ChaCha8Rng::seed_from_u64(256);
    let originals = Array4::from_shape_fn((200, 256, 256, 3), |(i, y, x, c)| {
        ((x + 2 * y + 7 * i + 50 * c) % 256) as u8
    });
    let reconstructions =
        originals.mapv(|v| (i32::from(v) + rng.random_range(-12..=12)).clamp(0, 255) as u8);
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (
        dir.path().join("originals.npy"),
        dir.path().join("reconstructions.npy"),
    );
    write_npy(&a, &originals).expect("write");
    write_npy(&b, &reconstructions).expect("write");
    let repeats = 3;
    let mut ours = 0.0;
    let our_seconds = median_seconds(repeats, || {
        ours = ssim(originals.view(), reconstructions.view(), SsimMode::Gaussian)
            .expect("ssim")
            .mean;
    });
    let reference = run_bench_script(
        "bench/bench_skimage_ssim.py",
        &[
            a.display().to_string(),
            b.display().to_string(),
            repeats.to_string(),
        ],
    );
    let ref_seconds = reference["seconds"].as_f64().expect("seconds");
    println!(
        "ssim 200 x 256x256x3: ours {our_seconds:.3} s, scikit-image {ref_seconds:.3} s, ratio {:.1}x; \
         mean SSIM {ours:.9} vs {:.9}",
        ref_seconds / our_seconds,
        reference["mean_ssim"].as_f64().expect("mean_ssim")
    );
}

fn inception_vs_pytorch_fid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let weights = support::random_inception_weights(Path::new(env!("CARGO_TARGET_TMPDIR")));
    let images = Array4::from_shape_fn((64, 256, 256, 3), |(i, y, x, c)| {
        ((x * 3 + y + 11 * i + 40 * c) % 256) as u8
    });
    let images_path = dir.path().join("images.npy");
    write_npy(&images_path, &images).expect("write");
    let (_vs, model) = inception::load(&weights, tch::Device::Cpu).expect("weights");
    let batch = 16;
    let repeats = 2;
    let our_seconds = median_seconds(repeats, || {
        for start in (0..64).step_by(batch) {
            let chunk = images
                .slice(ndarray::s![start..start + batch, .., .., ..])
                .to_owned();
            let data: Vec<u8> = chunk.iter().copied().collect();
            let tensor = tch::Tensor::from_slice(&data)
                .view([batch as i64, 256, 256, 3])
                .permute([0, 3, 1, 2]);
            let _ = tch::no_grad(|| model.features(&tensor, Resize::PytorchFid));
        }
    });
    let reference = run_bench_script(
        "bench/bench_pytorch_fid_features.py",
        &[
            weights.display().to_string(),
            images_path.display().to_string(),
            batch.to_string(),
            repeats.to_string(),
        ],
    );
    let ref_seconds = reference["seconds"].as_f64().expect("seconds");
    println!(
        "inception features, 64 images 256x256, batch {batch}, CPU: ours {:.1} img/s, pytorch-fid {:.1} img/s, ratio {:.2}x",
        64.0 / our_seconds,
        64.0 / ref_seconds,
        ref_seconds / our_seconds
    );
}

/// One whole-process run: wall-clock seconds, peak resident memory and standard output.
struct ProcessRun {
    seconds: f64,
    peak_mb: f64,
    stdout: String,
}

/// Runs `program args` under `/usr/bin/time -v`, with `env` added to the environment.
fn time_process(program: &Path, args: &[String], env: &[(&str, &str)]) -> ProcessRun {
    let output = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(program)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("/usr/bin/time runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{} {args:?} failed:\n{stderr}",
        program.display()
    );
    let field = |name: &str| {
        stderr
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .unwrap_or_else(|| panic!("`{name}` in /usr/bin/time's report:\n{stderr}"))
            .trim()
            .to_owned()
    };
    let wall = field("Elapsed (wall clock) time (h:mm:ss or m:ss):");
    let seconds = wall.split(':').fold(0.0, |acc, part| {
        acc * 60.0 + part.parse::<f64>().expect("time field")
    });
    let peak_kb: f64 = field("Maximum resident set size (kbytes):")
        .parse()
        .expect("kbytes");
    ProcessRun {
        seconds,
        peak_mb: peak_kb / 1024.0,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
    }
}

/// Inception-pool-like features: non-negative, clustered (shared centres for every seed, so two
/// sets overlap), written as an npz with a float32 `pool` entry.
fn write_pool_features(path: &Path, n: usize, seed: u64, shift: f32) {
    let dim = 2048;
    let normal = |rng: &mut ChaCha8Rng| -> f32 {
        (0..4).map(|_| rng.random_range(-1.0f32..1.0)).sum::<f32>() * 0.866
    };
    let mut centre_rng = ChaCha8Rng::seed_from_u64(7);
    let centres = Array2::from_shape_simple_fn((50, dim), || normal(&mut centre_rng));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut pool = Array2::<f32>::zeros((n, dim));
    for mut row in pool.rows_mut() {
        let centre = centres.row(rng.random_range(0..50));
        for (v, &c) in row.iter_mut().zip(centre) {
            *v = (0.8 * c + 0.6 * normal(&mut rng) + shift).max(0.0);
        }
    }
    let mut npz = NpzWriter::new(std::fs::File::create(path).expect("create npz"));
    npz.add_array("pool", &pool).expect("write pool");
    npz.finish().expect("finish npz");
}

/// A program and its arguments, as one of the compared processes.
struct Contender {
    label: &'static str,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(&'static str, &'static str)>,
}

/// Runs every contender `repeats` times, interleaved, and returns the medians (seconds, peak MB)
/// and the last standard output of each.
fn race(contenders: &[Contender], repeats: usize) -> Vec<(f64, f64, String)> {
    let mut runs: Vec<Vec<ProcessRun>> = contenders.iter().map(|_| Vec::new()).collect();
    for _ in 0..repeats {
        for (c, contender) in contenders.iter().enumerate() {
            runs[c].push(time_process(
                &contender.program,
                &contender.args,
                &contender.env,
            ));
        }
    }
    runs.into_iter()
        .map(|mut r| {
            let median = |v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let mut secs: Vec<f64> = r.iter().map(|x| x.seconds).collect();
            let mut mem: Vec<f64> = r.iter().map(|x| x.peak_mb).collect();
            let out = r.pop().map(|x| x.stdout).unwrap_or_default();
            (median(&mut secs), median(&mut mem), out)
        })
        .collect()
}

/// Our CLI on two feature files for `metrics`; the values come back from its metrics.json.
fn ours(sample: &Path, reference: &Path, metrics: &str, out: &Path) -> Contender {
    Contender {
        label: "llamagen-eval metrics",
        program: PathBuf::from(env!("CARGO_BIN_EXE_llamagen-eval")),
        args: vec![
            "metrics".into(),
            "--quiet".into(),
            "--sample-features".into(),
            sample.display().to_string(),
            "--ref-features".into(),
            reference.display().to_string(),
            "--metrics".into(),
            metrics.into(),
            "--out".into(),
            out.display().to_string(),
        ],
        env: Vec::new(),
    }
}

fn peer(label: &'static str, what: &str, sample: &Path, reference: &Path) -> Contender {
    Contender {
        label,
        program: support::python(),
        args: vec![
            support::script_path("bench/bench_feature_peers.py")
                .display()
                .to_string(),
            what.into(),
            sample.display().to_string(),
            reference.display().to_string(),
        ],
        env: Vec::new(),
    }
}

fn single_threaded(mut contender: Contender) -> Contender {
    contender.env = vec![
        ("OPENBLAS_NUM_THREADS", "1"),
        ("OMP_NUM_THREADS", "1"),
        ("MKL_NUM_THREADS", "1"),
    ];
    contender
}

fn our_values(out: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join("metrics.json")).expect("metrics.json");
    serde_json::from_str::<serde_json::Value>(&text).expect("JSON")["metrics"].clone()
}

fn report_race(title: &str, contenders: &[Contender], results: &[(f64, f64, String)]) {
    println!("{title}");
    let (our_seconds, our_mb, _) = results[0];
    for (contender, (seconds, mb, _)) in contenders.iter().zip(results) {
        println!(
            "  {:<28} {seconds:7.2} s {mb:7.0} MB peak   ratio {:5.2}x",
            contender.label,
            seconds / our_seconds
        );
    }
    let _ = our_mb;
}

/// Two feature files of `n` rows in a temporary folder (the samples' drawn with `seeds[0]` and
/// shifted, the reference's with `seeds[1]`), and the folder our run writes to.
struct FeatureFiles {
    _dir: tempfile::TempDir,
    sample: PathBuf,
    reference: PathBuf,
    out: PathBuf,
}

impl FeatureFiles {
    fn write(n: usize, seeds: [u64; 2]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = FeatureFiles {
            sample: dir.path().join("sample.npz"),
            reference: dir.path().join("ref.npz"),
            out: dir.path().join("ours"),
            _dir: dir,
        };
        write_pool_features(&files.sample, n, seeds[0], 0.05);
        write_pool_features(&files.reference, n, seeds[1], 0.0);
        files
    }

    /// Races our `metrics` against one peer script (`label`, `what`), also on one BLAS thread,
    /// on these files; reports the race under `title` and returns our values and the peer's.
    fn race_peer(
        &self,
        metrics: &str,
        (label, what): (&'static str, &str),
        title: &str,
    ) -> (serde_json::Value, serde_json::Value) {
        let (a, b) = (&self.sample, &self.reference);
        let contenders = [
            ours(a, b, metrics, &self.out),
            peer(label, what, a, b),
            single_threaded(peer("  same, 1 thread", what, a, b)),
        ];
        let results = race_and_report(title, &contenders);
        (our_values(&self.out), peer_values(&results[1].2))
    }
}

/// Races the contenders (three repeats) and reports the race under `title`.
fn race_and_report(title: &str, contenders: &[Contender]) -> Vec<(f64, f64, String)> {
    let results = race(contenders, 3);
    report_race(title, contenders, &results);
    results
}

/// The JSON a peer script printed.
fn peer_values(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim()).expect("JSON")
}

/// `(key, ours, theirs)` of every key.
fn both_values<'k>(
    ours: &serde_json::Value,
    theirs: &serde_json::Value,
    keys: &[&'k str],
) -> Vec<(&'k str, f64, f64)> {
    keys.iter()
        .map(|&key| {
            let o = ours[key].as_f64().expect("ours");
            let t = theirs[key].as_f64().expect("theirs");
            (key, o, t)
        })
        .collect()
}

fn process_fid() {
    let files = FeatureFiles::write(6000, [11, 12]);
    let (a, b, out) = (&files.sample, &files.reference, &files.out);
    let contenders = [
        ours(a, b, "fid", out),
        peer("NumPy np.cov + eigh", "numpy-fid", a, b),
        peer("NumPy cov+cholesky+eigvalsh", "numpy-fid-cholesky", a, b),
        // On a loaded machine NumPy's threaded LAPACK can be several times slower than its
        // single-threaded one: its best configuration too.
        single_threaded(peer("  same, 1 BLAS thread", "numpy-fid-cholesky", a, b)),
        peer("pytorch-fid", "pytorch-fid", a, b),
    ];
    let results = race_and_report(
        "FID, two feature files of 6,000 x 2048 f32 (whole process)",
        &contenders,
    );
    // Any llamagen-eval process first loads libtorch (and its CUDA libraries where the wheel has
    // them): the floor under every whole-process figure of ours.
    let startup = race(
        &[Contender {
            label: "llamagen-eval --help",
            program: PathBuf::from(env!("CARGO_BIN_EXE_llamagen-eval")),
            args: vec!["--help".into()],
            env: Vec::new(),
        }],
        3,
    );
    println!(
        "  startup floor (`llamagen-eval --help`): {:.2} s, {:.0} MB peak",
        startup[0].0, startup[0].1
    );
    let fid = our_values(out)["fid"].as_f64().expect("fid");
    for (contender, (_, _, stdout)) in contenders.iter().zip(&results).skip(1) {
        let theirs = peer_values(stdout)["fid"].as_f64().expect("fid");
        println!(
            "  FID ours {fid:.9} vs {} {theirs:.9} (rel diff {:.1e})",
            contender.label,
            (fid - theirs).abs() / theirs.abs()
        );
    }
}

fn process_kid() {
    let files = FeatureFiles::write(5000, [21, 22]);
    let (ours, theirs) = files.race_peer(
        "kid",
        ("torch-fidelity KID", "torch-fidelity-kid"),
        "KID, 5,000 vs 5,000 x 2048 f32, 100 subsets of 1,000 (whole process)",
    );
    for (key, o, t) in both_values(&ours, &theirs, &["kid", "kid_std"]) {
        println!(
            "  {key}: ours {o:.12e} vs torch-fidelity (float32 arithmetic) {t:.12e} (rel diff {:.1e})",
            (o - t).abs() / t.abs()
        );
    }
    let f64_peer = peer(
        "",
        "torch-fidelity-kid-float64",
        &files.sample,
        &files.reference,
    );
    let f64_run = time_process(&support::python(), &f64_peer.args, &[]);
    let theirs64 = peer_values(&f64_run.stdout);
    for (key, o, t) in both_values(&ours, &theirs64, &["kid", "kid_std"]) {
        println!(
            "  {key}: ours {o:.12e} vs torch-fidelity on the same features in float64 {t:.12e} (rel diff {:.1e})",
            (o - t).abs() / t.abs()
        );
    }
}

fn process_precision_recall() {
    let files = FeatureFiles::write(5000, [31, 32]);
    let (ours, theirs) = files.race_peer(
        "pr",
        ("torch-fidelity PRC", "torch-fidelity-prc"),
        "precision/recall k=3, 5,000 vs 5,000 x 2048 f32 (whole process; ours adds density/coverage)",
    );
    for (key, o, t) in both_values(&ours, &theirs, &["precision", "recall"]) {
        println!(
            "  {key}: ours {} of 5000 vs torch-fidelity {} of 5000",
            (o * 5000.0).round(),
            (t * 5000.0).round()
        );
    }
}

fn main() {
    // `cargo bench --bench versus_reference -- NAME` runs only the comparisons whose name contains NAME.
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_default();
    let benches: [(&str, fn()); 6] = [
        ("process_fid", process_fid),
        ("process_kid", process_kid),
        ("process_precision_recall", process_precision_recall),
        ("frechet", frechet_vs_pytorch_fid),
        ("ssim", ssim_vs_scikit_image),
        ("inception", inception_vs_pytorch_fid),
    ];
    for (name, bench) in benches {
        if name.contains(&filter) {
            bench();
        }
    }
}
