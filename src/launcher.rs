//! Which launcher started this process and where the process stands in the job: torchrun
//! (torchelastic), Slurm tasks (`srun`), Slurm job arrays, or Open MPI. We never launch processes
//! ourselves; we read what the launcher put in the environment, so that one command line runs
//! unchanged as one process or as rank r of N.
//!
//! Rank r of N takes sample indices r, r+N, ... (the partition of `--shard r/N`); its CUDA device
//! is `cuda:LOCAL_RANK`, and the process's CPU threads are the machine's cores divided among the
//! ranks on the node.

use std::fmt;
use std::str::FromStr;

use crate::device::DeviceChoice;

/// `--launcher`: which environment to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LauncherChoice {
    /// The first launcher whose variables are set (torchrun, then Open MPI, then Slurm), else none.
    #[default]
    Auto,
    /// One process, whatever the environment says.
    None,
    /// torchrun / torchelastic.
    Torchrun,
    /// Slurm tasks started by `srun`, or the tasks of a Slurm job array.
    Slurm,
    /// Open MPI's `mpirun`.
    Mpi,
}

impl FromStr for LauncherChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(LauncherChoice::Auto),
            "none" => Ok(LauncherChoice::None),
            "torchrun" => Ok(LauncherChoice::Torchrun),
            "slurm" => Ok(LauncherChoice::Slurm),
            "mpi" => Ok(LauncherChoice::Mpi),
            _ => Err(format!(
                "unknown launcher `{s}`: use auto, none, torchrun, slurm or mpi"
            )),
        }
    }
}

/// The launcher a [`World`] was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// No launcher: a single process.
    None,
    /// torchrun / torchelastic.
    Torchrun,
    /// Slurm tasks (`srun`).
    Slurm,
    /// The tasks of a Slurm job array (each may itself be several `srun` tasks).
    SlurmArray,
    /// Open MPI.
    Mpi,
}

impl Launcher {
    /// The name in logs and run records.
    pub fn name(self) -> &'static str {
        match self {
            Launcher::None => "none",
            Launcher::Torchrun => "torchrun",
            Launcher::Slurm => "slurm",
            Launcher::SlurmArray => "slurm-array",
            Launcher::Mpi => "mpi",
        }
    }
}

/// Why the launcher's environment cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LauncherError {
    /// `--launcher X` was asked for but X's variables are not set.
    #[error("--launcher {launcher}: `{variable}` is not set; start the command under {launcher}, or use --launcher auto or none")]
    Missing {
        /// The launcher asked for.
        launcher: &'static str,
        /// The first missing variable.
        variable: &'static str,
    },
    /// A variable is set to something unusable.
    #[error("{launcher}: `{variable}={value}` {problem}")]
    Invalid {
        /// The launcher whose variable it is.
        launcher: &'static str,
        /// The variable.
        variable: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// This process's place in the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct World {
    /// Where the numbers came from.
    pub launcher: Launcher,
    /// This process, from 0.
    pub rank: usize,
    /// Processes in the job.
    pub size: usize,
    /// This process among those on its node, from 0.
    pub local_rank: usize,
    /// Processes on this node.
    pub local_size: usize,
    /// How often the launcher has restarted the job (torchrun `--max-restarts`, Slurm requeues):
    /// a restarted process resumes from its journal.
    pub restarts: usize,
}

impl World {
    /// One process on its own.
    pub const SINGLE: World = World {
        launcher: Launcher::None,
        rank: 0,
        size: 1,
        local_rank: 0,
        local_size: 1,
        restarts: 0,
    };

    /// Reads the process environment as `choice` says.
    pub fn from_env(choice: LauncherChoice) -> Result<World, LauncherError> {
        World::detect(choice, &|name| std::env::var(name).ok())
    }

