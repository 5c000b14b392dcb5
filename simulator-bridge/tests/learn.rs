//! Noise learning against known DEMs (issue 16): the learned probabilities
//! are compared, detector set by detector set, with the DEM of the circuit
//! the shots were sampled from. The prior always has other rates than the
//! data, so a mechanism left at its prior fails the bounds.

use std::time::Instant;

use simulator_bridge::learn::{Comparison, Kept, LearnOptions, LearnedDem, learn_dem};
use simulator_bridge::sample::Sampler;
use simulator_bridge::{Basis, MemoryExperiment, NoiseModel, decoding_dem};

/// The DEM of a d=3 memory-Z experiment with `rounds` rounds under `noise`.
fn dem(rounds: usize, noise: &NoiseModel) -> (stim::Circuit, stim::DetectorErrorModel) {
    let circuit = MemoryExperiment::new(3, rounds, Basis::Z).unwrap().noisy_circuit(noise).unwrap();
    let dem = decoding_dem(&circuit).unwrap();
    (circuit, dem)
}

/// Samples `shots` shots from `data` and learns them starting from `prior`.
fn learn(
    prior: &NoiseModel,
    data: &NoiseModel,
    rounds: usize,
    shots: usize,
    seed: u64,
) -> (LearnedDem, stim::DetectorErrorModel) {
    let (_, prior_dem) = dem(rounds, prior);
    let (circuit, truth) = dem(rounds, data);
    let clock = Instant::now();
    let events = Sampler::new(&circuit).sample(shots, seed, 0).unwrap().detectors;
    let sampled = clock.elapsed();
    let learned = learn_dem(&prior_dem, &events, &LearnOptions::default(), &|_| {}).unwrap();
    eprintln!("{shots} shots: sampled in {sampled:.2?}, learned in {:.2?}", clock.elapsed() - sampled);
    (learned, truth)
}

/// Prints and returns (median, max) relative error of the sets with p ≥ 1e-3.
fn errors(what: &str, truth: &stim::DetectorErrorModel, candidate: &stim::DetectorErrorModel) -> (f64, f64) {
    let all = Comparison::new(truth, candidate, 1e-3).unwrap();
    let graphlike = all.clone().with_at_most(2);
    for (name, c) in [("all sets", &all), ("graph-like", &graphlike)] {
        let worst = c.worst().unwrap();
        eprintln!(
            "{what}, {name} with p >= 1e-3: {} sets, median relative error {:.2}%, max {:.2}% ({:?}: true {:.3e}, got {:.3e})",
            c.sets.len(),
            100.0 * c.median_relative_error(),
            100.0 * worst.relative_error(),
            worst.detectors,
            worst.reference,
            worst.candidate
        );
    }
    (all.median_relative_error(), all.worst().unwrap().relative_error())
}

/// Issue 16's acceptance bound: from 10^6 shots of d=3, 10 rounds, SI1000
/// p=0.003, every set of p ≥ 1e-3 within 30% and their median within 10%.
/// The prior is SI1000 p=0.0015: every probability starts 50% or more off.
#[test]
fn a_million_shots_learn_si1000_within_the_issue_bounds() {
    let prior = NoiseModel::Si1000 { p: 0.0015 };
    let (learned, truth) = learn(&prior, &NoiseModel::Si1000 { p: 0.003 }, 10, 1_000_000, 16);
    let (median, max) = errors("learned", &truth, &learned.dem().unwrap());
    let (prior_median, _) = errors("prior", &truth, &dem(10, &prior).1);
    assert!(prior_median > 0.4, "the prior should start far off: {prior_median}");
    assert!(median <= 0.10, "median relative error {median}");
    assert!(max <= 0.30, "max relative error {max}");
    let strong_kept = learned.kept().filter(|(m, _)| m.probability >= 0.5e-3).count();
    assert_eq!(strong_kept, 0, "no mechanism of p >= 1e-3 may keep its prior");
    eprintln!("{} of {} mechanisms estimated", learned.num_estimated(), learned.mechanisms.len());
}

/// Data from per-qubit-varied rates at twice the prior's p: the learned DEM
/// moves to the data's DEM, far from the prior's. At these higher rates an
/// edge shares its pair with up to a dozen hyperedges whose 3- and 4-point
/// estimates are noisier, so the worst small edge is looser than at p=0.003
/// (measured: median 3.0%, max 36% from 10^6 shots; 0.8% and 16% from 8·10^6).
#[test]
fn learned_rates_follow_the_data_not_the_prior() {
    let prior = NoiseModel::Si1000 { p: 0.002 };
    let data = NoiseModel::Si1000Varied { p: 0.004, seed: 7 };
    let (learned, truth) = learn(&prior, &data, 5, 1_000_000, 17);
    let (median, max) = errors("learned", &truth, &learned.dem().unwrap());
    let (prior_median, prior_max) = errors("prior", &truth, &dem(5, &prior).1);
    assert!(prior_median > 0.3 && prior_max > 0.5, "prior {prior_median} {prior_max}");
    assert!(median <= 0.06, "median relative error {median}");
    assert!(max <= 0.50, "max relative error {max}");
}

/// Too few shots: weak sets are named and keep their prior; strong ones are
/// still learned.
#[test]
fn a_small_directory_keeps_the_prior_of_what_it_cannot_see() {
    let prior = NoiseModel::Si1000 { p: 0.002 };
    let (learned, truth) = learn(&prior, &NoiseModel::Si1000 { p: 0.004 }, 5, 3_000, 18);
    let kept: Vec<_> = learned.kept().collect();
    assert!(kept.len() > 10, "{} kept", kept.len());
    assert!(kept.iter().any(|(_, why)| matches!(why, Kept::TooFewCoincidences(n) if *n < 20)));
    let (_, prior_dem) = dem(5, &prior);
    let prior_flat = simulator_bridge::learn::FlatDem::new(&prior_dem).unwrap();
    for (m, p) in learned.mechanisms.iter().zip(&prior_flat.mechanisms) {
        assert_eq!(m.kept.is_some(), m.learned == p.probability, "{m:?}");
    }
    assert!(learned.num_estimated() > 0);
    let strong = Comparison::new(&truth, &learned.dem().unwrap(), 1e-2).unwrap();
    assert!(strong.median_relative_error() < 0.25, "{:?}", strong.worst());
}
