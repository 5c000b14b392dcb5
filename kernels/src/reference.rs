//! A plain, obvious `f64` transcription of docs/model.md, for tests.
//!
//! It reads the weights back in their checkpoint layout ([`Weights::to_named`]),
//! so it shares none of the fused kernels' packing, and uses textbook formulas
//! (`f64::exp`, an `erf` series, two-pass LayerNorm). Slow; never use it to decode.

use std::collections::HashMap;

use crate::{KernelConfig, Weights};

/// `erf(x)` to about 1e-15: `2/√π · e^{−x²} · Σₙ 2ⁿ x^{2n+1} / (1·3·…·(2n+1))`
/// (all terms positive, so no cancellation), and ±1 for |x| ≥ 6, where
/// `1 − erf` is below 2.2e-17.
pub fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    if x.abs() >= 6.0 {
        return x.signum();
    }
    let x2 = x * x;
    let (mut term, mut sum, mut n) = (x, x, 0.0);
    while term.abs() > 1e-17 * sum.abs() {
        n += 1.0;
        term *= 2.0 * x2 / (2.0 * n + 1.0);
        sum += term;
    }
    2.0 / std::f64::consts::PI.sqrt() * (-x2).exp() * sum
}

/// Exact GELU, `x·Φ(x)`.
pub fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

/// LayerNorm over `x` with gain `g` and bias `b`, ε = 1e-5.
pub fn layer_norm(x: &[f64], g: &[f64], b: &[f64]) -> Vec<f64> {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    x.iter().zip(g).zip(b).map(|((v, g), b)| (v - mean) / (var + 1e-5).sqrt() * g + b).collect()
}

/// `x·Wᵀ + b` with `W: [out, in]` row-major.
pub fn linear(x: &[f64], w: &[f64], b: &[f64]) -> Vec<f64> {
    b.iter()
        .enumerate()
        .map(|(o, b)| b + x.iter().zip(&w[o * x.len()..(o + 1) * x.len()]).map(|(x, w)| x * w).sum::<f64>())
        .collect()
}

/// Tensors by checkpoint name, in `f64`.
pub type Tensors = HashMap<String, Vec<f64>>;

