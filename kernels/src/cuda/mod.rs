//! The CUDA path (feature `cuda`): the round step and readout of docs/model.md
//! as fused GPU kernels, for B streams at once.
//!
//! # API
//!
//! - [`CudaEngine`]: weights, B stream states and staging buffers on one GPU;
//!   [`CudaEngine::step_batch`] / [`CudaEngine::readout_batch`] /
//!   [`CudaEngine::reset`] drive live streams whose states stay on the device,
//!   [`CudaEngine::forward_shots`] decodes whole shots.
//! - [`CudaBackend`]: the engine behind [`crate::Backend`], which is how the
//!   decoders use it (`kernels::backend::cuda`).
//! - [`ptx_for`] / [`source_for`]: the kernels of a config, compiled (needs only
//!   NVRTC, no GPU) or as CUDA C source.
//! - [`driver_available`] / [`nvrtc_available`] / [`nvrtc_version`]: what this
//!   machine can do; [`CudaError`]: every failure, typed.
//!
//! # Design decisions
//!
//! **No CUDA needed to build.** `libcuda` and `libnvrtc` are loaded when first
//! used (cudarc's `dynamic-loading`), and cudarc panics when a library is
//! missing, so every entry point checks for the library first and answers
//! [`CudaError::NoGpu`] or [`CudaError::NoNvrtc`] instead. NVRTC is found by
//! the dynamic loader under the names `libnvrtc.so`, `libnvrtc.so.13`, …:
//! put its directory on `LD_LIBRARY_PATH` (for the pip wheel,
//! `site-packages/nvidia/cu13/lib`).
//!
//! **Kernels are real `.cu` files** (`kernels/cuda/`), embedded with
//! `include_str!` and compiled by NVRTC at run time, once per config and
//! architecture (cached for the process). Every size is a `#define`, so loops
//! over widths unroll and index arithmetic folds; the weight and shared-memory
//! layouts are computed here (`cuda/layout.rs`) and passed the same way, so Rust is
//! the one source of truth for both.
//!
//! **One thread block per stream.** A round step is small (S ≤ 120 rows of
//! D ≤ 64) and strictly sequential in its layers, so a block keeps the state
//! `z` `[S][D]` in shared memory and runs the embedding, state update and
//! every layer of a round without leaving the SM, with `__syncthreads`
//! between stages: the linear maps (fused Q|K|V, attention output, both FFN
//! matrices) read the weights from global memory (L2-resident, coalesced:
//! they are stored transposed) with register blocking over rows; attention
//! runs a thread per (head, query) with an online softmax, so no score matrix
//! is kept. A launch can run several rounds ([`CudaEngine::forward_shots`]
//! runs a whole shot and its readout in one launch, the state never leaving
//! shared memory). States of live streams stay on the device between rounds:
//! a step copies in only that round's features, and at batch 1 not even
//! that: they travel in the launch's parameters (`qecd_step_one`, for
//! S·NF ≤ 512), so a round step is one launch and one synchronize.
//!
//! **Numerics.** f32 throughout, like the contract; GELU is exact (`erff`),
//! the softmax uses `expf`, LayerNorm two passes with the biased variance.
//! The logits agree with the CPU engine and [`crate::reference::forward`]
//! within 1e-4 (tests/cuda.rs, on a GPU).

mod backend;
mod compile;
mod engine;
mod layout;

pub use backend::CudaBackend;
pub use compile::{nvrtc_version, ptx_for, source_for};
pub use engine::CudaEngine;

/// Errors of the CUDA path.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// No usable GPU: the driver library is missing, or the driver has no device.
    #[error("no GPU: {0}")]
    NoGpu(String),
    /// The NVRTC library (run-time compiler) could not be loaded.
    #[error("NVRTC not available: {0}")]
    NoNvrtc(String),
    /// NVRTC rejected the kernels; `log` is its compile log.
    #[error("NVRTC failed to compile the kernels for {config} ({error}, options {options:?}):\n{log}")]
    Compile {
        /// The config the source was built for.
        config: String,
        /// NVRTC's error code.
        error: String,
        /// The compile options.
        options: Vec<String>,
        /// NVRTC's program log.
        log: String,
    },
    /// A CUDA driver call failed.
    #[error("CUDA driver error in {op}: {message}")]
    Driver {
        /// What was being done.
        op: &'static str,
        /// The driver's error.
        message: String,
    },
    /// The config needs more shared memory per block than the device has.
    #[error("config needs {needed} bytes of shared memory per block, the device allows {available}")]
    SharedMemory {
        /// Bytes one block needs.
        needed: usize,
        /// Bytes the device allows a block (opt-in maximum).
        available: usize,
    },
    /// The weights' config is invalid.
    #[error(transparent)]
    Config(#[from] crate::KernelError),
    /// An argument does not fit the engine (a length, a stream range).
    #[error("invalid input: {0}")]
    Input(String),
}

impl CudaError {
    fn driver(op: &'static str) -> impl FnOnce(cudarc::driver::DriverError) -> Self {
        move |e| CudaError::Driver { op, message: e.to_string() }
    }
}

/// Whether the CUDA driver library (`libcuda.so`, `libcuda.so.1`, …) can be
/// loaded. It says nothing about devices: [`CudaEngine::new`] finds those out.
pub fn driver_available() -> bool {
    // SAFETY: only tries `dlopen` on the candidate names; no symbol is used.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether the NVRTC library (`libnvrtc.so`, `libnvrtc.so.13`, …) can be loaded.
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries `dlopen` on the candidate names; no symbol is used.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

fn require_driver() -> Result<(), CudaError> {
    if driver_available() {
        Ok(())
    } else {
        Err(CudaError::NoGpu("libcuda not found (no NVIDIA driver on the loader path)".into()))
    }
}

fn require_nvrtc() -> Result<(), CudaError> {
    if nvrtc_available() {
        Ok(())
    } else {
        Err(CudaError::NoNvrtc(
            "libnvrtc not found; put the directory holding libnvrtc.so.13 on LD_LIBRARY_PATH".into(),
        ))
    }
}
