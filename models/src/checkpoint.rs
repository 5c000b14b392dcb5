//! Checkpoints: one `.safetensors` file holding the weights (f32, named as
//! in [`ModelConfig::tensor_shapes`]) and, in the header's `__metadata__`
//! under the key `qecd`, a JSON [`CheckpointMeta`]: the config, the
//! stabilizer layout the model expects, provenance, the calibration
//! temperature τ and evaluation figures.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use simulator_bridge::layout::Stabilizer;
use simulator_bridge::{Basis, MemoryExperiment, StabilizerLayout};

use crate::ModelError;
use crate::config::{ModelConfig, Positions};
use crate::positions::PositionIndex;
use crate::tensor_file;

/// Version tag of the metadata layout.
pub const FORMAT: &str = "qecd-checkpoint/1";

/// The stabilizers a model was trained on, in its order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelLayout {
    /// Code distance.
    pub distance: usize,
    /// Memory basis.
    pub basis: Basis,
    /// All `d² − 1` stabilizers, sorted by (y, x).
    pub stabilizers: Vec<Stabilizer>,
}

impl ModelLayout {
    /// The layout of Stim's rotated surface code of distance `d` (taken from a
    /// two-round circuit, in which every stabilizer has detectors).
    pub fn for_code(distance: usize, basis: Basis) -> Result<Self, ModelError> {
        let circuit = MemoryExperiment::new(distance, 2, basis)?.ideal_circuit()?;
        let layout = StabilizerLayout::from_circuit(&circuit, basis)?;
        Ok(Self { distance, basis, stabilizers: layout.stabilizers })
    }
}

/// Where a checkpoint came from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// Noise model name.
    pub noise: String,
    /// Physical error rate.
    pub p: f64,
    /// Rounds trained on, e.g. "1..=25".
    pub rounds: String,
    /// Training samples seen, fine-tuning included.
    pub samples_seen: u64,
    /// Optimizer steps taken.
    pub steps: u64,
    /// Seeds used: name → value.
    pub seeds: BTreeMap<String, u64>,
    /// Command lines that produced the checkpoint, oldest first.
    pub commands: Vec<String>,
    /// Device trained on.
    pub device: String,
    /// Wall-clock seconds of training.
    pub seconds: f64,
    /// The trainer of the latest steps: `fused` or `tch` (empty in
    /// checkpoints from before the fused trainer, which tch wrote).
    #[serde(default)]
    pub trainer: String,
}

/// Everything in a checkpoint besides the weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// [`FORMAT`].
    pub format: String,
    /// The model's shapes.
    pub config: ModelConfig,
    /// The stabilizers it expects.
    pub layout: ModelLayout,
    /// How it was made.
    pub provenance: Provenance,
    /// Temperature τ of `sigmoid(logit / τ)`; 1 until calibrated.
    pub temperature: f64,
    /// Evaluation figures, free-form.
    pub evaluation: serde_json::Value,
}

/// Weights plus metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// Metadata.
    pub meta: CheckpointMeta,
    /// Name → (shape, values), every tensor of the config.
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

