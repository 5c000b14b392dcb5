//! Rotated surface-code memory experiments, built from Stim's generated circuits.

use std::fmt;
use std::str::FromStr;

use crate::error::BridgeError;
use crate::noise::NoiseModel;

/// The basis of a memory experiment: the logical observable is a product of
/// data-qubit measurements in this basis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Basis {
    /// Memory in the X basis (`surface_code:rotated_memory_x`).
    X,
    /// Memory in the Z basis (`surface_code:rotated_memory_z`).
    Z,
}

impl FromStr for Basis {
    type Err = BridgeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "x" => Ok(Basis::X),
            "z" => Ok(Basis::Z),
            _ => Err(BridgeError::invalid("basis", format!("'{s}' is not a basis (expected x or z)"))),
        }
    }
}

impl fmt::Display for Basis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Basis::X => "X",
            Basis::Z => "Z",
        })
    }
}

/// Smallest and largest code distance qecd builds circuits for.
pub const DISTANCE_RANGE: std::ops::RangeInclusive<usize> = 3..=25;

/// A rotated surface-code memory experiment: `rounds` rounds of stabilizer
/// measurement followed by a final round of data-qubit measurements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MemoryExperiment {
    /// Code distance: odd, in [`DISTANCE_RANGE`].
    pub distance: usize,
    /// Number of stabilizer-measurement rounds, at least 1.
    pub rounds: usize,
    /// Memory basis.
    pub basis: Basis,
}

impl MemoryExperiment {
    /// Validates and builds an experiment description.
    pub fn new(distance: usize, rounds: usize, basis: Basis) -> Result<Self, BridgeError> {
        if distance.is_multiple_of(2) || !DISTANCE_RANGE.contains(&distance) {
            return Err(BridgeError::invalid(
                "distance",
                format!(
                    "{distance}: the rotated surface code needs an odd distance from {} to {}",
                    DISTANCE_RANGE.start(),
                    DISTANCE_RANGE.end()
                ),
            ));
        }
        if rounds == 0 {
            return Err(BridgeError::invalid("rounds", "0: a memory experiment needs at least 1 round"));
        }
        Ok(Self { distance, rounds, basis })
    }

    /// Stim's name for the generated circuit.
    pub fn stim_task(&self) -> &'static str {
        match self.basis {
            Basis::X => "surface_code:rotated_memory_x",
            Basis::Z => "surface_code:rotated_memory_z",
        }
    }

    /// The noiseless circuit, as Stim generates it.
    pub fn ideal_circuit(&self) -> Result<stim::Circuit, BridgeError> {
        Ok(stim::Circuit::generated(self.stim_task(), self.distance, self.rounds)?)
    }

    /// The circuit with `noise` applied.
    pub fn noisy_circuit(&self, noise: &NoiseModel) -> Result<stim::Circuit, BridgeError> {
        noise.apply(&self.ideal_circuit()?)
    }

    /// Number of stabilizers, `d² − 1`.
    pub fn num_stabilizers(&self) -> usize {
        self.distance * self.distance - 1
    }
}

/// The detector error model that matching decodes with: loops flattened,
/// errors decomposed into graph-like pieces (the `^` of a Stim DEM), no
/// gauge detectors, no approximation of disjoint errors, decomposition
/// failures an error. Every decoder and the training labels read this one.
pub fn decoding_dem(circuit: &stim::Circuit) -> Result<stim::DetectorErrorModel, BridgeError> {
    Ok(circuit.detector_error_model_with_options(true, true, false, 0.0, false, false)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_are_validated() {
        for bad in [0, 1, 2, 4, 27] {
            let err = MemoryExperiment::new(bad, 3, Basis::Z).unwrap_err();
            assert!(err.to_string().contains("odd distance"), "{err}");
        }
        assert!(MemoryExperiment::new(3, 0, Basis::Z).is_err());
        let e = MemoryExperiment::new(5, 7, Basis::X).unwrap();
        let c = e.ideal_circuit().unwrap();
        assert_eq!(c.num_detectors(), 24 * 7);
        assert_eq!(c.num_observables(), 1);
    }

    #[test]
    fn basis_parses_either_case() {
        assert_eq!("Z".parse::<Basis>().unwrap(), Basis::Z);
        assert_eq!("x".parse::<Basis>().unwrap(), Basis::X);
        assert!("y".parse::<Basis>().is_err());
    }
}
