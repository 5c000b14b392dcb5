//! [`CpuBackend`]: the fused CPU kernels behind [`Backend`], states in host memory.

use std::sync::Arc;

use super::{Backend, BackendError, check_call, check_distinct, check_slots, contiguous};
use crate::{KernelConfig, Scratch, Weights, readout_batch, step_batch};

/// Streams per kernel block: one matrix product covers this many streams
/// (better weight reuse; 8 suits d = 3 and up).
const BLOCK: usize = 8;

/// Batches of fewer streams run on the calling thread whatever the thread
/// count: spawning the scoped threads costs tens of microseconds.
const PARALLEL_STREAMS: usize = 256;

/// The fused CPU kernels ([`step_batch`], [`readout_batch`]) as a
/// [`Backend`]: every slot's state in one host buffer, and scratch for each
/// thread. Steps and readouts allocate nothing once the slots are reserved
/// (and, for slots that are not one ascending run, once the largest batch
/// has been seen).
pub struct CpuBackend {
    weights: Arc<Weights>,
    /// `cpu-<instruction set>`, as the benches name the CPU.
    device: String,
    /// Every slot's state: `[slots][S·D]`.
    states: Vec<f32>,
    /// One scratch per thread, each for blocks of [`BLOCK`] streams.
    scratches: Vec<Scratch>,
    /// Threads for batches of [`PARALLEL_STREAMS`] streams or more.
    threads: usize,
    /// A call's states when its slots are not one ascending run: `[n][S·D]`.
    gathered: Vec<f32>,
    /// Per slot, all `false` between calls: the check that a call's slots are distinct.
    seen: Vec<bool>,
}

impl CpuBackend {
    /// The backend for `weights`, with no slots, stepping on the calling thread.
    pub fn new(weights: impl Into<Arc<Weights>>) -> Self {
        let weights = weights.into();
        let device = format!("cpu-{:?}", weights.isa()).to_lowercase();
        let scratches = vec![Scratch::with_block(weights.config(), BLOCK)];
        Self { weights, device, states: Vec::new(), scratches, threads: 1, gathered: Vec::new(), seen: Vec::new() }
    }

    /// Splits batches of 256 streams or more over `threads` scoped threads
    /// (smaller ones always run on the calling thread).
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        let config = self.weights.config();
        self.scratches.resize_with(self.threads, || Scratch::with_block(config, BLOCK));
        self
    }

    /// The weights.
    pub fn weights(&self) -> &Arc<Weights> {
        &self.weights
    }

    fn threads_for(&self, streams: usize) -> usize {
        if streams >= PARALLEL_STREAMS { self.threads } else { 1 }
    }

    /// Copies the states of `slots` into `gathered`.
    fn gather(&mut self, slots: &[usize]) {
        let sd = self.weights.config().state_len();
        self.gathered.clear();
        for &s in slots {
            self.gathered.extend_from_slice(&self.states[s * sd..][..sd]);
        }
    }
}

impl Backend for CpuBackend {
    fn device(&self) -> &str {
        &self.device
    }

    fn config(&self) -> &KernelConfig {
        self.weights.config()
    }

    fn slots(&self) -> usize {
        self.states.len() / self.weights.config().state_len()
    }

    fn reserve(&mut self, slots: usize) -> Result<(), BackendError> {
        if slots > self.slots() {
            self.states.resize(slots * self.weights.config().state_len(), 0.0);
            self.seen.resize(slots, false);
        }
        Ok(())
    }

    fn reset(&mut self, slots: &[usize]) -> Result<(), BackendError> {
        check_slots(slots, self.slots())?;
        let sd = self.weights.config().state_len();
        for &s in slots {
            self.states[s * sd..][..sd].fill(0.0);
        }
        Ok(())
    }

    fn step(&mut self, slots: &[usize], features: &[f32]) -> Result<(), BackendError> {
        let c = self.weights.config();
        let (sd, sf) = (c.state_len(), c.features_len());
        check_call(slots, self.slots(), features.len(), sf, "features")?;
        let threads = self.threads_for(slots.len());
        if let Some(first) = contiguous(slots) {
            let states = &mut self.states[first * sd..(first + slots.len()) * sd];
            step_batch(&self.weights, states, features, &mut self.scratches, threads);
            return Ok(());
        }
        check_distinct(slots, &mut self.seen)?;
        self.gather(slots);
        step_batch(&self.weights, &mut self.gathered, features, &mut self.scratches, threads);
        for (&s, z) in slots.iter().zip(self.gathered.chunks_exact(sd)) {
            self.states[s * sd..][..sd].copy_from_slice(z);
        }
        Ok(())
    }

    fn readout(&mut self, slots: &[usize], logits: &mut [f32]) -> Result<(), BackendError> {
        let c = self.weights.config();
        let (sd, o) = (c.state_len(), c.observables);
        check_call(slots, self.slots(), logits.len(), o, "logits")?;
        let threads = self.threads_for(slots.len());
        if let Some(first) = contiguous(slots) {
            let states = &self.states[first * sd..(first + slots.len()) * sd];
            readout_batch(&self.weights, states, &mut self.scratches, logits, threads);
            return Ok(());
        }
        check_distinct(slots, &mut self.seen)?;
        self.gather(slots);
        readout_batch(&self.weights, &self.gathered, &mut self.scratches, logits, threads);
        Ok(())
    }

    fn states(&mut self, slots: &[usize], out: &mut [f32]) -> Result<(), BackendError> {
        let sd = self.weights.config().state_len();
        check_call(slots, self.slots(), out.len(), sd, "states")?;
        for (&s, z) in slots.iter().zip(out.chunks_exact_mut(sd)) {
            z.copy_from_slice(&self.states[s * sd..][..sd]);
        }
        Ok(())
    }
}

impl std::fmt::Debug for CpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuBackend")
            .field("device", &self.device)
            .field("config", self.weights.config())
            .field("slots", &self.slots())
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}
