//! The command line: flags (clap) parsed into the library's plain configuration types, the call
//! into the library, and what is printed. No evaluation logic lives here.

mod args;
mod check;
mod choice;
mod features;
mod fid;
mod gather;
mod hints;
mod inspect;
mod metrics;
mod output;
mod recon;
mod report;
mod sample;
mod sweep;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use std::time::Duration;

use llamagen_eval::dist::Distribution;
use llamagen_eval::launcher::{launch_id, LauncherChoice, World};
use llamagen_eval::layout::RunLayout;
use llamagen_eval::progress::Progress;

pub use hints::flag_hint;

/// Evaluate LlamaGen-style autoregressive image generators: FID, sFID, IS, precision/recall, KID,
/// and tokenizer reconstruction metrics, matching the reference evaluators.
#[derive(Parser, Debug)]
#[command(name = "llamagen-eval", version, about, long_about = None)]
pub struct Cli {
    /// Silence progress bars and informational output (errors are still printed).
    #[arg(long, short, global = true, help_heading = "Global")]
    pub quiet: bool,

    /// TF32 tensor cores for float32 matrix products and convolutions on CUDA (faster, about 1e-3
    /// relative error). Off by default, so GPU numbers match CPU and reference runs; the state is
    /// in the run record.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = Switch::Off,
        help_heading = "Devices and ranks"
    )]
    pub tf32: Switch,

    /// Which launcher started this process: `auto` reads torchrun's, Open MPI's or Slurm's
    /// variables when they are set; `none` runs as one process whatever they say. Under a
    /// launcher, `fid --gpt`, `sample` and `sweep` split the samples, and `features`, `stats` and
    /// `recon` the input images, over the ranks, and rank 0 gathers the parts into the outputs one
    /// process would write.
    #[arg(
        long,
        global = true,
        value_name = "auto|none|torchrun|slurm|mpi",
        default_value = "auto",
        help_heading = "Devices and ranks"
    )]
    pub launcher: LauncherChoice,

    /// Seconds rank 0 waits for the other ranks' parts before giving up (then `merge OUT_DIR`
    /// finishes the gather).
    #[arg(
        long,
        global = true,
        value_name = "SECONDS",
        default_value_t = 7200,
        help_heading = "Devices and ranks"
    )]
    pub gather_timeout: u64,

    /// The most memory reading one input file (checkpoint, npz) may take: sizes that headers
    /// claim beyond it are refused before anything is allocated. Default 4x the file's size +
    /// 512M (one decoded image: 256M, or a quarter of this flag); raise it (e.g. 8G) for genuine
    /// inputs that need more.
    #[arg(
        long,
        global = true,
        value_name = "BYTES",
        value_parser = llamagen_eval::budget::parse_bytes,
        help_heading = "Global"
    )]
    pub max_input_memory: Option<u64>,

    #[command(subcommand)]
    command: Command,
}

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// `demo` flags.
#[derive(Args, Debug)]
struct DemoCommand {
    /// Where the demo writes its models, runs and report.
    #[arg(long, value_name = "DIR", default_value = "reports/demo")]
    out: PathBuf,
    /// Samples per CFG scale.
    #[arg(long, default_value_t = 24)]
    samples: usize,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The main job end to end on built-in tiny models with random weights (no downloads).
    Demo(DemoCommand),
    /// Check the installation: versions, CUDA, threads, BLAS, and where Inception weights are looked for.
    Doctor {
        /// FID Inception-V3 weights (pytorch-fid's pt_inception-2015-12-05-6726825d.pth).
        #[arg(long, value_name = "FILE")]
        inception: Option<PathBuf>,
    },
    /// FID, sFID, IS, precision/recall and KID of a sample batch against a reference batch.
    #[command(after_help = FID_EXAMPLES)]
    Fid(fid::FidCommand),
    /// The same metrics from feature files (no Inception run).
    Metrics(metrics::MetricsCommand),
    /// Inception features (pool, spatial, logits) of an image batch.
    Features(features::FeaturesCommand),
    /// An ADM-compatible reference batch (statistics plus a kept image subset) from images.
    Stats(features::StatsCommand),
    /// What a file or run folder holds and how the tool reads it: a checkpoint's keys, tensors
    /// and configuration; an npz's entries (sample batch, reference statistics, features, caption
    /// embeddings) and content sha256; a run folder's metrics and settings.
    Inspect {
        /// A torch.save file (zip or legacy format), a .safetensors file, an .npz, or a run folder.
        file: PathBuf,
    },
    /// Images from a LlamaGen generator (c2i, or t2i with captions) and its tokenizer, as an
    /// ADM/LlamaGen sample npz.
    Sample(sample::SampleCommand),
    /// Join `sample --shard K/N` outputs into one npz in sample-index order.
    Merge(sample::MergeCommand),
    /// Tokenizer reconstruction quality: rFID, PSNR, SSIM and codebook usage.
    #[command(
        after_help = RECON_EXAMPLES,
        mut_arg("feature_batch_size", |a| a.help(
            "Images per batch, through the tokenizer and the feature networks alike"
        ))
    )]
    Recon(recon::ReconCommand),
    /// `fid --gpt` at several CFG scales, then `report` over the runs.
    #[command(
        after_help = SWEEP_EXAMPLES,
        mut_arg("sample_batch", |a| a.hide(true)),
        mut_arg("cfg_scale", |a| a.hide(true)),
        // A sweep always generates: --image-size has only its generation meaning here.
        mut_arg("image_size", |a| a.help(
            "Generation resolution (default 256): the token grid is image-size / the tokenizer's \
             downsampling"
        ))
    )]
    Sweep(sweep::SweepCommand),
    /// Summary table (CSV, Markdown) and PNG charts of several runs' metrics.json.
    Report(report::ReportCommand),
    /// Compare a run with a baseline (exit 0 pass, 1 regression, 2 unusable input), or record one.
    Check(check::CheckCommand),
}

