//! The matching graph's edges as a decomposed detector error model names
//! them, and per-edge labels from Stim's DEM sampler.
//!
//! In a decomposed model (`decompose_errors=True`), each `error(...)` lists
//! components separated by `^`; a component of one or two detectors is an
//! edge of the matching graph (one detector: an edge to the boundary), and
//! PyMatching merges the components with the same detectors into one edge.
//! An edge's label in a shot is the parity of the fired mechanisms whose
//! decomposition contains it: the flip the edge "carries" in that shot.
//!
//! Stim's DEM sampler, compiled from the same flattened model, reports the
//! mechanisms that fired, indexed like the model's `error(...)` instructions.

use std::collections::HashMap;

use crate::error::BridgeError;
use crate::shots::PackedShots;

/// The other end of an edge that reaches the boundary.
pub const BOUNDARY: u64 = u64::MAX;

/// One `error(...)` instruction of a flattened, decomposed model.
#[derive(Clone, Debug, PartialEq)]
pub struct Mechanism {
    /// Its probability.
    pub probability: f64,
    /// Its components' detectors, in order.
    pub components: Vec<Vec<u64>>,
    /// The detectors it flips: the symmetric difference of its components'.
    pub detectors: Vec<u64>,
    /// The observables it flips, bit `k` for observable `k`.
    pub observables: u64,
    /// Indices into [`DemEdges::edges`] of its components that are edges
    /// (components of more than two detectors have none).
    pub edges: Vec<u32>,
}

/// The edges of a decomposed model and the mechanisms that lie on them.
#[derive(Clone, Debug, PartialEq)]
pub struct DemEdges {
    /// Distinct edges `(a, b)` with `a < b`, or `(a, BOUNDARY)`, in order of
    /// first appearance.
    pub edges: Vec<(u64, u64)>,
    /// Every `error(...)` instruction, in the flattened model's order.
    pub mechanisms: Vec<Mechanism>,
    /// Detectors of the model.
    pub num_detectors: usize,
}

impl DemEdges {
    /// Reads a decomposed model (loops are flattened here).
    pub fn from_dem(dem: &stim::DetectorErrorModel) -> Result<Self, BridgeError> {
        let num_detectors = dem.num_detectors() as usize;
        let mut index: HashMap<(u64, u64), u32> = HashMap::new();
        let mut edges = Vec::new();
        let mut mechanisms = Vec::new();
        let mut shift = 0u64;
        for item in &dem.flattened() {
            let stim::DemItem::Instruction(instruction) = item else {
                return Err(BridgeError::Circuit("the flattened detector error model still has a repeat block".into()));
            };
            match instruction.r#type() {
                stim::DemInstructionType::ShiftDetectors => {
                    for target in instruction.targets() {
                        if let stim::DemInstructionTarget::RelativeOffset(n) = target {
                            shift += n;
                        }
                    }
                    continue;
                }
                stim::DemInstructionType::Error => {}
                _ => continue,
            }
            let probability = instruction.args().first().copied().unwrap_or(0.0);
            let mut components: Vec<Vec<u64>> = vec![Vec::new()];
            let mut observables = 0u64;
            for target in instruction.targets() {
                let stim::DemInstructionTarget::DemTarget(t) = *target else { continue };
                if t.is_separator() {
                    components.push(Vec::new());
                } else if t.is_relative_detector_id() {
                    let d = t.raw_id() + shift;
                    if d as usize >= num_detectors {
                        return Err(BridgeError::Circuit(format!(
                            "D{d} is beyond the model's {num_detectors} detectors"
                        )));
                    }
                    components.last_mut().expect("one component at least").push(d);
                } else if t.is_logical_observable_id() {
                    if t.raw_id() >= 64 {
                        return Err(BridgeError::Circuit(format!("L{}: at most 64 observables", t.raw_id())));
                    }
                    observables ^= 1u64 << t.raw_id();
                }
            }
            let mut all: Vec<u64> = components.iter().flatten().copied().collect();
            all.sort_unstable();
            let mut detectors: Vec<u64> = Vec::with_capacity(all.len());
            for d in all {
                if detectors.last() == Some(&d) {
                    detectors.pop();
                } else {
                    detectors.push(d);
                }
            }
            let mut on = Vec::new();
            for c in &components {
                let key = match c.as_slice() {
                    [a] => (*a, BOUNDARY),
                    [a, b] if a != b => ((*a).min(*b), (*a).max(*b)),
                    _ => continue,
                };
                let next = edges.len() as u32;
                let e = *index.entry(key).or_insert(next);
                if e == next {
                    edges.push(key);
                }
                on.push(e);
            }
            mechanisms.push(Mechanism { probability, components, detectors, observables, edges: on });
        }
        Ok(Self { edges, mechanisms, num_detectors })
    }
}

/// The probability that an odd number of two independent events happens,
/// with probabilities `p` and `q`: how independent error mechanisms with the
/// same effect merge.
pub fn odd(p: f64, q: f64) -> f64 {
    p * (1.0 - q) + q * (1.0 - p)
}

