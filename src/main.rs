//! The `llamagen-eval` command line: parses flags and hands over to `llamagen_eval::commands`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use llamagen_eval::commands;

/// Evaluate LlamaGen-style autoregressive image generators: FID, sFID, IS, precision/recall, KID,
/// and tokenizer reconstruction metrics, matching the reference evaluators.
#[derive(Parser, Debug)]
#[command(name = "llamagen-eval", version, about, long_about = None)]
struct Cli {
    /// Silence progress bars and informational output (errors are still printed).
    #[arg(long, short, global = true)]
    quiet: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The main job end to end on built-in tiny models with random weights (no downloads).
    Demo(llamagen_eval::demo::DemoCommand),
    /// Check the installation: versions, CUDA, threads, BLAS, and where Inception weights are looked for.
    Doctor {
        /// FID Inception-V3 weights (pytorch-fid's pt_inception-2015-12-05-6726825d.pth).
        #[arg(long, value_name = "FILE")]
        inception: Option<PathBuf>,
    },
    /// FID, sFID, IS, precision/recall and KID of a sample batch against a reference batch.
    Fid(commands::fid::FidCommand),
    /// The same metrics from feature files (no Inception run).
    Metrics(commands::metrics::MetricsCommand),
    /// Inception features (pool, spatial, logits) of an image batch.
    Features(commands::features::FeaturesCommand),
    /// An ADM-compatible reference batch (statistics plus a kept image subset) from images.
    Stats(commands::stats::StatsCommand),
    /// What a checkpoint file holds: keys, tensors, parameters, configuration.
    Inspect(commands::inspect::InspectCommand),
    /// Images from a LlamaGen c2i generator and its tokenizer, as an ADM/LlamaGen sample npz.
    Sample(commands::sample::SampleCommand),
    /// Join `sample --shard K/N` outputs into one npz in sample-index order.
    Merge(commands::sample::MergeCommand),
    /// Tokenizer reconstruction quality: rFID, PSNR, SSIM and codebook usage.
    Recon(commands::recon::ReconCommand),
    /// `fid --gpt` at several CFG scales, then `report` over the runs.
    Sweep(commands::sweep::SweepCommand),
    /// Summary table (CSV, Markdown) and PNG charts of several runs' metrics.json.
    Report(commands::report::ReportCommand),
    /// Compare a run with a baseline (exit 0 pass, 1 regression, 2 unusable input), or record one.
    Check(commands::check::CheckCommand),
}

fn init_logging(quiet: bool) {
    let default = if quiet { "error" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let quiet = cli.quiet;
    match cli.command {
        Command::Doctor { inception } => {
            let report = llamagen_eval::doctor::Report::gather(inception);
            print!("{}", report.render());
            Ok(())
        }
        Command::Demo(cmd) => llamagen_eval::demo::run(&cmd, quiet),
        Command::Fid(cmd) => commands::fid::run(&cmd, quiet),
        Command::Metrics(cmd) => commands::metrics::run(&cmd, quiet),
        Command::Features(cmd) => commands::features::run(&cmd, quiet),
        Command::Stats(cmd) => commands::stats::run(&cmd, quiet),
        Command::Inspect(cmd) => commands::inspect::run(&cmd),
        Command::Sample(cmd) => commands::sample::run(&cmd, quiet),
        Command::Merge(cmd) => commands::sample::run_merge(&cmd, quiet),
        Command::Recon(cmd) => commands::recon::run(&cmd, quiet),
        Command::Report(cmd) => commands::report::run(&cmd, quiet),
        Command::Sweep(cmd) => commands::sweep::run(&cmd, quiet),
        Command::Check(_) => unreachable!("`check` returns its own exit status from main"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.quiet);
    // `check` has its own exit statuses: 0 pass, 1 regression, 2 unusable input.
    if let Command::Check(cmd) = &cli.command {
        return commands::check::main(cmd, cli.quiet);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
