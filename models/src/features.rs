//! From bit-packed detection events to the model's input features.
//!
//! A shot of `T` rounds becomes a dense `[T, S, 3]` array: for round `t` and
//! stabilizer `s`, `(event, mask, is_final)`, where `mask` says whether the
//! circuit has a detector for `s` in round `t` and `is_final` marks the last
//! round (the one built from the data-qubit measurements). Stabilizers are
//! put in the model's order by matching coordinates, so any circuit whose
//! stabilizers sit where the model's do can be decoded. The rounds are the
//! circuit's [`RoundLayout`], the one the streams send.

use std::collections::HashMap;

use simulator_bridge::{PackedShots, RoundLayout, StabilizerLayout};

use crate::ModelError;
use crate::checkpoint::ModelLayout;

/// Features per (round, stabilizer).
pub const NUM_FEATURES: usize = 3;
/// Index of the detection event in a cell's features.
pub const EVENT: usize = 0;
/// Index of the mask: the circuit has a detector for this cell.
pub const MASK: usize = 1;
/// Index of the final-round flag.
pub const IS_FINAL: usize = 2;

/// Writes one cell's features: a detector that is there, its event, and
/// whether its round is the final one.
pub fn write_cell(cell: &mut [f32], event: bool, is_final: bool) {
    cell[EVENT] = f32::from(u8::from(event));
    cell[MASK] = 1.0;
    cell[IS_FINAL] = f32::from(u8::from(is_final));
}

/// Maps one circuit's detectors onto the model's (round, stabilizer) grid.
#[derive(Clone, Debug)]
pub struct Featurizer {
    num_stabilizers: usize,
    num_rounds: usize,
    /// For each detector, its cell `t * S + s` in the grid.
    detector_cell: Vec<usize>,
    /// The constant part of the features: mask and is_final, `[T, S, 3]`.
    template: Vec<f32>,
}

impl Featurizer {
    /// Matches `circuit`'s layout against the model's.
    pub fn new(model: &ModelLayout, circuit: &StabilizerLayout) -> Result<Self, ModelError> {
        if circuit.basis != model.basis {
            return Err(ModelError::Mismatch(format!(
                "the model decodes memory-{} but the circuit is memory-{}",
                model.basis, circuit.basis
            )));
        }
        let index: HashMap<(u64, u64), usize> =
            model.stabilizers.iter().enumerate().map(|(i, s)| ((s.x.to_bits(), s.y.to_bits()), i)).collect();
        let mut to_model = Vec::with_capacity(circuit.stabilizers.len());
        for s in &circuit.stabilizers {
            match index.get(&(s.x.to_bits(), s.y.to_bits())) {
                Some(&i) if model.stabilizers[i].kind == s.kind => to_model.push(i),
                _ => {
                    return Err(ModelError::Mismatch(format!(
                        "the circuit has a {:?} stabilizer at ({}, {}) that the model (d={}, {} stabilizers) does not; \
                         is the distance right?",
                        s.kind,
                        s.x,
                        s.y,
                        model.distance,
                        model.stabilizers.len()
                    )));
                }
            }
        }
        if circuit.stabilizers.len() > model.stabilizers.len()
            || circuit.distance().is_some_and(|d| d != model.distance)
        {
            return Err(ModelError::Mismatch(format!(
                "the circuit is distance {:?} but the model is distance {}",
                circuit.distance(),
                model.distance
            )));
        }
        let (s_count, t_count) = (model.stabilizers.len(), circuit.num_rounds);
        let mut template = vec![0.0f32; t_count * s_count * NUM_FEATURES];
        let mut detector_cell = vec![0; circuit.num_detectors()];
        let rounds = RoundLayout::new(circuit);
        for t in 0..rounds.num_rounds() {
            for (&det, &s) in rounds.detectors(t).iter().zip(rounds.stabilizers_of(t)) {
                let cell = t * s_count + to_model[s];
                detector_cell[det] = cell;
                template[cell * NUM_FEATURES + MASK] = 1.0;
            }
        }
        for s in 0..s_count {
            template[((t_count - 1) * s_count + s) * NUM_FEATURES + IS_FINAL] = 1.0;
        }
        Ok(Self { num_stabilizers: s_count, num_rounds: t_count, detector_cell, template })
    }

    /// T: rounds per shot, the final data-qubit round included.
    pub fn num_rounds(&self) -> usize {
        self.num_rounds
    }

    /// S: the model's stabilizers.
    pub fn num_stabilizers(&self) -> usize {
        self.num_stabilizers
    }

    /// Detection-event bits per shot.
    pub fn num_detectors(&self) -> usize {
        self.detector_cell.len()
    }

    /// Floats per shot: `T * S * 3`.
    pub fn shot_len(&self) -> usize {
        self.template.len()
    }

    /// Appends the features of shots `start..end` to `out`, `[n, T, S, 3]` row-major.
    pub fn extend_features(&self, events: &PackedShots, start: usize, end: usize, out: &mut Vec<f32>) {
        assert_eq!(events.bits_per_shot(), self.num_detectors(), "detection events of another circuit");
        out.reserve((end - start) * self.shot_len());
        for shot in start..end {
            let base = out.len();
            out.extend_from_slice(&self.template);
            for k in events.hits(shot) {
                out[base + self.detector_cell[k] * NUM_FEATURES + EVENT] = 1.0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use simulator_bridge::{Basis, MemoryExperiment};

    #[test]
    fn events_land_in_their_cells() {
        let model = ModelLayout::for_code(3, Basis::Z).unwrap();
        let circuit = MemoryExperiment::new(3, 4, Basis::Z).unwrap().ideal_circuit().unwrap();
        let layout = StabilizerLayout::from_circuit(&circuit, Basis::Z).unwrap();
        let f = Featurizer::new(&model, &layout).unwrap();
        assert_eq!((f.num_rounds(), f.num_stabilizers(), f.num_detectors()), (5, 8, 32));
        let mut shots = PackedShots::zeros(2, 32);
        shots.set(1, 31, true);
        let mut out = Vec::new();
        f.extend_features(&shots, 0, 2, &mut out);
        assert_eq!(out.len(), 2 * 5 * 8 * 3);
        let shot1 = &out[f.shot_len()..];
        let events: f32 = shot1.chunks(3).map(|c| c[0]).sum();
        let masks: f32 = shot1.chunks(3).map(|c| c[1]).sum();
        let finals: f32 = shot1.chunks(3).map(|c| c[2]).sum();
        assert_eq!((events, masks, finals), (1.0, 32.0, 8.0));
        // The last detector is in the final round.
        let cell = f.detector_cell[31];
        assert_eq!(cell / 8, 4);
        assert_eq!(shot1[cell * 3 + 2], 1.0);
    }

    #[test]
    fn wrong_distance_or_basis_is_named() {
        let model = ModelLayout::for_code(3, Basis::Z).unwrap();
        let d5 = MemoryExperiment::new(5, 5, Basis::Z).unwrap().ideal_circuit().unwrap();
        let err = Featurizer::new(&model, &StabilizerLayout::from_circuit(&d5, Basis::Z).unwrap()).unwrap_err();
        assert!(err.to_string().contains("d=3"), "{err}");
        let x = MemoryExperiment::new(3, 3, Basis::X).unwrap().ideal_circuit().unwrap();
        let err = Featurizer::new(&model, &StabilizerLayout::from_circuit(&x, Basis::X).unwrap()).unwrap_err();
        assert!(err.to_string().contains("memory-Z but the circuit is memory-X"), "{err}");
    }
}
