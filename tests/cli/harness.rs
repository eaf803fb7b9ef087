//! Running the built `llamagen-eval` binary: [`Cli`] builds one invocation, [`Run`] is its outcome.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// One invocation of the binary under test. It never sees the developer's Inception weights
/// (`$LLAMAGEN_EVAL_INCEPTION` is removed unless a test sets it with [`Cli::env`]).
pub struct Cli {
    command: Command,
    args: Vec<OsString>,
}

impl Cli {
    pub fn new() -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_llamagen-eval"));
        command.env_remove("LLAMAGEN_EVAL_INCEPTION");
        Cli {
            command,
            args: Vec::new(),
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Appends `--quiet`.
    pub fn quiet(self) -> Self {
        self.arg("--quiet")
    }

    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.command.env(key, value);
        self
    }

    pub fn env_remove(mut self, key: &str) -> Self {
        self.command.env_remove(key);
        self
    }

    /// `RUST_LOG=llamagen_eval=info`: stderr carries the info lines (cache hits, resumption).
    pub fn info_log(self) -> Self {
        self.env("RUST_LOG", "llamagen_eval=info")
    }

    pub fn current_dir(mut self, dir: &Path) -> Self {
        self.command.current_dir(dir);
        self
    }

    pub fn run(mut self) -> Run {
        let output = self.command.args(&self.args).output().expect("binary runs");
        Run {
            args: self.args,
            output,
        }
    }

    /// Runs the invocation and measures it: [`Measured`] holds the outcome, the process's peak
    /// resident memory and its wall time.
    pub fn run_measured(mut self) -> Measured {
        self.command.args(&self.args);
        measure(self.command, self.args)
    }
}

/// A run with what it cost.
pub struct Measured {
    pub run: Run,
    /// Peak resident set of the process, in bytes (its own, from `wait4`'s rusage).
    pub peak_rss: u64,
    pub wall: std::time::Duration,
}

impl Measured {
    /// Panics unless the run stayed below `max_rss` bytes and `max_wall`.
    #[track_caller]
    pub fn within(self, max_rss: u64, max_wall: std::time::Duration) -> Run {
        assert!(
            self.peak_rss < max_rss && self.wall < max_wall,
            "{:?} took {} MiB and {:.1} s (limits {} MiB, {:.0} s):\n{}",
            self.run.args,
            self.peak_rss >> 20,
            self.wall.as_secs_f64(),
            max_rss >> 20,
            max_wall.as_secs_f64(),
            self.run.stderr_text()
        );
        self.run
    }
}

/// Runs `command` (arguments already added; `args` only for messages), waiting for it with
/// `wait4` to read that one process's peak memory (tests run in parallel, so the rusage of all
/// children would mix other tests' processes in).
pub fn measure(mut command: Command, args: Vec<OsString>) -> Measured {
    use std::io::Read;
    use std::process::{ExitStatus, Stdio};
    let start = std::time::Instant::now();
    // Reaped by wait4 below, which std's `wait` would hide the rusage of.
    #[allow(clippy::zombie_processes)]
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary runs");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            pipe.read_to_end(&mut bytes).expect("child output");
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped")));
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data, filled in by wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, which std has not reaped (we never call its wait).
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4: {}", std::io::Error::last_os_error());
    let wall = start.elapsed();
    let output = Output {
        status: ExitStatus::from_raw(status),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    };
    Measured {
        run: Run { args, output },
        peak_rss: usage.ru_maxrss as u64 * 1024,
        wall,
    }
}

/// What a [`Cli`] run did.
pub struct Run {
    args: Vec<OsString>,
    output: Output,
}

impl Run {
    pub fn succeeded(&self) -> bool {
        self.output.status.success()
    }

    /// The exit code (`None` when a signal ended the process).
    pub fn code(&self) -> Option<i32> {
        self.output.status.code()
    }

