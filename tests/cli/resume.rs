//! Runs killed with SIGKILL (at a crash point inside sampling, decoding, feature extraction, or
//! right after a commit) and rerun with `--resume` end exactly as uninterrupted runs do: the same
//! metrics to the last bit, the same saved samples. A resume with a changed setting is refused
//! with the setting's name; a sweep loads each checkpoint once; a generator that cannot load
//! fails before any reference work.

use std::fs::File;
use std::path::Path;

use ndarray::Array4;

use crate::harness::{
    all_cores, cli, golden, metrics_json, random_inception_and_reference, remove_flag, s,
    scratch_with_inception, set_flag, tiny_gpt, tiny_gpt_fid_with_kid, Run,
};

/// The binary with `args` and then `extra`, killed with SIGKILL at `crash_at` where given.
fn run<S: AsRef<std::ffi::OsStr>>(args: &[S], extra: &[&str], crash_at: Option<&str>) -> Run {
    let mut cli = cli()
        .args(args)
        .args(extra)
        .info_log()
        .env_remove("LLAMAGEN_EVAL_CRASH_AT");
    if let Some(point) = crash_at {
        cli = cli.env("LLAMAGEN_EVAL_CRASH_AT", point);
    }
    cli.run()
}

fn killed(output: &Run) {
    assert_eq!(
        output.signal(),
        Some(9),
        "expected SIGKILL, got exit code {:?}\n{}",
        output.code(),
        output.stderr_text()
    );
}

fn metrics(dir: &Path) -> serde_json::Value {
    metrics_json(dir)["metrics"].clone()
}

fn images(path: &Path) -> Array4<u8> {
    let mut npz = ndarray_npy::NpzReader::new(File::open(path).unwrap()).unwrap();
    npz.by_name("arr_0").unwrap()
}

#[test]
fn fid_with_a_generator_resumes_after_sigkill_with_identical_metrics() {
    let _cores = all_cores();
    let (root, weights, reference) = &scratch_with_inception(12);
    let fid_at = |cfg: &str, out: &Path, extra: &[&str], crash_at: Option<&str>| {
        let args = tiny_gpt_fid_with_kid(("10", cfg, "3"), (reference, weights), out);
        run(&args, extra, crash_at)
    };
    let fid =
        |out: &Path, extra: &[&str], crash_at: Option<&str>| fid_at("2.0", out, extra, crash_at);
    let whole = root.join("whole");
    fid(&whole, &[], None).success();
    let expected = metrics(&whole);
    assert!(expected["fid"].is_number(), "{expected}");
    let expected_images = images(&whole.join("samples.npz"));

    // During sampling, decoding and Inception of the third batch, and right after the second
    // batch's commit.
    for point in ["sampled:3", "decoded:3", "features:3", "committed:2"] {
        let out = root.join(point.replace(':', "-"));
        killed(&fid(&out, &[], Some(point)));
        assert!(!out.join("metrics.json").exists());
        assert!(out.join(".journal/progress.json").is_file());
        let stderr = fid(&out, &["--resume"], None).success().stderr_text();
        assert!(stderr.contains("resuming after"), "{point}: {stderr}");
        assert_eq!(metrics(&out), expected, "{point}: resumed vs uninterrupted");
        assert_eq!(images(&out.join("samples.npz")), expected_images, "{point}");
        assert!(
            !out.join(".journal").exists(),
            "{point}: journal left behind"
        );
        assert!(out.join("grid.png").is_file());
    }

    // Ctrl-C (SIGINT) right after the first batch's commit (4 images, the Inception batch): the
    // run stops at that batch boundary, says what was done and the exact command that continues
    // it, and exits 130; that command finishes with the uninterrupted run's metrics. SIGTERM
    // exits 143.
    let out = root.join("sigint");
    let interrupted = fid(&out, &[], Some("committed:1:INT"));
    let stderr = interrupted.stderr_text();
    assert_eq!(interrupted.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted by SIGINT (Ctrl-C) after 4 of 10 images"),
        "{stderr}"
    );
    let (_, command) = stderr
        .split_once("to continue where it stopped: ")
        .unwrap_or_else(|| panic!("no resume command: {stderr}"));
    let words: Vec<&str> = command.lines().next().unwrap().split(' ').collect();
    assert_eq!(words.last(), Some(&"--resume"), "{command}");
    assert!(!out.join("metrics.json").exists());
    let stderr = run(&words[1..], &[], None).success().stderr_text();
    assert!(stderr.contains("resuming after 4 of 10"), "{stderr}");
    // Its throughput counts only this process's work.
    assert!(
        stderr.contains("throughput: 6 new images (4 more resumed from the journal)"),
        "{stderr}"
    );
    assert_eq!(
        metrics(&out),
        expected,
        "after SIGINT: resumed vs uninterrupted"
    );
    let terminated = fid(&root.join("sigterm"), &[], Some("committed:2:TERM"));
    assert_eq!(terminated.code(), Some(143), "{}", terminated.stderr_text());

    // A changed CFG scale refuses to resume, naming the setting and the flag.
    let out = root.join("changed");
    killed(&fid(&out, &[], Some("committed:1")));
    let refused = fid_at("3.0", &out, &["--resume"], None);
    let stderr = refused.stderr_text();
    assert!(!refused.succeeded());
    assert!(stderr.contains("`cfg_scale` was 2.0, now 3.0"), "{stderr}");
    assert!(stderr.contains("--cfg-scale 2.0"), "{stderr}");
    assert!(!out.join("metrics.json").exists());
}

