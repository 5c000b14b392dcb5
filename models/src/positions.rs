//! How the model knows where each stabilizer sits (docs/model.md §Positions).
//!
//! A per-stabilizer model learns one embedding per stabilizer and one S×S
//! attention bias per head and layer, so its weights fit one distance only.
//! A relative model learns
//! - an embedding per stabilizer type (X, Z) and, for each of the four
//!   boundaries, an embedding per distance class to that boundary
//!   (0, 1, …, C−1, the last one meaning "C−1 or more");
//! - per head and layer, a bias table indexed by the types of the two
//!   stabilizers and their displacement (dx, dy) in lattice steps, each
//!   clipped to ±K.
//!
//! Both expand, for a given layout, to the same `embed.stab` `[S, D]` and
//! `attn.bias` `[H, S, S]` tensors, so the inference kernels see one contract.
//! [`PositionIndex`] holds the expansion's gather indices for one layout; the
//! tch model uses the same indices, so training and inference agree exactly.

use simulator_bridge::layout::StabilizerType;

use crate::checkpoint::ModelLayout;

/// The four boundaries, in the order of `embed.edge`'s first axis.
pub const EDGES: [&str; 4] = ["left", "right", "top", "bottom"];

/// Type pairs in `attn.rel`: (type of the attending stabilizer, type of the attended one).
pub const TYPE_PAIRS: usize = 4;

/// Gather indices that expand relative position tensors for one layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PositionIndex {
    /// Per stabilizer, its type: 0 for X, 1 for Z.
    pub types: Vec<usize>,
    /// Per boundary (in [`EDGES`] order) and stabilizer, its distance class.
    pub edges: [Vec<usize>; 4],
    /// Per ordered pair (i, j), row-major `[S, S]`, its cell in one head's
    /// `[4, 2K+1, 2K+1]` table: `(pair, dy + K, dx + K)`.
    pub pairs: Vec<usize>,
    /// K.
    pub max_offset: usize,
    /// C.
    pub edge_classes: usize,
}

impl PositionIndex {
    /// The indices of `layout`'s stabilizers. Stim places the stabilizers of
    /// the distance-d rotated code at even coordinates in `[0, 2d]`, one
    /// lattice step apart every 2 units.
    pub fn new(layout: &ModelLayout, max_offset: usize, edge_classes: usize) -> Self {
        let span = 2.0 * layout.distance as f64;
        let stabs = &layout.stabilizers;
        let class = |units: f64| ((units / 2.0).round().max(0.0) as usize).min(edge_classes - 1);
        let types: Vec<usize> = stabs.iter().map(|s| usize::from(s.kind == StabilizerType::Z)).collect();
        let edges = [
            stabs.iter().map(|s| class(s.x)).collect(),
            stabs.iter().map(|s| class(span - s.x)).collect(),
            stabs.iter().map(|s| class(s.y)).collect(),
            stabs.iter().map(|s| class(span - s.y)).collect(),
        ];
        let k = max_offset as i64;
        let side = 2 * max_offset + 1;
        let step = |from: f64, to: f64| (((to - from) / 2.0).round() as i64).clamp(-k, k) + k;
        let mut pairs = Vec::with_capacity(stabs.len() * stabs.len());
        for (i, a) in stabs.iter().enumerate() {
            for (j, b) in stabs.iter().enumerate() {
                let pair = types[i] * 2 + types[j];
                pairs.push((pair * side + step(a.y, b.y) as usize) * side + step(a.x, b.x) as usize);
            }
        }
        Self { types, edges, pairs, max_offset, edge_classes }
    }

    /// S.
    pub fn num_stabilizers(&self) -> usize {
        self.types.len()
    }

    /// Cells per head in `attn.rel`: `4 · (2K+1)²`.
    pub fn table_len(&self) -> usize {
        let side = 2 * self.max_offset + 1;
        TYPE_PAIRS * side * side
    }

