//! A minimal 8-lane `f32` vector abstraction, so that the element-wise parts of
//! the step (LayerNorm, GELU, softmax, the state update) are explicit vector
//! code instead of loops that the auto-vectoriser may or may not widen (it
//! often does not: once inlined, LLVM cannot prove that two slices do not
//! overlap, and with rows of 8 it picks vector widths larger than the trip count).
//!
//! [`Vector`] is implemented by 16-lane types (AVX-512, AVX, SSE2, and a plain
//! array for other targets) and by 1-lane scalar types used for the tails of
//! rows whose length is not a multiple of 16. Each instruction-set build
//! ([`Arith`](crate::math::Arith)) picks one of each, with the same rounding
//! (fused or not) for both.
//!
//! A vector is built only from a [`Vector::Token`]: `()` for the baseline
//! types, an [`Avx2Token`](crate::isa::Avx2Token) or
//! [`Avx512Token`](crate::isa::Avx512Token) for the AVX ones, so holding an
//! AVX vector proves that the CPU runs its instructions (`crate::isa`).

/// 1.5·2²³: adding it to a float in ±2²² rounds it to an integer held in the
/// low mantissa bits (see [`Vector::pow2_shifted`]).
pub(crate) const SHIFT: f32 = 12_582_912.0;

/// `(127 − bits(SHIFT))`, so that `(bits(n + SHIFT) + POW2_BIAS) << 23` is `2ⁿ`.
const POW2_BIAS: i32 = 127 - SHIFT.to_bits() as i32;

/// Lanes of the wide vectors.
pub(crate) const LANES: usize = 16;

/// `N` lanes of `f32`. All methods are `#[inline(always)]` so that they compile
/// inside the instruction-set wrappers.
pub(crate) trait Vector: Copy {
    /// Lanes.
    const N: usize;
    /// What building a vector takes: the proof that the CPU runs the type's
    /// instructions (`()` where they are baseline).
    type Token: Copy;
    /// The token this vector was built with.
    fn token(self) -> Self::Token;
    /// The first `N` values of `x` (panics if shorter).
    fn load(t: Self::Token, x: &[f32]) -> Self;
    /// `x` in every lane.
    fn splat(t: Self::Token, x: f32) -> Self;
    /// Stores into the first `N` values of `x` (panics if shorter).
    fn store(self, x: &mut [f32]);
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    fn div(self, o: Self) -> Self;
    /// `self·b + c`, fused or not depending on the type.
    fn madd(self, b: Self, c: Self) -> Self;
    /// `if self > o { self } else { o }` lane-wise.
    fn max(self, o: Self) -> Self;
    /// `if self < o { self } else { o }` lane-wise.
    fn min(self, o: Self) -> Self;
    /// `2ⁿ` where `self = n + SHIFT` holds an integer `n` in [-126, 127].
    fn pow2_shifted(self) -> Self;
    /// Sum of the lanes in a fixed order: fold the upper half onto the lower
    /// half until one lane is left (`s[i] = l[i] + l[i + 8]`, then `+4`, `+2`,
    /// `+1`); the value itself for one lane.
    fn hsum(self) -> f32;
}

/// Scalar `2ⁿ` from `t = n + SHIFT`.
#[inline(always)]
fn pow2_shifted_scalar(t: f32) -> f32 {
    f32::from_bits(t.to_bits().wrapping_add(POW2_BIAS as u32) << 23)
}

/// The fixed-order lane sum of [`Vector::hsum`] for 16 lanes.
#[inline(always)]
fn hsum16(l: [f32; 16]) -> f32 {
    let s8: [f32; 8] = std::array::from_fn(|i| l[i] + l[i + 8]);
    let s4: [f32; 4] = std::array::from_fn(|i| s8[i] + s8[i + 4]);
    let s2: [f32; 2] = std::array::from_fn(|i| s4[i] + s4[i + 2]);
    s2[0] + s2[1]
}

