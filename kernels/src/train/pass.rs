//! One worker's share of a training step: the forward pass over a block of
//! shots with every activation kept (the tape), and the backward pass.
//!
//! Everything runs on the inference kernels' building blocks: the
//! matrix-product micro-kernel ([`gemm`]), LayerNorm, the column softmax and
//! GELU over [`Arith`] vectors. The backward pass needs three kinds of product,
//! all of which the micro-kernel does without a copy because it addresses its
//! left operand through two strides and can read a row-major matrix in place
//! as panels (`ldw` = its row length):
//!
//! | product | left operand (`x`, strides) | panels |
//! |---|---|---|
//! | `y = x·Wᵀ + b` (forward) | activations, `(in, 1)` | packed `Wᵀ` from [`Weights`] |
//! | `dx = dy·W` | `dy`, `(out, 1)` | `W` `[out][in]` in place, `ldw = in` |
//! | `dW += dyᵀ·x` | `dy` transposed, `(1, out)` | the activations `x` in place, `ldw = in` |
//!
//! Attention's backward works, like its forward, on transposed score
//! matrices `[S_j][H·S_i]` (all heads side by side), so the softmax's backward
//! is a column operation over whole vectors.

use super::params::{PAD, ParamIndex};
use crate::kernel::{embed_row, gemm};
use crate::math::{Arith, LN_EPS, erf, exp, gelu_slice, softmax_columns};
use crate::simd::{LANES, Vector};
use crate::weights::{PANEL, Panels};
use crate::{KernelConfig, Weights};

/// `count` buffers of `len` values, each followed by [`PAD`] values that
/// in-place panel reads may touch.
struct Slots {
    buf: Vec<f32>,
    stride: usize,
}

impl Slots {
    fn new(count: usize, len: usize) -> Self {
        Self { buf: vec![0.0; count * (len + PAD)], stride: len + PAD }
    }

    fn at(&self, i: usize) -> &[f32] {
        &self.buf[i * self.stride..(i + 1) * self.stride]
    }

    fn at_mut(&mut self, i: usize) -> &mut [f32] {
        &mut self.buf[i * self.stride..(i + 1) * self.stride]
    }
}

/// A worker: the tape for up to `cap_shots` shots of up to `cap_rounds`
/// round steps, the backward pass's scratch, and its own gradients.
///
/// Tape slots are indexed by round `t` (per-round buffers) or by `t·L + l`
/// (per-layer buffers); rows are `b·S + s` for shot `b` of the block.
pub(crate) struct Worker {
    c: KernelConfig,
    cap_shots: usize,
    cap_rounds: usize,
    /// `⌈H·S/16⌉·16`: the row length of transposed score matrices.
    hl: usize,
    /// State after the embedding update, the input of layer 0: `[rows][D]`.
    zin: Slots,
    /// LayerNorm 1 output `[rows][D]` and its (mean, 1/σ) per row `[rows][2]`.
    a1: Slots,
    st1: Slots,
    /// Q, K, V side by side: `[rows][3D]`.
    qkv: Slots,
    /// Attention probabilities, transposed, per shot: `[n][S_j][hl]`.
    pt: Slots,
    /// Attention output, heads concatenated: `[rows][D]`.
    att: Slots,
    /// State after the attention residual: `[rows][D]`.
    z1: Slots,
    /// LayerNorm 2 output and statistics.
    a2: Slots,
    st2: Slots,
    /// FFN hidden before and after GELU: `[rows][F]`.
    h: Slots,
    g: Slots,
    /// Layer output: `[rows][D]`; for the last layer, the state after round t.
    zout: Slots,
    /// Readout LayerNorm statistics `[rows][2]`, pooled `[n][D]`, hidden
    /// before and after GELU `[n][R]`, logits `[n][O]`, per round.
    str_: Slots,
    pooled: Slots,
    rh: Slots,
    rg: Slots,
    logit: Slots,
    /// Backward scratch: gradient of the state `[rows][D]`, of a LayerNorm
    /// output `[rows][D]`, of the attention output `[rows][D]`, of the FFN
    /// hidden `[rows][F]`, of Q, K, V `[rows][3D]`.
    dz: Vec<f32>,
    da: Vec<f32>,
    datt: Vec<f32>,
    dg: Vec<f32>,
    dqkv: Vec<f32>,
    /// One shot's attention-output gradient transposed, `[D][S]`.
    dot: Vec<f32>,
    /// One shot's transposed score gradients, `[S_j][hl]`.
    dpt: Vec<f32>,
    /// Column scratch `[2][hl]`.
    col: Vec<f32>,
    /// One shot's Qᵀ `[D][S]` (forward).
    qt: Vec<f32>,
    /// Readout backward: `[n][R]`, `[n][D]`, `[n][O]`.
    drg: Vec<f32>,
    dpool: Vec<f32>,
    dlogit: Vec<f32>,
    /// One row `[D]`.
    tmp: Vec<f32>,
    /// Zero biases for products without one.
    zeros: Vec<f32>,
    /// This worker's gradients, flat ([`ParamIndex`] layout).
    pub grads: Vec<f32>,
    /// Attention-bias gradients in the transposed layout, `[L][S_j][hl]`.
    dbias_t: Vec<f32>,
    /// `embed.w_in`'s gradient transposed, `[NF][D]`.
    dw_in_t: Vec<f32>,
    /// The loss sums of this worker's last block.
    pub sums: LossSums,
}

