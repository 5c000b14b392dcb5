//! Training and fine-tuning, whichever engine computes the gradients:
//! AdamW (or Lion) with linear warm-up and cosine decay, gradient clipping,
//! periodic evaluation on a fixed held-out set (against a baseline decoder's
//! error count computed by the caller), atomic checkpoints with the
//! optimizer's state beside them, resumption, and a CSV log.
//!
//! Two engines implement [`Engine`]: the fused CPU trainer ([`FusedEngine`],
//! `kernels::train`, always built) and tch ([`crate::net::TchEngine`], feature
//! `train`: the gradient reference, and the trainer for a CUDA device).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use kernels::train::{AdamW, Lion, Optimizer, TrainBatch, clip_grad_norm};
use simulator_bridge::PackedShots;
use simulator_bridge::labels::LabeledSampler;

use crate::ModelError;
use crate::checkpoint::{Checkpoint, CheckpointMeta};
use crate::features::Featurizer;
use crate::fused::FusedNet;

/// One batch of training data, in host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// `[B][T][S][3]`.
    pub features: Vec<f32>,
    /// `[B][T][O]`, 0/1: per-round labels (docs/model.md §Dense labels) when
    /// `dense`, else only the last round's (the observables) are set.
    pub labels: Vec<f32>,
    /// B.
    pub shots: usize,
    /// T (round steps, the final one included).
    pub rounds: usize,
    /// Whether the labels of rounds before the last are known.
    pub dense: bool,
}

impl Batch {
    /// The last round's labels, `[B][O]`.
    pub fn final_labels(&self) -> Vec<f32> {
        let o = self.labels.len() / (self.shots * self.rounds).max(1);
        self.labels.chunks_exact(self.rounds * o).flat_map(|shot| shot[(self.rounds - 1) * o..].to_vec()).collect()
    }
}

/// Where training batches come from.
pub trait BatchSource {
    /// The batch for optimizer step `step`.
    fn next_batch(&mut self, step: u64, batch: usize) -> Result<Batch, ModelError>;
}

/// Turns shots into a batch with final labels only.
pub fn make_batch(featurizer: &Featurizer, events: &PackedShots, observables: &PackedShots, shots: &[usize]) -> Batch {
    let (t, o) = (featurizer.num_rounds(), observables.bits_per_shot());
    let mut features = Vec::with_capacity(shots.len() * featurizer.shot_len());
    let mut labels = vec![0.0f32; shots.len() * t * o];
    for (b, &s) in shots.iter().enumerate() {
        featurizer.extend_features(events, s, s + 1, &mut features);
        for k in 0..o {
            labels[(b * t + t - 1) * o + k] = if observables.get(s, k) { 1.0 } else { 0.0 };
        }
    }
    Batch { features, labels, shots: shots.len(), rounds: t, dense: false }
}

/// How [`SimulatedSource`] samples each rounds case.
enum CaseSampler {
    /// Stim's circuit sampler: final labels only.
    Circuit(stim::DetectorSampler),
    /// Stim's DEM sampler with the fired errors: per-round labels.
    Labeled(LabeledSampler),
}

/// Fresh simulated shots for every step, with the number of rounds drawn per
/// step from a list (so the model learns the recurrence).
pub struct SimulatedSource {
    /// One entry per number of rounds.
    cases: Vec<(Featurizer, CaseSampler)>,
    num_observables: usize,
    seed: u64,
    /// Another source for the steps before a given one (denser noise first).
    first: Option<(Box<SimulatedSource>, u64)>,
}

impl SimulatedSource {
    /// `cases[i]`: the featurizer of a noisy circuit, and the circuit. Each
    /// sampler is seeded from `seed`, the case index, and `resume_step`, so a
    /// resumed run draws shots no earlier run drew. With `dense`, shots come
    /// from the circuit's detector error model with per-round labels.
    pub fn new(
        cases: Vec<(Featurizer, stim::Circuit)>,
        basis: simulator_bridge::Basis,
        seed: u64,
        resume_step: u64,
        dense: bool,
    ) -> Result<Self, ModelError> {
        let num_observables = cases.first().map(|(_, c)| c.num_observables() as usize).unwrap_or(1);
        let mut out = Vec::with_capacity(cases.len());
        for (i, (f, c)) in cases.into_iter().enumerate() {
            let s = simulator_bridge::sample::derive_seed(seed, (resume_step << 16) | i as u64);
            let sampler = if dense {
                CaseSampler::Labeled(LabeledSampler::new(&c, basis, s)?)
            } else {
                CaseSampler::Circuit(c.compile_detector_sampler_with_seed(s))
            };
            out.push((f, sampler));
        }
        Ok(Self { cases: out, num_observables, seed, first: None })
    }

