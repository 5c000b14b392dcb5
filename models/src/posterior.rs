//! The posterior model: a local spacetime transformer that predicts, for one
//! shot, the probability that each edge of the matching graph carries an
//! error. Matching then finds the global answer with those probabilities as
//! its weights (the `neural-matching` decoder). `docs/posterior.md` states
//! the model; this module holds its contract:
//! - [`PosteriorConfig`] and the edge classes its head predicts;
//! - [`Geometry`]: a circuit's tokens, each token's neighbourhood, and where
//!   each matching edge's logit comes from; a model whose geometry does not
//!   fit a circuit is refused, naming what differs;
//! - [`PosteriorModel`]: the weights, their safetensors file, and the CPU
//!   forward pass (`logits`).
//!
//! Tokens are (round, stabilizer) pairs that have a detector. Each layer's
//! attention reaches the tokens at most `radius` lattice steps away in x and
//! in y and from `back` rounds before to `ahead` rounds after, so a round's
//! cost grows linearly with the number of stabilizers, and an edge's logit is
//! known `layers · ahead` rounds after its anchor's round.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};
use simulator_bridge::edges::BOUNDARY;
use simulator_bridge::layout::StabilizerType;
use simulator_bridge::{Basis, StabilizerLayout};

use crate::ModelError;
use crate::tensor_file::{self, Tensors};

/// The input features of a token, in order.
pub const FEATURES: [&str; 3] = ["event", "is_first", "is_final"];
/// Header key of the model's metadata in its safetensors file.
const META_KEY: &str = "qecd_posterior";
/// Additive attention bias of a pair outside the window (the tch model's
/// dense form; the CPU forward never visits such pairs).
pub const MASKED: f32 = -1e9;

/// Which edges a token's head predicts: the edge's other end relative to the
/// anchor (the earlier of its two detectors; for a boundary edge its only
/// one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EdgeClass {
    /// The anchor's stabilizer type, 0 for X and 1 for Z.
    pub anchor: u8,
    /// An edge to the boundary (the offsets are then 0).
    pub boundary: bool,
    /// Rounds from the anchor to the other end (≥ 0).
    pub dt: i8,
    /// Lattice steps in x and in y from the anchor to the other end.
    pub du: i8,
    /// See `du`.
    pub dv: i8,
}

impl std::fmt::Display for EdgeClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.anchor == 0 { "X" } else { "Z" };
        if self.boundary {
            write!(f, "{kind} stabilizer to the boundary")
        } else {
            write!(f, "{kind} stabilizer to (dt {}, dx {}, dy {})", self.dt, self.du, self.dv)
        }
    }
}

/// Shape and geometry of a posterior model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PosteriorConfig {
    /// Token width D.
    pub dim: usize,
    /// Attention heads H.
    pub heads: usize,
    /// Layers L.
    pub layers: usize,
    /// Feed-forward width F.
    pub ffn: usize,
    /// Spatial reach of attention, in lattice steps.
    pub radius: usize,
    /// Rounds before a token that its attention reaches.
    pub back: usize,
    /// Rounds after a token that its attention reaches.
    pub ahead: usize,
    /// Distance classes to each boundary in the embedding (0, 1, .., C-1 or more steps).
    pub boundary_classes: usize,
    /// Memory basis of the experiments it was trained on ("x" or "z").
    pub basis: String,
    /// Feature names, in order ([`FEATURES`]).
    pub features: Vec<String>,
    /// The edge classes its head predicts, in output order.
    pub classes: Vec<EdgeClass>,
}

impl PosteriorConfig {
    /// A config with this project's default shape for `classes`.
    pub fn new(basis: Basis, classes: Vec<EdgeClass>) -> Self {
        Self {
            dim: 32,
            heads: 4,
            layers: 2,
            ffn: 64,
            radius: 2,
            back: 2,
            ahead: 1,
            boundary_classes: 3,
            basis: basis_name(basis).into(),
            features: FEATURES.iter().map(|s| s.to_string()).collect(),
            classes,
        }
    }