    /// Reads the launcher variables through `env` (the environment, or a test's table).
    pub fn detect(
        choice: LauncherChoice,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<World, LauncherError> {
        match choice {
            LauncherChoice::None => Ok(World::SINGLE),
            LauncherChoice::Torchrun => torchrun(env),
            LauncherChoice::Mpi => mpi(env),
            LauncherChoice::Slurm => slurm(env, true),
            LauncherChoice::Auto => {
                let world = if env("RANK").is_some() || env("TORCHELASTIC_RUN_ID").is_some() {
                    torchrun(env)?
                } else if env("OMPI_COMM_WORLD_RANK").is_some() {
                    mpi(env)?
                } else if env("SLURM_PROCID").is_some() || env("SLURM_ARRAY_TASK_ID").is_some() {
                    slurm(env, false)?
                } else {
                    World::SINGLE
                };
                Ok(world)
            }
        }
    }

    /// Whether the job has more than one process.
    pub fn is_distributed(&self) -> bool {
        self.size > 1
    }

    /// The device of this rank: an explicit choice wins; `auto` in a job of several processes is
    /// `cuda:LOCAL_RANK` when CUDA is usable (`cuda:0` when each process sees one GPU, as Slurm's
    /// GPU binding arranges), else the CPU.
    pub fn device(&self, choice: DeviceChoice) -> Result<DeviceChoice, String> {
        if choice != DeviceChoice::Auto || !self.is_distributed() {
            return Ok(choice);
        }
        crate::device::load_cuda();
        if !tch::Cuda::is_available() {
            return Ok(DeviceChoice::Auto);
        }
        let count = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
        match count {
            1 => Ok(DeviceChoice::Cuda(0)),
            n if self.local_rank < n => Ok(DeviceChoice::Cuda(self.local_rank)),
            n => Err(format!(
                "local rank {} of {} on this node but {n} CUDA devices are visible (CUDA_VISIBLE_DEVICES={}): start at most {n} processes per node, or pass --device",
                self.local_rank,
                self.local_size,
                std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "unset".into())
            )),
        }
    }

    /// Divides the node's cores among its ranks: libtorch's threads (unless `OMP_NUM_THREADS`
    /// fixes them, as torchrun does) and rayon's pool (unless `RAYON_NUM_THREADS` does). Returns
    /// the two counts. A single process keeps every core.
    pub fn divide_threads(&self) -> (usize, usize) {
        if self.local_size > 1 {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let share = (cores / self.local_size).max(1);
            if std::env::var_os("OMP_NUM_THREADS").is_none() {
                tch::set_num_threads(share as i32);
            }
            if std::env::var_os("RAYON_NUM_THREADS").is_none() {
                // Fails only when the pool already exists, which then keeps its size.
                let _ = rayon::ThreadPoolBuilder::new()
                    .num_threads(share)
                    .build_global();
            }
        }
        (
            usize::try_from(tch::get_num_threads()).unwrap_or(1),
            rayon::current_num_threads(),
        )
    }
}

/// What names one launch of a job, the same on all its ranks and new with every launch (a
/// restart by the launcher keeps it): torchrun's run id (`--standalone` makes one per launch;
/// `none` when multi-node runs give no `--rdzv-id`), Slurm's job (and step) id, Open MPI's
/// namespace. `None` when the launcher gives none.
pub fn launch_id(launcher: Launcher, env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    match launcher {
        Launcher::None => None,
        Launcher::Torchrun => env("TORCHELASTIC_RUN_ID").filter(|id| id != "none"),
        Launcher::Slurm => {
            let job = env("SLURM_JOB_ID")?;
            Some(match env("SLURM_STEP_ID") {
                Some(step) => format!("slurm-{job}.{step}"),
                None => format!("slurm-{job}"),
            })
        }
        Launcher::SlurmArray => env("SLURM_ARRAY_JOB_ID").map(|id| format!("slurm-array-{id}")),
        Launcher::Mpi => env("PMIX_NAMESPACE").or_else(|| env("OMPI_MCA_orte_ess_jobid")),
    }
}

impl fmt::Display for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_distributed() {
            write!(
                f,
                "{}: rank {} of {} (local rank {} of {})",
                self.launcher.name(),
                self.rank,
                self.size,
                self.local_rank,
                self.local_size
            )?;
            if self.restarts > 0 {
                write!(f, ", restart {}", self.restarts)?;
            }
            Ok(())
        } else {
            write!(f, "{}: one process", self.launcher.name())
        }
    }
}

struct Reader<'e> {
    launcher: &'static str,
    env: &'e dyn Fn(&str) -> Option<String>,
}

/// The largest value read from a launcher variable, and the largest world: far above any real job
/// (Slurm's largest job array has 4,000,001 tasks), small enough that ranks, sizes and their
/// products never wrap.
const LARGEST_LAUNCHER_VALUE: usize = 1 << 24;

