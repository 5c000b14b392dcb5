//! Neural-posterior matching: the posterior model (docs/posterior.md) gives
//! every edge of the matching graph a probability for this shot, and one
//! matching with those weights finds the global answer.
//!
//! An edge whose logit is ℓ gets weight `ln((1-p)/p) = -ℓ` (the log-odds),
//! clamped to `[0, MAX_WEIGHT]` since PyMatching needs non-negative weights.

use std::sync::Arc;

use models::posterior::{Geometry, PosteriorModel};
use models::posterior_cpu::{Prepared, Rounds, Stream};
use simulator_bridge::StabilizerLayout;

use crate::confidence::GapCalibration;
use crate::reweight::WeightedMatching;
use crate::{Decisions, DecodeError, Decoder, PackedShots};

/// The largest edge weight: the log-odds of a probability of about 1e-14.
pub const MAX_WEIGHT: f64 = 32.0;

/// The neural-matching decoder.
pub struct NeuralMatching {
    prepared: Prepared,
    geometry: Geometry,
    rounds: Rounds,
    matching: WeightedMatching,
    stream: Stream,
    weights: Vec<f64>,
    events: Vec<u64>,
    observables: Vec<u8>,
    calibration: Option<GapCalibration>,
}

impl NeuralMatching {
    /// Lays `model` out for the circuit whose decomposed model is `dem` and
    /// whose detectors sit as in `layout`. Refused, naming what differs, when
    /// the model does not fit.
    pub fn new(
        model: Arc<PosteriorModel>,
        dem: &stim::DetectorErrorModel,
        layout: &StabilizerLayout,
    ) -> Result<Self, DecodeError> {
        let matching = WeightedMatching::from_dem(dem, MAX_WEIGHT)?;
        if layout.num_detectors() != matching.num_detectors() {
            return Err(DecodeError::Invalid(format!(
                "the layout has {} detectors, the detector error model {}",
                layout.num_detectors(),
                matching.num_detectors()
            )));
        }
        let keys: Vec<(u64, u64)> =
            matching.edges().iter().map(|e| (e.node1.min(e.node2), e.node1.max(e.node2))).collect();
        let geometry = Geometry::new(&model.config, layout, &keys)
            .map_err(|e| DecodeError::Invalid(format!("the posterior model does not fit this circuit: {e}")))?;
        let observables = vec![0; matching.num_observables()];
        Ok(Self {
            prepared: Prepared::new(&model),
            rounds: Rounds::new(&geometry),
            geometry,
            matching,
            stream: Stream::default(),
            weights: Vec::new(),
            events: Vec::new(),
            observables,
            calibration: None,
        })
    }

    /// Reports a confidence for every shot: `calibration` maps the matching's
    /// weight under the shot's own edge weights (the less likely the
    /// explanation, the heavier) to the probability that the answer is right.
    pub fn with_confidence(mut self, calibration: GapCalibration) -> Self {
        self.calibration = Some(calibration);
        self
    }

    /// Fits that map on `shots` fresh shots sampled from `dem` with `seed`
    /// (not the seed of the shots being decoded).
    pub fn fit_calibration(
        &mut self,
        dem: &stim::DetectorErrorModel,
        shots: usize,
        seed: u64,
    ) -> Result<GapCalibration, DecodeError> {
        let (dets, obs) = crate::confidence::held_out(dem, shots, seed)?;
        let (mut weights, mut right) = (Vec::with_capacity(shots), Vec::with_capacity(shots));
        let mut hits = Vec::new();
        for s in 0..shots {
            hits.clear();
            hits.extend(dets.hits(s).map(|k| k as u64));
            let (flips, weight) = self.decode_shot(&hits)?;
            weights.push(weight);
            right.push((0..self.num_observables()).all(|o| (flips >> o & 1 != 0) == obs.get(s, o)));
        }
        Ok(GapCalibration::fit(&weights, &right))
    }

    /// The model's logit of each edge for this shot, in the matching graph's edge order.
    pub fn edge_logits(&mut self, events: &[u64]) -> &[f32] {
        self.prepared.shot(&self.geometry, &self.rounds, events.iter().map(|&d| d as usize), &mut self.stream);
        &self.stream.logits
    }

    /// This shot's edge weights, in the matching graph's edge order.
    pub fn edge_weights(&mut self, events: &[u64]) -> &[f64] {
        self.edge_logits(events);
        set_weights(&mut self.weights, &self.stream.logits);
        &self.weights
    }

    fn check_events(&self, events: &[u64]) -> Result<(), DecodeError> {
        let nd = self.matching.num_detectors();
        match events.iter().find(|&&d| d as usize >= nd) {
            Some(&d) => Err(DecodeError::Invalid(format!(
                "detection event {d} is out of range for a model with {nd} detectors"
            ))),
            None => Ok(()),
        }
    }

    /// Decodes one shot given its detection events; returns the observables
    /// flipped (bit `k` for observable `k`) and the matching's weight.
    pub fn decode_shot(&mut self, events: &[u64]) -> Result<(u64, f64), DecodeError> {
        self.check_events(events)?;
        if events.is_empty() {
            return Ok((0, 0.0));
        }
        self.edge_weights(events);
        self.match_events(events)
    }