impl Checkpoint {
    /// Checks that every tensor the config names is present with its shape.
    pub fn validate(&self, path: &str) -> Result<(), ModelError> {
        let bad = |why: String| Err(ModelError::Checkpoint { path: path.to_string(), why });
        self.meta.config.validate()?;
        if self.meta.format != FORMAT {
            return bad(format!("format '{}' is not {FORMAT}", self.meta.format));
        }
        if self.meta.layout.stabilizers.len() != self.meta.config.num_stabilizers {
            return bad(format!(
                "the layout has {} stabilizers but the config expects {}",
                self.meta.layout.stabilizers.len(),
                self.meta.config.num_stabilizers
            ));
        }
        for (name, shape) in self.meta.config.tensor_shapes() {
            match self.tensors.get(&name) {
                None => return bad(format!("tensor '{name}' is missing")),
                Some((got, values)) if got != &shape || values.len() != shape.iter().product::<usize>() => {
                    return bad(format!("tensor '{name}' has shape {got:?}, expected {shape:?}"));
                }
                Some((_, values)) if values.iter().any(|v| !v.is_finite()) => {
                    return bad(format!("tensor '{name}' holds non-finite values"));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The weights repacked for the inference kernels, a relative model's
    /// position tensors expanded for its layout. A tensor the kernels reject
    /// (missing, mis-shaped, non-finite) is named in the error.
    pub fn kernel_weights(&self, path: &str) -> Result<kernels::Weights, ModelError> {
        let expanded = self.expanded_positions();
        kernels::Weights::from_named(self.meta.config.kernel_config(), |name| {
            expanded
                .get(name)
                .or_else(|| self.tensors.get(name))
                .map(|(shape, values)| (shape.as_slice(), values.as_slice()))
        })
        .map_err(|e| ModelError::Checkpoint { path: path.to_string(), why: e.to_string() })
    }

    /// The gather indices of a relative model's layout (None for a per-stabilizer model).
    pub fn position_index(&self) -> Option<PositionIndex> {
        match self.meta.config.positions {
            Positions::PerStabilizer => None,
            Positions::Relative { max_offset, edge_classes } => {
                Some(PositionIndex::new(&self.meta.layout, max_offset, edge_classes))
            }
        }
    }

    /// A relative model's `embed.stab` and `layers.{l}.attn.bias` for its
    /// layout; empty for a per-stabilizer model, which stores them.
    fn expanded_positions(&self) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
        let mut out = BTreeMap::new();
        let Some(index) = self.position_index() else {
            return out;
        };
        let c = &self.meta.config;
        let (s, d, h) = (c.num_stabilizers, c.width, c.heads);
        if let (Some((_, types)), Some((_, edges))) = (self.tensors.get("embed.type"), self.tensors.get("embed.edge")) {
            out.insert("embed.stab".to_string(), (vec![s, d], index.stabilizer_embedding(types, edges, d)));
        }
        for l in 0..c.layers {
            if let Some((_, rel)) = self.tensors.get(&format!("layers.{l}.attn.rel")) {
                out.insert(format!("layers.{l}.attn.bias"), (vec![h, s, s], index.attention_bias(rel, h)));
            }
        }
        out
    }

    /// This relative model laid out for distance `distance` (same weights,
    /// the stabilizers of Stim's rotated code at that distance). A
    /// per-stabilizer model is refused unless the distance is its own.
    pub fn retarget(&self, distance: usize) -> Result<Self, ModelError> {
        if distance == self.meta.layout.distance {
            return Ok(self.clone());
        }
        if self.meta.config.positions == Positions::PerStabilizer {
            return Err(ModelError::Mismatch(format!(
                "a per-stabilizer model of d={} cannot run at d={distance}; only a relative model runs at any distance",
                self.meta.layout.distance
            )));
        }
        let mut out = self.clone();
        out.meta.layout = ModelLayout::for_code(distance, self.meta.layout.basis)?;
        out.meta.config = self.meta.config.at_distance(distance);
        Ok(out)
    }

    /// A per-stabilizer model projected onto relative positions: the type and
    /// edge embeddings by least squares, each bias-table cell the mean of the
    /// biases that map to it. The rest of the weights are kept; the projection
    /// is exact only where the layout has no two pairs sharing a cell with
    /// different biases, so the result wants some further training.
    pub fn to_relative(&self, positions: Positions) -> Result<Self, ModelError> {
        let Positions::Relative { max_offset, edge_classes } = positions else {
            return Err(ModelError::Invalid("to_relative needs relative positions".into()));
        };
        if self.meta.config.positions != Positions::PerStabilizer {
            return Err(ModelError::Invalid("the model already has relative positions".into()));
        }
        let index = PositionIndex::new(&self.meta.layout, max_offset, edge_classes);
        let c = self.meta.config.clone().with_positions(positions);
        let mut tensors = self.tensors.clone();
        let (_, stab) = tensors.remove("embed.stab").expect("validated checkpoint");
        let (types, edges) = index.fit_embedding(&stab, c.width);
        tensors.insert("embed.type".into(), (vec![2, c.width], types));
        tensors.insert("embed.edge".into(), (vec![4, edge_classes, c.width], edges));
        let side = 2 * max_offset + 1;
        for l in 0..c.layers {
            let (_, bias) = tensors.remove(&format!("layers.{l}.attn.bias")).expect("validated checkpoint");
            let rel = index.fit_bias(&bias, c.heads);
            tensors.insert(format!("layers.{l}.attn.rel"), (vec![c.heads, 4, side, side], rel));
        }
        let mut meta = self.meta.clone();
        meta.config = c;
        let out = Self { meta, tensors };
        out.validate("<projected>")?;
        Ok(out)
    }

    /// Serializes to safetensors bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, ModelError> {
        let meta = serde_json::to_string(&self.meta).expect("metadata serializes");
        tensor_file::encode(&self.tensors, "qecd", meta)
    }

    /// Parses safetensors bytes and validates them.
    pub fn from_bytes(bytes: &[u8], path: &str) -> Result<Self, ModelError> {
        let (meta_json, tensors) =
            tensor_file::decode(bytes, path, "qecd", "no qecd metadata in the header; not a qecd checkpoint")?;
        let meta: CheckpointMeta = serde_json::from_str(&meta_json).map_err(|e| ModelError::Checkpoint {
            path: path.to_string(),
            why: format!("metadata does not parse: {e}"),
        })?;
        let ckpt = Self { meta, tensors };
        ckpt.validate(path)?;
        Ok(ckpt)
    }

    /// Writes the checkpoint atomically (an existing file is replaced only on success).
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        self.validate(&path.display().to_string())?;
        tensor_file::write(path, &self.to_bytes()?)
    }

    /// Reads and validates a checkpoint.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let bytes = simulator_bridge::fsutil::read_file(path)?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// A checkpoint with deterministic pseudo-random weights (for tests and as
    /// a training start): LayerNorm gains 1, biases 0, matrices uniform in
    /// ±1/√fan_in.
    pub fn random(config: ModelConfig, layout: ModelLayout, seed: u64) -> Self {
        let mut uniform = tensor_file::uniform(seed ^ 0x5DEE_CE66_D1CE_4E5B);
        let mut tensors = BTreeMap::new();
        for (name, shape) in config.tensor_shapes() {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = if name.contains("ln") && name.ends_with("weight") {
                vec![1.0; n]
            } else {
                let scale = if shape.len() == 2 { 1.0 / (shape[1] as f32).sqrt() } else { 0.1 };
                (0..n).map(|_| uniform() * scale).collect()
            };
            tensors.insert(name, (shape, values));
        }
        let meta = CheckpointMeta {
            format: FORMAT.to_string(),
            config,
            layout,
            provenance: Provenance::default(),
            temperature: 1.0,
            evaluation: serde_json::Value::Null,
        };
        Self { meta, tensors }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Checkpoint {
        let layout = ModelLayout::for_code(3, Basis::Z).unwrap();
        Checkpoint::random(ModelConfig::for_distance(3, 16, 2, 2, 32), layout, 7)
    }

    #[test]
    fn save_and_load_round_trip_bit_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let mut ckpt = small();
        ckpt.meta.temperature = 1.25;
        ckpt.meta.provenance.seeds.insert("train".into(), 3);
        ckpt.save(&path).unwrap();
        let back = Checkpoint::load(&path).unwrap();
        assert_eq!(back, ckpt);
        for (name, (_, v)) in &ckpt.tensors {
            let bits: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
            let back_bits: Vec<u32> = back.tensors[name].1.iter().map(|x| x.to_bits()).collect();
            assert_eq!(bits, back_bits, "{name}");
        }
    }

    #[test]
    fn missing_or_misshapen_tensors_are_named() {
        let mut ckpt = small();
        ckpt.tensors.remove("layers.1.ffn.w2");
        let err = Checkpoint::from_bytes(&ckpt.to_bytes().unwrap(), "x").unwrap_err().to_string();
        assert!(err.contains("'layers.1.ffn.w2' is missing"), "{err}");
        let mut ckpt = small();
        ckpt.tensors.insert("embed.stab".into(), (vec![7, 16], vec![0.0; 112]));
        let err = Checkpoint::from_bytes(&ckpt.to_bytes().unwrap(), "x").unwrap_err().to_string();
        assert!(err.contains("'embed.stab' has shape [7, 16], expected [8, 16]"), "{err}");
        let err = Checkpoint::from_bytes(b"garbage", "x").unwrap_err().to_string();
        assert!(err.contains("not a safetensors file"), "{err}");
    }
}