#[test]
fn sample_and_recon_resume_after_sigkill() {
    let _cores = all_cores();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let vq = golden("vq_public.pt");
    let sample = |out: &Path, extra: &[&str], crash_at: Option<&str>| {
        let mut args = tiny_gpt("sample");
        args.extend([
            "--samples",
            "7",
            "--seed",
            "9",
            "--gen-batch-size",
            "2",
            "--out",
            s(out),
        ]);
        run(&args, extra, crash_at)
    };
    let whole = root.join("whole.npz");
    sample(&whole, &[], None).success();
    let interrupted = root.join("interrupted.npz");
    killed(&sample(&interrupted, &[], Some("decoded:2")));
    assert!(!interrupted.exists());
    sample(&interrupted, &["--resume"], None).success();
    assert_eq!(images(&interrupted), images(&whole));

    // recon of the samples through the golden tokenizer, killed after its first batch.
    let recon = |out: &Path, extra: &[&str], crash_at: Option<&str>| {
        let args = [
            "recon",
            "--vq",
            s(&vq),
            "--data",
            s(&whole),
            "--metrics",
            "psnr,ssim,codebook",
            "--feature-batch-size",
            "3",
            "--device",
            "cpu",
            "--out",
            s(out),
        ];
        run(&args, extra, crash_at)
    };
    let recon_whole = root.join("recon-whole");
    recon(&recon_whole, &[], None).success();
    let recon_killed = root.join("recon-killed");
    killed(&recon(&recon_killed, &[], Some("committed:1")));
    recon(&recon_killed, &["--resume"], None).success();
    assert_eq!(metrics(&recon_killed), metrics(&recon_whole));
}

#[test]
fn sweep_loads_each_checkpoint_once_and_bad_generators_fail_first() {
    let _cores = all_cores();
    let (root, weights, reference) = &scratch_with_inception(12);
    let common = [
        "--samples",
        "3",
        "--ref",
        s(reference),
        "--inception",
        s(weights),
        "--metrics",
        "fid,is",
    ];
    let out = root.join("sweep");
    let mut args = tiny_gpt("sweep");
    args.extend(["--cfg-scales", "1.0,1.5,3.0", "--out", s(&out)]);
    args.extend_from_slice(&common);
    let output = run(&args, &[], None).success();
    let stderr = output.stderr_text();
    // Each scale's table under its scale, then the closing table: one row per scale in the
    // sweep's order, with its run folder.
    let stdout = output.stdout_text();
    let closing: Vec<&str> = stdout.lines().rev().take(3).collect();
    for (row, scale) in closing.iter().rev().zip(["1", "1.5", "3"]) {
        assert!(stdout.contains(&format!("CFG scale {scale} (")), "{stdout}");
        let fields: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(fields[0], scale, "{stdout}");
        assert!(
            fields[1].parse::<f64>().is_ok(),
            "fid of scale {scale}: {stdout}"
        );
        assert!(row.ends_with(&format!("cfg-{scale}")), "{stdout}");
    }
    assert!(
        stdout.contains("cfg_scale             fid inception_score"),
        "{stdout}"
    );
    let count = |needle: &str| stderr.matches(needle).count();
    assert_eq!(count("and tokenizer"), 1, "{stderr}");
    assert_eq!(count("Inception-V3 loaded"), 1, "{stderr}");
    for scale in ["1", "1.5", "3"] {
        assert!(out.join(format!("cfg-{scale}/metrics.json")).is_file());
    }
    assert!(out.join("report/summary.csv").is_file());
    // Resumed after it finished: every scale is kept as it is.
    let before = metrics(&out.join("cfg-1.5"));
    args.push("--resume");
    let stderr = run(&args, &[], None).success().stderr_text();
    assert_eq!(stderr.matches("already complete").count(), 3, "{stderr}");
    assert_eq!(metrics(&out.join("cfg-1.5")), before);
    // The reference's images changed at the same path: no scale is kept, every one is scored
    // against the new content.
    std::fs::create_dir(root.join("other")).unwrap();
    let (_, other_reference) = random_inception_and_reference(&root.join("other"), 10);
    std::fs::copy(&other_reference, reference).unwrap();
    let stderr = run(&args, &[], None).success().stderr_text();
    assert_eq!(stderr.matches("already complete").count(), 0, "{stderr}");
    assert_ne!(metrics(&out.join("cfg-1.5")), before);

    // Without --n-head the golden GPT's width is outside the registry: refused before any
    // Inception work on the reference.
    let cache = root.join(".feature-cache");
    let _ = std::fs::remove_dir_all(&cache);
    let bad = root.join("bad");
    let mut args = tiny_gpt("fid");
    remove_flag(&mut args, "--n-head");
    args.extend(["--out", s(&bad)]);
    args.extend_from_slice(&common);
    let stderr = run(&args, &[], None).refused_with(&["--n-head"]);
    assert!(!stderr.contains("Inception-V3 loaded"), "{stderr}");
    assert!(
        !cache.exists(),
        "reference features computed before the generator loaded"
    );
    assert!(!bad.exists());
}

