//! The matrix-product micro-kernels: an `R`-row block of `W` panels of 16
//! outputs, `y[r][c] (+)= b[c] + Σ_kk x[r][kk]·panel[kk][c]`, kept in
//! registers while the `k × 16` panels stream through (one broadcast per row
//! and input, 16 contiguous weights per panel). Inputs are addressed with two
//! strides (`x[r][kk] = x[r·ldx + kk·ldk]`) so a transposed operand needs no
//! copy; panel rows are `ldw` apart (16 for packed weights, wider when a panel
//! is read in place from a row-major matrix: lanes past `cols` are then
//! computed from whatever follows and discarded).
//!
//! Every output is computed the same way whatever `R` and `W` are (`acc = b`,
//! then one multiply-add per `kk` in order, then the optional residual add),
//! so the result of a row never depends on how rows are grouped into tiles.
//! The AVX2 and AVX-512 kernels both use FMA, in the same order, so they agree
//! bit for bit; SSE2 and the generic kernel round the product separately.

use crate::math::Arith;
use crate::weights::PANEL;

/// Arguments of one tile of `W` panels: `x` starts at the tile's first row
/// (`x[r][kk]` at `r·ldx + kk·ldk`, `k` inputs), panel `p`'s row `kk` at
/// `p·stride + kk·ldw` in `panel`, `bias` holds `16·W` values, `y` starts at
/// the tile's first row and column (row stride `ldy`, `cols` ≤ `16·W` valid
/// columns); `add` adds to `y` instead of storing.
pub(crate) struct TileArgs<'a> {
    pub x: &'a [f32],
    pub ldx: usize,
    pub ldk: usize,
    pub k: usize,
    pub panel: &'a [f32],
    pub ldw: usize,
    pub stride: usize,
    pub bias: &'a [f32],
    pub ldy: usize,
    pub cols: usize,
    pub add: bool,
}

impl TileArgs<'_> {
    /// The bounds every tile relies on.
    #[inline(always)]
    fn check<const R: usize, const W: usize>(&self, y: &[f32]) {
        assert!(R >= 1 && W >= 1 && self.k >= 1 && self.cols >= 1 && self.cols <= W * PANEL);
        assert!(self.x.len() > (R - 1) * self.ldx + (self.k - 1) * self.ldk);
        assert!(self.panel.len() >= (W - 1) * self.stride + (self.k - 1) * self.ldw + PANEL);
        assert!(self.bias.len() >= W * PANEL);
        assert!(y.len() >= (R - 1) * self.ldy + self.cols);
    }
}

