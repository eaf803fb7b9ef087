//! One command split over the ranks of a launcher gives one process's results: the real
//! `torchrun` from the project venv (also with a rank killed and restarted), Slurm's task and
//! job-array environments as `srun` and `sbatch --array` set them, and the offline `merge
//! OUT_DIR`; parts that do not belong together are refused naming the rank and the file.

use std::fs::File;
use std::path::{Path, PathBuf};

use llamagen_test_support as support;
use ndarray::{Array1, Array4};

use crate::harness::{
    all_cores, all_succeed, array_vars, cli, metrics_json, ranks, s, sha256_hex, srun_tasks,
    srun_vars, strings, tiny_gpt, tiny_gpt_fid_with_kid, torchrun, Scratch,
};

const SAMPLES: &str = "24";

/// A shell for `torchrun`'s ranks that kills rank 1 with SIGKILL right after its first commit
/// (`LLAMAGEN_EVAL_CRASH_AT`), on the first start only.
pub(crate) const CRASH_RANK_1: &str = r#"if [ "$RANK" = 1 ] && [ "$TORCHELASTIC_RESTART_COUNT" = 0 ]; then export LLAMAGEN_EVAL_CRASH_AT=committed:1; fi; exec "$@""#;

/// `fid --gpt` on the golden demo-size models into `out`, saving the samples there.
fn fid_args(setup: &Scratch, out: &Path, cfg: &str) -> Vec<String> {
    tiny_gpt_fid_with_kid((SAMPLES, cfg, "4"), (&setup.reference, &setup.weights), out)
}

/// [`fid_args`] for ranks that are launched, into the folder `name` of the scratch folder: quiet,
/// and with `--gather-timeout SECONDS` where given. The folder and the arguments.
fn launched_fid_args(
    setup: &Scratch,
    name: &str,
    cfg: &str,
    gather_timeout: Option<&str>,
) -> (PathBuf, Vec<String>) {
    let out = setup.root.join(name);
    let mut args = fid_args(setup, &out, cfg);
    args.push("--quiet".into());
    if let Some(seconds) = gather_timeout {
        args.extend(["--gather-timeout".into(), seconds.into()]);
    }
    (out, args)
}

