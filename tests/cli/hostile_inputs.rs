//! Hostile and broken inputs (and outputs): each case ends in a clean error or a correct result,
//! within 1 GB of memory and 30 s, and leaves no file in the output folder.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::{
    cli, cli_in_shell, inception_on_cpu, npy_header, s, strings, tiny_gpt, Cli, Run,
};

const GB: u64 = 1 << 30;
const LIMIT: Duration = Duration::from_secs(30);

/// An npz whose entries are (name, leading bytes, count of zero bytes after them), stored or
/// deflated; the zeros are streamed, never held.
fn write_npz(path: &Path, entries: &[(&str, Vec<u8>, u64)], deflate: bool) {
    let mut zip = zip::ZipWriter::new(File::create(path).unwrap());
    let method = if deflate {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(method)
        .large_file(true);
    let chunk = vec![0u8; 1 << 20];
    for (name, bytes, zeros) in entries {
        zip.start_file(*name, options).unwrap();
        zip.write_all(bytes).unwrap();
        let mut left = *zeros;
        while left > 0 {
            let n = left.min(chunk.len() as u64);
            zip.write_all(&chunk[..n as usize]).unwrap();
            left -= n;
        }
    }
    zip.finish().unwrap();
}

/// Files in `dir` (recursively), for "nothing was left behind".
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                found.extend(files_in(&path));
            } else {
                found.push(path);
            }
        }
    }
    found
}

/// `metrics` of the feature file `features` against `reference`, into `out`.
fn metrics_args<'a>(features: &'a Path, reference: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec![
        "metrics",
        "--sample-features",
        s(features),
        "--ref-features",
        s(reference),
        "--out",
        s(out),
    ]
}

#[track_caller]
fn clean_error(run: Run, words: &[&str]) {
    assert_eq!(run.code(), Some(1), "{}", run.stderr_text());
    let stderr = run.stderr_text();
    for word in words {
        assert!(stderr.contains(word), "expected `{word}` in:\n{stderr}");
    }
    assert!(
        !stderr.contains("panicked") && !stderr.contains("ZipWriter"),
        "{stderr}"
    );
}

#[test]
fn header_and_image_bombs_are_refused_before_allocating() {
    let _cores = crate::harness::one_core();
    let (root, weights, reference) = &crate::harness::scratch_with_inception(4);
    let out = root.join("out");
    std::fs::create_dir(&out).unwrap();

    // A statistics file whose `sigma` claims 100,000 x 100,000 float64 (75 GiB) in 1 KB.
    let stats_bomb = root.join("stats_bomb.npz");
    write_npz(
        &stats_bomb,
        &[
            ("mu.npy", npy_header("<f8", &[2048]), 2048 * 8),
            ("sigma.npy", npy_header("<f8", &[100_000, 100_000]), 1000),
        ],
        false,
    );
    let features = root.join("features.npz");
    write_npz(
        &features,
        &[("pool.npy", npy_header("<f4", &[10, 2048]), 10 * 2048 * 4)],
        false,
    );
    // A deflated `sigma` that really holds 288 MB of zeros (in 0.3 MB), read with a budget of
    // 256M: refused by the budget before it is inflated.
    let deflate_bomb = root.join("deflate_bomb.npz");
    write_npz(
        &deflate_bomb,
        &[
            ("mu.npy", npy_header("<f8", &[6000]), 6000 * 8),
            (
                "sigma.npy",
                npy_header("<f8", &[6000, 6000]),
                6000 * 6000 * 8,
            ),
        ],
        true,
    );
    // One 10000 x 10000 image (300 MB of zeros, deflated to 0.3 MB): over the per-image budget,
    // refused before one image is read.
    let big_image = root.join("big_image.npz");
    write_npz(
        &big_image,
        &[(
            "arr_0.npy",
            npy_header("|u1", &[1, 10_000, 10_000, 3]),
            10_000 * 10_000 * 3,
        )],
        true,
    );
    // A PNG whose header claims 30000 x 30000 pixels.
    let folder = root.join("folder");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("a.png"), png_claiming(30_000, 30_000)).unwrap();

    let inception = inception_on_cpu(weights);
    let features_out = out.join("f.npz");
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            metrics_args(&features, &stats_bomb, &out),
            vec!["stats_bomb.npz", "`sigma`", "truncated or corrupt"],
        ),
        (
            [
                metrics_args(&features, &deflate_bomb, &out),
                vec!["--max-input-memory", "256M"],
            ]
            .concat(),
            vec!["deflate_bomb.npz", "`sigma`", "--max-input-memory"],
        ),
        (
            [
                &[
                    "fid",
                    "--sample-batch",
                    s(&big_image),
                    "--ref",
                    s(reference),
                    "--feature-batch-size",
                    "1",
                    "--out",
                    s(&out),
                ][..],
                &inception,
            ]
            .concat(),
            vec!["big_image.npz", "10000x10000", "per-image limit"],
        ),
        (
            [
                &[
                    "features",
                    "--images",
                    s(&folder),
                    "--out",
                    s(&features_out),
                ][..],
                &inception,
            ]
            .concat(),
            vec!["a.png", "per-image limit"],
        ),
    ];
    for (args, words) in cases {
        let run = cli()
            .args(&args)
            .quiet()
            .env("OMP_NUM_THREADS", "1")
            .run_measured()
            .within(GB, LIMIT);
        clean_error(run, &words);
        assert_eq!(files_in(&out), Vec::<PathBuf>::new(), "{args:?}");
    }
    // The budget is the user's to raise: with the default 1G the same statistics are read (and
    // then refused for what they are, 6000-d against 2048-d features, not for their size).
    let run = cli()
        .args(metrics_args(&features, &deflate_bomb, &out))
        .quiet()
        .run_measured()
        .within(GB, LIMIT);
    let stderr = run.stderr_text();
    assert!(
        !stderr.contains("--max-input-memory") && stderr.contains("2048"),
        "{stderr}"
    );
}

