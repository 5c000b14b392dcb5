//! The posterior model's CPU engine: a streaming forward pass that computes
//! each round's tokens once, as soon as their windows are complete.
//!
//! When round `r` arrives, its tokens are embedded and get layer 0's keys and
//! values; layer `l` then finishes every round whose window (up to `ahead`
//! rounds later) has its keys, and hands it to layer `l + 1`; the head reads
//! a round's edges once the last layer has finished it. So an edge's logit
//! is known `layers · ahead` rounds after its anchor's round, and a round's
//! work is one round's tokens through every layer. When the final round has
//! arrived, the rounds still waiting finish with the windows they have.
//!
//! Linear maps run on transposed weights (rows of the output accumulate
//! scaled weight rows), attention handles all heads of a token at once, and
//! GELU and softmax use f32 polynomial `exp`/`erf`; the loops are compiled
//! for AVX-512 and AVX2 as well and chosen at run time.

use kernels::Isa;

use crate::posterior::{FEATURES, Geometry, Neighbor, PosteriorModel};

/// One layer's weights, transposed for row-accumulating products.
#[derive(Clone, Debug)]
struct Layer {
    ln1: (Vec<f32>, Vec<f32>),
    /// `[D, 3D]`: q, k and v side by side.
    wqkv_t: Vec<f32>,
    bqkv: Vec<f32>,
    wo_t: Vec<f32>,
    bo: Vec<f32>,
    /// `[cells, H]`: each bias cell's per-head values.
    rel_t: Vec<f32>,
    ln2: (Vec<f32>, Vec<f32>),
    w1_t: Vec<f32>,
    b1: Vec<f32>,
    w2_t: Vec<f32>,
    b2: Vec<f32>,
}

/// A posterior model's weights laid out for the CPU engine.
#[derive(Clone, Debug)]
pub struct Prepared {
    dim: usize,
    heads: usize,
    ffn: usize,
    ahead: usize,
    boundary_classes: usize,
    classes: usize,
    w_in_t: Vec<f32>,
    b_in: Vec<f32>,
    types: Vec<f32>,
    edge: Vec<f32>,
    layers: Vec<Layer>,
    head_ln: (Vec<f32>, Vec<f32>),
    head_w_t: Vec<f32>,
    head_b: Vec<f32>,
    isa: Isa,
}

/// `[rows, cols]` → `[cols, rows]`.
fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    t
}

impl Prepared {
    /// Lays out `model`'s weights.
    pub fn new(model: &PosteriorModel) -> Self {
        let c = &model.config;
        let (d, f, h) = (c.dim, c.ffn, c.heads);
        let t = |n: &str| model.tensor(n).to_vec();
        let layers = (0..c.layers)
            .map(|l| {
                let p = |n: &str| model.tensor(&format!("layers.{l}.{n}"));
                let mut wqkv = p("attn.wq").to_vec();
                wqkv.extend_from_slice(p("attn.wk"));
                wqkv.extend_from_slice(p("attn.wv"));
                let mut bqkv = p("attn.bq").to_vec();
                bqkv.extend_from_slice(p("attn.bk"));
                bqkv.extend_from_slice(p("attn.bv"));
                Layer {
                    ln1: (p("ln1.weight").to_vec(), p("ln1.bias").to_vec()),
                    wqkv_t: transpose(&wqkv, 3 * d, d),
                    bqkv,
                    wo_t: transpose(p("attn.wo"), d, d),
                    bo: p("attn.bo").to_vec(),
                    rel_t: transpose(p("attn.rel"), h, c.bias_cells()),
                    ln2: (p("ln2.weight").to_vec(), p("ln2.bias").to_vec()),
                    w1_t: transpose(p("ffn.w1"), f, d),
                    b1: p("ffn.b1").to_vec(),
                    w2_t: transpose(p("ffn.w2"), d, f),
                    b2: p("ffn.b2").to_vec(),
                }
            })
            .collect();
        Self {
            dim: d,
            heads: h,
            ffn: f,
            ahead: c.ahead,
            boundary_classes: c.boundary_classes,
            classes: c.classes.len(),
            w_in_t: transpose(model.tensor("embed.w_in"), d, FEATURES.len()),
            b_in: t("embed.b_in"),
            types: t("embed.type"),
            edge: t("embed.edge"),
            layers,
            head_ln: (t("head.ln.weight"), t("head.ln.bias")),
            head_w_t: transpose(model.tensor("head.w"), c.classes.len(), d),
            head_b: t("head.b"),
            isa: Isa::detect(),
        }
    }
}

