//! Element-wise building blocks written once over [`Vector`], all
//! `#[inline(always)]` and branch-free so that they compile inside each
//! instruction-set wrapper.

use crate::simd::{LANES, SHIFT, Vector};
use crate::tile::TileArgs;

/// LayerNorm epsilon (docs/model.md).
pub(crate) const LN_EPS: f32 = 1e-5;

/// An instruction-set build: its vectors (16 lanes, plus one lane for row
/// tails, rounding the same way) and its matrix-product micro-kernel. A value
/// holds the tokens its vectors are built with, so the kernels take one
/// (`a: A`, zero-sized) and build every vector through it.
pub(crate) trait Arith: Copy {
    /// Sixteen lanes.
    type V: Vector;
    /// One lane, same multiply-add rounding as `V`.
    type S: Vector;

    /// The token `V` is built with.
    fn v(self) -> <Self::V as Vector>::Token;
    /// The token `S` is built with.
    fn s(self) -> <Self::S as Vector>::Token;

    /// The first 16 values of `x`.
    #[inline(always)]
    fn load(self, x: &[f32]) -> Self::V {
        Self::V::load(self.v(), x)
    }

    /// `x` in all 16 lanes.
    #[inline(always)]
    fn splat(self, x: f32) -> Self::V {
        Self::V::splat(self.v(), x)
    }

    /// `x` as a one-lane vector.
    #[inline(always)]
    fn one(self, x: f32) -> Self::S {
        Self::S::splat(self.s(), x)
    }

    /// `a·b + c`, rounded like `S`.
    #[inline(always)]
    fn madd(self, a: f32, b: f32, c: f32) -> f32 {
        self.one(a).madd(self.one(b), self.one(c)).hsum()
    }

    /// Panels per tile in full-width products: 1, or 2 where registers allow.
    const WIDE: usize = 1;

    /// The `R`-row, `W`-panel micro-kernel (see `tile.rs`); `W` is 1 or `WIDE`.
    #[inline(always)]
    fn tile<const R: usize, const W: usize>(self, t: &TileArgs, y: &mut [f32]) {
        assert_eq!(W, 1);
        crate::tile::generic::<Self, R>(self, t, y)
    }
}

/// Plain Rust arrays left to the auto-vectoriser, `a·b + c` rounded twice:
/// the portable build on targets other than x86-64 and aarch64.
#[allow(dead_code)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Generic;

impl Arith for Generic {
    type V = crate::simd::Plain16;
    type S = crate::simd::Plain1;
    #[inline(always)]
    fn v(self) {}
    #[inline(always)]
    fn s(self) {}
}

/// Plain Rust arrays with fused multiply-adds: the portable build on aarch64,
/// where FMA is baseline (elsewhere `mul_add` would be a libm call).
#[allow(dead_code)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct GenericFma;

impl Arith for GenericFma {
    type V = crate::simd::Fused16;
    type S = crate::simd::Fused1;
    #[inline(always)]
    fn v(self) {}
    #[inline(always)]
    fn s(self) {}
}

/// SSE2, the x86-64 baseline: the portable build there.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sse2;

#[cfg(target_arch = "x86_64")]
impl Arith for Sse2 {
    type V = crate::simd::Sse16;
    type S = crate::simd::Plain1;
    #[inline(always)]
    fn v(self) {}
    #[inline(always)]
    fn s(self) {}

    #[inline(always)]
    fn tile<const R: usize, const W: usize>(self, t: &TileArgs, y: &mut [f32]) {
        assert_eq!(W, 1);
        crate::tile::x86::sse2::<R>(t, y)
    }
}

/// AVX2 + FMA, with its proof. Instantiated inside `#[target_feature(enable =
/// "avx2,fma")]` functions, so that its vectors' intrinsics inline.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2(pub(crate) crate::Avx2Token);

#[cfg(target_arch = "x86_64")]
impl Arith for Avx2 {
    type V = crate::simd::Avx16;
    type S = crate::simd::Fused1;
    #[inline(always)]
    fn v(self) -> crate::Avx2Token {
        self.0
    }
    #[inline(always)]
    fn s(self) {}

    #[inline(always)]
    fn tile<const R: usize, const W: usize>(self, t: &TileArgs, y: &mut [f32]) {
        assert_eq!(W, 1);
        // SAFETY: `self.0` proves the CPU has AVX2 and FMA (`crate::isa`).
        unsafe { crate::tile::x86::avx2::<R>(t, y) }
    }
}

/// AVX-512F, with its proof. Instantiated inside `#[target_feature(enable =
/// "avx512f,avx2,fma")]` functions.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512(pub(crate) crate::Avx512Token);

