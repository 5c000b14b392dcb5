//! The fused trainer: forward and backward of docs/model.md over a batch of
//! shots, on the inference kernels' building blocks, plus the optimizers.
//!
//! # Design decisions
//!
//! **Parameters are one flat buffer** in checkpoint order and PyTorch layout
//! ([`ParamIndex`]), each tensor followed by zeros. Gradients use the same
//! layout, so clipping and the optimizer are loops over one slice, and the
//! backward pass reads weight matrices in place (see `pass.rs`). After each
//! optimizer step [`Trainer::set_params`] repacks the forward's panels in place.
//!
//! **Data-parallel over shots.** A batch is cut into one contiguous block of
//! shots per worker. Each worker owns a tape (every activation of every round
//! for its block), its backward scratch and its own gradients, so workers never
//! share a cache line while they run; their gradients are summed afterwards
//! (a few tens of thousands of values). All buffers are allocated when the
//! trainer is built, for the largest batch and round count it will see, and
//! the workers run on persistent threads (`pool.rs`): a step allocates nothing.
//!
//! **The loss.** For a batch of B shots of T round steps, O observables,
//! logits `x_t` read out after round step t and labels `y_t` (docs/model.md
//! §Dense labels),
//! `loss = 1/(B·O) · Σ_shots Σ_o [BCE(x_{T−1}, y_{T−1}) + λ/(T−1) · Σ_{t<T−1} BCE(x_t, y_t)]`,
//! where λ is the auxiliary weight (0: the final label only, as tch trains).
//!
//! **Numerics.** f32 throughout, as the contract. The forward is the inference
//! step (the same products, LayerNorm, softmax and GELU), so the trainer's
//! logits equal the inference kernels' to rounding. Gradients are checked
//! against finite differences of an f64 transcription of the loss
//! ([`reference::loss`]) and against tch autograd (`models/tests`).
//!
//! **Instruction sets** are dispatched as for inference: the worker bodies are
//! generic over the instruction set and instantiated in `#[target_feature]`
//! wrappers for AVX-512F and AVX2+FMA, with the portable build elsewhere.

mod optim;
mod params;
mod pass;
mod pool;
pub mod reference;

pub use optim::{AdamW, Lion, Optimizer, clip_grad_norm};
pub use params::ParamIndex;

use pass::{LossSums, Worker};
use pool::Pool;

use crate::math::Arith;
use crate::weights::transpose_heads_into;
use crate::{Isa, IsaToken, KernelConfig, KernelError, Weights};

/// One training batch: `shots` shots of `rounds` round steps.
#[derive(Clone, Copy, Debug)]
pub struct TrainBatch<'a> {
    /// `[shots][rounds][S][NF]`.
    pub features: &'a [f32],
    /// Per-round labels `[shots][rounds][O]`, 0 or 1; the last round's are the
    /// observables. Only the last round's are read when `aux_weight` is 0.
    pub labels: &'a [f32],
    /// B.
    pub shots: usize,
    /// T.
    pub rounds: usize,
    /// λ: the weight of the earlier rounds' readouts (0 disables them).
    pub aux_weight: f32,
}

/// The loss of one batch.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Loss {
    /// What the gradients are of (see the module docs).
    pub loss: f64,
    /// Mean BCE of the final readout.
    pub final_bce: f64,
    /// Mean BCE of the earlier rounds' readouts (0 without them).
    pub aux_bce: f64,
}

/// The fused CPU trainer of one model configuration.
pub struct Trainer {
    ix: ParamIndex,
    /// The forward's packed weights, refreshed by [`Trainer::set_params`].
    weights: Weights,
    params: Vec<f32>,
    /// The next parameters while an update is checked.
    spare: Vec<f32>,
    grads: Vec<f32>,
    workers: Vec<Worker>,
    /// One thread per worker but the last, which runs on the caller.
    pool: Pool,
}

impl Trainer {
    /// A trainer with `threads` workers (at least one) for batches of up to
    /// `max_shots` shots of up to `max_rounds` round steps, starting from the
    /// flat parameters `params` ([`ParamIndex`] layout).
    pub fn new(
        config: &KernelConfig,
        params: &[f32],
        threads: usize,
        max_shots: usize,
        max_rounds: usize,
    ) -> Result<Self, KernelError> {
        let ix = ParamIndex::new(config)?;
        if params.len() != ix.len() {
            return Err(KernelError::Config(format!(
                "{} flat parameters for a model that has {}",
                params.len(),
                ix.len()
            )));
        }
        check_finite(&ix, params)?;
        let tensors = ix.unflatten(params);
        let weights = Weights::from_named(config.clone(), |name| {
            tensors.iter().find(|t| t.0 == name).map(|t| (t.1.as_slice(), t.2.as_slice()))
        })?;
        let threads = threads.max(1).min(max_shots.max(1));
        let per = max_shots.max(1).div_ceil(threads);
        let workers = (0..threads).map(|_| Worker::new(config, per, max_rounds, ix.len())).collect();
        let pool = Pool::new(threads - 1);
        Ok(Self { grads: ix.zeros(), spare: ix.zeros(), params: params.to_vec(), weights, workers, pool, ix })
    }

