//! The fused trainer's gradients equal tch autograd's (docs/model.md §Training):
//! random checkpoints of both position variants, d = 3 and 5, 1..25 rounds,
//! with the final label alone and with the per-round loss on dense labels.
#![cfg(feature = "train")]

use kernels::train::TrainBatch;
use models::checkpoint::{Checkpoint, ModelLayout};
use models::fused::FusedNet;
use models::net::{Net, features_tensor};
use models::train::{BatchSource, SimulatedSource};
use models::{Featurizer, ModelConfig, Positions};
use simulator_bridge::{Basis, MemoryExperiment, NoiseModel, StabilizerLayout};
use tch::{Device, Tensor};

/// The worst per-tensor difference `max|fused − tch| / max|tch|` over every
/// stored tensor, and its name. A tensor whose gradient is zero in exact
/// arithmetic (the key bias: softmax ignores a shift shared by all keys) is
/// measured against 1% of the model's largest gradient instead.
fn worst_gradient_difference(ckpt: &Checkpoint, rounds: usize, aux: f32, seed: u64) -> (f64, String) {
    let d = ckpt.meta.layout.distance;
    let circuit =
        MemoryExperiment::new(d, rounds, Basis::Z).unwrap().noisy_circuit(&NoiseModel::Si1000 { p: 0.01 }).unwrap();
    let f = Featurizer::new(&ckpt.meta.layout, &StabilizerLayout::from_circuit(&circuit, Basis::Z).unwrap()).unwrap();
    let mut source = SimulatedSource::new(vec![(f, circuit)], Basis::Z, seed, 0, true).unwrap();
    let batch = source.next_batch(0, 12).unwrap();
    let t = batch.rounds;

    let mut fused = FusedNet::from_checkpoint(ckpt, 2, 12, t).unwrap();
    let loss = fused.loss_and_grad(&TrainBatch {
        features: &batch.features,
        labels: &batch.labels,
        shots: 12,
        rounds: t,
        aux_weight: aux,
    });

    let net = Net::from_checkpoint(ckpt, Device::Cpu).unwrap();
    let s = ckpt.meta.config.num_stabilizers;
    let x = features_tensor(&batch.features, 12, t, s, Device::Cpu);
    let labels = Tensor::from_slice(&batch.labels).view([12, t as i64, 1]);
    let tch_loss = Net::dense_loss(&net.forward_rounds(&x), &labels, aux as f64);
    assert!((tch_loss.double_value(&[]) - loss.loss).abs() < 1e-5 * (1.0 + loss.loss), "losses differ");
    tch_loss.backward();

    let names: Vec<String> = ckpt.meta.config.tensor_shapes().into_iter().map(|(n, _)| n).collect();
    let reference: Vec<Vec<f32>> =
        names.iter().map(|n| net.grad(n).unwrap_or_else(|| panic!("tch has no gradient for {n}"))).collect();
    let largest = |v: &[f32]| v.iter().fold(0.0f64, |m, x| m.max(x.abs() as f64));
    let global = reference.iter().map(|g| largest(g)).fold(0.0, f64::max);
    assert!(global > 1e-4, "a loss without gradients checks nothing");
    let mut worst = (0.0f64, String::new());
    for (name, reference) in names.iter().zip(&reference) {
        let ours = fused.grad(name).unwrap();
        let scale = largest(reference).max(1e-2 * global);
        let diff = ours.iter().zip(reference).fold(0.0f64, |m, (a, b)| m.max((a - b).abs() as f64));
        let rel = diff / scale;
        if rel > worst.0 {
            worst = (rel, name.clone());
        }
    }
    worst
}

#[test]
fn fused_gradients_equal_tch_autograd() {
    for positions in [Positions::PerStabilizer, Positions::RELATIVE] {
        for (d, seed) in [(3usize, 1u64), (5, 2)] {
            let layout = ModelLayout::for_code(d, Basis::Z).unwrap();
            let config = ModelConfig::for_distance(d, 32, 4, 2, 64).with_positions(positions);
            let ckpt = Checkpoint::random(config, layout, seed);
            for rounds in [1usize, 3, 8, 25] {
                for aux in [0.0f32, 0.5] {
                    let (rel, name) = worst_gradient_difference(&ckpt, rounds, aux, seed + rounds as u64);
                    assert!(
                        rel <= 1e-4,
                        "{positions:?} d={d} rounds={rounds} aux={aux}: `{name}` differs from tch by {rel:e} of its largest gradient"
                    );
                }
            }
        }
    }
}
