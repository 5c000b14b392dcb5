//! [`Backend`]: the recurrent model's batched round step and readout on one
//! device, with the streams' recurrent states kept on that device.
//!
//! Two implementations: [`CpuBackend`] (the fused CPU kernels, states in host
//! memory) and, with feature `cuda`, `cuda::CudaBackend` (the CUDA kernels,
//! states in device buffers of a `cuda::CudaEngine`). Choose one with
//! [`cpu`], [`cuda`] or [`on`] and a [`Device`]; the decoders take a
//! `Box<dyn Backend>`.
//!
//! # Design decisions
//!
//! **States stay with the backend, in numbered slots.** A caller keeps a
//! stream in one slot for its whole life and names slots in every call: the
//! round step moves only the round's features to the device, and the readout
//! only the logits back. Slots, not a dense prefix, because a streaming
//! engine's batch is whichever open shots have a round queued.
//!
//! **Contiguous slots are the fast path.** A call whose slots are one
//! ascending run (`k, k+1, …`) runs in place on the backend's state buffer:
//! the batch decoder always calls this way, and so does a lone stream. Other
//! slot lists cost the CPU backend a gather and a scatter of the states (as
//! the stream engine did itself before), and the CUDA backend one launch per
//! ascending run of slots.
//!
//! **Dynamic dispatch, once per batch.** One virtual call per batch step
//! costs nanoseconds against a microseconds step, and lets a service pick
//! the device at run time without making every type above it generic.
//!
//! **Calls are synchronous.** When `step` or `readout` returns, its states
//! and logits are final, so the time a call takes is its latency (the CUDA
//! backend synchronizes before returning).

mod cpu;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

pub use cpu::CpuBackend;

use crate::{KernelConfig, Weights};

/// The recurrent model's batched round step and readout on one device, for
/// streams whose states live in the backend's slots `0..slots()` between
/// calls (see the module docs).
///
/// Every call names its slots in the order of its features or logits; the
/// slots of one call must be distinct and below [`Backend::slots`], or the
/// call fails with [`BackendError::Input`] and changes nothing.
pub trait Backend: Send + fmt::Debug {
    /// Where it runs, for logs and bench names: `cpu-avx512`, `cuda:0 (NVIDIA H200)`.
    fn device(&self) -> &str;

    /// The model's shapes.
    fn config(&self) -> &KernelConfig;

    /// Slots with a state.
    fn slots(&self) -> usize;

    /// Makes room for at least `slots` slots (never shrinks); new slots hold
    /// the zero state.
    fn reserve(&mut self, slots: usize) -> Result<(), BackendError>;

    /// Zeroes the states of `slots`: new shots start there.
    fn reset(&mut self, slots: &[usize]) -> Result<(), BackendError>;

    /// One round step of the streams in `slots`; `features` is
    /// `[slots.len()][S][NF]`, row `i` for `slots[i]`.
    fn step(&mut self, slots: &[usize], features: &[f32]) -> Result<(), BackendError>;

    /// The readout of the streams in `slots` into `logits` `[slots.len()][O]`;
    /// the states are left as they are.
    fn readout(&mut self, slots: &[usize], logits: &mut [f32]) -> Result<(), BackendError>;

    /// Copies the states of `slots` into `out` `[slots.len()][S][D]` (for
    /// checks and tests; from a GPU this is a download).
    fn states(&mut self, slots: &[usize], out: &mut [f32]) -> Result<(), BackendError>;
}

/// Why a backend could not be made or could not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The backend cannot run in this build or on this machine (no CUDA
    /// support compiled in, no driver, no GPU, no NVRTC, a model too large
    /// for the device); `reason` says which.
    #[error("the {backend} backend is unavailable: {reason}")]
    Unavailable {
        /// The backend asked for (`CUDA`).
        backend: &'static str,
        /// Why, in words.
        reason: String,
    },
    /// The device failed while running.
    #[error("{device}: {message}")]
    Device {
        /// [`Backend::device`].
        device: String,
        /// The failure.
        message: String,
    },
    /// An argument does not fit the backend: a length, a slot.
    #[error("invalid backend input: {0}")]
    Input(String),
}

/// A device to run the neural model on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Device {
    /// The fused CPU kernels on the instruction set this CPU supports best.
    #[default]
    Cpu,
    /// The CUDA kernels on the GPU with this ordinal.
    Cuda(usize),
}

impl FromStr for Device {
    type Err = BackendError;