    /// Rounds in one layer's time window.
    pub fn window_rounds(&self) -> usize {
        self.back + self.ahead + 1
    }

    /// Cells of one head's relative-bias table: type pair × Δt × Δy × Δx.
    pub fn bias_cells(&self) -> usize {
        let side = 2 * self.radius + 1;
        4 * self.window_rounds() * side * side
    }

    /// Rounds after an edge's anchor before its logit is known.
    pub fn lookahead(&self) -> usize {
        self.layers * self.ahead
    }

    /// Every tensor's name and shape.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (d, f, h) = (self.dim, self.ffn, self.heads);
        let mut out = vec![
            ("embed.w_in".to_string(), vec![d, FEATURES.len()]),
            ("embed.b_in".to_string(), vec![d]),
            ("embed.type".to_string(), vec![2, d]),
            ("embed.edge".to_string(), vec![4, self.boundary_classes, d]),
        ];
        for l in 0..self.layers {
            out.extend(kernels::layer_shapes(l, d, f, ("attn.rel", vec![h, self.bias_cells()])));
        }
        out.extend([
            ("head.ln.weight".to_string(), vec![d]),
            ("head.ln.bias".to_string(), vec![d]),
            ("head.w".to_string(), vec![self.classes.len(), d]),
            ("head.b".to_string(), vec![self.classes.len()]),
        ]);
        out
    }

    fn check(&self) -> Result<(), ModelError> {
        let bad = |why: String| Err(ModelError::Invalid(why));
        if self.dim == 0 || self.heads == 0 || !self.dim.is_multiple_of(self.heads) || self.dim > 256 {
            return bad(format!(
                "width {} must be a positive multiple of the {} heads, at most 256",
                self.dim, self.heads
            ));
        }
        if self.layers == 0 || self.ffn == 0 || self.boundary_classes == 0 {
            return bad("layers, feed-forward width and boundary classes must be positive".into());
        }
        if self.features != FEATURES {
            return bad(format!("features {:?}, this build reads {FEATURES:?}", self.features));
        }
        if self.classes.is_empty() {
            return bad("the model predicts no edge classes".into());
        }
        Ok(())
    }
}

fn basis_name(basis: Basis) -> &'static str {
    match basis {
        Basis::X => "x",
        Basis::Z => "z",
    }
}

/// Lattice steps of a coordinate: Stim's stabilizers sit at even coordinates.
fn steps(a: f64) -> i32 {
    (a / 2.0).round() as i32
}

fn type_index(kind: StabilizerType) -> u8 {
    match kind {
        StabilizerType::X => 0,
        StabilizerType::Z => 1,
    }
}

/// One token's view of another within its window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neighbor {
    /// The other token.
    pub token: u32,
    /// Its cell in the relative-bias table.
    pub cell: u32,
}

/// A circuit as the posterior model sees it.
#[derive(Clone, Debug)]
pub struct Geometry {
    /// Stabilizers S.
    pub num_stabilizers: usize,
    /// Rounds T, the final data-qubit round included.
    pub num_rounds: usize,
    /// Tokens: `(round, stabilizer)` of each, in (round, stabilizer) order.
    pub tokens: Vec<(u32, u32)>,
    /// The token of each detector.
    pub token_of_detector: Vec<u32>,
    /// Stabilizer type of each token (0 X, 1 Z).
    pub token_type: Vec<u8>,
    /// Boundary class of each token's stabilizer, per boundary (left, right, top, bottom).
    pub token_boundary: Vec<[u8; 4]>,
    /// Each token's neighbourhood (itself included), in key order.
    pub neighbors: Vec<Vec<Neighbor>>,
    /// Where each matching edge's logit is: (token, class index).
    pub edge_slots: Vec<(u32, u32)>,
}

