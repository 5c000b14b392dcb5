//! Seeded, multi-threaded sampling of detection events and observable flips.
//!
//! Shots are drawn in fixed chunks of [`CHUNK_SHOTS`]; chunk `k` uses the seed
//! `derive_seed(seed, k)`. The result depends only on the seed and the shot
//! count, never on the number of threads. Stim's circuit and sampler objects
//! cannot cross threads, so each worker parses its own copy of the circuit.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::BridgeError;
use crate::shots::PackedShots;

/// Shots drawn per seeded chunk.
pub const CHUNK_SHOTS: usize = 8192;

/// Detection events and observable flips of the same shots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SampledShots {
    /// One row of `num_detectors` bits per shot.
    pub detectors: PackedShots,
    /// One row of `num_observables` bits per shot.
    pub observables: PackedShots,
}

/// Mixes a base seed with a stream index (SplitMix64), so that nearby seeds
/// and stream indices give unrelated streams.
pub fn derive_seed(seed: u64, stream: u64) -> u64 {
    let mut z = seed ^ stream.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for _ in 0..2 {
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
    }
    z
}

/// A circuit ready to be sampled from any number of threads.
#[derive(Clone, Debug)]
pub struct Sampler {
    circuit_text: String,
    num_detectors: usize,
    num_observables: usize,
}

impl Sampler {
    /// Prepares `circuit` for sampling.
    pub fn new(circuit: &stim::Circuit) -> Self {
        Self {
            circuit_text: circuit.to_string(),
            num_detectors: circuit.num_detectors() as usize,
            num_observables: circuit.num_observables() as usize,
        }
    }

    /// Detectors per shot.
    pub fn num_detectors(&self) -> usize {
        self.num_detectors
    }

    /// Observables per shot.
    pub fn num_observables(&self) -> usize {
        self.num_observables
    }

    /// Samples `shots` shots with `threads` workers (0 means one per core).
    pub fn sample(&self, shots: usize, seed: u64, threads: usize) -> Result<SampledShots, BridgeError> {
        self.sample_with_progress(shots, seed, threads, &|_| {})
    }

    /// Like [`Sampler::sample`], calling `progress(n)` as each chunk of `n` shots completes.
    pub fn sample_with_progress(
        &self,
        shots: usize,
        seed: u64,
        threads: usize,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<SampledShots, BridgeError> {
        let chunks = shots.div_ceil(CHUNK_SHOTS);
        let threads = resolve_threads(threads).min(chunks.max(1));
        let next = AtomicUsize::new(0);
        let results: Vec<Result<Vec<(usize, SampledShots)>, BridgeError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let circuit: stim::Circuit = self.circuit_text.parse()?;
                        let mut mine = Vec::new();
                        loop {
                            let k = next.fetch_add(1, Ordering::Relaxed);
                            if k >= chunks {
                                return Ok(mine);
                            }
                            let n = CHUNK_SHOTS.min(shots - k * CHUNK_SHOTS);
                            mine.push((k, self.sample_chunk(&circuit, n, derive_seed(seed, k as u64))?));
                            progress(n);
                        }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("sampling thread panicked")).collect()
        });
        let mut parts: Vec<(usize, SampledShots)> = Vec::with_capacity(chunks);
        for r in results {
            parts.extend(r?);
        }
        parts.sort_by_key(|(k, _)| *k);
        let mut detectors = PackedShots::zeros(0, self.num_detectors);
        let mut observables = PackedShots::zeros(0, self.num_observables);
        for (_, part) in &parts {
            detectors.extend(&part.detectors);
            observables.extend(&part.observables);
        }
        Ok(SampledShots { detectors, observables })
    }

    fn sample_chunk(&self, circuit: &stim::Circuit, shots: usize, seed: u64) -> Result<SampledShots, BridgeError> {
        let mut sampler = circuit.compile_detector_sampler_with_seed(seed);
        let (dets, obs) = sampler.sample_bit_packed_separate_observables(shots as u64);
        Ok(SampledShots {
            detectors: PackedShots::from_bytes(dets, self.num_detectors)?,
            observables: PackedShots::from_bytes(obs, self.num_observables)?,
        })
    }
}

/// Turns a requested thread count into a real one (0 means one per core).
pub fn resolve_threads(threads: usize) -> usize {
    if threads > 0 { threads } else { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::code::{Basis, MemoryExperiment};
    use crate::noise::NoiseModel;

    fn sampler() -> Sampler {
        let e = MemoryExperiment::new(3, 3, Basis::Z).unwrap();
        Sampler::new(&e.noisy_circuit(&NoiseModel::Si1000 { p: 0.01 }).unwrap())
    }

    #[test]
    fn same_seed_same_shots_for_any_thread_count() {
        let s = sampler();
        let a = s.sample(20_000, 7, 1).unwrap();
        let b = s.sample(20_000, 7, 3).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.detectors.num_shots(), 20_000);
        assert_eq!(a.detectors.bits_per_shot(), 24);
        let c = s.sample(20_000, 8, 2).unwrap();
        assert!(a.detectors.count_row_mismatches(&c.detectors) > 1000);
    }

    #[test]
    fn events_occur_at_a_plausible_rate() {
        let shots = sampler().sample(10_000, 1, 0).unwrap();
        let fired: usize = (0..shots.detectors.num_shots()).map(|s| shots.detectors.hits(s).count()).sum();
        let rate = fired as f64 / (10_000.0 * 24.0);
        assert!((0.05..0.35).contains(&rate), "detection-event rate {rate}");
        let flips = (0..10_000).filter(|&s| shots.observables.get(s, 0)).count();
        assert!(flips > 10 && flips < 3_000, "{flips} observable flips");
    }

    #[test]
    fn derived_seeds_differ() {
        assert_ne!(derive_seed(1, 0), derive_seed(1, 1));
        assert_ne!(derive_seed(1, 0), derive_seed(2, 0));
    }
}