    /// The parameter layout.
    pub fn index(&self) -> &ParamIndex {
        &self.ix
    }

    /// The current parameters, flat.
    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// The gradients of the last [`Trainer::loss_and_grad`], flat.
    pub fn grads(&self) -> &[f32] {
        &self.grads
    }

    /// Mutable gradients, for clipping before the optimizer.
    pub fn grads_mut(&mut self) -> &mut [f32] {
        &mut self.grads
    }

    /// The largest batch and round count this trainer holds.
    pub fn capacity(&self) -> (usize, usize) {
        let (per, rounds) = self.workers[0].capacity();
        (per * self.workers.len(), rounds)
    }

    /// Selects the instruction set (the default is [`Isa::detect`]).
    pub fn set_isa(&mut self, isa: Isa) -> Result<(), KernelError> {
        self.weights.set_isa(isa)
    }

    /// Replaces the parameters (same layout) and repacks the forward's
    /// weights in place. A non-finite value is refused, naming its tensor.
    pub fn set_params(&mut self, params: &[f32]) -> Result<(), KernelError> {
        assert_eq!(params.len(), self.ix.len(), "flat parameters of another config");
        check_finite(&self.ix, params)?;
        self.params.copy_from_slice(params);
        refresh(&mut self.weights, &self.ix, &self.params);
        Ok(())
    }

    /// Applies one optimizer update to the parameters with the current
    /// gradients, then repacks. A non-finite result is refused and the
    /// parameters are left as they were.
    pub fn apply(&mut self, optimizer: &mut Optimizer, lr: f64) -> Result<(), KernelError> {
        self.spare.copy_from_slice(&self.params);
        optimizer.update(&mut self.spare, &self.grads, lr);
        check_finite(&self.ix, &self.spare)?;
        std::mem::swap(&mut self.params, &mut self.spare);
        refresh(&mut self.weights, &self.ix, &self.params);
        Ok(())
    }

    /// The loss of `batch` and its gradients (kept in [`Trainer::grads`]).
    ///
    /// # Panics
    /// If the batch is larger than the trainer's capacity or its slices have
    /// the wrong lengths.
    pub fn loss_and_grad(&mut self, batch: &TrainBatch) -> Loss {
        let c = self.ix.config().clone();
        let (b, t) = (batch.shots, batch.rounds);
        let (cap_shots, cap_rounds) = self.capacity();
        assert!(b >= 1 && b <= cap_shots && t >= 1 && t <= cap_rounds, "batch of {b}×{t} over the trainer's capacity");
        assert_eq!(batch.features.len(), b * t * c.features_len(), "features length");
        assert_eq!(batch.labels.len(), b * t * c.observables, "labels length");
        let scale = 1.0 / (b * c.observables) as f32;
        let (w, ix, params) = (&self.weights, &self.ix, &self.params[..]);
        let (fl, ll) = (t * c.features_len(), t * c.observables);
        let used = self.workers.len().min(b);
        let (per, extra) = (b / used, b % used);
        let job = |i: usize, worker: &mut Worker| {
            let start = i * per + i.min(extra);
            let n = per + usize::from(i < extra);
            let feats = &batch.features[start * fl..(start + n) * fl];
            let labels = &batch.labels[start * ll..(start + n) * ll];
            let share = Share { w, ix, params, feats, labels, n, rounds: t, aux_weight: batch.aux_weight, scale };
            worker.sums = run_worker(&share, worker);
        };
        on_workers(&self.pool, &mut self.workers, used, &job);
        self.grads.fill(0.0);
        for worker in &self.workers[..used] {
            for (g, v) in self.grads.iter_mut().zip(&worker.grads) {
                *g += v;
            }
        }
        let total = self.workers[..used].iter().fold(LossSums::default(), |a, w| LossSums {
            final_bce: a.final_bce + w.sums.final_bce,
            aux_bce: a.aux_bce + w.sums.aux_bce,
            weighted: a.weighted + w.sums.weighted,
        });
        let per_label = (b * c.observables) as f64;
        Loss {
            loss: total.weighted / per_label,
            final_bce: total.final_bce / per_label,
            aux_bce: if t > 1 { total.aux_bce / (per_label * (t - 1) as f64) } else { 0.0 },
        }
    }

