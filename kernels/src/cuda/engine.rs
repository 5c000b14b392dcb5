//! [`CudaEngine`]: one model's weights and up to `max_streams` stream states on one GPU.

use std::ops::Range;
use std::sync::Arc;

use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg};

use super::compile::{READOUT_KERNEL, SHOT_KERNEL, STEP_KERNEL, STEP_ONE_KERNEL, compile};
use super::layout::{MAX_PARAM_FEATURES, SharedLayout, WeightLayout, param_features, threads_for};
use super::{CudaError, require_driver};
use crate::{KernelConfig, Weights};

/// Shared memory a block gets without opting in.
const DEFAULT_SHARED_BYTES: usize = 48 * 1024;

/// One round's features of one stream as a kernel parameter: the kernel's
/// `RoundFeatures` is the first S·NF floats of it (the driver copies as many
/// bytes as the kernel's parameter has).
#[repr(C)]
#[derive(Clone, Copy)]
struct ParamFeatures([f32; MAX_PARAM_FEATURES]);

// SAFETY: plain `f32`s, `#[repr(C)]`; the kernel reads a prefix of it.
unsafe impl DeviceRepr for ParamFeatures {}

/// The model on one GPU: the weights (uploaded once), the states of up to
/// `max_streams` live streams (`[max_streams][S][D]`, kept on the device
/// between rounds) and staging buffers. Everything runs on one CUDA stream,
/// in call order; the calls that return data wait for it.
pub struct CudaEngine {
    config: KernelConfig,
    stream: Arc<CudaStream>,
    /// `qecd_step`: rounds of live streams, states in global memory.
    step_fn: CudaFunction,
    /// `qecd_step_one`: one round of stream 0, features in the parameters
    /// (absent where S·NF exceeds [`MAX_PARAM_FEATURES`]).
    step_one_fn: Option<CudaFunction>,
    /// The by-value features of `qecd_step_one`.
    param: Box<ParamFeatures>,
    /// `qecd_shot`: whole shots and their readout.
    shot_fn: CudaFunction,
    /// `qecd_readout`: logits of live streams.
    readout_fn: CudaFunction,
    /// The packed weights (`cuda/layout.rs`).
    weights: CudaSlice<f32>,
    /// Live streams' states, `[max_streams][S][D]`.
    states: CudaSlice<f32>,
    /// One round's features of every live stream, `[max_streams][S][NF]`.
    features: CudaSlice<f32>,
    /// Several rounds' features, `[B][T][S][NF]`, grown on demand.
    rounds_features: Option<CudaSlice<f32>>,
    /// Logits, `[max_streams][O]`.
    logits: CudaSlice<f32>,
    max_streams: usize,
    threads: u32,
    shared_bytes: u32,
    device: String,
    ordinal: usize,
}

/// Which device buffer holds the features of a step launch.
#[derive(Clone, Copy)]
enum Staged {
    /// `features`: one round of every stream.
    Round,
    /// `rounds_features`: several rounds of every stream.
    Rounds,
}

impl CudaEngine {
    /// The model on GPU 0, with room for `max_streams` live streams (all
    /// states zero). Compiles the kernels for the device (NVRTC, cached per
    /// process) and uploads the weights.
    ///
    /// # Errors
    /// [`CudaError::NoGpu`] without a driver or device, [`CudaError::NoNvrtc`]
    /// without NVRTC, [`CudaError::SharedMemory`] if a stream's state and
    /// scratch do not fit in one block's shared memory, [`CudaError::Compile`]
    /// or [`CudaError::Driver`] on failures.
    pub fn new(weights: &Weights, max_streams: usize) -> Result<Self, CudaError> {
        Self::with_device(weights, max_streams, 0)
    }