    /// `cpu`, `cuda` (GPU 0) or `cuda:N`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BackendError::Input(format!("unknown device '{s}' (expected cpu, cuda or cuda:N)"));
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s.strip_prefix("cuda:").and_then(|n| n.parse().ok()).map(Device::Cuda).ok_or_else(bad),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The CPU backend for `weights`, one thread (see [`CpuBackend::with_threads`]).
pub fn cpu(weights: impl Into<Arc<Weights>>) -> CpuBackend {
    CpuBackend::new(weights)
}

/// The CUDA backend for `weights` on GPU `ordinal`.
///
/// # Errors
/// [`BackendError::Unavailable`] when this build lacks the `cuda` feature,
/// when libcuda or libnvrtc cannot be loaded (checked before either is
/// touched), when there is no such GPU, or when the model does not fit it;
/// [`BackendError::Device`] when the driver fails.
pub fn cuda(weights: &Weights, ordinal: usize) -> Result<Box<dyn Backend>, BackendError> {
    #[cfg(feature = "cuda")]
    {
        Ok(Box::new(crate::cuda::CudaBackend::new(weights, ordinal)?))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (weights, ordinal);
        Err(BackendError::Unavailable {
            backend: "CUDA",
            reason: "this build has no CUDA support (build the kernels crate with its `cuda` feature)".into(),
        })
    }
}

/// The backend for `device`: [`cpu`] or [`cuda`].
pub fn on(device: Device, weights: impl Into<Arc<Weights>>) -> Result<Box<dyn Backend>, BackendError> {
    match device {
        Device::Cpu => Ok(Box::new(cpu(weights))),
        Device::Cuda(ordinal) => {
            let weights: Arc<Weights> = weights.into();
            cuda(&weights, ordinal)
        }
    }
}

/// The first slot when `slots` is one ascending run `k, k+1, …` (and not empty).
pub(crate) fn contiguous(slots: &[usize]) -> Option<usize> {
    let first = *slots.first()?;
    slots.iter().enumerate().all(|(i, &s)| s == first + i).then_some(first)
}

/// Checks that every slot is below `limit`.
pub(crate) fn check_slots(slots: &[usize], limit: usize) -> Result<(), BackendError> {
    match slots.iter().find(|&&s| s >= limit) {
        Some(s) => Err(BackendError::Input(format!("slot {s} outside 0..{limit}"))),
        None => Ok(()),
    }
}

/// Checks that `len` values are `per` values (of `what`) for each of
/// `slots`, and that every slot is below `limit`.
pub(crate) fn check_call(
    slots: &[usize],
    limit: usize,
    len: usize,
    per: usize,
    what: &str,
) -> Result<(), BackendError> {
    if len != slots.len() * per {
        let expected = slots.len() * per;
        return Err(BackendError::Input(format!("{what} length {len} for {} slots, expected {expected}", slots.len())));
    }
    check_slots(slots, limit)
}

/// Checks that `slots` (all below `seen.len()`) are distinct; `seen` is
/// all `false` before and after.
pub(crate) fn check_distinct(slots: &[usize], seen: &mut [bool]) -> Result<(), BackendError> {
    let mut repeated = None;
    for &s in slots {
        if std::mem::replace(&mut seen[s], true) {
            repeated = Some(s);
            break;
        }
    }
    for &s in slots {
        seen[s] = false;
    }
    match repeated {
        Some(s) => Err(BackendError::Input(format!("slot {s} appears twice in one call"))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_print() {
        for (text, device) in [("cpu", Device::Cpu), ("cuda:0", Device::Cuda(0)), ("cuda:3", Device::Cuda(3))] {
            assert_eq!(text.parse::<Device>().unwrap(), device);
            assert_eq!(device.to_string(), text);
        }
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
        for bad in ["gpu", "cuda:", "cuda:x", "CPU"] {
            let err = bad.parse::<Device>().unwrap_err().to_string();
            assert!(err.contains(bad) && err.contains("expected cpu"), "{err}");
        }
    }

    #[test]
    fn slot_lists() {
        assert_eq!(contiguous(&[]), None);
        assert_eq!(contiguous(&[4]), Some(4));
        assert_eq!(contiguous(&[2, 3, 4]), Some(2));
        assert_eq!(contiguous(&[2, 4]), None);
        assert_eq!(contiguous(&[3, 2]), None);
        let mut seen = vec![false; 5];
        assert!(check_distinct(&[4, 0, 2], &mut seen).is_ok());
        let err = check_distinct(&[1, 3, 1], &mut seen).unwrap_err();
        assert_eq!(err, BackendError::Input("slot 1 appears twice in one call".into()));
        assert!(seen.iter().all(|s| !s));
        assert!(check_call(&[0, 4], 5, 6, 3, "features").is_ok());
        assert!(check_call(&[0, 5], 5, 6, 3, "features").unwrap_err().to_string().contains("slot 5 outside 0..5"));
        assert!(check_call(&[0, 4], 5, 5, 3, "features").unwrap_err().to_string().contains("features length 5"));
    }
}
