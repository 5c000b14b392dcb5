//! One module per subcommand, plus what they share. What they share with
//! the sweep (building decoders and models, the progress bar, the clock
//! seed) lives in `qecd_sweep` and is re-exported here.

pub mod calibrate;
pub mod client;
pub mod demo;
pub mod echo;
pub mod finetune;
pub mod hostile;
pub mod learn_noise;
pub mod load;
pub mod predict;
pub mod replay;
pub mod sample;
pub mod serve;
pub mod train;
#[cfg(feature = "train")]
pub mod train_posterior;

pub use qecd_sweep::decoders::{build_decoder, decoding_dem, dem_layout, load_model, load_model_at, load_posterior};
pub use qecd_sweep::progress::shot_bar;
pub use qecd_sweep::sweep::fresh_seed;

use std::path::Path;

use anyhow::{Context, Result};
use simulator_bridge::{Basis, MemoryExperiment, NoiseModel, StabilizerLayout};

/// Reads and parses a Stim circuit file.
pub fn read_circuit(path: &Path) -> Result<stim::Circuit> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.parse().map_err(|e: stim::StimError| anyhow::anyhow!("{}: not a Stim circuit: {e}", path.display()))
}

/// A user's circuit must carry detector coordinates, from which the layout comes.
pub fn check_layout(circuit: &stim::Circuit, basis: Basis, path: &Path) -> Result<StabilizerLayout> {
    StabilizerLayout::from_circuit(circuit, basis).with_context(|| format!("{}", path.display()))
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

/// A multi-threaded tokio runtime with `threads` workers (0: one per core).
pub fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        builder.worker_threads(threads);
    }
    builder.enable_all().build().context("cannot start the async runtime")
}
