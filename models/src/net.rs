//! The recurrent transformer of docs/model.md, in tch. This is the reference
//! implementation that training uses and that the inference kernels must
//! reproduce within 1e-4.

use std::collections::BTreeMap;

use tch::{Device, Kind, Reduction, Tensor, nn, nn::OptimizerConfig};

use crate::ModelError;
use crate::checkpoint::{Checkpoint, CheckpointMeta};
use crate::config::ModelConfig;
use crate::features::Featurizer;
use crate::train::{Batch, Engine, StepLoss};
use simulator_bridge::PackedShots;

/// LayerNorm epsilon (docs/model.md).
pub const LN_EPS: f64 = 1e-5;

/// The model's variables in a tch `VarStore`, named as in the checkpoint.
pub struct Net {
    /// Owns the trainable variables.
    pub vs: nn::VarStore,
    config: ModelConfig,
    vars: BTreeMap<String, Tensor>,
    /// A relative model's gather indices for its layout.
    positions: Option<Gather>,
}

/// [`crate::positions::PositionIndex`] as index tensors on the model's device.
struct Gather {
    /// `[S]`: each stabilizer's type.
    types: Tensor,
    /// Per boundary, `[S]`: each stabilizer's distance class.
    edges: [Tensor; 4],
    /// `[S·S]`: each pair's cell in a head's bias table.
    pairs: Tensor,
}

impl Net {
    /// Loads a checkpoint's weights onto `device`.
    pub fn from_checkpoint(ckpt: &Checkpoint, device: Device) -> Result<Self, ModelError> {
        ckpt.validate("<memory>")?;
        let vs = nn::VarStore::new(device);
        let mut vars = BTreeMap::new();
        for (name, shape) in ckpt.meta.config.tensor_shapes() {
            let (_, values) = &ckpt.tensors[&name];
            let dims: Vec<i64> = shape.iter().map(|&x| x as i64).collect();
            let init = Tensor::from_slice(values).view(dims.as_slice()).to_device(device);
            let mut path = vs.root();
            let parts: Vec<&str> = name.split('.').collect();
            for part in &parts[..parts.len() - 1] {
                path = path / *part;
            }
            let var = path.var_copy(parts[parts.len() - 1], &init);
            vars.insert(name, var);
        }
        let index = |v: &[usize]| {
            let v: Vec<i64> = v.iter().map(|&x| x as i64).collect();
            Tensor::from_slice(&v).to_device(device)
        };
        let positions = ckpt.position_index().map(|p| Gather {
            types: index(&p.types),
            edges: [index(&p.edges[0]), index(&p.edges[1]), index(&p.edges[2]), index(&p.edges[3])],
            pairs: index(&p.pairs),
        });
        Ok(Self { vs, config: ckpt.meta.config.clone(), vars, positions })
    }

    /// The model's shapes.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The current weights as a checkpoint with metadata `meta`.
    pub fn to_checkpoint(&self, meta: CheckpointMeta) -> Result<Checkpoint, ModelError> {
        let mut tensors = BTreeMap::new();
        for (name, var) in &self.vars {
            let shape: Vec<usize> = var.size().iter().map(|&x| x as usize).collect();
            let flat = var.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous().view(-1);
            let values = Vec::<f32>::try_from(&flat)?;
            tensors.insert(name.clone(), (shape, values));
        }
        Ok(Checkpoint { meta, tensors })
    }

    /// The gradient autograd accumulated for the stored tensor `name`, flat
    /// (None if it has none yet).
    pub fn grad(&self, name: &str) -> Option<Vec<f32>> {
        let g = self.vars.get(name)?.grad();
        if !g.defined() {
            return None;
        }
        Vec::<f32>::try_from(g.to_device(Device::Cpu).contiguous().view(-1)).ok()
    }

    fn w(&self, name: &str) -> &Tensor {
        &self.vars[name]
    }

    fn linear(&self, x: &Tensor, weight: &str, bias: &str) -> Tensor {
        x.matmul(&self.w(weight).tr()) + self.w(bias)
    }

    fn layer_norm(&self, x: &Tensor, prefix: &str) -> Tensor {
        let d = self.config.width as i64;
        x.layer_norm(
            [d],
            Some(self.w(&format!("{prefix}.weight"))),
            Some(self.w(&format!("{prefix}.bias"))),
            LN_EPS,
            false,
        )
    }

