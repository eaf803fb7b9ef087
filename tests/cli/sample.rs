//! End to end: `llamagen-eval sample` reproduces LlamaGen's greedy images from the golden
//! checkpoints; samples do not depend on batch size, sharding or interruption; bad inputs fail
//! before sampling; `fid --gpt` streams the same images through the metrics.

use std::fs::File;
use std::path::{Path, PathBuf};

use llamagen_test_support as support;
use ndarray::{Array1, Array4};
use ndarray_npy::NpzReader;
use tch::{Kind, Tensor};

use crate::harness::{
    golden, llamagen_eval, metrics_json, one_core, remove_flag, s, scored_against,
    scratch_with_inception, set_flag, tiny_gpt, Run,
};

/// `sample` on the golden models with extra flags.
fn sample(out: &Path, extra: &[&str]) -> Run {
    let mut args = tiny_gpt("sample");
    args.extend(["--quiet", "--out", s(out)]);
    args.extend_from_slice(extra);
    llamagen_eval(&args)
}

fn read(path: &Path) -> (Array4<u8>, Array1<i64>) {
    let mut npz = NpzReader::new(File::open(path).unwrap()).unwrap();
    (npz.by_name("arr_0").unwrap(), npz.by_name("arr_1").unwrap())
}

#[test]
fn greedy_samples_reproduce_the_golden_images() {
    let _cores = one_core();
    let dir = tempfile::tempdir().unwrap();
    let io: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(golden("gpt_public_io.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    for (scale, interval) in [("1.0", "-1"), ("1.75", "-1"), ("4.0", "-1"), ("4.0", "5")] {
        let out = dir.path().join(format!("g{scale}_{interval}.npz"));
        let grid = dir.path().join("grid.png");
        sample(
            &out,
            &[
                "--labels",
                "0,1,2",
                "--top-k",
                "1",
                "--cfg-scale",
                scale,
                "--cfg-interval",
                interval,
                "--grid",
                s(&grid),
            ],
        )
        .success();
        let (images, labels) = read(&out);
        assert_eq!(labels.to_vec(), vec![0, 1, 2]);
        let key = format!("greedy_cfg{scale}_interval{interval}_images_uint8_nhwc");
        let expected = Vec::<u8>::try_from(io[&key].to_kind(Kind::Uint8).view([-1])).unwrap();
        assert_eq!(images.dim(), (3, 64, 64, 3));
        let ours = images.as_slice().unwrap();
        let off: Vec<i32> = ours
            .iter()
            .zip(&expected)
            .map(|(&a, &b)| (i32::from(a) - i32::from(b)).abs())
            .filter(|&d| d > 0)
            .collect();
        // The tokenizer issue's rounding allowance: at most 0.1% of values off, by at most 1.
        assert!(
            off.iter().all(|&d| d <= 1) && off.len() * 1000 <= ours.len(),
            "{key}: {} values differ (max {:?})",
            off.len(),
            off.iter().max()
        );
        assert!(std::fs::metadata(&grid).unwrap().len() > 100);
        assert!(!Path::new(&format!("{}.journal", out.display())).exists());
    }
}

/// `--batch-size`, the generation batch's name in `sample` before it meant the feature networks'
/// batch elsewhere, still sets the generation batch, with a note naming --gen-batch-size; given
/// with --gen-batch-size it is refused.
#[test]
fn the_old_batch_size_spelling_still_sets_the_generation_batch() {
    let _cores = one_core();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("old.npz");
    let mut args = tiny_gpt("sample");
    args.extend(["--samples", "2", "--batch-size", "2", "--out", s(&out)]);
    let stderr = llamagen_eval(&args).success().stderr_text();
    assert!(
        stderr.contains("note: --batch-size of `sample` is now --gen-batch-size"),
        "{stderr}"
    );
    assert!(stderr.contains("generation batch 2,"), "{stderr}");
    assert_eq!(read(&out).0.dim(), (2, 64, 64, 3));
    args.extend(["--gen-batch-size", "1"]);
    llamagen_eval(&args).refused_with(&["--batch-size", "cannot be used with", "--gen-batch-size"]);
}

/// Random sampling (with guidance) of 5 samples: few, as every image costs a decode.
const RANDOM: [&str; 6] = ["--samples", "5", "--cfg-scale", "2.0", "--seed", "7"];

#[test]
fn samples_do_not_depend_on_batch_size_shards_or_interruption() {
    let _cores = one_core();
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let mut runs = Vec::new();
    // One decode batch throughout: its shape, unlike the generation batch's, changes the
    // decoder's rounding.
    for bs in ["1", "3", "8", "auto"] {
        let out = p(&format!("bs{bs}.npz"));
        let mut args = RANDOM.to_vec();
        args.extend(["--gen-batch-size", bs, "--decode-batch-size", "2"]);
        sample(&out, &args).success();
        runs.push(read(&out));
    }
    assert_eq!(runs[0], runs[1], "batch size 1 vs 3");
    assert_eq!(runs[0], runs[2], "batch size 1 vs 8 (one padded batch)");
    assert_eq!(runs[0], runs[3], "batch size 1 vs auto");
    let (images, labels) = &runs[0];
    assert!(labels.iter().all(|l| (0..10).contains(l)));
    // Random sampling: the 8 images are not all alike.
    assert_ne!(
        images.index_axis(ndarray::Axis(0), 0),
        images.index_axis(ndarray::Axis(0), 1)
    );

    // Shards 0/2 and 1/2, merged.
    for k in ["0", "1"] {
        let mut args = RANDOM.to_vec();
        let shard = format!("{k}/2");
        args.extend([
            "--gen-batch-size",
            "3",
            "--decode-batch-size",
            "2",
            "--shard",
            &shard,
        ]);
        sample(&p(&format!("shard{k}.npz")), &args).success();
    }
    let (shard1, labels1) = read(&p("shard1.npz"));
    assert_eq!(shard1.dim().0, 2);
    assert_eq!(labels1[0], labels[1]);
    let merged = p("merged.npz");
    llamagen_eval(&[
        "merge",
        s(&p("shard1.npz")),
        s(&p("shard0.npz")),
        "--out",
        s(&merged),
        "--quiet",
    ])
    .success();
    assert_eq!(read(&merged), runs[0], "merged shards vs one run");

    // Interrupted after 2 new samples (one batch of 2, decoded 2 at a time), then resumed with
    // another batch size: the resume keeps the interrupted run's decode batch.
    let out = p("resumed.npz");
    let mut args = RANDOM.to_vec();
    args.extend(["--gen-batch-size", "2", "--stop-after", "2"]);
    let crashed = sample(&out, &args);
    assert!(!crashed.succeeded());
    assert!(!out.exists());
    let tokens = PathBuf::from(format!("{}.journal/tokens.bin", out.display()));
    assert_eq!(std::fs::metadata(&tokens).unwrap().len(), 2 * 16 * 4);
    // Other settings refuse to resume.
    let mut other = RANDOM.to_vec();
    other.extend(["--resume", "--top-k", "5"]);
    let refused = sample(&out, &other);
    assert!(!refused.succeeded());
    let stderr = refused.stderr_text();
    assert!(stderr.contains("other settings"), "{stderr}");
    assert!(stderr.contains("`top_k` was 0, now 5"), "{stderr}");
    assert!(
        stderr.contains("--top-k 0"),
        "the flag to rerun with: {stderr}"
    );
    let mut args = RANDOM.to_vec();
    args.extend(["--gen-batch-size", "5", "--resume"]);
    let resumed = sample(&out, &args).success();
    assert!(resumed.stderr_text().contains("resuming after 2"));
    assert_eq!(read(&out), runs[0], "resumed vs uninterrupted");
    assert!(!tokens.exists());
}

/// A GPT state dict as safetensors, with `rename` applied to the class-embedding key and the
/// given vocabulary.
fn fake_gpt(path: &Path, vocab: i64, class_key: &str) {
    let dim = 64;
    let mut tensors = vec![
        (
            class_key.to_owned(),
            Tensor::zeros([11, dim], (Kind::Float, tch::Device::Cpu)),
        ),
        (
            "tok_embeddings.weight".to_owned(),
            Tensor::zeros([vocab, dim], (Kind::Float, tch::Device::Cpu)),
        ),
        (
            "output.weight".to_owned(),
            Tensor::zeros([vocab, dim], (Kind::Float, tch::Device::Cpu)),
        ),
        (
            "norm.weight".to_owned(),
            Tensor::ones([dim], (Kind::Float, tch::Device::Cpu)),
        ),
    ];
    let l = "layers.0.";
    for (name, shape) in [
        ("attention.wqkv.weight", vec![3 * dim, dim]),
        ("attention.wo.weight", vec![dim, dim]),
        ("feed_forward.w1.weight", vec![256, dim]),
        ("feed_forward.w3.weight", vec![256, dim]),
        ("feed_forward.w2.weight", vec![dim, 256]),
        ("attention_norm.weight", vec![dim]),
        ("ffn_norm.weight", vec![dim]),
    ] {
        tensors.push((
            format!("{l}{name}"),
            Tensor::zeros(shape.as_slice(), (Kind::Float, tch::Device::Cpu)),
        ));
    }
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(&refs, path).unwrap();
}

#[test]
fn bad_inputs_fail_before_sampling() {
    let _cores = one_core();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.npz");
    let fails = |output: Run, expected: &str| {
        let stderr = output.stderr_text();
        assert!(!output.succeeded(), "should fail: {expected}");
        assert!(
            stderr.contains(expected),
            "expected `{expected}` in: {stderr}"
        );
        assert!(!out.exists());
    };
    fails(
        sample(&out, &["--labels", "3,10"]),
        "class label 10 is out of range: the model has 10 classes",
    );
    // Sample counts are checked before anything is loaded or allocated.
    fails(
        sample(&out, &["--samples", "0"]),
        "--samples 0: ask for at least one sample",
    );
    fails(
        sample(&out, &["--samples", "2", "--image-size-eval", "100000"]),
        "--image-size-eval 100000: the evaluated size must be between 1 and 8192",
    );
    for huge in ["18446744073709551615", "1000000000000"] {
        fails(
            sample(&out, &["--samples", huge]),
            "at most 100000000 samples per run",
        );
    }
    // The generation size: the golden models' 64 px replaced.
    let at_size = |size: &'static str| {
        let mut args = tiny_gpt("sample");
        set_flag(&mut args, "--image-size", size);
        args.extend(["--samples", "2", "--out", s(&out)]);
        llamagen_eval(&args)
    };
    fails(at_size("128"), "trained at 64 px");
    fails(
        at_size("72"),
        "multiple of the tokenizer's downsampling factor 16",
    );
    let small_vocab = dir.path().join("vocab512.safetensors");
    fake_gpt(&small_vocab, 512, "cls_embedding.embedding_table.weight");
    let run = |gpt: &Path| {
        let mut args = tiny_gpt("sample");
        set_flag(&mut args, "--gpt", s(gpt));
        args.extend(["--samples", "2", "--out", s(&out)]);
        llamagen_eval(&args)
    };
    fails(
        run(&small_vocab),
        "codebook has 1024 entries but the GPT's vocabulary is 512",
    );
    let t2i = dir.path().join("t2i.safetensors");
    fake_gpt(&t2i, 1024, "cls_embedding.cap_proj.fc1.weight");
    fails(run(&t2i), "text-to-image (t2i) checkpoint");
    // The golden command line without its `--n-head 4` (and nothing else missing).
    let mut without_heads = tiny_gpt("sample");
    remove_flag(&mut without_heads, "--n-head");
    without_heads.extend(["--samples", "2", "--out", s(&out)]);
    let refused = llamagen_eval(&without_heads);
    let stderr = refused.stderr_text();
    fails(
        refused,
        "pass --n-head N or --gpt-model NAME (`llamagen-eval inspect",
    );
    // The chain says which checkpoint it is (the generator) and names its file once (the hint
    // under it names it again, in the command to run).
    let gpt = golden("gpt_public.pt");
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default();
    assert!(
        error.contains(&format!("generator: {}: model dim 64", gpt.display())),
        "{stderr}"
    );
    assert_eq!(error.matches(s(&gpt)).count(), 1, "{stderr}");
}

