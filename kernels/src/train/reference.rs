//! The training loss as a plain `f64` transcription of docs/model.md, shot by
//! shot, for finite-difference checks of the fused gradients. Slow; tests only.

use super::params::ParamIndex;
use crate::reference::gelu;

fn layer_norm(x: &[f64], g: &[f64], b: &[f64]) -> Vec<f64> {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    x.iter().zip(g).zip(b).map(|((v, g), b)| (v - mean) / (var + 1e-5).sqrt() * g + b).collect()
}

/// `x·Wᵀ + b`, `W` `[b.len()][x.len()]`.
fn linear(x: &[f64], w: &[f64], b: &[f64]) -> Vec<f64> {
    let k = x.len();
    b.iter().enumerate().map(|(o, b)| b + (0..k).map(|i| x[i] * w[o * k + i]).sum::<f64>()).collect()
}

fn bce(x: f64, y: f64) -> f64 {
    x.max(0.0) - x * y + (-x.abs()).exp().ln_1p()
}

/// The loss of [`super::Trainer::loss_and_grad`] (see the module docs of
/// `train`) in `f64`, from flat parameters `p` in `ix`'s layout.
#[allow(clippy::too_many_arguments)]
pub fn loss(
    ix: &ParamIndex,
    p: &[f64],
    features: &[f32],
    labels: &[f32],
    shots: usize,
    rounds: usize,
    aux_weight: f64,
) -> f64 {
    let c = ix.config();
    let (s, d, h, nf, o) = (c.stabilizers, c.width, c.heads, c.features, c.observables);
    let dh = d / h;
    let t_ = |r: &std::ops::Range<usize>| &p[r.clone()];
    let mut total = 0.0;
    for b in 0..shots {
        let mut z = vec![vec![0.0f64; d]; s];
        for t in 0..rounds {
            for (si, zr) in z.iter_mut().enumerate() {
                let f: Vec<f64> =
                    features[((b * rounds + t) * s + si) * nf..][..nf].iter().map(|v| *v as f64).collect();
                let x = linear(&f, t_(&ix.w_in), t_(&ix.b_in));
                for j in 0..d {
                    zr[j] = (zr[j] + x[j] + t_(&ix.stab)[si * d + j]) / std::f64::consts::SQRT_2;
                }
            }
            for lx in &ix.layers {
                let a: Vec<Vec<f64>> = z.iter().map(|r| layer_norm(r, t_(&lx.ln1_g), t_(&lx.ln1_b))).collect();
                let proj = |k: usize| -> Vec<Vec<f64>> {
                    a.iter().map(|r| linear(r, t_(&lx.w_qkv[k]), t_(&lx.b_qkv[k]))).collect()
                };
                let (q, kk, v) = (proj(0), proj(1), proj(2));
                let bias = t_(&lx.bias);
                let mut att = vec![vec![0.0f64; d]; s];
                for hh in 0..h {
                    let cols = hh * dh..(hh + 1) * dh;
                    for i in 0..s {
                        let scores: Vec<f64> = (0..s)
                            .map(|j| {
                                cols.clone().map(|cc| q[i][cc] * kk[j][cc]).sum::<f64>() / (dh as f64).sqrt()
                                    + bias[(hh * s + i) * s + j]
                            })
                            .collect();
                        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                        let sum: f64 = e.iter().sum();
                        for cc in cols.clone() {
                            att[i][cc] = (0..s).map(|j| e[j] / sum * v[j][cc]).sum();
                        }
                    }
                }
                for (zr, ar) in z.iter_mut().zip(&att) {
                    let y = linear(ar, t_(&lx.wo), t_(&lx.bo));
                    zr.iter_mut().zip(y).for_each(|(zv, yv)| *zv += yv);
                }
                for zr in z.iter_mut() {
                    let a2 = layer_norm(zr, t_(&lx.ln2_g), t_(&lx.ln2_b));
                    let hid: Vec<f64> = linear(&a2, t_(&lx.w1), t_(&lx.b1)).into_iter().map(gelu).collect();
                    let y = linear(&hid, t_(&lx.w2), t_(&lx.b2));
                    zr.iter_mut().zip(y).for_each(|(zv, yv)| *zv += yv);
                }
            }
            let last = t + 1 == rounds;
            let weight = if last { 1.0 } else { aux_weight / (rounds - 1).max(1) as f64 };
            if weight > 0.0 {
                let mut pooled = vec![0.0f64; d];
                for zr in &z {
                    let y = layer_norm(zr, t_(&ix.ro_ln_g), t_(&ix.ro_ln_b));
                    pooled.iter_mut().zip(y).for_each(|(pv, yv)| *pv += yv / s as f64);
                }
                let hid: Vec<f64> = linear(&pooled, t_(&ix.ro_w1), t_(&ix.ro_b1)).into_iter().map(gelu).collect();
                let logits = linear(&hid, t_(&ix.ro_w2), t_(&ix.ro_b2));
                for (k, x) in logits.iter().enumerate() {
                    total += weight * bce(*x, labels[(b * rounds + t) * o + k] as f64);
                }
            }
        }
    }
    total / (shots * o) as f64
}
