//! The model's hyper-parameters: everything needed to lay out its tensors.

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// Input features per stabilizer and round, in this order (docs/model.md §1).
pub const FEATURES: [&str; 3] = ["event", "mask", "is_final"];

/// How a model encodes where each stabilizer is (docs/model.md §Positions;
/// [`crate::positions`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Positions {
    /// One learned embedding per stabilizer and one learned S×S attention
    /// bias per head and layer: the weights fit one distance.
    #[default]
    PerStabilizer,
    /// Embeddings from the stabilizer's type and its distance class to each
    /// boundary; the attention bias from the two types and the displacement:
    /// one set of weights runs at any distance.
    Relative {
        /// K: displacements are clipped to ±K lattice steps per axis.
        max_offset: usize,
        /// C: distance classes per boundary (0 .. C−1, the last "or more").
        edge_classes: usize,
    },
}

impl Positions {
    /// The relative variant with K = 4 and C = 3.
    pub const RELATIVE: Positions = Positions::Relative { max_offset: 4, edge_classes: 3 };
}

/// Shapes of the recurrent transformer (docs/model.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// S: stabilizers, `d² − 1`.
    pub num_stabilizers: usize,
    /// D: model width.
    pub width: usize,
    /// H: attention heads; D must be a multiple of H.
    pub heads: usize,
    /// L: transformer layers per round step.
    pub layers: usize,
    /// F: feed-forward width.
    pub ffn_width: usize,
    /// Hidden width of the readout MLP.
    pub readout_width: usize,
    /// Observables predicted (one logit each).
    pub num_observables: usize,
    /// Names of the input features, in order.
    pub features: Vec<String>,
    /// How stabilizer positions are encoded (absent in older checkpoints:
    /// per stabilizer).
    #[serde(default)]
    pub positions: Positions,
}

impl ModelConfig {
    /// A config for a distance-`d` rotated surface code with one observable.
    pub fn for_distance(d: usize, width: usize, heads: usize, layers: usize, ffn_width: usize) -> Self {
        Self {
            num_stabilizers: d * d - 1,
            width,
            heads,
            layers,
            ffn_width,
            readout_width: width,
            num_observables: 1,
            features: FEATURES.iter().map(|f| f.to_string()).collect(),
            positions: Positions::PerStabilizer,
        }
    }

    /// This config with positions encoded as `positions`.
    pub fn with_positions(mut self, positions: Positions) -> Self {
        self.positions = positions;
        self
    }

    /// This config at distance `d` (only a relative model runs at another distance).
    pub fn at_distance(&self, d: usize) -> Self {
        Self { num_stabilizers: d * d - 1, ..self.clone() }
    }

    /// Checks that the shapes fit together.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |why: String| Err(ModelError::Invalid(why));
        if self.width == 0 || self.heads == 0 || self.layers == 0 || self.ffn_width == 0 || self.readout_width == 0 {
            return bad(format!("model sizes must be positive: {self:?}"));
        }
        if !self.width.is_multiple_of(self.heads) {
            return bad(format!("width {} is not a multiple of heads {}", self.width, self.heads));
        }
        if let Positions::Relative { edge_classes, .. } = self.positions
            && edge_classes == 0
        {
            return bad("a relative model needs at least one edge class".into());
        }
        if self.features != FEATURES {
            return bad(format!("unsupported feature layout {:?} (this build knows {FEATURES:?})", self.features));
        }
        Ok(())
    }

    /// Input features per (stabilizer, round).
    pub fn num_features(&self) -> usize {
        self.features.len()
    }

    /// The shapes in the form the inference kernels take.
    pub fn kernel_config(&self) -> kernels::KernelConfig {
        kernels::KernelConfig {
            stabilizers: self.num_stabilizers,
            width: self.width,
            heads: self.heads,
            layers: self.layers,
            ffn_width: self.ffn_width,
            readout_width: self.readout_width,
            observables: self.num_observables,
            features: self.num_features(),
        }
    }

    /// Every tensor stored in a checkpoint: name and shape, in a fixed order.
    /// The kernels own the per-stabilizer list (docs/model.md §Tensors); a
    /// relative model stores `embed.type`, `embed.edge` and
    /// `layers.{l}.attn.rel` in place of `embed.stab` and `layers.{l}.attn.bias`,
    /// and expands them for the kernels ([`crate::positions`]).
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let shapes = self.kernel_config().tensor_shapes();
        let Positions::Relative { max_offset, edge_classes } = self.positions else {
            return shapes;
        };
        let side = 2 * max_offset + 1;
        let mut out = Vec::with_capacity(shapes.len() + 1);
        for (name, shape) in shapes {
            if name == "embed.stab" {
                out.push(("embed.type".to_string(), vec![2, self.width]));
                out.push(("embed.edge".to_string(), vec![4, edge_classes, self.width]));
            } else if let Some(layer) = name.strip_suffix(".attn.bias") {
                out.push((format!("{layer}.attn.rel"), vec![self.heads, crate::positions::TYPE_PAIRS, side, side]));
            } else {
                out.push((name, shape));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_validation() {
        let c = ModelConfig::for_distance(3, 32, 4, 2, 64);
        c.validate().unwrap();
        let shapes = c.tensor_shapes();
        assert_eq!(shapes.len(), 3 + 2 * 17 + 6);
        assert!(shapes.contains(&("layers.1.attn.bias".to_string(), vec![4, 8, 8])));
        let relative = c.clone().with_positions(Positions::RELATIVE);
        let names: Vec<String> = relative.tensor_shapes().into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"embed.edge".to_string()) && !names.contains(&"embed.stab".to_string()));
        assert!(relative.tensor_shapes().contains(&("layers.0.attn.rel".to_string(), vec![4, 4, 9, 9])));
        // The relative tensors do not depend on the distance.
        assert_eq!(relative.tensor_shapes(), relative.at_distance(11).tensor_shapes());
        let mut bad = c.clone();
        bad.heads = 5;
        assert!(bad.validate().unwrap_err().to_string().contains("multiple of heads"));
    }
}
