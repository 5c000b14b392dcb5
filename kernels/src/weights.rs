//! The model's tensors, repacked once into the layouts the kernels stream.

use crate::simd::LANES;
use crate::{Isa, IsaToken, KernelConfig, KernelError};

/// Output columns per packed panel: the width of the matrix-product tile
/// (two AVX2 registers, one AVX-512 register).
pub const PANEL: usize = 16;

/// A linear map `y = x·Wᵀ + b`, `W: [n, k]`, packed in panels of [`PANEL`]
/// output columns: `wt[(jb·k + kk)·PANEL + c] = W[jb·PANEL + c][kk]`, zero for
/// the padding columns of the last panel; `bias` is zero-padded likewise.
#[derive(Clone, Debug)]
pub(crate) struct Packed {
    /// Inputs.
    pub k: usize,
    /// Outputs (unpadded).
    pub n: usize,
    /// `n.div_ceil(PANEL)` panels of `k × PANEL`.
    pub wt: Vec<f32>,
    /// `[panels · PANEL]`.
    pub bias: Vec<f32>,
}

impl Packed {
    /// Packs `W: [n, k]` (row-major, PyTorch's `[out, in]`) and `b: [n]`.
    fn new(w: &[f32], b: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k);
        assert_eq!(b.len(), n);
        let panels = n.div_ceil(PANEL);
        let mut wt = vec![0.0; panels * k * PANEL];
        for j in 0..n {
            for kk in 0..k {
                wt[((j / PANEL) * k + kk) * PANEL + j % PANEL] = w[j * k + kk];
            }
        }
        let mut bias = vec![0.0; panels * PANEL];
        bias[..n].copy_from_slice(b);
        Self { k, n, wt, bias }
    }

    /// Packs new values for output rows `row0 ..` (`w` `[rows, k]`, `b`
    /// `[rows]`) in place, without allocating.
    pub(crate) fn refill(&mut self, row0: usize, w: &[f32], b: &[f32]) {
        let k = self.k;
        let rows = b.len();
        assert!(w.len() == rows * k && row0 + rows <= self.n);
        for (r, row) in w.chunks_exact(k).enumerate() {
            let j = row0 + r;
            for (kk, v) in row.iter().enumerate() {
                self.wt[((j / PANEL) * k + kk) * PANEL + j % PANEL] = *v;
            }
        }
        self.bias[row0..row0 + rows].copy_from_slice(b);
    }

    /// Row `j` of `W` (the inverse of [`Packed::new`]).
    fn row(&self, j: usize) -> impl Iterator<Item = f32> + '_ {
        (0..self.k).map(move |kk| self.wt[((j / PANEL) * self.k + kk) * PANEL + j % PANEL])
    }

    /// `W` rows `rows`, row-major.
    fn unpack(&self, rows: std::ops::Range<usize>) -> Vec<f32> {
        rows.flat_map(|j| self.row(j)).collect()
    }

    /// A borrowed view for the matrix product.
    pub fn panels(&self) -> Panels<'_> {
        Panels { k: self.k, n: self.n, wt: &self.wt, ldw: PANEL, stride: self.k * PANEL, bias: &self.bias }
    }
}

/// The right operand of a matrix product, `k × n`, as panels of 16 columns:
/// element `(kk, jb·16 + c)` at `wt[jb·stride + kk·ldw + c]`, with a bias of
/// `⌈n/16⌉·16` values. For [`Packed`] weights `ldw = 16` and `stride = 16·k`;
/// attention reads Qᵀ and V in place with wider rows.
#[derive(Clone, Copy)]
pub(crate) struct Panels<'a> {
    pub k: usize,
    pub n: usize,
    pub wt: &'a [f32],
    pub ldw: usize,
    pub stride: usize,
    pub bias: &'a [f32],
}

