//! Every process the tests start (apart from the reference Python of [`crate::run_reference`]):
//! one invocation is a [`Cli`], started alone ([`Cli::run`]), measured ([`Cli::run_measured`]:
//! its own peak memory from `wait4`'s rusage, and its wall time), or together with others
//! ([`run_together`]: the ranks of a launch); a launcher (`torchrun`, a shell that sets limits or
//! per-rank variables, Slurm's variables as `srun` and `sbatch --array` set them) is a way to
//! build the [`Cli`]. [`Run`] is the outcome.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The launcher variables of one process (`SLURM_PROCID`, ...).
pub type LauncherVars = Vec<(&'static str, String)>;

/// One invocation of a program under test. Its environment is the test's without the launcher
/// variables of the machine (`SLURM_*`, `OMPI_*`, `TORCHELASTIC_*`, `RANK`, `WORLD_SIZE`, ...),
/// the developer's Inception weights (`$LLAMAGEN_EVAL_INCEPTION`) and the crash point of the
/// resume tests (`$LLAMAGEN_EVAL_CRASH_AT`), unless the test sets them with [`Cli::env`].
pub struct Cli {
    command: Command,
    /// The program's own arguments (for messages; a launcher's come before them).
    args: Vec<OsString>,
}

impl Cli {
    /// `program` with arguments to come.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self::launched(Command::new(program))
    }

    /// `program` started by `sh -c script sh program ARGS`: the script sets limits or variables,
    /// then runs `exec "$@"`.
    pub fn in_shell(program: impl AsRef<OsStr>, script: &str) -> Self {
        let mut command = Command::new("sh");
        command.args([
            OsStr::new("-c"),
            script.as_ref(),
            "sh".as_ref(),
            program.as_ref(),
        ]);
        Self::launched(command)
    }

    /// `program` started by the real `torchrun` of the project venv, `--standalone` with
    /// `nproc` processes and `max_restarts` restarts; each rank through `sh -c script` when a
    /// script is given (as [`Cli::in_shell`]).
    pub fn torchrun(
        program: impl AsRef<OsStr>,
        nproc: usize,
        max_restarts: u32,
        script: Option<&str>,
    ) -> Self {
        let mut command = Command::new(torchrun());
        command.args([
            "--standalone",
            "--nproc-per-node",
            &nproc.to_string(),
            "--max-restarts",
            &max_restarts.to_string(),
            "--no-python",
        ]);
        if let Some(script) = script {
            command.args(["sh", "-c", script, "sh"]);
        }
        command.arg(program);
        Self::launched(command)
    }

    fn launched(mut command: Command) -> Self {
        for (key, _) in std::env::vars_os() {
            let name = key.to_string_lossy();
            let launcher = ["SLURM_", "OMPI_", "TORCHELASTIC_", "PMI_", "PMIX_"]
                .iter()
                .any(|p| name.starts_with(p))
                || ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"].contains(&&*name);
            if launcher {
                command.env_remove(&key);
            }
        }
        command.env_remove("LLAMAGEN_EVAL_INCEPTION");
        command.env_remove("LLAMAGEN_EVAL_CRASH_AT");
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

    /// `OMP_NUM_THREADS=1`: one libtorch thread, for processes that run side by side.
    pub fn one_thread(self) -> Self {
        self.env("OMP_NUM_THREADS", "1")
    }

    /// One rank of a launch: its launcher variables, and one thread (the ranks run side by side).
    pub fn rank(mut self, vars: &[(&'static str, String)]) -> Self {
        self.command
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())));
        self.one_thread()
    }

    pub fn current_dir(mut self, dir: &Path) -> Self {
        self.command.current_dir(dir);
        self
    }

    fn spawn(mut self) -> (std::process::Child, Vec<OsString>) {
        let child = self
            .command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", self.command.get_program()));
        (child, self.args)
    }

    pub fn run(self) -> Run {
        let (child, args) = self.spawn();
        let output = child.wait_with_output().expect("child output");
        Run { args, output }
    }

    /// Runs the invocation and measures it: [`Measured`] holds the outcome, the process's peak
    /// resident memory and its wall time.
    pub fn run_measured(self) -> Measured {
        use std::io::Read;
        let start = Instant::now();
        let (mut child, args) = self.spawn();
        let drain = |mut pipe: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                pipe.read_to_end(&mut bytes).expect("child output");
                bytes
            })
        };
        let stdout = drain(Box::new(child.stdout.take().expect("piped")));
        let stderr = drain(Box::new(child.stderr.take().expect("piped")));
        // Waited for with wait4, not std's `wait`, which would hide the rusage: that of this one
        // process (tests run in parallel, so RUSAGE_CHILDREN would mix in other tests' processes).
        let pid = child.id() as libc::pid_t;
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value; wait4 fills it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `pid` is our own child, which std has not reaped (its `wait` is never called);
        // `status` and `usage` are valid for writes.
        let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        assert_eq!(waited, pid, "wait4: {}", std::io::Error::last_os_error());
        let wall = start.elapsed();
        drop(child);
        let output = Output {
            status: ExitStatus::from_raw(status),
            stdout: stdout.join().expect("stdout reader"),
            stderr: stderr.join().expect("stderr reader"),
        };
        Measured {
            run: Run { args, output },
            // Linux reports kilobytes.
            peak_rss: usage.ru_maxrss as u64 * 1024,
            wall,
        }
    }
}