/// A geometry's per-round bookkeeping.
#[derive(Clone, Debug)]
pub struct Rounds {
    /// Tokens of round `t`: `start[t]..start[t + 1]` (tokens are in round order).
    start: Vec<usize>,
    /// Edges anchored in round `t`, by index.
    edges: Vec<Vec<u32>>,
}

impl Rounds {
    /// Reads a geometry.
    pub fn new(g: &Geometry) -> Self {
        let mut start = vec![0; g.num_rounds + 1];
        for &(t, _) in &g.tokens {
            start[t as usize + 1] += 1;
        }
        for t in 0..g.num_rounds {
            start[t + 1] += start[t];
        }
        let mut edges = vec![Vec::new(); g.num_rounds];
        for (e, &(token, _)) in g.edge_slots.iter().enumerate() {
            edges[g.tokens[token as usize].0 as usize].push(e as u32);
        }
        for list in &mut edges {
            list.sort_by_key(|&e| g.edge_slots[e as usize].0);
        }
        Self { start, edges }
    }

    fn tokens(&self, t: usize) -> std::ops::Range<usize> {
        self.start[t]..self.start[t + 1]
    }
}

/// One shot's state in the engine; reusable across shots.
#[derive(Clone, Debug, Default)]
pub struct Stream {
    /// Per level 0..=L, `[N, D]` token states.
    z: Vec<Vec<f32>>,
    /// Per layer, `[N, 3D]` queries, keys and values.
    qkv: Vec<Vec<f32>>,
    /// Per layer, how many rounds have keys; how many are finished.
    keyed: Vec<usize>,
    finished: Vec<usize>,
    /// Rounds whose edges have logits.
    read: usize,
    arrived: usize,
    a: Vec<f32>,
    o: Vec<f32>,
    h: Vec<f32>,
    scores: Vec<f32>,
    /// Edge logits, in the geometry's edge order.
    pub logits: Vec<f32>,
}

impl Stream {
    /// Starts a shot.
    pub fn reset(&mut self, p: &Prepared, g: &Geometry) {
        let (n, d) = (g.num_tokens(), p.dim);
        let levels = p.layers.len() + 1;
        self.z.resize_with(levels, Vec::new);
        for z in &mut self.z {
            z.resize(n * d, 0.0);
        }
        self.qkv.resize_with(p.layers.len(), Vec::new);
        for q in &mut self.qkv {
            q.resize(n * 3 * d, 0.0);
        }
        self.keyed = vec![0; p.layers.len()];
        self.finished = vec![0; p.layers.len()];
        self.read = 0;
        self.arrived = 0;
        self.logits.clear();
        self.logits.resize(g.edge_slots.len(), 0.0);
        self.a.resize(d.max(p.classes), 0.0);
        self.o.resize(d, 0.0);
        self.h.resize(p.ffn, 0.0);
    }

    /// Rounds pushed so far.
    pub fn rounds_arrived(&self) -> usize {
        self.arrived
    }

    /// Takes round `t = rounds arrived so far` of the shot: `events` are the
    /// detectors of that round that fired. Computes everything that has
    /// become computable; after the final round, everything.
    pub fn push_round(&mut self, p: &Prepared, g: &Geometry, rounds: &Rounds, events: impl IntoIterator<Item = usize>) {
        let t = self.arrived;
        assert!(t < g.num_rounds, "the shot has only {} rounds", g.num_rounds);
        let d = p.dim;
        // Embedding.
        let last = g.num_rounds - 1;
        for k in rounds.tokens(t) {
            let z = &mut self.z[0][k * d..(k + 1) * d];
            z.copy_from_slice(&p.b_in);
            let ty = g.token_type[k] as usize;
            add(z, &p.types[ty * d..(ty + 1) * d]);
            for (e, &class) in g.token_boundary[k].iter().enumerate() {
                let at = (e * p.boundary_classes + class as usize) * d;
                add(z, &p.edge[at..at + d]);
            }
            // Features: event (set below), is_first, is_final.
            if t == 0 {
                add(z, &p.w_in_t[d..2 * d]);
            }
            if t == last {
                add(z, &p.w_in_t[2 * d..3 * d]);
            }
        }
        for det in events {
            let k = g.token_of_detector[det] as usize;
            debug_assert_eq!(g.tokens[k].0 as usize, t, "detector {det} is not of round {t}");
            add(&mut self.z[0][k * d..(k + 1) * d], &p.w_in_t[..d]);
        }
        self.arrived += 1;
        self.advance(p, g, rounds);
    }

