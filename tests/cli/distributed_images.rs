//! `features`, `stats` and `recon` split over the ranks of a launcher give one process's outputs:
//! three Slurm tasks (as `srun` starts them), the real `torchrun`, and the offline `merge OUT`
//! after rank 0 gave up waiting. Each test prints the largest differences it allows.

use std::fs::File;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use ndarray_npy::NpzReader;
use serde_json::Value;

use crate::distributed::CRASH_RANK_1;
use crate::harness::{
    all_cores, all_succeed, cli, golden, metrics_json, ranks, s, srun_tasks, srun_vars, strings,
    torchrun, Scratch,
};

/// Images of the tests: few, small, in batches of 4 that fall differently on 3 ranks.
const IMAGES: usize = 14;

/// `command` on the test images (given with `input_flag`) and its own `flags`, writing `out`
/// quietly, with the test's Inception weights, on the CPU, in batches of 4.
fn job_args(
    setup: &Scratch,
    (command, input_flag): (&str, &str),
    flags: &[&str],
    out: &Path,
) -> Vec<String> {
    let mut args = strings(&[command, input_flag, s(&setup.reference)]);
    args.extend(strings(flags));
    args.extend(strings(&[
        "--out",
        s(out),
        "--quiet",
        "--inception",
        s(&setup.weights),
        "--device",
        "cpu",
        "--feature-batch-size",
        "4",
    ]));
    args
}

/// One process, without any launcher variables.
fn single(args: &[String]) {
    cli().args(args).run().success();
}

/// Three Slurm tasks started together.
fn three_tasks(args: &[String]) {
    all_succeed(ranks(args, &srun_tasks(3)));
}

fn arrays(path: &Path) -> Vec<(String, ArrayD<f64>)> {
    let mut npz =
        NpzReader::new(File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
            .unwrap();
    let names = npz.names().unwrap();
    names
        .into_iter()
        .map(|name| {
            let key = name.trim_end_matches(".npy").to_owned();
            let array: ArrayD<f64> = if let Ok(a) = npz.by_name::<_, IxDyn>(&name) {
                let a: ArrayD<f32> = a;
                a.mapv(f64::from)
            } else if let Ok(a) = npz.by_name::<_, IxDyn>(&name) {
                a
            } else if let Ok(a) = npz.by_name::<_, IxDyn>(&name) {
                let a: ArrayD<u8> = a;
                a.mapv(f64::from)
            } else {
                let a: ArrayD<i64> = npz.by_name(&name).unwrap();
                a.mapv(|v| v as f64)
            };
            (key, array)
        })
        .collect()
}

/// Every array of `launched` equals `single`'s: `exact` ones bit for bit, the others to 1e-5
/// relative to their largest magnitude. Returns the largest relative difference.
fn assert_same_npz(single: &Path, launched: &Path, exact: &[&str]) -> f64 {
    let (a, b) = (arrays(single), arrays(launched));
    let names = |v: &[(String, ArrayD<f64>)]| {
        let mut n: Vec<String> = v.iter().map(|(k, _)| k.clone()).collect();
        n.sort();
        n
    };
    assert_eq!(names(&a), names(&b), "{}", launched.display());
    let mut worst = 0.0f64;
    for (key, x) in &a {
        let y = &b.iter().find(|(k, _)| k == key).unwrap().1;
        assert_eq!(x.shape(), y.shape(), "{key}");
        if exact.contains(&key.as_str()) {
            assert!(x == y, "{}: `{key}` differs", launched.display());
            continue;
        }
        let scale = x.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
        let diff = x
            .iter()
            .zip(y.iter())
            .fold(0.0f64, |m, (p, q)| m.max((p - q).abs()));
        let relative = diff / scale;
        eprintln!(
            "{}: `{key}` differs by {relative:.2e} relative",
            launched.display()
        );
        assert!(relative <= 1e-5, "`{key}`: {relative:e} relative");
        worst = worst.max(relative);
    }
    worst
}

/// The metrics of two run folders agree to `tolerance` relative (of at least 1e-6: rFID of
/// random Inception features is near 0); the launched one records the split.
fn assert_same_metrics(single: &Path, launched: &Path, launcher: &str, tolerance: f64) {
    let (a, b) = (metrics_json(single), metrics_json(launched));
    let metrics = a["metrics"].as_object().unwrap();
    assert!(!metrics.is_empty());
    for (name, value) in metrics {
        let (x, y) = (
            value.as_f64().unwrap(),
            b["metrics"][name].as_f64().unwrap(),
        );
        let relative = (x - y).abs() / x.abs().max(1e-6);
        eprintln!(
            "{}: {name} {x} vs {y} ({relative:.2e} relative)",
            launched.display()
        );
        assert!(relative <= tolerance, "{name}: {x} vs {y}");
    }
    for key in [
        "codebook_tokens",
        "codebook_used_entries",
        "psnr_identical_images",
    ] {
        assert_eq!(a["run"][key], b["run"][key], "{key}");
    }
    assert_eq!(b["run"]["world_size"], Value::from(3));
    assert_eq!(b["run"]["launcher"], Value::from(launcher));
    assert_eq!(b["run"]["ranks"].as_array().map(Vec::len), Some(3));
    assert!(!launched.join(".parts").exists(), "parts left behind");
    assert!(!launched.join(".journal").exists(), "journals left behind");
}

/// The reconstructions agree up to the decoder's rounding: at most one level, in under 1% of
/// the pixels.
fn assert_close_pixels(single: &Path, launched: &Path) {
    let read = |p: &Path| -> ndarray::Array4<u8> {
        NpzReader::new(File::open(p).unwrap())
            .unwrap()
            .by_name("arr_0")
            .unwrap()
    };
    let (a, b) = (read(single), read(launched));
    assert_eq!(a.shape(), b.shape());
    let moved = a.iter().zip(b.iter()).filter(|(x, y)| x != y).count();
    let most = a
        .iter()
        .zip(b.iter())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0);
    eprintln!(
        "{}: {moved} of {} pixels moved, by at most {most}",
        launched.display(),
        a.len()
    );
    assert!(
        most <= 1 && moved * 100 < a.len(),
        "{moved} pixels, {most} levels"
    );
}