/// Loss sums of one worker (not yet divided by the batch).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LossSums {
    /// Σ over shots and observables of the final round's BCE.
    pub final_bce: f64,
    /// Σ over shots, observables and earlier rounds of their BCE.
    pub aux_bce: f64,
    /// Σ of the weighted loss (what the gradients are of, before the scale).
    pub weighted: f64,
}

/// `(1 + e^{−|x|})`-stable binary cross-entropy of a logit against a 0/1 label.
pub(crate) fn bce(x: f64, y: f64) -> f64 {
    x.max(0.0) - x * y + (-x.abs()).exp().ln_1p()
}

impl Worker {
    pub fn new(c: &KernelConfig, cap_shots: usize, cap_rounds: usize, params_len: usize) -> Self {
        let (s, d, f, r, o, l) = (c.stabilizers, c.width, c.ffn_width, c.readout_width, c.observables, c.layers);
        let (n, t) = (cap_shots.max(1), cap_rounds.max(1));
        let rows = n * s;
        let hl = (c.heads * s).next_multiple_of(LANES);
        let widest = (3 * d).max(f).max(r).max(s).max(o) + PAD;
        Self {
            c: c.clone(),
            cap_shots: n,
            cap_rounds: t,
            hl,
            zin: Slots::new(t, rows * d),
            a1: Slots::new(t * l, rows * d),
            st1: Slots::new(t * l, rows * 2),
            qkv: Slots::new(t * l, rows * 3 * d),
            pt: Slots::new(t * l, n * s * hl),
            att: Slots::new(t * l, rows * d),
            z1: Slots::new(t * l, rows * d),
            a2: Slots::new(t * l, rows * d),
            st2: Slots::new(t * l, rows * 2),
            h: Slots::new(t * l, rows * f),
            g: Slots::new(t * l, rows * f),
            zout: Slots::new(t * l, rows * d),
            str_: Slots::new(t, rows * 2),
            pooled: Slots::new(t, n * d),
            rh: Slots::new(t, n * r),
            rg: Slots::new(t, n * r),
            logit: Slots::new(t, n * o),
            dz: vec![0.0; rows * d + PAD],
            da: vec![0.0; rows * d + PAD],
            datt: vec![0.0; rows * d + PAD],
            dg: vec![0.0; rows * f + PAD],
            dqkv: vec![0.0; rows * 3 * d + PAD],
            dot: vec![0.0; d * s + PAD],
            dpt: vec![0.0; s * hl + PAD],
            col: vec![0.0; 2 * hl],
            qt: vec![0.0; d * s + PAD],
            drg: vec![0.0; n * r + PAD],
            dpool: vec![0.0; n * d + PAD],
            dlogit: vec![0.0; n * o + PAD],
            tmp: vec![0.0; d + PAD],
            zeros: vec![0.0; widest.next_multiple_of(PANEL)],
            grads: vec![0.0; params_len],
            dbias_t: vec![0.0; l * s * hl],
            dw_in_t: vec![0.0; c.features * d],
            sums: LossSums::default(),
        }
    }

    /// Shots and rounds this worker can hold.
    pub fn capacity(&self) -> (usize, usize) {
        (self.cap_shots, self.cap_rounds)
    }

    /// The forward pass of `n` shots of `rounds` round steps (`feats`
    /// `[n][rounds][S][NF]`), reading out after every round when `every_round`
    /// and after the last one always. Returns the final logits `[n][O]`.
    #[inline(always)]
    pub fn forward<A: Arith, const R: usize>(
        &mut self,
        a: A,
        w: &Weights,
        feats: &[f32],
        n: usize,
        rounds: usize,
        every_round: bool,
    ) -> &[f32] {
        assert!(n <= self.cap_shots && rounds <= self.cap_rounds && rounds >= 1, "worker capacity");
        assert_eq!(feats.len(), n * rounds * self.c.features_len(), "features length");
        for t in 0..rounds {
            self.forward_round::<A, R>(a, w, feats, n, t, rounds);
            if every_round || t + 1 == rounds {
                self.readout_forward::<A, R>(a, w, n, t);
            }
        }
        &self.logit.at(rounds - 1)[..n * self.c.observables]
    }