    /// This source from step `steps` on, and `first` before it.
    pub fn after(mut self, first: SimulatedSource, steps: u64) -> Self {
        self.first = Some((Box::new(first), steps));
        self
    }
}

impl BatchSource for SimulatedSource {
    fn next_batch(&mut self, step: u64, batch: usize) -> Result<Batch, ModelError> {
        if let Some((first, until)) = &mut self.first
            && step < *until
        {
            return first.next_batch(step, batch);
        }
        let pick = simulator_bridge::sample::derive_seed(self.seed ^ 0xC0FFEE, step) as usize % self.cases.len();
        let (featurizer, sampler) = &mut self.cases[pick];
        let all: Vec<usize> = (0..batch).collect();
        match sampler {
            CaseSampler::Circuit(sampler) => {
                let (dets, obs) = sampler.sample_bit_packed_separate_observables(batch as u64);
                let events = PackedShots::from_bytes(dets, featurizer.num_detectors())?;
                let observables = PackedShots::from_bytes(obs, self.num_observables)?;
                Ok(make_batch(featurizer, &events, &observables, &all))
            }
            CaseSampler::Labeled(sampler) => {
                let shots = sampler.sample(batch)?;
                let mut out = make_batch(featurizer, &shots.detectors, &shots.observables, &all);
                for (i, v) in out.labels.iter_mut().enumerate() {
                    *v = if shots
                        .round_labels
                        .get(i / shots.round_labels.bits_per_shot(), i % shots.round_labels.bits_per_shot())
                    {
                        1.0
                    } else {
                        0.0
                    };
                }
                out.dense = true;
                Ok(out)
            }
        }
    }
}

/// A fixed set of shots (fine-tuning data), visited in a shuffled order each epoch.
pub struct FixedSource {
    featurizer: Featurizer,
    events: PackedShots,
    observables: PackedShots,
    order: Vec<usize>,
    cursor: usize,
    rng: u64,
}

impl FixedSource {
    /// The shots of `events`/`observables`, shuffled with `seed`.
    pub fn new(featurizer: Featurizer, events: PackedShots, observables: PackedShots, seed: u64) -> Self {
        let order = (0..events.num_shots()).collect();
        Self { featurizer, events, observables, order, cursor: usize::MAX, rng: seed }
    }

    fn shuffle(&mut self) {
        for i in (1..self.order.len()).rev() {
            self.rng = simulator_bridge::sample::derive_seed(self.rng, i as u64);
            self.order.swap(i, (self.rng % (i as u64 + 1)) as usize);
        }
        self.cursor = 0;
    }
}

impl BatchSource for FixedSource {
    fn next_batch(&mut self, _step: u64, batch: usize) -> Result<Batch, ModelError> {
        if self.order.is_empty() {
            return Err(ModelError::Training("no fine-tuning shots".into()));
        }
        let mut picked = Vec::with_capacity(batch);
        while picked.len() < batch {
            if self.cursor >= self.order.len() {
                self.shuffle();
            }
            picked.push(self.order[self.cursor]);
            self.cursor += 1;
        }
        Ok(make_batch(&self.featurizer, &self.events, &self.observables, &picked))
    }
}

/// The loss of one training step.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepLoss {
    /// What was minimized: the final BCE plus the weighted per-round BCE.
    pub loss: f64,
    /// Mean BCE of the final readout.
    pub final_bce: f64,
    /// Mean BCE of the earlier rounds' readouts (0 without them).
    pub aux_bce: f64,
}

