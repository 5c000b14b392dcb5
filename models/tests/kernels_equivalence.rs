//! The inference kernels reproduce the tch model's logits within 1e-4
//! (docs/model.md), on random checkpoints and on the zoo checkpoints, for
//! random inputs of 1..25 rounds.
#![cfg(feature = "train")]

use kernels::{Scratch, Weights, forward_shot};
use models::checkpoint::{Checkpoint, ModelLayout};
use models::net::{Net, features_tensor};
use models::{ModelConfig, Positions};
use simulator_bridge::Basis;
use tch::Device;

fn kernel_weights(ckpt: &Checkpoint) -> Weights {
    ckpt.kernel_weights("test").unwrap()
}

fn max_difference(ckpt: &Checkpoint, seed: u64) -> f32 {
    let net = Net::from_checkpoint(ckpt, Device::Cpu).unwrap();
    let weights = kernel_weights(ckpt);
    let (s, d, o) = (ckpt.meta.config.num_stabilizers, ckpt.meta.config.width, ckpt.meta.config.num_observables);
    let mut scratch = Scratch::new(weights.config());
    let mut state = vec![0.0f32; s * d];
    let mut logits = vec![0.0f32; o];
    let mut rng = seed;
    let mut bit = || {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (rng >> 33).is_multiple_of(7)
    };
    let mut worst = 0.0f32;
    for rounds in [1usize, 2, 3, 7, 13, 25] {
        let t = rounds + 1;
        let mut features = vec![0.0f32; t * s * 3];
        for (k, f) in features.chunks_exact_mut(3).enumerate() {
            f[1] = if bit() { 0.0 } else { 1.0 };
            f[0] = if f[1] == 1.0 && bit() { 1.0 } else { 0.0 };
            f[2] = if k / s == t - 1 { 1.0 } else { 0.0 };
        }
        let x = features_tensor(&features, 1, t, s, Device::Cpu);
        let reference = Vec::<f32>::try_from(tch::no_grad(|| net.forward(&x)).view(-1)).unwrap();
        forward_shot(&weights, &features, t, &mut scratch, &mut state, &mut logits);
        for (a, b) in reference.iter().zip(&logits) {
            worst = worst.max((a - b).abs());
        }
    }
    worst
}

#[test]
fn kernels_match_tch_on_random_checkpoints() {
    for (d, width, heads, layers, ffn, seed) in [(3, 32, 4, 2, 64, 1), (3, 64, 4, 2, 128, 2), (5, 48, 3, 1, 96, 3)] {
        let layout = ModelLayout::for_code(d, Basis::Z).unwrap();
        let ckpt = Checkpoint::random(ModelConfig::for_distance(d, width, heads, layers, ffn), layout, seed);
        let worst = max_difference(&ckpt, seed);
        assert!(worst < 1e-4, "d={d} D={width}: kernels differ from tch by {worst}");
    }
}

/// One relative model, laid out at d=3, 5 and 7: the kernels get its
/// expanded position tensors and still match tch, which gathers them itself.
#[test]
fn kernels_match_tch_on_a_relative_model_at_every_distance() {
    let layout = ModelLayout::for_code(3, Basis::Z).unwrap();
    let config = ModelConfig::for_distance(3, 32, 4, 2, 64).with_positions(Positions::RELATIVE);
    let ckpt = Checkpoint::random(config, layout, 11);
    for d in [3, 5, 7] {
        let at = ckpt.retarget(d).unwrap();
        assert_eq!(at.meta.config.num_stabilizers, d * d - 1);
        let worst = max_difference(&at, d as u64);
        assert!(worst < 1e-4, "relative model at d={d}: kernels differ from tch by {worst}");
    }
}

/// Projecting a per-stabilizer model onto relative positions keeps the
/// tensors that are not positional and expands back to a valid model.
#[test]
fn projection_onto_relative_positions_runs_in_both_engines() {
    let layout = ModelLayout::for_code(3, Basis::Z).unwrap();
    let ckpt = Checkpoint::random(ModelConfig::for_distance(3, 16, 2, 1, 32), layout, 5);
    let relative = ckpt.to_relative(Positions::RELATIVE).unwrap();
    assert_eq!(relative.tensors["layers.0.ffn.w1"], ckpt.tensors["layers.0.ffn.w1"]);
    assert!(max_difference(&relative, 4) < 1e-4);
    assert!(max_difference(&relative.retarget(5).unwrap(), 4) < 1e-4);
    assert!(ckpt.retarget(5).unwrap_err().to_string().contains("only a relative model"));
}

#[test]
fn kernels_match_tch_on_zoo_checkpoints() {
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/models"));
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            let ckpt = Checkpoint::load(&path).unwrap();
            let worst = max_difference(&ckpt, 9);
            assert!(worst < 1e-4, "{}: kernels differ from tch by {worst}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 1, "no zoo checkpoints in {}", dir.display());
}
