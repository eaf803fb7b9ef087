//! Hostile and broken checkpoints (written by tests/python/fixtures/hostile_checkpoints.py) through
//! the built binary: a pickle that references one memoised 1 MiB string 20,000 times, a `data.pkl`
//! that inflates to 1 GiB, a storage entry that inflates to 10 GiB of which the tensor uses 256 KiB,
//! a storage claiming 2^62 elements, quantized storages, damaged safetensors files. Each gives the
//! right result or a clear error naming the file, with the process's peak memory (its own
//! `wait4` rusage) below 1 GB and its wall time below 30 s.

use std::fs::File;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use llamagen_test_support as support;
use ndarray::{Array1, Array4};
use ndarray_npy::NpzReader;

use crate::harness::{cli, golden, one_core, s, set_flag, tiny_gpt, Measured, Run};

/// Peak resident memory every run must stay below.
const MAX_RSS: u64 = 1_000_000_000;
/// Wall time every run must stay below.
const MAX_WALL: Duration = Duration::from_secs(30);

const SCRIPT: &str = "fixtures/hostile_checkpoints.py";

/// The hostile files, written once per script version into this target's test folder.
fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = std::fs::read(support::script_path(SCRIPT)).expect("fixture script");
        let mut hasher = DefaultHasher::new();
        script.hash(&mut hasher);
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let dir = tmp.join(format!("hostile-checkpoints-{:016x}", hasher.finish()));
        if !dir.is_dir() {
            let fresh = tempfile::tempdir_in(tmp).expect("temporary folder");
            support::run_reference(SCRIPT, &[fresh.path(), &support::golden_dir()]);
            // Another test process may have finished first; either folder holds the same files.
            let _ = std::fs::rename(fresh.keep(), &dir);
        }
        dir
    })
}

fn hostile(name: &str) -> PathBuf {
    let path = fixtures().join(name);
    assert!(path.is_file(), "{} was not written", path.display());
    path
}

/// Runs the binary with `args` (one libtorch thread: the tests run side by side), measuring its
/// peak resident memory (its own rusage) and its wall time.
fn measured<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Measured {
    cli().args(args).one_thread().run_measured()
}

/// `inspect FILE`; panics unless it stayed within [`MAX_RSS`] and [`MAX_WALL`].
#[track_caller]
fn inspect(file: &Path) -> Run {
    measured(&[Path::new("inspect"), file]).within(MAX_RSS, MAX_WALL)
}

/// Panics unless the run failed with a message naming `file` and holding every needle; returns
/// its stderr.
#[track_caller]
fn error_naming(run: &Run, file: &Path, needles: &[&str]) -> String {
    let name = file.file_name().unwrap().to_string_lossy();
    let stderr = run.refused_with(&[&name]);
    run.refused_with(needles);
    stderr
}

/// The images and labels of a sample npz.
type Samples = (Array4<u8>, Array1<i64>);

/// `sample` of 4 images from the golden tokenizer and generator `gpt` (the golden one, or a
/// hostile file beside it); returns the run and the images and labels written.
fn sample(gpt: &Path, out: &Path) -> (Measured, Option<Samples>) {
    let mut args = tiny_gpt("sample");
    set_flag(&mut args, "--gpt", s(gpt));
    args.extend(["--samples", "4", "--quiet", "--out", s(out)]);
    let run = measured(&args);
    let written = run.run.succeeded().then(|| {
        let mut npz = NpzReader::new(File::open(out).unwrap()).unwrap();
        (npz.by_name("arr_0").unwrap(), npz.by_name("arr_1").unwrap())
    });
    (run, written)
}

/// Panics unless `sample` of the generator `gpt` (a hostile file) succeeds within the limits and
/// writes the images and labels of the golden generator's.
#[track_caller]
fn assert_samples_as_the_original(gpt: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let (original, want) = sample(&golden("gpt_public.pt"), &dir.path().join("original.npz"));
    original.run.success();
    let (run, got) = sample(gpt, &dir.path().join("hostile.npz"));
    run.within(MAX_RSS, MAX_WALL).success();
    assert_eq!(got, want, "images differ from the original checkpoint's");
}

#[test]
fn memoised_string_references_are_shared_not_copied() {
    let _cores = one_core();
    let stdout = inspect(&hostile("memo_strings.pt")).success().stdout_text();
    assert!(
        stdout.contains("model: 1 tensors, 4 parameters"),
        "{stdout}"
    );
    assert!(stdout.contains("notes = ['xxxx"), "{stdout}");

    // The same notes beside a real generator: it samples exactly as the original file does.
    assert_samples_as_the_original(&hostile("gpt_memo_strings.pt"));
}

#[test]
fn a_pickle_that_inflates_to_a_gibibyte_is_refused_before_inflating() {
    let _cores = one_core();
    let file = hostile("pickle_bomb.pt");
    error_naming(
        &inspect(&file),
        &file,
        &[
            "`archive/data.pkl`",
            "inflates to 1 GiB",
            "budget",
            "--max-input-memory",
        ],
    );
}

#[test]
fn a_storage_that_inflates_to_ten_gibibytes_is_read_only_where_the_tensor_is() {
    let _cores = one_core();
    let bomb = hostile("gpt_zip_bomb.pt");
    assert!(std::fs::metadata(&bomb).unwrap().len() < 20_000_000);
    inspect(&bomb).success();
    assert_samples_as_the_original(&bomb);
}

#[test]
fn impossible_and_quantized_storages_are_named() {
    let _cores = one_core();
    let huge = hostile("huge_storage.pt");
    let stderr = error_naming(
        &inspect(&huge),
        &huge,
        &[
            "tensor `model.w`",
            "`archive/data/0`",
            "4611686018427387904 float32 elements",
            "more bytes than any file can hold",
        ],
    );
    assert!(!stderr.contains("dtype"), "{stderr}");

    let legacy = hostile("qint8_legacy.pt");
    error_naming(
        &inspect(&legacy),
        &legacy,
        &[
            "tensor `model.q`",
            "unsupported storage type torch.QInt8Storage (quantized tensors are not supported)",
        ],
    );
    // The zip format describes the tensor; reading it is the error (see the library tests).
    let run = inspect(&hostile("qint8_zip.pt")).success();
    let stdout = run.stdout_text();
    assert!(stdout.contains("torch.QInt8Storage"), "{stdout}");
}

#[test]
fn damaged_safetensors_get_sentences_not_enum_names() {
    let _cores = one_core();
    for (name, needles) in [
        (
            "bad_json.safetensors",
            &["the header is not valid safetensors JSON"][..],
        ),
        (
            "short_data.safetensors",
            &["truncated", "16 bytes of tensor data", "holds 12"][..],
        ),
        (
            "trailing_bytes.safetensors",
            &["5 bytes after the last tensor's data"][..],
        ),
    ] {
        let file = hostile(name);
        let stderr = error_naming(&inspect(&file), &file, needles);
        for enum_name in [
            "InvalidHeader",
            "MetadataIncompleteBuffer",
            "Deserialization",
        ] {
            assert!(!stderr.contains(enum_name), "{stderr}");
        }
    }
}