/// What computes gradients and applies the optimizer.
pub trait Engine {
    /// `fused` or `tch`.
    fn name(&self) -> &'static str;
    /// The device, in words, for the checkpoint's provenance.
    fn device(&self) -> String;
    /// One optimizer step on `batch` at learning rate `lr`, the gradient norm
    /// clipped to `clip`, the earlier rounds' readouts weighted by `aux_weight`.
    fn step(&mut self, batch: &Batch, lr: f64, clip: f64, aux_weight: f32) -> Result<StepLoss, ModelError>;
    /// Final logits `[n·O]` of every shot of `events`.
    fn logits(&mut self, featurizer: &Featurizer, events: &PackedShots) -> Result<Vec<f32>, ModelError>;
    /// The current weights as a checkpoint.
    fn to_checkpoint(&self, meta: CheckpointMeta) -> Result<Checkpoint, ModelError>;
    /// Replaces the weights (same config).
    fn load(&mut self, ckpt: &Checkpoint) -> Result<(), ModelError>;
    /// The optimizer's state to save beside a checkpoint, if the engine keeps one.
    fn optimizer_state(&self) -> Option<&Optimizer> {
        None
    }
    /// Restores saved optimizer state, or says why it cannot.
    fn restore_optimizer(&mut self, state: &OptimizerState) -> Result<(), String> {
        let _ = state;
        Err(format!("the {} trainer keeps no optimizer state", self.name()))
    }
}

/// The fused CPU trainer with its optimizer.
pub struct FusedEngine {
    net: FusedNet,
    optimizer: Optimizer,
    threads: usize,
}

impl FusedEngine {
    /// `ckpt` in a fused trainer with `threads` workers, for batches of up to
    /// `max_shots` shots of up to `max_rounds` round steps; `optimizer` is
    /// `adamw` or `lion`.
    pub fn new(
        ckpt: &Checkpoint,
        optimizer: &str,
        weight_decay: f64,
        threads: usize,
        max_shots: usize,
        max_rounds: usize,
    ) -> Result<Self, ModelError> {
        let net = FusedNet::from_checkpoint(ckpt, threads, max_shots, max_rounds)?;
        let optimizer = match optimizer {
            "adamw" => Optimizer::AdamW(AdamW::new(net.num_params(), weight_decay)),
            "lion" => Optimizer::Lion(Lion::new(net.num_params(), weight_decay)),
            other => return Err(ModelError::Invalid(format!("--optimizer takes adamw or lion, not '{other}'"))),
        };
        Ok(Self { net, optimizer, threads })
    }

    /// The underlying trainer.
    pub fn net(&mut self) -> &mut FusedNet {
        &mut self.net
    }
}

impl Engine for FusedEngine {
    fn name(&self) -> &'static str {
        "fused"
    }

    fn device(&self) -> String {
        format!("cpu ({} threads, fused)", self.threads)
    }

    fn step(&mut self, batch: &Batch, lr: f64, clip: f64, aux_weight: f32) -> Result<StepLoss, ModelError> {
        if aux_weight > 0.0 && !batch.dense {
            return Err(ModelError::Training("a per-round loss needs dense labels, which these shots lack".into()));
        }
        let loss = self.net.loss_and_grad(&TrainBatch {
            features: &batch.features,
            labels: &batch.labels,
            shots: batch.shots,
            rounds: batch.rounds,
            aux_weight,
        });
        let out = StepLoss { loss: loss.loss, final_bce: loss.final_bce, aux_bce: loss.aux_bce };
        if !out.loss.is_finite() {
            return Ok(out);
        }
        clip_grad_norm(self.net.grads_mut(), clip);
        self.net.apply(&mut self.optimizer, lr)?;
        Ok(out)
    }

    fn logits(&mut self, featurizer: &Featurizer, events: &PackedShots) -> Result<Vec<f32>, ModelError> {
        self.net.logits(featurizer, events)
    }

    fn to_checkpoint(&self, meta: CheckpointMeta) -> Result<Checkpoint, ModelError> {
        Ok(self.net.to_checkpoint(meta))
    }

    fn load(&mut self, ckpt: &Checkpoint) -> Result<(), ModelError> {
        self.net.load(ckpt)
    }

    fn optimizer_state(&self) -> Option<&Optimizer> {
        Some(&self.optimizer)
    }

    fn restore_optimizer(&mut self, state: &OptimizerState) -> Result<(), String> {
        if state.engine != self.name() {
            return Err(format!("it was written by the {} trainer", state.engine));
        }
        if state.optimizer != self.optimizer.name() {
            return Err(format!("it holds {} moments and this run uses {}", state.optimizer, self.optimizer.name()));
        }
        self.optimizer.restore(state.step, |name| state.moments.iter().find(|(n, _)| n == name).map(|(_, v)| &v[..]))
    }
}

