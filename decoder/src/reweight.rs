//! Matching with per-shot edge weights, through a cxx bridge of our own into
//! PyMatching's C++ (`cxx/matching.cc`).
//!
//! PyMatching builds its blossom graph once, with integer weights scaled from
//! the detector error model's. [`WeightedMatching`] keeps that graph and,
//! for one shot, writes a weight for every edge into it, matches, and writes
//! the model's own weights back: the same mechanism correlated matching uses
//! for its second pass, applied to all edges. Weights are discretised exactly
//! as PyMatching discretises the model's, so decoding with the model's own
//! weights gives plain matching's predictions bit for bit.

use std::pin::Pin;

use crate::DecodeError;

#[cxx::bridge(namespace = "qecd")]
mod ffi {
    /// One edge of the matching graph.
    #[derive(Clone, Copy, Debug, PartialEq)]
    struct ReweightEdge {
        /// A detector the edge touches.
        node1: u64,
        /// The other detector, or `u64::MAX` for an edge to the boundary.
        node2: u64,
        /// Observables the edge flips, bit `k` for observable `k`.
        observables: u64,
        /// The model's weight, ln((1-p)/p) of the merged probability.
        weight: f64,
        /// The model's merged error probability.
        probability: f64,
    }

    unsafe extern "C++" {
        include!("decoder/cxx/matching.h");

        type ReweightMatching;

        fn new_reweight_matching(dem_text: &str, max_weight: f64) -> Result<UniquePtr<ReweightMatching>>;
        fn num_detectors(self: &ReweightMatching) -> u64;
        fn num_observables(self: &ReweightMatching) -> u64;
        fn max_weight(self: &ReweightMatching) -> f64;
        fn edges(self: &ReweightMatching) -> Vec<ReweightEdge>;
        fn decode(self: Pin<&mut ReweightMatching>, events: &[u64], observables: &mut [u8]) -> Result<f64>;
        fn decode_with_weights(
            self: Pin<&mut ReweightMatching>,
            events: &[u64],
            weights: &[f64],
            observables: &mut [u8],
        ) -> Result<f64>;
    }
}

pub use ffi::ReweightEdge as Edge;

// SAFETY: the C++ object owns all its state, has no thread affinity, and is
// only reached through `&mut` (or `&` for reads of immutable fields).
unsafe impl Send for ffi::ReweightMatching {}

/// Edge that reaches the boundary, in [`Edge::node2`].
pub use simulator_bridge::edges::BOUNDARY;

/// The observables flipped, bit `k` for observable `k`, from one byte per
/// observable as [`WeightedMatching`] writes them.
pub fn observable_mask(observables: &[u8]) -> u64 {
    observables.iter().enumerate().fold(0, |acc, (o, &b)| acc | (u64::from(b != 0) << o))
}

/// PyMatching's matching graph of one detector error model, decodable with
/// per-shot edge weights.
pub struct WeightedMatching {
    inner: cxx::UniquePtr<ffi::ReweightMatching>,
    edges: Vec<Edge>,
    num_detectors: usize,
    num_observables: usize,
}

impl WeightedMatching {
    /// Builds the graph of `dem` (decomposed into edges, as for matching).
    ///
    /// Per-shot weights are clamped to `[0, max_weight]`. With `max_weight`
    /// no larger than the model's largest edge weight, the integer scale is
    /// PyMatching's own; a larger one widens the scale (coarsening it by the
    /// same ratio) so that unlikely edges keep their weight.
    pub fn from_dem(dem: &stim::DetectorErrorModel, max_weight: f64) -> Result<Self, DecodeError> {
        if !max_weight.is_finite() {
            return Err(DecodeError::Invalid(format!("the largest edge weight must be finite, not {max_weight}")));
        }
        let inner = ffi::new_reweight_matching(&dem.to_string(), max_weight).map_err(crate::matching_error)?;
        let edges = inner.edges();
        let num_detectors = inner.num_detectors() as usize;
        let num_observables = inner.num_observables() as usize;
        Ok(Self { inner, edges, num_detectors, num_observables })
    }

    /// The graph's edges, in the order per-shot weights are given.
    pub fn edges(&self) -> &[Edge] {
        &self.edges
    }

    /// Detectors of the model.
    pub fn num_detectors(&self) -> usize {
        self.num_detectors
    }

    /// Observables of the model.
    pub fn num_observables(&self) -> usize {
        self.num_observables
    }

    /// The largest weight a shot can give an edge.
    pub fn max_weight(&self) -> f64 {
        self.inner.max_weight()
    }

    /// The model's own weights, in edge order.
    pub fn own_weights(&self) -> Vec<f64> {
        self.edges.iter().map(|e| e.weight).collect()
    }

    fn pinned(&mut self) -> Pin<&mut ffi::ReweightMatching> {
        self.inner.pin_mut()
    }

    /// Matches `events` (sorted or not, each below `num_detectors`) with the
    /// model's weights; writes one byte per observable into `observables`
    /// and returns the matching's weight.
    pub fn decode(&mut self, events: &[u64], observables: &mut [u8]) -> Result<f64, DecodeError> {
        self.pinned().decode(events, observables).map_err(|e| DecodeError::Invalid(e.what().to_owned()))
    }

