//! The neural decoder on the inference kernels: a checkpoint loaded into
//! [`kernels::Weights`], decoded in batches through the [`Decoder`] trait.
//!
//! No libtorch is involved: the round step and readout run on a
//! [`kernels::Backend`], the fused CPU kernels by default
//! ([`NeuralDecoder::new`]) or the CUDA kernels ([`NeuralDecoder::on`] with
//! [`Device::Cuda`]), which reproduce the tch model's logits within 1e-4
//! (`models/tests/kernels_equivalence.rs`). The streaming form, one round at
//! a time, is in [`crate::stream`].

use std::path::Path;
use std::sync::Arc;

use kernels::{Backend, BackendError, Device, Weights};
use models::{Checkpoint, CheckpointMeta, Featurizer};
use simulator_bridge::layout::StabilizerType;
use simulator_bridge::{Basis, PackedShots, StabilizerLayout};

use crate::{Decisions, DecodeError, Decoder};

/// Shots stepped together by the batch decoder: large enough that every
/// weight panel is reused across many rows, small enough that the block's
/// features stay in cache.
const BATCH_SHOTS: usize = 64;

/// A checkpoint ready for the kernels: weights, temperature and the layout
/// the model expects. Shared (through [`Arc`]) by every decoder and stream
/// that uses it.
#[derive(Debug)]
pub struct NeuralModel {
    name: String,
    /// Shared with the CPU backends that run it.
    weights: Arc<Weights>,
    meta: CheckpointMeta,
    /// Model indices of the memory-basis stabilizers: the ones with a
    /// detector in the first and the final round.
    basis_stabilizers: Vec<usize>,
}

impl NeuralModel {
    /// Loads and validates a checkpoint file; the model is named after the file stem.
    pub fn load(path: &Path) -> Result<Self, DecodeError> {
        Self::load_at(path, None)
    }

    /// Loads a checkpoint file laid out for `distance` (when given): a
    /// relative model runs at any distance, a per-stabilizer one only at its own.
    pub fn load_at(path: &Path, distance: Option<usize>) -> Result<Self, DecodeError> {
        let invalid = |e: models::ModelError| DecodeError::Invalid(format!("{}: {e}", path.display()));
        let mut ckpt = Checkpoint::load(path).map_err(|e| DecodeError::Invalid(e.to_string()))?;
        if let Some(d) = distance {
            ckpt = ckpt.retarget(d).map_err(invalid)?;
        }
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        Self::from_checkpoint(name, &ckpt, &path.display().to_string())
    }

    /// The zoo checkpoints built into qecd ([`models::zoo::CHECKPOINTS`]), by name.
    pub fn zoo() -> Result<Vec<Self>, DecodeError> {
        models::zoo::CHECKPOINTS
            .iter()
            .map(|(name, bytes)| {
                let ckpt = Checkpoint::from_bytes(bytes, name).map_err(|e| DecodeError::Invalid(e.to_string()))?;
                Self::from_checkpoint(name.to_string(), &ckpt, name)
            })
            .collect()
    }

    /// Repacks a checkpoint's weights for the kernels. `origin` names it in errors.
    pub fn from_checkpoint(name: String, ckpt: &Checkpoint, origin: &str) -> Result<Self, DecodeError> {
        let weights = ckpt.kernel_weights(origin).map_err(|e| DecodeError::Invalid(e.to_string()))?;
        let own = StabilizerType::of_memory(ckpt.meta.layout.basis);
        let basis_stabilizers =
            ckpt.meta.layout.stabilizers.iter().enumerate().filter(|(_, s)| s.kind == own).map(|(i, _)| i).collect();
        Ok(Self { name, weights: Arc::new(weights), meta: ckpt.meta.clone(), basis_stabilizers })
    }

    /// The model's name (its file stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The kernel weights.
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// A backend that runs this model on `device` (the CPU backend on one thread for [`Device::Cpu`]).
    ///
    /// # Errors
    /// [`BackendError::Unavailable`] where the device cannot run here, saying why.
    pub fn backend(&self, device: Device) -> Result<Box<dyn Backend>, BackendError> {
        kernels::backend::on(device, self.weights.clone())
    }

    /// The CPU backend for this model, its batches of 256 streams or more
    /// split over `threads` threads.
    pub fn cpu_backend(&self, threads: usize) -> kernels::CpuBackend {
        kernels::backend::cpu(self.weights.clone()).with_threads(threads)
    }