/// An optimizer's state as saved beside a checkpoint (`CKPT.optim.safetensors`).
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerState {
    /// The engine that wrote it.
    pub engine: String,
    /// `adamw` or `lion`.
    pub optimizer: String,
    /// Updates done.
    pub step: u64,
    /// The training step of the checkpoint it was saved with.
    pub checkpoint_steps: u64,
    /// Moment buffers by name, flat over the stored tensors in checkpoint order.
    pub moments: Vec<(String, Vec<f32>)>,
}

impl OptimizerState {
    /// Where the state of the checkpoint at `ckpt` lives.
    pub fn path_for(ckpt: &Path) -> PathBuf {
        ckpt.with_extension("optim.safetensors")
    }

    /// The state of `optimizer` in `engine`, saved with a checkpoint at
    /// training step `checkpoint_steps`.
    pub fn of(engine: &str, optimizer: &Optimizer, checkpoint_steps: u64) -> Self {
        Self {
            engine: engine.to_string(),
            optimizer: optimizer.name().to_string(),
            step: optimizer.step(),
            checkpoint_steps,
            moments: optimizer.moments().into_iter().map(|(n, v)| (n.to_string(), v.to_vec())).collect(),
        }
    }

    /// Writes it atomically to `path`.
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        let meta = serde_json::json!({
            "engine": self.engine, "optimizer": self.optimizer, "step": self.step,
            "checkpoint_steps": self.checkpoint_steps,
        });
        let data: Vec<(String, Vec<u8>, usize)> = self
            .moments
            .iter()
            .map(|(n, v)| (n.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect(), v.len()))
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = data
            .iter()
            .map(|(n, bytes, len)| {
                let view = safetensors::tensor::TensorView::new(safetensors::tensor::Dtype::F32, vec![*len], bytes)
                    .expect("f32 bytes of the stated length");
                (n.clone(), view)
            })
            .collect();
        let mut header = std::collections::HashMap::new();
        header.insert("qecd-optimizer".to_string(), meta.to_string());
        let bytes = safetensors::serialize(views, Some(header))
            .map_err(|e| ModelError::Training(format!("cannot serialize the optimizer state: {e}")))?;
        simulator_bridge::fsutil::write_atomically(path, |w| {
            w.write_all(&bytes).map_err(|e| simulator_bridge::BridgeError::io(path, e))
        })?;
        Ok(())
    }

    /// Reads the state at `path`.
    pub fn load(path: &Path) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| e.to_string())?;
        let meta: serde_json::Value = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("qecd-optimizer"))
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| format!("{} has no optimizer metadata", path.display()))?;
        let tensors = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| e.to_string())?;
        let moments = tensors
            .tensors()
            .into_iter()
            .map(|(n, v)| (n, v.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()))
            .collect();
        Ok(Self {
            engine: meta["engine"].as_str().unwrap_or_default().to_string(),
            optimizer: meta["optimizer"].as_str().unwrap_or_default().to_string(),
            step: meta["step"].as_u64().unwrap_or(0),
            checkpoint_steps: meta["checkpoint_steps"].as_u64().unwrap_or(u64::MAX),
            moments,
        })
    }
}

/// Resumes the optimizer of `engine` from the state saved beside the
/// checkpoint at `path` (at training step `steps`, last trained by `trainer`),
/// and says what happened: continued exactly, or why the moments start at zero.
pub fn resume_optimizer(engine: &mut dyn Engine, path: &Path, steps: u64, trainer: &str) -> String {
    let state_path = OptimizerState::path_for(path);
    let why = if !state_path.exists() {
        match trainer {
            "" | "tch" => "the checkpoint was written by the tch trainer, which saves no optimizer state".to_string(),
            other => format!("{} is missing (the {other} trainer's state)", state_path.display()),
        }
    } else {
        let restored = OptimizerState::load(&state_path).and_then(|state| {
            if state.checkpoint_steps != steps {
                return Err(format!(
                    "{} belongs to step {}, the checkpoint is at step {steps}",
                    state_path.display(),
                    state.checkpoint_steps
                ));
            }
            engine.restore_optimizer(&state)
        });
        match restored {
            Ok(()) => return format!("resuming with the optimizer state in {}", state_path.display()),
            Err(why) => why,
        }
    };
    format!("the optimizer's moments start from zero: {why}")
}

