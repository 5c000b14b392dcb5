//! Deterministic random models and inputs, for the integration tests and the
//! GPU bench (`#[path]`-included by both; the crate's own `testutil` is private).
#![allow(dead_code)]

use kernels::{KernelConfig, Weights};

/// SplitMix64: tiny, deterministic, good enough for test data.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [-a, a).
    pub fn sym(&mut self, a: f64) -> f32 {
        ((2.0 * self.unit() - 1.0) * a) as f32
    }

    /// True with probability `p`.
    pub fn bit(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

/// The shape the project trains at distance `d` and width D: S = d² − 1, H = 4,
/// L = 2, F = 2D, R = D, one observable.
pub fn config(distance: usize, width: usize) -> KernelConfig {
    KernelConfig {
        stabilizers: distance * distance - 1,
        width,
        heads: 4,
        layers: 2,
        ffn_width: 2 * width,
        readout_width: width,
        observables: 1,
        features: 3,
    }
}

/// Random tensors for `config`, scaled like a trained model: linear maps with
/// unit gain (uniform, variance 1/fan_in), LayerNorm gains near one, attention
/// biases of order one.
pub fn random_tensors(config: &KernelConfig, seed: u64) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut rng = Rng::new(seed);
    config
        .tensor_shapes()
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let fan_in = *shape.last().unwrap() as f64;
            let values = (0..n)
                .map(|_| {
                    if name.ends_with("ln1.weight") || name.ends_with("ln2.weight") || name.ends_with("ln.weight") {
                        1.0 + rng.sym(0.3)
                    } else if name.ends_with(".bias") && !name.ends_with("attn.bias") {
                        rng.sym(0.2)
                    } else if name == "embed.stab" || name.ends_with("attn.bias") {
                        rng.sym(1.0)
                    } else if shape.len() == 1 {
                        rng.sym(0.3)
                    } else {
                        rng.sym((3.0 / fan_in).sqrt())
                    }
                })
                .collect();
            (name, shape, values)
        })
        .collect()
}

/// Weights from [`random_tensors`].
pub fn random_weights(config: &KernelConfig, seed: u64) -> Weights {
    let tensors = random_tensors(config, seed);
    Weights::from_named(config.clone(), |name| {
        tensors.iter().find(|(n, _, _)| n == name).map(|(_, s, v)| (s.as_slice(), v.as_slice()))
    })
    .expect("random tensors fit their config")
}

/// Features `[T][S][NF]` as docs/model.md builds them: a random detector mask
/// (mostly present), events only where there is a detector, and `is_final` on
/// the last round.
pub fn random_features(config: &KernelConfig, rng: &mut Rng, rounds: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rounds * config.features_len());
    for t in 0..rounds {
        for _ in 0..config.stabilizers {
            let mask = rng.bit(0.8);
            let event = mask && rng.bit(0.3);
            let row = [event as u8 as f32, mask as u8 as f32, (t + 1 == rounds) as u8 as f32];
            out.extend(row.iter().copied().take(config.features));
            for _ in 3..config.features {
                out.push(rng.sym(1.0));
            }
        }
    }
    out
}

/// CPU logits `[B][O]` of `shots` shots (`features` `[B][rounds][S][NF]`), by the fused CPU engine.
pub fn cpu_logits(w: &Weights, features: &[f32], rounds: usize) -> Vec<f32> {
    let c = w.config();
    let mut scratch = kernels::Scratch::new(c);
    let mut state = vec![0.0; c.state_len()];
    let mut out = Vec::new();
    for shot in features.chunks_exact(rounds * c.features_len()) {
        let mut logits = vec![0.0; c.observables];
        kernels::forward_shot(w, shot, rounds, &mut scratch, &mut state, &mut logits);
        out.extend(logits);
    }
    out
}