    #[inline(always)]
    fn forward_round<A: Arith, const R: usize>(
        &mut self,
        a: A,
        w: &Weights,
        feats: &[f32],
        n: usize,
        t: usize,
        rounds: usize,
    ) {
        let c = &self.c;
        let (s, d, nf, ff, nl) = (c.stabilizers, c.width, c.features, c.ffn_width, c.layers);
        let (dh, heads, hl) = (c.head_width(), c.heads, self.hl);
        let rows = n * s;
        let scale = 1.0 / (dh as f32).sqrt();
        let Self { zin, a1, st1, qkv, pt, att, z1, a2, st2, h, g, zout, qt, col, zeros, .. } = self;

        let zi = &mut zin.at_mut(t)[..rows * d];
        if t == 0 {
            zi.fill(0.0);
        } else {
            zi.copy_from_slice(&zout.at((t - 1) * nl + nl - 1)[..rows * d]);
        }
        for b in 0..n {
            let fb = &feats[(b * rounds + t) * s * nf..][..s * nf];
            for si in 0..s {
                let row = b * s + si;
                embed_row::<A>(
                    a,
                    &mut zi[row * d..][..d],
                    &fb[si * nf..][..nf],
                    &w.embed_base[si * d..][..d],
                    &w.w_in_t,
                );
            }
        }

        for (l, layer) in w.layers.iter().enumerate() {
            let slot = t * nl + l;
            let z0: &[f32] = if l == 0 { &zin.at(t)[..rows * d] } else { &zout.at(slot - 1)[..rows * d] };
            let an = a1.at_mut(slot);
            ln_forward_rows::<A>(a, z0, &layer.ln1_g, &layer.ln1_b, &mut an[..rows * d], st1.at_mut(slot));
            let q = qkv.at_mut(slot);
            gemm::<A, R>(a, an, d, 1, rows, layer.qkv.panels(), &mut q[..rows * 3 * d], 3 * d, false);
            let (p, o) = (pt.at_mut(slot), att.at_mut(slot));
            let ld = 3 * d;
            let (max, sum) = col.split_at_mut(hl);
            for b in 0..n {
                let qb = &q[b * s * ld..];
                transpose(qb, s, d, ld, qt);
                let pb = &mut p[b * s * hl..(b + 1) * s * hl];
                for hh in 0..heads {
                    let c0 = hh * dh;
                    let panels = Panels { k: dh, n: s, wt: &qt[c0 * s..], ldw: s, stride: PANEL, bias: zeros };
                    gemm::<A, R>(a, &qb[d + c0..], ld, 1, s, panels, &mut pb[hh * s..], hl, false);
                }
                softmax_columns::<A>(a, pb, &layer.attn_bias_t, scale, max, sum);
                for hh in 0..heads {
                    let c0 = hh * dh;
                    let panels = Panels { k: s, n: dh, wt: &qb[2 * d + c0..], ldw: ld, stride: PANEL, bias: zeros };
                    gemm::<A, R>(a, &pb[hh * s..], 1, hl, s, panels, &mut o[b * s * d + c0..], d, false);
                }
            }
            let zm = z1.at_mut(slot);
            zm[..rows * d].copy_from_slice(z0);
            gemm::<A, R>(a, o, d, 1, rows, layer.wo.panels(), &mut zm[..rows * d], d, true);
            let an = a2.at_mut(slot);
            ln_forward_rows::<A>(a, &zm[..rows * d], &layer.ln2_g, &layer.ln2_b, &mut an[..rows * d], st2.at_mut(slot));
            let hs = h.at_mut(slot);
            gemm::<A, R>(a, an, d, 1, rows, layer.w1.panels(), &mut hs[..rows * ff], ff, false);
            let gs = g.at_mut(slot);
            gs[..rows * ff].copy_from_slice(&hs[..rows * ff]);
            gelu_slice::<A>(a, &mut gs[..rows * ff]);
            let zo = zout.at_mut(slot);
            zo[..rows * d].copy_from_slice(&zm[..rows * d]);
            gemm::<A, R>(a, gs, ff, 1, rows, layer.w2.panels(), &mut zo[..rows * d], d, true);
        }
    }

    #[inline(always)]
    fn readout_forward<A: Arith, const R: usize>(&mut self, a: A, w: &Weights, n: usize, t: usize) {
        let c = &self.c;
        let (s, d, r, o, nl) = (c.stabilizers, c.width, c.readout_width, c.observables, c.layers);
        let Self { zout, str_, pooled, rh, rg, logit, tmp, .. } = self;
        let z = zout.at(t * nl + nl - 1);
        let (st, pool) = (str_.at_mut(t), pooled.at_mut(t));
        let inv_s = 1.0 / s as f32;
        for b in 0..n {
            let pb = &mut pool[b * d..][..d];
            pb.fill(0.0);
            for si in 0..s {
                let row = b * s + si;
                let (mu, rs) = ln_forward::<A>(a, &z[row * d..][..d], &w.ro_ln_g, &w.ro_ln_b, &mut tmp[..d]);
                st[2 * row] = mu;
                st[2 * row + 1] = rs;
                add_to::<A>(a, pb, &tmp[..d]);
            }
            for v in pb.iter_mut() {
                *v *= inv_s;
            }
        }
        let hid = rh.at_mut(t);
        gemm::<A, R>(a, pool, d, 1, n, w.ro_w1.panels(), &mut hid[..n * r], r, false);
        let act = rg.at_mut(t);
        act[..n * r].copy_from_slice(&hid[..n * r]);
        gelu_slice::<A>(a, &mut act[..n * r]);
        gemm::<A, R>(a, act, r, 1, n, w.ro_w2.panels(), &mut logit.at_mut(t)[..n * o], o, false);
    }

