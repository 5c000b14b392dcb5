//! `qecd`: the command line of the qecd decoder service.
//!
//! Every subcommand prints a one-line error and exits with status 2 when its
//! input is bad; no output file is left half-written.

mod cmd;
#[cfg(feature = "train")]
mod neural;
mod outputs;
mod plot;
mod rates;
mod server;
mod sinter_csv;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

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
    Sweep(cmd::sweep::SweepArgs),
    /// Plot a sweep's LER per round against distance (or rounds).
    Plot(PlotArgs),
    /// Plot training logs' held-out errors ÷ correlated matching's against samples seen.
    PlotTraining(PlotTrainingArgs),
    /// Tabulate a sweep's logical error rates as Markdown, against a baseline decoder.
    Report(cmd::report::ReportArgs),
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
}

/// Arguments of `qecd plot`.
#[derive(Args)]
struct PlotArgs {
    /// Sweep CSV files (sinter format); repeat or comma-separate for several.
    #[arg(long = "in", required = true, value_delimiter = ',')]
    inputs: Vec<PathBuf>,
    /// The PNG to write.
    #[arg(long)]
    out: PathBuf,
    /// The x axis: code distance (one curve per decoder, noise, p and basis)
    /// or rounds (log scale; one curve per decoder, distance, noise, p and basis).
    #[arg(long, value_enum, default_value = "distance")]
    x: PlotX,
}

/// What `qecd plot` puts on its x axis.
#[derive(Clone, Copy, clap::ValueEnum)]
enum PlotX {
    /// Code distance.
    Distance,
    /// Rounds per experiment.
    Rounds,
}

/// Arguments of `qecd plot-training`.
#[derive(Args)]
struct PlotTrainingArgs {
    /// Training logs (`X.train.csv`, written by `qecd train`); repeat or comma-separate for several.
    #[arg(long = "in", required = true, value_delimiter = ',')]
    inputs: Vec<PathBuf>,
    /// Legend labels, one per log in order (default: the file name without `.train.csv`).
    #[arg(long = "label", value_delimiter = ',')]
    labels: Vec<String>,
    /// Held-out cases to plot, e.g. `r=25`; repeat or comma-separate (default: all).
    #[arg(long = "case", value_delimiter = ',')]
    cases: Vec<String>,
    /// The PNG to write.
    #[arg(long)]
    out: PathBuf,
}

fn run_plot(args: &PlotArgs) -> anyhow::Result<()> {
    let cases = sinter_csv::read_cases(&args.inputs)?;
    match args.x {
        PlotX::Distance => plot::plot_ler(&cases, &args.out)?,
        PlotX::Rounds => plot::plot_ler_rounds(&cases, &args.out)?,
    }
    eprintln!("wrote {} ({} cases)", args.out.display(), cases.len());
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Demo(args) => cmd::demo::run(args),
        Command::Sample(args) => cmd::sample::run(args),
        Command::Predict(args) => cmd::predict::run(args),
        Command::Sweep(args) => cmd::sweep::run(args),
        Command::Plot(args) => run_plot(args),
        Command::PlotTraining(args) => plot::plot_training(&args.inputs, &args.labels, &args.cases, &args.out)
            .map(|curves| eprintln!("wrote {} ({curves} curves)", args.out.display())),
        Command::Report(args) => cmd::report::run(args),
        Command::Serve(args) => cmd::serve::run(args),
        Command::Load(args) => cmd::load::run(args),
        Command::Replay(args) => cmd::replay::run(args),
        Command::Train(args) => cmd::train::run(args),
        #[cfg(feature = "train")]
        Command::TrainPosterior(args) => cmd::train_posterior::run(args),
        Command::Finetune(args) => cmd::finetune::run(args),
        Command::Calibrate(args) => cmd::calibrate::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