#[cfg(target_arch = "x86_64")]
impl Arith for Avx512 {
    type V = crate::simd::Zmm16;
    type S = crate::simd::Fused1;
    #[inline(always)]
    fn v(self) -> crate::Avx512Token {
        self.0
    }
    #[inline(always)]
    fn s(self) {}

    const WIDE: usize = 2;

    #[inline(always)]
    fn tile<const R: usize, const W: usize>(self, t: &TileArgs, y: &mut [f32]) {
        // SAFETY: `self.0` proves the CPU has AVX-512F, AVX2 and FMA (`crate::isa`).
        unsafe { crate::tile::x86::avx512::<R, W>(t, y) }
    }
}

/// `erf(x)`: Eigen's rational approximation `x·P(x²)/Q(x²)` on [-4, 4] (outside,
/// `erf` is ±1 in `f32`). The approximation itself is within 6.5e-8 of erf;
/// evaluated in `f32` the absolute error is below 3.5e-7 with FMA and 4.5e-7
/// without (measured by the tests against the `f64` reference).
#[inline(always)]
pub(crate) fn erf<V: Vector>(x: V) -> V {
    let tok = x.token();
    let x = x.max(V::splat(tok, -4.0)).min(V::splat(tok, 4.0));
    let x2 = x.mul(x);
    let mut p = x2.madd(V::splat(tok, -2.726_142_3e-10), V::splat(tok, 2.770_681_4e-8));
    p = x2.madd(p, V::splat(tok, -2.101_024e-6));
    p = x2.madd(p, V::splat(tok, -5.692_506_4e-5));
    p = x2.madd(p, V::splat(tok, -7.349_906_3e-4));
    p = x2.madd(p, V::splat(tok, -2.954_6e-3));
    p = x2.madd(p, V::splat(tok, -1.609_603_3e-2));
    let mut q = x2.madd(V::splat(tok, -1.456_607_2e-5), V::splat(tok, -2.133_740_6e-4));
    q = x2.madd(q, V::splat(tok, -1.682_827e-3));
    q = x2.madd(q, V::splat(tok, -7.373_329e-3));
    q = x2.madd(q, V::splat(tok, -1.426_473_9e-2));
    x.mul(p).div(q)
}

/// Exact GELU, `x·Φ(x) = x/2·(1 + erf(x/√2))`, written as tch writes it.
#[inline(always)]
pub(crate) fn gelu<V: Vector>(x: V) -> V {
    let tok = x.token();
    x.mul(V::splat(tok, 0.5)).mul(V::splat(tok, 1.0).add(erf(x.mul(V::splat(tok, std::f32::consts::FRAC_1_SQRT_2)))))
}

/// `eˣ` for the softmax (arguments ≤ 0 there): inputs clamped to [-87, 88],
/// `x = n·ln2 + r` with a two-constant Cody–Waite reduction (|r| ≤ ln2/2),
/// `eʳ` by its degree-7 Taylor polynomial (truncation error 5e-9), and `2ⁿ`
/// built in the exponent bits. The rounding of `x·log₂e` to an integer uses the
/// 1.5·2²³ shift, so no `floor` instruction is needed on baseline SSE2.
#[inline(always)]
pub(crate) fn exp<V: Vector>(x: V) -> V {
    const LN2_HI: f32 = 0.693_359_4; // 0.693359375, exact in 9 bits
    const LN2_LO: f32 = -2.121_944_4e-4;
    let tok = x.token();
    let x = x.max(V::splat(tok, -87.0)).min(V::splat(tok, 88.0));
    let t = x.madd(V::splat(tok, std::f32::consts::LOG2_E), V::splat(tok, SHIFT));
    let n = t.sub(V::splat(tok, SHIFT));
    let r = n.madd(V::splat(tok, -LN2_HI), x);
    let r = n.madd(V::splat(tok, -LN2_LO), r);
    let mut p = r.madd(V::splat(tok, 1.0 / 5040.0), V::splat(tok, 1.0 / 720.0));
    p = r.madd(p, V::splat(tok, 1.0 / 120.0));
    p = r.madd(p, V::splat(tok, 1.0 / 24.0));
    p = r.madd(p, V::splat(tok, 1.0 / 6.0));
    p = r.madd(p, V::splat(tok, 0.5));
    p = r.madd(p, V::splat(tok, 1.0));
    p = r.madd(p, V::splat(tok, 1.0));
    p.mul(t.pow2_shifted())
}