/// Starts every invocation, then waits for all of them (each drained on its own thread, so that
/// no process blocks on a full pipe while another waits for it): the ranks of one launch.
pub fn run_together(clis: Vec<Cli>) -> Vec<Run> {
    let children: Vec<_> = clis.into_iter().map(Cli::spawn).collect();
    std::thread::scope(|scope| {
        let waits: Vec<_> = children
            .into_iter()
            .map(|(child, args)| {
                scope.spawn(move || Run {
                    args,
                    output: child.wait_with_output().expect("child output"),
                })
            })
            .collect();
        waits
            .into_iter()
            .map(|w| w.join().expect("waiting thread"))
            .collect()
    })
}

/// The `torchrun` beside the project venv's Python.
pub fn torchrun() -> PathBuf {
    let torchrun = crate::python().with_file_name("torchrun");
    assert!(
        torchrun.is_file(),
        "torchrun not found at {}: run ./x setup",
        torchrun.display()
    );
    torchrun
}

/// The variables `srun` sets for task `rank` of `size` (job 4242, one node).
pub fn srun_vars(rank: usize, size: usize) -> LauncherVars {
    vec![
        ("SLURM_JOB_ID", "4242".into()),
        ("SLURM_STEP_ID", "0".into()),
        ("SLURM_PROCID", rank.to_string()),
        ("SLURM_NTASKS", size.to_string()),
        ("SLURM_LOCALID", rank.to_string()),
        ("SLURM_NODEID", "0".into()),
        ("SLURM_NTASKS_PER_NODE", size.to_string()),
    ]
}

/// The variables `sbatch --array=10-(10+count-1)` sets for array task `task` (one process each).
pub fn array_vars(task: usize, count: usize) -> LauncherVars {
    vec![
        ("SLURM_JOB_ID", (5000 + task).to_string()),
        ("SLURM_ARRAY_JOB_ID", "5000".into()),
        ("SLURM_ARRAY_TASK_ID", (10 + task).to_string()),
        ("SLURM_ARRAY_TASK_MIN", "10".into()),
        ("SLURM_ARRAY_TASK_MAX", (10 + count - 1).to_string()),
        ("SLURM_ARRAY_TASK_COUNT", count.to_string()),
        ("SLURM_PROCID", "0".into()),
        ("SLURM_NTASKS", "1".into()),
        ("SLURM_LOCALID", "0".into()),
    ]
}

/// A run with what it cost.
pub struct Measured {
    pub run: Run,
    /// Peak resident set of the process, in bytes (its own, from `wait4`'s rusage).
    pub peak_rss: u64,
    pub wall: Duration,
}

impl Measured {
    /// Panics unless the run stayed below `max_rss` bytes and `max_wall`.
    #[track_caller]
    pub fn within(self, max_rss: u64, max_wall: Duration) -> Run {
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

/// What a [`Cli`] run did.
pub struct Run {
    args: Vec<OsString>,
    output: Output,
}

impl fmt::Debug for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} ({}):\n{}",
            self.args,
            self.output.status,
            self.stderr_text()
        )
    }
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
        assert!(self.succeeded(), "{self:?} failed");
        self
    }

    /// Panics, with the arguments and stderr, if the run succeeded.
    #[track_caller]
    pub fn failure(self) -> Self {
        assert!(!self.succeeded(), "{self:?} should have failed");
        self
    }

    /// Panics unless the run failed with every one of `needles` in its stderr; returns stderr.
    #[track_caller]
    pub fn refused_with(&self, needles: &[&str]) -> String {
        assert!(!self.succeeded(), "{self:?} should have failed");
        let stderr = self.stderr_text();
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "{needle:?} not in the stderr of {:?}:\n{stderr}",
                self.args
            );
        }
        stderr
    }
}
