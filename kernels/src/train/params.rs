//! Flat parameter and gradient storage in checkpoint order.
//!
//! Every tensor of [`KernelConfig::tensor_shapes`] is stored row-major in
//! PyTorch's layout (`[out, in]` for linear maps) at a fixed offset of one
//! `Vec<f32>`, followed by [`PAD`] zeros. The padding lets the matrix-product
//! micro-kernel read a weight matrix in place as panels of 16 columns (the
//! lanes past the last column are computed from the padding and discarded),
//! and keeps the optimizer a plain loop over one slice: the padding has zero
//! gradients, so it stays zero.

use std::ops::Range;

use crate::weights::{PANEL, checked_tensor};
use crate::{KernelConfig, KernelError};

/// Zeros after every tensor.
pub(crate) const PAD: usize = 2 * PANEL;

/// Where one layer's tensors sit.
#[derive(Clone, Debug)]
pub(crate) struct LayerIx {
    pub ln1_g: Range<usize>,
    pub ln1_b: Range<usize>,
    /// `wq`, `wk`, `wv` in that order.
    pub w_qkv: [Range<usize>; 3],
    /// `bq`, `bk`, `bv` in that order.
    pub b_qkv: [Range<usize>; 3],
    pub wo: Range<usize>,
    pub bo: Range<usize>,
    pub bias: Range<usize>,
    pub ln2_g: Range<usize>,
    pub ln2_b: Range<usize>,
    pub w1: Range<usize>,
    pub b1: Range<usize>,
    pub w2: Range<usize>,
    pub b2: Range<usize>,
}

/// The offsets of every tensor of one configuration.
#[derive(Clone, Debug)]
pub struct ParamIndex {
    pub(crate) config: KernelConfig,
    /// Name, shape and place of every tensor, in checkpoint order.
    pub(crate) tensors: Vec<(String, Vec<usize>, Range<usize>)>,
    /// Length of the flat buffer, padding included.
    pub(crate) len: usize,
    pub(crate) w_in: Range<usize>,
    pub(crate) b_in: Range<usize>,
    pub(crate) stab: Range<usize>,
    pub(crate) layers: Vec<LayerIx>,
    pub(crate) ro_ln_g: Range<usize>,
    pub(crate) ro_ln_b: Range<usize>,
    pub(crate) ro_w1: Range<usize>,
    pub(crate) ro_b1: Range<usize>,
    pub(crate) ro_w2: Range<usize>,
    pub(crate) ro_b2: Range<usize>,
}

impl ParamIndex {
    /// Lays out `config`'s tensors.
    pub fn new(config: &KernelConfig) -> Result<Self, KernelError> {
        config.validate()?;
        let mut tensors = Vec::new();
        let mut len = 0;
        for (name, shape) in config.tensor_shapes() {
            let n: usize = shape.iter().product();
            tensors.push((name, shape, len..len + n));
            len += n + PAD;
        }
        let at = |name: &str| -> Range<usize> {
            tensors.iter().find(|(n, _, _)| n == name).map(|(_, _, r)| r.clone()).expect("tensor_shapes names it")
        };
        let layers = (0..config.layers)
            .map(|l| {
                let p = |n: &str| at(&format!("layers.{l}.{n}"));
                LayerIx {
                    ln1_g: p("ln1.weight"),
                    ln1_b: p("ln1.bias"),
                    w_qkv: [p("attn.wq"), p("attn.wk"), p("attn.wv")],
                    b_qkv: [p("attn.bq"), p("attn.bk"), p("attn.bv")],
                    wo: p("attn.wo"),
                    bo: p("attn.bo"),
                    bias: p("attn.bias"),
                    ln2_g: p("ln2.weight"),
                    ln2_b: p("ln2.bias"),
                    w1: p("ffn.w1"),
                    b1: p("ffn.b1"),
                    w2: p("ffn.w2"),
                    b2: p("ffn.b2"),
                }
            })
            .collect();
        Ok(Self {
            config: config.clone(),
            w_in: at("embed.w_in"),
            b_in: at("embed.b_in"),
            stab: at("embed.stab"),
            layers,
            ro_ln_g: at("readout.ln.weight"),
            ro_ln_b: at("readout.ln.bias"),
            ro_w1: at("readout.w1"),
            ro_b1: at("readout.b1"),
            ro_w2: at("readout.w2"),
            ro_b2: at("readout.b2"),
            tensors,
            len,
        })
    }

    /// The shapes.
    pub fn config(&self) -> &KernelConfig {
        &self.config
    }

    /// Tensors in checkpoint order: name and shape.
    pub fn names(&self) -> impl Iterator<Item = (&str, &[usize])> {
        self.tensors.iter().map(|(n, s, _)| (n.as_str(), s.as_slice()))
    }

    /// How many tensors.
    pub fn num_tensors(&self) -> usize {
        self.tensors.len()
    }

    /// Where tensor `i` (checkpoint order) sits in a flat buffer.
    pub fn range(&self, i: usize) -> Range<usize> {
        self.tensors[i].2.clone()
    }

    /// Where the tensor `name` sits, if the model has it.
    pub fn range_of(&self, name: &str) -> Option<Range<usize>> {
        self.tensors.iter().find(|(n, _, _)| n == name).map(|(_, _, r)| r.clone())
    }

    /// Length of a flat buffer.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the model has no parameters (never: every config has some).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A zeroed flat buffer.
    pub fn zeros(&self) -> Vec<f32> {
        vec![0.0; self.len]
    }

    /// Copies named tensors into a flat buffer, checking every name, shape,
    /// length and value (the error names the first bad tensor).
    pub fn flatten<'a>(
        &self,
        get: impl Fn(&str) -> Option<(&'a [usize], &'a [f32])>,
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        assert_eq!(out.len(), self.len, "flat buffer of another config");
        for (name, expected, range) in &self.tensors {
            let values = checked_tensor(name, expected, get(name))?;
            out[range.clone()].copy_from_slice(values);
        }
        Ok(())
    }

    /// The tensors of a flat buffer, in checkpoint order.
    pub fn unflatten(&self, flat: &[f32]) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        self.tensors.iter().map(|(n, s, r)| (n.clone(), s.clone(), flat[r.clone()].to_vec())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{odd, random_tensors};

    #[test]
    fn flat_round_trip_and_padding() {
        let config = odd();
        let ix = ParamIndex::new(&config).unwrap();
        let tensors = random_tensors(&config, 5, 1.0);
        let mut flat = ix.zeros();
        ix.flatten(|n| tensors.iter().find(|t| t.0 == n).map(|t| (t.1.as_slice(), t.2.as_slice())), &mut flat).unwrap();
        assert_eq!(ix.unflatten(&flat), tensors);
        let real: usize = tensors.iter().map(|t| t.2.len()).sum();
        assert_eq!(ix.len(), real + PAD * tensors.len());
        for (_, _, r) in &ix.tensors {
            assert!(flat[r.end..r.end + PAD].iter().all(|v| *v == 0.0));
        }
        let err = ix.flatten(|n| if n == "readout.b1" { None } else { Some((&[][..], &[][..])) }, &mut flat);
        assert_eq!(err.unwrap_err().to_string(), "tensor `embed.w_in` has shape [], expected [18, 3]");
    }
}