/// A PNG of one IHDR chunk claiming `width` x `height` RGB pixels and an empty image stream.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut crc = 0xffff_ffffu32;
        for &byte in kind.iter().chain(data) {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        out.extend(kind);
        out.extend(data);
        out.extend((!crc).to_be_bytes());
        out
    }
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    png.extend(chunk(b"IEND", &[]));
    png
}

/// The arguments of `sample` on the golden models, 24 samples in batches of 8, into `out`.
fn sample_args(out: &Path) -> Vec<String> {
    let mut args = tiny_gpt("sample");
    args.extend(["--samples", "24", "--gen-batch-size", "8", "--out", s(out)]);
    strings(&args)
}

/// `sample_args` with `extra` flags, quiet and single-threaded.
fn sample(out: &Path, extra: &[&str]) -> Cli {
    cli()
        .args(sample_args(out))
        .args(extra)
        .quiet()
        .one_thread()
}

#[test]
fn damaged_resume_state_is_refused_or_ignored_never_trusted() {
    let _cores = crate::harness::one_core();
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole.npz");
    sample(&whole, &[]).run().success();
    let expected = samples_of(&whole);

    let out = dir.path().join("s.npz");
    let journal = dir.path().join("s.npz.journal");
    let interrupt = || {
        let _ = std::fs::remove_dir_all(&journal);
        let run = sample(&out, &["--stop-after", "8"]).run();
        assert!(run.stderr_text().contains("resume the run to continue"));
    };
    // A token id edited to one outside the codebook: refused by the batch's checksum, with a
    // message, nothing written.
    interrupt();
    let tokens = journal.join("tokens.bin");
    let mut bytes = std::fs::read(&tokens).unwrap();
    bytes[..4].copy_from_slice(&99_999i32.to_le_bytes());
    std::fs::write(&tokens, &bytes).unwrap();
    let run = sample(&out, &["--resume"]).run_measured().within(GB, LIMIT);
    clean_error(
        run,
        &["images 0..8 do not match their checksum", "edited, damaged"],
    );
    assert!(!out.exists());

    // Records beyond what the progress file vouches for (a kill between the two writes, or a
    // doctored file): ignored, and the result equals an uninterrupted run's.
    interrupt();
    let mut bytes = std::fs::read(&tokens).unwrap();
    let copy = bytes.clone();
    bytes.extend(copy);
    std::fs::write(&tokens, &bytes).unwrap();
    sample(&out, &["--resume"]).run().success();
    assert_eq!(samples_of(&out), expected);
}

