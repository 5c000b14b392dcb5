//! What the decoders' tests share: SI1000 memory-Z circuits and their
//! decomposed detector error models.

use simulator_bridge::{Basis, MemoryExperiment, NoiseModel};

/// The SI1000 memory-Z circuit of distance `d`, `rounds` rounds, strength `p`.
pub fn circuit(d: usize, rounds: usize, p: f64) -> stim::Circuit {
    MemoryExperiment::new(d, rounds, Basis::Z).unwrap().noisy_circuit(&NoiseModel::Si1000 { p }).unwrap()
}

/// Its detector error model, decomposed for matching.
pub fn dem(c: &stim::Circuit) -> stim::DetectorErrorModel {
    simulator_bridge::decoding_dem(c).unwrap()
}
