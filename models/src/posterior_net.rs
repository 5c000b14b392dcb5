//! The posterior model in tch, for training: the same function as
//! [`PosteriorModel::logits`], with attention over all of a shot's tokens and
//! the window as an additive mask ([`MASKED`] outside it), so that a batch
//! is a few dense products. `tests/posterior_equivalence.rs` holds the two
//! within 1e-4.

use std::collections::BTreeMap;

use simulator_bridge::edges::{EdgeSampler, EdgeShots};
use tch::{Device, Kind, Reduction, Tensor, nn, nn::OptimizerConfig};

use crate::ModelError;
use crate::posterior::{FEATURES, Geometry, MASKED, PosteriorConfig, PosteriorModel, PosteriorProvenance};

/// A geometry as index tensors.
pub struct DenseGeometry {
    tokens: i64,
    edges: i64,
    types: Tensor,
    boundary: [Tensor; 4],
    /// `[N·N]`: each pair's cell in a head's bias table, or `cells` (the masked cell).
    bias_index: Tensor,
    /// `[E]`: each edge's `token · classes + class`.
    slot_index: Tensor,
    geometry: Geometry,
}

impl DenseGeometry {
    /// Builds the index tensors of `geometry` for a model of `config` on `device`.
    pub fn new(geometry: Geometry, config: &PosteriorConfig, device: Device) -> Self {
        let n = geometry.num_tokens();
        let index = |v: Vec<i64>| Tensor::from_slice(&v).to_device(device);
        let mut pairs = vec![config.bias_cells() as i64; n * n];
        for (k, nb) in geometry.neighbors.iter().enumerate() {
            for m in nb {
                pairs[k * n + m.token as usize] = m.cell as i64;
            }
        }
        let classes = config.classes.len() as i64;
        let boundary = std::array::from_fn(|e| index(geometry.token_boundary.iter().map(|b| b[e] as i64).collect()));
        Self {
            tokens: n as i64,
            edges: geometry.edge_slots.len() as i64,
            types: index(geometry.token_type.iter().map(|&t| t as i64).collect()),
            boundary,
            bias_index: index(pairs),
            slot_index: index(geometry.edge_slots.iter().map(|&(t, c)| t as i64 * classes + c as i64).collect()),
            geometry,
        }
    }

    /// The geometry it indexes.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// Features `[B, N, 3]` and edge labels `[B, E]` of sampled shots.
    pub fn batch(&self, shots: &EdgeShots, device: Device) -> (Tensor, Tensor) {
        let b = shots.detectors.num_shots();
        let mut features = Vec::with_capacity(b * self.tokens as usize * FEATURES.len());
        let mut labels = vec![0f32; b * self.edges as usize];
        for s in 0..b {
            features.extend(self.geometry.features(shots.detectors.hits(s)));
            for e in shots.edge_labels.hits(s) {
                labels[s * self.edges as usize + e] = 1.0;
            }
        }
        let features = Tensor::from_slice(&features).view([b as i64, self.tokens, FEATURES.len() as i64]);
        let labels = Tensor::from_slice(&labels).view([b as i64, self.edges]);
        (features.to_device(device), labels.to_device(device))
    }
}

/// The model's variables in a tch `VarStore`, named as in its file.
pub struct PosteriorNet {
    /// Owns the trainable variables.
    pub vs: nn::VarStore,
    config: PosteriorConfig,
    vars: BTreeMap<String, Tensor>,
}

impl PosteriorNet {
    /// Loads a model's weights onto `device`.
    pub fn from_model(model: &PosteriorModel, device: Device) -> Result<Self, ModelError> {
        let vs = nn::VarStore::new(device);
        let mut vars = BTreeMap::new();
        for (name, shape) in model.config.tensor_shapes() {
            let dims: Vec<i64> = shape.iter().map(|&x| x as i64).collect();
            let init = Tensor::from_slice(model.tensor(&name)).view(dims.as_slice()).to_device(device);
            let mut path = vs.root();
            let parts: Vec<&str> = name.split('.').collect();
            for part in &parts[..parts.len() - 1] {
                path = path / *part;
            }
            vars.insert(name.clone(), path.var_copy(parts[parts.len() - 1], &init));
        }
        Ok(Self { vs, config: model.config.clone(), vars })
    }

    /// The current weights as a model.
    pub fn to_model(&self, provenance: PosteriorProvenance) -> Result<PosteriorModel, ModelError> {
        let mut tensors = BTreeMap::new();
        for (name, var) in &self.vars {
            let shape: Vec<usize> = var.size().iter().map(|&x| x as usize).collect();
            let flat = var.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous().view(-1);
            tensors.insert(name.clone(), (shape, Vec::<f32>::try_from(&flat)?));
        }
        Ok(PosteriorModel { config: self.config.clone(), provenance, tensors })
    }

    fn v(&self, name: &str) -> &Tensor {
        &self.vars[name]
    }