/// The class of each edge of a circuit's matching graph, and its anchor token.
fn classify(layout: &StabilizerLayout, edges: &[(u64, u64)]) -> Result<Vec<(usize, EdgeClass)>, ModelError> {
    let site = |d: u64| {
        layout.detectors.get(d as usize).copied().ok_or_else(|| {
            ModelError::Mismatch(format!("edge detector D{d} is beyond the circuit's {}", layout.num_detectors()))
        })
    };
    edges
        .iter()
        .map(|&(a, b)| {
            let sa = site(a)?;
            if b == BOUNDARY {
                let anchor = type_index(layout.stabilizers[sa.stabilizer].kind);
                return Ok((a as usize, EdgeClass { anchor, boundary: true, dt: 0, du: 0, dv: 0 }));
            }
            let sb = site(b)?;
            let (first, other, first_det) =
                if (sb.round, sb.stabilizer) < (sa.round, sa.stabilizer) { (sb, sa, b) } else { (sa, sb, a) };
            let (p, q) = (&layout.stabilizers[first.stabilizer], &layout.stabilizers[other.stabilizer]);
            Ok((
                first_det as usize,
                EdgeClass {
                    anchor: type_index(p.kind),
                    boundary: false,
                    dt: (other.round - first.round) as i8,
                    du: (steps(q.x) - steps(p.x)) as i8,
                    dv: (steps(q.y) - steps(p.y)) as i8,
                },
            ))
        })
        .collect()
}

impl Geometry {
    /// The edge classes of a circuit's matching graph (to build a config
    /// that predicts them all).
    pub fn classes_of(layout: &StabilizerLayout, edges: &[(u64, u64)]) -> Result<Vec<EdgeClass>, ModelError> {
        let set: BTreeSet<EdgeClass> = classify(layout, edges)?.into_iter().map(|(_, c)| c).collect();
        Ok(set.into_iter().collect())
    }

    /// Lays `config` out for a circuit. Refused, naming what differs, when
    /// the circuit is of another basis, its code is not Stim's rotated
    /// surface code, or its matching graph has an edge of a class the model
    /// does not predict.
    pub fn new(config: &PosteriorConfig, layout: &StabilizerLayout, edges: &[(u64, u64)]) -> Result<Self, ModelError> {
        config.check()?;
        if config.basis != basis_name(layout.basis) {
            return Err(ModelError::Mismatch(format!(
                "the posterior model decodes memory-{} experiments, the circuit is memory-{}",
                config.basis.to_uppercase(),
                basis_name(layout.basis).to_uppercase()
            )));
        }
        let d = layout.distance().ok_or_else(|| {
            ModelError::Mismatch(format!(
                "the circuit's {} stabilizers are not a rotated surface code's",
                layout.num_stabilizers()
            ))
        })?;
        let s_count = layout.num_stabilizers();
        let t_count = layout.num_rounds;
        let mut token_of_site = vec![u32::MAX; s_count * t_count];
        let mut sites: Vec<(u32, u32)> =
            layout.detectors.iter().map(|site| (site.round as u32, site.stabilizer as u32)).collect();
        sites.sort_unstable();
        sites.dedup();
        for (k, &(t, s)) in sites.iter().enumerate() {
            token_of_site[t as usize * s_count + s as usize] = k as u32;
        }
        let token_of_detector =
            layout.detectors.iter().map(|site| token_of_site[site.round * s_count + site.stabilizer]).collect();
        let c_max = config.boundary_classes as i32 - 1;
        let extent = 2 * d as i32;
        let token_type: Vec<u8> = sites.iter().map(|&(_, s)| type_index(layout.stabilizers[s as usize].kind)).collect();
        let token_boundary = sites
            .iter()
            .map(|&(_, s)| {
                let st = &layout.stabilizers[s as usize];
                let (x, y) = (steps(st.x), steps(st.y));
                let room = [x, steps(extent as f64) - x, y, steps(extent as f64) - y];
                room.map(|r| r.clamp(0, c_max) as u8)
            })
            .collect();
        let (r, back, ahead) = (config.radius as i32, config.back as i32, config.ahead as i32);
        let side = 2 * r + 1;
        let rounds = config.window_rounds() as i32;
        let neighbors = sites
            .iter()
            .map(|&(t, s)| {
                let p = &layout.stabilizers[s as usize];
                let tq = type_index(p.kind) as i32;
                let mut out = Vec::new();
                for dt in -back..=ahead {
                    let t2 = t as i32 + dt;
                    if t2 < 0 || t2 >= t_count as i32 {
                        continue;
                    }
                    for (s2, q) in layout.stabilizers.iter().enumerate() {
                        let (du, dv) = (steps(q.x) - steps(p.x), steps(q.y) - steps(p.y));
                        if du.abs() > r || dv.abs() > r {
                            continue;
                        }
                        let token = token_of_site[t2 as usize * s_count + s2];
                        if token == u32::MAX {
                            continue;
                        }
                        let pair = 2 * tq + type_index(q.kind) as i32;
                        let cell = ((pair * rounds + dt + back) * side + dv + r) * side + du + r;
                        out.push(Neighbor { token, cell: cell as u32 });
                    }
                }
                out.sort_unstable_by_key(|n| n.token);
                out
            })
            .collect();
        let class_index: HashMap<EdgeClass, u32> =
            config.classes.iter().enumerate().map(|(i, c)| (*c, i as u32)).collect();
        let edge_slots = classify(layout, edges)?
            .into_iter()
            .map(|(anchor, class)| {
                let i = class_index.get(&class).ok_or_else(|| {
                    ModelError::Mismatch(format!(
                        "the circuit's matching graph has an edge ({class}) that the posterior model does not predict"
                    ))
                })?;
                let site = layout.detectors[anchor];
                Ok((token_of_site[site.round * s_count + site.stabilizer], *i))
            })
            .collect::<Result<_, ModelError>>()?;
        Ok(Self {
            num_stabilizers: s_count,
            num_rounds: t_count,
            tokens: sites,
            token_of_detector,
            token_type,
            token_boundary,
            neighbors,
            edge_slots,
        })
    }