impl DemEdges {
    /// Each edge's prior probability of carrying an error: the mechanisms
    /// on it merged as independent causes.
    pub fn edge_priors(&self) -> Vec<f64> {
        let mut prior = vec![0.0; self.edges.len()];
        for m in &self.mechanisms {
            for &e in &m.edges {
                prior[e as usize] = odd(prior[e as usize], m.probability);
            }
        }
        prior
    }
}

/// Shots with a label for every edge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeShots {
    /// One row of detection events per shot.
    pub detectors: PackedShots,
    /// One row of observable flips per shot.
    pub observables: PackedShots,
    /// One row of `edges.len()` labels per shot, in [`DemEdges::edges`]' order.
    pub edge_labels: PackedShots,
}

/// Samples shots of a decomposed model with their edge labels.
pub struct EdgeSampler {
    edges: DemEdges,
    sampler: stim::DemSampler,
    num_observables: usize,
}

impl EdgeSampler {
    /// Compiles Stim's sampler for `dem` (decomposed; flattened here) with `seed`.
    pub fn new(dem: &stim::DetectorErrorModel, seed: u64) -> Result<Self, BridgeError> {
        let flat = dem.flattened();
        let edges = DemEdges::from_dem(&flat)?;
        let sampler = flat.compile_sampler_with_seed(seed);
        if sampler.num_errors() as usize != edges.mechanisms.len() {
            return Err(BridgeError::Circuit(format!(
                "the DEM sampler reports {} errors, the flattened model lists {}",
                sampler.num_errors(),
                edges.mechanisms.len()
            )));
        }
        let num_observables = sampler.num_observables() as usize;
        Ok(Self { edges, sampler, num_observables })
    }

    /// The model's edges and mechanisms.
    pub fn edges(&self) -> &DemEdges {
        &self.edges
    }

    /// Samples `shots` shots.
    pub fn sample(&mut self, shots: usize) -> Result<EdgeShots, BridgeError> {
        let (dets, obs, errors) = self.sampler.sample_bit_packed(shots as u64);
        let detectors = PackedShots::from_bytes(dets, self.edges.num_detectors)?;
        let observables = PackedShots::from_bytes(obs, self.num_observables)?;
        let errors = PackedShots::from_bytes(errors, self.edges.mechanisms.len())?;
        let mut edge_labels = PackedShots::zeros(shots, self.edges.edges.len());
        for s in 0..shots {
            for m in errors.hits(s) {
                for &e in &self.edges.mechanisms[m].edges {
                    let e = e as usize;
                    let now = edge_labels.get(s, e);
                    edge_labels.set(s, e, !now);
                }
            }
        }
        Ok(EdgeShots { detectors, observables, edge_labels })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::code::{Basis, MemoryExperiment};
    use crate::noise::NoiseModel;

    fn decomposed(d: usize, rounds: usize, p: f64) -> stim::DetectorErrorModel {
        let c = MemoryExperiment::new(d, rounds, Basis::Z).unwrap().noisy_circuit(&NoiseModel::Si1000 { p }).unwrap();
        crate::code::decoding_dem(&c).unwrap()
    }

    /// The labelled edges explain the shot: each detector's events are the
    /// parity of its labelled edges, and the observables the parity of the
    /// labelled edges' observables, wherever every fired mechanism is fully
    /// decomposed into edges (always, for SI1000 memory circuits).
    #[test]
    fn edge_labels_explain_the_syndrome() {
        let dem = decomposed(5, 5, 0.01);
        let mut sampler = EdgeSampler::new(&dem, 3).unwrap();
        let de = sampler.edges().clone();
        assert!(de.mechanisms.iter().all(|m| m.components.iter().all(|c| c.len() <= 2)));
        // Each edge's observables, from the mechanisms whose single component it is.
        // An edge alone in a mechanism takes its observables; an edge beside
        // one whose observables are known takes the rest.
        let mut edge_obs: Vec<Option<u64>> = vec![None; de.edges.len()];
        for _ in 0..3 {
            for m in &de.mechanisms {
                let unknown: Vec<u32> = m.edges.iter().copied().filter(|&e| edge_obs[e as usize].is_none()).collect();
                if let [e] = unknown.as_slice() {
                    let known = m.edges.iter().filter_map(|&f| edge_obs[f as usize]).fold(0, |a, o| a ^ o);
                    edge_obs[*e as usize] = Some(m.observables ^ known);
                }
            }
        }
        let shots = sampler.sample(500).unwrap();
        let mut nontrivial = 0;
        for s in 0..500 {
            let mut events = vec![false; de.num_detectors];
            let mut obs = 0u64;
            for e in shots.edge_labels.hits(s) {
                let (a, b) = de.edges[e];
                events[a as usize] ^= true;
                if b != BOUNDARY {
                    events[b as usize] ^= true;
                }
                obs ^= edge_obs[e].expect("every edge's observables are known");
                nontrivial += 1;
            }
            let want: Vec<bool> = (0..de.num_detectors).map(|k| shots.detectors.get(s, k)).collect();
            assert_eq!(events, want, "shot {s}");
            assert_eq!(obs & 1 != 0, shots.observables.get(s, 0), "shot {s}");
        }
        assert!(nontrivial > 500, "{nontrivial} labelled edges in 500 shots");
    }
}