    /// Matches `events` with `weights`, one per edge in [`Self::edges`]'s
    /// order. The model's own weights come back before the next
    /// [`Self::decode`] (not after every shot: the next per-shot decode
    /// overwrites every edge anyway). A wrong length or a non-finite weight
    /// is an error for this shot only, found before anything is written.
    pub fn decode_with_weights(
        &mut self,
        events: &[u64],
        weights: &[f64],
        observables: &mut [u8],
    ) -> Result<f64, DecodeError> {
        if weights.len() != self.edges.len() {
            return Err(DecodeError::Invalid(format!(
                "got {} edge weights for a matching graph of {} edges",
                weights.len(),
                self.edges.len()
            )));
        }
        if let Some(i) = weights.iter().position(|w| !w.is_finite()) {
            return Err(DecodeError::Invalid(format!("edge {i}'s weight is {}, not a finite number", weights[i])));
        }
        self.pinned()
            .decode_with_weights(events, weights, observables)
            .map_err(|e| DecodeError::Invalid(e.what().to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{circuit, dem};
    use crate::{Decoder, DecoderKind, MatchingDecoder};
    use simulator_bridge::sample::Sampler;

    /// Per-shot weights equal to the model's own reproduce plain matching bit
    /// for bit, and the graph is restored between shots.
    #[test]
    fn own_weights_are_plain_matching() {
        for (d, rounds) in [(3, 3), (5, 5)] {
            let c = circuit(d, rounds, 0.004);
            let model = dem(&c);
            let shots = Sampler::new(&c).sample(5_000, 7, 0).unwrap();
            let mut plain = MatchingDecoder::from_dem(&model, DecoderKind::Matching).unwrap();
            let expected = plain.decode_batch(&shots.detectors).unwrap().predictions;
            let mut weighted = WeightedMatching::from_dem(&model, 0.0).unwrap();
            let own = weighted.own_weights();
            // Something else between shots: all edges at weight 1.
            let flat = vec![1.0; own.len()];
            let mut obs = [0u8; 1];
            let mut differs_flat = 0;
            for s in 0..shots.detectors.num_shots() {
                let events: Vec<u64> = shots.detectors.hits(s).map(|k| k as u64).collect();
                weighted.decode_with_weights(&events, &own, &mut obs).unwrap();
                assert_eq!(obs[0] != 0, expected.get(s, 0), "d={d} shot {s}");
                weighted.decode_with_weights(&events, &flat, &mut obs).unwrap();
                differs_flat += usize::from((obs[0] != 0) != expected.get(s, 0));
                weighted.decode(&events, &mut obs).unwrap();
                assert_eq!(obs[0] != 0, expected.get(s, 0), "d={d} shot {s}: the graph was not restored");
            }
            assert!(differs_flat > 0, "flat weights changed no prediction at d={d}: the override did nothing");
        }
    }

    /// A wider weight scale changes nothing the model's weights decide, to
    /// within the coarser rounding.
    #[test]
    fn widened_scale_keeps_predictions() {
        let c = circuit(5, 5, 0.003);
        let model = dem(&c);
        let shots = Sampler::new(&c).sample(5_000, 8, 0).unwrap();
        let mut plain = WeightedMatching::from_dem(&model, 0.0).unwrap();
        let mut wide = WeightedMatching::from_dem(&model, 40.0).unwrap();
        assert_eq!(wide.max_weight(), 40.0);
        assert_eq!(plain.edges(), wide.edges());
        let own = plain.own_weights();
        let (mut a, mut b) = ([0u8], [0u8]);
        let mut differ = 0;
        for s in 0..shots.detectors.num_shots() {
            let events: Vec<u64> = shots.detectors.hits(s).map(|k| k as u64).collect();
            plain.decode(&events, &mut a).unwrap();
            wide.decode_with_weights(&events, &own, &mut b).unwrap();
            differ += usize::from(a != b);
        }
        assert!(differ <= 5, "{differ} of 5000 predictions changed with the wider scale");
    }

    #[test]
    fn bad_weights_fail_one_shot_only() {
        let c = circuit(3, 3, 0.003);
        let mut m = WeightedMatching::from_dem(&dem(&c), 0.0).unwrap();
        let own = m.own_weights();
        let mut obs = [0u8];
        let err = m.decode_with_weights(&[0, 1], &own[1..], &mut obs).unwrap_err();
        assert!(err.to_string().contains(&format!("{} edge weights", own.len() - 1)), "{err}");
        let mut nan = own.clone();
        nan[3] = f64::NAN;
        let err = m.decode_with_weights(&[0, 1], &nan, &mut obs).unwrap_err();
        assert!(err.to_string().contains("edge 3"), "{err}");
        let err = m.decode_with_weights(&[10_000], &own, &mut obs).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
        // The next shot decodes as plain matching does.
        let mut plain = [0u8];
        m.decode(&[0, 1], &mut plain).unwrap();
        m.decode_with_weights(&[0, 1], &own, &mut obs).unwrap();
        assert_eq!(obs, plain);
    }

    #[test]
    fn edges_describe_the_graph() {
        let c = circuit(3, 3, 0.003);
        let model = dem(&c);
        let m = WeightedMatching::from_dem(&model, 0.0).unwrap();
        let nd = model.num_detectors();
        assert!(m.edges().iter().all(|e| e.node1 < nd && (e.node2 == BOUNDARY || e.node2 < nd)));
        assert!(m.edges().iter().any(|e| e.node2 == BOUNDARY));
        assert!(m.edges().iter().any(|e| e.observables == 1));
        for e in m.edges() {
            assert!((e.weight - ((1.0 - e.probability) / e.probability).ln()).abs() < 1e-9);
        }
    }
}