    /// One transformer layer on the state `z: [B, S, D]`.
    fn layer(&self, l: usize, z: &Tensor) -> Tensor {
        let (b, s, d) = z.size3().expect("state is [B, S, D]");
        let h = self.config.heads as i64;
        let dh = d / h;
        let p = |n: &str| format!("layers.{l}.{n}");
        let x = self.layer_norm(z, &p("ln1"));
        let heads = |t: Tensor| t.view([b, s, h, dh]).permute([0, 2, 1, 3]);
        let q = heads(self.linear(&x, &p("attn.wq"), &p("attn.bq")));
        let k = heads(self.linear(&x, &p("attn.wk"), &p("attn.bk")));
        let v = heads(self.linear(&x, &p("attn.wv"), &p("attn.bv")));
        let scores = q.matmul(&k.transpose(-2, -1)) / (dh as f64).sqrt() + self.attention_bias(l);
        let attended = scores.softmax(-1, Kind::Float).matmul(&v).permute([0, 2, 1, 3]).reshape([b, s, d]);
        let z = z + self.linear(&attended, &p("attn.wo"), &p("attn.bo"));
        let x = self.layer_norm(&z, &p("ln2"));
        let hidden = self.linear(&x, &p("ffn.w1"), &p("ffn.b1")).gelu("none");
        &z + self.linear(&hidden, &p("ffn.w2"), &p("ffn.b2"))
    }

    /// Logits `[B, O]` for features `[B, T, S, 3]`.
    pub fn forward(&self, features: &Tensor) -> Tensor {
        let (b, t, s, _) = features.size4().expect("features are [B, T, S, F]");
        let x = self.embed(features);
        let mut z = Tensor::zeros([b, s, self.config.width as i64], (Kind::Float, features.device()));
        for step in 0..t {
            z = self.step_embedded(&z, &x.select(1, step));
        }
        self.readout(&z)
    }

    /// Logits `[B, T, O]`: the readout after every round step of features `[B, T, S, 3]`.
    pub fn forward_rounds(&self, features: &Tensor) -> Tensor {
        let (b, t, s, _) = features.size4().expect("features are [B, T, S, F]");
        let x = self.embed(features);
        let mut z = Tensor::zeros([b, s, self.config.width as i64], (Kind::Float, features.device()));
        let mut out = Vec::with_capacity(t as usize);
        for step in 0..t {
            z = self.step_embedded(&z, &x.select(1, step));
            out.push(self.readout(&z));
        }
        Tensor::stack(&out, 1)
    }

    /// The training loss of docs/model.md §Dense labels on logits `[B, T, O]`
    /// and labels `[B, T, O]`: the final round's mean BCE plus `aux_weight/(T−1)`
    /// times the earlier rounds' (the loss of `kernels::train`).
    pub fn dense_loss(logits: &Tensor, labels: &Tensor, aux_weight: f64) -> Tensor {
        let t = logits.size()[1];
        let bce = |x: &Tensor, y: &Tensor| x.binary_cross_entropy_with_logits::<Tensor>(y, None, None, Reduction::Mean);
        let last = bce(&logits.select(1, t - 1), &labels.select(1, t - 1));
        if aux_weight == 0.0 || t == 1 {
            return last;
        }
        // Mean over shots and observables, summed over the earlier rounds.
        let early = bce(&logits.narrow(1, 0, t - 1), &labels.narrow(1, 0, t - 1)) * (t - 1) as f64;
        last + early * (aux_weight / (t - 1) as f64)
    }

    /// One round step: the state `z: [B, S, D]` after the round with features `[B, S, 3]`.
    pub fn step(&self, z: &Tensor, features: &Tensor) -> Tensor {
        self.step_embedded(z, &self.embed(features))
    }

    /// Logits `[B, O]` from the state `z: [B, S, D]`.
    pub fn readout(&self, z: &Tensor) -> Tensor {
        let pooled = self.layer_norm(z, "readout.ln").mean_dim(1, false, Kind::Float);
        let hidden = self.linear(&pooled, "readout.w1", "readout.b1").gelu("none");
        self.linear(&hidden, "readout.w2", "readout.b2")
    }

    fn embed(&self, features: &Tensor) -> Tensor {
        self.linear(features, "embed.w_in", "embed.b_in") + self.stabilizer_embedding()
    }

