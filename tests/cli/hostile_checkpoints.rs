//! Hostile and broken checkpoints (written by tests/python/fixtures/hostile_checkpoints.py) through
//! the built binary: a pickle that references one memoised 1 MiB string 20,000 times, a `data.pkl`
//! that inflates to 1 GiB, a storage entry that inflates to 10 GiB of which the tensor uses 256 KiB,
//! a storage claiming 2^62 elements, quantized storages, damaged safetensors files. Each gives the
//! right result or a clear error naming the file, with the process's peak memory (its own
//! `wait4` rusage) below 1 GB and its wall time below 30 s.

use std::ffi::OsStr;
use std::fs::File;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use llamagen_test_support as support;
use ndarray::{Array1, Array4};
use ndarray_npy::NpzReader;

use crate::harness::one_core;

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

/// One finished run of the binary and what it cost.
struct Measured {
    args: Vec<String>,
    success: bool,
    stdout: String,
    stderr: String,
    max_rss: u64,
    wall: Duration,
}

impl Measured {
    /// Panics unless the run stayed within [`MAX_RSS`] and [`MAX_WALL`].
    #[track_caller]
    fn within_limits(self) -> Self {
        assert!(
            self.max_rss < MAX_RSS,
            "{:?} peaked at {} MB",
            self.args,
            self.max_rss / 1_000_000
        );
        assert!(self.wall < MAX_WALL, "{:?} took {:?}", self.args, self.wall);
        self
    }

    #[track_caller]
    fn success(self) -> Self {
        assert!(self.success, "{:?} failed:\n{}", self.args, self.stderr);
        self
    }

    /// Panics unless the run failed with a message naming `file` and holding every needle.
    #[track_caller]
    fn error_naming(self, file: &Path, needles: &[&str]) -> Self {
        assert!(
            !self.success,
            "{:?} should have failed:\n{}",
            self.args, self.stdout
        );
        let name = file.file_name().unwrap().to_string_lossy();
        assert!(
            self.stderr.contains(&*name),
            "no file name in:\n{}",
            self.stderr
        );
        for needle in needles {
            assert!(
                self.stderr.contains(needle),
                "{needle:?} not in:\n{}",
                self.stderr
            );
        }
        self
    }
}

/// Runs the binary with `args` (one libtorch thread: the tests run side by side), measuring its
/// peak resident memory from its own rusage and its wall time.
fn measured<S: AsRef<OsStr>>(args: &[S]) -> Measured {
    let out = tempfile::tempdir().unwrap();
    let (stdout_path, stderr_path) = (out.path().join("stdout"), out.path().join("stderr"));
    let start = Instant::now();
    // Waited for below with wait4, which gives its rusage, rather than Child::wait.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(env!("CARGO_BIN_EXE_llamagen-eval"))
        .args(args)
        .env_remove("LLAMAGEN_EVAL_INCEPTION")
        .env("OMP_NUM_THREADS", "1")
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path).unwrap())
        .stderr(File::create(&stderr_path).unwrap())
        .spawn()
        .expect("binary runs");
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value; wait4 fills it for this child only (not for the
    // Python fixtures other tests run meanwhile, as RUSAGE_CHILDREN would).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    // SAFETY: `pid` is our own unwaited child; `status` and `usage` are valid for writes.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4 failed");
    let wall = start.elapsed();
    Measured {
        args: args
            .iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect(),
        success: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        stdout: std::fs::read_to_string(&stdout_path).unwrap(),
        stderr: std::fs::read_to_string(&stderr_path).unwrap(),
        // Linux reports kilobytes.
        max_rss: usage.ru_maxrss as u64 * 1024,
        wall,
    }
}

fn inspect(file: &Path) -> Measured {
    measured(&[OsStr::new("inspect"), file.as_os_str()])
}

/// The images and labels of a sample npz.
type Samples = (Array4<u8>, Array1<i64>);

/// `sample` of 4 images from the golden tokenizer and generator `gpt`; returns the run and the
/// images and labels written.
fn sample(gpt: &Path, out: &Path) -> (Measured, Option<Samples>) {
    let vq = support::golden_dir().join("vq_public.pt");
    let args: Vec<&OsStr> = vec![
        "sample".as_ref(),
        "--gpt".as_ref(),
        gpt.as_os_str(),
        "--vq".as_ref(),
        vq.as_os_str(),
        "--n-head".as_ref(),
        "4".as_ref(),
        "--image-size".as_ref(),
        "64".as_ref(),
        "--samples".as_ref(),
        "4".as_ref(),
        "--device".as_ref(),
        "cpu".as_ref(),
        "--quiet".as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
    ];
    let run = measured(&args);
    let written = run.success.then(|| {
        let mut npz = NpzReader::new(File::open(out).unwrap()).unwrap();
        (npz.by_name("arr_0").unwrap(), npz.by_name("arr_1").unwrap())
    });
    (run, written)
}

#[test]
fn memoised_string_references_are_shared_not_copied() {
    let _cores = one_core();
    let run = inspect(&hostile("memo_strings.pt"))
        .success()
        .within_limits();
    assert!(
        run.stdout.contains("model: 1 tensors, 4 parameters"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("notes = ['xxxx"), "{}", run.stdout);

    // The same notes beside a real generator: it samples exactly as the original file does.
    let dir = tempfile::tempdir().unwrap();
    let (original, want) = sample(
        &support::golden_dir().join("gpt_public.pt"),
        &dir.path().join("original.npz"),
    );
    original.success();
    let (run, got) = sample(
        &hostile("gpt_memo_strings.pt"),
        &dir.path().join("memo.npz"),
    );
    run.success().within_limits();
    assert_eq!(got, want, "images differ from the original checkpoint's");
}

#[test]
fn a_pickle_that_inflates_to_a_gibibyte_is_refused_before_inflating() {
    let _cores = one_core();
    let file = hostile("pickle_bomb.pt");
    inspect(&file).within_limits().error_naming(
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
    inspect(&bomb).success().within_limits();
    let dir = tempfile::tempdir().unwrap();
    let (original, want) = sample(
        &support::golden_dir().join("gpt_public.pt"),
        &dir.path().join("original.npz"),
    );
    original.success();
    let (run, got) = sample(&bomb, &dir.path().join("bomb.npz"));
    run.success().within_limits();
    assert_eq!(got, want, "images differ from the original checkpoint's");
}

#[test]
fn impossible_and_quantized_storages_are_named() {
    let _cores = one_core();
    let huge = hostile("huge_storage.pt");
    let run = inspect(&huge).within_limits().error_naming(
        &huge,
        &[
            "tensor `model.w`",
            "`archive/data/0`",
            "4611686018427387904 float32 elements",
            "more bytes than any file can hold",
        ],
    );
    assert!(!run.stderr.contains("dtype"), "{}", run.stderr);

    let legacy = hostile("qint8_legacy.pt");
    inspect(&legacy).within_limits().error_naming(
        &legacy,
        &[
            "tensor `model.q`",
            "unsupported storage type torch.QInt8Storage (quantized tensors are not supported)",
        ],
    );
    // The zip format describes the tensor; reading it is the error (see the library tests).
    let run = inspect(&hostile("qint8_zip.pt")).success().within_limits();
    assert!(run.stdout.contains("torch.QInt8Storage"), "{}", run.stdout);
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
        let run = inspect(&file).within_limits().error_naming(&file, needles);
        for enum_name in [
            "InvalidHeader",
            "MetadataIncompleteBuffer",
            "Deserialization",
        ] {
            assert!(!run.stderr.contains(enum_name), "{}", run.stderr);
        }
    }
}