#[test]
fn features_and_stats_resume_after_sigkill() {
    let _cores = all_cores();
    let (root, weights, images_npz) = &scratch_with_inception(12);
    let common = [
        "--inception",
        s(weights),
        "--device",
        "cpu",
        "--feature-batch-size",
        "4",
    ];
    let bytes_of = |path: &Path| std::fs::read(path).unwrap();
    for (command, input_flag, extra) in [
        ("features", "--images", &[][..]),
        ("stats", "--data", &["--keep-images", "5"][..]),
    ] {
        let job = |out: &Path, resume: bool, crash_at: Option<&str>| {
            let mut args = vec![command, input_flag, s(images_npz), "--out", s(out)];
            args.extend_from_slice(&common);
            args.extend_from_slice(extra);
            run(&args, if resume { &["--resume"] } else { &[] }, crash_at)
        };
        let whole = root.join(format!("{command}-whole.npz"));
        job(&whole, false, None).success();
        let interrupted = root.join(format!("{command}-killed.npz"));
        killed(&job(&interrupted, false, Some("features:2")));
        assert!(!interrupted.exists(), "{command}: output before the end");
        let stderr = job(&interrupted, true, None).success().stderr_text();
        assert!(
            stderr.contains("resuming after 4 of 12"),
            "{command}: {stderr}"
        );
        // Features read back from the journal bit for bit, statistics accumulated over the same
        // batches: the files are identical.
        assert_eq!(bytes_of(&interrupted), bytes_of(&whole), "{command}");
        let journal = root.join(format!("{command}-killed.npz.journal"));
        assert!(!journal.exists(), "{command}: journal left behind");
    }
}

/// Saves the checkpoint `from` again at `to` with torch, its first floating-point tensor moved
/// by `shift`: a file of the same size whose weights differ when `shift` is not 0.
fn resaved_gpt(from: &Path, to: &Path, shift: f64) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    llamagen_test_support::run_python_code(
        "import sys, torch\n\
         ck = torch.load(sys.argv[1], map_location='cpu', weights_only=False)\n\
         def first(d):\n\
         \x20   for v in d.values():\n\
         \x20       if torch.is_tensor(v) and v.is_floating_point():\n\
         \x20           v.view(-1)[0] += float(sys.argv[3]); return True\n\
         \x20       if isinstance(v, dict) and first(v): return True\n\
         \x20   return False\n\
         assert first(ck)\n\
         torch.save(ck, sys.argv[2])\n",
        &[s(from), s(to), &shift.to_string()],
    );
}

#[test]
fn a_resume_after_a_checkpoint_was_replaced_by_one_of_the_same_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // The same file name in three folders: torch names its archive after the file.
    let original = root.join("a/gpt.pt");
    let other = root.join("b/gpt.pt");
    let used = root.join("run/gpt.pt");
    resaved_gpt(&golden("gpt_public.pt"), &original, 0.0);
    resaved_gpt(&golden("gpt_public.pt"), &other, 0.5);
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert_eq!(size(&original), size(&other), "same-size checkpoints");
    assert_ne!(
        std::fs::read(&original).unwrap(),
        std::fs::read(&other).unwrap()
    );
    std::fs::create_dir_all(used.parent().unwrap()).unwrap();
    std::fs::copy(&original, &used).unwrap();
    let out = root.join("s.npz");
    let sample = |extra: &[&str], crash_at: Option<&str>| {
        let mut args = tiny_gpt("sample");
        set_flag(&mut args, "--gpt", s(&used));
        args.extend(["--samples", "6", "--gen-batch-size", "2", "--out", s(&out)]);
        run(&args, extra, crash_at)
    };
    killed(&sample(&[], Some("committed:1")));
    std::fs::copy(&other, &used).unwrap();
    sample(&["--resume"], None).refused_with(&[
        "the interrupted run was made with other settings",
        "`gpt` was",
        s(&used),
        "sha256",
    ]);
    assert!(!out.exists());
    // The checkpoint it was made with resumes.
    std::fs::copy(&original, &used).unwrap();
    sample(&["--resume"], None).success();
    assert!(out.is_file());
}