    fn advance(&mut self, p: &Prepared, g: &Geometry, rounds: &Rounds) {
        let last = g.num_rounds - 1;
        let layers = p.layers.len();
        loop {
            let mut progressed = false;
            for l in 0..layers {
                let available = if l == 0 { self.arrived } else { self.finished[l - 1] };
                while self.keyed[l] < available {
                    self.key_round(p, l, rounds.tokens(self.keyed[l]));
                    self.keyed[l] += 1;
                    progressed = true;
                }
                while self.finished[l] < g.num_rounds && self.keyed[l] > (self.finished[l] + p.ahead).min(last) {
                    self.finish_round(p, g, l, rounds.tokens(self.finished[l]));
                    self.finished[l] += 1;
                    progressed = true;
                }
            }
            while self.read < self.finished[layers - 1] {
                self.read_round(p, g, rounds, self.read);
                self.read += 1;
                progressed = true;
            }
            if !progressed {
                return;
            }
        }
    }

    /// Layer `l`'s queries, keys and values for `tokens`.
    fn key_round(&mut self, p: &Prepared, l: usize, tokens: std::ops::Range<usize>) {
        let d = p.dim;
        let layer = &p.layers[l];
        for k in tokens {
            layer_norm(&self.z[l][k * d..(k + 1) * d], &layer.ln1.0, &layer.ln1.1, &mut self.a[..d]);
            p.isa.linear(&self.a[..d], &layer.wqkv_t, &layer.bqkv, &mut self.qkv[l][k * 3 * d..(k + 1) * 3 * d]);
        }
    }

    /// Layer `l`'s attention and feed-forward for `tokens`, into level `l + 1`.
    fn finish_round(&mut self, p: &Prepared, g: &Geometry, l: usize, tokens: std::ops::Range<usize>) {
        let (d, heads) = (p.dim, p.heads);
        let width = d / heads;
        let scale = 1.0 / (width as f32).sqrt();
        let layer = &p.layers[l];
        let (below, above) = self.z.split_at_mut(l + 1);
        let (z_in, z_out) = (&below[l], &mut above[0]);
        let qkv = &self.qkv[l];
        for k in tokens {
            let nb = &g.neighbors[k];
            let q = &qkv[k * 3 * d..k * 3 * d + d];
            self.scores.clear();
            self.scores.resize(nb.len() * heads, 0.0);
            p.isa.scores(q, qkv, nb, &layer.rel_t, heads, scale, &mut self.scores);
            for h in 0..heads {
                p.isa.softmax(&mut self.scores[h * nb.len()..(h + 1) * nb.len()]);
            }
            let o = &mut self.o[..d];
            p.isa.mix(&self.scores, qkv, nb, heads, o);
            let z = &mut z_out[k * d..(k + 1) * d];
            p.isa.linear(o, &layer.wo_t, &layer.bo, z);
            add(z, &z_in[k * d..(k + 1) * d]);
            layer_norm(z, &layer.ln2.0, &layer.ln2.1, &mut self.a[..d]);
            p.isa.linear(&self.a[..d], &layer.w1_t, &layer.b1, &mut self.h);
            p.isa.gelu(&mut self.h);
            let hidden = std::mem::take(&mut self.h);
            p.isa.linear_add(&hidden, &layer.w2_t, &layer.b2, z);
            self.h = hidden;
        }
    }

    /// The head's logits for the edges anchored in round `t`.
    fn read_round(&mut self, p: &Prepared, g: &Geometry, rounds: &Rounds, t: usize) {
        let d = p.dim;
        let z = &self.z[p.layers.len()];
        let mut last_token = u32::MAX;
        let mut out = vec![0.0; p.classes];
        for &e in &rounds.edges[t] {
            let (token, class) = g.edge_slots[e as usize];
            if token != last_token {
                let k = token as usize;
                layer_norm(&z[k * d..(k + 1) * d], &p.head_ln.0, &p.head_ln.1, &mut self.a[..d]);
                p.isa.linear(&self.a[..d], &p.head_w_t, &p.head_b, &mut out);
                last_token = token;
            }
            self.logits[e as usize] = out[class as usize];
        }
    }
}

fn add(y: &mut [f32], x: &[f32]) {
    y.iter_mut().zip(x).for_each(|(a, b)| *a += b);
}

