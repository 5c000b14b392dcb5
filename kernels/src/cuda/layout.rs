//! Where everything lives on the device: the weights buffer, a block's shared
//! memory and the block size, all handed to the CUDA source as `#define`s.

use std::fmt::Write;

use crate::KernelConfig;

/// Tensors in the weights buffer start on 128-byte boundaries.
const ALIGN: usize = 32;

/// Checkpoint tensors `(name, shape, values)`, as [`crate::Weights::to_named`] gives them.
pub(crate) type Named = [(String, Vec<usize>, Vec<f32>)];

/// How one device tensor is made from checkpoint tensors.
#[derive(Clone, Debug)]
enum Source {
    /// A tensor as it is.
    Copy(String),
    /// A linear map `W` `[n, k]` stored as `Wᵀ` `[k][n]`.
    Transpose(String),
    /// `[wq; wk; wv]` of layer l, transposed: `[D][3D]`.
    QkvT(usize),
    /// `[bq; bk; bv]` of layer l: `[3D]`.
    QkvBias(usize),
    /// `attn.bias` of layer l `[H][S_i][S_j]` stored as `[H][S_j][S_i]`.
    AttnBiasT(usize),
}

/// One tensor of the weights buffer.
#[derive(Clone, Debug)]
struct Entry {
    /// `#define` name, without the `QECD_OFF_` / `QECD_LOFF_` prefix.
    define: &'static str,
    /// The layer, for per-layer tensors (their offsets are relative to the layer's start).
    layer: Option<usize>,
    source: Source,
    /// Values.
    len: usize,
    /// Offset in floats from the start of the buffer.
    offset: usize,
}

/// The layout of the device weights buffer (`f32`): every tensor at an aligned
/// offset, linear maps transposed to `Wᵀ` `[in][out]`, Q/K/V fused into one
/// `[D][3D]` map and `attn.bias` as `[H][S_j][S_i]` (see `kernels/cuda/common.cuh`).
#[derive(Clone, Debug)]
pub(crate) struct WeightLayout {
    entries: Vec<Entry>,
    /// Offset of layer 0's first tensor.
    layer0: usize,
    /// Distance between the starts of consecutive layers.
    layer_stride: usize,
    /// Length of the buffer in floats.
    len: usize,
}

impl WeightLayout {
    pub(crate) fn new(c: &KernelConfig) -> Self {
        let (s, d, h, f, r, o, nf) =
            (c.stabilizers, c.width, c.heads, c.ffn_width, c.readout_width, c.observables, c.features);
        let copy = |n: &str| Source::Copy(n.to_string());
        let tr = |n: &str| Source::Transpose(n.to_string());
        let mut list: Vec<(&'static str, Option<usize>, Source, usize)> = vec![
            ("W_IN", None, copy("embed.w_in"), d * nf),
            ("B_IN", None, copy("embed.b_in"), d),
            ("STAB", None, copy("embed.stab"), s * d),
        ];
        for l in 0..c.layers {
            let p = |n: &str| format!("layers.{l}.{n}");
            list.extend([
                ("LN1_G", Some(l), Source::Copy(p("ln1.weight")), d),
                ("LN1_B", Some(l), Source::Copy(p("ln1.bias")), d),
                ("WQKV", Some(l), Source::QkvT(l), 3 * d * d),
                ("BQKV", Some(l), Source::QkvBias(l), 3 * d),
                ("WO", Some(l), Source::Transpose(p("attn.wo")), d * d),
                ("BO", Some(l), Source::Copy(p("attn.bo")), d),
                ("ATTN_BIAS", Some(l), Source::AttnBiasT(l), h * s * s),
                ("LN2_G", Some(l), Source::Copy(p("ln2.weight")), d),
                ("LN2_B", Some(l), Source::Copy(p("ln2.bias")), d),
                ("W1", Some(l), Source::Transpose(p("ffn.w1")), f * d),
                ("B1", Some(l), Source::Copy(p("ffn.b1")), f),
                ("W2", Some(l), Source::Transpose(p("ffn.w2")), d * f),
                ("B2", Some(l), Source::Copy(p("ffn.b2")), d),
            ]);
        }
        list.extend([
            ("RO_LN_G", None, copy("readout.ln.weight"), d),
            ("RO_LN_B", None, copy("readout.ln.bias"), d),
            ("RO_W1", None, tr("readout.w1"), r * d),
            ("RO_B1", None, copy("readout.b1"), r),
            ("RO_W2", None, tr("readout.w2"), o * r),
            ("RO_B2", None, copy("readout.b2"), o),
        ]);
        let mut at = 0usize;
        let entries: Vec<Entry> = list
            .into_iter()
            .map(|(define, layer, source, len)| {
                let offset = at.next_multiple_of(ALIGN);
                at = offset + len;
                Entry { define, layer, source, len, offset }
            })
            .collect();
        let layer_start = |l: usize| entries.iter().find(|e| e.layer == Some(l)).map(|e| e.offset);
        let layer0 = layer_start(0).unwrap_or(0);
        let layer_stride = layer_start(1).map_or(0, |start| start - layer0);
        // Every layer holds the same tensors at the same offsets from its start.
        for (l, e) in entries.iter().filter_map(|e| e.layer.map(|l| (l, e))) {
            let first = entries.iter().find(|f| f.layer == Some(0) && f.define == e.define).map(|f| f.offset);
            debug_assert_eq!(first, Some(e.offset - l * layer_stride), "{} of layer {l}", e.define);
        }
        Self { entries, layer0, layer_stride, len: at }
    }