    /// Matching with `self.weights`.
    fn match_events(&mut self, events: &[u64]) -> Result<(u64, f64), DecodeError> {
        self.events.clear();
        self.events.extend_from_slice(events);
        let weight = self.matching.decode_with_weights(&self.events, &self.weights, &mut self.observables)?;
        Ok((crate::reweight::observable_mask(&self.observables), weight))
    }

    /// Starts a shot decoded round by round: [`Self::push_round`] for each
    /// round as it arrives (the model steps then), [`Self::finish_shot`]
    /// after the last.
    pub fn start_shot(&self) -> ShotStream {
        let mut stream = Stream::default();
        stream.reset(&self.prepared, &self.geometry);
        ShotStream { stream, events: Vec::new() }
    }

    /// The next round of `shot`: the detectors of that round that fired.
    pub fn push_round(&self, shot: &mut ShotStream, round_events: &[u64]) -> Result<(), DecodeError> {
        self.check_events(round_events)?;
        let t = shot.stream.rounds_arrived();
        if t >= self.geometry.num_rounds {
            return Err(DecodeError::Invalid(format!("the shot already has all its {t} rounds")));
        }
        let g = &self.geometry;
        if let Some(&d) =
            round_events.iter().find(|&&d| g.tokens[g.token_of_detector[d as usize] as usize].0 as usize != t)
        {
            return Err(DecodeError::Invalid(format!("detector {d} is not one of round {t}'s")));
        }
        shot.events.extend_from_slice(round_events);
        shot.stream.push_round(&self.prepared, g, &self.rounds, round_events.iter().map(|&d| d as usize));
        Ok(())
    }

    /// Matches a shot whose rounds have all been pushed; its flips and the
    /// matching's weight, as [`Self::decode_shot`] gives them.
    pub fn finish_shot(&mut self, shot: &ShotStream) -> Result<(u64, f64), DecodeError> {
        let (have, want) = (shot.stream.rounds_arrived(), self.geometry.num_rounds);
        if have != want {
            return Err(DecodeError::Invalid(format!("the shot has {have} of its {want} rounds")));
        }
        if shot.events.is_empty() {
            return Ok((0, 0.0));
        }
        set_weights(&mut self.weights, &shot.stream.logits);
        self.match_events(&shot.events)
    }

    /// The confidence of an answer whose matching weighed `weight`, where a
    /// calibration was given.
    pub fn confidence(&self, weight: f64) -> Option<f64> {
        self.calibration.map(|c| c.confidence(&[weight]))
    }
}

/// Each edge's weight from its logit ℓ: the log-odds `−ℓ`, clamped to `[0, MAX_WEIGHT]`.
fn set_weights(weights: &mut Vec<f64>, logits: &[f32]) {
    weights.clear();
    weights.extend(logits.iter().map(|&l| (-l as f64).clamp(0.0, MAX_WEIGHT)));
}

/// A shot being decoded round by round.
pub struct ShotStream {
    stream: Stream,
    events: Vec<u64>,
}

impl Decoder for NeuralMatching {
    fn name(&self) -> &str {
        "neural-matching"
    }

    fn num_detectors(&self) -> usize {
        self.matching.num_detectors()
    }

    fn num_observables(&self) -> usize {
        self.matching.num_observables()
    }

