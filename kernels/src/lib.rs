//! Compute only: the neural decoder's round step and readout on plain `f32`
//! slices, on CPU and CUDA backends behind one trait.
//!
//! This crate owns the recurrent transformer of `docs/model.md` for inference
//! (fused CPU kernels, and CUDA kernels with feature `cuda`), the [`Backend`]
//! trait through which decoders run it on either device, the proof tokens of
//! the CPU instruction sets ([`isa`]), and the fused trainer. It must never
//! touch Stim, gRPC or files: weights come in through [`Weights::from_named`]
//! as named `f32` slices (the checkpoint loader lives in `models`), and every
//! kernel reads and writes caller-owned slices or the backend's own state
//! buffers. Its dependencies are `thiserror`, and `cudarc` with feature `cuda`.
//!
//! # API
//!
//! - [`Backend`]: the batched round step and readout of streams whose states
//!   stay on the device between rounds, in numbered slots. [`CpuBackend`]
//!   wraps the free functions below; `cuda::CudaBackend` the CUDA engine.
//!   Choose with [`backend::cpu`], [`backend::cuda`] (a typed
//!   [`BackendError::Unavailable`] saying why, where CUDA cannot run) or
//!   [`backend::on`] with a [`Device`].
//! - [`KernelConfig`]: the shapes (S, D, H, L, F, R, O, NF) and the tensor list
//!   ([`KernelConfig::tensor_shapes`], the same list as `models::ModelConfig::tensor_shapes`).
//! - [`Weights`]: every tensor repacked once into kernel layouts (below);
//!   [`Weights::to_named`] gives the checkpoint tensors back exactly.
//! - [`Scratch`]: all intermediate buffers, allocated once per stream (or per
//!   block of streams, [`Scratch::with_block`]) and reused by every call.
//! - [`step`] / [`readout`] / [`forward_shot`]: one stream.
//! - [`step_batch`] / [`readout_batch`]: B streams at once, optionally split over threads.
//! - [`reference::forward`]: a plain `f64` transcription of `docs/model.md`, for tests.
//! - [`train`]: the fused trainer, forward and backward over a batch of shots
//!   on the same building blocks, with AdamW and Lion (`train::Trainer`).
//! - `cuda` (feature `cuda`, which adds the `cudarc` dependency): the same model as fused
//!   CUDA kernels for B streams on a GPU (`cuda::CudaEngine`), compiled at run time by NVRTC.
//! - [`Isa`] / [`IsaToken`] / [`Avx2Token`] / [`Avx512Token`]: the instruction
//!   sets, and the proof that this CPU runs one; [`dispatch_isa!`] for other
//!   crates' loops.
//!
//! # Design decisions
//!
//! **State layout.** One stream's state `z` is row-major `[S][D]`: a row per
//! stabilizer, so LayerNorm, the residual adds and every linear map run over
//! contiguous rows. A batch is row-major `[B][S][D]`, i.e. a single `[(B·S)][D]`
//! matrix: the linear maps (fused Q/K/V, attention output, both FFN matrices)
//! are applied to all rows of a block of streams as *one* matrix product, so
//! each weight panel is fetched from cache once per block instead of once per
//! stream, while LayerNorm and attention, which are per row and per stream,
//! walk the same memory in order; a contiguous range of streams is a contiguous
//! sub-slice, which is how the batch is split over threads. Features are
//! `[B][S][NF]` for the same reason.
//!
//! **Weight layout.** A linear map `y = x·Wᵀ + b` with `W: [n, k]` (PyTorch's
//! `[out, in]`) is stored *packed*: Wᵀ cut into panels of [`PANEL`] = 16 output
//! columns, each panel `[k][16]` contiguous (`packed[(jb·k + kk)·16 + c] =
//! W[jb·16 + c][kk]`), the last panel zero-padded, and the bias padded to a
//! multiple of 16. The matrix-product micro-kernel keeps a tile of outputs in
//! registers (AVX-512: 8 rows × 2 panels, 16 accumulators; AVX2: 6 rows × 1
//! panel; SSE2: 2 rows × 1 panel) and for each `kk` broadcasts one input per
//! row and reads the next 16 (or 2 × 16) contiguous weights: the inner loop
//! streams the panels linearly and never strides. Panels are the outer loop,
//! so a panel stays in L1 while every row tile of the block uses it.
//! `attn.wq`, `attn.wk` and `attn.wv` are concatenated into one `[3D, D]` map
//! (one product instead of three; Q, K and V land side by side in a `[rows][3D]`
//! buffer); `embed.w_in` is stored transposed, `[NF][D]`, and `embed.b_in +
//! embed.stab` is pre-summed into one `[S][D]` table; `attn.bias` is stored
//! transposed in the layout of attention's score matrix (below). Nothing is
//! rescaled (the `1/√(D/H)` is applied to the scores), so [`Weights::to_named`]
//! returns exactly the tensors that came in.
//!
//! **Attention** also runs on the micro-kernel, with a single copy: per stream
//! Q is transposed once; per head, the *transposed* scores `Sᵀ = K_h·Q_hᵀ` take
//! K's rows in place as the left operand and Qᵀ's rows as panels, and
//! `o_h = P·V_h` reads P through Sᵀ's strides and V's rows in place as panels
//! (lanes past the valid columns are computed from whatever follows and
//! discarded; the buffers are padded for it). Sᵀ holds all heads side by side,
//! `[j][h·S + i]`, so the softmax over `j` is a column operation done for every
//! head and query at once: maxima, exponentials and sums are element-wise over
//! whole vectors, with no horizontal reductions.
//!
//! **Fusion.** Biases initialise the accumulators, the residual adds happen in
//! the product's store (`z += acc`), GELU runs over the freshly written
//! (L1-resident) hidden rows, and the state update `z ← (z + x)/√2` is fused
//! with the embedding.
//!
//! **Explicit vectors.** Matrix tiles use `std::arch` intrinsics directly; the
//! element-wise code (LayerNorm, GELU, softmax, state update) is written once
//! over a small 16-lane vector trait with AVX-512, AVX2, SSE2 and plain-array
//! implementations. Relying on the auto-vectoriser proved fragile here: once
//! inlined, LLVM cannot prove that two slices do not overlap, and for rows of
//! 8 or 32 values it picks vector widths larger than the trip count or
//! vectorises the wrong loop (with gathers).
//!
//! **No allocation on the hot path.** [`step`], [`readout`], [`forward_shot`],
//! and the batch functions with `threads == 1`, allocate nothing (a test checks
//! this with a counting allocator). With `threads > 1` the batch functions spawn
//! scoped threads for the call, which allocates and costs tens of microseconds:
//! worth it for large batches only. A caller with persistent workers can instead
//! hand each worker a sub-range of the `[B][S][D]` states and call the batch
//! functions with `threads == 1` on it.
//!
//! **Numerics.** All arithmetic is `f32`, as in the contract. The
//! transcendental functions are branch-free so that they vectorise: `exp` for
//! the softmax is a Cody–Waite reduction plus a degree-7 Taylor polynomial
//! (relative error < 3e-7), and the exact GELU `x·Φ(x)` uses Eigen's rational
//! `erf` approximation on [-4, 4] (6.5e-8 from erf in exact arithmetic, below
//! 5e-7 absolute once evaluated in `f32`; GELU is then within 1e-6 absolute and,
//! for x > 0, 4e-7 relative). LayerNorm uses ε = 1e-5 and the biased variance
//! (two passes); the softmax subtracts the maximum. The logits match
//! [`reference::forward`] to within about 1e-6 on random models (the tests
//! check 1e-4, the contract with tch).
//!
//! **Instruction sets.** The kernels are generic over the instruction set and
//! instantiated in `#[target_feature]` wrappers for AVX-512F and AVX2+FMA,
//! chosen at run time ([`Isa::detect`]), plus a portable build (SSE2 on x86-64,
//! plain arrays elsewhere, with FMA on aarch64). The workspace is compiled for
//! the baseline target, so without this dispatch the kernels would run four
//! lanes wide with no FMA. The choice is stored in the [`Weights`]: every call
//! with the same weights runs the same instructions, and every output is
//! accumulated in the same order whatever tile or block its row falls in, so a
//! batch of N streams gives the same bits as N single streams, for any threads
//! and blocks. The builds differ only in rounding (FMA or not): the AVX2 and
//! AVX-512 builds give the same bits as each other and as the plain-array
//! build with FMA, and the SSE2 build the same bits as the plain-array build
//! without (tested).
//!
//! **Safe means safe.** The AVX vector types and kernels can only be reached
//! through a token ([`Avx2Token`], [`Avx512Token`]) whose one constructor
//! checks the CPU; the [`Weights`] hold the token of their instruction set.
//! The soundness argument is written once, in [`isa`].
#![deny(missing_docs)]

