//! One module per subcommand, plus what they share.

pub mod calibrate;
pub mod client;
pub mod demo;
pub mod echo;
pub mod finetune;
pub mod load;
pub mod predict;
pub mod replay;
pub mod report;
pub mod sample;
pub mod serve;
pub mod sweep;
pub mod train;
#[cfg(feature = "train")]
pub mod train_posterior;

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use decoder::NeuralModel;
use indicatif::{ProgressBar, ProgressStyle};
use models::posterior::PosteriorModel;
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

/// The detector error model that matching decodes with
/// ([`simulator_bridge::decoding_dem`]).
pub fn decoding_dem(circuit: &stim::Circuit) -> Result<stim::DetectorErrorModel> {
    simulator_bridge::decoding_dem(circuit).context("cannot build a detector error model")
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

/// The posterior model at `path`, or the one built into qecd
/// ([`models::zoo::posterior_at`]); with its name.
pub fn load_posterior(path: Option<&Path>) -> Result<(String, Arc<PosteriorModel>)> {
    let (name, model) = models::zoo::posterior_at(path)?;
    Ok((name, Arc::new(model)))
}

/// The stabilizer layout of a circuit, or else of a DEM's detector coordinates.
fn layout_of(circuit: Option<&stim::Circuit>, dem_text: &str, basis: Basis) -> Result<StabilizerLayout> {
    match circuit {
        Some(c) => Ok(StabilizerLayout::from_circuit(c, basis)?),
        None => dem_layout(&dem_text.parse().map_err(|e| anyhow::anyhow!("{e}"))?, basis),
    }
}

/// Builds a decoder of any kind. The neural decoders need their model and
/// the circuit (for its stabilizer layout; without one, the DEM's detector
/// coordinates); neural-matching without a `posterior` uses the one built
/// into qecd. The matching decoders and belief-matching need only the DEM.
pub fn build_decoder(
    kind: decoder::DecoderKind,
    dem_text: &str,
    circuit: Option<&stim::Circuit>,
    model: Option<&Arc<NeuralModel>>,
    posterior: Option<&Arc<PosteriorModel>>,
) -> Result<Box<dyn decoder::Decoder>> {
    match kind {
        decoder::DecoderKind::NeuralMatching => {
            let posterior = match posterior {
                Some(p) => p.clone(),
                None => load_posterior(None)?.1,
            };
            let basis: Basis = posterior.config.basis.parse()?;
            let layout = layout_of(circuit, dem_text, basis)?;
            let dem: stim::DetectorErrorModel = dem_text.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(Box::new(decoder::NeuralMatching::new(posterior, &dem, &layout)?))
        }
        decoder::DecoderKind::Neural => {
            let model = model.context("the neural decoder needs --model CKPT")?;
            let layout = layout_of(circuit, dem_text, model.basis())?;
            Ok(Box::new(decoder::NeuralDecoder::new(model.clone(), &layout)?))
        }
        decoder::DecoderKind::Belief => {
            Ok(Box::new(decoder::BeliefMatching::from_dem_text(dem_text, decoder::BpOptions::default())?))
        }
        kind => Ok(Box::new(decoder::MatchingDecoder::from_dem_text(dem_text, kind)?)),
    }
}

/// Loads a checkpoint for the inference kernels.
pub fn load_model(path: &Path) -> Result<Arc<NeuralModel>> {
    Ok(Arc::new(NeuralModel::load(path)?))
}

/// Loads a relative (distance-agnostic) model laid out for distance `d`.
pub fn load_model_at(path: &Path, d: usize) -> Result<Arc<NeuralModel>> {
    Ok(Arc::new(NeuralModel::load_at(path, Some(d))?))
}

/// Builds the stabilizer layout of a DEM from its detector coordinates.
pub fn dem_layout(dem: &stim::DetectorErrorModel, basis: Basis) -> Result<StabilizerLayout> {
    let coords = dem.get_detector_coordinates(None).map_err(|e| anyhow::anyhow!("{e}"))?;
    StabilizerLayout::from_coordinates(&coords, dem.num_detectors() as usize, basis)
        .context("the neural decoder needs (x, y, t) detector coordinates")
}

/// A seed from the clock, for commands run without `--seed`.
pub fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    simulator_bridge::sample::derive_seed(nanos as u64, std::process::id() as u64)
}

/// A multi-threaded tokio runtime with `threads` workers (0: one per core).
pub fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        builder.worker_threads(threads);
    }
    builder.enable_all().build().context("cannot start the async runtime")
}
