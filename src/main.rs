//! `qecd`: the command line of the qecd decoder service.
//!
//! Every subcommand prints a one-line error and exits with status 2 when its
//! input is bad; no output file is left half-written.

mod cmd;
#[cfg(feature = "train")]
mod neural;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use qecd_sweep::{plot, report, sweep};

/// Real-time quantum error-correction decoding: sample, decode, sweep and plot
/// surface-code memory experiments.
#[derive(Parser)]
#[command(name = "qecd", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a small built-in sweep (d=3,5, SI1000 p=0.003) and print its table.
    Demo(cmd::demo::DemoArgs),
    /// Sample detection events and observable flips from a surface-code circuit.
    Sample(cmd::sample::SampleArgs),
    /// Decode detection events into predicted observable flips.
    Predict(cmd::predict::PredictArgs),
    /// Measure logical error rates over distances, noise strengths and decoders (sinter CSV).
    Sweep(sweep::SweepArgs),
    /// Plot a sweep's LER per round against distance (or rounds).
    Plot(plot::PlotArgs),
    /// Plot training logs' held-out errors ÷ correlated matching's against samples seen.
    PlotTraining(plot::PlotTrainingArgs),
    /// Tabulate a sweep's logical error rates as Markdown, against a baseline decoder.
    Report(report::ReportArgs),
    /// Serve decoding over gRPC (and the FPGA bridge) for a control stack.
    Serve(cmd::serve::ServeArgs),
    /// Load-test a decoding server with many concurrent streams.
    Load(cmd::load::LoadArgs),
    /// Play an experiment directory over the FPGA bridge in real time and check every answer.
    Replay(cmd::replay::ReplayArgs),
    /// Train the neural decoder on simulated shots (fused CPU trainer; `--engine tch` with feature `train`).
    Train(cmd::train::TrainArgs),
    /// Train the posterior model of the neural-matching decoder (feature `train`).
    #[cfg(feature = "train")]
    TrainPosterior(cmd::train_posterior::TrainPosteriorArgs),
    /// Fine-tune a model on an experiment directory.
    Finetune(cmd::finetune::FinetuneArgs),
    /// Fit a model's temperature; report ECE and a reliability diagram.
    Calibrate(cmd::calibrate::CalibrateArgs),
    /// Learn a detector error model's probabilities from an experiment directory's detection events.
    LearnNoise(cmd::learn_noise::LearnNoiseArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match &cli.command {
        Command::Demo(args) => cmd::demo::run(args),
        Command::Sample(args) => cmd::sample::run(args),
        Command::Predict(args) => cmd::predict::run(args),
        Command::Sweep(args) => sweep::run(args),
        Command::Plot(args) => plot::run_plot(args),
        Command::PlotTraining(args) => plot::run_plot_training(args),
        Command::Report(args) => report::run(args),
        Command::Serve(args) => cmd::serve::run(args),
        Command::Load(args) => cmd::load::run(args),
        Command::Replay(args) => cmd::replay::run(args),
        Command::Train(args) => cmd::train::run(args),
        #[cfg(feature = "train")]
        Command::TrainPosterior(args) => cmd::train_posterior::run(args),
        Command::Finetune(args) => cmd::finetune::run(args),
        Command::Calibrate(args) => cmd::calibrate::run(args),
        Command::LearnNoise(args) => cmd::learn_noise::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Logs go to stderr through `tracing`, filtered by `QECD_LOG` (or
/// `RUST_LOG`), in `tracing-subscriber`'s env-filter syntax: `info` unless
/// set, `QECD_LOG=qecd_service=debug` for one stream span's every event,
/// `QECD_LOG=warn` for problems only.
fn init_logging() {
    let filter = std::env::var("QECD_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}