pub mod backend;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod isa;
mod kernel;
mod math;
pub mod reference;
mod simd;
mod tile;
pub mod train;
mod weights;

pub use backend::{Backend, BackendError, CpuBackend, Device};
pub use isa::{Avx2Token, Avx512Token, Isa, IsaToken};
pub use kernel::{Scratch, forward_shot, readout, readout_batch, step, step_batch};
pub use weights::{PANEL, Weights};

/// Shapes of the recurrent transformer (docs/model.md §Notation).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KernelConfig {
    /// S: stabilizers (`d² − 1`).
    pub stabilizers: usize,
    /// D: model width.
    pub width: usize,
    /// H: attention heads; `width` must be a multiple of it.
    pub heads: usize,
    /// L: transformer layers per round step.
    pub layers: usize,
    /// F: feed-forward width.
    pub ffn_width: usize,
    /// R: hidden width of the readout MLP.
    pub readout_width: usize,
    /// O: observables, one logit each.
    pub observables: usize,
    /// NF: input features per stabilizer and round (3: event, mask, is_final).
    pub features: usize,
}

impl KernelConfig {
    /// Checks that every size is positive and that heads divide the width.
    pub fn validate(&self) -> Result<(), KernelError> {
        let sizes = [
            ("stabilizers", self.stabilizers),
            ("width", self.width),
            ("heads", self.heads),
            ("layers", self.layers),
            ("ffn_width", self.ffn_width),
            ("readout_width", self.readout_width),
            ("observables", self.observables),
            ("features", self.features),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(KernelError::Config(format!("{name} must be positive in {self:?}")));
        }
        if !self.width.is_multiple_of(self.heads) {
            return Err(KernelError::Config(format!("width {} is not a multiple of heads {}", self.width, self.heads)));
        }
        Ok(())
    }