    /// Tokens N.
    pub fn num_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// The features of every token for one shot's detection events, row-major `[N, 3]`.
    pub fn features(&self, events: impl IntoIterator<Item = usize>) -> Vec<f32> {
        let last = self.num_rounds as u32 - 1;
        let mut f = Vec::with_capacity(self.tokens.len() * FEATURES.len());
        for &(t, _) in &self.tokens {
            f.extend([0.0, f32::from(u8::from(t == 0)), f32::from(u8::from(t == last))]);
        }
        for d in events {
            f[self.token_of_detector[d] as usize * FEATURES.len()] = 1.0;
        }
        f
    }
}

/// Where a model came from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PosteriorProvenance {
    /// Distance, rounds, noise model and p of the training shots.
    pub distance: usize,
    /// See `distance`.
    pub rounds: usize,
    /// See `distance`.
    pub noise: String,
    /// See `distance`.
    pub p: f64,
    /// Optimizer steps and shots seen.
    pub steps: u64,
    /// See `steps`.
    pub shots: u64,
    /// Training seed.
    pub seed: u64,
    /// Held-out per-edge cross-entropy at the last evaluation (nats).
    pub held_out_loss: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Meta {
    config: PosteriorConfig,
    provenance: PosteriorProvenance,
}

/// A posterior model's weights.
#[derive(Clone, Debug, PartialEq)]
pub struct PosteriorModel {
    /// Its shape and geometry.
    pub config: PosteriorConfig,
    /// Where it came from.
    pub provenance: PosteriorProvenance,
    /// Name → (shape, row-major values).
    pub tensors: Tensors,
}