    /// Final logits `[shots][O]` of `features` `[shots][rounds][S][NF]`, in
    /// blocks of the trainer's capacity, without gradients.
    pub fn logits(&mut self, features: &[f32], shots: usize, rounds: usize, out: &mut [f32]) {
        let c = self.ix.config().clone();
        let (_, cap_rounds) = self.capacity();
        assert!(rounds >= 1 && rounds <= cap_rounds, "{rounds} rounds over the trainer's capacity");
        assert_eq!(features.len(), shots * rounds * c.features_len(), "features length");
        assert_eq!(out.len(), shots * c.observables, "logits length");
        let (fl, o) = (rounds * c.features_len(), c.observables);
        let w = &self.weights;
        let threads = self.workers.len();
        let per = self.workers[0].capacity().0;
        let mut done = 0;
        while done < shots {
            let block = (shots - done).min(per * threads);
            let used = threads.min(block);
            let (n_per, extra) = (block / used, block % used);
            let out_block = &mut out[done * o..(done + block) * o];
            let chunks = std::sync::Mutex::new(out_block);
            let job = |i: usize, worker: &mut Worker| {
                let start = i * n_per + i.min(extra);
                let n = n_per + usize::from(i < extra);
                let feats = &features[(done + start) * fl..(done + start + n) * fl];
                let logits = forward_only(w, worker, feats, n, rounds);
                chunks.lock().expect("no worker panicked")[start * o..(start + n) * o].copy_from_slice(logits);
            };
            on_workers(&self.pool, &mut self.workers, used, &job);
            done += block;
        }
    }
}

/// Runs `job(i, &mut workers[i])` for `i < used`, one worker per pool share.
fn on_workers(pool: &Pool, workers: &mut [Worker], used: usize, job: &(impl Fn(usize, &mut Worker) + Sync)) {
    assert!(used <= workers.len());
    /// The workers' base pointer, shared by the shares.
    struct Base(*mut Worker);
    // SAFETY: shares only form `&mut` to distinct workers (below).
    unsafe impl Sync for Base {}
    impl Base {
        fn get(&self) -> *mut Worker {
            self.0
        }
    }
    let base = Base(workers.as_mut_ptr());
    pool.run(&|i| {
        if i < used {
            // SAFETY: `Pool::run` calls each share index exactly once and
            // returns only after all have returned, while `workers` stays
            // mutably borrowed by this function; `i < used <= workers.len()`.
            // So each `&mut` is in bounds, alive, and the only one to its worker.
            let worker = unsafe { &mut *base.get().add(i) };
            job(i, worker);
        }
    });
}

/// The first non-finite value's tensor, as an error.
fn check_finite(ix: &ParamIndex, flat: &[f32]) -> Result<(), KernelError> {
    for (i, (name, _)) in ix.names().enumerate() {
        if let Some(index) = flat[ix.range(i)].iter().position(|v| !v.is_finite()) {
            return Err(KernelError::NonFinite { name: name.to_string(), index });
        }
    }
    Ok(())
}

/// Repacks `w` from flat parameters, in place.
fn refresh(w: &mut Weights, ix: &ParamIndex, p: &[f32]) {
    let c = ix.config();
    let (s, d, nf) = (c.stabilizers, c.width, c.features);
    let w_in = &p[ix.w_in.clone()];
    for f in 0..nf {
        for j in 0..d {
            w.w_in_t[f * d + j] = w_in[j * nf + f];
        }
    }
    w.b_in.copy_from_slice(&p[ix.b_in.clone()]);
    w.stab.copy_from_slice(&p[ix.stab.clone()]);
    for si in 0..s {
        for j in 0..d {
            w.embed_base[si * d + j] = w.b_in[j] + w.stab[si * d + j];
        }
    }
    for (layer, lx) in w.layers.iter_mut().zip(&ix.layers) {
        layer.ln1_g.copy_from_slice(&p[lx.ln1_g.clone()]);
        layer.ln1_b.copy_from_slice(&p[lx.ln1_b.clone()]);
        for k in 0..3 {
            layer.qkv.refill(k * d, &p[lx.w_qkv[k].clone()], &p[lx.b_qkv[k].clone()]);
        }
        transpose_heads_into(&p[lx.bias.clone()], s, &mut layer.attn_bias_t);
        layer.wo.refill(0, &p[lx.wo.clone()], &p[lx.bo.clone()]);
        layer.ln2_g.copy_from_slice(&p[lx.ln2_g.clone()]);
        layer.ln2_b.copy_from_slice(&p[lx.ln2_b.clone()]);
        layer.w1.refill(0, &p[lx.w1.clone()], &p[lx.b1.clone()]);
        layer.w2.refill(0, &p[lx.w2.clone()], &p[lx.b2.clone()]);
    }
    w.ro_ln_g.copy_from_slice(&p[ix.ro_ln_g.clone()]);
    w.ro_ln_b.copy_from_slice(&p[ix.ro_ln_b.clone()]);
    w.ro_w1.refill(0, &p[ix.ro_w1.clone()], &p[ix.ro_b1.clone()]);
    w.ro_w2.refill(0, &p[ix.ro_w2.clone()], &p[ix.ro_b2.clone()]);
}

