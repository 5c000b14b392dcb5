//! Training and fine-tuning with tch: AdamW with linear warm-up and cosine
//! decay, gradient clipping, periodic evaluation on a fixed held-out set
//! (against a baseline decoder's error count computed by the caller),
//! atomic checkpoints, resumption, and a CSV log.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use simulator_bridge::PackedShots;
use tch::{Device, Reduction, Tensor, nn, nn::OptimizerConfig};

use crate::ModelError;
use crate::checkpoint::CheckpointMeta;
use crate::features::Featurizer;
use crate::net::{Net, features_tensor};

/// One batch of training data.
pub struct Batch {
    /// `[B, T, S, 3]`.
    pub features: Tensor,
    /// `[B, O]`, 0/1.
    pub labels: Tensor,
}

/// Where training batches come from.
pub trait BatchSource {
    /// The batch for optimizer step `step`.
    fn next_batch(&mut self, step: u64, batch: usize, device: Device) -> Result<Batch, ModelError>;
}

/// Turns shots into a batch.
pub fn make_batch(
    featurizer: &Featurizer,
    events: &PackedShots,
    observables: &PackedShots,
    shots: &[usize],
    device: Device,
) -> Batch {
    let mut values = Vec::with_capacity(shots.len() * featurizer.shot_len());
    let mut labels = Vec::with_capacity(shots.len() * observables.bits_per_shot());
    for &s in shots {
        featurizer.extend_features(events, s, s + 1, &mut values);
        labels.extend((0..observables.bits_per_shot()).map(|o| if observables.get(s, o) { 1.0f32 } else { 0.0 }));
    }
    let n = shots.len();
    Batch {
        features: features_tensor(&values, n, featurizer.num_rounds(), featurizer.num_stabilizers(), device),
        labels: Tensor::from_slice(&labels).view([n as i64, observables.bits_per_shot() as i64]).to_device(device),
    }
}

/// Fresh simulated shots for every step, with the number of rounds drawn per
/// step from a list (so the model learns the recurrence).
pub struct SimulatedSource {
    /// One entry per number of rounds: (featurizer, circuit sampler).
    cases: Vec<(Featurizer, stim::DetectorSampler)>,
    num_observables: usize,
    seed: u64,
}

impl SimulatedSource {
    /// `circuits[i]` must be the noisy circuit with the featurizer `featurizers[i]`.
    /// Each sampler is seeded from `seed`, the case index, and `resume_step`,
    /// so a resumed run draws shots no earlier run drew.
    pub fn new(cases: Vec<(Featurizer, stim::Circuit)>, seed: u64, resume_step: u64) -> Self {
        let num_observables = cases.first().map(|(_, c)| c.num_observables() as usize).unwrap_or(1);
        let cases = cases
            .into_iter()
            .enumerate()
            .map(|(i, (f, c))| {
                let s = simulator_bridge::sample::derive_seed(seed, (resume_step << 16) | i as u64);
                (f, c.compile_detector_sampler_with_seed(s))
            })
            .collect();
        Self { cases, num_observables, seed }
    }
}

