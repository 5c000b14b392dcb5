//! What a `qecd.Decoder` is built from: the decoder kind, the detector error
//! model and, for the neural decoders, the model laid out on the DEM's
//! detectors. Everything that can be refused is refused here, before any
//! thread starts, with a message that names what does not fit.

use std::path::Path;
use std::sync::Arc;

use decoder::{
    BeliefMatching, BpOptions, DecodeError, DecoderKind, GapCalibration, MatchingDecoder, NeuralDecoder,
    NeuralMatching, NeuralModel,
};
use models::posterior::PosteriorModel;
use models::{Checkpoint, Positions};
use simulator_bridge::StabilizerLayout;

use crate::pool::{BoxedDecoder, Make};

use decoder::confidence::{CALIBRATION_SEED, CALIBRATION_SHOTS};

/// A decoder's recipe, shared by every worker thread.
pub struct Spec {
    /// Which decoder.
    pub kind: DecoderKind,
    /// The detector error model's text (each thread parses its own).
    dem_text: Arc<str>,
    /// Detectors per shot.
    pub num_detectors: usize,
    /// Observables predicted per shot.
    pub num_observables: usize,
    /// The neural decoder's model and the DEM's stabilizer layout.
    neural: Option<(Arc<NeuralModel>, Arc<StabilizerLayout>)>,
    /// Neural-matching's posterior model and the DEM's stabilizer layout.
    posterior: Option<(Arc<PosteriorModel>, Arc<StabilizerLayout>)>,
}

/// A neural checkpoint by path or by zoo name.
fn checkpoint(model: &str) -> Result<(String, Checkpoint), DecodeError> {
    let path = Path::new(model);
    if path.is_file() {
        let ckpt = Checkpoint::load(path).map_err(|e| DecodeError::Invalid(e.to_string()))?;
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        return Ok((name, ckpt));
    }
    let zoo = models::zoo::CHECKPOINTS;
    match zoo.iter().find(|(name, _)| *name == model) {
        Some((name, bytes)) => {
            let ckpt = Checkpoint::from_bytes(bytes, name).map_err(|e| DecodeError::Invalid(e.to_string()))?;
            Ok((name.to_string(), ckpt))
        }
        None => Err(DecodeError::Invalid(format!(
            "model '{model}' is neither a checkpoint file nor a zoo model ({})",
            zoo.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        ))),
    }
}

fn invalid(e: impl std::fmt::Display) -> DecodeError {
    DecodeError::Invalid(e.to_string())
}

impl Spec {
    /// Resolves a decoder name, a DEM's text and an optional model.
    pub fn new(dem_text: &str, decoder: &str, model: Option<&str>) -> Result<Self, DecodeError> {
        let kind: DecoderKind = decoder.parse()?;
        let dem: stim::DetectorErrorModel =
            dem_text.parse().map_err(|e| invalid(format!("not a detector error model: {e}")))?;
        let mut spec = Self {
            kind,
            dem_text: Arc::from(dem_text),
            num_detectors: dem.num_detectors() as usize,
            num_observables: dem.num_observables() as usize,
            neural: None,
            posterior: None,
        };
        match kind {
            DecoderKind::Neural => {
                let model = model.ok_or_else(|| {
                    invalid(format!(
                        "decoder 'neural' needs model= (a checkpoint path, or a zoo model: {})",
                        models::zoo::CHECKPOINTS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                    ))
                })?;
                let (name, mut ckpt) = checkpoint(model)?;
                let layout = qecd_sweep::decoders::dem_layout(&dem, ckpt.meta.layout.basis)
                    .map_err(|e| invalid(format!("model '{name}' does not fit this detector error model: {e:#}")))?;
                // A relative model runs at any distance: lay it out for the DEM's.
                if let Some(d) = layout.distance()
                    && d != ckpt.meta.layout.distance
                    && ckpt.meta.config.positions != Positions::PerStabilizer
                {
                    ckpt = ckpt.retarget(d).map_err(invalid)?;
                }
                let neural = Arc::new(NeuralModel::from_checkpoint(name.clone(), &ckpt, &name)?);
                NeuralDecoder::new(neural.clone(), &layout)
                    .map_err(|e| invalid(format!("model '{name}' does not fit this detector error model: {e}")))?;
                spec.neural = Some((neural, Arc::new(layout)));
            }
            DecoderKind::NeuralMatching => {
                let (name, posterior) = models::zoo::posterior_at(model.map(Path::new)).map_err(invalid)?;
                let basis = posterior.config.basis.parse().map_err(invalid)?;
                let layout = qecd_sweep::decoders::dem_layout(&dem, basis).map_err(|e| {
                    invalid(format!("posterior model '{name}' does not fit this detector error model: {e:#}"))
                })?;
                let posterior = Arc::new(posterior);
                NeuralMatching::new(posterior.clone(), &dem, &layout).map_err(|e| {
                    invalid(format!("posterior model '{name}' does not fit this detector error model: {e}"))
                })?;
                spec.posterior = Some((posterior, Arc::new(layout)));
            }
            _ if model.is_some() => {
                return Err(invalid(format!("model= goes with decoder 'neural' or 'neural-matching', not '{kind}'")));
            }
            _ => {}
        }
        Ok(spec)
    }