/// GELU in place over a slice: whole vectors, then one lane at a time for the
/// tail. (Written out rather than through a generic map taking `gelu` as a
/// closure: the closure's call shim would be compiled without the wrapper's
/// target features.)
#[inline(always)]
pub(crate) fn gelu_slice<A: Arith>(a: A, x: &mut [f32]) {
    let mut chunks = x.chunks_exact_mut(LANES);
    for c in &mut chunks {
        gelu(a.load(c)).store(c);
    }
    for v in chunks.into_remainder() {
        *v = gelu(a.one(*v)).hsum();
    }
}

/// Σ x: vector partial sums, their fixed-order lane sum, then the tail in order.
#[inline(always)]
pub(crate) fn sum<A: Arith>(a: A, x: &[f32]) -> f32 {
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    let mut acc = a.splat(0.0);
    for c in chunks {
        acc = acc.add(a.load(c));
    }
    tail.iter().fold(acc.hsum(), |s, v| s + v)
}

/// `y = LN(x)·g + b` over one row: mean, then biased variance (two passes), ε = 1e-5.
#[inline(always)]
pub(crate) fn layer_norm<A: Arith>(a: A, x: &[f32], g: &[f32], b: &[f32], y: &mut [f32]) {
    let n = x.len();
    let (g, b, y) = (&g[..n], &b[..n], &mut y[..n]);
    let mean = sum::<A>(a, x) / n as f32;
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    let m = a.splat(mean);
    let mut acc = a.splat(0.0);
    for c in chunks {
        let d = a.load(c).sub(m);
        acc = d.madd(d, acc);
    }
    let var = tail.iter().fold(acc.hsum(), |s, v| a.madd(v - mean, v - mean, s)) / n as f32;
    let inv = 1.0 / (var + LN_EPS).sqrt();
    let full = n - n % LANES;
    let iv = a.splat(inv);
    for j in (0..full).step_by(LANES) {
        a.load(&x[j..]).sub(m).mul(iv).madd(a.load(&g[j..]), a.load(&b[j..])).store(&mut y[j..]);
    }
    for i in full..n {
        y[i] = a.madd((x[i] - mean) * inv, g[i], b[i]);
    }
}