    /// The checkpoint's metadata.
    pub fn meta(&self) -> &CheckpointMeta {
        &self.meta
    }

    /// Whether the weights run at any distance (relative positions,
    /// docs/model.md §Positions); see `models::Checkpoint::retarget`.
    pub fn is_relative(&self) -> bool {
        self.meta.config.positions != models::Positions::PerStabilizer
    }

    /// Code distance.
    pub fn distance(&self) -> usize {
        self.meta.layout.distance
    }

    /// Memory basis.
    pub fn basis(&self) -> Basis {
        self.meta.layout.basis
    }

    /// S: stabilizers per round.
    pub fn num_stabilizers(&self) -> usize {
        self.meta.config.num_stabilizers
    }

    /// O: observables predicted.
    pub fn num_observables(&self) -> usize {
        self.meta.config.num_observables
    }

    /// Model indices of the stabilizers measured in the first round and
    /// reconstructed from the data qubits in the final one (the memory basis).
    pub fn basis_stabilizers(&self) -> &[usize] {
        &self.basis_stabilizers
    }

    /// Maps the detectors of a circuit with this layout onto the model's grid.
    pub fn featurizer(&self, layout: &StabilizerLayout) -> Result<Featurizer, DecodeError> {
        Featurizer::new(&self.meta.layout, layout).map_err(|e| DecodeError::Invalid(e.to_string()))
    }

    /// The prediction and calibrated confidence of one shot's logits: each
    /// observable is flipped iff its logit is positive, and the confidence is
    /// the product over observables of `max(p, 1 − p)` with `p = sigmoid(logit / τ)`.
    pub fn decide(&self, logits: &[f32]) -> (Vec<bool>, f64) {
        decide(logits, self.meta.temperature)
    }
}

/// See [`NeuralModel::decide`].
pub fn decide(logits: &[f32], temperature: f64) -> (Vec<bool>, f64) {
    let confidence = logits.iter().map(|&x| models::calibration::confidence(x, temperature)).product();
    (logits.iter().map(|&x| x > 0.0).collect(), confidence)
}

/// Turns `[shots][O]` logits into [`Decisions`] with calibrated confidences.
pub fn decisions_from_logits(logits: &[f32], num_observables: usize, temperature: f64) -> Decisions {
    let shots = logits.len() / num_observables.max(1);
    let mut predictions = PackedShots::zeros(shots, num_observables);
    let mut confidence = Vec::with_capacity(shots);
    for (s, row) in logits.chunks_exact(num_observables).enumerate() {
        let (flips, c) = decide(row, temperature);
        for (k, f) in flips.into_iter().enumerate() {
            predictions.set(s, k, f);
        }
        confidence.push(c);
    }
    Decisions { predictions, confidence: Some(confidence) }
}

/// The batch neural decoder, for one circuit, on a [`Backend`] (the CPU
/// kernels unless told otherwise).
///
/// Shots are stepped `BATCH_SHOTS` at a time in the backend's slots
/// `0..BATCH_SHOTS`, from the calling thread (run several decoders through
/// [`crate::decode_parallel`] for more CPU threads).
pub struct NeuralDecoder {
    model: Arc<NeuralModel>,
    featurizer: Featurizer,
    /// Holds the block's states.
    backend: Box<dyn Backend>,
    /// `0..BATCH_SHOTS`: the block's shots' slots.
    slots: Vec<usize>,
    /// `[B][T][S][NF]`: the block's features.
    features: Vec<f32>,
    /// `[B][S][NF]`: one round of the block.
    round: Vec<f32>,
    /// `[shots][O]`.
    logits: Vec<f32>,
}

impl NeuralDecoder {
    /// A decoder of `layout`'s circuit with `model`, on the CPU kernels.
    pub fn new(model: Arc<NeuralModel>, layout: &StabilizerLayout) -> Result<Self, DecodeError> {
        let backend = Box::new(model.cpu_backend(1));
        Self::with_backend(model, layout, backend)
    }

