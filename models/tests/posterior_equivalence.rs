//! The posterior model's CPU forward reproduces the tch model's edge logits
//! within 1e-4 (docs/posterior.md), on random models at d = 3, 5 and 7, and
//! a short training run learns something the DEM's priors do not know.
#![cfg(feature = "train")]

use kernels::Isa;
use models::posterior::{Geometry, PosteriorConfig, PosteriorModel, PosteriorProvenance};
use models::posterior_cpu::{Prepared, Rounds, Stream};
use models::posterior_net::{DenseGeometry, PosteriorNet, PosteriorTrainer};
use simulator_bridge::edges::{DemEdges, EdgeSampler};
use simulator_bridge::{Basis, MemoryExperiment, NoiseModel, StabilizerLayout};
use tch::Device;

fn parts(d: usize, rounds: usize, p: f64) -> (StabilizerLayout, stim::DetectorErrorModel) {
    let c = MemoryExperiment::new(d, rounds, Basis::Z).unwrap().noisy_circuit(&NoiseModel::Si1000 { p }).unwrap();
    let dem = simulator_bridge::decoding_dem(&c).unwrap();
    (StabilizerLayout::from_circuit(&c, Basis::Z).unwrap(), dem)
}

fn config() -> PosteriorConfig {
    let (layout, dem) = parts(5, 5, 0.003);
    let edges = DemEdges::from_dem(&dem).unwrap().edges;
    PosteriorConfig::new(Basis::Z, Geometry::classes_of(&layout, &edges).unwrap())
}

#[test]
fn cpu_forward_matches_tch() {
    let config = config();
    for (d, rounds, seed) in [(3, 3, 1), (5, 5, 2), (7, 4, 3)] {
        let model = PosteriorModel::random(config.clone(), seed).unwrap();
        let (layout, dem) = parts(d, rounds, 0.01);
        let mut sampler = EdgeSampler::new(&dem, seed).unwrap();
        let geometry = Geometry::new(&config, &layout, &sampler.edges().edges).unwrap();
        let dense = DenseGeometry::new(geometry.clone(), &config, Device::Cpu);
        let net = PosteriorNet::from_model(&model, Device::Cpu).unwrap();
        let shots = sampler.sample(6).unwrap();
        let (features, _) = dense.batch(&shots, Device::Cpu);
        let tch_logits = net.forward(&dense, &features);
        let rounds = Rounds::new(&geometry);
        let mut worst = 0f32;
        // Every instruction set this CPU has, and the baseline.
        for isa in [Isa::detect(), Isa::Portable] {
            let prepared = Prepared::new(&model).with_isa(isa);
            let mut stream = Stream::default();
            for s in 0..6 {
                prepared.shot(&geometry, &rounds, shots.detectors.hits(s), &mut stream);
                let row = Vec::<f32>::try_from(tch_logits.get(s as i64)).unwrap();
                assert_eq!(row.len(), stream.logits.len());
                worst = row.iter().zip(&stream.logits).map(|(a, b)| (a - b).abs()).fold(worst, f32::max);
            }
        }
        assert!(worst < 1e-4, "d={d}: worst difference {worst}");
        // The round trip through tch keeps the weights.
        assert_eq!(net.to_model(PosteriorProvenance::default()).unwrap().tensors, model.tensors);
    }
}

/// 150 steps at d=3 and p=0.01 bring the held-out per-edge cross-entropy
/// below the priors' (the model reads the syndrome).
#[test]
fn short_training_beats_the_priors() {
    tch::manual_seed(0);
    // One thread: beside the other tests, libtorch's own thread pool only
    // oversubscribes the two cores.
    tch::set_num_threads(1);
    let (layout, dem) = parts(3, 3, 0.01);
    let sampler = EdgeSampler::new(&dem, 5).unwrap();
    let edges = sampler.edges().edges.clone();
    let config = PosteriorConfig::new(Basis::Z, Geometry::classes_of(&layout, &edges).unwrap());
    let geometry = Geometry::new(&config, &layout, &edges).unwrap();
    let model = PosteriorModel::random(config, 4).unwrap();
    let mut trainer = PosteriorTrainer::new(&model, geometry, sampler, 3e-3, Device::Cpu).unwrap();
    let held_out = EdgeSampler::new(&dem, 99).unwrap().sample(1000).unwrap();
    let (before, prior) = trainer.evaluate(&held_out);
    for _ in 0..150 {
        trainer.step(64, 3e-3).unwrap();
    }
    let (after, _) = trainer.evaluate(&held_out);
    assert!(after < before, "loss {before} -> {after}");
    assert!(after < 0.9 * prior, "model {after} vs priors {prior}");
}