    /// `[S, D]`: stored, or gathered from the type and edge embeddings.
    fn stabilizer_embedding(&self) -> Tensor {
        let Some(g) = &self.positions else {
            return self.w("embed.stab").shallow_clone();
        };
        let edge = self.w("embed.edge");
        let types = self.w("embed.type").index_select(0, &g.types);
        g.edges
            .iter()
            .enumerate()
            .fold(types, |sum, (e, classes)| sum + edge.select(0, e as i64).index_select(0, classes))
    }

    /// `[H, S, S]` of layer `l`: stored, or gathered from the relative table.
    fn attention_bias(&self, l: usize) -> Tensor {
        let Some(g) = &self.positions else {
            return self.w(&format!("layers.{l}.attn.bias")).shallow_clone();
        };
        let h = self.config.heads as i64;
        let s = self.config.num_stabilizers as i64;
        self.w(&format!("layers.{l}.attn.rel")).view([h, -1]).index_select(1, &g.pairs).view([h, s, s])
    }

    fn step_embedded(&self, z: &Tensor, x: &Tensor) -> Tensor {
        let mut z = (z + x) / std::f64::consts::SQRT_2;
        for l in 0..self.config.layers {
            z = self.layer(l, &z);
        }
        z
    }
}

/// The tch trainer: [`Net`] with tch's AdamW, on CUDA when there is one.
pub struct TchEngine {
    net: Net,
    opt: nn::Optimizer,
}

impl TchEngine {
    /// `ckpt` on `device`, with AdamW (weight decay `weight_decay`).
    pub fn new(ckpt: &Checkpoint, device: Device, weight_decay: f64) -> Result<Self, ModelError> {
        let net = Net::from_checkpoint(ckpt, device)?;
        let opt = nn::AdamW { wd: weight_decay, ..Default::default() }.build(&net.vs, 1e-3)?;
        Ok(Self { net, opt })
    }

    /// The model.
    pub fn net(&self) -> &Net {
        &self.net
    }
}

impl Engine for TchEngine {
    fn name(&self) -> &'static str {
        "tch"
    }

    fn device(&self) -> String {
        match self.net.vs.device() {
            Device::Cpu => format!("cpu ({} threads, tch)", tch::get_num_threads()),
            d => format!("{d:?} (tch)"),
        }
    }

    fn step(&mut self, batch: &Batch, lr: f64, clip: f64, aux_weight: f32) -> Result<StepLoss, ModelError> {
        if aux_weight > 0.0 && !batch.dense {
            return Err(ModelError::Training("a per-round loss needs dense labels, which these shots lack".into()));
        }
        let device = self.net.vs.device();
        let (b, t, s) = (batch.shots, batch.rounds, self.net.config.num_stabilizers);
        let o = self.net.config.num_observables as i64;
        let x = features_tensor(&batch.features, b, t, s, device);
        let (loss, final_bce, aux_bce) = if aux_weight > 0.0 {
            let labels = Tensor::from_slice(&batch.labels).view([b as i64, t as i64, o]).to_device(device);
            let logits = self.net.forward_rounds(&x);
            let loss = Net::dense_loss(&logits, &labels, aux_weight as f64);
            let bce = |x: &Tensor, y: &Tensor| {
                x.binary_cross_entropy_with_logits::<Tensor>(y, None, None, Reduction::Mean).double_value(&[])
            };
            let last = bce(&logits.select(1, t as i64 - 1), &labels.select(1, t as i64 - 1));
            let early =
                if t > 1 { bce(&logits.narrow(1, 0, t as i64 - 1), &labels.narrow(1, 0, t as i64 - 1)) } else { 0.0 };
            (loss, last, early)
        } else {
            let labels = Tensor::from_slice(&batch.final_labels()).view([b as i64, o]).to_device(device);
            let loss =
                self.net.forward(&x).binary_cross_entropy_with_logits::<Tensor>(&labels, None, None, Reduction::Mean);
            let value = loss.double_value(&[]);
            (loss, value, 0.0)
        };
        let value = loss.double_value(&[]);
        let out = StepLoss { loss: value, final_bce, aux_bce };
        if !value.is_finite() {
            return Ok(out);
        }
        self.opt.set_lr(lr);
        self.opt.backward_step_clip_norm(&loss, clip);
        Ok(out)
    }

    fn logits(&mut self, featurizer: &Featurizer, events: &PackedShots) -> Result<Vec<f32>, ModelError> {
        logits_for(&self.net, featurizer, events, self.net.vs.device())
    }

    fn to_checkpoint(&self, meta: CheckpointMeta) -> Result<Checkpoint, ModelError> {
        self.net.to_checkpoint(meta)
    }

    fn load(&mut self, ckpt: &Checkpoint) -> Result<(), ModelError> {
        let other = Net::from_checkpoint(ckpt, self.net.vs.device())?;
        self.net.vs.copy(&other.vs)?;
        Ok(())
    }
}

