//! The model's hyper-parameters: everything needed to lay out its tensors.

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// Input features per stabilizer and round, in this order (docs/model.md §1).
pub const FEATURES: [&str; 3] = ["event", "mask", "is_final"];

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
        }
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

    /// Every tensor of the model: name and shape, in a fixed order. The
    /// kernels own this list (docs/model.md §Tensors); training uses theirs.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.kernel_config().tensor_shapes()
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
        let mut bad = c.clone();
        bad.heads = 5;
        assert!(bad.validate().unwrap_err().to_string().contains("multiple of heads"));
    }
}