/// One worker's block of a training step.
struct Share<'a> {
    w: &'a Weights,
    ix: &'a ParamIndex,
    params: &'a [f32],
    /// `[n][rounds][S][NF]`.
    feats: &'a [f32],
    /// `[n][rounds][O]`.
    labels: &'a [f32],
    n: usize,
    rounds: usize,
    aux_weight: f32,
    /// `1/(B·O)` for the whole batch.
    scale: f32,
}

/// Forward, backward and gradient folding of one worker's block.
#[inline(always)]
fn work<A: Arith, const R: usize>(a: A, s: &Share, worker: &mut Worker) -> LossSums {
    worker.zero_grads();
    worker.forward::<A, R>(a, s.w, s.feats, s.n, s.rounds, s.aux_weight > 0.0);
    let sums = worker.backward::<A, R>(a, s.ix, s.params, s.feats, s.labels, s.n, s.rounds, s.aux_weight, s.scale);
    worker.finish_grads(s.ix);
    sums
}

/// [`work`] with the weights' instruction set.
fn run_worker(s: &Share, worker: &mut Worker) -> LossSums {
    use crate::kernel::{NATIVE, NATIVE_ROWS, Native};
    match s.w.isa {
        // SAFETY (both arms): the token proves the CPU has the features the
        // wrapper enables (`crate::isa`).
        #[cfg(target_arch = "x86_64")]
        IsaToken::Avx512(t) => unsafe { x86::work_avx512(t, s, worker) },
        #[cfg(target_arch = "x86_64")]
        IsaToken::Avx2Fma(t) => unsafe { x86::work_avx2(t, s, worker) },
        _ => work::<Native, NATIVE_ROWS>(NATIVE, s, worker),
    }
}

/// The forward alone, final logits only, with the weights' instruction set.
fn forward_only<'a>(w: &Weights, worker: &'a mut Worker, feats: &[f32], n: usize, rounds: usize) -> &'a [f32] {
    use crate::kernel::{NATIVE, NATIVE_ROWS, Native};
    match w.isa {
        // SAFETY (both arms): as in `run_worker`.
        #[cfg(target_arch = "x86_64")]
        IsaToken::Avx512(t) => unsafe { x86::forward_avx512(t, w, worker, feats, n, rounds) },
        #[cfg(target_arch = "x86_64")]
        IsaToken::Avx2Fma(t) => unsafe { x86::forward_avx2(t, w, worker, feats, n, rounds) },
        _ => worker.forward::<Native, NATIVE_ROWS>(NATIVE, w, feats, n, rounds, false),
    }
}

/// The generic bodies compiled with wider vectors and FMA; everything they
/// call is `#[inline(always)]`. Each takes the token of its instruction set.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use crate::isa::{Avx2Token, Avx512Token};
    use crate::math::{Avx2, Avx512};

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) fn work_avx512(t: Avx512Token, s: &Share, worker: &mut Worker) -> LossSums {
        work::<Avx512, 8>(Avx512(t), s, worker)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn work_avx2(t: Avx2Token, s: &Share, worker: &mut Worker) -> LossSums {
        work::<Avx2, 6>(Avx2(t), s, worker)
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) fn forward_avx512<'a>(
        t: Avx512Token,
        w: &Weights,
        worker: &'a mut Worker,
        feats: &[f32],
        n: usize,
        rounds: usize,
    ) -> &'a [f32] {
        worker.forward::<Avx512, 8>(Avx512(t), w, feats, n, rounds, false)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn forward_avx2<'a>(
        t: Avx2Token,
        w: &Weights,
        worker: &'a mut Worker,
        feats: &[f32],
        n: usize,
        rounds: usize,
    ) -> &'a [f32] {
        worker.forward::<Avx2, 6>(Avx2(t), w, feats, n, rounds, false)
    }
}

#[cfg(test)]
mod tests;