    /// Head width D/H.
    pub fn head_width(&self) -> usize {
        self.width / self.heads
    }

    /// Length of one stream's state, `S·D`.
    pub fn state_len(&self) -> usize {
        self.stabilizers * self.width
    }

    /// Length of one stream's features for one round, `S·NF`.
    pub fn features_len(&self) -> usize {
        self.stabilizers * self.features
    }

    /// Every tensor of the model, name and shape, in the checkpoint's order
    /// (the same list as `models::ModelConfig::tensor_shapes`).
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (s, d, h, f, r, o) =
            (self.stabilizers, self.width, self.heads, self.ffn_width, self.readout_width, self.observables);
        let mut out = vec![
            ("embed.w_in".to_string(), vec![d, self.features]),
            ("embed.b_in".to_string(), vec![d]),
            ("embed.stab".to_string(), vec![s, d]),
        ];
        for l in 0..self.layers {
            out.extend(layer_shapes(l, d, f, ("attn.bias", vec![h, s, s])));
        }
        out.extend([
            ("readout.ln.weight".to_string(), vec![d]),
            ("readout.ln.bias".to_string(), vec![d]),
            ("readout.w1".to_string(), vec![r, d]),
            ("readout.b1".to_string(), vec![r]),
            ("readout.w2".to_string(), vec![o, r]),
            ("readout.b2".to_string(), vec![o]),
        ]);
        out
    }
}