/// One held-out case, featurized once.
pub struct EvalCase {
    /// Label in logs, e.g. "r=25".
    pub label: String,
    featurizer: Featurizer,
    events: PackedShots,
    /// Actual observable flips.
    pub observables: PackedShots,
    /// Errors the baseline decoder makes on these shots, if known.
    pub baseline_errors: Option<u64>,
}

impl EvalCase {
    /// A held-out case from shots and (optionally) the baseline's error count on them.
    pub fn new(
        label: String,
        featurizer: Featurizer,
        events: PackedShots,
        observables: PackedShots,
        baseline_errors: Option<u64>,
    ) -> Self {
        Self { label, featurizer, events, observables, baseline_errors }
    }

    /// Shots in the case.
    pub fn num_shots(&self) -> usize {
        self.events.num_shots()
    }

    /// Round steps per shot.
    pub fn num_rounds(&self) -> usize {
        self.featurizer.num_rounds()
    }

    /// The model's logits on every shot, `[n * O]`.
    pub fn logits(&self, engine: &mut dyn Engine) -> Result<Vec<f32>, ModelError> {
        engine.logits(&self.featurizer, &self.events)
    }
}

/// Shots whose hard prediction (logit > 0) misses any observable.
pub fn count_errors(logits: &[f32], observables: &PackedShots) -> u64 {
    let o = observables.bits_per_shot();
    (0..observables.num_shots()).filter(|&s| (0..o).any(|k| (logits[s * o + k] > 0.0) != observables.get(s, k))).count()
        as u64
}

/// Mean binary cross-entropy of logits against the observables.
pub fn mean_bce(logits: &[f32], observables: &PackedShots) -> f64 {
    let o = observables.bits_per_shot();
    let mut total = 0.0;
    for s in 0..observables.num_shots() {
        for k in 0..o {
            let x = logits[s * o + k] as f64;
            let y = if observables.get(s, k) { 1.0 } else { 0.0 };
            total += x.max(0.0) - x * y + (-x.abs()).exp().ln_1p();
        }
    }
    total / (observables.num_shots() * o).max(1) as f64
}

/// How training runs.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warm-up steps.
    pub warmup: u64,
    /// Total optimizer steps (the cosine decays to 0 at this step).
    pub steps: u64,
    /// The step the schedule starts from (0 for pretraining, even when
    /// resumed; the pretrained step count for fine-tuning).
    pub first_step: u64,
    /// Shots per step.
    pub batch: usize,
    /// Gradient-norm clip.
    pub clip: f64,
    /// Weight of the earlier rounds' readouts (0: the final label only).
    pub aux_weight: f32,
    /// Evaluate every this many steps (and at the end).
    pub eval_every: u64,
    /// Keep the checkpoint with the lowest validation loss and stop after this
    /// many evaluations without improvement (fine-tuning); `None` keeps the latest.
    pub early_stop_patience: Option<u32>,
    /// Stop (saving) after this many seconds of this run.
    pub max_seconds: Option<f64>,
    /// Checkpoint path.
    pub out: PathBuf,
    /// CSV log path (appended).
    pub log: Option<PathBuf>,
}