    /// The backward pass after [`Worker::forward`] (with `every_round` when
    /// `aux_weight > 0`): accumulates into this worker's gradients the
    /// gradient of `scale · Σ_shots Σ_o [BCE_final + aux_weight/(T−1) · Σ_{t<T−1} BCE_t]`,
    /// `labels` `[n][rounds][O]`. Returns the unscaled loss sums.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub fn backward<A: Arith, const R: usize>(
        &mut self,
        a: A,
        ix: &ParamIndex,
        params: &[f32],
        feats: &[f32],
        labels: &[f32],
        n: usize,
        rounds: usize,
        aux_weight: f32,
        scale: f32,
    ) -> LossSums {
        let c = self.c.clone();
        let (s, d, o, nl) = (c.stabilizers, c.width, c.observables, c.layers);
        assert_eq!(labels.len(), n * rounds * o, "labels length");
        let rows = n * s;
        let mut sums = LossSums::default();
        self.dz[..rows * d].fill(0.0);
        for t in (0..rounds).rev() {
            let last = t + 1 == rounds;
            let weight = if last {
                1.0
            } else if aux_weight > 0.0 {
                aux_weight / (rounds - 1) as f32
            } else {
                0.0
            };
            if weight > 0.0 {
                let logits = &self.logit.at(t)[..n * o];
                for b in 0..n {
                    for k in 0..o {
                        let x = logits[b * o + k];
                        let y = labels[(b * rounds + t) * o + k];
                        let loss = bce(x as f64, y as f64);
                        if last {
                            sums.final_bce += loss;
                        } else {
                            sums.aux_bce += loss;
                        }
                        sums.weighted += weight as f64 * loss;
                        let p = 1.0 / (1.0 + (-x).exp());
                        self.dlogit[b * o + k] = weight * scale * (p - y);
                    }
                }
                self.readout_backward::<A, R>(a, ix, params, n, t);
            }
            for l in (0..nl).rev() {
                self.layer_backward::<A, R>(a, ix, params, n, t, l);
            }
            self.embed_backward::<A>(a, ix, feats, n, t, rounds);
        }
        sums
    }

    #[inline(always)]
    fn readout_backward<A: Arith, const R: usize>(&mut self, a: A, ix: &ParamIndex, p: &[f32], n: usize, t: usize) {
        let c = &self.c;
        let (s, d, r, o, nl) = (c.stabilizers, c.width, c.readout_width, c.observables, c.layers);
        let Self { zout, str_, pooled, rh, rg, dz, drg, dpool, dlogit, tmp, zeros, grads, .. } = self;
        let (dl, act, hid, pool) = (&dlogit[..], rg.at(t), rh.at(t), pooled.at(t));
        // dW2 += dlᵀ·act, db2 += Σ dl, dact = dl·W2.
        let panels = Panels { k: n, n: r, wt: act, ldw: r, stride: PANEL, bias: zeros };
        gemm::<A, R>(a, dl, 1, o, o, panels, &mut grads[ix.ro_w2.clone()], r, true);
        add_rows::<A>(a, &dl[..n * o], o, &mut grads[ix.ro_b2.clone()]);
        let panels = Panels { k: o, n: r, wt: &p[ix.ro_w2.start..], ldw: r, stride: PANEL, bias: zeros };
        gemm::<A, R>(a, dl, o, 1, n, panels, &mut drg[..n * r], r, false);
        gelu_backward::<A>(a, &hid[..n * r], &mut drg[..n * r]);
        let panels = Panels { k: n, n: d, wt: pool, ldw: d, stride: PANEL, bias: zeros };
        gemm::<A, R>(a, drg, 1, r, r, panels, &mut grads[ix.ro_w1.clone()], d, true);
        add_rows::<A>(a, &drg[..n * r], r, &mut grads[ix.ro_b1.clone()]);
        let panels = Panels { k: r, n: d, wt: &p[ix.ro_w1.start..], ldw: d, stride: PANEL, bias: zeros };
        gemm::<A, R>(a, drg, r, 1, n, panels, &mut dpool[..n * d], d, false);
        // pooled = mean_s LN(z): each row's LN output gets dpool / S.
        let z = zout.at(t * nl + nl - 1);
        let st = str_.at(t);
        let inv_s = 1.0 / s as f32;
        for v in dpool[..n * d].iter_mut() {
            *v *= inv_s;
        }
        let (gain_r, bias_r) = (ix.ro_ln_g.clone(), ix.ro_ln_b.clone());
        for b in 0..n {
            for si in 0..s {
                let row = b * s + si;
                let (dgain, dbias) = two_mut(grads, gain_r.clone(), bias_r.clone());
                ln_backward::<A>(
                    a,
                    &z[row * d..][..d],
                    st[2 * row],
                    st[2 * row + 1],
                    &p[gain_r.clone()],
                    &dpool[b * d..][..d],
                    &mut dz[row * d..][..d],
                    dgain,
                    dbias,
                    &mut tmp[..d],
                );
            }
        }
    }

    #[inline(always)]
    fn layer_backward<A: Arith, const R: usize>(
        &mut self,
        a: A,
        ix: &ParamIndex,
        p: &[f32],
        n: usize,
        t: usize,
        l: usize,
    ) {
        let c = &self.c;
        let (s, d, ff, nl, heads, dh, hl) =
            (c.stabilizers, c.width, c.ffn_width, c.layers, c.heads, c.head_width(), self.hl);
        let rows = n * s;
        let slot = t * nl + l;
        let lx = &ix.layers[l];
        let Self {
            zin,
            a1,
            st1,
            qkv,
            pt,
            att,
            z1,
            a2,
            st2,
            h,
            g,
            zout,
            dz,
            da,
            datt,
            dg,
            dqkv,
            dot,
            dpt,
            col,
            tmp,
            zeros,
            grads,
            dbias_t,
            ..
        } = self;
        let z0: &[f32] = if l == 0 { zin.at(t) } else { zout.at(slot - 1) };
        let dz = &mut dz[..rows * d];

        // FFN: zout = z1 + GELU(LN2(z1)·W1ᵀ + b1)·W2ᵀ + b2.
        let panels = Panels { k: rows, n: ff, wt: g.at(slot), ldw: ff, stride: PANEL, bias: zeros };
        gemm::<A, R>(a, dz, 1, d, d, panels, &mut grads[lx.w2.clone()], ff, true);
        add_rows::<A>(a, dz, d, &mut grads[lx.b2.clone()]);
        let panels = Panels { k: d, n: ff, wt: &p[lx.w2.start..], ldw: ff, stride: PANEL, bias: zeros };
        gemm::<A, R>(a, dz, d, 1, rows, panels, &mut dg[..rows * ff], ff, false);
        gelu_backward::<A>(a, &h.at(slot)[..rows * ff], &mut dg[..rows * ff]);
        let panels = Panels { k: rows, n: d, wt: a2.at(slot), ldw: d, stride: PANEL, bias: zeros };
        gemm::<A, R>(a, dg, 1, ff, ff, panels, &mut grads[lx.w1.clone()], d, true);
        add_rows::<A>(a, &dg[..rows * ff], ff, &mut grads[lx.b1.clone()]);
        let panels = Panels { k: ff, n: d, wt: &p[lx.w1.start..], ldw: d, stride: PANEL, bias: zeros };
        gemm::<A, R>(a, dg, ff, 1, rows, panels, &mut da[..rows * d], d, false);
        let ln2 = Norm { x: z1.at(slot), stats: st2.at(slot), gain: lx.ln2_g.clone(), bias: lx.ln2_b.clone() };
        ln_backward_rows::<A>(a, &ln2, p, &da[..rows * d], dz, grads, &mut tmp[..d]);

        // Attention: z1 = z0 + attn(LN1(z0))·Woᵀ + bo.
        let o = att.at(slot);
        let panels = Panels { k: rows, n: d, wt: o, ldw: d, stride: PANEL, bias: zeros };
        gemm::<A, R>(a, dz, 1, d, d, panels, &mut grads[lx.wo.clone()], d, true);
        add_rows::<A>(a, dz, d, &mut grads[lx.bo.clone()]);
        let panels = Panels { k: d, n: d, wt: &p[lx.wo.start..], ldw: d, stride: PANEL, bias: zeros };
        gemm::<A, R>(a, dz, d, 1, rows, panels, &mut datt[..rows * d], d, false);

        let (q, pr) = (qkv.at(slot), pt.at(slot));
        let ld = 3 * d;
        let scale = 1.0 / (dh as f32).sqrt();
        let db_t = &mut dbias_t[l * s * hl..(l + 1) * s * hl];
        let (csum, _) = col.split_at_mut(hl);
        for b in 0..n {
            let qb = &q[b * s * ld..];
            let pb = &pr[b * s * hl..(b + 1) * s * hl];
            let ob = &datt[b * s * d..];
            transpose(ob, s, d, d, dot);
            // dPᵀ[j][h·S + i] = v_j · do_i (head h).
            for hh in 0..heads {
                let c0 = hh * dh;
                let panels = Panels { k: dh, n: s, wt: &dot[c0 * s..], ldw: s, stride: PANEL, bias: zeros };
                gemm::<A, R>(a, &qb[2 * d + c0..], ld, 1, s, panels, &mut dpt[hh * s..], hl, false);
            }
            // dS = P ⊙ (dP − Σ_j P⊙dP), per column (h, i); dbias += dS; then dS · 1/√dh.
            softmax_backward_columns::<A>(a, pb, &mut dpt[..s * hl], csum, db_t, scale);
            let dqb = &mut dqkv[b * s * ld..];
            for hh in 0..heads {
                let c0 = hh * dh;
                // dV[j] = Σ_i P[i][j]·do_i.
                let panels = Panels { k: s, n: dh, wt: &ob[c0..], ldw: d, stride: PANEL, bias: zeros };
                gemm::<A, R>(a, &pb[hh * s..], hl, 1, s, panels, &mut dqb[2 * d + c0..], ld, false);
                // dQ[i] = Σ_j dS[i][j]·k_j.
                let panels = Panels { k: s, n: dh, wt: &qb[d + c0..], ldw: ld, stride: PANEL, bias: zeros };
                gemm::<A, R>(a, &dpt[hh * s..], 1, hl, s, panels, &mut dqb[c0..], ld, false);
                // dK[j] = Σ_i dS[i][j]·q_i.
                let panels = Panels { k: s, n: dh, wt: &qb[c0..], ldw: ld, stride: PANEL, bias: zeros };
                gemm::<A, R>(a, &dpt[hh * s..], hl, 1, s, panels, &mut dqb[d + c0..], ld, false);
            }
        }
        let an = a1.at(slot);
        for k in 0..3 {
            let panels = Panels { k: rows, n: d, wt: an, ldw: d, stride: PANEL, bias: zeros };
            gemm::<A, R>(a, &dqkv[k * d..], 1, ld, d, panels, &mut grads[lx.w_qkv[k].clone()], d, true);
            add_rows_strided::<A>(a, &dqkv[k * d..], rows, ld, &mut grads[lx.b_qkv[k].clone()]);
            let panels = Panels { k: d, n: d, wt: &p[lx.w_qkv[k].start..], ldw: d, stride: PANEL, bias: zeros };
            gemm::<A, R>(a, &dqkv[k * d..], ld, 1, rows, panels, &mut da[..rows * d], d, k > 0);
        }
        let ln1 = Norm { x: z0, stats: st1.at(slot), gain: lx.ln1_g.clone(), bias: lx.ln1_b.clone() };
        ln_backward_rows::<A>(a, &ln1, p, &da[..rows * d], dz, grads, &mut tmp[..d]);
    }

    /// `zin = (z_prev + W_in·f + b_in + stab[s]) / √2`: the embedding's
    /// gradients, and `dz ← dz / √2` (the gradient of the previous state).
    #[inline(always)]
    fn embed_backward<A: Arith>(&mut self, a: A, ix: &ParamIndex, feats: &[f32], n: usize, t: usize, rounds: usize) {
        let c = &self.c;
        let (s, d, nf) = (c.stabilizers, c.width, c.features);
        let half = std::f32::consts::FRAC_1_SQRT_2;
        let Self { dz, grads, dw_in_t, .. } = self;
        let (b_in, stab) = two_mut(grads, ix.b_in.clone(), ix.stab.clone());
        let rows = n * s;
        for v in dz[..rows * d].iter_mut() {
            *v *= half;
        }
        add_rows::<A>(a, &dz[..rows * d], d, b_in);
        for si in 0..s {
            add_rows_strided::<A>(a, &dz[si * d..], n, s * d, &mut stab[si * d..(si + 1) * d]);
        }
        for b in 0..n {
            let fb = &feats[(b * rounds + t) * s * nf..][..s * nf];
            for si in 0..s {
                let row = &dz[(b * s + si) * d..][..d];
                for (k, fv) in fb[si * nf..][..nf].iter().enumerate() {
                    if *fv != 0.0 {
                        for (o, v) in dw_in_t[k * d..(k + 1) * d].iter_mut().zip(row) {
                            *o += fv * v;
                        }
                    }
                }
            }
        }
    }

    /// Zeroes the gradients before a step.
    pub fn zero_grads(&mut self) {
        self.grads.fill(0.0);
        self.dbias_t.fill(0.0);
        self.dw_in_t.fill(0.0);
    }

    /// Folds the gradients kept in other layouts (attention biases,
    /// `embed.w_in`) into [`Worker::grads`].
    pub fn finish_grads(&mut self, ix: &ParamIndex) {
        let c = &self.c;
        let (s, d, nf, hl) = (c.stabilizers, c.width, c.features, self.hl);
        for (l, lx) in ix.layers.iter().enumerate() {
            let bt = &self.dbias_t[l * s * hl..(l + 1) * s * hl];
            let out = &mut self.grads[lx.bias.clone()];
            for hh in 0..c.heads {
                for i in 0..s {
                    for j in 0..s {
                        out[(hh * s + i) * s + j] += bt[j * hl + hh * s + i];
                    }
                }
            }
        }
        let out = &mut self.grads[ix.w_in.clone()];
        for j in 0..d {
            for k in 0..nf {
                out[j * nf + k] += self.dw_in_t[k * d + j];
            }
        }
    }
}