/// Softmax down the columns of `st` (`[rows][ld]`, `ld = max.len()`, a
/// multiple of 16): `st ← st·scale + bias`, then for every column `c`,
/// `st[j][c] ← exp(st[j][c] − maxⱼ) / Σⱼ exp(…)` (stable: the column maximum is
/// subtracted). `max` and `sum` are scratch. Column-wise, so every pass is
/// element-wise over whole vectors with no horizontal reduction.
#[inline(always)]
pub(crate) fn softmax_columns<A: Arith>(
    a: A,
    st: &mut [f32],
    bias: &[f32],
    scale: f32,
    max: &mut [f32],
    sum: &mut [f32],
) {
    let ld = max.len();
    debug_assert!(ld.is_multiple_of(LANES) && sum.len() == ld);
    let rows = st.len() / ld;
    let sc = a.splat(scale);
    for j in (0..rows * ld).step_by(LANES) {
        a.load(&st[j..]).madd(sc, a.load(&bias[j..])).store(&mut st[j..]);
    }
    max.copy_from_slice(&st[..ld]);
    for r in 1..rows {
        for c in (0..ld).step_by(LANES) {
            a.load(&st[r * ld + c..]).max(a.load(&max[c..])).store(&mut max[c..]);
        }
    }
    sum.fill(0.0);
    for r in 0..rows {
        for c in (0..ld).step_by(LANES) {
            let e = exp(a.load(&st[r * ld + c..]).sub(a.load(&max[c..])));
            e.store(&mut st[r * ld + c..]);
            a.load(&sum[c..]).add(e).store(&mut sum[c..]);
        }
    }
    for c in (0..ld).step_by(LANES) {
        a.splat(1.0).div(a.load(&sum[c..])).store(&mut sum[c..]);
    }
    for r in 0..rows {
        for c in (0..ld).step_by(LANES) {
            a.load(&st[r * ld + c..]).mul(a.load(&sum[c..])).store(&mut st[r * ld + c..]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;
    use crate::simd::{Fused1, Plain1};

    fn grid(lo: f64, hi: f64, n: usize) -> impl Iterator<Item = f32> {
        (0..=n).map(move |i| (lo + (hi - lo) * i as f64 / n as f64) as f32)
    }

    fn erf_plain(x: f32) -> f32 {
        erf(Plain1(x)).0
    }

    fn erf_fused(x: f32) -> f32 {
        erf(Fused1(x)).0
    }

    #[test]
    fn erf_is_accurate() {
        for (name, f, bound) in [("plain", erf_plain as fn(f32) -> f32, 5e-7), ("fma", erf_fused, 5e-7)] {
            let mut worst = 0.0f64;
            for x in grid(-6.0, 6.0, 400_000) {
                worst = worst.max((f(x) as f64 - reference::erf(x as f64)).abs());
            }
            assert!(worst < bound, "{name}: erf error {worst:e}");
            assert_eq!(f(0.0), 0.0);
            assert!((f(10.0) - 1.0).abs() <= f32::EPSILON && (f(-10.0) + 1.0).abs() <= f32::EPSILON);
        }
    }

    #[test]
    fn gelu_is_accurate() {
        let mut worst_abs = 0.0f64;
        let mut worst_rel = 0.0f64;
        for x in grid(-12.0, 12.0, 200_000) {
            let (got, want) = (gelu(Fused1(x)).0 as f64, reference::gelu(x as f64));
            worst_abs = worst_abs.max((got - want).abs());
            if x > 0.0 {
                worst_rel = worst_rel.max((got - want).abs() / want);
            }
        }
        assert!(worst_abs < 1e-6, "gelu error {worst_abs:e}");
        // For x > 0 the error is a few f32 ulps of the result.
        assert!(worst_rel < 4e-7, "gelu relative error {worst_rel:e}");
    }

    #[test]
    fn exp_is_accurate() {
        for (name, f) in [("plain", (|x| exp(Plain1(x)).0) as fn(f32) -> f32), ("fma", |x| exp(Fused1(x)).0)] {
            let mut worst = 0.0f64;
            for x in grid(-87.0, 88.0, 400_000) {
                let want = (x as f64).exp();
                worst = worst.max((f(x) as f64 - want).abs() / want);
            }
            assert!(worst < 3e-7, "{name}: exp relative error {worst:e}");
            assert_eq!(f(0.0), 1.0);
            assert!(f(-1000.0) >= 0.0 && f(-1000.0) < 1e-37);
            assert!(f(f32::NEG_INFINITY) < 1e-37);
        }
    }

    fn layer_norm_and_softmax<A: Arith>(a: A) {
        for n in [1, 7, 8, 13, 16, 32, 45] {
            let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.7).sin() * 3.0 + 1.0).collect();
            let g: Vec<f32> = (0..n).map(|i| 1.0 + i as f32 * 0.01).collect();
            let b: Vec<f32> = (0..n).map(|i| i as f32 * -0.02).collect();
            let mut y = vec![0.0; n];
            layer_norm::<A>(a, &x, &g, &b, &mut y);
            let nf = n as f64;
            let mean = x.iter().map(|&v| v as f64).sum::<f64>() / nf;
            let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / nf;
            for i in 0..n {
                let want = (x[i] as f64 - mean) / (var + 1e-5).sqrt() * g[i] as f64 + b[i] as f64;
                assert!((y[i] as f64 - want).abs() < 2e-6, "n = {n}, {} vs {want}", y[i]);
            }
            let want: f64 = x.iter().map(|&v| v as f64).sum();
            assert!((sum::<A>(a, &x) as f64 - want).abs() < 1e-5);
        }
        let mut x: Vec<f32> = (0..37).map(|i| i as f32 * 0.37 - 6.0).collect();
        let want: Vec<f64> = x.iter().map(|&v| reference::gelu(v as f64)).collect();
        gelu_slice::<A>(a, &mut x);
        for (g, w) in x.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-6);
        }

        // Column softmax: 3 rows, 16 columns; column 0 holds the interesting values.
        let mut st = vec![0.0f32; 3 * 16];
        let bias = vec![0.5f32; 3 * 16];
        (st[0], st[16], st[32]) = (1000.0, 999.0, -5.0);
        st[17] = f32::NEG_INFINITY;
        let (mut max, mut sum) = (vec![0.0; 16], vec![0.0; 16]);
        softmax_columns::<A>(a, &mut st, &bias, 2.0, &mut max, &mut sum);
        let z = 1.0 + (-2.0f64).exp() + (-2010.0f64).exp();
        assert!((st[0] as f64 - 1.0 / z).abs() < 1e-7);
        assert!((st[16] as f64 - (-2.0f64).exp() / z).abs() < 1e-7);
        assert!(st[32] < 1e-30);
        assert!((st[1] - 0.5).abs() < 1e-7 && st[17] < 1e-30 && (st[33] - 0.5).abs() < 1e-7);
        assert!((st[2] - 1.0 / 3.0).abs() < 1e-7);
    }

    #[test]
    fn layer_norm_gelu_and_column_softmax() {
        layer_norm_and_softmax::<Generic>(Generic);
        #[cfg(target_arch = "x86_64")]
        layer_norm_and_softmax::<Sse2>(Sse2);
        #[cfg(target_arch = "aarch64")]
        layer_norm_and_softmax::<GenericFma>(GenericFma);
    }
}