    fn decode_batch(&mut self, events: &PackedShots) -> Result<Decisions, DecodeError> {
        let (nd, no) = (self.num_detectors(), self.num_observables());
        crate::decode_each(events, nd, no, |hits| {
            let (flips, weight) = self.decode_shot(hits)?;
            Ok((flips, self.confidence(weight)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use models::posterior::PosteriorConfig;
    use simulator_bridge::edges::DemEdges;
    use simulator_bridge::sample::Sampler;
    use simulator_bridge::{Basis, MemoryExperiment, NoiseModel};

    fn parts(d: usize, basis: Basis) -> (stim::Circuit, stim::DetectorErrorModel, StabilizerLayout) {
        let c = MemoryExperiment::new(d, d, basis).unwrap().noisy_circuit(&NoiseModel::Si1000 { p: 0.003 }).unwrap();
        let dem = simulator_bridge::decoding_dem(&c).unwrap();
        let layout = StabilizerLayout::from_circuit(&c, basis).unwrap();
        (c, dem, layout)
    }

    /// The decoder's answer is matching's with the weights the model gave
    /// that shot (here a model whose head ignores the tokens, so each edge
    /// gets its class's bias).
    #[test]
    fn answers_are_matching_with_the_model_weights() {
        let (c, dem, layout) = parts(5, Basis::Z);
        let edges = DemEdges::from_dem(&dem).unwrap().edges;
        let config = PosteriorConfig::new(Basis::Z, Geometry::classes_of(&layout, &edges).unwrap());
        let mut model = PosteriorModel::random(config, 1).unwrap();
        for (name, (_, v)) in model.tensors.iter_mut() {
            if name == "head.w" {
                v.fill(0.0);
            }
        }
        let mut nm = NeuralMatching::new(Arc::new(model), &dem, &layout).unwrap();
        let shots = Sampler::new(&c).sample(300, 3, 0).unwrap();
        let got = nm.decode_batch(&shots.detectors).unwrap().predictions;
        // Same weights, straight into the graph.
        let mut weighted = WeightedMatching::from_dem(&dem, MAX_WEIGHT).unwrap();
        let mut obs = [0u8];
        for s in 0..300 {
            let events: Vec<u64> = shots.detectors.hits(s).map(|k| k as u64).collect();
            if events.is_empty() {
                continue;
            }
            let w = nm.edge_weights(&events).to_vec();
            weighted.decode_with_weights(&events, &w, &mut obs).unwrap();
            assert_eq!(obs[0] != 0, got.get(s, 0), "shot {s}");
        }
    }

    /// The confidence, fitted on one seed with the zoo's model, predicts the
    /// number of errors on fresh shots, and the least confident tenth of the
    /// shots holds far more than a tenth of the errors.
    #[test]
    fn confidence_is_calibrated() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/posterior/posterior_z_si1000_p003.safetensors");
        let model = Arc::new(PosteriorModel::load(&path).unwrap());
        let (c, dem, layout) = parts(3, Basis::Z);
        let mut nm = NeuralMatching::new(model, &dem, &layout).unwrap();
        let calibration = nm.fit_calibration(&dem, 30_000, 1).unwrap();
        assert!(calibration.slope < 0.0, "heavier matchings should be less sure: {calibration:?}");
        let mut nm = nm.with_confidence(calibration);
        let shots = Sampler::new(&c).sample(30_000, 2, 0).unwrap();
        let decisions = nm.decode_batch(&shots.detectors).unwrap();
        let confidence = decisions.confidence.unwrap();
        let wrong: Vec<bool> =
            (0..30_000).map(|s| decisions.predictions.get(s, 0) != shots.observables.get(s, 0)).collect();
        let errors = wrong.iter().filter(|&&w| w).count() as f64;
        let expected: f64 = confidence.iter().map(|c| 1.0 - c).sum();
        assert!((expected - errors).abs() < 0.15 * errors, "predicted {expected:.0} errors, saw {errors}");
        let mut order: Vec<usize> = (0..30_000).collect();
        order.sort_by(|&a, &b| confidence[a].total_cmp(&confidence[b]));
        let worst_tenth = order[..3_000].iter().filter(|&&s| wrong[s]).count() as f64;
        assert!(worst_tenth > 0.3 * errors, "the least confident tenth holds {worst_tenth} of {errors} errors");
    }

    /// Round by round, as the service feeds it, the answer is the whole
    /// shot's; rounds out of place are refused.
    #[test]
    fn round_by_round_is_the_whole_shot() {
        let (c, dem, layout) = parts(5, Basis::Z);
        let edges = DemEdges::from_dem(&dem).unwrap().edges;
        let config = PosteriorConfig::new(Basis::Z, Geometry::classes_of(&layout, &edges).unwrap());
        let mut nm = NeuralMatching::new(Arc::new(PosteriorModel::random(config, 2).unwrap()), &dem, &layout).unwrap();
        let shots = Sampler::new(&c).sample(200, 4, 0).unwrap();
        for s in 0..200 {
            let events: Vec<u64> = shots.detectors.hits(s).map(|k| k as u64).collect();
            let whole = nm.decode_shot(&events).unwrap();
            let mut shot = nm.start_shot();
            for t in 0..layout.num_rounds {
                let round: Vec<u64> =
                    events.iter().copied().filter(|&d| layout.detectors[d as usize].round == t).collect();
                nm.push_round(&mut shot, &round).unwrap();
            }
            assert_eq!(nm.finish_shot(&shot).unwrap(), whole, "shot {s}");
        }
        let mut shot = nm.start_shot();
        let late = (0..layout.num_detectors()).find(|&d| layout.detectors[d].round == 1).unwrap() as u64;
        assert!(nm.push_round(&mut shot, &[late]).unwrap_err().to_string().contains("round 0"));
        assert!(nm.finish_shot(&shot).unwrap_err().to_string().contains("0 of"));
    }

    #[test]
    fn misfits_are_refused() {
        let (_, dem, layout) = parts(3, Basis::Z);
        let edges = DemEdges::from_dem(&dem).unwrap().edges;
        let config = PosteriorConfig::new(Basis::Z, Geometry::classes_of(&layout, &edges).unwrap());
        let model = Arc::new(PosteriorModel::random(config, 1).unwrap());
        let (_, dem_x, layout_x) = parts(3, Basis::X);
        let err = NeuralMatching::new(model.clone(), &dem_x, &layout_x).err().unwrap().to_string();
        assert!(err.contains("memory-Z") && err.contains("memory-X"), "{err}");
        let (_, dem5, _) = parts(5, Basis::Z);
        let err = NeuralMatching::new(model, &dem5, &layout).err().unwrap().to_string();
        assert!(err.contains("detectors"), "{err}");
    }
}