    /// `embed.stab` `[S, D]` from `embed.type` `[2, D]` and `embed.edge` `[4, C, D]`.
    pub fn stabilizer_embedding(&self, types: &[f32], edges: &[f32], width: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.num_stabilizers() * width);
        for s in 0..self.num_stabilizers() {
            let start = out.len();
            out.extend_from_slice(&types[self.types[s] * width..][..width]);
            for (e, classes) in self.edges.iter().enumerate() {
                let row = &edges[(e * self.edge_classes + classes[s]) * width..][..width];
                for (o, v) in out[start..].iter_mut().zip(row) {
                    *o += v;
                }
            }
        }
        out
    }

    /// `attn.bias` `[H, S, S]` from `attn.rel` `[H, 4, 2K+1, 2K+1]`.
    pub fn attention_bias(&self, rel: &[f32], heads: usize) -> Vec<f32> {
        let cells = self.table_len();
        (0..heads).flat_map(|h| self.pairs.iter().map(move |&p| rel[h * cells + p])).collect()
    }

    /// The least-squares inverse of [`Self::stabilizer_embedding`]: the type
    /// and edge embeddings whose expansion is closest to `stab` `[S, D]`
    /// (with a small ridge, so unused classes stay at 0).
    pub fn fit_embedding(&self, stab: &[f32], width: usize) -> (Vec<f32>, Vec<f32>) {
        let c = self.edge_classes;
        let unknowns = 2 + 4 * c;
        // Design matrix rows: which unknowns each stabilizer's embedding sums.
        let rows: Vec<Vec<usize>> = (0..self.num_stabilizers())
            .map(|s| {
                let mut r = vec![self.types[s]];
                r.extend((0..4).map(|e| 2 + e * c + self.edges[e][s]));
                r
            })
            .collect();
        let mut normal = vec![0.0f64; unknowns * unknowns];
        for r in &rows {
            for &a in r {
                for &b in r {
                    normal[a * unknowns + b] += 1.0;
                }
            }
        }
        for u in 0..unknowns {
            normal[u * unknowns + u] += 1e-6;
        }
        let mut solution = vec![0.0f32; unknowns * width];
        for col in 0..width {
            let mut rhs = vec![0.0f64; unknowns];
            for (s, r) in rows.iter().enumerate() {
                for &a in r {
                    rhs[a] += f64::from(stab[s * width + col]);
                }
            }
            let x = solve(normal.clone(), rhs, unknowns);
            for u in 0..unknowns {
                solution[u * width + col] = x[u] as f32;
            }
        }
        let edges = solution.split_off(2 * width);
        (solution, edges)
    }

    /// The least-squares inverse of [`Self::attention_bias`]: each table cell
    /// is the mean of the biases that map to it (0 where none does).
    pub fn fit_bias(&self, bias: &[f32], heads: usize) -> Vec<f32> {
        let cells = self.table_len();
        let pairs = self.pairs.len();
        let mut sum = vec![0.0f64; heads * cells];
        let mut count = vec![0u32; cells];
        for &p in &self.pairs {
            count[p] += 1;
        }
        for h in 0..heads {
            for (k, &p) in self.pairs.iter().enumerate() {
                sum[h * cells + p] += f64::from(bias[h * pairs + k]);
            }
        }
        sum.iter()
            .enumerate()
            .map(|(i, &v)| if count[i % cells] == 0 { 0.0 } else { (v / f64::from(count[i % cells])) as f32 })
            .collect()
    }
}