/// A LayerNorm's saved forward: its input rows, their (mean, 1/σ), and where
/// its gain and bias sit in the flat parameters and gradients.
struct Norm<'a> {
    x: &'a [f32],
    stats: &'a [f32],
    gain: std::ops::Range<usize>,
    bias: std::ops::Range<usize>,
}

/// [`ln_backward`] over every row of `dy` (`[rows][D]`, `D = tmp.len()`):
/// `dx[r] +=` the input gradient, and the gain and bias gradients into `grads`.
#[inline(always)]
fn ln_backward_rows<A: Arith>(
    a: A,
    n: &Norm,
    p: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    grads: &mut [f32],
    tmp: &mut [f32],
) {
    let d = tmp.len();
    let (dgain, dbias) = two_mut(grads, n.gain.clone(), n.bias.clone());
    for (r, (dyr, dxr)) in dy.chunks_exact(d).zip(dx.chunks_exact_mut(d)).enumerate() {
        let (x, mean, rs) = (&n.x[r * d..][..d], n.stats[2 * r], n.stats[2 * r + 1]);
        ln_backward::<A>(a, x, mean, rs, &p[n.gain.clone()], dyr, dxr, dgain, dbias, tmp);
    }
}

/// Two disjoint ranges of one slice, mutably.
fn two_mut(v: &mut [f32], a: std::ops::Range<usize>, b: std::ops::Range<usize>) -> (&mut [f32], &mut [f32]) {
    assert!(a.end <= b.start, "ranges in order and disjoint");
    let (lo, hi) = v.split_at_mut(b.start);
    (&mut lo[a], &mut hi[..b.end - b.start])
}