#[test]
fn fid_with_a_generator_streams_the_sampled_images() {
    let _cores = one_core();
    // Random Inception weights (the comparison is streamed vs from a file, not against
    // published numbers) and a fixed reference batch.
    let (root, weights, reference) = &scratch_with_inception(10);
    let saved = root.join("saved.npz");
    let (gen_out, file_out) = (root.join("gen"), root.join("file"));
    let common_args = [
        "--ref",
        s(reference),
        "--inception",
        s(weights),
        "--metrics",
        "is",
        "--quiet",
    ];
    let mut generate = tiny_gpt("fid");
    generate.extend([
        "--samples",
        "4",
        "--seed",
        "3",
        "--gen-batch-size",
        "4",
        "--feature-batch-size",
        "4",
    ]);
    generate.extend_from_slice(&common_args);
    let mut args = generate.clone();
    args.extend(["--save-samples", s(&saved), "--out", s(&gen_out)]);
    llamagen_eval(&args).success();
    let (images, _) = read(&saved);
    assert_eq!(images.dim(), (4, 64, 64, 3));
    let mut args = vec![
        "fid",
        "--sample-batch",
        s(&saved),
        "--device",
        "cpu",
        "--out",
        s(&file_out),
    ];
    args.extend_from_slice(&common_args);
    llamagen_eval(&args).success();
    let fid = |dir: &str| metrics_json(&root.join(dir));
    let (a, b) = (fid("gen"), fid("file"));
    // The Inception Score of 4 samples (FID of so few is a singular-covariance figure, too
    // unstable for an equality check): the same features give the same score.
    let (ia, ib) = (
        a["metrics"]["inception_score"].as_f64().unwrap(),
        b["metrics"]["inception_score"].as_f64().unwrap(),
    );
    assert!(
        support::rel_diff(ia, ib) < 1e-9,
        "streamed {ia} vs from file {ib}"
    );
    assert_eq!(a["run"]["n_samples"], 4);
    assert!(gen_out.join("grid.png").is_file());
    assert!(a["run"]["throughput"]["tokens_per_s"].as_f64().unwrap() > 0.0);
    // Both sample sources at once are refused: the generator run above, complete, with
    // `--sample-batch` added, and nothing written.
    let both_out = root.join("both");
    let mut args = generate;
    args.extend(["--out", s(&both_out), "--sample-batch", s(&saved)]);
    llamagen_eval(&args).refused_with(&["--sample-batch", "cannot be used with", "--gpt"]);
    assert!(!both_out.exists());
}

