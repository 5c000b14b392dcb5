//! qecd decoders.
//!
//! Every decoder implements one batch trait, [`Decoder`]: bit-packed detection
//! events in, predicted observable flips and a per-shot confidence out. The
//! sweep, the CLI and the benches are generic over it. This crate holds the
//! matching decoders (PyMatching, uncorrelated and two-pass correlated, on
//! PyMatching's sources compiled here as one unit: [`blossom`], with weight
//! gaps from [`gap`]),
//! belief-matching ([`belief`], with per-shot weights through [`reweight`]), the
//! calibration that turns a matching weight gap into a probability, the
//! neural decoder on the inference kernels ([`neural`]) with its streaming,
//! round-by-round form ([`stream`]), and the logical-error-rate statistics.
//!
//! It reads syndromes through `simulator-bridge` and never touches tch or tonic.
#![deny(missing_docs)]

pub mod belief;
pub mod blossom;
pub mod confidence;
pub mod gap;
pub mod matching;
pub mod neural;
pub mod neural_matching;
pub mod parallel;
pub mod reweight;
pub mod stats;
pub mod stream;
#[cfg(test)]
mod testutil;

use std::fmt;
use std::str::FromStr;

pub use belief::{BeliefMatching, BpOptions, BpStats};
pub use confidence::GapCalibration;
pub use kernels::{Backend, BackendError, Device};
pub use matching::MatchingDecoder;
pub use neural::{NeuralDecoder, NeuralModel};
pub use neural_matching::{NeuralMatching, ShotStream};
pub use parallel::{decode_parallel, decode_parallel_with};
pub use simulator_bridge::PackedShots;
pub use stream::{
    Driver, Feed, Reply, ReplyFn, RoundAck, Session, ShotResult, StreamEngine, StreamError, StreamOptions,
};

/// What a decoder says about a batch of shots.
#[derive(Clone, Debug, PartialEq)]
pub struct Decisions {
    /// Predicted observable flips, one row of `num_observables` bits per shot.
    pub predictions: PackedShots,
    /// Probability that each shot's prediction is right, when the decoder was
    /// asked for one.
    pub confidence: Option<Vec<f64>>,
}

/// A batch decoder.
pub trait Decoder {
    /// Short name, as used on the command line and in sweep CSVs.
    fn name(&self) -> &str;
    /// Detection-event bits per shot that the decoder expects.
    fn num_detectors(&self) -> usize;
    /// Observables it predicts.
    fn num_observables(&self) -> usize;
    /// Decodes a batch of shots.
    fn decode_batch(&mut self, detection_events: &PackedShots) -> Result<Decisions, DecodeError>;
}

impl<D: Decoder + ?Sized> Decoder for Box<D> {
    fn name(&self) -> &str {
        (**self).name()
    }

    fn num_detectors(&self) -> usize {
        (**self).num_detectors()
    }

    fn num_observables(&self) -> usize {
        (**self).num_observables()
    }

    fn decode_batch(&mut self, detection_events: &PackedShots) -> Result<Decisions, DecodeError> {
        (**self).decode_batch(detection_events)
    }
}

/// The decoders qecd can build by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecoderKind {
    /// PyMatching, uncorrelated.
    Matching,
    /// PyMatching's two-pass correlated matching.
    Correlated,
    /// Belief-matching: BP on the hypergraph, its posteriors as matching's weights.
    Belief,
    /// The recurrent-transformer neural decoder (needs a model checkpoint).
    Neural,
    /// Neural-posterior matching: the posterior model's edge probabilities as matching's weights.
    NeuralMatching,
}

impl DecoderKind {
    /// All kinds, in the order they are listed to users.
    pub const ALL: [DecoderKind; 5] = [
        DecoderKind::Matching,
        DecoderKind::Correlated,
        DecoderKind::Belief,
        DecoderKind::Neural,
        DecoderKind::NeuralMatching,
    ];
    /// PyMatching's own decoders (built by [`MatchingDecoder`]).
    pub const MATCHING: [DecoderKind; 2] = [DecoderKind::Matching, DecoderKind::Correlated];

    /// The name used on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            DecoderKind::Matching => "matching",
            DecoderKind::Correlated => "correlated",
            DecoderKind::Belief => "belief",
            DecoderKind::Neural => "neural",
            DecoderKind::NeuralMatching => "neural-matching",
        }
    }
}

impl FromStr for DecoderKind {
    type Err = DecodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DecoderKind::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            DecodeError::Invalid(format!(
                "unknown decoder '{s}' (expected matching, correlated, belief, neural or neural-matching)"
            ))
        })
    }
}

impl fmt::Display for DecoderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why decoding failed.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The input does not fit the decoder.
    #[error("{0}")]
    Invalid(String),
    /// PyMatching reported an error.
    #[error("pymatching: {0}")]
    Matching(String),
    /// Stim reported an error.
    #[error("stim: {0}")]
    Stim(String),
    /// The syndrome source failed.
    #[error(transparent)]
    Bridge(#[from] simulator_bridge::BridgeError),
}

impl From<stim::StimError> for DecodeError {
    fn from(e: stim::StimError) -> Self {
        DecodeError::Stim(e.to_string())
    }
}

/// Refuses shots that are not `num_detectors` bits wide, as every decoder
/// over a detector error model does.
pub(crate) fn check_width(events: &PackedShots, num_detectors: usize) -> Result<(), DecodeError> {
    if events.bits_per_shot() != num_detectors {
        return Err(DecodeError::Invalid(format!(
            "shots have {} detection-event bits but the detector error model has {num_detectors} detectors",
            events.bits_per_shot()
        )));
    }
    Ok(())
}

/// A C++ exception from PyMatching's side of a cxx bridge.
pub(crate) fn matching_error(e: cxx::Exception) -> DecodeError {
    DecodeError::Matching(e.what().to_owned())
}

/// Decodes a batch shot by shot: `decode_shot` takes one shot's detection
/// events and returns its observable flips (bit `k` for observable `k`) and,
/// where it has one, its confidence. Shots must have `num_detectors` bits.
pub(crate) fn decode_each(
    events: &PackedShots,
    num_detectors: usize,
    num_observables: usize,
    mut decode_shot: impl FnMut(&[u64]) -> Result<(u64, Option<f64>), DecodeError>,
) -> Result<Decisions, DecodeError> {
    check_width(events, num_detectors)?;
    let mut predictions = PackedShots::zeros(events.num_shots(), num_observables);
    let mut confidence = Vec::new();
    let mut hits = Vec::new();
    for shot in 0..events.num_shots() {
        hits.clear();
        hits.extend(events.hits(shot).map(|k| k as u64));
        let (flips, sure) = decode_shot(&hits)?;
        for o in (0..num_observables).filter(|&o| flips >> o & 1 != 0) {
            predictions.set(shot, o, true);
        }
        confidence.extend(sure);
    }
    let confidence = (confidence.len() == events.num_shots() && !confidence.is_empty()).then_some(confidence);
    Ok(Decisions { predictions, confidence })
}

/// Number of shots whose predicted observables differ from the actual ones.
pub fn count_errors(predictions: &PackedShots, actual: &PackedShots) -> usize {
    predictions.count_row_mismatches(actual)
}