impl Reader<'_> {
    fn number(&self, variable: &'static str) -> Result<Option<usize>, LauncherError> {
        let Some(value) = (self.env)(variable) else {
            return Ok(None);
        };
        let invalid = |value: String, problem: String| LauncherError::Invalid {
            launcher: self.launcher,
            variable,
            value,
            problem,
        };
        match value.trim().parse::<usize>() {
            Ok(n) if n <= LARGEST_LAUNCHER_VALUE => Ok(Some(n)),
            Ok(_) => Err(invalid(
                value,
                format!("is above {LARGEST_LAUNCHER_VALUE}, larger than any job this tool runs"),
            )),
            Err(_) => Err(invalid(value, "is not a non-negative integer".into())),
        }
    }

    fn required(&self, variable: &'static str) -> Result<usize, LauncherError> {
        self.number(variable)?.ok_or(LauncherError::Missing {
            launcher: self.launcher,
            variable,
        })
    }

    fn positive(&self, variable: &'static str) -> Result<usize, LauncherError> {
        let n = self.required(variable)?;
        if n == 0 {
            return Err(LauncherError::Invalid {
                launcher: self.launcher,
                variable,
                value: "0".into(),
                problem: "must be at least 1".into(),
            });
        }
        Ok(n)
    }

    fn below(
        &self,
        variable: &'static str,
        value: usize,
        limit: (&'static str, usize),
    ) -> Result<usize, LauncherError> {
        if value < limit.1 {
            Ok(value)
        } else {
            Err(LauncherError::Invalid {
                launcher: self.launcher,
                variable,
                value: value.to_string(),
                problem: format!("is not below {}={}", limit.0, limit.1),
            })
        }
    }

    /// The rank within the node and the node's process count, from `rank` and `size` (rank 0 of
    /// 1 when unset).
    fn local(
        &self,
        rank: &'static str,
        size: &'static str,
    ) -> Result<(usize, usize), LauncherError> {
        let local_size = self.number(size)?.unwrap_or(1).max(1);
        let local_rank = self.below(rank, self.number(rank)?.unwrap_or(0), (size, local_size))?;
        Ok((local_rank, local_size))
    }
}

fn torchrun(env: &dyn Fn(&str) -> Option<String>) -> Result<World, LauncherError> {
    let r = Reader {
        launcher: "torchrun",
        env,
    };
    let size = r.positive("WORLD_SIZE")?;
    let rank = r.below("RANK", r.required("RANK")?, ("WORLD_SIZE", size))?;
    let (local_rank, local_size) = r.local("LOCAL_RANK", "LOCAL_WORLD_SIZE")?;
    Ok(World {
        launcher: Launcher::Torchrun,
        rank,
        size,
        local_rank,
        local_size,
        restarts: r.number("TORCHELASTIC_RESTART_COUNT")?.unwrap_or(0),
    })
}

fn mpi(env: &dyn Fn(&str) -> Option<String>) -> Result<World, LauncherError> {
    let r = Reader {
        launcher: "mpi",
        env,
    };
    let size = r.positive("OMPI_COMM_WORLD_SIZE")?;
    let rank = r.below(
        "OMPI_COMM_WORLD_RANK",
        r.required("OMPI_COMM_WORLD_RANK")?,
        ("OMPI_COMM_WORLD_SIZE", size),
    )?;
    let (local_rank, local_size) =
        r.local("OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE")?;
    Ok(World {
        launcher: Launcher::Mpi,
        rank,
        size,
        local_rank,
        local_size,
        restarts: 0,
    })
}

