//! A checkpoint's weights in the fused CPU trainer (`kernels::train`).
//!
//! The optimizer works on the tensors the checkpoint stores. For a
//! per-stabilizer model those are exactly the kernels' tensors. A relative
//! model stores the type and edge embeddings and the relative bias tables
//! instead of `embed.stab` and `attn.bias`. Before every step they are
//! expanded for the layout, as inference does (`docs/model.md` §Positions),
//! and the kernels' gradients of the expanded tensors are summed back into
//! the cells they were gathered from.

use std::ops::Range;

use kernels::train::{Optimizer, TrainBatch, Trainer};

use crate::ModelError;
use crate::checkpoint::{Checkpoint, CheckpointMeta};
use crate::config::ModelConfig;
use crate::features::Featurizer;
use crate::positions::PositionIndex;
use simulator_bridge::PackedShots;

/// Where each kernel tensor comes from.
enum Source {
    /// A stored tensor of the same name.
    Copy(Range<usize>),
    /// `embed.stab` from `embed.type` and `embed.edge`.
    Stab { types: Range<usize>, edges: Range<usize> },
    /// `attn.bias` from `attn.rel`.
    Bias { rel: Range<usize> },
}

/// The fused trainer holding one checkpoint's weights.
pub struct FusedNet {
    config: ModelConfig,
    /// Stored tensors, flat in checkpoint order: name, shape, place.
    stored_ix: Vec<(String, Vec<usize>, Range<usize>)>,
    stored: Vec<f32>,
    /// The weights before an update, kept until it is known to be finite.
    spare: Vec<f32>,
    stored_grads: Vec<f32>,
    /// Per kernel tensor (kernel order): its source.
    sources: Vec<Source>,
    positions: Option<PositionIndex>,
    trainer: Trainer,
    /// Expanded parameters, the kernels' flat layout.
    kernel_flat: Vec<f32>,
}

impl FusedNet {
    /// Loads `ckpt` into a trainer with `threads` workers for batches of up to
    /// `max_shots` shots of up to `max_rounds` round steps.
    pub fn from_checkpoint(
        ckpt: &Checkpoint,
        threads: usize,
        max_shots: usize,
        max_rounds: usize,
    ) -> Result<Self, ModelError> {
        ckpt.validate("<memory>")?;
        let config = ckpt.meta.config.clone();
        let mut stored_ix = Vec::new();
        let mut len = 0;
        for (name, shape) in config.tensor_shapes() {
            let n: usize = shape.iter().product();
            stored_ix.push((name, shape, len..len + n));
            len += n;
        }
        let mut stored = vec![0.0; len];
        for (name, _, range) in &stored_ix {
            stored[range.clone()].copy_from_slice(&ckpt.tensors[name].1);
        }
        let at = |name: &str| stored_ix.iter().find(|t| t.0 == name).map(|t| t.2.clone());
        let positions = ckpt.position_index();
        let kc = config.kernel_config();
        let kix = kernels::train::ParamIndex::new(&kc).map_err(|e| ModelError::Invalid(e.to_string()))?;
        let sources = kix
            .names()
            .map(|(name, _)| match (&positions, at(name)) {
                (_, Some(range)) => Source::Copy(range),
                (Some(_), None) if name == "embed.stab" => Source::Stab {
                    types: at("embed.type").expect("relative config"),
                    edges: at("embed.edge").expect("relative config"),
                },
                (Some(_), None) => {
                    Source::Bias { rel: at(&name.replace(".attn.bias", ".attn.rel")).expect("relative config") }
                }
                (None, None) => unreachable!("a per-stabilizer checkpoint stores every kernel tensor"),
            })
            .collect();
        let mut net = Self {
            trainer: Trainer::new(&kc, &kix.zeros(), threads, max_shots, max_rounds)
                .map_err(|e| ModelError::Invalid(e.to_string()))?,
            kernel_flat: kix.zeros(),
            stored_grads: vec![0.0; stored.len()],
            spare: vec![0.0; stored.len()],
            config,
            stored_ix,
            stored,
            sources,
            positions,
        };
        net.push()?;
        Ok(net)
    }

    /// The model's shapes.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Parameters the optimizer updates (the stored tensors).
    pub fn num_params(&self) -> usize {
        self.stored.len()
    }

    /// Batches and rounds the trainer holds.
    pub fn capacity(&self) -> (usize, usize) {
        self.trainer.capacity()
    }

