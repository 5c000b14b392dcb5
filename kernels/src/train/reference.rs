//! The training loss as a plain `f64` transcription of docs/model.md, shot by
//! shot, for finite-difference checks of the fused gradients. Slow; tests only.

use super::params::ParamIndex;
use crate::reference::{Tensors, readout, step};

fn bce(x: f64, y: f64) -> f64 {
    x.max(0.0) - x * y + (-x.abs()).exp().ln_1p()
}

/// The loss of [`super::Trainer::loss_and_grad`] (see the module docs of
/// `train`) in `f64`, from flat parameters `p` in `ix`'s layout: the
/// inference reference ([`crate::reference`]) read out after every round step.
pub fn loss(
    ix: &ParamIndex,
    p: &[f64],
    features: &[f32],
    labels: &[f32],
    shots: usize,
    rounds: usize,
    aux_weight: f64,
) -> f64 {
    let c = ix.config();
    let o = c.observables;
    let tensors: Tensors = (0..ix.num_tensors())
        .zip(ix.names())
        .map(|(i, (name, _))| (name.to_string(), p[ix.range(i)].to_vec()))
        .collect();
    let mut total = 0.0;
    for (b, shot) in features.chunks_exact(rounds * c.features_len()).take(shots).enumerate() {
        let mut z = vec![vec![0.0f64; c.width]; c.stabilizers];
        for (t, round) in shot.chunks_exact(c.features_len()).enumerate() {
            step(c, &tensors, &mut z, round);
            let weight = if t + 1 == rounds { 1.0 } else { aux_weight / (rounds - 1).max(1) as f64 };
            if weight > 0.0 {
                for (k, x) in readout(&tensors, &z).iter().enumerate() {
                    total += weight * bce(*x, labels[(b * rounds + t) * o + k] as f64);
                }
            }
        }
    }
    total / (shots * o) as f64
}