impl PosteriorModel {
    /// Deterministic pseudo-random weights (for tests and as a training
    /// start): LayerNorm gains 1, biases 0, matrices uniform in ±1/√fan_in,
    /// tables uniform in ±0.1.
    pub fn random(config: PosteriorConfig, seed: u64) -> Result<Self, ModelError> {
        config.check()?;
        let mut uniform = tensor_file::uniform(seed ^ 0x9E37_79B9_7F4A_7C15);
        let mut tensors = BTreeMap::new();
        for (name, shape) in config.tensor_shapes() {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = if name.contains("ln") && name.ends_with("weight") {
                vec![1.0; n]
            } else if name.ends_with(".bias") || name.ends_with(".b_in") || name.contains(".b") && shape.len() == 1 {
                vec![0.0; n]
            } else {
                let scale =
                    if shape.len() == 2 && !name.ends_with("rel") { 1.0 / (shape[1] as f32).sqrt() } else { 0.1 };
                (0..n).map(|_| uniform() * scale).collect()
            };
            tensors.insert(name, (shape, values));
        }
        Ok(Self { config, provenance: PosteriorProvenance::default(), tensors })
    }

    /// A tensor's values.
    pub fn tensor(&self, name: &str) -> &[f32] {
        &self.tensors.get(name).unwrap_or_else(|| panic!("validated model lacks {name}")).1
    }

