//! What the criterion benches (`benches/`) and the perf report
//! (`src/bin/perf.rs`) share: the models they time, realistic inputs, the
//! device label and percentiles.
//!
//! Every neural figure uses the zoo checkpoint of its distance when
//! fixtures/models has one, and otherwise a random checkpoint of the same
//! shape (D=32, H=4, L=2, F=64): the kernels' cost depends on the shapes
//! only, never on the weights' values.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use decoder::NeuralModel;
use models::checkpoint::{Checkpoint, ModelLayout};
use models::{Featurizer, ModelConfig};
use simulator_bridge::sample::Sampler;
use simulator_bridge::{Basis, MemoryExperiment, NoiseModel, PackedShots, StabilizerLayout};

/// Physical error rate of every bench circuit (SI1000).
pub const P: f64 = 0.003;

/// Where a bench model came from.
#[derive(Clone, Debug)]
pub enum ModelSource {
    /// A zoo checkpoint.
    Zoo(PathBuf),
    /// Random weights of the zoo's d=3 shape.
    Random,
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelSource::Zoo(p) => write!(f, "zoo {}", p.file_name().unwrap_or_default().to_string_lossy()),
            ModelSource::Random => f.write_str("random D=32 H=4 L=2 F=64"),
        }
    }
}

/// The posterior model built into qecd (neural-matching's default).
pub fn posterior_path() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/posterior/posterior_z_si1000_p003.safetensors"))
}

/// The zoo checkpoint of distance `d` (memory-Z, SI1000 p=0.003), if there is one.
pub fn zoo_path(d: usize) -> Option<PathBuf> {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/models"))
        .join(format!("d{d}_z_si1000_p003.safetensors"));
    path.exists().then_some(path)
}

/// The checkpoint timed at distance `d`.
pub fn bench_checkpoint(d: usize) -> Result<(Checkpoint, ModelSource)> {
    Ok(match zoo_path(d) {
        Some(path) => (Checkpoint::load(&path)?, ModelSource::Zoo(path)),
        None => {
            let layout = ModelLayout::for_code(d, Basis::Z)?;
            (Checkpoint::random(ModelConfig::for_distance(d, 32, 4, 2, 64), layout, d as u64), ModelSource::Random)
        }
    })
}

/// The model timed at distance `d`, loaded for the kernels.
pub fn bench_model(d: usize) -> Result<(Arc<NeuralModel>, ModelSource)> {
    let (ckpt, source) = bench_checkpoint(d)?;
    Ok((Arc::new(NeuralModel::from_checkpoint(format!("d{d}"), &ckpt, &source.to_string())?), source))
}

/// Sampled shots of a memory-Z SI1000 experiment and what decodes them.
pub struct Workload {
    /// The noisy circuit.
    pub circuit: stim::Circuit,
    /// Its decoding DEM (decomposed, as the matching decoders use it).
    pub dem: stim::DetectorErrorModel,
    /// Its stabilizer layout.
    pub layout: StabilizerLayout,
    /// Detection events.
    pub events: PackedShots,
    /// Actual observable flips.
    pub observables: PackedShots,
}

impl Workload {
    /// `shots` shots of distance `d`, `rounds` rounds, seeded.
    pub fn new(d: usize, rounds: usize, shots: usize, seed: u64) -> Result<Self> {
        let circuit = MemoryExperiment::new(d, rounds, Basis::Z)?.noisy_circuit(&NoiseModel::Si1000 { p: P })?;
        let dem = simulator_bridge::decoding_dem(&circuit)?;
        let layout = StabilizerLayout::from_circuit(&circuit, Basis::Z)?;
        let sampled = Sampler::new(&circuit).sample(shots, seed, 1)?;
        Ok(Self { circuit, dem, layout, events: sampled.detectors, observables: sampled.observables })
    }

    /// Every shot's features, `[shots][T][S][3]`, for `model`.
    pub fn features(&self, model: &NeuralModel) -> Result<(Featurizer, Vec<f32>)> {
        let featurizer = model.featurizer(&self.layout)?;
        let mut out = Vec::new();
        featurizer.extend_features(&self.events, 0, self.events.num_shots(), &mut out);
        Ok((featurizer, out))
    }

    /// Each shot's rounds as a stream sends them ([`simulator_bridge::RoundLayout`]).
    pub fn stream_rounds(&self) -> Vec<Vec<Vec<bool>>> {
        let rounds = simulator_bridge::RoundLayout::new(&self.layout);
        (0..self.events.num_shots()).map(|shot| rounds.split(&self.events, shot)).collect()
    }

    /// Round `t`'s features of `streams` shots, `[streams][S][3]`, taken
    /// from the middle rounds of the sampled shots (cycled).
    pub fn middle_rounds(&self, model: &NeuralModel, streams: usize) -> Result<Vec<f32>> {
        let (featurizer, all) = self.features(model)?;
        let per_round = featurizer.num_stabilizers() * models::features::NUM_FEATURES;
        let t_count = featurizer.num_rounds();
        let mut out = Vec::with_capacity(streams * per_round);
        for k in 0..streams {
            let shot = k % self.events.num_shots();
            let t = 1 + k % (t_count - 2).max(1);
            out.extend_from_slice(&all[(shot * t_count + t) * per_round..][..per_round]);
        }
        Ok(out)
    }
}

/// The device label benches are named with: `cpu-<instruction set>`.
pub fn cpu_label() -> String {
    format!("cpu-{:?}", kernels::Isa::detect()).to_lowercase()
}

/// Cores available to the process.
pub fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// The `q`-quantile (0..=1) of sorted samples, nearest rank.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// p50, p99 and p99.9 of `samples` (sorted in place).
pub fn percentiles(samples: &mut [f64]) -> [f64; 3] {
    samples.sort_by(f64::total_cmp);
    [quantile(samples, 0.5), quantile(samples, 0.99), quantile(samples, 0.999)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let mut xs: Vec<f64> = (1..=1000).rev().map(f64::from).collect();
        assert_eq!(percentiles(&mut xs), [500.0, 990.0, 999.0]);
        assert_eq!(quantile(&[3.0], 0.999), 3.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