    /// The buffer for `named` (every tensor of the config, as [`crate::Weights::to_named`]
    /// gives them); padding is zero.
    ///
    /// # Panics
    /// If a tensor is missing or short.
    pub(crate) fn pack(&self, c: &KernelConfig, named: &Named) -> Vec<f32> {
        let get = |name: &str| -> (&[usize], &[f32]) {
            let (_, shape, values) =
                named.iter().find(|(n, _, _)| n == name).unwrap_or_else(|| panic!("tensor {name} missing"));
            (shape, values)
        };
        let (s, d) = (c.stabilizers, c.width);
        let mut out = vec![0.0f32; self.len];
        for e in &self.entries {
            let dst = &mut out[e.offset..e.offset + e.len];
            match &e.source {
                Source::Copy(name) => dst.copy_from_slice(get(name).1),
                Source::Transpose(name) => {
                    let (shape, w) = get(name);
                    transpose_into(w, shape[0], shape[1], dst);
                }
                Source::QkvT(l) => {
                    let w: Vec<f32> = ["wq", "wk", "wv"]
                        .iter()
                        .flat_map(|m| get(&format!("layers.{l}.attn.{m}")).1)
                        .copied()
                        .collect();
                    transpose_into(&w, 3 * d, d, dst);
                }
                Source::QkvBias(l) => {
                    for (chunk, m) in dst.chunks_exact_mut(d).zip(["bq", "bk", "bv"]) {
                        chunk.copy_from_slice(get(&format!("layers.{l}.attn.{m}")).1);
                    }
                }
                Source::AttnBiasT(l) => {
                    let b = get(&format!("layers.{l}.attn.bias")).1;
                    for (src, dst) in b.chunks_exact(s * s).zip(dst.chunks_exact_mut(s * s)) {
                        transpose_into(src, s, s, dst);
                    }
                }
            }
        }
        out
    }

    /// `#define QECD_OFF_* / QECD_LOFF_*` lines locating every tensor.
    fn defines(&self, out: &mut String) {
        for e in &self.entries {
            match e.layer {
                None => writeln!(out, "#define QECD_OFF_{} {}", e.define, e.offset),
                Some(0) => writeln!(out, "#define QECD_LOFF_{} {}", e.define, e.offset - self.layer0),
                Some(_) => Ok(()),
            }
            .expect("writing to a String");
        }
        writeln!(out, "#define QECD_OFF_LAYER0 {}\n#define QECD_LAYER_STRIDE {}", self.layer0, self.layer_stride)
            .expect("writing to a String");
    }
}

/// `w` `[n][k]` row-major into `dst` as `[k][n]`.
fn transpose_into(w: &[f32], n: usize, k: usize, dst: &mut [f32]) {
    assert_eq!(w.len(), n * k, "tensor length");
    for j in 0..n {
        for kk in 0..k {
            dst[kk * n + j] = w[j * k + kk];
        }
    }
}