/// Errors from building [`Weights`].
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The shapes do not fit together.
    #[error("invalid kernel config: {0}")]
    Config(String),
    /// A tensor the config needs was not provided.
    #[error("tensor `{name}` is missing")]
    Missing {
        /// The tensor's name, as in docs/model.md.
        name: String,
    },
    /// A tensor has the wrong shape.
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        /// The tensor's name.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape provided.
        found: Vec<usize>,
    },
    /// A tensor's values do not fill its (correct) shape.
    #[error("tensor `{name}` has {found} values, expected {expected}")]
    Length {
        /// The tensor's name.
        name: String,
        /// Product of the shape.
        expected: usize,
        /// Number of values provided.
        found: usize,
    },
    /// A tensor holds NaN or an infinity.
    #[error("tensor `{name}` holds a non-finite value at flat index {index}")]
    NonFinite {
        /// The tensor's name.
        name: String,
        /// Flat (row-major) index of the first bad value.
        index: usize,
    },
    /// [`Weights::set_isa`] asked for an instruction set this CPU lacks.
    #[error("instruction set {0:?} is not supported on this CPU")]
    Unsupported(Isa),
}

/// Calls `f(args)` from the caller's module `avx512`, `avx2` or `plain` as
/// `isa` (an [`Isa`]) says: each module holds the same functions, compiled
/// with `#[target_feature]`s no wider than that instruction set's (`avx512`
/// and `avx2` exist on x86-64 only).
///
/// # Panics
/// If this CPU does not support `isa` (use [`Isa::detect`] or
/// [`Isa::supported`]): the check ([`Isa::require`]) is what makes the call sound.
#[macro_export]
macro_rules! dispatch_isa {
    ($isa:expr, $f:ident($($arg:expr),*)) => {
        // SAFETY: `Isa::require` returns a token only where this CPU has the
        // instruction set's features (`kernels::isa`), and those include the
        // ones each module enables.
        unsafe {
            match $crate::Isa::require($isa) {
                #[cfg(target_arch = "x86_64")]
                $crate::IsaToken::Avx512(_) => avx512::$f($($arg),*),
                #[cfg(target_arch = "x86_64")]
                $crate::IsaToken::Avx2Fma(_) => avx2::$f($($arg),*),
                _ => plain::$f($($arg),*),
            }
        }
    };
}

/// The tensors of transformer layer `l` (width `d`, feed-forward width `f`),
/// name and shape, in checkpoint order, with the attention's position bias
/// (its name within the layer, and shape) where the models put it. Both the
/// recurrent model and the posterior model (`models::posterior`) are made of
/// these layers.
pub fn layer_shapes(l: usize, d: usize, f: usize, bias: (&str, Vec<usize>)) -> Vec<(String, Vec<usize>)> {
    let p = |n: &str| format!("layers.{l}.{n}");
    vec![
        (p("ln1.weight"), vec![d]),
        (p("ln1.bias"), vec![d]),
        (p("attn.wq"), vec![d, d]),
        (p("attn.bq"), vec![d]),
        (p("attn.wk"), vec![d, d]),
        (p("attn.bk"), vec![d]),
        (p("attn.wv"), vec![d, d]),
        (p("attn.bv"), vec![d]),
        (p("attn.wo"), vec![d, d]),
        (p("attn.bo"), vec![d]),
        (p(bias.0), bias.1),
        (p("ln2.weight"), vec![d]),
        (p("ln2.bias"), vec![d]),
        (p("ffn.w1"), vec![f, d]),
        (p("ffn.b1"), vec![f]),
        (p("ffn.w2"), vec![d, f]),
        (p("ffn.b2"), vec![d]),
    ]
}

#[doc(hidden)]
pub mod testutil {
    //! Deterministic random models and inputs for the tests and the GPU
    //! bench; not part of the API.
    #![allow(missing_docs)]
    use super::*;

    /// SplitMix64: tiny, deterministic, good enough for test data.
    pub struct Rng(u64);

    impl Rng {
        pub fn new(seed: u64) -> Self {
            Self(seed ^ 0x9e37_79b9_7f4a_7c15)
        }

        pub fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// Uniform in [0, 1).
        pub fn unit(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
        }