    /// As [`CudaEngine::new`], on GPU `ordinal`.
    pub fn with_device(weights: &Weights, max_streams: usize, ordinal: usize) -> Result<Self, CudaError> {
        require_driver()?;
        let config = weights.config().clone();
        config.validate()?;
        if max_streams == 0 || max_streams > i32::MAX as usize {
            return Err(CudaError::Input(format!("max_streams {max_streams} is not in 1..2³¹")));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| CudaError::NoGpu(format!("device {ordinal}: {e}")))?;
        let device = ctx.name().map_err(CudaError::driver("cuDeviceGetName"))?;
        let (major, minor) = ctx.compute_capability().map_err(CudaError::driver("compute capability"))?;

        let shared = SharedLayout::new(&config).bytes();
        let available = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(CudaError::driver("shared memory per block"))? as usize;
        if shared > available {
            return Err(CudaError::SharedMemory { needed: shared, available });
        }

        // The device's own architecture; NVRTC's default if this NVRTC does not know it.
        let ptx = compile(&config, Some(format!("compute_{major}{minor}")))
            .or_else(|first| compile(&config, None).map_err(|_| first))?;
        let module = ctx.load_module(ptx).map_err(CudaError::driver("loading the kernels (cuModuleLoadData)"))?;
        let load = |name: &'static str| -> Result<CudaFunction, CudaError> {
            let f = module.load_function(name).map_err(CudaError::driver(name))?;
            if shared > DEFAULT_SHARED_BYTES {
                f.set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, shared as i32)
                    .map_err(CudaError::driver("opting in to shared memory"))?;
            }
            Ok(f)
        };
        let (step_fn, shot_fn, readout_fn) = (load(STEP_KERNEL)?, load(SHOT_KERNEL)?, load(READOUT_KERNEL)?);
        let step_one_fn = if param_features(&config) > 0 { Some(load(STEP_ONE_KERNEL)?) } else { None };

        let stream = ctx.default_stream();
        let layout = WeightLayout::new(&config);
        let packed = layout.pack(&config, &weights.to_named());
        let weights = stream.clone_htod(&packed).map_err(CudaError::driver("uploading the weights"))?;
        let alloc = |n: usize| stream.alloc_zeros::<f32>(n).map_err(CudaError::driver("cuMemAlloc"));
        let states = alloc(max_streams * config.state_len())?;
        let features = alloc(max_streams * config.features_len())?;
        let logits = alloc(max_streams * config.observables)?;
        stream.synchronize().map_err(CudaError::driver("initialising"))?;
        Ok(Self {
            threads: threads_for(&config) as u32,
            shared_bytes: shared as u32,
            config,
            stream,
            step_fn,
            step_one_fn,
            param: Box::new(ParamFeatures([0.0; MAX_PARAM_FEATURES])),
            shot_fn,
            readout_fn,
            weights,
            states,
            features,
            rounds_features: None,
            logits,
            max_streams,
            device,
            ordinal,
        })
    }

    /// The shapes.
    pub fn config(&self) -> &KernelConfig {
        &self.config
    }

    /// The GPU's name (`cuDeviceGetName`).
    pub fn device_name(&self) -> &str {
        &self.device
    }

    /// The GPU's ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The number of live streams the engine holds.
    pub fn max_streams(&self) -> usize {
        self.max_streams
    }

    /// One round step of live streams `0..B`: `features` is `[B][S][NF]`
    /// (B ≤ `max_streams`). Only the features travel; the states stay on the
    /// device. At B = 1 they travel in the launch itself (no copy before it).
    /// Returns once the work is queued (see [`CudaEngine::synchronize`]).
    pub fn step_batch(&mut self, features: &[f32]) -> Result<(), CudaError> {
        self.step_at(0, features)
    }

    /// As [`CudaEngine::step_batch`], for live streams `first..first + B`.
    pub fn step_at(&mut self, first: usize, features: &[f32]) -> Result<(), CudaError> {
        let (sd, sf) = (self.config.state_len(), self.config.features_len());
        let streams = self.streams_in(features.len(), sf, "features")?;
        self.check_range(&(first..first + streams))?;
        if streams == 0 {
            return Ok(());
        }
        if let (1, Some(step_one)) = (streams, &self.step_one_fn) {
            self.param.0[..sf].copy_from_slice(features);
            let cfg = self.launch_config(1);
            let mut state = self.states.slice_mut(first * sd..(first + 1) * sd);
            // SAFETY: `qecd_step_one(float* states, const RoundFeatures features, const float* w)`
            // with RoundFeatures = float[S·NF], a prefix of `param`; one block, the S·D
            // floats of stream `first`'s state (the view).
            unsafe {
                self.stream.launch_builder(step_one).arg(&mut state).arg(&*self.param).arg(&self.weights).launch(cfg)
            }
            .map_err(CudaError::driver(STEP_ONE_KERNEL))?;
            return Ok(());
        }
        self.stream
            .memcpy_htod(features, &mut self.features.slice_mut(..streams * sf))
            .map_err(CudaError::driver("copying the features"))?;
        self.launch_step(first, streams, sf, 1, Staged::Round)
    }

    /// `rounds` round steps of live streams `0..B` in one launch: `features`
    /// is `[B][rounds][S][NF]`. The same as `rounds` calls of
    /// [`CudaEngine::step_batch`], without the state round trips.
    pub fn step_rounds(&mut self, features: &[f32], rounds: usize) -> Result<(), CudaError> {
        let per_stream = rounds * self.config.features_len();
        let streams = self.streams_in(features.len(), per_stream, "features")?;
        if streams == 0 {
            return Ok(());
        }
        self.upload_rounds(features)?;
        self.launch_step(0, streams, per_stream, rounds, Staged::Rounds)
    }

    /// Launches `qecd_step` on streams `first..first + streams` (checked by
    /// the callers) over the features staged in `staged`,
    /// `[streams][rounds][S][NF]` with `stride` floats per stream.
    fn launch_step(
        &mut self,
        first: usize,
        streams: usize,
        stride: usize,
        rounds: usize,
        staged: Staged,
    ) -> Result<(), CudaError> {
        let sd = self.config.state_len();
        let (stride, rounds) = (stride as i64, Self::rounds_arg(rounds)?);
        let cfg = self.launch_config(streams);
        let mut states = self.states.slice_mut(first * sd..(first + streams) * sd);
        let features = match staged {
            Staged::Round => &self.features,
            Staged::Rounds => self.rounds_features.as_ref().expect("uploaded before the launch"),
        };
        // SAFETY: `qecd_step(float* states, const float* features, long long stride, int rounds,
        // const float* w)`; grid = `streams` blocks, block b touching state b of the view
        // (streams·S·D floats, within `states` as the callers checked first + streams ≤
        // max_streams) and features at b·stride + t·S·NF, within the staged buffer (the
        // callers copied streams·stride floats into it).
        unsafe {
            self.stream
                .launch_builder(&self.step_fn)
                .arg(&mut states)
                .arg(features)
                .arg(&stride)
                .arg(&rounds)
                .arg(&self.weights)
                .launch(cfg)
        }
        .map_err(CudaError::driver(STEP_KERNEL))?;
        Ok(())
    }

    /// The readout of live streams `0..B` into `logits` `[B][O]` (B ≤
    /// `max_streams`); waits for the result.
    pub fn readout_batch(&mut self, logits: &mut [f32]) -> Result<(), CudaError> {
        self.readout_at(0, logits)
    }

    /// As [`CudaEngine::readout_batch`], for live streams `first..first + B`.
    pub fn readout_at(&mut self, first: usize, logits: &mut [f32]) -> Result<(), CudaError> {
        let (sd, o) = (self.config.state_len(), self.config.observables);
        let streams = self.streams_in(logits.len(), o, "logits")?;
        self.check_range(&(first..first + streams))?;
        if streams == 0 {
            return Ok(());
        }
        let cfg = self.launch_config(streams);
        let states = self.states.slice(first * sd..(first + streams) * sd);
        // SAFETY: `qecd_readout(const float* states, const float* w, float* logits)`; block b
        // reads state b of the view (streams·S·D floats, first + streams ≤ max_streams
        // checked above) and writes logits [b·O, (b+1)·O), b < streams ≤ max_streams.
        unsafe {
            self.stream
                .launch_builder(&self.readout_fn)
                .arg(&states)
                .arg(&self.weights)
                .arg(&mut self.logits)
                .launch(cfg)
        }
        .map_err(CudaError::driver(READOUT_KERNEL))?;
        self.download(streams * o, logits)
    }

    /// Makes room for `max_streams` live streams (never fewer than now): the
    /// states of the current ones are kept, the new ones are zero. Waits for
    /// the copy.
    pub fn grow(&mut self, max_streams: usize) -> Result<(), CudaError> {
        if max_streams <= self.max_streams {
            return Ok(());
        }
        if max_streams > i32::MAX as usize {
            return Err(CudaError::Input(format!("max_streams {max_streams} is not in 1..2³¹")));
        }
        let c = &self.config;
        let alloc = |n: usize| self.stream.alloc_zeros::<f32>(n).map_err(CudaError::driver("cuMemAlloc"));
        let mut states = alloc(max_streams * c.state_len())?;
        let features = alloc(max_streams * c.features_len())?;
        let logits = alloc(max_streams * c.observables)?;
        let old = self.states.len();
        self.stream
            .memcpy_dtod(&self.states, &mut states.slice_mut(..old))
            .map_err(CudaError::driver("copying the states"))?;
        self.synchronize()?;
        (self.states, self.features, self.logits, self.max_streams) = (states, features, logits, max_streams);
        Ok(())
    }

    /// Zeroes the states of live streams `streams` (a new shot starts there).
    pub fn reset(&mut self, streams: Range<usize>) -> Result<(), CudaError> {
        let sd = self.config.state_len();
        self.check_range(&streams)?;
        if streams.is_empty() {
            return Ok(());
        }
        self.stream
            .memset_zeros(&mut self.states.slice_mut(streams.start * sd..streams.end * sd))
            .map_err(CudaError::driver("cuMemsetD8"))
    }

    /// The states of live streams `streams`, `[len][S][D]`; waits for them.
    pub fn states(&self, streams: Range<usize>) -> Result<Vec<f32>, CudaError> {
        let sd = self.config.state_len();
        self.check_range(&streams)?;
        let mut out = vec![0.0; streams.len() * sd];
        if !out.is_empty() {
            let src = self.states.slice(streams.start * sd..streams.end * sd);
            self.stream.memcpy_dtoh(&src, &mut out).map_err(CudaError::driver("copying the states"))?;
            self.synchronize()?;
        }
        Ok(out)
    }

    /// Overwrites the states of live streams `first..first + B` with `states` `[B][S][D]`.
    pub fn set_states(&mut self, first: usize, states: &[f32]) -> Result<(), CudaError> {
        let sd = self.config.state_len();
        if !states.len().is_multiple_of(sd) {
            return Err(CudaError::Input(format!("states length {} is not a multiple of S·D = {sd}", states.len())));
        }
        let streams = first..first + states.len() / sd;
        self.check_range(&streams)?;
        if streams.is_empty() {
            return Ok(());
        }
        self.stream
            .memcpy_htod(states, &mut self.states.slice_mut(streams.start * sd..streams.end * sd))
            .map_err(CudaError::driver("copying the states"))
    }

    /// Whole shots: `features` `[B][rounds][S][NF]` (any B; run `max_streams`
    /// shots per launch), each from the zero state through `rounds` round
    /// steps to its readout, in one launch per chunk: the state never leaves
    /// the block's shared memory. Returns the logits `[B][O]`. The live
    /// streams' states are not touched.
    pub fn forward_shots(&mut self, features: &[f32], rounds: usize) -> Result<Vec<f32>, CudaError> {
        if rounds == 0 {
            return Err(CudaError::Input("forward_shots needs at least one round".into()));
        }
        let (o, per_shot) = (self.config.observables, rounds * self.config.features_len());
        if !features.len().is_multiple_of(per_shot) {
            return Err(CudaError::Input(format!(
                "features length {} is not a multiple of rounds·S·NF = {per_shot}",
                features.len()
            )));
        }
        let (stride, rounds) = (per_shot as i64, Self::rounds_arg(rounds)?);
        let mut logits = vec![0.0; features.len() / per_shot * o];
        for (chunk, out) in features.chunks(self.max_streams * per_shot).zip(logits.chunks_mut(self.max_streams * o)) {
            let shots = chunk.len() / per_shot;
            self.upload_rounds(chunk)?;
            let cfg = self.launch_config(shots);
            let buf = self.rounds_features.as_ref().expect("uploaded above");
            // SAFETY: `qecd_shot(const float* features, long long stride, int rounds, const float* w,
            // float* logits)`; block b reads features [b·stride, (b+1)·stride) of the `shots`
            // uploaded and writes logits [b·O, (b+1)·O), b < shots ≤ max_streams.
            unsafe {
                self.stream
                    .launch_builder(&self.shot_fn)
                    .arg(buf)
                    .arg(&stride)
                    .arg(&rounds)
                    .arg(&self.weights)
                    .arg(&mut self.logits)
                    .launch(cfg)
            }
            .map_err(CudaError::driver(SHOT_KERNEL))?;
            self.download(shots * o, out)?;
        }
        Ok(logits)
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.stream.synchronize().map_err(CudaError::driver("cuStreamSynchronize"))
    }

    /// Threads per block and dynamic shared memory per block (bytes) of the kernels.
    pub fn block_shape(&self) -> (u32, u32) {
        (self.threads, self.shared_bytes)
    }

    fn launch_config(&self, streams: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (streams as u32, 1, 1),
            block_dim: (self.threads, 1, 1),
            shared_mem_bytes: self.shared_bytes,
        }
    }

    /// The number of streams in `len` values of `per` each, checked against `max_streams`.
    fn streams_in(&self, len: usize, per: usize, what: &str) -> Result<usize, CudaError> {
        if per == 0 || !len.is_multiple_of(per) {
            return Err(CudaError::Input(format!("{what} length {len} is not a multiple of {per}")));
        }
        let streams = len / per;
        if streams > self.max_streams {
            return Err(CudaError::Input(format!("{streams} streams, the engine holds {}", self.max_streams)));
        }
        Ok(streams)
    }

    fn check_range(&self, streams: &Range<usize>) -> Result<(), CudaError> {
        if streams.start > streams.end || streams.end > self.max_streams {
            return Err(CudaError::Input(format!("streams {streams:?} outside 0..{}", self.max_streams)));
        }
        Ok(())
    }

    fn rounds_arg(rounds: usize) -> Result<i32, CudaError> {
        i32::try_from(rounds).map_err(|_| CudaError::Input(format!("{rounds} rounds is too many")))
    }

    /// Copies `features` to the start of the several-rounds buffer, growing it if needed.
    fn upload_rounds(&mut self, features: &[f32]) -> Result<(), CudaError> {
        if self.rounds_features.as_ref().is_none_or(|b| b.len() < features.len()) {
            self.rounds_features = None;
            let buf = self.stream.alloc_zeros::<f32>(features.len()).map_err(CudaError::driver("cuMemAlloc"))?;
            self.rounds_features = Some(buf);
        }
        let buf = self.rounds_features.as_mut().expect("allocated above");
        self.stream
            .memcpy_htod(features, &mut buf.slice_mut(..features.len()))
            .map_err(CudaError::driver("copying the features"))
    }

    /// Copies the first `n` logits into `out` and waits for them.
    fn download(&self, n: usize, out: &mut [f32]) -> Result<(), CudaError> {
        self.stream
            .memcpy_dtoh(&self.logits.slice(..n), &mut out[..n])
            .map_err(CudaError::driver("copying the logits"))?;
        self.synchronize()
    }
}

impl std::fmt::Debug for CudaEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaEngine")
            .field("device", &self.device)
            .field("config", &self.config)
            .field("max_streams", &self.max_streams)
            .field("threads", &self.threads)
            .field("shared_bytes", &self.shared_bytes)
            .finish_non_exhaustive()
    }
}