/// Sampling on its own thread (the default) and `--no-overlap` give the same tokens (journaled
/// by runs stopped after 4 samples), the same saved images and the same metrics.
#[test]
fn fid_with_a_generator_is_identical_with_and_without_overlap() {
    let _cores = one_core();
    let (root, weights, reference) = &scratch_with_inception(10);
    let run = |name: &str, extra: &[&str]| {
        let out = root.join(name);
        let saved = out.join("samples.npz");
        let mut args = tiny_gpt("fid");
        args.extend([
            "--samples",
            "7",
            "--seed",
            "11",
            "--cfg-scale",
            "2.0",
            // Batches of 3, 3 and a padded 1; Inception 4 at a time, across generation batches.
            "--gen-batch-size",
            "3",
            "--feature-batch-size",
            "4",
            "--metrics",
            "fid,is",
            "--quiet",
            "--save-samples",
            s(&saved),
            "--out",
            s(&out),
        ]);
        args.extend(scored_against(reference, weights));
        args.extend_from_slice(extra);
        (llamagen_eval(&args), out)
    };
    let tokens = |out: &Path| std::fs::read(out.join(".journal/tokens.bin")).unwrap();
    let (stopped, overlapped) = run("stopped-overlap", &["--stop-after", "4"]);
    assert!(!stopped.succeeded());
    let (stopped, sequential) = run("stopped-sequential", &["--stop-after", "4", "--no-overlap"]);
    assert!(!stopped.succeeded());
    assert_eq!(tokens(&overlapped).len(), 4 * 16 * 4);
    assert_eq!(tokens(&overlapped), tokens(&sequential), "journaled tokens");

    let (done, overlapped) = run("overlap", &[]);
    done.success();
    let (done, sequential) = run("sequential", &["--no-overlap"]);
    done.success();
    let (a, b) = (metrics_json(&overlapped), metrics_json(&sequential));
    assert_eq!(a["metrics"], b["metrics"]);
    let saved = |out: &Path| read(&out.join("samples.npz"));
    assert_eq!(saved(&overlapped), saved(&sequential), "saved samples");
    let (ta, tb) = (&a["run"]["throughput"], &b["run"]["throughput"]);
    assert_eq!(
        (ta["overlap"].as_bool(), tb["overlap"].as_bool()),
        (Some(true), Some(false))
    );
    for t in [ta, tb] {
        assert_eq!(t["generation_batch_size"], 3);
        assert_eq!(t["decode_batch_size"], 3);
        assert_eq!(t["inception_batch_size"], 4);
        assert_eq!(t["device"], "cpu");
        assert_eq!(t["dtype"], "float32");
        assert!(t["wall_s"].as_f64().unwrap() > 0.0);
    }
}