/// `arr_0` and `arr_1` (images and labels) of a sample npz.
fn samples_of(path: &Path) -> (ndarray::Array4<u8>, ndarray::Array1<i64>) {
    let mut npz = ndarray_npy::NpzReader::new(File::open(path).unwrap()).unwrap();
    (npz.by_name("arr_0").unwrap(), npz.by_name("arr_1").unwrap())
}

#[test]
fn outputs_are_checked_first_and_a_full_disk_leaves_nothing() {
    let _cores = crate::harness::one_core();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let folder = root.join("existing");
    std::fs::create_dir(&folder).unwrap();
    // An output that is a folder is refused before the models are even loaded.
    for out in [
        folder.clone(),
        PathBuf::from(format!("{}/", folder.display())),
    ] {
        let run = sample(&out, &[]).run_measured().within(GB, LIMIT);
        clean_error(run, &["is a folder: give a file name"]);
    }
    let grid_dir = sample(&root.join("s.npz"), &["--grid", s(&folder)]).run();
    clean_error(grid_dir, &["existing", "is a folder"]);
    assert!(!root.join("s.npz").exists());
    assert_eq!(files_in(&folder), Vec::<PathBuf>::new());

    // A temporary left by a process that no longer runs is removed by the next write.
    let out = folder.join("s.npz");
    let stale = folder.join(".s.npz.tmp-2147483000");
    std::fs::write(&stale, vec![0u8; 4096]).unwrap();

    // A full disk, as a file size limit (the same ENOSPC-like failure for any user): the run
    // fails naming the file, keeps its journal for --resume, and leaves no temporary behind.
    let run = cli_in_shell("trap '' XFSZ; ulimit -f 64; exec \"$@\"")
        .arg("-q")
        .args(sample_args(&out))
        .one_thread()
        .run_measured()
        .within(GB, LIMIT);
    clean_error(run, &["s.npz", "File too large", "hint: the disk"]);
    let left: Vec<PathBuf> = files_in(&folder)
        .into_iter()
        .filter(|p| !p.starts_with(folder.join("s.npz.journal")))
        .collect();
    assert_eq!(left, Vec::<PathBuf>::new());
    // With room again, the run resumes to the full result.
    sample(&out, &["--resume"]).run().success();
    assert_eq!(files_in(&folder), vec![out.clone()]);
}

#[test]
fn tiny_sets_leave_out_precision_and_a_failed_cache_write_only_warns() {
    let _cores = crate::harness::one_core();
    let (root, weights, reference) = &crate::harness::scratch_with_inception(8);
    let three = root.join("three.npz");
    let images = ndarray::Array4::from_shape_fn((3, 32, 32, 3), |(i, y, x, c)| {
        ((x * 5 + y * 11 + i * 17 + c * 40) % 256) as u8
    });
    let mut npz = ndarray_npy::NpzWriter::new(File::create(&three).unwrap());
    npz.add_array("arr_0", &images).unwrap();
    npz.finish().unwrap();
    // The feature cache's folder is taken by a file: the cache cannot be written.
    let runs = root.join("runs");
    std::fs::create_dir(&runs).unwrap();
    std::fs::write(runs.join(".feature-cache"), b"not a folder").unwrap();
    let out = runs.join("tiny");
    let run = cli()
        .args(["fid", "--sample-batch", s(&three), "--ref", s(reference)])
        .args(inception_on_cpu(weights))
        .args(["--out", s(&out)])
        .env("OMP_NUM_THREADS", "1")
        .run()
        .success();
    assert!(
        run.stderr_text().contains("features not cached"),
        "{}",
        run.stderr_text()
    );
    let metrics = crate::harness::metrics_json(&out);
    assert!(metrics["metrics"]["fid"].is_number());
    assert!(metrics["metrics"].get("precision").is_none(), "{metrics}");
    // Asked for explicitly, it is an error that says why.
    let asked = cli()
        .args(["fid", "--sample-batch", s(&three), "--ref", s(reference)])
        .args(inception_on_cpu(weights))
        .args(["--out", s(&root.join("asked")), "--metrics", "pr"])
        .quiet()
        .env("OMP_NUM_THREADS", "1")
        .run();
    clean_error(asked, &["`pr` was asked for", "more than k = 3"]);
}