/// LayerNorm over one row, ε = 1e-5.
fn layer_norm(x: &[f32], g: &[f32], b: &[f32], y: &mut [f32]) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let inv = 1.0 / (var + 1e-5).sqrt();
    for j in 0..x.len() {
        y[j] = (x[j] - mean) * inv * g[j] + b[j];
    }
}

/// e^x in f32 for x ≤ 88, about 1e-6 relative: 2^n · e^r, |r| ≤ ln2/2,
/// degree-7 Taylor.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * std::f32::consts::LN_2;
    let mut poly = 1.0 / 5040.0;
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        poly = poly * r + c;
    }
    poly * f32::from_bits(shifted.to_bits().wrapping_add(127) << 23)
}

/// The exact GELU, x·Φ(x), with erf from Abramowitz and Stegun 7.1.26
/// (absolute error below 1.5e-7).
#[inline(always)]
fn gelu_f32(x: f32) -> f32 {
    let z = (x * std::f32::consts::FRAC_1_SQRT_2).abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let erf = (1.0 - poly * exp_f32(-z * z)).copysign(x);
    0.5 * x * (1.0 + erf)
}

/// The vector loops, compiled per instruction set.
macro_rules! kernels {
    ($module:ident, $($feature:literal),*) => {
        mod $module {
            use super::*;

            $(#[target_feature(enable = $feature)])*
            pub unsafe fn linear(x: &[f32], w_t: &[f32], b: &[f32], y: &mut [f32]) {
                y.fill(0.0);
                // SAFETY: the caller's features are this function's.
                unsafe { linear_add(x, w_t, b, y) }
            }

            $(#[target_feature(enable = $feature)])*
            pub unsafe fn linear_add(x: &[f32], w_t: &[f32], b: &[f32], y: &mut [f32]) {
                let out = y.len();
                for (yj, bj) in y.iter_mut().zip(b) {
                    *yj += bj;
                }
                for (i, &xi) in x.iter().enumerate() {
                    for (yj, wj) in y.iter_mut().zip(&w_t[i * out..(i + 1) * out]) {
                        *yj += xi * wj;
                    }
                }
            }

            $(#[target_feature(enable = $feature)])*
            pub unsafe fn gelu(x: &mut [f32]) {
                for v in x.iter_mut() {
                    *v = gelu_f32(*v);
                }
            }

            $(#[target_feature(enable = $feature)])*
            pub unsafe fn softmax(x: &mut [f32]) {
                // Sixteen lanes of partial maxima and sums, so that the
                // reductions vectorise.
                let mut lanes = [f32::NEG_INFINITY; 16];
                let mut chunks = x.chunks_exact(16);
                for c in &mut chunks {
                    for (l, v) in lanes.iter_mut().zip(c) {
                        *l = if *v > *l { *v } else { *l };
                    }
                }
                let max = chunks.remainder().iter().chain(&lanes).fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
                let mut sums = [0f32; 16];
                let mut chunks = x.chunks_exact_mut(16);
                for c in &mut chunks {
                    for (s, v) in sums.iter_mut().zip(c.iter_mut()) {
                        *v = exp_f32(*v - max);
                        *s += *v;
                    }
                }
                let mut total: f32 = sums.iter().sum();
                for v in chunks.into_remainder() {
                    *v = exp_f32(*v - max);
                    total += *v;
                }
                let inv = 1.0 / total;
                for v in x.iter_mut() {
                    *v *= inv;
                }
            }

            /// `scores[h·n + i] = q_h·k_{i,h}·scale + bias`, for every head h
            /// and neighbour i: elementwise products across the whole width,
            /// then one short sum per head.
            $(#[target_feature(enable = $feature)])*
            pub unsafe fn scores(
                q: &[f32],
                qkv: &[f32],
                neighbors: &[Neighbor],
                rel_t: &[f32],
                heads: usize,
                scale: f32,
                out: &mut [f32],
            ) {
                let d = q.len();
                let width = d / heads;
                let n = neighbors.len();
                let mut prod = [0f32; 256];
                for (i, m) in neighbors.iter().enumerate() {
                    let key = &qkv[m.token as usize * 3 * d + d..][..d];
                    for ((p, a), b) in prod[..d].iter_mut().zip(q).zip(key) {
                        *p = a * b;
                    }
                    let bias = &rel_t[m.cell as usize * heads..][..heads];
                    for h in 0..heads {
                        let mut acc = 0.0;
                        for v in &prod[h * width..(h + 1) * width] {
                            acc += v;
                        }
                        out[h * n + i] = acc * scale + bias[h];
                    }
                }
            }

            /// `o += Σ_i w[h·n + i] · v_{i,h}` over neighbours, all heads at once.
            $(#[target_feature(enable = $feature)])*
            pub unsafe fn mix(weights: &[f32], qkv: &[f32], neighbors: &[Neighbor], heads: usize, o: &mut [f32]) {
                let d = o.len();
                let width = d / heads;
                let n = neighbors.len();
                let mut scale = [0f32; 256];
                o.fill(0.0);
                for (i, m) in neighbors.iter().enumerate() {
                    for h in 0..heads {
                        let w = weights[h * n + i];
                        scale[h * width..(h + 1) * width].fill(w);
                    }
                    let value = &qkv[m.token as usize * 3 * d + 2 * d..][..d];
                    for ((oi, vi), si) in o.iter_mut().zip(value).zip(&scale[..d]) {
                        *oi += si * vi;
                    }
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
kernels!(avx512, "avx512f");
#[cfg(target_arch = "x86_64")]
kernels!(avx2, "avx2", "fma");
kernels!(plain,);

/// The engine's loops on an instruction set.
trait Loops {
    fn linear(self, x: &[f32], w_t: &[f32], b: &[f32], y: &mut [f32]);
    fn linear_add(self, x: &[f32], w_t: &[f32], b: &[f32], y: &mut [f32]);
    fn gelu(self, x: &mut [f32]);
    fn softmax(self, x: &mut [f32]);
    #[allow(clippy::too_many_arguments)]
    fn scores(
        self,
        q: &[f32],
        qkv: &[f32],
        neighbors: &[Neighbor],
        rel_t: &[f32],
        heads: usize,
        scale: f32,
        out: &mut [f32],
    );
    fn mix(self, weights: &[f32], qkv: &[f32], neighbors: &[Neighbor], heads: usize, o: &mut [f32]);
}

impl Loops for Isa {
    fn linear(self, x: &[f32], w_t: &[f32], b: &[f32], y: &mut [f32]) {
        kernels::dispatch_isa!(self, linear(x, w_t, b, y))
    }

    fn linear_add(self, x: &[f32], w_t: &[f32], b: &[f32], y: &mut [f32]) {
        kernels::dispatch_isa!(self, linear_add(x, w_t, b, y))
    }

    fn gelu(self, x: &mut [f32]) {
        kernels::dispatch_isa!(self, gelu(x))
    }

    fn softmax(self, x: &mut [f32]) {
        kernels::dispatch_isa!(self, softmax(x))
    }

    #[allow(clippy::too_many_arguments)]
    fn scores(
        self,
        q: &[f32],
        qkv: &[f32],
        neighbors: &[Neighbor],
        rel_t: &[f32],
        heads: usize,
        scale: f32,
        out: &mut [f32],
    ) {
        kernels::dispatch_isa!(self, scores(q, qkv, neighbors, rel_t, heads, scale, out))
    }

    fn mix(self, weights: &[f32], qkv: &[f32], neighbors: &[Neighbor], heads: usize, o: &mut [f32]) {
        kernels::dispatch_isa!(self, mix(weights, qkv, neighbors, heads, o))
    }
}

impl Prepared {
    /// Runs a whole shot (detector indices `events`) and leaves every edge's
    /// logit in `stream.logits`.
    pub fn shot(&self, g: &Geometry, rounds: &Rounds, events: impl IntoIterator<Item = usize>, stream: &mut Stream) {
        stream.reset(self, g);
        let mut by_round: Vec<Vec<usize>> = vec![Vec::new(); g.num_rounds];
        for det in events {
            by_round[g.tokens[g.token_of_detector[det] as usize].0 as usize].push(det);
        }
        for round in by_round {
            stream.push_round(self, g, rounds, round);
        }
    }

    /// Forces an instruction set (tests compare them).
    pub fn with_isa(mut self, isa: Isa) -> Self {
        self.isa = isa;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_math_is_accurate() {
        let mut worst_exp = 0f32;
        let mut worst_gelu = 0f64;
        for i in 0..100_000 {
            let x = -30.0 + 60.0 * i as f32 / 100_000.0;
            worst_exp = worst_exp.max((exp_f32(x) - x.exp()).abs() / x.exp());
            let exact = kernels::reference::gelu(x as f64);
            worst_gelu = worst_gelu.max((gelu_f32(x) as f64 - exact).abs());
        }
        assert!(worst_exp < 2e-6, "exp: {worst_exp:e}");
        assert!(worst_gelu < 1e-5, "gelu: {worst_gelu:e}");
    }
}