    /// Expands the stored tensors into the trainer.
    fn push(&mut self) -> Result<(), ModelError> {
        let (d, h) = (self.config.width, self.config.heads);
        let kix = self.trainer.index();
        for (i, source) in self.sources.iter().enumerate() {
            let out = &mut self.kernel_flat[kix.range(i)];
            match source {
                Source::Copy(r) => out.copy_from_slice(&self.stored[r.clone()]),
                Source::Stab { types, edges } => {
                    let p = self.positions.as_ref().expect("relative model");
                    let (types, edges) = (&self.stored[types.clone()], &self.stored[edges.clone()]);
                    for (s, row) in out.chunks_exact_mut(d).enumerate() {
                        row.copy_from_slice(&types[p.types[s] * d..][..d]);
                        for (e, classes) in p.edges.iter().enumerate() {
                            let src = &edges[(e * p.edge_classes + classes[s]) * d..][..d];
                            row.iter_mut().zip(src).for_each(|(o, v)| *o += v);
                        }
                    }
                }
                Source::Bias { rel } => {
                    let p = self.positions.as_ref().expect("relative model");
                    let (rel, cells) = (&self.stored[rel.clone()], p.table_len());
                    let pairs = p.pairs.len();
                    for hh in 0..h {
                        for (ij, cell) in p.pairs.iter().enumerate() {
                            out[hh * pairs + ij] = rel[hh * cells + cell];
                        }
                    }
                }
            }
        }
        self.trainer.set_params(&self.kernel_flat).map_err(|e| ModelError::Training(e.to_string()))
    }

    /// Sums the kernels' gradients into the stored tensors' gradients.
    fn pull_grads(&mut self) {
        let (d, h) = (self.config.width, self.config.heads);
        let kix = self.trainer.index();
        let grads = self.trainer.grads();
        self.stored_grads.fill(0.0);
        for (i, source) in self.sources.iter().enumerate() {
            let g = &grads[kix.range(i)];
            match source {
                Source::Copy(r) => self.stored_grads[r.clone()].copy_from_slice(g),
                Source::Stab { types, edges } => {
                    let p = self.positions.as_ref().expect("relative model");
                    for (s, row) in g.chunks_exact(d).enumerate() {
                        let t0 = types.start + p.types[s] * d;
                        self.stored_grads[t0..t0 + d].iter_mut().zip(row).for_each(|(o, v)| *o += v);
                        for (e, classes) in p.edges.iter().enumerate() {
                            let e0 = edges.start + (e * p.edge_classes + classes[s]) * d;
                            self.stored_grads[e0..e0 + d].iter_mut().zip(row).for_each(|(o, v)| *o += v);
                        }
                    }
                }
                Source::Bias { rel } => {
                    let p = self.positions.as_ref().expect("relative model");
                    let (cells, pairs) = (p.table_len(), p.pairs.len());
                    for hh in 0..h {
                        for (ij, cell) in p.pairs.iter().enumerate() {
                            self.stored_grads[rel.start + hh * cells + cell] += g[hh * pairs + ij];
                        }
                    }
                }
            }
        }
    }

    /// The loss of a batch and the gradients of the stored tensors
    /// ([`FusedNet::grads`]).
    pub fn loss_and_grad(&mut self, batch: &TrainBatch) -> kernels::train::Loss {
        let loss = self.trainer.loss_and_grad(batch);
        self.pull_grads();
        loss
    }

    /// The stored tensors' gradients, flat in checkpoint order.
    pub fn grads(&self) -> &[f32] {
        &self.stored_grads
    }

    /// Mutable gradients, for clipping.
    pub fn grads_mut(&mut self) -> &mut [f32] {
        &mut self.stored_grads
    }

    /// The gradient of the stored tensor `name`.
    pub fn grad(&self, name: &str) -> Option<&[f32]> {
        self.stored_ix.iter().find(|t| t.0 == name).map(|t| &self.stored_grads[t.2.clone()])
    }

    /// One optimizer update with the current gradients. A non-finite result
    /// is refused (naming the tensor) and the weights stay as they were.
    pub fn apply(&mut self, optimizer: &mut Optimizer, lr: f64) -> Result<(), ModelError> {
        self.spare.copy_from_slice(&self.stored);
        optimizer.update(&mut self.stored, &self.stored_grads, lr);
        if let Some((name, _, _)) =
            self.stored_ix.iter().find(|(_, _, r)| self.stored[r.clone()].iter().any(|v| !v.is_finite()))
        {
            let name = name.clone();
            std::mem::swap(&mut self.stored, &mut self.spare);
            self.push()?;
            return Err(ModelError::Diverged(format!("the update made `{name}` non-finite")));
        }
        self.push()
    }

    /// Final logits `[n·O]` of every shot of `events`, without gradients.
    pub fn logits(&mut self, featurizer: &Featurizer, events: &PackedShots) -> Result<Vec<f32>, ModelError> {
        let (cap_shots, cap_rounds) = self.capacity();
        let rounds = featurizer.num_rounds();
        if rounds > cap_rounds {
            return Err(ModelError::Invalid(format!(
                "{rounds} round steps, but this trainer was built for at most {cap_rounds}"
            )));
        }
        let o = self.config.num_observables;
        let mut out = vec![0.0; events.num_shots() * o];
        let mut values = Vec::with_capacity(cap_shots * featurizer.shot_len());
        for start in (0..events.num_shots()).step_by(cap_shots) {
            let end = (start + cap_shots).min(events.num_shots());
            values.clear();
            featurizer.extend_features(events, start, end, &mut values);
            self.trainer.logits(&values, end - start, rounds, &mut out[start * o..end * o]);
        }
        Ok(out)
    }