    /// Edge logits `[B, E]` for features `[B, N, 3]`.
    // `z = z + ..` allocates on purpose: an in-place add would overwrite
    // values that autograd keeps for the backward pass.
    #[allow(clippy::assign_op_pattern)]
    pub fn forward(&self, g: &DenseGeometry, features: &Tensor) -> Tensor {
        let c = &self.config;
        let (d, h) = (c.dim as i64, c.heads as i64);
        let (b, n) = (features.size()[0], g.tokens);
        let width = d / h;
        let ln = |x: &Tensor, p: &str| {
            x.layer_norm([d], Some(self.v(&format!("{p}.weight"))), Some(self.v(&format!("{p}.bias"))), 1e-5, false)
        };
        let mut z = features.linear(self.v("embed.w_in"), Some(self.v("embed.b_in")))
            + self.v("embed.type").index_select(0, &g.types);
        let edge = self.v("embed.edge");
        for (e, index) in g.boundary.iter().enumerate() {
            z = z + edge.get(e as i64).index_select(0, index);
        }
        let masked = Tensor::full([h, 1], MASKED as f64, (Kind::Float, features.device()));
        for l in 0..c.layers {
            let p = |name: &str| format!("layers.{l}.{name}");
            let a = ln(&z, &p("ln1"));
            let heads = |w: &str, bias: &str| {
                a.linear(self.v(&p(w)), Some(self.v(&p(bias)))).view([b, n, h, width]).permute([0, 2, 1, 3])
            };
            let (q, k, v) = (heads("attn.wq", "attn.bq"), heads("attn.wk", "attn.bk"), heads("attn.wv", "attn.bv"));
            let bias =
                Tensor::cat(&[self.v(&p("attn.rel")), &masked], 1).index_select(1, &g.bias_index).view([h, n, n]);
            let scores = q.matmul(&k.transpose(-1, -2)) * (1.0 / (width as f64).sqrt()) + bias;
            let o = scores.softmax(-1, Kind::Float).matmul(&v).permute([0, 2, 1, 3]).contiguous().view([b, n, d]);
            z = z + o.linear(self.v(&p("attn.wo")), Some(self.v(&p("attn.bo"))));
            let hidden = ln(&z, &p("ln2")).linear(self.v(&p("ffn.w1")), Some(self.v(&p("ffn.b1")))).gelu("none");
            z = z + hidden.linear(self.v(&p("ffn.w2")), Some(self.v(&p("ffn.b2"))));
        }
        let logits = ln(&z, "head.ln").linear(self.v("head.w"), Some(self.v("head.b")));
        logits.view([b, n * c.classes.len() as i64]).index_select(1, &g.slot_index)
    }
}

/// Mean per-edge binary cross-entropy (nats) of logits against labels.
pub fn edge_loss(logits: &Tensor, labels: &Tensor) -> Tensor {
    logits.binary_cross_entropy_with_logits::<Tensor>(labels, None, None, Reduction::Mean)
}

/// The mean per-edge cross-entropy of predicting each edge's prior
/// probability (from the detector error model) on `labels` `[B, E]`: what a
/// model that ignores the syndrome scores.
pub fn prior_loss(priors: &[f64], labels: &Tensor) -> f64 {
    let p = Tensor::from_slice(priors).to_kind(Kind::Float).to_device(labels.device()).clamp(1e-12, 1.0 - 1e-12);
    let logit: Tensor = &p.log() - (p.ones_like() - &p).log();
    edge_loss(&logit.unsqueeze(0).expand_as(labels), labels).double_value(&[])
}

/// AdamW training of a posterior model on freshly sampled shots.
pub struct PosteriorTrainer {
    net: PosteriorNet,
    opt: nn::Optimizer,
    dense: DenseGeometry,
    sampler: EdgeSampler,
    device: Device,
}

impl PosteriorTrainer {
    /// Starts from `model`, sampling from `sampler` (whose edges are the
    /// geometry's, in order).
    pub fn new(
        model: &PosteriorModel,
        geometry: Geometry,
        sampler: EdgeSampler,
        lr: f64,
        device: Device,
    ) -> Result<Self, ModelError> {
        if geometry.edge_slots.len() != sampler.edges().edges.len() {
            return Err(ModelError::Invalid(format!(
                "the geometry has {} edges, the sampler {}",
                geometry.edge_slots.len(),
                sampler.edges().edges.len()
            )));
        }
        let net = PosteriorNet::from_model(model, device)?;
        let opt = nn::AdamW::default().wd(0.0).build(&net.vs, lr)?;
        let dense = DenseGeometry::new(geometry, &model.config, device);
        Ok(Self { net, opt, dense, sampler, device })
    }

    /// One step on `batch` fresh shots at learning rate `lr`; returns the loss.
    pub fn step(&mut self, batch: usize, lr: f64) -> Result<f64, ModelError> {
        let shots = self.sampler.sample(batch)?;
        let (features, labels) = self.dense.batch(&shots, self.device);
        let loss = edge_loss(&self.net.forward(&self.dense, &features), &labels);
        self.opt.set_lr(lr);
        self.opt.zero_grad();
        loss.backward();
        self.opt.clip_grad_norm(1.0);
        self.opt.step();
        let value = loss.double_value(&[]);
        if !value.is_finite() {
            return Err(ModelError::Diverged(format!("the loss became {value}")));
        }
        Ok(value)
    }

    /// The model's and the prior's mean per-edge cross-entropy on `shots`.
    pub fn evaluate(&self, shots: &EdgeShots) -> (f64, f64) {
        let _guard = tch::no_grad_guard();
        let priors = self.sampler.edges().edge_priors();
        let mut total = 0.0;
        let mut prior = 0.0;
        let n = shots.detectors.num_shots();
        let chunk = 256;
        for start in (0..n).step_by(chunk) {
            let end = (start + chunk).min(n);
            let part = EdgeShots {
                detectors: shots.detectors.slice(start, end),
                observables: shots.observables.slice(start, end),
                edge_labels: shots.edge_labels.slice(start, end),
            };
            let (features, labels) = self.dense.batch(&part, self.device);
            let w = (end - start) as f64;
            total += w * edge_loss(&self.net.forward(&self.dense, &features), &labels).double_value(&[]);
            prior += w * prior_loss(&priors, &labels);
        }
        (total / n as f64, prior / n as f64)
    }

    /// The current weights.
    pub fn model(&self, provenance: PosteriorProvenance) -> Result<PosteriorModel, ModelError> {
        self.net.to_model(provenance)
    }
}