        /// Uniform in [-a, a).
        pub fn sym(&mut self, a: f64) -> f32 {
            ((2.0 * self.unit() - 1.0) * a) as f32
        }

        pub fn bit(&mut self, p: f64) -> bool {
            self.unit() < p
        }
    }

    /// Random tensors for `config`, scaled like a trained model: linear maps
    /// with unit gain (uniform, variance 1/fan_in, times `gain`), LayerNorm gains
    /// near one, attention biases of order one.
    pub fn random_tensors(config: &KernelConfig, seed: u64, gain: f64) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let mut rng = Rng::new(seed);
        config
            .tensor_shapes()
            .into_iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let fan_in = *shape.last().unwrap() as f64;
                let values = (0..n)
                    .map(|_| {
                        if name.ends_with("ln1.weight") || name.ends_with("ln2.weight") || name.ends_with("ln.weight") {
                            1.0 + rng.sym(0.3)
                        } else if name.ends_with(".bias") && !name.ends_with("attn.bias") {
                            rng.sym(0.2)
                        } else if name == "embed.stab" || name.ends_with("attn.bias") {
                            rng.sym(1.0 * gain)
                        } else if shape.len() == 1 {
                            rng.sym(0.3 * gain)
                        } else {
                            rng.sym(gain * (3.0 / fan_in).sqrt())
                        }
                    })
                    .collect();
                (name, shape, values)
            })
            .collect()
    }

    pub fn weights_from(config: &KernelConfig, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Weights {
        Weights::from_named(config.clone(), |name| {
            tensors.iter().find(|(n, _, _)| n == name).map(|(_, s, v)| (s.as_slice(), v.as_slice()))
        })
        .unwrap()
    }

    pub fn random_weights(config: &KernelConfig, seed: u64) -> Weights {
        weights_from(config, &random_tensors(config, seed, 1.0))
    }

    /// Features `[T][S][3]` as docs/model.md builds them: a random detector
    /// mask (mostly present), events only where there is a detector, and
    /// `is_final` on the last round. Extra features (NF > 3) are random.
    pub fn random_features(config: &KernelConfig, rng: &mut Rng, rounds: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(rounds * config.features_len());
        for t in 0..rounds {
            for _ in 0..config.stabilizers {
                let mask = rng.bit(0.8);
                let event = mask && rng.bit(0.3);
                let row = [event as u8 as f32, mask as u8 as f32, (t + 1 == rounds) as u8 as f32];
                out.extend(row.iter().copied().take(config.features));
                for _ in 3..config.features {
                    out.push(rng.sym(1.0));
                }
            }
        }
        out
    }

    /// The d = 3 shape the brief targets, at width `d`.
    pub fn d3(width: usize) -> KernelConfig {
        config(3, width)
    }

    /// The shape the project trains at distance `d` and width D: S = d² − 1,
    /// H = 4, L = 2, F = 2D, R = D, one observable.
    pub fn config(distance: usize, width: usize) -> KernelConfig {
        KernelConfig {
            stabilizers: distance * distance - 1,
            width,
            heads: 4,
            layers: 2,
            ffn_width: 2 * width,
            readout_width: width,
            observables: 1,
            features: 3,
        }
    }

    /// A ragged shape: widths that are no multiple of 16, three heads of 6, two observables.
    pub fn odd() -> KernelConfig {
        KernelConfig {
            stabilizers: 5,
            width: 18,
            heads: 3,
            layers: 3,
            ffn_width: 37,
            readout_width: 7,
            observables: 2,
            features: 3,
        }
    }

    /// CPU logits `[B][O]` of the shots in `features` `[B][rounds][S][NF]`, by the fused CPU engine.
    pub fn cpu_logits(w: &Weights, features: &[f32], rounds: usize) -> Vec<f32> {
        let c = w.config();
        let mut scratch = Scratch::new(c);
        let mut state = vec![0.0; c.state_len()];
        let mut out = Vec::new();
        for shot in features.chunks_exact(rounds * c.features_len()) {
            let mut logits = vec![0.0; c.observables];
            forward_shot(w, shot, rounds, &mut scratch, &mut state, &mut logits);
            out.extend(logits);
        }
        out
    }
}