/// `y = LN(x)·g + b` over one row, returning (mean, 1/σ): the mean, then the
/// biased variance (two passes), ε = 1e-5.
#[inline(always)]
fn ln_forward<A: Arith>(a: A, x: &[f32], g: &[f32], b: &[f32], y: &mut [f32]) -> (f32, f32) {
    let n = x.len();
    let full = n - n % LANES;
    let mut acc = a.splat(0.0);
    for j in (0..full).step_by(LANES) {
        acc = acc.add(a.load(&x[j..]));
    }
    let mean = x[full..].iter().fold(acc.hsum(), |s, v| s + v) / n as f32;
    let m = a.splat(mean);
    let mut acc = a.splat(0.0);
    for j in (0..full).step_by(LANES) {
        let dv = a.load(&x[j..]).sub(m);
        acc = dv.madd(dv, acc);
    }
    let var = x[full..].iter().fold(acc.hsum(), |s, v| s + (v - mean) * (v - mean)) / n as f32;
    let rs = 1.0 / (var + LN_EPS).sqrt();
    let r = a.splat(rs);
    for j in (0..full).step_by(LANES) {
        a.load(&x[j..]).sub(m).mul(r).madd(a.load(&g[j..]), a.load(&b[j..])).store(&mut y[j..]);
    }
    for j in full..n {
        y[j] = (x[j] - mean) * rs * g[j] + b[j];
    }
    (mean, rs)
}