const FID_EXAMPLES: &str = "Examples:
  llamagen-eval fid samples.npz VIRTUAL_imagenet256_labeled.npz
  llamagen-eval fid --sample-batch samples/ --ref VIRTUAL_imagenet256_labeled.npz --out runs/mine
  llamagen-eval fid --gpt c2i_L_384.pt --vq vq_ds16_c2i.pt --image-size 384 --image-size-eval 256 \\
      --samples 50000 --class-balanced --cfg-scale 2.0 --ref VIRTUAL_imagenet256_labeled.npz";

const SWEEP_EXAMPLES: &str = "Examples:
  llamagen-eval sweep --gpt c2i_L_384.pt --vq vq_ds16_c2i.pt --image-size 384 --image-size-eval 256 \\
      --samples 10000 --class-balanced --cfg-scales 1.5,1.75,2.0,2.25 \\
      --ref VIRTUAL_imagenet256_labeled.npz --out runs/cfg-sweep";

const RECON_EXAMPLES: &str = "Examples:
  llamagen-eval recon --vq vq_ds16_c2i.pt --data imagenet/val --crop 256
  llamagen-eval recon --recon-batch reconstructions.npz --data originals.npz --metrics psnr,ssim";

impl Command {
    /// The jobs that split their work over the ranks of a launch and journal it, so that
    /// `--resume` continues them.
    fn is_sharded_job(&self) -> bool {
        matches!(
            self,
            Command::Fid(_)
                | Command::Sample(_)
                | Command::Sweep(_)
                | Command::Features(_)
                | Command::Stats(_)
                | Command::Recon(_)
        )
    }

    /// The output this command writes, when the user named it (a default timestamped folder is
    /// this run's own): locked for the whole run, so that two runs never write one output.
    fn output_layout(&self) -> Option<RunLayout> {
        let folder = |output: &args::OutputArgs| {
            (output.out.is_some() || output.name.is_some())
                .then(|| RunLayout::folder(&output.dir()))
        };
        match self {
            Command::Demo(cmd) => Some(RunLayout::folder(&cmd.out)),
            Command::Fid(cmd) => folder(&cmd.fid.output),
            Command::Sweep(cmd) => folder(&cmd.fid.output),
            Command::Recon(cmd) => folder(&cmd.output),
            Command::Features(cmd) => Some(RunLayout::file(&cmd.out)),
            Command::Stats(cmd) => Some(RunLayout::file(&cmd.out)),
            Command::Sample(cmd) => Some(RunLayout::file(&cmd.out)),
            Command::Merge(cmd) => match (&cmd.out, cmd.shards.as_slice()) {
                (Some(out), _) => Some(RunLayout::file(out)),
                (None, [target]) => Some(RunLayout::of_parts(target).unwrap_or_else(|| {
                    if target.is_dir() {
                        RunLayout::folder(target)
                    } else {
                        RunLayout::file(target)
                    }
                })),
                (None, _) => None,
            },
            Command::Doctor { .. }
            | Command::Metrics(_)
            | Command::Inspect { .. }
            | Command::Report(_)
            | Command::Check(_) => None,
        }
    }

