//! The neural decoder through the tch forward (feature `train`): the
//! reference path until the fused kernels replace it.

use anyhow::{Context, Result};
use decoder::{Decisions, DecodeError, Decoder, PackedShots};
use models::train::logits_for;
use models::{Checkpoint, Featurizer};
use simulator_bridge::StabilizerLayout;
use tch::Device;

/// The device training and tch inference use: CUDA when present.
pub fn device() -> Device {
    Device::cuda_if_available()
}

/// A human-readable name of the device.
pub fn device_name(device: Device, threads: usize) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", threads),
        d => format!("{d:?}"),
    }
}

/// Builds the stabilizer layout of a DEM from its detector coordinates.
pub fn dem_layout(dem: &stim::DetectorErrorModel, basis: simulator_bridge::Basis) -> Result<StabilizerLayout> {
    let coords = dem.get_detector_coordinates(None).map_err(|e| anyhow::anyhow!("{e}"))?;
    StabilizerLayout::from_coordinates(&coords, dem.num_detectors() as usize, basis)
        .context("the neural decoder needs (x, y, t) detector coordinates")
}

/// Neural decoding with the tch forward.
pub struct TchNeuralDecoder {
    net: models::net::Net,
    featurizer: Featurizer,
    temperature: f64,
    num_observables: usize,
    device: Device,
}

impl TchNeuralDecoder {
    /// Loads `ckpt` for the detectors described by `layout`.
    pub fn new(ckpt: &Checkpoint, layout: &StabilizerLayout) -> Result<Self> {
        let device = device();
        Ok(Self {
            net: models::net::Net::from_checkpoint(ckpt, device)?,
            featurizer: Featurizer::new(&ckpt.meta.layout, layout)?,
            temperature: ckpt.meta.temperature,
            num_observables: ckpt.meta.config.num_observables,
            device,
        })
    }
}

impl Decoder for TchNeuralDecoder {
    fn name(&self) -> &str {
        "neural"
    }

    fn num_detectors(&self) -> usize {
        self.featurizer.num_detectors()
    }

    fn num_observables(&self) -> usize {
        self.num_observables
    }

    fn decode_batch(&mut self, events: &PackedShots) -> Result<Decisions, DecodeError> {
        if events.bits_per_shot() != self.num_detectors() {
            return Err(DecodeError::Invalid(format!(
                "shots have {} detection-event bits but the model's circuit has {} detectors",
                events.bits_per_shot(),
                self.num_detectors()
            )));
        }
        let logits = logits_for(&self.net, &self.featurizer, events, self.device)
            .map_err(|e| DecodeError::Invalid(e.to_string()))?;
        let o = self.num_observables;
        let mut predictions = PackedShots::zeros(events.num_shots(), o);
        let mut confidence = Vec::with_capacity(events.num_shots());
        for s in 0..events.num_shots() {
            let mut c = 1.0;
            for k in 0..o {
                let x = logits[s * o + k] as f64;
                predictions.set(s, k, x > 0.0);
                let p = 1.0 / (1.0 + (-x / self.temperature).exp());
                c *= p.max(1.0 - p);
            }
            confidence.push(c);
        }
        Ok(Decisions { predictions, confidence: Some(confidence) })
    }
}
