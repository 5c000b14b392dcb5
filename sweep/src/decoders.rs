//! Decoders and models built from files, circuits and DEMs: what a sweep
//! case decodes with, and what the binary's `predict`, `demo` and
//! `calibrate` build theirs with.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use decoder::{Decoder, DecoderKind, NeuralModel};
use models::posterior::PosteriorModel;
use simulator_bridge::{Basis, StabilizerLayout};

/// The detector error model that matching decodes with
/// ([`simulator_bridge::decoding_dem`]).
pub fn decoding_dem(circuit: &stim::Circuit) -> Result<stim::DetectorErrorModel> {
    simulator_bridge::decoding_dem(circuit).context("cannot build a detector error model")
}

/// The posterior model at `path`, or the one built into qecd
/// ([`models::zoo::posterior_at`]); with its name.
pub fn load_posterior(path: Option<&Path>) -> Result<(String, Arc<PosteriorModel>)> {
    let (name, model) = models::zoo::posterior_at(path)?;
    Ok((name, Arc::new(model)))
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
    kind: DecoderKind,
    dem_text: &str,
    circuit: Option<&stim::Circuit>,
    model: Option<&Arc<NeuralModel>>,
    posterior: Option<&Arc<PosteriorModel>>,
) -> Result<Box<dyn Decoder>> {
    match kind {
        DecoderKind::NeuralMatching => {
            let posterior = match posterior {
                Some(p) => p.clone(),
                None => load_posterior(None)?.1,
            };
            let basis: Basis = posterior.config.basis.parse()?;
            let layout = layout_of(circuit, dem_text, basis)?;
            let dem: stim::DetectorErrorModel = dem_text.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(Box::new(decoder::NeuralMatching::new(posterior, &dem, &layout)?))
        }
        DecoderKind::Neural => {
            let model = model.context("the neural decoder needs --model CKPT")?;
            let layout = layout_of(circuit, dem_text, model.basis())?;
            Ok(Box::new(decoder::NeuralDecoder::new(model.clone(), &layout)?))
        }
        DecoderKind::Belief => {
            Ok(Box::new(decoder::BeliefMatching::from_dem_text(dem_text, decoder::BpOptions::default())?))
        }
        kind => Ok(Box::new(decoder::MatchingDecoder::from_dem_text(dem_text, kind)?)),
    }
}
