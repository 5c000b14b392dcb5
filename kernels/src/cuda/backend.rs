//! [`CudaBackend`]: a [`CudaEngine`] behind [`Backend`], the slots being the
//! engine's live streams, their states in its device buffers.

use super::{CudaEngine, CudaError};
use crate::backend::{Backend, BackendError, check_call, check_slots, contiguous};
use crate::{KernelConfig, Weights};

/// The CUDA kernels as a [`Backend`]. Slot `k` is the engine's live stream
/// `k`. A call whose slots are one ascending run is one launch on them; other
/// slot lists are sorted, and each ascending run of slots is its own launch
/// (the features are permuted on the host to match). Every call waits for
/// the GPU before it returns.
pub struct CudaBackend {
    engine: CudaEngine,
    /// `cuda:<ordinal> (<name>)`.
    device: String,
    /// A call's `(slot, row in the call)`, sorted by slot.
    order: Vec<(usize, usize)>,
    /// A call's features or logits in slot order.
    staged: Vec<f32>,
}

impl CudaBackend {
    /// The model on GPU `ordinal`, with one slot (grown by [`Backend::reserve`]).
    ///
    /// # Errors
    /// [`CudaEngine::with_device`]'s: no driver (checked before libcuda is
    /// touched), no GPU, no NVRTC or too little shared memory is
    /// [`BackendError::Unavailable`], saying which.
    pub fn new(weights: &Weights, ordinal: usize) -> Result<Self, BackendError> {
        let engine = CudaEngine::with_device(weights, 1, ordinal).map_err(|e| backend_error(e, "CUDA"))?;
        let device = format!("cuda:{ordinal} ({})", engine.device_name());
        Ok(Self { engine, device, order: Vec::new(), staged: Vec::new() })
    }

    /// The engine holding the states.
    pub fn engine(&self) -> &CudaEngine {
        &self.engine
    }

    fn error(&self, e: CudaError) -> BackendError {
        backend_error(e, &self.device)
    }

    /// Sorts the rows of a call by slot into `order`; slots must be distinct.
    fn sort(&mut self, slots: &[usize]) -> Result<(), BackendError> {
        self.order.clear();
        self.order.extend(slots.iter().enumerate().map(|(i, &s)| (s, i)));
        self.order.sort_unstable();
        match self.order.windows(2).find(|w| w[0].0 == w[1].0) {
            Some(w) => Err(BackendError::Input(format!("slot {} appears twice in one call", w[0].0))),
            None => Ok(()),
        }
    }
}

/// The ascending runs of consecutive slots in `order` (sorted, distinct):
/// `(first slot, first position in order, length)`.
fn runs(order: &[(usize, usize)]) -> Vec<(usize, usize, usize)> {
    let mut out: Vec<(usize, usize, usize)> = Vec::new();
    for (k, &(slot, _)) in order.iter().enumerate() {
        match out.last_mut() {
            Some((first, _, len)) if *first + *len == slot => *len += 1,
            _ => out.push((slot, k, 1)),
        }
    }
    out
}

/// A [`CudaError`] as a [`BackendError`]: what keeps the backend from
/// running here is [`BackendError::Unavailable`], a bad argument
/// [`BackendError::Input`], anything else a failure of `device`.
pub(crate) fn backend_error(e: CudaError, device: &str) -> BackendError {
    match e {
        CudaError::NoGpu(_) | CudaError::NoNvrtc(_) | CudaError::SharedMemory { .. } => {
            BackendError::Unavailable { backend: "CUDA", reason: e.to_string() }
        }
        CudaError::Config(e) => BackendError::Input(e.to_string()),
        CudaError::Input(m) => BackendError::Input(m),
        e @ (CudaError::Compile { .. } | CudaError::Driver { .. }) => {
            BackendError::Device { device: device.to_string(), message: e.to_string() }
        }
    }
}

impl Backend for CudaBackend {
    fn device(&self) -> &str {
        &self.device
    }

    fn config(&self) -> &KernelConfig {
        self.engine.config()
    }

    fn slots(&self) -> usize {
        self.engine.max_streams()
    }