/// [`ln_forward`] over every row of `x` (`[rows][D]`, `D = g.len()`) into
/// `y`, with each row's (mean, 1/σ) in `stats` `[rows][2]`.
#[inline(always)]
fn ln_forward_rows<A: Arith>(a: A, x: &[f32], g: &[f32], b: &[f32], y: &mut [f32], stats: &mut [f32]) {
    let d = g.len();
    for ((xr, yr), st) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)).zip(stats.chunks_exact_mut(2)) {
        let (mean, rs) = ln_forward::<A>(a, xr, g, b, yr);
        st[0] = mean;
        st[1] = rs;
    }
}

/// LayerNorm's backward over one row: with `x̂ = (x − μ)/σ` and
/// `e = dy ⊙ g`, `dx += (e − mean(e) − x̂·mean(e ⊙ x̂)) / σ`, `dg += dy ⊙ x̂`,
/// `db += dy`. `xh` is scratch of the row's length.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn ln_backward<A: Arith>(
    a: A,
    x: &[f32],
    mean: f32,
    rs: f32,
    g: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dg: &mut [f32],
    db: &mut [f32],
    xh: &mut [f32],
) {
    let n = x.len();
    let full = n - n % LANES;
    let (m, r) = (a.splat(mean), a.splat(rs));
    let (mut s1, mut s2) = (a.splat(0.0), a.splat(0.0));
    for j in (0..full).step_by(LANES) {
        let xhat = a.load(&x[j..]).sub(m).mul(r);
        xhat.store(&mut xh[j..]);
        let dyv = a.load(&dy[j..]);
        let e = dyv.mul(a.load(&g[j..]));
        s1 = s1.add(e);
        s2 = e.madd(xhat, s2);
        dyv.madd(xhat, a.load(&dg[j..])).store(&mut dg[j..]);
        dyv.add(a.load(&db[j..])).store(&mut db[j..]);
    }
    let (mut t1, mut t2) = (s1.hsum(), s2.hsum());
    for j in full..n {
        let xhat = (x[j] - mean) * rs;
        xh[j] = xhat;
        let e = dy[j] * g[j];
        t1 += e;
        t2 += e * xhat;
        dg[j] += dy[j] * xhat;
        db[j] += dy[j];
    }
    let (m1, m2) = (t1 / n as f32, t2 / n as f32);
    let (vm1, vm2) = (a.splat(m1), a.splat(m2));
    for j in (0..full).step_by(LANES) {
        let e = a.load(&dy[j..]).mul(a.load(&g[j..]));
        let xhat = a.load(&xh[j..]);
        let v = e.sub(vm1).sub(xhat.mul(vm2)).mul(r);
        a.load(&dx[j..]).add(v).store(&mut dx[j..]);
    }
    for j in full..n {
        dx[j] += (dy[j] * g[j] - m1 - xh[j] * m2) * rs;
    }
}

