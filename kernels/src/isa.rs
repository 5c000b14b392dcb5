//! The instruction sets the CPU kernels are built for, and the tokens that
//! prove this CPU runs them.
//!
//! # Safety
//!
//! This module is where the proof of an instruction set is made, and the one
//! place that calls `is_x86_feature_detected!` for the kernels. Every `unsafe`
//! block elsewhere that executes AVX2, FMA or AVX-512 instructions (the vector
//! types of `simd.rs`, the micro-kernels of `tile.rs`, the `#[target_feature]`
//! entry points of `kernel.rs` and `train`, and [`crate::dispatch_isa!`]) rests
//! on a token in hand:
//!
//! - [`Avx2Token`] and [`Avx512Token`] are zero-sized, with a private field, so
//!   no code outside this module can build one; their only constructors are
//!   [`Avx2Token::new`] and [`Avx512Token::new`], which return `Some` only
//!   where `is_x86_feature_detected!` reports every feature the token stands
//!   for. That macro also checks that the operating system saves the wide
//!   registers (XGETBV), so the instructions are usable, not merely present.
//! - The features are a property of the machine, not of a thread or a moment,
//!   so a token stays valid for the life of the process: tokens are `Copy`,
//!   `Send` and `Sync`.
//! - A value of an AVX vector type can only be made from a token (every
//!   constructor takes one), so holding the value is holding the proof.
//!
//! Hence safe code cannot execute AVX on a CPU without it.

/// The instruction set the fused kernels run with; see the crate docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// The build's baseline target: SSE2 without FMA on x86-64; plain arrays
    /// left to the auto-vectoriser elsewhere (with FMA on aarch64).
    Portable,
    /// x86-64 AVX2 with FMA: matrix tiles of 6 rows × 16 columns.
    Avx2Fma,
    /// x86-64 AVX-512F: matrix tiles of 8 rows × 32 columns.
    Avx512,
}

impl Isa {
    /// The fastest instruction set this CPU supports.
    pub fn detect() -> Self {
        IsaToken::detect().isa()
    }

    /// Whether this CPU can run kernels built for `self`.
    pub fn is_supported(self) -> bool {
        self.token().is_some()
    }

    /// Every instruction set this CPU supports, portable first.
    pub fn supported() -> Vec<Isa> {
        [Isa::Portable, Isa::Avx2Fma, Isa::Avx512].into_iter().filter(|isa| isa.is_supported()).collect()
    }

    /// `self` with the proof that this CPU runs it; `None` where it does not.
    #[inline]
    pub fn token(self) -> Option<IsaToken> {
        match self {
            Isa::Portable => Some(IsaToken::Portable),
            Isa::Avx2Fma => Avx2Token::new().map(IsaToken::Avx2Fma),
            Isa::Avx512 => Avx512Token::new().map(IsaToken::Avx512),
        }
    }

    /// As [`Isa::token`], for callers that only ever hold a supported `Isa`
    /// (one from [`Isa::detect`] or [`Isa::supported`]).
    ///
    /// # Panics
    /// If this CPU does not support `self`.
    #[inline]
    pub fn require(self) -> IsaToken {
        self.token().unwrap_or_else(|| panic!("instruction set {self:?} is not supported on this CPU"))
    }
}

/// An instruction set together with the proof that this CPU runs it: what
/// the kernels dispatch on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IsaToken {
    /// The baseline build; needs no proof.
    Portable,
    /// AVX2 with FMA.
    Avx2Fma(Avx2Token),
    /// AVX-512F (with AVX2 and FMA).
    Avx512(Avx512Token),
}

impl IsaToken {
    /// The fastest instruction set this CPU supports, with its proof.
    pub fn detect() -> Self {
        Avx512Token::new()
            .map(IsaToken::Avx512)
            .or_else(|| Avx2Token::new().map(IsaToken::Avx2Fma))
            .unwrap_or(IsaToken::Portable)
    }

    /// The instruction set.
    pub fn isa(self) -> Isa {
        match self {
            IsaToken::Portable => Isa::Portable,
            IsaToken::Avx2Fma(_) => Isa::Avx2Fma,
            IsaToken::Avx512(_) => Isa::Avx512,
        }
    }
}

/// Proof that this CPU runs AVX2 and FMA (see the module docs). Only
/// [`Avx2Token::new`] makes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Avx2Token {
    _proof: (),
}

impl Avx2Token {
    /// A token if this CPU has AVX2 and FMA (always `None` off x86-64).
    #[inline]
    pub fn new() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Some(Self { _proof: () });
        }
        None
    }
}

/// Proof that this CPU runs AVX-512F, AVX2 and FMA (see the module docs).
/// Only [`Avx512Token::new`] makes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Avx512Token {
    _proof: (),
}

impl Avx512Token {
    /// A token if this CPU has AVX-512F, AVX2 and FMA (always `None` off x86-64).
    #[inline]
    pub fn new() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Some(Self { _proof: () });
        }
        None
    }

    /// The AVX2 and FMA this token also proves.
    #[inline]
    pub fn avx2(self) -> Avx2Token {
        Avx2Token { _proof: () }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_agree_with_the_feature_detection() {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            assert_eq!(Avx2Token::new().is_some(), avx2);
            assert_eq!(Avx512Token::new().is_some(), avx2 && is_x86_feature_detected!("avx512f"));
        }
        #[cfg(not(target_arch = "x86_64"))]
        assert!(Avx2Token::new().is_none() && Avx512Token::new().is_none());
        for isa in [Isa::Portable, Isa::Avx2Fma, Isa::Avx512] {
            assert_eq!(isa.token().map(IsaToken::isa), isa.is_supported().then_some(isa));
        }
        assert_eq!(IsaToken::detect().isa(), Isa::detect());
        assert_eq!(Isa::supported().last(), Some(&Isa::detect()));
        assert_eq!(Isa::Portable.require(), IsaToken::Portable);
    }

    #[test]
    fn requiring_an_unsupported_isa_panics() {
        if let Some(isa) = [Isa::Avx512, Isa::Avx2Fma].into_iter().find(|i| !i.is_supported()) {
            let err = std::panic::catch_unwind(|| isa.require()).unwrap_err();
            let msg = err.downcast_ref::<String>().unwrap();
            assert!(msg.contains("not supported on this CPU"), "{msg}");
        } else {
            eprintln!("skipped: this CPU supports every instruction set, so none can be refused");
        }
    }
}