impl BatchSource for SimulatedSource {
    fn next_batch(&mut self, step: u64, batch: usize, device: Device) -> Result<Batch, ModelError> {
        let pick = simulator_bridge::sample::derive_seed(self.seed ^ 0xC0FFEE, step) as usize % self.cases.len();
        let (featurizer, sampler) = &mut self.cases[pick];
        let (dets, obs) = sampler.sample_bit_packed_separate_observables(batch as u64);
        let events = PackedShots::from_bytes(dets, featurizer.num_detectors())?;
        let observables = PackedShots::from_bytes(obs, self.num_observables)?;
        let all: Vec<usize> = (0..batch).collect();
        Ok(make_batch(featurizer, &events, &observables, &all, device))
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
    /// Shots `indices` of `events`/`observables`.
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
    fn next_batch(&mut self, _step: u64, batch: usize, device: Device) -> Result<Batch, ModelError> {
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
        Ok(make_batch(&self.featurizer, &self.events, &self.observables, &picked, device))
    }
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

    /// The model's logits on every shot, `[n * O]`.
    pub fn logits(&self, net: &Net, device: Device) -> Result<Vec<f32>, ModelError> {
        logits_for(net, &self.featurizer, &self.events, device)
    }
}

/// Logits `[n * O]` for every shot of `events`, computed in chunks without gradients.
pub fn logits_for(
    net: &Net,
    featurizer: &Featurizer,
    events: &PackedShots,
    device: Device,
) -> Result<Vec<f32>, ModelError> {
    const CHUNK: usize = 2048;
    let mut out = Vec::with_capacity(events.num_shots() * net.config().num_observables);
    for start in (0..events.num_shots()).step_by(CHUNK) {
        let end = (start + CHUNK).min(events.num_shots());
        let mut values = Vec::new();
        featurizer.extend_features(events, start, end, &mut values);
        let x = features_tensor(&values, end - start, featurizer.num_rounds(), featurizer.num_stabilizers(), device);
        let logits = tch::no_grad(|| net.forward(&x)).to_device(Device::Cpu).contiguous().view(-1);
        out.extend(Vec::<f32>::try_from(&logits)?);
    }
    Ok(out)
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
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Gradient-norm clip.
    pub clip: f64,
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
pub fn evaluate(net: &Net, eval: &[EvalCase], step: u64, device: Device) -> Result<EvalReport, ModelError> {
    let mut cases = Vec::new();
    for case in eval {
        let logits = case.logits(net, device)?;
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
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
}

/// Trains `net` from `meta.provenance.steps` up to `opts.steps`, saving
/// checkpoints to `opts.out`. On a non-finite loss it stops with an error and
/// leaves the last good checkpoint in place.
pub fn train(
    net: &mut Net,
    meta: &mut CheckpointMeta,
    source: &mut dyn BatchSource,
    eval: &[EvalCase],
    opts: &TrainOptions,
    on_step: &mut dyn FnMut(&StepReport),
    on_eval: &mut dyn FnMut(&EvalReport),
) -> Result<Option<EvalReport>, ModelError> {
    let device = net.vs.device();
    let mut opt = nn::AdamW { wd: opts.weight_decay, ..Default::default() }.build(&net.vs, opts.lr)?;
    let start = Instant::now();
    let seconds_before = meta.provenance.seconds;
    let mut best: Option<(f64, crate::checkpoint::Checkpoint)> = None;
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
    let save = |net: &Net, meta: &CheckpointMeta| -> Result<crate::checkpoint::Checkpoint, ModelError> {
        let ckpt = net.to_checkpoint(meta.clone())?;
        ckpt.save(&opts.out)?;
        Ok(ckpt)
    };
    let mut recent_loss;
    while meta.provenance.steps < opts.steps {
        let step = meta.provenance.steps;
        let lr = opts.lr_at(step);
        opt.set_lr(lr);
        let batch = source.next_batch(step, opts.batch, device)?;
        let logits = net.forward(&batch.features);
        let loss = logits.binary_cross_entropy_with_logits::<Tensor>(&batch.labels, None, None, Reduction::Mean);
        let loss_value = loss.double_value(&[]);
        if !loss_value.is_finite() {
            return Err(ModelError::Training(format!(
                "the loss became {loss_value} at step {step}; stopped, and the last good checkpoint {} is kept",
                opts.out.display()
            )));
        }
        opt.backward_step_clip_norm(&loss, opts.clip);
        recent_loss = loss_value;
        meta.provenance.steps += 1;
        meta.provenance.samples_seen += opts.batch as u64;
        meta.provenance.seconds = seconds_before + start.elapsed().as_secs_f64();
        on_step(&StepReport { step: meta.provenance.steps, loss: loss_value, lr });
        let out_of_time = opts.max_seconds.is_some_and(|m| start.elapsed().as_secs_f64() >= m);
        let done = meta.provenance.steps >= opts.steps || out_of_time;
        if meta.provenance.steps.is_multiple_of(opts.eval_every) || done {
            let report = evaluate(net, eval, meta.provenance.steps, device)?;
            if let Some(f) = log.as_mut() {
                for (label, shots, eval_loss, errors, baseline) in &report.cases {
                    writeln!(
                        f,
                        "{},{},{:.1},{:.3e},{:.5},{label},{shots},{eval_loss:.5},{errors},{}",
                        meta.provenance.steps,
                        meta.provenance.samples_seen,
                        meta.provenance.seconds,
                        lr,
                        recent_loss,
                        baseline.map(|b| b.to_string()).unwrap_or_default()
                    )
                    .map_err(|e| ModelError::Training(e.to_string()))?;
                }
                f.flush().map_err(|e| ModelError::Training(e.to_string()))?;
            }
            on_eval(&report);
            match opts.early_stop_patience {
                None => {
                    save(net, meta)?;
                }
                Some(patience) => {
                    if best.as_ref().is_none_or(|(b, _)| report.loss() < *b) {
                        best = Some((report.loss(), net.to_checkpoint(meta.clone())?));
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
        let best_net = Net::from_checkpoint(&ckpt, device)?;
        net.vs.copy(&best_net.vs)?;
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

    /// A few optimizer steps on one fixed batch lower its loss.
    #[test]
    fn steps_lower_the_loss_on_a_fixed_batch() {
        let (f, circuit, ckpt) = setup(3);
        let shots = Sampler::new(&circuit).sample(256, 5, 1).unwrap();
        let all: Vec<usize> = (0..256).collect();
        let batch = make_batch(&f, &shots.detectors, &shots.observables, &all, Device::Cpu);
        let net = Net::from_checkpoint(&ckpt, Device::Cpu).unwrap();
        let mut opt = nn::Adam::default().build(&net.vs, 3e-3).unwrap();
        let loss = |net: &Net| {
            net.forward(&batch.features).binary_cross_entropy_with_logits::<Tensor>(
                &batch.labels,
                None,
                None,
                Reduction::Mean,
            )
        };
        let before = loss(&net).double_value(&[]);
        for _ in 0..60 {
            opt.backward_step(&loss(&net));
        }
        let after = loss(&net).double_value(&[]);
        assert!(after < 0.85 * before, "loss {before} -> {after}");
    }

    #[test]
    fn schedule_warms_up_and_decays() {
        let opts = TrainOptions {
            lr: 1e-3,
            warmup: 10,
            steps: 110,
            first_step: 0,
            batch: 1,
            weight_decay: 0.0,
            clip: 1.0,
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