    /// As [`NeuralDecoder::new`], on `device`.
    ///
    /// # Errors
    /// [`DecodeError::Invalid`] naming the device and why it is unavailable
    /// (no CUDA support in this build, no driver, no GPU).
    pub fn on(model: Arc<NeuralModel>, layout: &StabilizerLayout, device: Device) -> Result<Self, DecodeError> {
        let backend =
            model.backend(device).map_err(|e| DecodeError::Invalid(format!("neural decoder on {device}: {e}")))?;
        Self::with_backend(model, layout, backend)
    }

    /// As [`NeuralDecoder::new`], on `backend`, which must have been made for `model`'s weights.
    pub fn with_backend(
        model: Arc<NeuralModel>,
        layout: &StabilizerLayout,
        mut backend: Box<dyn Backend>,
    ) -> Result<Self, DecodeError> {
        let featurizer = model.featurizer(layout)?;
        if backend.config() != model.weights.config() {
            return Err(DecodeError::Invalid(format!(
                "the {} backend was made for {:?}, model {} is {:?}",
                backend.device(),
                backend.config(),
                model.name,
                model.weights.config()
            )));
        }
        backend.reserve(BATCH_SHOTS).map_err(|e| backend_error(backend.as_ref(), e))?;
        Ok(Self {
            model,
            featurizer,
            backend,
            slots: (0..BATCH_SHOTS).collect(),
            features: Vec::new(),
            round: Vec::new(),
            logits: Vec::new(),
        })
    }

    /// The model.
    pub fn model(&self) -> &Arc<NeuralModel> {
        &self.model
    }

    /// Where it runs ([`Backend::device`]).
    pub fn device(&self) -> &str {
        self.backend.device()
    }

    /// The raw logits, `[shots][O]`, of a batch.
    pub fn logits(&mut self, events: &PackedShots) -> Result<&[f32], DecodeError> {
        self.check(events)?;
        let o = self.model.weights.config().observables;
        self.logits.clear();
        self.logits.resize(events.num_shots() * o, 0.0);
        for start in (0..events.num_shots()).step_by(BATCH_SHOTS) {
            let end = (start + BATCH_SHOTS).min(events.num_shots());
            self.features.clear();
            self.featurizer.extend_features(events, start, end, &mut self.features);
            self.run_block(start, end).map_err(|e| backend_error(self.backend.as_ref(), e))?;
        }
        Ok(&self.logits)
    }

    /// Shots `start..end`, their features in `features`: from the zero state
    /// through every round, then the readout into their rows of `logits`.
    fn run_block(&mut self, start: usize, end: usize) -> Result<(), BackendError> {
        let config = self.model.weights.config();
        let (t_count, per_round, o) = (self.featurizer.num_rounds(), config.features_len(), config.observables);
        let slots = &self.slots[..end - start];
        self.round.resize(slots.len() * per_round, 0.0);
        self.backend.reset(slots)?;
        for t in 0..t_count {
            for (b, dst) in self.round.chunks_exact_mut(per_round).enumerate() {
                let shot = &self.features[b * t_count * per_round..][..t_count * per_round];
                dst.copy_from_slice(&shot[t * per_round..][..per_round]);
            }
            self.backend.step(slots, &self.round)?;
        }
        self.backend.readout(slots, &mut self.logits[start * o..end * o])
    }

    fn check(&self, events: &PackedShots) -> Result<(), DecodeError> {
        if events.bits_per_shot() != self.featurizer.num_detectors() {
            return Err(DecodeError::Invalid(format!(
                "shots have {} detection-event bits but the model's circuit has {} detectors",
                events.bits_per_shot(),
                self.featurizer.num_detectors()
            )));
        }
        Ok(())
    }
}

/// A backend's failure as the decoder reports it.
fn backend_error(backend: &dyn Backend, e: BackendError) -> DecodeError {
    DecodeError::Invalid(format!("neural decoder on {}: {e}", backend.device()))
}

impl Decoder for NeuralDecoder {
    fn name(&self) -> &str {
        "neural"
    }

    fn num_detectors(&self) -> usize {
        self.featurizer.num_detectors()
    }

    fn num_observables(&self) -> usize {
        self.model.num_observables()
    }

    fn decode_batch(&mut self, events: &PackedShots) -> Result<Decisions, DecodeError> {
        let (o, tau) = (self.model.num_observables(), self.model.meta.temperature);
        let logits = self.logits(events)?;
        Ok(decisions_from_logits(logits, o, tau))
    }
}