    /// A note for each renamed flag given in its old spelling: the run goes on with the new
    /// meaning, and the user learns the spelling that will not change again.
    fn notes(&self) -> Vec<&'static str> {
        match self {
            Command::Fid(cmd) => cmd.fid.notes(),
            Command::Sweep(cmd) => cmd.fid.notes(),
            Command::Features(cmd) => [cmd.crop.notes(), cmd.inception.notes()].concat(),
            Command::Stats(cmd) => [cmd.crop.notes(), cmd.inception.notes()].concat(),
            Command::Recon(cmd) => [cmd.crop.notes(), cmd.inception.notes()].concat(),
            Command::Sample(cmd) => cmd.notes(),
            Command::Demo(_)
            | Command::Doctor { .. }
            | Command::Metrics(_)
            | Command::Inspect { .. }
            | Command::Merge(_)
            | Command::Report(_)
            | Command::Check(_) => Vec::new(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Command::Demo(_) => "demo",
            Command::Doctor { .. } => "doctor",
            Command::Fid(_) => "fid",
            Command::Metrics(_) => "metrics",
            Command::Features(_) => "features",
            Command::Stats(_) => "stats",
            Command::Inspect { .. } => "inspect",
            Command::Sample(_) => "sample",
            Command::Merge(_) => "merge",
            Command::Recon(_) => "recon",
            Command::Sweep(_) => "sweep",
            Command::Report(_) => "report",
            Command::Check(_) => "check",
        }
    }
}

impl Cli {
    /// The command line that continues this run after an interruption: the same arguments, with
    /// `--resume` added for the commands that journal their work.
    pub fn resume_command(&self) -> String {
        let mut words: Vec<String> = std::env::args_os()
            .map(|word| shell_quoted(&word.to_string_lossy()))
            .collect();
        if self.command.is_sharded_job() && !words.iter().any(|word| word == "--resume") {
            words.push("--resume".into());
        }
        words.join(" ")
    }

    /// Runs the parsed command.
    pub fn run(self) -> Result<ExitCode> {
        let progress = Progress::quiet(self.quiet);
        // libtorch's own default allows TF32 in cuDNN convolutions: set it either way.
        llamagen_eval::device::set_tf32(self.tf32 == Switch::On).map_err(anyhow::Error::msg)?;
        if let Some(bytes) = self.max_input_memory {
            llamagen_eval::budget::set_max_input_memory(bytes);
        }
        for note in self.command.notes() {
            progress.say(format!("note: {note}"));
        }
        let world = World::from_env(self.launcher)?;
        tracing::info!("launcher {world}");
        if world.is_distributed() {
            let (torch, rayon) = world.divide_threads();
            let line = format!("{world}; {torch} libtorch and {rayon} rayon threads");
            tracing::info!("{line}");
            progress.say(line);
            let runs_under_a_launcher = self.command.is_sharded_job()
                || matches!(
                    self.command,
                    Command::Doctor { .. } | Command::Inspect { .. }
                );
            if !runs_under_a_launcher {
                anyhow::bail!(
                    "`{}` does not split its work over the ranks of a launched job ({world}): run it as one process (without the launcher, or with --launcher none)",
                    self.command.name()
                );
            }
        }
        // One writer per output, for the whole run: taken before anything is written.
        let _output_lock = match self.command.output_layout() {
            Some(layout) => Some(layout.lock(world.rank)?),
            None => None,
        };
        let distribution = Distribution {
            world,
            gather_timeout: Duration::from_secs(self.gather_timeout),
            launch: launch_id(world.launcher, &|name| std::env::var(name).ok()),
        };
        match self.command {
            Command::Demo(cmd) => {
                llamagen_eval::demo::run(&cmd.out, cmd.samples, progress)?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Doctor { inception } => {
                let report = llamagen_eval::doctor::Report::gather(inception);
                print!("{}", report.render());
                Ok(ExitCode::SUCCESS)
            }
            Command::Fid(cmd) => fid::run(cmd, progress, distribution),
            Command::Metrics(cmd) => metrics::run(&cmd, progress),
            Command::Features(cmd) => features::run(&cmd, progress, distribution),
            Command::Stats(cmd) => features::run_stats(&cmd, progress, distribution),
            Command::Inspect { file } => inspect::run(&file),
            Command::Sample(cmd) => sample::run(&cmd, progress, distribution),
            Command::Merge(cmd) => sample::run_merge(&cmd, progress),
            Command::Recon(cmd) => recon::run(&cmd, progress, distribution),
            Command::Sweep(cmd) => sweep::run(&cmd, progress, distribution),
            Command::Report(cmd) => report::run(&cmd, progress),
            Command::Check(cmd) => check::run(&cmd, progress),
        }
    }
}

/// `word` as a POSIX shell reads it back: as it is when it holds only safe characters, else in
/// single quotes.
fn shell_quoted(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The exit status and the lines to print when `err` is a run stopped by a signal: what was done
/// and the command that continues it.
pub fn interruption(err: &anyhow::Error, resume_command: &str) -> Option<(u8, String)> {
    let interrupted = err
        .chain()
        .find_map(|cause| cause.downcast_ref::<llamagen_eval::interrupt::Interrupted>())?;
    let next = if interrupted.kept.is_empty() {
        format!("to start again: {resume_command}")
    } else {
        format!("to continue where it stopped: {resume_command}")
    };
    Some((interrupted.signal.exit_status(), next))
}