#[test]
fn check_refuses_incomplete_run_folders() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let baseline = root.join("baseline.json");
    std::fs::write(&baseline, r#"{"metrics": {"fid": 3.0}}"#).unwrap();
    // Killed before metrics.json, and interrupted (its journal still there) over an older result.
    let csv_only = root.join("csv_only");
    std::fs::create_dir(&csv_only).unwrap();
    std::fs::write(csv_only.join("metrics.csv"), "fid\n3.0\n").unwrap();
    let interrupted = root.join("interrupted");
    std::fs::create_dir_all(interrupted.join(".journal")).unwrap();
    std::fs::write(
        interrupted.join("metrics.json"),
        r#"{"metrics": {"fid": 3.0}}"#,
    )
    .unwrap();
    for run_dir in [&csv_only, &interrupted] {
        let run = cli()
            .args(["check", "--run", s(run_dir), "--baseline", s(&baseline)])
            .run();
        assert_eq!(run.code(), Some(2), "{}", run.stderr_text());
        assert!(
            run.stderr_text().contains("is incomplete"),
            "{}",
            run.stderr_text()
        );
    }
}

#[test]
fn loops_odd_paths_and_absurd_sizes_fail_fast_or_work() {
    use std::os::unix::ffi::OsStrExt;
    let _cores = crate::harness::one_core();
    let (root, weights, reference) = &crate::harness::scratch_with_inception(4);
    let inception = inception_on_cpu(weights);
    let out = root.join("out");
    std::fs::create_dir(&out).unwrap();

    // Two symlink loops beside real images: refused at once, naming the link.
    let folder = root.join("folder");
    std::fs::create_dir_all(folder.join("sub")).unwrap();
    for i in 0..4 {
        let image =
            image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([(x * 8) as u8, (y * 8) as u8, i]));
        image.save(folder.join(format!("{i}.png"))).unwrap();
    }
    std::os::unix::fs::symlink(".", folder.join("loop")).unwrap();
    std::os::unix::fs::symlink("..", folder.join("sub/up")).unwrap();
    let run = cli()
        .args([
            "features",
            "--images",
            s(&folder),
            "--out",
            s(&out.join("f.npz")),
        ])
        .args(inception)
        .quiet()
        .run_measured()
        .within(GB, LIMIT);
    clean_error(run, &["symlink loop"]);
    assert_eq!(files_in(&out), Vec::<PathBuf>::new());

    // Paths that are not UTF-8 are paths like any other.
    let odd = root.join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
    std::fs::create_dir(&odd).unwrap();
    let samples = odd.join("samples.npz");
    std::fs::copy(reference, &samples).unwrap();
    let mut odd_args: Vec<std::ffi::OsString> = vec!["fid".into(), "--sample-batch".into()];
    odd_args.extend([
        samples.into_os_string(),
        "--ref".into(),
        reference.clone().into(),
    ]);
    odd_args.extend(["--out".into(), odd.join("run").into_os_string()]);
    cli()
        .args(&odd_args)
        .args(inception)
        .quiet()
        .env("OMP_NUM_THREADS", "1")
        .run_measured()
        .within(GB, LIMIT)
        .success();
    assert!(odd.join("run/metrics.json").is_file());

    // Sizes are checked before models load or memory is taken.
    for (extra, words) in [
        (
            &["--samples", "18446744073709551615"][..],
            "at most 100000000 samples",
        ),
        (&["--samples", "0"][..], "ask for at least one sample"),
        (&["--image-size", "1048576"][..], "was trained at 64 px"),
        (&["--labels", "99999999999"][..], "out of range"),
    ] {
        // The flag under test replaces the default's value.
        let mut args = sample_args(&out.join("s.npz"));
        let at = args.iter().position(|a| a == extra[0]);
        if let Some(at) = at {
            args.drain(at..at + 2);
        }
        let run = cli()
            .args(&args)
            .args(extra)
            .quiet()
            .run_measured()
            .within(GB, LIMIT);
        clean_error(run, &[words]);
    }
    assert_eq!(files_in(&out), Vec::<PathBuf>::new());
}