fn read_samples(path: &Path) -> (Array4<u8>, Array1<i64>) {
    let mut npz = ndarray_npy::NpzReader::new(
        File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap();
    (npz.by_name("arr_0").unwrap(), npz.by_name("arr_1").unwrap())
}

/// A scratch folder of the test's Inception weights and reference, and in it the single-process
/// run every launched run is compared with.
fn single_process() -> (Scratch, PathBuf) {
    let setup = Scratch::new(12);
    let out = setup.root.join("single");
    cli()
        .args(fid_args(&setup, &out, "2.0"))
        .quiet()
        .run()
        .success();
    (setup, out)
}

/// `launched` holds exactly what `single` holds, up to the rounding that the ranks' thread count
/// and Inception batches move: labels identical, at most one level in under 0.1% of the pixels,
/// every metric within 1e-5 relative; the record says how the work was split.
fn assert_same_as_single(single: &Path, launched: &Path, launcher: &str, world: usize) {
    let (expected_images, expected_labels) = read_samples(&single.join("samples.npz"));
    let (images, labels) = read_samples(&launched.join("samples.npz"));
    assert_eq!(labels, expected_labels, "labels");
    assert_eq!(images.dim(), expected_images.dim());
    let mut differ = 0usize;
    for (a, b) in images.iter().zip(expected_images.iter()) {
        let d = (i16::from(*a) - i16::from(*b)).abs();
        assert!(d <= 1, "a pixel moved by {d} levels");
        differ += usize::from(d > 0);
    }
    let share = differ as f64 / images.len() as f64;
    assert!(
        share < 1e-3,
        "{differ} pixels differ ({:.4}%)",
        100.0 * share
    );
    let expected = metrics_json(single);
    let got = metrics_json(launched);
    let want = expected["metrics"].as_object().unwrap();
    assert!(want["fid"].is_number(), "{expected}");
    let mut worst = (String::new(), 0.0, 0.0, 0.0);
    for (key, value) in want {
        let (a, b) = (
            value.as_f64().unwrap(),
            got["metrics"][key].as_f64().unwrap(),
        );
        if support::rel_diff(a, b) > worst.1 {
            worst = (key.clone(), support::rel_diff(a, b), a, b);
        }
        assert!(
            support::rel_diff(a, b) <= 1e-5 || (a - b).abs() <= 1e-9,
            "{key}: launched {b}, one process {a}"
        );
    }
    eprintln!(
        "{launcher}: {differ} of {} pixels differ by 1 level; largest metric difference {} {:.2e} relative ({} vs {})",
        images.len(),
        worst.0,
        worst.1,
        worst.2,
        worst.3
    );
    let run = &got["run"];
    assert_eq!(run["world_size"], world, "{run}");
    assert_eq!(run["launcher"], launcher, "{run}");
    let ranks = run["ranks"].as_array().unwrap();
    let counts: Vec<u64> = ranks
        .iter()
        .map(|r| r["samples"].as_u64().unwrap())
        .collect();
    assert_eq!(counts.iter().sum::<u64>(), 24, "{run}");
    assert!(ranks
        .iter()
        .all(|r| r["host"].is_string() && r["wall_s"].is_number()));
    assert!(run["throughput"]["images_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(run["n_samples"], 24);
    assert!(!launched.join(".parts").exists(), "parts left behind");
    assert!(!launched.join(".journal").exists(), "journals left behind");
    assert!(launched.join("grid.png").is_file());
}

fn torchrun_fid(setup: &Scratch, out: &Path, script: Option<&str>, restarts: u32) -> String {
    torchrun(3, restarts, script)
        .args(fid_args(setup, out, "2.0"))
        .quiet()
        .run()
        .success()
        .stderr_text()
}

#[test]
fn torchrun_ranks_give_one_process_results_also_after_a_restart() {
    let _cores = all_cores();
    let (setup, single) = single_process();

    let launched = setup.root.join("torchrun");
    torchrun_fid(&setup, &launched, None, 0);
    assert_same_as_single(&single, &launched, "torchrun", 3);

    // Rank 1 is killed with SIGKILL right after its first commit; torchrun restarts the job
    // once, and every rank resumes from its own journal (or keeps its finished part).
    let restarted = setup.root.join("restarted");
    let stderr = torchrun_fid(&setup, &restarted, Some(CRASH_RANK_1), 1);
    assert!(
        stderr.contains("Signals.SIGKILL")
            || stderr.contains("SIGKILL")
            || stderr.contains("exitcode"),
        "rank 1 was not killed:\n{stderr}"
    );
    assert_same_as_single(&single, &restarted, "torchrun", 3);
}

#[test]
fn slurm_tasks_and_job_arrays_give_one_process_results() {
    let _cores = all_cores();
    let (setup, single) = single_process();

    let (tasks, args) = launched_fid_args(&setup, "srun", "2.0", None);
    all_succeed(ranks(&args, &srun_tasks(3)));
    assert_same_as_single(&single, &tasks, "slurm", 3);

    // A job array whose tasks run one after another: rank 0 runs last here, and the tasks
    // before it leave their parts.
    let (array, args) = launched_fid_args(&setup, "array", "2.0", None);
    for task in [2, 1, 0] {
        all_succeed(ranks(&args, &[array_vars(task, 3)]));
    }
    assert_same_as_single(&single, &array, "slurm-array", 3);
}

#[test]
fn merge_finishes_a_gather_that_rank_0_did_not() {
    let _cores = all_cores();
    let (setup, single) = single_process();
    let (out, args) = launched_fid_args(&setup, "merged", "2.0", Some("1"));
    // Rank 0 finishes first and gives up waiting, naming the missing ranks and the way out.
    ranks(&args, &[srun_vars(0, 3)])[0].refused_with(&[
        "no part from rank 1, 2 after 1 s",
        "merge",
        "rank-1.json",
    ]);
    assert!(!out.join("metrics.json").exists());
    all_succeed(ranks(&args, &[srun_vars(1, 3), srun_vars(2, 3)]));
    assert!(!out.join("metrics.json").exists());
    cli().args(["merge", s(&out)]).quiet().run().success();
    assert_same_as_single(&single, &out, "slurm", 3);
}

#[test]
fn parts_that_do_not_belong_together_are_refused_naming_rank_and_file() {
    let _cores = all_cores();
    let setup = Scratch::new(12);

    // A rank launched with another world size.
    let (out, args) = launched_fid_args(&setup, "world", "2.0", Some("30"));
    ranks(&args, &[srun_vars(0, 3), srun_vars(1, 4), srun_vars(2, 3)])[0].refused_with(&[
        "rank 1 ran in a job of 4 processes, rank 0's job has 3",
        "rank-1.json",
    ]);
    assert!(!out.join("metrics.json").exists());

    // A rank run with another command line.
    let (out, args) = launched_fid_args(&setup, "settings", "2.0", Some("30"));
    let (_, other) = launched_fid_args(&setup, "settings", "3.0", Some("30"));
    let results = support::run_together(vec![
        cli().args(&args).rank(&srun_vars(0, 2)),
        cli().args(&other).rank(&srun_vars(1, 2)),
    ]);
    results[0].refused_with(&[
        "rank 1 was run with another command line than rank 0",
        "`cfg_scale` was 2.0, here 3.0",
        "rank-1.json",
    ]);
    assert!(!out.join("metrics.json").exists());

    // A rank given another decode batch, which changes the decoder's rounding.
    let (out, mut args) = launched_fid_args(&setup, "decode", "2.0", Some("30"));
    let mut other = args.clone();
    args.extend(["--decode-batch-size".into(), "2".into()]);
    other.extend(["--decode-batch-size".into(), "3".into()]);
    let results = support::run_together(vec![
        cli().args(&args).rank(&srun_vars(0, 2)),
        cli().args(&other).rank(&srun_vars(1, 2)),
    ]);
    results[0].refused_with(&["`decode_batch_size` was 2, here 3", "rank-1.json"]);
    assert!(!out.join("metrics.json").exists());

    // A part left by an earlier launch (another Slurm job) is not taken for this launch's: rank 0
    // of a new job with other flags waits for rank 1 instead of refusing the stale part.
    let (out, earlier) = launched_fid_args(&setup, "stale", "3.0", Some("30"));
    let mut rank1 = srun_vars(1, 2);
    rank1[0].1 = "1000".into();
    all_succeed(ranks(&earlier, &[rank1]));
    assert!(out.join(".parts/rank-1.json").is_file());
    let (_, now) = launched_fid_args(&setup, "stale", "2.0", Some("1"));
    ranks(&now, &[srun_vars(0, 2)])[0].refused_with(&["no part from rank 1 after 1 s"]);

    // Two ranks claiming the same samples (an explicit --shard wins over the environment).
    let npz = setup.root.join("twice.npz");
    let mut sample = tiny_gpt("sample");
    sample.extend([
        "--samples",
        "6",
        "--shard",
        "1/2",
        "--out",
        s(&npz),
        "--quiet",
        "--gather-timeout",
        "30",
    ]);
    ranks(&sample, &srun_tasks(2))[0].refused_with(&[
        "sample index 1 is claimed by rank 0",
        "and by rank 1",
        "rank-1.json",
    ]);
    assert!(!npz.exists());
}

fn sample_args(out: &Path) -> Vec<String> {
    let grid = out.with_extension("png");
    let mut args = tiny_gpt("sample");
    args.extend([
        "--samples",
        "10",
        "--seed",
        "3",
        "--gen-batch-size",
        "2",
        "--grid",
        s(&grid),
        "--out",
        s(out),
        "--quiet",
    ]);
    strings(&args)
}

#[test]
fn sample_and_sweep_split_over_ranks() {
    let _cores = all_cores();
    let setup = Scratch::new(12);

    // `sample` over 3 Slurm tasks writes the npz one process writes.
    let single = setup.root.join("single.npz");
    cli().args(sample_args(&single)).run().success();
    let launched = setup.root.join("launched.npz");
    all_succeed(ranks(&sample_args(&launched), &srun_tasks(3)));
    let (expected_images, expected_labels) = read_samples(&single);
    let (images, labels) = read_samples(&launched);
    assert_eq!(labels, expected_labels);
    let moved = images
        .iter()
        .zip(expected_images.iter())
        .filter(|(a, b)| a != b)
        .count();
    assert!(
        images
            .iter()
            .zip(expected_images.iter())
            .all(|(a, b)| a.abs_diff(*b) <= 1)
            && (moved as f64) < 1e-3 * images.len() as f64,
        "{moved} pixels differ"
    );
    let entries = ndarray_npy::NpzReader::new(File::open(&launched).unwrap())
        .unwrap()
        .names()
        .unwrap();
    assert!(
        !entries.iter().any(|n| n.starts_with("indices")),
        "{entries:?}"
    );
    assert!(launched.with_extension("png").is_file());
    assert!(!setup.root.join("launched.npz.parts").exists());
    assert!(!setup.root.join("launched.npz.journal").exists());

    // A sweep over 2 ranks: rank 0 gathers every scale and writes the report.
    let (sweep, mut args) = launched_fid_args(&setup, "sweep", "1.0", None);
    args.splice(
        0..1,
        ["sweep".to_string(), "--cfg-scales".into(), "1.5,3".into()],
    );
    all_succeed(ranks(&args, &srun_tasks(2)));
    for scale in ["1.5", "3"] {
        let run = sweep.join(format!("cfg-{scale}"));
        let record = metrics_json(&run);
        assert_eq!(record["run"]["world_size"], 2, "{record}");
        assert_eq!(record["run"]["cfg_scale"], scale.parse::<f64>().unwrap());
        assert_eq!(read_samples(&run.join("samples.npz")).1.len(), 24);
        assert!(!run.join(".parts").exists());
    }
    assert!(sweep.join("report/summary.csv").is_file());
}

/// `sample` of `samples` images with `seed` into `out`, as rank `rank` of 2 Slurm tasks that
/// waits at most 1 s for the other rank's part.
fn sample_rank(out: &Path, samples: &str, seed: &str, rank: usize) -> support::Run {
    let mut args = tiny_gpt("sample");
    args.extend([
        "--samples",
        samples,
        "--seed",
        seed,
        "--gen-batch-size",
        "2",
        "--out",
        s(out),
        "--quiet",
        "--gather-timeout",
        "1",
    ]);
    ranks(&args, &[srun_vars(rank, 2)]).remove(0)
}

#[test]
fn parts_changed_after_their_rank_finished_are_refused_at_the_join() {
    let _cores = all_cores();
    let setup = Scratch::new(12);
    let single = setup.root.join("single.npz");
    let mut alone = tiny_gpt("sample");
    alone.extend(["--samples", "10", "--seed", "3", "--gen-batch-size", "2"]);
    alone.extend(["--out", s(&single), "--quiet"]);
    cli().args(&alone).run().success();

    // Both parts of a 2-rank job, whose rank 0 gave up waiting: `merge` joins them later.
    let out = setup.root.join("s.npz");
    sample_rank(&out, "10", "3", 0).refused_with(&["no part from rank 1"]);
    sample_rank(&out, "10", "3", 1).success();
    let part = setup.root.join("s.npz.parts/rank-1.samples.npz");
    let manifest = setup.root.join("s.npz.parts/rank-1.json");
    let pristine = std::fs::read(&part).unwrap();
    let pristine_manifest = std::fs::read(&manifest).unwrap();
    // Rank 1's parts of other jobs: another seed, fewer and more samples.
    let other = |name: &str, samples: &str, seed: &str| {
        let other = setup.root.join(name);
        sample_rank(&other, samples, seed, 1).success();
        setup.root.join(format!("{name}.parts/rank-1.samples.npz"))
    };
    let seed4 = other("seed4.npz", "10", "4");
    let fewer = other("fewer.npz", "8", "3");
    let more = other("more.npz", "12", "3");
    let merge = || cli().args(["merge", s(&out)]).quiet().run();

    // Swapped in from another seed, cut short (rows of a smaller job), emptied: the file is not
    // what rank 1 wrote.
    for (what, bytes) in [
        ("another seed", std::fs::read(&seed4).unwrap()),
        ("fewer rows", std::fs::read(&fewer).unwrap()),
        ("empty", Vec::new()),
    ] {
        std::fs::write(&part, bytes).unwrap();
        let stderr = merge().refused_with(&[
            "rank-1.samples.npz",
            "does not hold what rank 1 wrote",
            "rank-1.json",
        ]);
        assert!(!out.exists(), "{what}: {stderr}");
    }

    // Rows that are not the rank's samples even where the manifest's sha256 agrees (a rank that
    // wrote the wrong rows): refused naming the missing and extra indices.
    let set_checksum = |file: &Path| {
        let mut m: serde_json::Value = serde_json::from_slice(&pristine_manifest).unwrap();
        m["checksums"]["samples"] = sha256_hex(file).into();
        std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
    };
    for (wrong, rows, named) in [
        (&fewer, "4 rows", "1 missing (9)"),
        (&more, "6 rows", "1 extra (11)"),
    ] {
        std::fs::copy(wrong, &part).unwrap();
        set_checksum(&part);
        merge().refused_with(&[
            "rank-1.samples.npz",
            &format!("rank 1's part holds {rows} for its 5 samples"),
            named,
        ]);
    }
    assert!(!out.exists());

    // The part as rank 1 wrote it joins into the single process's samples.
    std::fs::write(&part, &pristine).unwrap();
    std::fs::write(&manifest, &pristine_manifest).unwrap();
    merge().success();
    let ((images, labels), (expected_images, expected_labels)) =
        (read_samples(&out), read_samples(&single));
    assert_eq!(labels, expected_labels);
    assert_eq!(images.dim(), expected_images.dim());
    // One thread per rank against the process's own: a pixel may move by one level.
    assert!(images
        .iter()
        .zip(expected_images.iter())
        .all(|(a, b)| a.abs_diff(*b) <= 1));
}

#[test]
fn the_same_thread_count_gives_the_same_pixels_however_it_is_set() {
    let _cores = all_cores();
    let setup = Scratch::new(12);
    // Three Slurm ranks without OMP_NUM_THREADS divide the cores among themselves; one process
    // given that count through the environment must decode the very same pixels.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let share = (cores / 3).max(1);
    let single = setup.root.join("single");
    cli()
        .args(fid_args(&setup, &single, "2.0"))
        .env("OMP_NUM_THREADS", share.to_string())
        .quiet()
        .run()
        .success();
    let (launched, args) = launched_fid_args(&setup, "launched", "2.0", None);
    all_succeed(support::run_together(
        (0..3)
            .map(|rank| {
                cli()
                    .args(&args)
                    .rank(&srun_vars(rank, 3))
                    .env_remove("OMP_NUM_THREADS")
            })
            .collect(),
    ));
    assert_eq!(
        read_samples(&launched.join("samples.npz")),
        read_samples(&single.join("samples.npz"))
    );
    let threads = |dir: &Path| metrics_json(dir)["run"]["threads"]["libtorch"].clone();
    assert_eq!(threads(&launched), threads(&single));
}