/// Scalar and array implementations, `a·b + c` computed by `$madd`.
macro_rules! plain_vectors {
    ($one:ident, $eight:ident, $madd:expr, $doc1:literal, $doc8:literal) => {
        #[doc = $doc1]
        #[derive(Clone, Copy, Debug)]
        pub(crate) struct $one(pub f32);

        impl Vector for $one {
            const N: usize = 1;
            type Token = ();
            #[inline(always)]
            fn token(self) {}
            #[inline(always)]
            fn load(_: (), x: &[f32]) -> Self {
                Self(x[0])
            }
            #[inline(always)]
            fn store(self, x: &mut [f32]) {
                x[0] = self.0;
            }
            #[inline(always)]
            fn splat(_: (), x: f32) -> Self {
                Self(x)
            }
            #[inline(always)]
            fn add(self, o: Self) -> Self {
                Self(self.0 + o.0)
            }
            #[inline(always)]
            fn sub(self, o: Self) -> Self {
                Self(self.0 - o.0)
            }
            #[inline(always)]
            fn mul(self, o: Self) -> Self {
                Self(self.0 * o.0)
            }
            #[inline(always)]
            fn div(self, o: Self) -> Self {
                Self(self.0 / o.0)
            }
            #[inline(always)]
            fn madd(self, b: Self, c: Self) -> Self {
                let f: fn(f32, f32, f32) -> f32 = $madd;
                Self(f(self.0, b.0, c.0))
            }
            #[inline(always)]
            fn max(self, o: Self) -> Self {
                Self(if self.0 > o.0 { self.0 } else { o.0 })
            }
            #[inline(always)]
            fn min(self, o: Self) -> Self {
                Self(if self.0 < o.0 { self.0 } else { o.0 })
            }
            #[inline(always)]
            fn pow2_shifted(self) -> Self {
                Self(pow2_shifted_scalar(self.0))
            }
            #[inline(always)]
            fn hsum(self) -> f32 {
                self.0
            }
        }

        #[doc = $doc8]
        #[derive(Clone, Copy, Debug)]
        #[allow(dead_code)]
        pub(crate) struct $eight(pub [f32; 16]);

        impl $eight {
            #[inline(always)]
            fn map(self, o: Self, f: impl Fn(f32, f32) -> f32) -> Self {
                Self(std::array::from_fn(|i| f(self.0[i], o.0[i])))
            }
        }

        impl Vector for $eight {
            const N: usize = 16;
            type Token = ();
            #[inline(always)]
            fn token(self) {}
            #[inline(always)]
            fn load(_: (), x: &[f32]) -> Self {
                Self(x[..16].try_into().expect("16 lanes"))
            }
            #[inline(always)]
            fn store(self, x: &mut [f32]) {
                x[..16].copy_from_slice(&self.0);
            }
            #[inline(always)]
            fn splat(_: (), x: f32) -> Self {
                Self([x; 16])
            }
            #[inline(always)]
            fn add(self, o: Self) -> Self {
                self.map(o, |a, b| a + b)
            }
            #[inline(always)]
            fn sub(self, o: Self) -> Self {
                self.map(o, |a, b| a - b)
            }
            #[inline(always)]
            fn mul(self, o: Self) -> Self {
                self.map(o, |a, b| a * b)
            }
            #[inline(always)]
            fn div(self, o: Self) -> Self {
                self.map(o, |a, b| a / b)
            }
            #[inline(always)]
            fn madd(self, b: Self, c: Self) -> Self {
                let f: fn(f32, f32, f32) -> f32 = $madd;
                Self(std::array::from_fn(|i| f(self.0[i], b.0[i], c.0[i])))
            }
            #[inline(always)]
            fn max(self, o: Self) -> Self {
                self.map(o, |a, b| if a > b { a } else { b })
            }
            #[inline(always)]
            fn min(self, o: Self) -> Self {
                self.map(o, |a, b| if a < b { a } else { b })
            }
            #[inline(always)]
            fn pow2_shifted(self) -> Self {
                Self(self.0.map(pow2_shifted_scalar))
            }
            #[inline(always)]
            fn hsum(self) -> f32 {
                hsum16(self.0)
            }
        }
    };
}