/// One block's shared memory, in floats: the state `z` `[S][D]`, the
/// LayerNorm / attention output `a` `[S][lda]`, the Q|K|V / FFN hidden buffer
/// `[S][ldb]`, and the readout's scratch (`2S + D + R`, over `a` and the buffer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SharedLayout {
    /// Row stride of `a`: D, made odd (a warp walking a column hits 32 banks).
    pub lda: usize,
    /// Row stride of the buffer: max(3D, F), made odd.
    pub ldb: usize,
    pub z: usize,
    pub a: usize,
    pub buf: usize,
    pub readout: usize,
    /// Total floats.
    pub floats: usize,
}

impl SharedLayout {
    pub(crate) fn new(c: &KernelConfig) -> Self {
        let (s, d) = (c.stabilizers, c.width);
        let odd = |x: usize| x | 1;
        let (lda, ldb) = (odd(d), odd((3 * d).max(c.ffn_width)));
        let z = 0;
        let a = (z + s * d).next_multiple_of(4);
        let buf = (a + s * lda).next_multiple_of(4);
        let readout = a;
        let floats = (buf + s * ldb).max(readout + 2 * s + d + c.readout_width);
        Self { lda, ldb, z, a, buf, readout, floats }
    }

    /// Bytes of dynamic shared memory per block.
    pub(crate) fn bytes(&self) -> usize {
        self.floats * std::mem::size_of::<f32>()
    }
}

/// Threads per block: 256, or 512 for states of more than 2048 values
/// (d ≥ 9 at D = 32, d ≥ 7 at D = 64), so that a block has a work item per
/// thread in every linear map.
pub(crate) fn threads_for(c: &KernelConfig) -> usize {
    if c.state_len() <= 2048 { 256 } else { 512 }
}

/// Most features of one round that the batch-1 step takes in its kernel
/// parameters (2 KiB, well under the 4 KiB a launch may carry): S·NF ≤ 512,
/// i.e. up to d = 13 with NF = 3.
pub(crate) const MAX_PARAM_FEATURES: usize = 512;

/// Floats of the batch-1 step's by-value features, S·NF, or 0 where they do
/// not fit (then the kernel `qecd_step_one` is not built).
pub(crate) fn param_features(c: &KernelConfig) -> usize {
    if c.features_len() <= MAX_PARAM_FEATURES { c.features_len() } else { 0 }
}