impl TrainOptions {
    /// Learning rate at `step`: linear warm-up, then cosine decay to 0.
    pub fn lr_at(&self, step: u64) -> f64 {
        let step = step.saturating_sub(self.first_step);
        let steps = self.steps.saturating_sub(self.first_step);
        let warm = if self.warmup == 0 { 1.0 } else { ((step + 1) as f64 / self.warmup as f64).min(1.0) };
        let span = steps.saturating_sub(self.warmup).max(1) as f64;
        let progress = (step.saturating_sub(self.warmup) as f64 / span).min(1.0);
        self.lr * warm * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// What an evaluation found, per held-out case: (label, shots, loss, neural errors, baseline errors).
#[derive(Clone, Debug)]
pub struct EvalReport {
    /// Optimizer step.
    pub step: u64,
    /// Per case.
    pub cases: Vec<(String, usize, f64, u64, Option<u64>)>,
}

impl EvalReport {
    /// Sum of the cases' mean losses.
    pub fn loss(&self) -> f64 {
        self.cases.iter().map(|c| c.2).sum()
    }
}

/// Evaluates the model on every held-out case.
pub fn evaluate(engine: &mut dyn Engine, eval: &[EvalCase], step: u64) -> Result<EvalReport, ModelError> {
    let mut cases = Vec::new();
    for case in eval {
        let logits = case.logits(engine)?;
        cases.push((
            case.label.clone(),
            case.num_shots(),
            mean_bce(&logits, &case.observables),
            count_errors(&logits, &case.observables),
            case.baseline_errors,
        ));
    }
    Ok(EvalReport { step, cases })
}

/// Progress of one optimizer step.
#[derive(Clone, Debug)]
pub struct StepReport {
    /// Steps done (cumulative over resumptions).
    pub step: u64,
    /// Training loss of the step.
    pub loss: StepLoss,
    /// Learning rate used.
    pub lr: f64,
}

/// Saves `ckpt` to `path` and the engine's optimizer state beside it (or
/// removes a state left there by another run, which no longer fits).
fn save_with_state(engine: &dyn Engine, ckpt: &Checkpoint, path: &Path) -> Result<(), ModelError> {
    ckpt.save(path)?;
    let state_path = OptimizerState::path_for(path);
    match engine.optimizer_state() {
        Some(opt) => OptimizerState::of(engine.name(), opt, ckpt.meta.provenance.steps).save(&state_path)?,
        None if state_path.exists() => std::fs::remove_file(&state_path)
            .map_err(|e| ModelError::Training(format!("cannot remove {}: {e}", state_path.display())))?,
        None => {}
    }
    Ok(())
}

/// Trains from `meta.provenance.steps` up to `opts.steps`, saving
/// checkpoints to `opts.out`. On a non-finite loss it stops with an error and
/// leaves the last good checkpoint in place.
pub fn train(
    engine: &mut dyn Engine,
    meta: &mut CheckpointMeta,
    source: &mut dyn BatchSource,
    eval: &[EvalCase],
    opts: &TrainOptions,
    on_step: &mut dyn FnMut(&StepReport),
    on_eval: &mut dyn FnMut(&EvalReport),
) -> Result<Option<EvalReport>, ModelError> {
    let start = Instant::now();
    let seconds_before = meta.provenance.seconds;
    meta.provenance.trainer = engine.name().to_string();
    meta.provenance.device = engine.device();
    let mut best: Option<(f64, Checkpoint)> = None;
    let mut since_best = 0u32;
    let mut last_eval = None;
    let mut log = match &opts.log {
        Some(path) => {
            let fresh = !path.exists();
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| ModelError::Training(format!("cannot open log {}: {e}", path.display())))?;
            if fresh {
                writeln!(f, "step,samples,seconds,lr,train_loss,case,shots,eval_loss,errors,baseline_errors")
                    .map_err(|e| ModelError::Training(e.to_string()))?;
            }
            Some(f)
        }
        None => None,
    };
    let mut recent_loss;
    while meta.provenance.steps < opts.steps {
        let step = meta.provenance.steps;
        let lr = opts.lr_at(step);
        let batch = source.next_batch(step, opts.batch)?;
        let stop = |why: String| {
            ModelError::Training(format!(
                "{why} at step {step}; stopped, and the last good checkpoint {} is kept",
                opts.out.display()
            ))
        };
        let loss = match engine.step(&batch, lr, opts.clip, opts.aux_weight) {
            Err(ModelError::Diverged(why)) => return Err(stop(why)),
            other => other?,
        };
        if !loss.loss.is_finite() {
            return Err(stop(format!("the loss became {}", loss.loss)));
        }
        recent_loss = loss;
        meta.provenance.steps += 1;
        meta.provenance.samples_seen += opts.batch as u64;
        meta.provenance.seconds = seconds_before + start.elapsed().as_secs_f64();
        on_step(&StepReport { step: meta.provenance.steps, loss, lr });
        let out_of_time = opts.max_seconds.is_some_and(|m| start.elapsed().as_secs_f64() >= m);
        let done = meta.provenance.steps >= opts.steps || out_of_time;
        if meta.provenance.steps.is_multiple_of(opts.eval_every) || done {
            let report = evaluate(engine, eval, meta.provenance.steps)?;
            if let Some(f) = log.as_mut() {
                for (label, shots, eval_loss, errors, baseline) in &report.cases {
                    writeln!(
                        f,
                        "{},{},{:.1},{:.3e},{:.5},{label},{shots},{eval_loss:.5},{errors},{}",
                        meta.provenance.steps,
                        meta.provenance.samples_seen,
                        meta.provenance.seconds,
                        lr,
                        recent_loss.final_bce,
                        baseline.map(|b| b.to_string()).unwrap_or_default()
                    )
                    .map_err(|e| ModelError::Training(e.to_string()))?;
                }
                f.flush().map_err(|e| ModelError::Training(e.to_string()))?;
            }
            on_eval(&report);
            match opts.early_stop_patience {
                None => {
                    save_with_state(engine, &engine.to_checkpoint(meta.clone())?, &opts.out)?;
                }
                Some(patience) => {
                    if best.as_ref().is_none_or(|(b, _)| report.loss() < *b) {
                        best = Some((report.loss(), engine.to_checkpoint(meta.clone())?));
                        since_best = 0;
                    } else {
                        since_best += 1;
                    }
                    if since_best >= patience {
                        last_eval = Some(report);
                        break;
                    }
                }
            }
            last_eval = Some(report);
        }
        if out_of_time {
            break;
        }
    }
    if let Some((_, ckpt)) = best {
        // Keep the best weights, with the bookkeeping of the whole run.
        let mut ckpt = ckpt;
        ckpt.meta.provenance.samples_seen = meta.provenance.samples_seen;
        ckpt.meta.provenance.seconds = meta.provenance.seconds;
        ckpt.save(&opts.out)?;
        engine.load(&ckpt)?;
        *meta = ckpt.meta;
    }
    Ok(last_eval)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{Checkpoint, ModelLayout};
    use crate::config::ModelConfig;
    use simulator_bridge::sample::Sampler;
    use simulator_bridge::{Basis, MemoryExperiment, NoiseModel, StabilizerLayout};

    fn setup(rounds: usize) -> (Featurizer, stim::Circuit, Checkpoint) {
        let layout = ModelLayout::for_code(3, Basis::Z).unwrap();
        let circuit =
            MemoryExperiment::new(3, rounds, Basis::Z).unwrap().noisy_circuit(&NoiseModel::Si1000 { p: 0.01 }).unwrap();
        let f = Featurizer::new(&layout, &StabilizerLayout::from_circuit(&circuit, Basis::Z).unwrap()).unwrap();
        let ckpt = Checkpoint::random(ModelConfig::for_distance(3, 16, 2, 1, 32), layout, 3);
        (f, circuit, ckpt)
    }

    /// A few fused optimizer steps on one fixed batch lower its loss.
    #[test]
    fn steps_lower_the_loss_on_a_fixed_batch() {
        let (f, circuit, ckpt) = setup(3);
        let shots = Sampler::new(&circuit).sample(256, 5, 1).unwrap();
        let all: Vec<usize> = (0..256).collect();
        let batch = make_batch(&f, &shots.detectors, &shots.observables, &all);
        let mut engine = FusedEngine::new(&ckpt, "adamw", 0.0, 2, 256, 4).unwrap();
        let before = engine.step(&batch, 0.0, 1.0, 0.0).unwrap().loss;
        for _ in 0..60 {
            engine.step(&batch, 3e-3, 1.0, 0.0).unwrap();
        }
        let after = engine.step(&batch, 0.0, 1.0, 0.0).unwrap().loss;
        assert!(after < 0.85 * before, "loss {before} -> {after}");
        let err = engine.step(&batch, 1e-3, 1.0, 0.5).unwrap_err();
        assert!(err.to_string().contains("needs dense labels"), "{err}");
    }

    /// Dense batches carry per-round labels whose last round is the observable.
    #[test]
    fn dense_batches_end_with_the_observables() {
        let (f, circuit, _) = setup(6);
        let mut source = SimulatedSource::new(vec![(f, circuit)], Basis::Z, 4, 0, true).unwrap();
        let batch = source.next_batch(0, 300).unwrap();
        assert!(batch.dense);
        assert_eq!((batch.shots, batch.rounds, batch.labels.len()), (300, 7, 300 * 7));
        let flips: f32 = batch.final_labels().iter().sum();
        assert!(flips > 5.0, "p=0.01 flips some observables ({flips})");
        // Earlier rounds' labels differ from the final one in some shots.
        let differ = batch.labels.chunks(7).filter(|l| l[..6].iter().any(|v| *v != l[6])).count();
        assert!(differ > 0);
    }

    /// Denser noise first: the first source serves the steps before the switch.
    #[test]
    fn the_first_source_serves_the_early_steps() {
        let at = |p: f64| {
            let layout = ModelLayout::for_code(3, Basis::Z).unwrap();
            let c = MemoryExperiment::new(3, 3, Basis::Z).unwrap().noisy_circuit(&NoiseModel::Si1000 { p }).unwrap();
            let f = Featurizer::new(&layout, &StabilizerLayout::from_circuit(&c, Basis::Z).unwrap()).unwrap();
            SimulatedSource::new(vec![(f, c)], Basis::Z, 1, 0, false).unwrap()
        };
        let mut source = at(0.001).after(at(0.03), 10);
        let events = |b: &Batch| b.features.chunks(3).filter(|f| f[0] == 1.0).count();
        let early = events(&source.next_batch(9, 200).unwrap());
        let late = events(&source.next_batch(10, 200).unwrap());
        assert!(early > 5 * late, "{early} events at p=0.03, {late} at p=0.001");
    }

    #[test]
    fn optimizer_state_round_trips_and_resume_says_why() {
        let (_, _, ckpt) = setup(3);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let mut engine = FusedEngine::new(&ckpt, "adamw", 1e-4, 1, 8, 4).unwrap();
        // No state beside a tch checkpoint.
        let said = resume_optimizer(&mut engine, &path, 9, "tch");
        assert!(said.contains("tch trainer, which saves no optimizer state"), "{said}");
        let mut moved = engine.optimizer.clone();
        if let Optimizer::AdamW(a) = &mut moved {
            a.m[3] = 0.25;
            a.step = 9;
        }
        OptimizerState::of("fused", &moved, 9).save(&OptimizerState::path_for(&path)).unwrap();
        let said = resume_optimizer(&mut engine, &path, 10, "fused");
        assert!(said.contains("belongs to step 9, the checkpoint is at step 10"), "{said}");
        let said = resume_optimizer(&mut engine, &path, 9, "fused");
        assert!(said.starts_with("resuming with the optimizer state"), "{said}");
        assert_eq!(engine.optimizer, moved);
        let mut lion = FusedEngine::new(&ckpt, "lion", 0.0, 1, 8, 4).unwrap();
        let said = resume_optimizer(&mut lion, &path, 9, "fused");
        assert!(said.contains("holds adamw moments and this run uses lion"), "{said}");
    }

    #[test]
    fn schedule_warms_up_and_decays() {
        let opts = TrainOptions {
            lr: 1e-3,
            warmup: 10,
            steps: 110,
            first_step: 0,
            batch: 1,
            clip: 1.0,
            aux_weight: 0.0,
            eval_every: 1,
            early_stop_patience: None,
            max_seconds: None,
            out: PathBuf::new(),
            log: None,
        };
        assert!((opts.lr_at(0) - 1e-4).abs() < 1e-12);
        assert!((opts.lr_at(9) - 1e-3).abs() < 1e-12);
        assert!((opts.lr_at(60) - 5e-4).abs() < 1e-9);
        assert!(opts.lr_at(109) < 1e-6);
        let shifted = TrainOptions { first_step: 1000, steps: 1110, ..opts.clone() };
        assert!((shifted.lr_at(1009) - 1e-3).abs() < 1e-12);
    }
}