/// Solves the symmetric positive-definite system `a·x = b` (`n × n`) by
/// Gaussian elimination with partial pivoting.
fn solve(mut a: Vec<f64>, mut b: Vec<f64>, n: usize) -> Vec<f64> {
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs())).expect("n > 0");
        if pivot != col {
            for k in 0..n {
                a.swap(col * n + k, pivot * n + k);
            }
            b.swap(col, pivot);
        }
        let diag = a[col * n + col];
        for row in col + 1..n {
            let f = a[row * n + col] / diag;
            if f != 0.0 {
                for k in col..n {
                    a[row * n + k] -= f * a[col * n + k];
                }
                b[row] -= f * b[col];
            }
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let tail: f64 = (row + 1..n).map(|k| a[row * n + k] * x[k]).sum();
        x[row] = (b[row] - tail) / a[row * n + row];
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use simulator_bridge::Basis;

    #[test]
    fn stim_places_stabilizers_in_the_expected_box() {
        for d in [3, 5, 7] {
            let layout = ModelLayout::for_code(d, Basis::Z).unwrap();
            let span = 2.0 * d as f64;
            for s in &layout.stabilizers {
                assert!((0.0..=span).contains(&s.x) && (0.0..=span).contains(&s.y), "d={d}: {s:?}");
                assert_eq!(s.x % 2.0, 0.0, "{s:?}");
                assert_eq!(s.y % 2.0, 0.0, "{s:?}");
            }
            let index = PositionIndex::new(&layout, 4, 3);
            // Some stabilizers touch each boundary, and the bulk is far from all of them.
            for classes in &index.edges {
                assert!(classes.contains(&0), "d={d}: {:?}", index.edges);
            }
            assert_eq!(index.types.iter().filter(|&&t| t == 1).count(), (d * d - 1) / 2);
            // A stabilizer's displacement to itself is (0, 0).
            let side = 9;
            for i in 0..layout.stabilizers.len() {
                let p = index.pairs[i * layout.stabilizers.len() + i];
                assert_eq!(p % side, 4);
                assert_eq!((p / side) % side, 4);
            }
        }
    }

    #[test]
    fn expansion_and_fit_are_inverse_where_the_fit_is_exact() {
        let layout = ModelLayout::for_code(5, Basis::Z).unwrap();
        let index = PositionIndex::new(&layout, 4, 3);
        let (width, heads) = (3, 2);
        let types: Vec<f32> = (0..2 * width).map(|i| i as f32 * 0.5 - 1.0).collect();
        let edges: Vec<f32> = (0..4 * 3 * width).map(|i| ((i * 7) % 11) as f32 * 0.1).collect();
        let stab = index.stabilizer_embedding(&types, &edges, width);
        let (t2, e2) = index.fit_embedding(&stab, width);
        let again = index.stabilizer_embedding(&t2, &e2, width);
        for (a, b) in stab.iter().zip(&again) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
        let rel: Vec<f32> = (0..heads * index.table_len()).map(|i| (i % 13) as f32).collect();
        let bias = index.attention_bias(&rel, heads);
        assert_eq!(bias.len(), heads * 24 * 24);
        assert_eq!(index.attention_bias(&index.fit_bias(&bias, heads), heads), bias);
    }

    #[test]
    fn one_table_serves_every_distance() {
        // The bias between two stabilizers depends on their types and offset
        // only: the same pair of neighbours gets the same bias at d=3 and d=7.
        let rel: Vec<f32> = (0..PositionIndex::new(&ModelLayout::for_code(3, Basis::Z).unwrap(), 4, 3).table_len())
            .map(|i| i as f32)
            .collect();
        let lookup = |d: usize| {
            let layout = ModelLayout::for_code(d, Basis::Z).unwrap();
            let index = PositionIndex::new(&layout, 4, 3);
            let bias = index.attention_bias(&rel, 1);
            let s = layout.stabilizers.len();
            let mut seen = std::collections::BTreeMap::new();
            for i in 0..s {
                for j in 0..s {
                    let (a, b) = (&layout.stabilizers[i], &layout.stabilizers[j]);
                    let z = |t: StabilizerType| t == StabilizerType::Z;
                    seen.insert(((b.x - a.x) as i64, (b.y - a.y) as i64, z(a.kind), z(b.kind)), bias[i * s + j]);
                }
            }
            seen
        };
        let (small, large) = (lookup(3), lookup(7));
        let mut shared = 0;
        for (key, v) in &small {
            if key.0.abs() <= 4
                && key.1.abs() <= 4
                && let Some(w) = large.get(key)
            {
                shared += 1;
                assert_eq!(v, w, "{key:?}");
            }
        }
        assert!(shared > 20, "only {shared} offsets in common");
    }
}