plain_vectors!(
    Plain1,
    Plain16,
    |a, b, c| a * b + c,
    "One lane, `a·b + c` rounded twice.",
    "Sixteen lanes in an array, `a·b + c` rounded twice (left to the auto-vectoriser)."
);
plain_vectors!(
    Fused1,
    Fused16,
    |a, b, c| a.mul_add(b, c),
    "One lane, `a·b + c` fused: only where FMA is available, or `mul_add` is a libm call.",
    "Sixteen lanes in an array, `a·b + c` fused (left to the auto-vectoriser; aarch64)."
);

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx16, Sse16, Zmm16};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use crate::isa::{Avx2Token, Avx512Token};
    use std::arch::x86_64::*;

    /// `(s0 + s2) + (s1 + s3)` of `s = [s0, s1, s2, s3]`, the last two folds of [`Vector::hsum`].
    #[inline(always)]
    unsafe fn hsum4(s: __m128) -> f32 {
        // SAFETY: SSE2 is baseline.
        unsafe {
            let t = _mm_add_ps(s, _mm_movehl_ps(s, s)); // [s0+s2, s1+s3, ..]
            _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps::<0b01>(t, t)))
        }
    }

    /// Sixteen lanes in four SSE2 registers (baseline on x86-64), `a·b + c` rounded twice.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Sse16([__m128; 4]);

    impl Sse16 {
        #[inline(always)]
        fn map(self, o: Self, f: impl Fn(__m128, __m128) -> __m128) -> Self {
            Self([f(self.0[0], o.0[0]), f(self.0[1], o.0[1]), f(self.0[2], o.0[2]), f(self.0[3], o.0[3])])
        }
    }

    // SAFETY (all `unsafe` blocks in this impl): SSE2 is part of the x86-64
    // baseline, and every pointer access stays within the 16 values of a slice
    // whose length was just checked by slicing `x[..16]`.
    impl Vector for Sse16 {
        const N: usize = 16;
        type Token = ();
        #[inline(always)]
        fn token(self) {}
        #[inline(always)]
        fn load(_: (), x: &[f32]) -> Self {
            let x = &x[..16];
            let p = x.as_ptr();
            unsafe { Self([_mm_loadu_ps(p), _mm_loadu_ps(p.add(4)), _mm_loadu_ps(p.add(8)), _mm_loadu_ps(p.add(12))]) }
        }
        #[inline(always)]
        fn store(self, x: &mut [f32]) {
            let x = &mut x[..16];
            for (q, v) in self.0.iter().enumerate() {
                unsafe { _mm_storeu_ps(x.as_mut_ptr().add(4 * q), *v) }
            }
        }
        #[inline(always)]
        fn splat(_: (), x: f32) -> Self {
            unsafe { Self([_mm_set1_ps(x); 4]) }
        }
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            self.map(o, |a, b| unsafe { _mm_add_ps(a, b) })
        }
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            self.map(o, |a, b| unsafe { _mm_sub_ps(a, b) })
        }
        #[inline(always)]
        fn mul(self, o: Self) -> Self {
            self.map(o, |a, b| unsafe { _mm_mul_ps(a, b) })
        }
        #[inline(always)]
        fn div(self, o: Self) -> Self {
            self.map(o, |a, b| unsafe { _mm_div_ps(a, b) })
        }
        #[inline(always)]
        fn madd(self, b: Self, c: Self) -> Self {
            self.mul(b).add(c)
        }
        #[inline(always)]
        fn max(self, o: Self) -> Self {
            // maxps(a, b) = a > b ? a : b
            self.map(o, |a, b| unsafe { _mm_max_ps(a, b) })
        }
        #[inline(always)]
        fn min(self, o: Self) -> Self {
            self.map(o, |a, b| unsafe { _mm_min_ps(a, b) })
        }
        #[inline(always)]
        fn pow2_shifted(self) -> Self {
            let f = |v: __m128| unsafe {
                _mm_castsi128_ps(_mm_slli_epi32::<23>(_mm_add_epi32(_mm_castps_si128(v), _mm_set1_epi32(POW2_BIAS))))
            };
            let [a, b, c, d] = self.0;
            Self([f(a), f(b), f(c), f(d)])
        }
        #[inline(always)]
        fn hsum(self) -> f32 {
            let [a, b, c, d] = self.0;
            unsafe { hsum4(_mm_add_ps(_mm_add_ps(a, c), _mm_add_ps(b, d))) }
        }
    }

    /// Sixteen lanes in two AVX registers, `a·b + c` fused. Built only from an
    /// [`Avx2Token`], which it carries.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Avx16 {
        v: [__m256; 2],
        t: Avx2Token,
    }

    impl Avx16 {
        #[inline(always)]
        fn map(self, o: Self, f: impl Fn(__m256, __m256) -> __m256) -> Self {
            Self { v: [f(self.v[0], o.v[0]), f(self.v[1], o.v[1])], t: self.t }
        }
    }

    // SAFETY (all `unsafe` blocks in this impl): an `Avx16` is built only from
    // an `Avx2Token` (`load` and `splat` take one, the other methods take an
    // `Avx16`), which proves the CPU has AVX2 and FMA (`crate::isa`); every
    // pointer access stays within the 16 values of a slice whose length was
    // just checked by slicing `x[..16]`.
    impl Vector for Avx16 {
        const N: usize = 16;
        type Token = Avx2Token;
        #[inline(always)]
        fn token(self) -> Avx2Token {
            self.t
        }
        #[inline(always)]
        fn load(t: Avx2Token, x: &[f32]) -> Self {
            let x = &x[..16];
            unsafe { Self { v: [_mm256_loadu_ps(x.as_ptr()), _mm256_loadu_ps(x.as_ptr().add(8))], t } }
        }
        #[inline(always)]
        fn splat(t: Avx2Token, x: f32) -> Self {
            unsafe { Self { v: [_mm256_set1_ps(x); 2], t } }
        }
        #[inline(always)]
        fn store(self, x: &mut [f32]) {
            let x = &mut x[..16];
            unsafe {
                _mm256_storeu_ps(x.as_mut_ptr(), self.v[0]);
                _mm256_storeu_ps(x.as_mut_ptr().add(8), self.v[1]);
            }
        }
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            self.map(o, |a, b| unsafe { _mm256_add_ps(a, b) })
        }
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            self.map(o, |a, b| unsafe { _mm256_sub_ps(a, b) })
        }
        #[inline(always)]
        fn mul(self, o: Self) -> Self {
            self.map(o, |a, b| unsafe { _mm256_mul_ps(a, b) })
        }
        #[inline(always)]
        fn div(self, o: Self) -> Self {
            self.map(o, |a, b| unsafe { _mm256_div_ps(a, b) })
        }
        #[inline(always)]
        fn madd(self, b: Self, c: Self) -> Self {
            let v = unsafe { [_mm256_fmadd_ps(self.v[0], b.v[0], c.v[0]), _mm256_fmadd_ps(self.v[1], b.v[1], c.v[1])] };
            Self { v, t: self.t }
        }
        #[inline(always)]
        fn max(self, o: Self) -> Self {
            self.map(o, |a, b| unsafe { _mm256_max_ps(a, b) })
        }
        #[inline(always)]
        fn min(self, o: Self) -> Self {
            self.map(o, |a, b| unsafe { _mm256_min_ps(a, b) })
        }
        #[inline(always)]
        fn pow2_shifted(self) -> Self {
            let f = |v: __m256| unsafe {
                let bits = _mm256_add_epi32(_mm256_castps_si256(v), _mm256_set1_epi32(POW2_BIAS));
                _mm256_castsi256_ps(_mm256_slli_epi32::<23>(bits))
            };
            Self { v: [f(self.v[0]), f(self.v[1])], t: self.t }
        }
        #[inline(always)]
        fn hsum(self) -> f32 {
            unsafe {
                let s8 = _mm256_add_ps(self.v[0], self.v[1]);
                hsum4(_mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8)))
            }
        }
    }

    /// Sixteen lanes in one AVX-512 register, `a·b + c` fused. Built only from
    /// an [`Avx512Token`], which it carries.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Zmm16 {
        v: __m512,
        t: Avx512Token,
    }

    impl Zmm16 {
        #[inline(always)]
        fn with(self, v: __m512) -> Self {
            Self { v, t: self.t }
        }
    }

    // SAFETY (all `unsafe` blocks in this impl): a `Zmm16` is built only from
    // an `Avx512Token` (`load` and `splat` take one, the other methods take a
    // `Zmm16`), which proves the CPU has AVX-512F, AVX2 and FMA
    // (`crate::isa`); every pointer access stays within the 16 values of a
    // slice whose length was just checked by slicing `x[..16]`.
    impl Vector for Zmm16 {
        const N: usize = 16;
        type Token = Avx512Token;
        #[inline(always)]
        fn token(self) -> Avx512Token {
            self.t
        }
        #[inline(always)]
        fn load(t: Avx512Token, x: &[f32]) -> Self {
            let x = &x[..16];
            unsafe { Self { v: _mm512_loadu_ps(x.as_ptr()), t } }
        }
        #[inline(always)]
        fn splat(t: Avx512Token, x: f32) -> Self {
            unsafe { Self { v: _mm512_set1_ps(x), t } }
        }
        #[inline(always)]
        fn store(self, x: &mut [f32]) {
            let x = &mut x[..16];
            unsafe { _mm512_storeu_ps(x.as_mut_ptr(), self.v) }
        }
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            self.with(unsafe { _mm512_add_ps(self.v, o.v) })
        }
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            self.with(unsafe { _mm512_sub_ps(self.v, o.v) })
        }
        #[inline(always)]
        fn mul(self, o: Self) -> Self {
            self.with(unsafe { _mm512_mul_ps(self.v, o.v) })
        }
        #[inline(always)]
        fn div(self, o: Self) -> Self {
            self.with(unsafe { _mm512_div_ps(self.v, o.v) })
        }
        #[inline(always)]
        fn madd(self, b: Self, c: Self) -> Self {
            self.with(unsafe { _mm512_fmadd_ps(self.v, b.v, c.v) })
        }
        #[inline(always)]
        fn max(self, o: Self) -> Self {
            self.with(unsafe { _mm512_max_ps(self.v, o.v) })
        }
        #[inline(always)]
        fn min(self, o: Self) -> Self {
            self.with(unsafe { _mm512_min_ps(self.v, o.v) })
        }
        #[inline(always)]
        fn pow2_shifted(self) -> Self {
            self.with(unsafe {
                let bits = _mm512_add_epi32(_mm512_castps_si512(self.v), _mm512_set1_epi32(POW2_BIAS));
                _mm512_castsi512_ps(_mm512_slli_epi32::<23>(bits))
            })
        }
        #[inline(always)]
        fn hsum(self) -> f32 {
            unsafe {
                let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(self.v)));
                let s8 = _mm256_add_ps(_mm512_castps512_ps256(self.v), hi);
                hsum4(_mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<V: Vector>(t: V::Token) {
        let a: Vec<f32> = (0..16).map(|i| i as f32 * 0.75 - 5.0).collect();
        let b: Vec<f32> = (0..16).map(|i| 1.0 + i as f32 * 0.125).collect();
        let n = V::N;
        let lanes = |v: V| {
            let mut out = vec![0.0f32; n];
            v.store(&mut out);
            out
        };
        for k in 0..16 / n {
            let (va, vb) = (V::load(t, &a[k * n..]), V::load(t, &b[k * n..]));
            let want = |f: &dyn Fn(f32, f32) -> f32| (0..n).map(|i| f(a[k * n + i], b[k * n + i])).collect::<Vec<_>>();
            assert_eq!(lanes(va.add(vb)), want(&|x, y| x + y));
            assert_eq!(lanes(va.sub(vb)), want(&|x, y| x - y));
            assert_eq!(lanes(va.mul(vb)), want(&|x, y| x * y));
            assert_eq!(lanes(va.div(vb)), want(&|x, y| x / y));
            assert_eq!(lanes(va.max(vb)), want(&|x, y| x.max(y)));
            assert_eq!(lanes(va.min(vb)), want(&|x, y| x.min(y)));
            assert_eq!(lanes(V::splat(t, 2.5)), vec![2.5; n]);
            for (i, m) in lanes(va.madd(vb, vb)).iter().enumerate() {
                let (x, y) = (a[k * n + i], b[k * n + i]);
                assert!(*m == x * y + y || *m == x.mul_add(y, y));
            }
        }
        let exps = [-126.0f32, -3.0, 0.0, 1.0, 5.0, 20.0, 100.0, 127.0, -1.0, -2.0, 2.0, 3.0, -100.0, 64.0, -64.0, 7.0];
        let shifted: Vec<f32> = exps.iter().map(|e| e + SHIFT).collect();
        for k in 0..16 / n {
            let p = lanes(V::load(t, &shifted[k * n..]).pow2_shifted());
            for i in 0..n {
                assert_eq!(p[i], 2f32.powf(exps[k * n + i]));
            }
        }
        if n == 16 {
            let l: [f32; 16] = std::array::from_fn(|i| if i % 2 == 0 { i as f32 } else { i as f32 * 1e-8 });
            assert_eq!(V::load(t, &l).hsum(), hsum16(l));
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn check_avx2(t: crate::Avx2Token) {
        check::<Avx16>(t);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    fn check_avx512(t: crate::Avx512Token) {
        check::<Zmm16>(t);
    }

    #[test]
    fn vectors_agree_with_scalars() {
        check::<Plain1>(());
        check::<Fused1>(());
        check::<Plain16>(());
        check::<Fused16>(());
        #[cfg(target_arch = "x86_64")]
        {
            check::<Sse16>(());
            if let Some(t) = crate::Avx2Token::new() {
                // SAFETY: the token proves AVX2 and FMA.
                unsafe { check_avx2(t) };
            }
            if let Some(t) = crate::Avx512Token::new() {
                // SAFETY: the token proves AVX-512F, AVX2 and FMA.
                unsafe { check_avx512(t) };
            }
        }
    }
}
