//! One module per subcommand, plus what they share.

pub mod demo;
pub mod predict;
pub mod sample;
pub mod sweep;

use std::path::Path;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use simulator_bridge::{Basis, MemoryExperiment, NoiseModel, StabilizerLayout};

/// A progress bar on stderr counting shots; hidden when stderr is not a terminal.
pub fn shot_bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} shots ({per_sec}, eta {eta}) {msg}",
        )
        .expect("valid template"),
    );
    bar.set_prefix(what.to_string());
    bar
}

/// Reads and parses a Stim circuit file.
pub fn read_circuit(path: &Path) -> Result<stim::Circuit> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.parse().map_err(|e: stim::StimError| anyhow::anyhow!("{}: not a Stim circuit: {e}", path.display()))
}

/// A user's circuit must carry detector coordinates, from which the layout comes.
pub fn check_layout(circuit: &stim::Circuit, basis: Basis, path: &Path) -> Result<StabilizerLayout> {
    StabilizerLayout::from_circuit(circuit, basis).with_context(|| format!("{}", path.display()))
}

/// The detector error model that matching decodes with: errors decomposed
/// into graph-like pieces, loops flattened.
pub fn decoding_dem(circuit: &stim::Circuit) -> Result<stim::DetectorErrorModel> {
    circuit
        .detector_error_model_with_options(true, true, false, 0.0, false, false)
        .map_err(|e| anyhow::anyhow!("cannot build a detector error model: {e}"))
}

/// A memory experiment and its noise, as given on the command line.
pub fn experiment(
    distance: usize,
    rounds: usize,
    basis: Basis,
    noise: &str,
    p: f64,
) -> Result<(MemoryExperiment, NoiseModel)> {
    Ok((MemoryExperiment::new(distance, rounds, basis)?, NoiseModel::from_name(noise, p)?))
}

/// A seed from the clock, for commands run without `--seed`.
pub fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    simulator_bridge::sample::derive_seed(nanos as u64, std::process::id() as u64)
}