    fn reserve(&mut self, slots: usize) -> Result<(), BackendError> {
        let now = self.slots();
        if slots > now {
            // Doubling, so that a stream engine opening shots one by one reallocates rarely.
            self.engine.grow(slots.max(2 * now)).map_err(|e| self.error(e))?;
        }
        Ok(())
    }

    fn reset(&mut self, slots: &[usize]) -> Result<(), BackendError> {
        check_slots(slots, self.slots())?;
        let mut sorted = slots.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        self.order.clear();
        self.order.extend(sorted.into_iter().map(|s| (s, 0)));
        for (first, _, len) in runs(&self.order) {
            self.engine.reset(first..first + len).map_err(|e| self.error(e))?;
        }
        self.engine.synchronize().map_err(|e| self.error(e))
    }

    fn step(&mut self, slots: &[usize], features: &[f32]) -> Result<(), BackendError> {
        let sf = self.engine.config().features_len();
        check_call(slots, self.slots(), features.len(), sf, "features")?;
        if let Some(first) = contiguous(slots) {
            self.engine.step_at(first, features).map_err(|e| self.error(e))?;
        } else if !slots.is_empty() {
            self.sort(slots)?;
            self.staged.clear();
            for &(_, i) in &self.order {
                self.staged.extend_from_slice(&features[i * sf..][..sf]);
            }
            for (first, k, len) in runs(&self.order) {
                let features = &self.staged[k * sf..(k + len) * sf];
                self.engine.step_at(first, features).map_err(|e| backend_error(e, &self.device))?;
            }
        }
        self.engine.synchronize().map_err(|e| self.error(e))
    }

    fn readout(&mut self, slots: &[usize], logits: &mut [f32]) -> Result<(), BackendError> {
        let o = self.engine.config().observables;
        check_call(slots, self.slots(), logits.len(), o, "logits")?;
        if let Some(first) = contiguous(slots) {
            return self.engine.readout_at(first, logits).map_err(|e| self.error(e));
        }
        if slots.is_empty() {
            return Ok(());
        }
        self.sort(slots)?;
        self.staged.clear();
        self.staged.resize(slots.len() * o, 0.0);
        for (first, k, len) in runs(&self.order) {
            let out = &mut self.staged[k * o..(k + len) * o];
            self.engine.readout_at(first, out).map_err(|e| backend_error(e, &self.device))?;
        }
        for (k, &(_, i)) in self.order.iter().enumerate() {
            logits[i * o..][..o].copy_from_slice(&self.staged[k * o..][..o]);
        }
        Ok(())
    }

    fn states(&mut self, slots: &[usize], out: &mut [f32]) -> Result<(), BackendError> {
        let sd = self.engine.config().state_len();
        check_call(slots, self.slots(), out.len(), sd, "states")?;
        for (&s, z) in slots.iter().zip(out.chunks_exact_mut(sd)) {
            z.copy_from_slice(&self.engine.states(s..s + 1).map_err(|e| self.error(e))?);
        }
        Ok(())
    }
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("device", &self.device)
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_consecutive_slots() {
        let order = |slots: &[usize]| slots.iter().map(|&s| (s, 0)).collect::<Vec<_>>();
        assert_eq!(runs(&order(&[])), vec![]);
        assert_eq!(runs(&order(&[3])), vec![(3, 0, 1)]);
        assert_eq!(runs(&order(&[0, 1, 2, 5, 6, 9])), vec![(0, 0, 3), (5, 3, 2), (9, 5, 1)]);
    }

    #[test]
    fn cuda_errors_map_to_backend_errors() {
        let e = backend_error(CudaError::NoGpu("libcuda not found".into()), "CUDA");
        assert_eq!(e.to_string(), "the CUDA backend is unavailable: no GPU: libcuda not found");
        let e = backend_error(CudaError::Input("3 streams".into()), "cuda:0 (x)");
        assert_eq!(e, BackendError::Input("3 streams".into()));
        let e = backend_error(CudaError::Driver { op: "cuLaunchKernel", message: "oops".into() }, "cuda:0 (x)");
        assert_eq!(e.to_string(), "cuda:0 (x): CUDA driver error in cuLaunchKernel: oops");
    }
}