fn assert_no_leftovers(out: &Path) {
    for suffix in [".parts", ".journal"] {
        let mut name = out.as_os_str().to_owned();
        name.push(suffix);
        assert!(!Path::new(&name).exists(), "{suffix} left behind");
    }
}

/// The jobs that split their images over the ranks.
#[derive(Clone, Copy, Debug)]
enum Job {
    Features,
    Stats,
    Recon,
}

impl Job {
    fn args(self, setup: &Scratch, out: &Path) -> Vec<String> {
        match self {
            Job::Features => job_args(setup, ("features", "--images"), &[], out),
            Job::Stats => job_args(
                setup,
                ("stats", "--data"),
                &["--keep-images", "5", "--seed", "3"],
                out,
            ),
            // The golden tokenizer on the test images, every figure, its reconstructions saved.
            Job::Recon => job_args(
                setup,
                ("recon", "--data"),
                &[
                    "--vq",
                    s(&golden("vq_public.pt")),
                    "--save-recon",
                    s(&out.join("recon.npz")),
                ],
                out,
            ),
        }
    }

    /// Where the run named `tag` writes: a file for `features` and `stats`, a folder for `recon`.
    fn output(self, setup: &Scratch, tag: &str) -> PathBuf {
        setup.root.join(match self {
            Job::Features => format!("features-{tag}.npz"),
            Job::Stats => format!("stats-{tag}.npz"),
            Job::Recon => format!("recon-{tag}"),
        })
    }

    /// Panics unless the output of the ranks started by `launcher` equals one process's.
    fn assert_same_output(self, one: &Path, launched: &Path, launcher: &str) {
        match self {
            Job::Features | Job::Stats => {
                // The kept images of `stats` are copied, not computed: they must be identical.
                let exact: &[&str] = match self {
                    Job::Stats => &["arr_0"],
                    _ => &[],
                };
                assert_same_npz(one, launched, exact);
                assert_no_leftovers(launched);
            }
            Job::Recon => {
                // The tokenizer's decoder rounds differently with one thread and other batches: a
                // pixel may move by a level, which moves the mean SSIM of these noisy
                // reconstructions by ~1e-5.
                assert_same_metrics(one, launched, launcher, 1e-4);
                assert_close_pixels(&one.join("recon.npz"), &launched.join("recon.npz"));
            }
        }
    }
}

/// `job` run by one process and by the ranks `launch` starts (as `launcher` names them, into the
/// output tagged `tag`) gives the same output.
fn assert_launched_equals_one_process(
    setup: &Scratch,
    job: Job,
    (tag, launcher): (&str, &str),
    launch: impl FnOnce(&[String]),
) {
    let (one, launched) = (job.output(setup, "1"), job.output(setup, tag));
    single(&job.args(setup, &one));
    launch(&job.args(setup, &launched));
    job.assert_same_output(&one, &launched, launcher);
}

#[test]
fn features_stats_and_recon_over_slurm_tasks_equal_one_process() {
    let _cores = all_cores();
    let setup = Scratch::new(IMAGES);
    for job in [Job::Features, Job::Stats, Job::Recon] {
        assert_launched_equals_one_process(&setup, job, ("3", "slurm"), three_tasks);
    }
}

#[test]
fn features_through_torchrun_and_stats_through_merge_equal_one_process() {
    let _cores = all_cores();
    let setup = Scratch::new(IMAGES);
    assert_launched_equals_one_process(&setup, Job::Features, ("torchrun", "torchrun"), |args| {
        torchrun(3, 0, None).args(args).run().success();
    });

    // Rank 0 gives up waiting; the other ranks finish later; `merge OUT` gathers.
    let (one, merged) = (
        Job::Stats.output(&setup, "1"),
        Job::Stats.output(&setup, "merged"),
    );
    single(&Job::Stats.args(&setup, &one));
    let mut args = Job::Stats.args(&setup, &merged);
    args.extend(strings(&["--gather-timeout", "1"]));
    ranks(&args, &[srun_vars(0, 3)])[0].refused_with(&["no part from rank 1, 2", "merge"]);
    assert!(!merged.exists());
    all_succeed(ranks(&args, &[srun_vars(1, 3), srun_vars(2, 3)]));
    cli().args(["merge", s(&merged)]).quiet().run().success();
    Job::Stats.assert_same_output(&one, &merged, "merge");
}

/// `args` through the real torchrun with 3 processes, rank 1 killed with SIGKILL after its first
/// commit and the job restarted once: every rank resumes from its own journal.
fn torchrun_with_a_restart(args: &[String]) -> String {
    let stderr = torchrun(3, 1, Some(CRASH_RANK_1))
        .args(args)
        .run()
        .success()
        .stderr_text();
    assert!(
        stderr.contains("exitcode: -9"),
        "rank 1 was not killed:\n{stderr}"
    );
    stderr
}

#[test]
fn stats_and_recon_ranks_killed_and_restarted_by_torchrun_give_one_process_results() {
    let _cores = all_cores();
    let setup = Scratch::new(IMAGES);
    for job in [Job::Stats, Job::Recon] {
        assert_launched_equals_one_process(&setup, job, ("restarted", "torchrun"), |args| {
            torchrun_with_a_restart(args);
        });
    }
}