/// The `#define`s that configure the CUDA source for `c`.
pub(crate) fn defines(c: &KernelConfig) -> String {
    let sh = SharedLayout::new(c);
    let mut out = String::new();
    for (name, v) in [
        ("S", c.stabilizers),
        ("D", c.width),
        ("H", c.heads),
        ("L", c.layers),
        ("F", c.ffn_width),
        ("R", c.readout_width),
        ("O", c.observables),
        ("NF", c.features),
        ("NT", threads_for(c)),
        // Register budget of 64 per thread: two blocks of 512 or four of 256 threads per SM.
        ("MIN_BLOCKS", 1024 / threads_for(c)),
        ("PARAM_FEATURES", param_features(c)),
        ("LDA", sh.lda),
        ("LDB", sh.ldb),
        ("SM_Z", sh.z),
        ("SM_A", sh.a),
        ("SM_BUF", sh.buf),
        ("SM_READOUT", sh.readout),
    ] {
        writeln!(out, "#define QECD_{name} {v}").expect("writing to a String");
    }
    WeightLayout::new(c).defines(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> KernelConfig {
        crate::testutil::odd()
    }

    /// Tensors whose values encode their name's index and position.
    fn numbered(c: &KernelConfig) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        c.tensor_shapes()
            .into_iter()
            .enumerate()
            .map(|(t, (name, shape))| {
                let n: usize = shape.iter().product();
                (name, shape, (0..n).map(|i| (t * 10_000 + i) as f32).collect())
            })
            .collect()
    }

    fn define(src: &str, name: &str) -> usize {
        let line = src.lines().find(|l| l.starts_with(&format!("#define {name} "))).expect(name);
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[test]
    fn packed_tensors_are_where_the_defines_say() {
        let c = config();
        let named = numbered(&c);
        let layout = WeightLayout::new(&c);
        let buf = layout.pack(&c, &named);
        let src = defines(&c);
        let t = |name: &str| &named.iter().find(|(n, _, _)| n == name).unwrap().2;
        let (s, d) = (c.stabilizers, c.width);
        let layer = |l: usize, field: &str| {
            define(&src, "QECD_OFF_LAYER0") + l * define(&src, "QECD_LAYER_STRIDE") + define(&src, field)
        };

        assert_eq!(&buf[define(&src, "QECD_OFF_STAB")..][..s * d], &t("embed.stab")[..]);
        assert_eq!(&buf[define(&src, "QECD_OFF_W_IN")..][..d * 3], &t("embed.w_in")[..]);
        for l in 0..c.layers {
            // Wqkvᵀ[k][j]: j < D from wq, then wk, then wv.
            let wqkv = layer(l, "QECD_LOFF_WQKV");
            let (wq, wk, wv) = (
                t(&format!("layers.{l}.attn.wq")),
                t(&format!("layers.{l}.attn.wk")),
                t(&format!("layers.{l}.attn.wv")),
            );
            for k in 0..d {
                for j in 0..d {
                    assert_eq!(buf[wqkv + k * 3 * d + j], wq[j * d + k]);
                    assert_eq!(buf[wqkv + k * 3 * d + d + j], wk[j * d + k]);
                    assert_eq!(buf[wqkv + k * 3 * d + 2 * d + j], wv[j * d + k]);
                }
            }
            let bqkv = layer(l, "QECD_LOFF_BQKV");
            assert_eq!(buf[bqkv + d + 4], t(&format!("layers.{l}.attn.bk"))[4]);
            // attn.bias [h][i][j] at [h][j][i].
            let bias = t(&format!("layers.{l}.attn.bias"));
            let bt = layer(l, "QECD_LOFF_ATTN_BIAS");
            for (h, i, j) in [(0, 1, 2), (2, 4, 0), (1, 3, 3)] {
                assert_eq!(buf[bt + (h * s + j) * s + i], bias[(h * s + i) * s + j]);
            }
            // W2ᵀ [F][D].
            let (w2, f) = (t(&format!("layers.{l}.ffn.w2")), c.ffn_width);
            assert_eq!(buf[layer(l, "QECD_LOFF_W2") + 36 * d + 17], w2[17 * f + 36]);
            assert_eq!(buf[layer(l, "QECD_LOFF_LN2_B") + 5], t(&format!("layers.{l}.ln2.bias"))[5]);
        }
        let (r, o) = (c.readout_width, c.observables);
        assert_eq!(buf[define(&src, "QECD_OFF_RO_W2") + 6 * o + 1], t("readout.w2")[r + 6]);
        assert_eq!(buf[define(&src, "QECD_OFF_RO_B2") + 1], t("readout.b2")[1]);
        assert!(define(&src, "QECD_OFF_RO_B2") + o <= layout.len);
        for (name, v) in src.lines().filter_map(|l| l.strip_prefix("#define ")).map(|l| l.split_once(' ').unwrap()) {
            if name.starts_with("QECD_OFF_") && name != "QECD_OFF_LAYER0" {
                assert_eq!(v.parse::<usize>().unwrap() % ALIGN, 0, "{name} is aligned");
            }
        }
    }

    #[test]
    fn shared_memory_fits_every_stage() {
        for c in [config(), KernelConfig { stabilizers: 120, width: 64, ffn_width: 128, readout_width: 64, ..config() }]
        {
            let sh = SharedLayout::new(&c);
            let (s, d) = (c.stabilizers, c.width);
            assert!(sh.lda % 2 == 1 && sh.lda >= d && sh.ldb % 2 == 1 && sh.ldb >= (3 * d).max(c.ffn_width));
            assert!(sh.z + s * d <= sh.a && sh.a + s * sh.lda <= sh.buf && sh.buf + s * sh.ldb <= sh.floats);
            assert!(sh.readout >= s * d && sh.readout + 2 * s + d + c.readout_width <= sh.floats);
        }
        // d = 11 at D = 64, F = 128: 155 KB, under the 227 KB a Hopper block may have.
        let big = KernelConfig { stabilizers: 120, width: 64, ffn_width: 128, readout_width: 64, ..config() };
        assert!(SharedLayout::new(&big).bytes() < 160_000);
    }
}