/// Slurm tasks (`SLURM_PROCID` of `SLURM_NTASKS`, started by `srun`), the tasks of a job array
/// (`SLURM_ARRAY_TASK_ID` - `SLURM_ARRAY_TASK_MIN` of `SLURM_ARRAY_TASK_COUNT`), or both: array
/// task a with `srun` task p of n is rank a * n + p.
fn slurm(env: &dyn Fn(&str) -> Option<String>, asked: bool) -> Result<World, LauncherError> {
    let r = Reader {
        launcher: "slurm",
        env,
    };
    let array = match r.number("SLURM_ARRAY_TASK_ID")? {
        Some(id) => {
            let min = r.number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let count = r.positive("SLURM_ARRAY_TASK_COUNT")?;
            let position = id.checked_sub(min).ok_or_else(|| LauncherError::Invalid {
                launcher: "slurm",
                variable: "SLURM_ARRAY_TASK_ID",
                value: id.to_string(),
                problem: format!("is below SLURM_ARRAY_TASK_MIN={min}"),
            })?;
            Some((
                r.below(
                    "SLURM_ARRAY_TASK_ID",
                    position,
                    ("SLURM_ARRAY_TASK_COUNT", count),
                )?,
                count,
            ))
        }
        None => None,
    };
    let tasks = match r.number("SLURM_PROCID")? {
        Some(procid) => {
            let ntasks = r.number("SLURM_NTASKS")?.unwrap_or(1).max(1);
            if ntasks > 1 && env("SLURM_STEP_ID").is_none() {
                // The batch script itself also sees SLURM_NTASKS: only `srun` starts the tasks.
                return Err(LauncherError::Invalid {
                    launcher: "slurm",
                    variable: "SLURM_NTASKS",
                    value: ntasks.to_string(),
                    problem: "but this process was not started by srun (no SLURM_STEP_ID): run the command through `srun`, or pass --launcher none".into(),
                });
            }
            let procid = r.below("SLURM_PROCID", procid, ("SLURM_NTASKS", ntasks))?;
            Some((procid, ntasks))
        }
        None if asked && array.is_none() => {
            return Err(LauncherError::Missing {
                launcher: "slurm",
                variable: "SLURM_PROCID",
            })
        }
        None => None,
    };
    let (procid, ntasks) = tasks.unwrap_or((0, 1));
    let local_rank = r.number("SLURM_LOCALID")?.unwrap_or(0);
    let local_size = r
        .number("SLURM_NTASKS_PER_NODE")?
        .or_else(|| {
            // `2(x3),1`: the first node's count is the leading number.
            let text = env("SLURM_TASKS_PER_NODE")?;
            let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .unwrap_or(1)
        .max(local_rank + 1);
    let (launcher, rank, size) = match array {
        Some((position, count)) => {
            let size = count
                .checked_mul(ntasks)
                .filter(|&size| size <= LARGEST_LAUNCHER_VALUE)
                .ok_or_else(|| LauncherError::Invalid {
                    launcher: "slurm",
                    variable: "SLURM_ARRAY_TASK_COUNT",
                    value: count.to_string(),
                    problem: format!(
                        "times SLURM_NTASKS={ntasks} is above {LARGEST_LAUNCHER_VALUE} processes"
                    ),
                })?;
            // position < count and procid < ntasks, so the rank is below the size.
            (Launcher::SlurmArray, position * ntasks + procid, size)
        }
        None => (Launcher::Slurm, procid, ntasks),
    };
    Ok(World {
        launcher,
        rank,
        size,
        local_rank,
        local_size,
        restarts: r.number("SLURM_RESTART_COUNT")?.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world(choice: LauncherChoice, vars: &[(&str, &str)]) -> Result<World, LauncherError> {
        let table: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        World::detect(choice, &|name| {
            table
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn torchrun_variables_give_rank_world_and_restarts() {
        let w = world(
            LauncherChoice::Auto,
            &[
                ("RANK", "2"),
                ("WORLD_SIZE", "3"),
                ("LOCAL_RANK", "2"),
                ("LOCAL_WORLD_SIZE", "3"),
                ("TORCHELASTIC_RESTART_COUNT", "1"),
                ("SLURM_PROCID", "0"),
            ],
        )
        .unwrap();
        assert_eq!(
            (
                w.launcher,
                w.rank,
                w.size,
                w.local_rank,
                w.local_size,
                w.restarts
            ),
            (Launcher::Torchrun, 2, 3, 2, 3, 1)
        );
        let err = world(LauncherChoice::Auto, &[("RANK", "3"), ("WORLD_SIZE", "3")]).unwrap_err();
        assert!(
            err.to_string()
                .contains("`RANK=3` is not below WORLD_SIZE=3"),
            "{err}"
        );
    }

    #[test]
    fn slurm_tasks_arrays_and_both() {
        let tasks = [
            ("SLURM_PROCID", "1"),
            ("SLURM_NTASKS", "3"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_STEP_ID", "0"),
        ];
        let w = world(LauncherChoice::Auto, &tasks).unwrap();
        assert_eq!(
            (w.launcher, w.rank, w.size, w.local_rank),
            (Launcher::Slurm, 1, 3, 1)
        );
        let array = [
            ("SLURM_ARRAY_TASK_ID", "12"),
            ("SLURM_ARRAY_TASK_MIN", "10"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "1"),
        ];
        let w = world(LauncherChoice::Slurm, &array).unwrap();
        assert_eq!((w.launcher, w.rank, w.size), (Launcher::SlurmArray, 2, 3));
        let both = [
            ("SLURM_ARRAY_TASK_ID", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "2"),
            ("SLURM_PROCID", "1"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_STEP_ID", "0"),
        ];
        let w = world(LauncherChoice::Auto, &both).unwrap();
        assert_eq!((w.rank, w.size), (5, 8));
        // The batch script sees SLURM_NTASKS but is not one of the tasks.
        let batch = [("SLURM_PROCID", "0"), ("SLURM_NTASKS", "3")];
        let err = world(LauncherChoice::Auto, &batch).unwrap_err();
        assert!(err.to_string().contains("srun"), "{err}");
    }

    #[test]
    fn launcher_values_too_large_to_be_a_job_are_refused_before_any_arithmetic() {
        // 2^32 array tasks of 2^32 srun tasks wrapped the world size to 0.
        let huge = [
            ("SLURM_ARRAY_TASK_ID", "0"),
            ("SLURM_ARRAY_TASK_COUNT", "4294967296"),
        ];
        let err = world(LauncherChoice::Auto, &huge).unwrap_err().to_string();
        assert!(
            err.contains("SLURM_ARRAY_TASK_COUNT") && err.contains("4294967296"),
            "{err}"
        );
        let product = [
            ("SLURM_ARRAY_TASK_ID", "0"),
            ("SLURM_ARRAY_TASK_COUNT", "65536"),
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "65536"),
            ("SLURM_STEP_ID", "0"),
        ];
        let err = world(LauncherChoice::Auto, &product)
            .unwrap_err()
            .to_string();
        assert!(err.contains("SLURM_NTASKS=65536"), "{err}");
        for (variable, value) in [
            ("WORLD_SIZE", "18446744073709551615"),
            ("RANK", "99999999999"),
        ] {
            let mut vars = vec![("WORLD_SIZE", "2"), ("RANK", "0")];
            vars.retain(|(k, _)| *k != variable);
            vars.push((variable, value));
            let err = world(LauncherChoice::Torchrun, &vars)
                .unwrap_err()
                .to_string();
            assert!(err.contains(variable) && err.contains(value), "{err}");
        }
    }

    #[test]
    fn launch_ids_name_one_launch() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let torchrun = env(&[("TORCHELASTIC_RUN_ID", "abc")]);
        assert_eq!(
            launch_id(Launcher::Torchrun, &torchrun).as_deref(),
            Some("abc")
        );
        let unnamed = env(&[("TORCHELASTIC_RUN_ID", "none")]);
        assert_eq!(launch_id(Launcher::Torchrun, &unnamed), None);
        let slurm = env(&[("SLURM_JOB_ID", "7"), ("SLURM_STEP_ID", "2")]);
        assert_eq!(
            launch_id(Launcher::Slurm, &slurm).as_deref(),
            Some("slurm-7.2")
        );
        let array = env(&[("SLURM_JOB_ID", "9"), ("SLURM_ARRAY_JOB_ID", "8")]);
        assert_eq!(
            launch_id(Launcher::SlurmArray, &array).as_deref(),
            Some("slurm-array-8")
        );
        assert_eq!(launch_id(Launcher::None, &slurm), None);
    }

    #[test]
    fn mpi_explicit_choices_and_none() {
        let w = world(
            LauncherChoice::Auto,
            &[("OMPI_COMM_WORLD_RANK", "0"), ("OMPI_COMM_WORLD_SIZE", "2")],
        )
        .unwrap();
        assert_eq!((w.launcher, w.rank, w.size), (Launcher::Mpi, 0, 2));
        let err = world(LauncherChoice::Torchrun, &[]).unwrap_err();
        assert!(err.to_string().contains("`WORLD_SIZE` is not set"), "{err}");
        let w = world(LauncherChoice::None, &[("RANK", "1"), ("WORLD_SIZE", "2")]).unwrap();
        assert_eq!(w, World::SINGLE);
        assert_eq!(world(LauncherChoice::Auto, &[]).unwrap(), World::SINGLE);
        let err = world(LauncherChoice::Auto, &[("RANK", "x"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(
            err.to_string()
                .contains("`RANK=x` is not a non-negative integer"),
            "{err}"
        );
    }
}