/// Plain Rust, for the portable build.
#[inline(always)]
pub(crate) fn generic<A: Arith, const R: usize>(a: A, t: &TileArgs, y: &mut [f32]) {
    t.check::<R, 1>(y);
    let bias: [f32; PANEL] = t.bias[..PANEL].try_into().expect("panel bias");
    let mut acc = [bias; R];
    for kk in 0..t.k {
        let wr: &[f32; PANEL] = t.panel[kk * t.ldw..kk * t.ldw + PANEL].try_into().expect("panel row");
        for (r, accr) in acc.iter_mut().enumerate() {
            let xv = t.x[r * t.ldx + kk * t.ldk];
            for (av, wv) in accr.iter_mut().zip(wr) {
                *av = a.madd(xv, *wv, *av);
            }
        }
    }
    for (r, accr) in acc.iter().enumerate() {
        let out = &mut y[r * t.ldy..r * t.ldy + t.cols];
        for (ov, av) in out.iter_mut().zip(accr) {
            *ov = if t.add { *ov + *av } else { *av };
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// SSE2 (x86-64 baseline): four 4-lane accumulators per row, multiply
    /// then add (no FMA).
    #[inline(always)]
    pub(crate) fn sse2<const R: usize>(t: &TileArgs, y: &mut [f32]) {
        t.check::<R, 1>(y);
        let (xp, wp, yp) = (t.x.as_ptr(), t.panel.as_ptr(), y.as_mut_ptr());
        // SAFETY: SSE2 is baseline on x86-64; the accesses are bounded as in `avx2`.
        unsafe {
            let b: [__m128; 4] = std::array::from_fn(|q| _mm_loadu_ps(t.bias.as_ptr().add(4 * q)));
            let mut acc = [b; R];
            for kk in 0..t.k {
                let w: [__m128; 4] = std::array::from_fn(|q| _mm_loadu_ps(wp.add(kk * t.ldw + 4 * q)));
                for (r, a) in acc.iter_mut().enumerate() {
                    let xv = _mm_set1_ps(*xp.add(r * t.ldx + kk * t.ldk));
                    for q in 0..4 {
                        a[q] = _mm_add_ps(_mm_mul_ps(xv, w[q]), a[q]);
                    }
                }
            }
            for (r, a) in acc.iter().enumerate() {
                let out = yp.add(r * t.ldy);
                if t.cols == PANEL {
                    for (q, v) in a.iter().enumerate() {
                        let v = if t.add { _mm_add_ps(_mm_loadu_ps(out.add(4 * q)), *v) } else { *v };
                        _mm_storeu_ps(out.add(4 * q), v);
                    }
                } else {
                    let mut tmp = [0.0f32; PANEL];
                    for (q, v) in a.iter().enumerate() {
                        _mm_storeu_ps(tmp.as_mut_ptr().add(4 * q), *v);
                    }
                    store_partial(out, &tmp, t.cols, t.add);
                }
            }
        }
    }

    /// AVX2 + FMA: two 8-lane accumulators per row.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn avx2<const R: usize>(t: &TileArgs, y: &mut [f32]) {
        t.check::<R, 1>(y);
        let (xp, wp, yp) = (t.x.as_ptr(), t.panel.as_ptr(), y.as_mut_ptr());
        // SAFETY: `check` bounds every access below: rows r < R at offsets
        // r·ldx + kk·ldk with kk < k in `x`, 16 values at kk·ldw in the panel,
        // and outputs r·ldy + c with c < cols (all 16 only when cols == 16) in `y`.
        unsafe {
            let mut lo = [_mm256_loadu_ps(t.bias.as_ptr()); R];
            let mut hi = [_mm256_loadu_ps(t.bias.as_ptr().add(8)); R];
            for kk in 0..t.k {
                let w0 = _mm256_loadu_ps(wp.add(kk * t.ldw));
                let w1 = _mm256_loadu_ps(wp.add(kk * t.ldw + 8));
                for r in 0..R {
                    let xv = _mm256_set1_ps(*xp.add(r * t.ldx + kk * t.ldk));
                    lo[r] = _mm256_fmadd_ps(xv, w0, lo[r]);
                    hi[r] = _mm256_fmadd_ps(xv, w1, hi[r]);
                }
            }
            for r in 0..R {
                let out = yp.add(r * t.ldy);
                if t.cols == PANEL {
                    let (mut a, mut b) = (lo[r], hi[r]);
                    if t.add {
                        a = _mm256_add_ps(_mm256_loadu_ps(out), a);
                        b = _mm256_add_ps(_mm256_loadu_ps(out.add(8)), b);
                    }
                    _mm256_storeu_ps(out, a);
                    _mm256_storeu_ps(out.add(8), b);
                } else {
                    // Masked: lanes c < cols only (masked-off lanes are not accessed).
                    let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                    let m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(t.cols as i32), idx);
                    let m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(t.cols as i32 - 8), idx);
                    let (mut a, mut b) = (lo[r], hi[r]);
                    if t.add {
                        a = _mm256_add_ps(_mm256_maskload_ps(out, m0), a);
                        b = _mm256_add_ps(_mm256_maskload_ps(out.add(8), m1), b);
                    }
                    _mm256_maskstore_ps(out, m0, a);
                    _mm256_maskstore_ps(out.add(8), m1, b);
                }
            }
        }
    }

    /// AVX-512F: `W` 16-lane accumulators per row (`W = 2` gives 16
    /// independent accumulators for 8 rows, enough to hide the FMA latency).
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(crate) fn avx512<const R: usize, const W: usize>(t: &TileArgs, y: &mut [f32]) {
        t.check::<R, W>(y);
        let (xp, wp, yp) = (t.x.as_ptr(), t.panel.as_ptr(), y.as_mut_ptr());
        // SAFETY: as in `avx2`, with panel p at p·stride (checked for p < W).
        unsafe {
            let bias: [__m512; W] = std::array::from_fn(|p| _mm512_loadu_ps(t.bias.as_ptr().add(p * PANEL)));
            let mut acc = [bias; R];
            for kk in 0..t.k {
                let w: [__m512; W] = std::array::from_fn(|p| _mm512_loadu_ps(wp.add(p * t.stride + kk * t.ldw)));
                for (r, a) in acc.iter_mut().enumerate() {
                    let xv = _mm512_set1_ps(*xp.add(r * t.ldx + kk * t.ldk));
                    for p in 0..W {
                        a[p] = _mm512_fmadd_ps(xv, w[p], a[p]);
                    }
                }
            }
            for p in 0..W {
                // Lanes c < cols (masked-off lanes are not accessed).
                let cols = t.cols.saturating_sub(p * PANEL).min(PANEL);
                let mask: __mmask16 = if cols == PANEL { !0 } else { (1 << cols) - 1 };
                for (r, a) in acc.iter().enumerate() {
                    let out = yp.add(r * t.ldy + p * PANEL);
                    let v = if t.add { _mm512_add_ps(_mm512_maskz_loadu_ps(mask, out), a[p]) } else { a[p] };
                    _mm512_mask_storeu_ps(out, mask, v);
                }
            }
        }
    }

    /// The first `cols` values of `tmp` into `out`, stored or added.
    ///
    /// # Safety
    /// `out` must be valid for `cols` reads and writes.
    #[inline(always)]
    unsafe fn store_partial(out: *mut f32, tmp: &[f32; PANEL], cols: usize, add: bool) {
        for (c, v) in tmp.iter().enumerate().take(cols) {
            // SAFETY: c < cols, guaranteed valid by the caller.
            unsafe {
                let o = out.add(c);
                *o = if add { *o + *v } else { *v };
            }
        }
    }
}