    fn validate(&self, path: &str) -> Result<(), ModelError> {
        let bad = |why: String| ModelError::Checkpoint { path: path.to_string(), why };
        self.config.check().map_err(|e| bad(e.to_string()))?;
        let want = self.config.tensor_shapes();
        for (name, shape) in &want {
            let Some((have, values)) = self.tensors.get(name) else {
                return Err(bad(format!("tensor '{name}' is missing")));
            };
            if have != shape {
                return Err(bad(format!("tensor '{name}' has shape {have:?}, the config implies {shape:?}")));
            }
            if values.len() != shape.iter().product::<usize>() {
                return Err(bad(format!("tensor '{name}' has {} values for shape {shape:?}", values.len())));
            }
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(bad(format!("tensor '{name}' has a non-finite value at {i}")));
            }
        }
        if let Some(extra) = self.tensors.keys().find(|k| !want.iter().any(|(n, _)| n == *k)) {
            return Err(bad(format!("unexpected tensor '{extra}'")));
        }
        Ok(())
    }

    /// Serializes to safetensors bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, ModelError> {
        self.validate("<in memory>")?;
        let meta = serde_json::to_string(&Meta { config: self.config.clone(), provenance: self.provenance.clone() })
            .expect("metadata serializes");
        tensor_file::encode(&self.tensors, META_KEY, meta)
    }

    /// Parses and validates safetensors bytes.
    pub fn from_bytes(bytes: &[u8], path: &str) -> Result<Self, ModelError> {
        let missing =
            format!("no '{META_KEY}' metadata in the header; not a posterior model (a global neural checkpoint?)");
        let (meta_json, tensors) = tensor_file::decode(bytes, path, META_KEY, &missing)?;
        let meta: Meta = serde_json::from_str(&meta_json).map_err(|e| ModelError::Checkpoint {
            path: path.to_string(),
            why: format!("metadata does not parse: {e}"),
        })?;
        let model = Self { config: meta.config, provenance: meta.provenance, tensors };
        model.validate(path)?;
        Ok(model)
    }

    /// Writes the model atomically.
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        tensor_file::write(path, &self.to_bytes()?)
    }

    /// Reads and validates a model file.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let bytes = simulator_bridge::fsutil::read_file(path)?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// The logit of every matching edge of `geometry` for one shot whose
    /// detection events are `events` (detector indices), in the geometry's
    /// edge order. This lays the weights out on every call; a decoder keeps
    /// a [`crate::posterior_cpu::Prepared`] and a stream instead.
    pub fn logits(&self, geometry: &Geometry, events: impl IntoIterator<Item = usize>) -> Vec<f32> {
        let prepared = crate::posterior_cpu::Prepared::new(self);
        let rounds = crate::posterior_cpu::Rounds::new(geometry);
        let mut stream = crate::posterior_cpu::Stream::default();
        prepared.shot(geometry, &rounds, events, &mut stream);
        stream.logits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use simulator_bridge::edges::DemEdges;
    use simulator_bridge::{MemoryExperiment, NoiseModel};

    pub(crate) fn circuit_parts(d: usize, rounds: usize) -> (StabilizerLayout, Vec<(u64, u64)>) {
        let c = MemoryExperiment::new(d, rounds, Basis::Z)
            .unwrap()
            .noisy_circuit(&NoiseModel::Si1000 { p: 0.003 })
            .unwrap();
        let dem = simulator_bridge::decoding_dem(&c).unwrap();
        (StabilizerLayout::from_circuit(&c, Basis::Z).unwrap(), DemEdges::from_dem(&dem).unwrap().edges)
    }

    /// The edge classes of d=5 cover d=3..9 (the model trains at 5 and runs
    /// at any distance), and the lookahead is what the config says.
    #[test]
    fn classes_learned_at_d5_cover_other_distances() {
        let (layout, edges) = circuit_parts(5, 5);
        let classes = Geometry::classes_of(&layout, &edges).unwrap();
        assert!(classes.len() > 10, "{classes:?}");
        let config = PosteriorConfig::new(Basis::Z, classes);
        assert_eq!(config.lookahead(), 2);
        for (d, rounds) in [(3, 3), (5, 9), (7, 7), (9, 4)] {
            let (layout, edges) = circuit_parts(d, rounds);
            let g = Geometry::new(&config, &layout, &edges).unwrap();
            assert_eq!(g.edge_slots.len(), edges.len());
            assert_eq!(g.num_tokens(), layout.num_detectors());
            // Every token sees itself.
            for (k, nb) in g.neighbors.iter().enumerate() {
                assert!(nb.iter().any(|m| m.token as usize == k));
            }
        }
    }

    #[test]
    fn misfits_are_refused_by_name() {
        let (layout, edges) = circuit_parts(3, 3);
        let classes = Geometry::classes_of(&layout, &edges).unwrap();
        let mut config = PosteriorConfig::new(Basis::X, classes.clone());
        let err = Geometry::new(&config, &layout, &edges).unwrap_err().to_string();
        assert!(err.contains("memory-X") && err.contains("memory-Z"), "{err}");
        config.basis = "z".into();
        config.classes.retain(|c| !c.boundary);
        let err = Geometry::new(&config, &layout, &edges).unwrap_err().to_string();
        assert!(err.contains("to the boundary") && err.contains("does not predict"), "{err}");
    }

    #[test]
    fn file_round_trip_and_refusals() {
        let (layout, edges) = circuit_parts(3, 3);
        let config = PosteriorConfig::new(Basis::Z, Geometry::classes_of(&layout, &edges).unwrap());
        let mut model = PosteriorModel::random(config, 3).unwrap();
        model.provenance.steps = 12;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        model.save(&path).unwrap();
        assert_eq!(PosteriorModel::load(&path).unwrap(), model);
        let mut broken = model.clone();
        broken.tensors.get_mut("head.b").unwrap().1[0] = f32::NAN;
        assert!(broken.save(&path).unwrap_err().to_string().contains("non-finite"));
        let err = PosteriorModel::from_bytes(b"nonsense", "x").unwrap_err().to_string();
        assert!(err.contains("not a safetensors file"), "{err}");
    }

    /// The CPU forward (neighbour lists) equals a plain f64 forward over all
    /// token pairs with the window as an additive mask, the form the tch
    /// model trains in.
    #[test]
    fn forward_matches_dense_reference() {
        let (layout, edges) = circuit_parts(3, 4);
        let config = PosteriorConfig::new(Basis::Z, Geometry::classes_of(&layout, &edges).unwrap());
        let model = PosteriorModel::random(config, 9).unwrap();
        let g = Geometry::new(&model.config, &layout, &edges).unwrap();
        let events = [1usize, 5, 8, 20, 21];
        let got = model.logits(&g, events);
        let want = reference::logits(&model, &g, &events);
        assert_eq!(got.len(), edges.len());
        let worst = got.iter().zip(&want).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-4, "worst difference {worst}");
        assert!(want.iter().any(|w| w.abs() > 0.1), "the reference logits are all near 0");
    }
}

/// The f64 reference forward: dense attention over all token pairs with the
/// window as an additive mask (the form the tch model trains in).
#[cfg(test)]
pub(crate) mod reference {
    use super::*;
    use kernels::reference::{gelu, layer_norm as ln, linear as lin};

