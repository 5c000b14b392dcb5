//! `qecd plot` and `qecd plot-training`: their arguments, and what they run.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};

use super::{plot_ler, plot_ler_rounds, plot_training};
use crate::sinter_csv;

/// Arguments of `qecd plot`.
#[derive(Args, Debug)]
pub struct PlotArgs {
    /// Sweep CSV files (sinter format); repeat or comma-separate for several.
    #[arg(long = "in", required = true, value_delimiter = ',')]
    pub inputs: Vec<PathBuf>,
    /// The PNG to write.
    #[arg(long)]
    pub out: PathBuf,
    /// The x axis: code distance (one curve per decoder, noise, p and basis)
    /// or rounds (log scale; one curve per decoder, distance, noise, p and basis).
    #[arg(long, value_enum, default_value = "distance")]
    pub x: PlotX,
}

/// What `qecd plot` puts on its x axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PlotX {
    /// Code distance.
    Distance,
    /// Rounds per experiment.
    Rounds,
}

/// Arguments of `qecd plot-training`.
#[derive(Args, Debug)]
pub struct PlotTrainingArgs {
    /// Training logs (`X.train.csv`, written by `qecd train`); repeat or comma-separate for several.
    #[arg(long = "in", required = true, value_delimiter = ',')]
    pub inputs: Vec<PathBuf>,
    /// Legend labels, one per log in order (default: the file name without `.train.csv`).
    #[arg(long = "label", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Held-out cases to plot, e.g. `r=25`; repeat or comma-separate (default: all).
    #[arg(long = "case", value_delimiter = ',')]
    pub cases: Vec<String>,
    /// The PNG to write.
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `qecd plot`.
pub fn run_plot(args: &PlotArgs) -> Result<()> {
    let cases = sinter_csv::read_cases(&args.inputs)?;
    match args.x {
        PlotX::Distance => plot_ler(&cases, &args.out)?,
        PlotX::Rounds => plot_ler_rounds(&cases, &args.out)?,
    }
    eprintln!("wrote {} ({} cases)", args.out.display(), cases.len());
    Ok(())
}

/// Runs `qecd plot-training`.
pub fn run_plot_training(args: &PlotTrainingArgs) -> Result<()> {
    let curves = plot_training(&args.inputs, &args.labels, &args.cases, &args.out)?;
    eprintln!("wrote {} ({curves} curves)", args.out.display());
    Ok(())
}