    /// What each worker thread calls to build its decoder, reporting
    /// confidences through `calibration` where the decoder needs one.
    pub fn make(self: &Arc<Self>, calibration: Option<GapCalibration>) -> Make {
        let spec = self.clone();
        Arc::new(move || -> Result<BoxedDecoder, DecodeError> {
            Ok(match spec.kind {
                DecoderKind::Matching | DecoderKind::Correlated => {
                    let d = MatchingDecoder::from_dem_text(&spec.dem_text, spec.kind)?;
                    Box::new(match calibration {
                        Some(c) => d.with_confidence(c),
                        None => d,
                    })
                }
                DecoderKind::Belief => Box::new(BeliefMatching::from_dem_text(&spec.dem_text, BpOptions::default())?),
                DecoderKind::Neural => {
                    let (model, layout) = spec.neural.as_ref().expect("a neural spec has its model");
                    Box::new(NeuralDecoder::new(model.clone(), layout)?)
                }
                DecoderKind::NeuralMatching => {
                    let (posterior, layout) = spec.posterior.as_ref().expect("a neural-matching spec has its model");
                    let d = NeuralMatching::new(posterior.clone(), &spec.dem_text.parse()?, layout)?;
                    Box::new(match calibration {
                        Some(c) => d.with_confidence(c),
                        None => d,
                    })
                }
            })
        })
    }

    /// The calibration a confidence needs: fitted on held-out shots for the
    /// matching decoders and neural-matching, none for the neural decoder
    /// (its sigmoid is calibrated already). Belief-matching has no confidence.
    pub fn calibration(&self) -> Result<Option<GapCalibration>, DecodeError> {
        let dem: stim::DetectorErrorModel = self.dem_text.parse()?;
        match self.kind {
            DecoderKind::Matching | DecoderKind::Correlated => {
                let probe = MatchingDecoder::from_dem(&dem, self.kind)?;
                Ok(Some(probe.fit_calibration(&dem, CALIBRATION_SHOTS, CALIBRATION_SEED)?))
            }
            DecoderKind::NeuralMatching => {
                let (posterior, layout) = self.posterior.as_ref().expect("a neural-matching spec has its model");
                let mut probe = NeuralMatching::new(posterior.clone(), &dem, layout)?;
                Ok(Some(probe.fit_calibration(&dem, CALIBRATION_SHOTS, CALIBRATION_SEED)?))
            }
            DecoderKind::Neural => Ok(None),
            DecoderKind::Belief => {
                Err(invalid("decoder 'belief' reports no confidence; use decode_batch, or another decoder"))
            }
        }
    }
}