/// The state `z` (`[S][D]`) after one round step with features `[S][NF]`
/// (docs/model.md §Round step, 1 and 2).
pub fn step(c: &KernelConfig, tensors: &Tensors, z: &mut [Vec<f64>], features: &[f32]) {
    let (s, d, h, nf) = (c.stabilizers, c.width, c.heads, c.features);
    let dh = d / h;
    let t = |name: &str| -> &[f64] { &tensors[name] };
    // 1. Embedding, 2. z ← (z + x[t]) / √2.
    for (si, zs) in z.iter_mut().enumerate() {
        let f: Vec<f64> = features[si * nf..(si + 1) * nf].iter().map(|&v| v as f64).collect();
        let x = linear(&f, t("embed.w_in"), t("embed.b_in"));
        for (j, zv) in zs.iter_mut().enumerate() {
            *zv = (*zv + x[j] + t("embed.stab")[si * d + j]) / std::f64::consts::SQRT_2;
        }
    }
    for l in 0..c.layers {
        let p = |n: &str| format!("layers.{l}.{n}");
        let a: Vec<Vec<f64>> = z.iter().map(|zs| layer_norm(zs, t(&p("ln1.weight")), t(&p("ln1.bias")))).collect();
        let q: Vec<Vec<f64>> = a.iter().map(|a| linear(a, t(&p("attn.wq")), t(&p("attn.bq")))).collect();
        let k: Vec<Vec<f64>> = a.iter().map(|a| linear(a, t(&p("attn.wk")), t(&p("attn.bk")))).collect();
        let v: Vec<Vec<f64>> = a.iter().map(|a| linear(a, t(&p("attn.wv")), t(&p("attn.bv")))).collect();
        let bias = t(&p("attn.bias"));
        let mut o = vec![vec![0.0f64; d]; s];
        for hh in 0..h {
            let cols = hh * dh..(hh + 1) * dh;
            for i in 0..s {
                let scores: Vec<f64> = (0..s)
                    .map(|j| {
                        let dot: f64 = cols.clone().map(|col| q[i][col] * k[j][col]).sum();
                        dot / (dh as f64).sqrt() + bias[(hh * s + i) * s + j]
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|sc| (sc - max).exp()).collect();
                let total: f64 = e.iter().sum();
                for col in cols.clone() {
                    o[i][col] = (0..s).map(|j| e[j] / total * v[j][col]).sum();
                }
            }
        }
        for (zs, os) in z.iter_mut().zip(&o) {
            let out = linear(os, t(&p("attn.wo")), t(&p("attn.bo")));
            zs.iter_mut().zip(out).for_each(|(zv, ov)| *zv += ov);
        }
        for zs in z.iter_mut() {
            let a = layer_norm(zs, t(&p("ln2.weight")), t(&p("ln2.bias")));
            let hidden: Vec<f64> = linear(&a, t(&p("ffn.w1")), t(&p("ffn.b1"))).into_iter().map(gelu).collect();
            let out = linear(&hidden, t(&p("ffn.w2")), t(&p("ffn.b2")));
            zs.iter_mut().zip(out).for_each(|(zv, ov)| *zv += ov);
        }
    }
}

/// The logits `[O]` read out from the state `z` (docs/model.md §Round step, 3).
pub fn readout(tensors: &Tensors, z: &[Vec<f64>]) -> Vec<f64> {
    let t = |name: &str| -> &[f64] { &tensors[name] };
    let mut g = vec![0.0f64; z.first().map_or(0, Vec::len)];
    for zs in z {
        let a = layer_norm(zs, t("readout.ln.weight"), t("readout.ln.bias"));
        g.iter_mut().zip(a).for_each(|(gv, av)| *gv += av / z.len() as f64);
    }
    let hidden: Vec<f64> = linear(&g, t("readout.w1"), t("readout.b1")).into_iter().map(gelu).collect();
    linear(&hidden, t("readout.w2"), t("readout.b2"))
}

/// Logits `[O]` of one shot: `features` `[T][S][NF]` with T = `rounds` round steps.
///
/// # Panics
/// If `features.len() != rounds · S · NF`.
pub fn forward(w: &Weights, features: &[f32], rounds: usize) -> Vec<f64> {
    let c = w.config();
    assert_eq!(features.len(), rounds * c.features_len(), "features length");
    let tensors: Tensors =
        w.to_named().into_iter().map(|(name, _, v)| (name, v.into_iter().map(f64::from).collect())).collect();
    let mut z = vec![vec![0.0f64; c.width]; c.stabilizers];
    for round in features.chunks_exact(c.features_len()) {
        step(c, &tensors, &mut z, round);
    }
    readout(&tensors, &z)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    #[test]
    fn erf_known_values() {
        // Values from Abramowitz & Stegun table 7.1 / high-precision references.
        let known = [
            (0.0, 0.0),
            (0.1, 0.112_462_916_018_284_9),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (2.0, 0.995_322_265_018_952_7),
            (3.0, 0.999_977_909_503_001_4),
            (4.0, 0.999_999_984_582_742_1),
        ];
        for (x, want) in known {
            assert!((erf(x) - want).abs() < 1e-14, "erf({x}) = {} vs {want}", erf(x));
            assert!((erf(-x) + want).abs() < 1e-14);
        }
        assert_eq!(erf(7.0), 1.0);
        assert!((gelu(1.0) - 0.841_344_746_068_542_9).abs() < 1e-15);
    }

    #[test]
    fn zero_rounds_read_out_the_zero_state() {
        let config = d3(32);
        let w = random_weights(&config, 1);
        // z = 0: LN(0) = bias, so g = readout.ln.bias.
        let named = w.to_named();
        let get =
            |n: &str| named.iter().find(|(m, _, _)| m == n).unwrap().2.iter().map(|&v| v as f64).collect::<Vec<_>>();
        let g = get("readout.ln.bias");
        let hidden: Vec<f64> = linear(&g, &get("readout.w1"), &get("readout.b1")).into_iter().map(gelu).collect();
        let want = linear(&hidden, &get("readout.w2"), &get("readout.b2"));
        let got = forward(&w, &[], 0);
        assert!((got[0] - want[0]).abs() < 1e-12);
    }
}
