//! The neural engine (the CPU kernels behind `decoder::NeuralDecoder` and the
//! streaming sessions) gives the tch model's logits within 1e-4, on the zoo
//! checkpoints and on random ones, for sampled shots of 1..25 rounds.
#![cfg(feature = "train")]

use std::sync::Arc;

use decoder::{NeuralDecoder, NeuralModel};
use models::ModelConfig;
use models::checkpoint::{Checkpoint, ModelLayout};
use models::net::{Net, features_tensor};
use simulator_bridge::sample::Sampler;
use simulator_bridge::{Basis, MemoryExperiment, NoiseModel, StabilizerLayout};
use tch::Device;

fn worst_difference(ckpt: &Checkpoint, rounds: usize, seed: u64) -> f32 {
    let (d, basis) = (ckpt.meta.layout.distance, ckpt.meta.layout.basis);
    let circuit =
        MemoryExperiment::new(d, rounds, basis).unwrap().noisy_circuit(&NoiseModel::Si1000 { p: 0.005 }).unwrap();
    let layout = StabilizerLayout::from_circuit(&circuit, basis).unwrap();
    let events = Sampler::new(&circuit).sample(64, seed, 1).unwrap().detectors;
    let model = Arc::new(NeuralModel::from_checkpoint("m".into(), ckpt, "test").unwrap());
    let mut engine = NeuralDecoder::new(model.clone(), &layout).unwrap();
    let ours = engine.logits(&events).unwrap().to_vec();
    let featurizer = model.featurizer(&layout).unwrap();
    let mut features = Vec::new();
    featurizer.extend_features(&events, 0, 64, &mut features);
    let x = features_tensor(&features, 64, featurizer.num_rounds(), featurizer.num_stabilizers(), Device::Cpu);
    let net = Net::from_checkpoint(ckpt, Device::Cpu).unwrap();
    let theirs = Vec::<f32>::try_from(tch::no_grad(|| net.forward(&x)).view(-1)).unwrap();
    assert_eq!(ours.len(), theirs.len());
    ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

#[test]
fn engine_matches_tch_on_random_checkpoints() {
    for (d, basis, width, seed) in [(3, Basis::Z, 32, 1), (3, Basis::X, 48, 2), (5, Basis::Z, 32, 3)] {
        let layout = ModelLayout::for_code(d, basis).unwrap();
        let ckpt = Checkpoint::random(ModelConfig::for_distance(d, width, 4, 2, 2 * width), layout, seed);
        for rounds in [1, 4, 25] {
            let worst = worst_difference(&ckpt, rounds, seed + rounds as u64);
            assert!(worst < 1e-4, "d={d} {basis:?} r={rounds}: engine differs from tch by {worst}");
        }
    }
}

#[test]
fn engine_matches_tch_on_zoo_checkpoints() {
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/models"));
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "safetensors") {
            continue;
        }
        let ckpt = Checkpoint::load(&path).unwrap();
        for rounds in [1, 3, 25] {
            let worst = worst_difference(&ckpt, rounds, 77);
            assert!(worst < 1e-4, "{}: r={rounds}: engine differs from tch by {worst}", path.display());
        }
        checked += 1;
    }
    assert!(checked >= 1, "no zoo checkpoints in {}", dir.display());
}