    /// The signal that ended the process, if one did.
    pub fn signal(&self) -> Option<i32> {
        self.output.status.signal()
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// Panics, with the arguments and stderr, unless the run succeeded.
    #[track_caller]
    pub fn success(self) -> Self {
        assert!(
            self.succeeded(),
            "{:?} failed:\n{}",
            self.args,
            self.stderr_text()
        );
        self
    }

    /// Panics, with the arguments and stderr, if the run succeeded.
    #[track_caller]
    pub fn failure(self) -> Self {
        assert!(
            !self.succeeded(),
            "{:?} should have failed:\n{}",
            self.args,
            self.stderr_text()
        );
        self
    }
}

/// How the tests of this binary share the cores. Oversubscribed cores slow every process down
/// several times over, so a test whose child processes use every core (libtorch, rayon) holds
/// [`all_cores`] and runs alone, while the tests that run theirs single-threaded
/// (`OMP_NUM_THREADS=1`) hold [`one_core`] and may run side by side. Light tests hold neither.
static CORES: RwLock<()> = RwLock::new(());

/// Held by a test whose child processes use every core: no other core-holding test runs meanwhile.
pub fn all_cores() -> RwLockWriteGuard<'static, ()> {
    CORES.write().unwrap_or_else(PoisonError::into_inner)
}

/// Held by a test whose child processes run single-threaded: others like it may run meanwhile.
pub fn one_core() -> RwLockReadGuard<'static, ()> {
    CORES.read().unwrap_or_else(PoisonError::into_inner)
}

/// The random Inception weights of the support crate, kept in this target's test folder.
pub fn random_inception_weights() -> PathBuf {
    llamagen_test_support::random_inception_weights(Path::new(env!("CARGO_TARGET_TMPDIR")))
}

/// Random Inception weights of our own architecture (seeded, written as `root/inception.safetensors`)
/// and a fixed reference batch of `n_images` 32x32 images (`root/ref.npz`): for the tests that compare
/// runs with one another, not with published numbers.
pub fn random_inception_and_reference(root: &Path, n_images: usize) -> (PathBuf, PathBuf) {
    let weights = root.join("inception.safetensors");
    tch::manual_seed(1);
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let _net = llamagen_eval::models::inception::InceptionV3::new(&vs.root());
    let vars = vs.variables();
    let named: Vec<(&str, &tch::Tensor)> = vars.iter().map(|(n, t)| (n.as_str(), t)).collect();
    tch::Tensor::write_safetensors(&named, &weights).unwrap();
    let reference = root.join("ref.npz");
    let images = ndarray::Array4::from_shape_fn((n_images, 32, 32, 3), |(i, y, x, c)| {
        ((x * 7 + y * 3 + i * 31 + c * 50) % 256) as u8
    });
    let mut npz = ndarray_npy::NpzWriter::new(std::fs::File::create(&reference).unwrap());
    npz.add_array("arr_0", &images).unwrap();
    npz.finish().unwrap();
    (weights, reference)
}

/// numpy's npy v1 header for `descr` and `shape`, padded to 64 bytes, for hand-made npz files.
pub fn npy_header(descr: &str, shape: &[u64]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    npy.extend((dict.len() as u16).to_le_bytes());
    npy.extend(dict.as_bytes());
    npy
}

/// `dir/metrics.json`, parsed.
pub fn metrics_json(dir: &Path) -> serde_json::Value {
    let path = dir.join("metrics.json");
    let file = std::fs::File::open(&path)
        .unwrap_or_else(|e| panic!("{} not written: {e}", path.display()));
    serde_json::from_reader(file).unwrap()
}

/// A path as the `&str` argument vectors are built of (temporary paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temporary path")
}

/// A file of the golden fixtures.
pub fn golden(name: &str) -> PathBuf {
    llamagen_test_support::golden_dir().join(name)
}

/// The binary with `args`, info logs, and one libtorch thread (the tests run side by side, and
/// one thread per process avoids oversubscription).
pub fn llamagen_eval(args: &[&str]) -> Run {
    Cli::new()
        .args(args)
        .info_log()
        .env("OMP_NUM_THREADS", "1")
        .run()
}