    /// The current weights as a checkpoint with metadata `meta`.
    pub fn to_checkpoint(&self, meta: CheckpointMeta) -> Checkpoint {
        let tensors = self
            .stored_ix
            .iter()
            .map(|(name, shape, range)| (name.clone(), (shape.clone(), self.stored[range.clone()].to_vec())))
            .collect();
        Checkpoint { meta, tensors }
    }

    /// Replaces the weights with `ckpt`'s (same config).
    pub fn load(&mut self, ckpt: &Checkpoint) -> Result<(), ModelError> {
        if ckpt.meta.config != self.config {
            return Err(ModelError::Mismatch("the checkpoint has another config".into()));
        }
        for (name, shape, range) in &self.stored_ix {
            let (s, v) = &ckpt.tensors[name];
            if s != shape {
                return Err(ModelError::Mismatch(format!("tensor '{name}' has shape {s:?}, expected {shape:?}")));
            }
            self.stored[range.clone()].copy_from_slice(v);
        }
        self.push()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::ModelLayout;
    use crate::config::Positions;
    use kernels::train::AdamW;
    use simulator_bridge::Basis;

    /// A relative model's stored gradients are its expanded gradients summed
    /// into the cells they were gathered from: checked against finite
    /// differences of the loss through the expansion.
    #[test]
    fn relative_gradients_reach_the_tables() {
        let layout = ModelLayout::for_code(3, Basis::Z).unwrap();
        let config = ModelConfig::for_distance(3, 8, 2, 1, 8).with_positions(Positions::RELATIVE);
        let ckpt = Checkpoint::random(config, layout, 4);
        let mut net = FusedNet::from_checkpoint(&ckpt, 1, 4, 3).unwrap();
        let s = 8;
        let features: Vec<f32> = (0..4 * 3 * s * 3).map(|i| ((i * 7919) % 5 == 0) as u8 as f32).collect();
        let labels = vec![1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0];
        let batch = TrainBatch { features: &features, labels: &labels, shots: 4, rounds: 3, aux_weight: 0.5 };
        net.loss_and_grad(&batch);
        let grads = net.grads().to_vec();
        for name in ["embed.type", "embed.edge", "layers.0.attn.rel", "readout.w1"] {
            let range = net.stored_ix.iter().find(|t| t.0 == name).unwrap().2.clone();
            // The largest gradients of the tensor, by central differences in f32.
            let mut order: Vec<usize> = range.clone().collect();
            order.sort_by(|a, b| grads[*b].abs().total_cmp(&grads[*a].abs()));
            for &k in &order[..3] {
                let keep = net.stored[k];
                let eps = 1e-2;
                net.stored[k] = keep + eps;
                net.push().unwrap();
                let up = net.trainer.loss_and_grad(&batch).loss;
                net.stored[k] = keep - eps;
                net.push().unwrap();
                let down = net.trainer.loss_and_grad(&batch).loss;
                net.stored[k] = keep;
                net.push().unwrap();
                let fd = (up - down) / (2.0 * eps as f64);
                assert!(
                    (fd - grads[k] as f64).abs() < 2e-2 * fd.abs().max(1e-2),
                    "{name}[{}]: {} vs finite differences {fd}",
                    k - range.start,
                    grads[k]
                );
            }
        }
        // An update changes the tables, and the checkpoint carries them.
        let mut opt = Optimizer::AdamW(AdamW::new(net.num_params(), 0.0));
        net.apply(&mut opt, 1e-2).unwrap();
        let out = net.to_checkpoint(ckpt.meta.clone());
        out.validate("<test>").unwrap();
        assert_ne!(out.tensors["embed.type"], ckpt.tensors["embed.type"]);
        assert_ne!(out.tensors["layers.0.attn.rel"], ckpt.tensors["layers.0.attn.rel"]);
    }

    /// The trainer's logits equal the inference kernels' on the checkpoint.
    #[test]
    fn logits_equal_inference() {
        for positions in [Positions::PerStabilizer, Positions::RELATIVE] {
            let layout = ModelLayout::for_code(3, Basis::Z).unwrap();
            let config = ModelConfig::for_distance(3, 16, 4, 2, 32).with_positions(positions);
            let ckpt = Checkpoint::random(config, layout.clone(), 9);
            let mut net = FusedNet::from_checkpoint(&ckpt, 2, 16, 6).unwrap();
            let circuit = simulator_bridge::MemoryExperiment::new(3, 5, Basis::Z)
                .unwrap()
                .noisy_circuit(&simulator_bridge::NoiseModel::Si1000 { p: 0.01 })
                .unwrap();
            let f = Featurizer::new(
                &layout,
                &simulator_bridge::StabilizerLayout::from_circuit(&circuit, Basis::Z).unwrap(),
            )
            .unwrap();
            let shots = simulator_bridge::sample::Sampler::new(&circuit).sample(40, 3, 1).unwrap();
            let got = net.logits(&f, &shots.detectors).unwrap();
            let w = ckpt.kernel_weights("<test>").unwrap();
            let mut values = Vec::new();
            f.extend_features(&shots.detectors, 0, 40, &mut values);
            let expected = kernels::testutil::cpu_logits(&w, &values, f.num_rounds());
            for (a, b) in got.iter().zip(&expected) {
                assert!((a - b).abs() < 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
            }
        }
    }
}