/// The values of tensor `name`, given as `got` (shape, values), once it is
/// present, has shape `expected`, holds that many values and all of them
/// finite; otherwise the error that names what is wrong.
pub(crate) fn checked_tensor<'a>(
    name: &str,
    expected: &[usize],
    got: Option<(&[usize], &'a [f32])>,
) -> Result<&'a [f32], KernelError> {
    let (shape, values) = got.ok_or_else(|| KernelError::Missing { name: name.to_string() })?;
    if shape != expected {
        return Err(KernelError::Shape { name: name.to_string(), expected: expected.to_vec(), found: shape.to_vec() });
    }
    let n: usize = expected.iter().product();
    if values.len() != n {
        return Err(KernelError::Length { name: name.to_string(), expected: n, found: values.len() });
    }
    if let Some(index) = values.iter().position(|v| !v.is_finite()) {
        return Err(KernelError::NonFinite { name: name.to_string(), index });
    }
    Ok(values)
}

/// `attn.bias` `[H][S_i][S_j]` → `[S_j][HS_ld]` with element `h·S + i` of row
/// `j` = `bias[h][i][j]`, rows zero-padded to `HS_ld = ⌈H·S/16⌉·16`: the layout
/// of attention's transposed scores.
fn transpose_heads(b: &[f32], s: usize) -> Vec<f32> {
    let h = b.len() / (s * s);
    let mut out = vec![0.0; s * (h * s).next_multiple_of(LANES)];
    transpose_heads_into(b, s, &mut out);
    out
}

/// [`transpose_heads`] into an existing buffer (no allocation).
pub(crate) fn transpose_heads_into(b: &[f32], s: usize, out: &mut [f32]) {
    let h = b.len() / (s * s);
    let hl = (h * s).next_multiple_of(LANES);
    for hh in 0..h {
        for i in 0..s {
            for j in 0..s {
                out[j * hl + hh * s + i] = b[(hh * s + i) * s + j];
            }
        }
    }
}

/// The inverse of [`transpose_heads`] for `h` heads.
fn untranspose_heads(bt: &[f32], s: usize, h: usize) -> Vec<f32> {
    let hl = (h * s).next_multiple_of(LANES);
    (0..h * s * s).map(|hij| bt[(hij % s) * hl + (hij / (s * s)) * s + (hij / s) % s]).collect()
}

/// One transformer layer.
#[derive(Clone, Debug)]
pub(crate) struct Layer {
    pub ln1_g: Vec<f32>,
    pub ln1_b: Vec<f32>,
    /// `[wq; wk; wv]`: one `[3D, D]` map, so Q, K, V of a row are adjacent.
    pub qkv: Packed,
    /// `attn.bias` as `[S_j][HS_ld]` (attention works on Sᵀ; see `transpose_heads`).
    pub attn_bias_t: Vec<f32>,
    pub wo: Packed,
    pub ln2_g: Vec<f32>,
    pub ln2_b: Vec<f32>,
    pub w1: Packed,
    pub w2: Packed,
}

/// All weights of one model, in kernel layouts (see the crate docs):
///
/// | tensor(s) | stored as |
/// |---|---|
/// | `embed.w_in` `[D, NF]` | transposed, `[NF][D]` |
/// | `embed.b_in`, `embed.stab` | kept, plus their sum `[S][D]` used by the step |
/// | `attn.wq/wk/wv`, `bq/bk/bv` | one packed `[3D, D]` map with a `[3D]` bias |
/// | `attn.wo`, `ffn.w1`, `ffn.w2`, `readout.w1`, `readout.w2` | packed panels of Wᵀ |
/// | `attn.bias` `[H][S][S]` | `[S_j][HS_ld]`: transposed, heads side by side (`h·S + i`), rows zero-padded to `HS_ld = ⌈H·S/16⌉·16` |
/// | LayerNorm gains and biases | as given |
///
/// "Packed panels": Wᵀ cut into blocks of [`PANEL`] output columns, each block
/// `[in][PANEL]` contiguous and the last one zero-padded.
#[derive(Clone, Debug)]
pub struct Weights {
    pub(crate) config: KernelConfig,
    pub(crate) isa: IsaToken,
    /// `embed.w_in` transposed: `[NF][D]`.
    pub(crate) w_in_t: Vec<f32>,
    pub(crate) b_in: Vec<f32>,
    pub(crate) stab: Vec<f32>,
    /// `b_in + stab[s]`, `[S][D]`.
    pub(crate) embed_base: Vec<f32>,
    pub(crate) layers: Vec<Layer>,
    pub(crate) ro_ln_g: Vec<f32>,
    pub(crate) ro_ln_b: Vec<f32>,
    pub(crate) ro_w1: Packed,
    pub(crate) ro_w2: Packed,
}