/// Logits `[n * O]` for every shot of `events`, computed in chunks without gradients.
pub fn logits_for(
    net: &Net,
    featurizer: &Featurizer,
    events: &PackedShots,
    device: Device,
) -> Result<Vec<f32>, ModelError> {
    const CHUNK: usize = 2048;
    let mut out = Vec::with_capacity(events.num_shots() * net.config().num_observables);
    for start in (0..events.num_shots()).step_by(CHUNK) {
        let end = (start + CHUNK).min(events.num_shots());
        let mut values = Vec::new();
        featurizer.extend_features(events, start, end, &mut values);
        let x = features_tensor(&values, end - start, featurizer.num_rounds(), featurizer.num_stabilizers(), device);
        let logits = tch::no_grad(|| net.forward(&x)).to_device(Device::Cpu).contiguous().view(-1);
        out.extend(Vec::<f32>::try_from(&logits)?);
    }
    Ok(out)
}

/// Packs features `[n, T, S, 3]` into a tensor on `device`.
pub fn features_tensor(values: &[f32], n: usize, t: usize, s: usize, device: Device) -> Tensor {
    Tensor::from_slice(values)
        .view([n as i64, t as i64, s as i64, crate::features::NUM_FEATURES as i64])
        .to_device(device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::ModelLayout;
    use simulator_bridge::Basis;

    #[test]
    fn checkpoint_round_trips_through_the_net() {
        let layout = ModelLayout::for_code(3, Basis::Z).unwrap();
        let ckpt = Checkpoint::random(ModelConfig::for_distance(3, 16, 2, 2, 32), layout, 1);
        let net = Net::from_checkpoint(&ckpt, Device::Cpu).unwrap();
        assert_eq!(net.to_checkpoint(ckpt.meta.clone()).unwrap(), ckpt);
        let logits = net.forward(&Tensor::zeros([5, 4, 8, 3], (Kind::Float, Device::Cpu)));
        assert_eq!(logits.size(), vec![5, 1]);
        assert!(bool::try_from(logits.isfinite().all()).unwrap());
    }

    /// A relative model's gathered embedding and bias equal the expansion the
    /// kernels get, and its gradients reach the compact tables.
    #[test]
    fn relative_positions_gather_like_the_expansion() {
        use crate::config::Positions;
        let layout = ModelLayout::for_code(5, Basis::Z).unwrap();
        let config = ModelConfig::for_distance(5, 8, 2, 1, 16).with_positions(Positions::RELATIVE);
        let ckpt = Checkpoint::random(config, layout, 3);
        let net = Net::from_checkpoint(&ckpt, Device::Cpu).unwrap();
        let index = ckpt.position_index().unwrap();
        let get = |n: &str| ckpt.tensors[n].1.clone();
        let stab = Vec::<f32>::try_from(net.stabilizer_embedding().view(-1)).unwrap();
        assert_eq!(stab, index.stabilizer_embedding(&get("embed.type"), &get("embed.edge"), 8));
        let bias = Vec::<f32>::try_from(net.attention_bias(0).view(-1)).unwrap();
        assert_eq!(bias, index.attention_bias(&get("layers.0.attn.rel"), 2));
        let loss = net.forward(&Tensor::ones([2, 3, 24, 3], (Kind::Float, Device::Cpu))).sum(Kind::Float);
        loss.backward();
        for name in ["embed.edge", "layers.0.attn.rel"] {
            let grad = net.w(name).grad();
            assert!(f64::try_from(grad.abs().sum(Kind::Float)).unwrap() > 0.0, "{name} gets no gradient");
        }
    }
}