/// `GELU'(x) = Φ(x) + x·φ(x)`.
#[inline(always)]
fn gelu_grad<V: Vector>(x: V) -> V {
    let tok = x.token();
    let cdf =
        V::splat(tok, 0.5).mul(V::splat(tok, 1.0).add(erf(x.mul(V::splat(tok, std::f32::consts::FRAC_1_SQRT_2)))));
    let pdf = exp(x.mul(x).mul(V::splat(tok, -0.5))).mul(V::splat(tok, 0.398_942_3));
    x.madd(pdf, cdf)
}

/// `dy ← dy ⊙ GELU'(x)`, element-wise.
#[inline(always)]
fn gelu_backward<A: Arith>(a: A, x: &[f32], dy: &mut [f32]) {
    let n = x.len();
    let full = n - n % LANES;
    for j in (0..full).step_by(LANES) {
        a.load(&dy[j..]).mul(gelu_grad(a.load(&x[j..]))).store(&mut dy[j..]);
    }
    for j in full..n {
        dy[j] *= gelu_grad(a.one(x[j])).hsum();
    }
}

/// `y += x`, element-wise.
#[inline(always)]
fn add_to<A: Arith>(a: A, y: &mut [f32], x: &[f32]) {
    let n = y.len();
    let full = n - n % LANES;
    for j in (0..full).step_by(LANES) {
        a.load(&y[j..]).add(a.load(&x[j..])).store(&mut y[j..]);
    }
    for j in full..n {
        y[j] += x[j];
    }
}

/// `out[j] += Σ_r x[r][j]` over the rows of `x` (`[rows][out.len()]`, contiguous).
#[inline(always)]
fn add_rows<A: Arith>(a: A, x: &[f32], width: usize, out: &mut [f32]) {
    add_rows_strided::<A>(a, x, x.len() / width, width, out);
}

/// `out[j] += Σ_r x[r·ld + j]` for `rows` rows: up to four vectors of columns
/// at a time, summed in registers down all rows, then one scalar pass for the
/// columns past the last whole vector.
#[inline(always)]
fn add_rows_strided<A: Arith>(a: A, x: &[f32], rows: usize, ld: usize, out: &mut [f32]) {
    let w = out.len();
    let mut c0 = 0;
    while c0 + LANES <= w {
        let nv = ((w - c0) / LANES).min(4);
        let mut acc = [a.splat(0.0); 4];
        for r in 0..rows {
            let row = &x[r * ld + c0..r * ld + c0 + nv * LANES];
            for (v, acc) in acc[..nv].iter_mut().enumerate() {
                *acc = acc.add(a.load(&row[v * LANES..]));
            }
        }
        for (v, acc) in acc[..nv].iter().enumerate() {
            let o = &mut out[c0 + v * LANES..];
            a.load(o).add(*acc).store(o);
        }
        c0 += nv * LANES;
    }
    for j in c0..w {
        out[j] += (0..rows).map(|r| x[r * ld + j]).sum::<f32>();
    }
}

/// `out[c][i] = x[i][c]` for `i < rows`, `c < cols` (`x` rows `ld` apart, `out` rows `rows` long).
#[inline(always)]
fn transpose(x: &[f32], rows: usize, cols: usize, ld: usize, out: &mut [f32]) {
    let x = &x[..(rows - 1) * ld + cols];
    for (c, o) in out[..cols * rows].chunks_exact_mut(rows).enumerate() {
        for (i, v) in o.iter_mut().enumerate() {
            *v = x[i * ld + c];
        }
    }
}

/// The softmax's backward down the columns of transposed score matrices
/// (`p`, `ds` `[rows][ld]`, `ld = sum.len()`, a multiple of 16): `ds` holds
/// `dP` and becomes `dS = P ⊙ (dP − Σ_j P⊙dP)`; `dbias += dS`; then
/// `ds ← dS · scale`, the gradient of the unscaled `q·k`.
#[inline(always)]
fn softmax_backward_columns<A: Arith>(a: A, p: &[f32], ds: &mut [f32], sum: &mut [f32], dbias: &mut [f32], scale: f32) {
    let ld = sum.len();
    let rows = ds.len() / ld;
    sum.fill(0.0);
    for r in 0..rows {
        for c in (0..ld).step_by(LANES) {
            let i = r * ld + c;
            a.load(&p[i..]).madd(a.load(&ds[i..]), a.load(&sum[c..])).store(&mut sum[c..]);
        }
    }
    let sc = a.splat(scale);
    for r in 0..rows {
        for c in (0..ld).step_by(LANES) {
            let i = r * ld + c;
            let v = a.load(&p[i..]).mul(a.load(&ds[i..]).sub(a.load(&sum[c..])));
            a.load(&dbias[i..]).add(v).store(&mut dbias[i..]);
            v.mul(sc).store(&mut ds[i..]);
        }
    }
}