impl Weights {
    /// Builds the weights from named tensors. `get(name)` returns the tensor's
    /// shape and row-major values for every name of
    /// [`KernelConfig::tensor_shapes`] (docs/model.md §Tensors); a missing,
    /// mis-shaped, short or non-finite tensor is an error naming it (the first
    /// one in checkpoint order). Extra tensors are ignored. The instruction set
    /// is [`Isa::detect`]ed.
    pub fn from_named<'a>(
        config: KernelConfig,
        get: impl Fn(&str) -> Option<(&'a [usize], &'a [f32])>,
    ) -> Result<Self, KernelError> {
        config.validate()?;
        // Check everything first, in checkpoint order, so the error names the first bad tensor.
        let mut tensors = std::collections::HashMap::new();
        for (name, expected) in config.tensor_shapes() {
            let values = checked_tensor(&name, &expected, get(&name))?;
            tensors.insert(name, values);
        }
        let t = |name: &str| -> &[f32] { tensors[name] };
        let (s, d, nf) = (config.stabilizers, config.width, config.features);

        let w_in = t("embed.w_in");
        let w_in_t = (0..nf).flat_map(|f| (0..d).map(move |j| w_in[j * nf + f])).collect();
        let b_in = t("embed.b_in").to_vec();
        let stab = t("embed.stab").to_vec();
        let embed_base = stab.chunks_exact(d).flat_map(|row| row.iter().zip(&b_in).map(|(s, b)| b + s)).collect();
        debug_assert_eq!(stab.len(), s * d);

        let layers = (0..config.layers)
            .map(|l| {
                let p = |n: &str| t(&format!("layers.{l}.{n}"));
                let qkv_w = [p("attn.wq"), p("attn.wk"), p("attn.wv")].concat();
                let qkv_b = [p("attn.bq"), p("attn.bk"), p("attn.bv")].concat();
                Layer {
                    ln1_g: p("ln1.weight").to_vec(),
                    ln1_b: p("ln1.bias").to_vec(),
                    qkv: Packed::new(&qkv_w, &qkv_b, 3 * d, d),
                    attn_bias_t: transpose_heads(p("attn.bias"), s),
                    wo: Packed::new(p("attn.wo"), p("attn.bo"), d, d),
                    ln2_g: p("ln2.weight").to_vec(),
                    ln2_b: p("ln2.bias").to_vec(),
                    w1: Packed::new(p("ffn.w1"), p("ffn.b1"), config.ffn_width, d),
                    w2: Packed::new(p("ffn.w2"), p("ffn.b2"), d, config.ffn_width),
                }
            })
            .collect();
        Ok(Self {
            isa: IsaToken::detect(),
            w_in_t,
            b_in,
            stab,
            embed_base,
            layers,
            ro_ln_g: t("readout.ln.weight").to_vec(),
            ro_ln_b: t("readout.ln.bias").to_vec(),
            ro_w1: Packed::new(t("readout.w1"), t("readout.b1"), config.readout_width, d),
            ro_w2: Packed::new(t("readout.w2"), t("readout.b2"), config.observables, config.readout_width),
            config,
        })
    }

    /// The shapes.
    pub fn config(&self) -> &KernelConfig {
        &self.config
    }

    /// The instruction set the kernels use with these weights.
    pub fn isa(&self) -> Isa {
        self.isa.isa()
    }

    /// Selects the instruction set (for tests and comparisons; the default is
    /// [`Isa::detect`]). Results of different instruction sets may differ in
    /// the last bits (FMA rounds once).
    pub fn set_isa(&mut self, isa: Isa) -> Result<(), KernelError> {
        self.isa = isa.token().ok_or(KernelError::Unsupported(isa))?;
        Ok(())
    }

    /// Every tensor back in its checkpoint name, shape and layout, in
    /// [`KernelConfig::tensor_shapes`] order: exactly what
    /// [`Weights::from_named`] was given.
    pub fn to_named(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let c = &self.config;
        let (d, nf) = (c.width, c.features);
        let bias = |p: &Packed, r: std::ops::Range<usize>| p.bias[r].to_vec();
        c.tensor_shapes()
            .into_iter()
            .map(|(name, shape)| {
                let values = match name.as_str() {
                    "embed.w_in" => (0..d).flat_map(|j| (0..nf).map(move |f| self.w_in_t[f * d + j])).collect(),
                    "embed.b_in" => self.b_in.clone(),
                    "embed.stab" => self.stab.clone(),
                    "readout.ln.weight" => self.ro_ln_g.clone(),
                    "readout.ln.bias" => self.ro_ln_b.clone(),
                    "readout.w1" => self.ro_w1.unpack(0..c.readout_width),
                    "readout.b1" => bias(&self.ro_w1, 0..c.readout_width),
                    "readout.w2" => self.ro_w2.unpack(0..c.observables),
                    "readout.b2" => bias(&self.ro_w2, 0..c.observables),
                    layer_name => {
                        let rest = layer_name.strip_prefix("layers.").expect("tensor_shapes names");
                        let (l, field) = rest.split_once('.').expect("layers.{l}.{field}");
                        let layer = &self.layers[l.parse::<usize>().expect("layer index")];
                        match field {
                            "ln1.weight" => layer.ln1_g.clone(),
                            "ln1.bias" => layer.ln1_b.clone(),
                            "ln2.weight" => layer.ln2_g.clone(),
                            "ln2.bias" => layer.ln2_b.clone(),
                            "attn.wq" => layer.qkv.unpack(0..d),
                            "attn.wk" => layer.qkv.unpack(d..2 * d),
                            "attn.wv" => layer.qkv.unpack(2 * d..3 * d),
                            "attn.bq" => bias(&layer.qkv, 0..d),
                            "attn.bk" => bias(&layer.qkv, d..2 * d),
                            "attn.bv" => bias(&layer.qkv, 2 * d..3 * d),
                            "attn.wo" => layer.wo.unpack(0..d),
                            "attn.bo" => bias(&layer.wo, 0..d),
                            "attn.bias" => untranspose_heads(&layer.attn_bias_t, c.stabilizers, c.heads),
                            "ffn.w1" => layer.w1.unpack(0..c.ffn_width),
                            "ffn.b1" => bias(&layer.w1, 0..c.ffn_width),
                            "ffn.w2" => layer.w2.unpack(0..d),
                            "ffn.b2" => bias(&layer.w2, 0..d),
                            other => unreachable!("unknown layer tensor {other}"),
                        }
                    }
                };
                (name, shape, values)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    fn odd_config() -> KernelConfig {
        KernelConfig {
            stabilizers: 5,
            width: 18,
            heads: 3,
            layers: 2,
            ffn_width: 37,
            readout_width: 7,
            observables: 2,
            features: 3,
        }
    }

    #[test]
    fn round_trips_through_to_named() {
        for config in [odd_config(), d3(32)] {
            let tensors = random_tensors(&config, 7, 1.0);
            let w = weights_from(&config, &tensors);
            assert_eq!(w.to_named(), tensors);
        }
    }

    #[test]
    fn packing_layout() {
        let (n, k) = (19, 3);
        let w: Vec<f32> = (0..n * k).map(|i| i as f32).collect();
        let b: Vec<f32> = (0..n).map(|i| -(i as f32)).collect();
        let p = Packed::new(&w, &b, n, k);
        assert_eq!(p.wt.len() / (k * PANEL), 2);
        assert_eq!(p.wt.len(), 2 * k * PANEL);
        // Panel 0, input 1, column 2 is W[2][1].
        assert_eq!(p.wt[PANEL + 2], w[2 * k + 1]);
        // Panel 1, input 2, column 18 is W[18][2]; its padding is zero.
        assert_eq!(p.wt[(k + 2) * PANEL + 2], w[18 * k + 2]);
        assert_eq!(p.wt[(k + 2) * PANEL + 3], 0.0);
        assert_eq!(p.bias[18], -18.0);
        assert_eq!(p.bias[19], 0.0);
    }

    fn build(
        config: &KernelConfig,
        tensors: &[(String, Vec<usize>, Vec<f32>)],
        skip: &str,
    ) -> Result<Weights, KernelError> {
        Weights::from_named(config.clone(), |name| {
            if name == skip {
                return None;
            }
            tensors.iter().find(|(n, _, _)| n == name).map(|(_, s, v)| (s.as_slice(), v.as_slice()))
        })
    }

    #[test]
    fn errors_name_the_tensor() {
        let config = odd_config();
        let tensors = random_tensors(&config, 3, 1.0);

        let err = build(&config, &tensors, "layers.1.attn.wk").unwrap_err();
        assert!(matches!(&err, KernelError::Missing { name } if name == "layers.1.attn.wk"));
        assert_eq!(err.to_string(), "tensor `layers.1.attn.wk` is missing");

        let mut bad = tensors.clone();
        let entry = bad.iter_mut().find(|(n, _, _)| n == "layers.0.attn.bias").unwrap();
        entry.1 = vec![3, 5, 4];
        let err = build(&config, &bad, "").unwrap_err();
        assert_eq!(err.to_string(), "tensor `layers.0.attn.bias` has shape [3, 5, 4], expected [3, 5, 5]");

        let mut bad = tensors.clone();
        bad.iter_mut().find(|(n, _, _)| n == "readout.w2").unwrap().2.pop();
        let err = build(&config, &bad, "").unwrap_err();
        assert_eq!(err.to_string(), "tensor `readout.w2` has 13 values, expected 14");

        let mut bad = tensors.clone();
        bad.iter_mut().find(|(n, _, _)| n == "embed.stab").unwrap().2[17] = f32::NAN;
        let err = build(&config, &bad, "").unwrap_err();
        assert_eq!(err.to_string(), "tensor `embed.stab` holds a non-finite value at flat index 17");

        let mut bad_config = config.clone();
        bad_config.heads = 4;
        let err = build(&bad_config, &tensors, "").unwrap_err();
        assert!(err.to_string().contains("not a multiple of heads"), "{err}");
        bad_config.heads = 3;
        bad_config.layers = 0;
        let err = build(&bad_config, &tensors, "").unwrap_err();
        assert!(err.to_string().contains("layers must be positive"), "{err}");
    }

    #[test]
    fn isa_selection() {
        let mut w = random_weights(&odd_config(), 1);
        assert_eq!(w.isa(), Isa::detect());
        for isa in [Isa::Portable, Isa::Avx2Fma, Isa::Avx512] {
            match w.set_isa(isa) {
                Ok(()) => assert!(isa.is_supported() && w.isa() == isa),
                Err(e) => assert!(!isa.is_supported() && matches!(e, KernelError::Unsupported(i) if i == isa)),
            }
        }
    }
}