    pub(crate) fn logits(model: &PosteriorModel, g: &Geometry, events: &[usize]) -> Vec<f64> {
        let c = &model.config;
        let (n, d) = (g.num_tokens(), c.dim);
        let width = d / c.heads;
        let f = g.features(events.iter().copied());
        let tensors: HashMap<&str, Vec<f64>> =
            model.tensors.iter().map(|(name, (_, v))| (name.as_str(), v.iter().map(|&x| x as f64).collect())).collect();
        let t = |name: &str| -> &[f64] { &tensors[name] };
        let mut z: Vec<Vec<f64>> = (0..n)
            .map(|k| {
                let mut x = lin(
                    &f[k * 3..k * 3 + 3].iter().map(|&v| v as f64).collect::<Vec<_>>(),
                    t("embed.w_in"),
                    t("embed.b_in"),
                );
                for (j, xj) in x.iter_mut().enumerate() {
                    *xj += t("embed.type")[g.token_type[k] as usize * d + j];
                    for (e, &class) in g.token_boundary[k].iter().enumerate() {
                        *xj += t("embed.edge")[(e * c.boundary_classes + class as usize) * d + j];
                    }
                }
                x
            })
            .collect();
        // The dense bias: every pair, masked outside the window.
        let mut cell = vec![vec![None; n]; n];
        for (k, nb) in g.neighbors.iter().enumerate() {
            for m in nb {
                cell[k][m.token as usize] = Some(m.cell as usize);
            }
        }
        for l in 0..c.layers {
            let p = |name: &str| format!("layers.{l}.{name}");
            let a: Vec<Vec<f64>> = z.iter().map(|r| ln(r, t(&p("ln1.weight")), t(&p("ln1.bias")))).collect();
            let q: Vec<Vec<f64>> = a.iter().map(|r| lin(r, t(&p("attn.wq")), t(&p("attn.bq")))).collect();
            let kk: Vec<Vec<f64>> = a.iter().map(|r| lin(r, t(&p("attn.wk")), t(&p("attn.bk")))).collect();
            let v: Vec<Vec<f64>> = a.iter().map(|r| lin(r, t(&p("attn.wv")), t(&p("attn.bv")))).collect();
            let rel = t(&p("attn.rel"));
            let mut o = vec![vec![0.0; d]; n];
            for i in 0..n {
                for h in 0..c.heads {
                    let hs = h * width..(h + 1) * width;
                    let scores: Vec<f64> = (0..n)
                        .map(|j| {
                            let dot: f64 = hs.clone().map(|x| q[i][x] * kk[j][x]).sum::<f64>() / (width as f64).sqrt();
                            dot + cell[i][j].map_or(MASKED as f64, |cl| rel[h * c.bias_cells() + cl])
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f64 = e.iter().sum();
                    for x in hs {
                        o[i][x] = (0..n).map(|j| e[j] / total * v[j][x]).sum();
                    }
                }
            }
            for i in 0..n {
                let y = lin(&o[i], t(&p("attn.wo")), t(&p("attn.bo")));
                z[i].iter_mut().zip(y).for_each(|(a, b)| *a += b);
                let a = ln(&z[i], t(&p("ln2.weight")), t(&p("ln2.bias")));
                let hdn: Vec<f64> = lin(&a, t(&p("ffn.w1")), t(&p("ffn.b1"))).into_iter().map(gelu).collect();
                let y = lin(&hdn, t(&p("ffn.w2")), t(&p("ffn.b2")));
                z[i].iter_mut().zip(y).for_each(|(a, b)| *a += b);
            }
        }
        g.edge_slots
            .iter()
            .map(|&(token, class)| {
                let a = ln(&z[token as usize], t("head.ln.weight"), t("head.ln.bias"));
                let (w, b) = (t("head.w"), t("head.b"));
                b[class as usize] + (0..d).map(|j| w[class as usize * d + j] * a[j]).sum::<f64>()
            })
            .collect()
    }
}