/// Every file under `dir` with its size and modification time.
fn listing(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = entry.metadata().unwrap();
        if meta.is_dir() {
            files.extend(listing(&entry.path()));
        } else {
            files.push((entry.path(), meta.len(), meta.modified().unwrap()));
        }
    }
    files.sort();
    files
}

#[test]
fn a_second_run_on_one_output_is_refused_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let alone = dir.path().join("alone.npz");
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let out = shared.join("s.npz");
    let flags = ["--samples", "8", "--gen-batch-size", "4"];
    sample(&alone, &flags).success();
    let (first, pid, second, waited) = std::thread::scope(|scope| {
        let first = scope.spawn(|| sample(&out, &flags));
        // The first run writes its pid into its lock once it holds it; stopped there, it holds
        // the output while the second starts.
        let lock = shared.join("s.npz.lock");
        let started = std::time::Instant::now();
        let pid: i32 = loop {
            let text = std::fs::read_to_string(&lock).unwrap_or_default();
            if let Some(pid) = text
                .strip_prefix("pid ")
                .and_then(|t| t.split_whitespace().next())
                .and_then(|p| p.parse().ok())
            {
                break pid;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(60),
                "no lock"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        // SAFETY: `pid` is the first run, our child, which has not been waited for.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        let before = listing(&shared);
        let started = std::time::Instant::now();
        let second = sample(&out, &flags);
        let waited = started.elapsed();
        assert_eq!(
            listing(&shared),
            before,
            "the refused run touched the output"
        );
        // SAFETY: as above.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
        (first.join().unwrap(), pid, second, waited)
    });
    second.failure().refused_with(&[
        "another run is writing this output",
        &format!("pid {pid} on "),
        "s.npz",
    ]);
    assert!(waited < std::time::Duration::from_secs(10), "{waited:?}");
    eprintln!("refused after {waited:?}");
    first.success();
    assert_eq!(read(&out), read(&alone), "the first run's samples");
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&alone).unwrap());
    assert!(!shared.join("s.npz.lock").exists(), "lock left behind");
}
