//! Streaming decoding, one round at a time.
//!
//! A [`StreamEngine`] owns one model. Clients open [`Session`]s on it (or,
//! to have replies delivered by a callback instead of a channel, [`Feed`]s);
//! a session pushes the detection events of one round of one shot at a time
//! and gets back a [`RoundAck`] carrying the step's latency, and when it
//! finishes a shot (with the final, data-qubit round) a [`ShotResult`]: the
//! prediction, its calibrated confidence and the decision latency. Any
//! number of shots may be open in a session at once.
//!
//! # Who steps
//!
//! Submitted rounds go into one queue shared by every session. Whoever
//! drives the engine ([`Feed::drive`]; a [`Session`] drives before it
//! waits) takes what is queued (up to [`StreamOptions::max_batch`] jobs,
//! never waiting for more) and steps every shot in it as one batch through
//! the kernels, on its own thread, if the engine is idle. If another thread
//! is stepping already, it rings the engine's helper thread instead, which
//! steps batches until the queue is empty. So a lone stream gets its round
//! stepped on the thread that received it, with no thread hand-off at all
//! (waking a parked thread costs tens of microseconds on a VM, several
//! times a d=3 step), and many streams get batch throughput from the helper.
//!
//! # Where the states live
//!
//! The kernels run on a [`Backend`]: the CPU kernels ([`StreamEngine::start`])
//! or any other, the CUDA one included ([`StreamEngine::start_on`]). Each
//! open shot holds one of the backend's slots, so its recurrent state stays
//! on the backend's device between rounds: a step sends only the round's
//! features, and a finish brings back only the logits.
//!
//! Replies are delivered on the stepping thread, while it holds the engine:
//! a [`Feed`]'s callback must be quick and must not block.
//!
//! # Rounds
//!
//! Round 0 carries the events of the memory-basis stabilizers
//! ([`NeuralModel::basis_stabilizers`], in model order), rounds 1, 2, … the
//! events of all S stabilizers in model order, and the finishing round the
//! memory-basis stabilizers' events computed from the data-qubit
//! measurements: exactly the detectors of Stim's rotated memory experiment,
//! so a streamed shot decodes to the same logits as the batch
//! [`crate::NeuralDecoder`] (tested).
//!
//! # Errors
//!
//! A round with the wrong number of event bits, or out of order, is refused
//! for that shot alone, and nothing is applied: the shot's state and every
//! other shot are untouched. A shot id may be used again once its shot has
//! finished: its next round 0 starts a new shot. If the backend itself fails
//! (a GPU error), every shot of that batch gets [`StreamError::Backend`] and
//! is dropped; later rounds of it are refused as [`StreamError::NotStarted`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use kernels::{Backend, BackendError};
use models::features::{IS_FINAL, NUM_FEATURES, write_cell};

use crate::neural::NeuralModel;

/// How the engine batches.
#[derive(Clone, Debug)]
pub struct StreamOptions {
    /// Most jobs stepped in one batch.
    pub max_batch: usize,
    /// Threads for a large batch's step on the CPU backend that
    /// [`StreamEngine::start`] makes (batches of fewer than 256 shots always
    /// run on one).
    pub threads: usize,
    /// Most shots open at once over all sessions; a round 0 beyond it is refused.
    pub max_open_shots: usize,
    /// How long the idle helper thread (and a session's blocking calls)
    /// spin for the next message before parking.
    pub spin: Duration,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self { max_batch: 1024, threads: 1, max_open_shots: 1 << 20, spin: Duration::from_micros(50) }
    }
}

/// Why a round or a shot was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The round has the wrong number of detection-event bits.
    #[error("shot {shot}, round {round}: {got} detection-event bits, expected {expected}")]
    EventBits {
        /// The shot.
        shot: u64,
        /// The round pushed (for a finish, the round it would have been).
        round: usize,
        /// Bits this round needs.
        expected: usize,
        /// Bits given.
        got: usize,
    },
    /// The round is not the shot's next one.
    #[error("shot {shot}: round {got} pushed, but round {expected} is next")]
    RoundOrder {
        /// The shot.
        shot: u64,
        /// The next round.
        expected: usize,
        /// The round pushed.
        got: usize,
    },
    /// A shot was finished before its round 0.
    #[error("shot {shot} was finished before any round was pushed")]
    NotStarted {
        /// The shot.
        shot: u64,
    },
    /// Too many shots are open on the engine.
    #[error("shot {shot}: the engine already has {limit} open shots")]
    Capacity {
        /// The shot.
        shot: u64,
        /// [`StreamOptions::max_open_shots`].
        limit: usize,
    },
    /// The engine has shut down.
    #[error("the decoding engine has shut down")]
    Closed,
    /// The backend failed while stepping the shot's batch; the shot is dropped.
    #[error("shot {shot}: the decoding backend failed: {message}")]
    Backend {
        /// The shot.
        shot: u64,
        /// The backend's error.
        message: String,
    },
}

/// A round was applied.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundAck {
    /// The shot.
    pub shot: u64,
    /// The round.
    pub round: usize,
    /// From the push to the updated state: queueing plus the step.
    pub latency: Duration,
    /// The batch step alone.
    pub compute: Duration,
    /// Shots in the batch that carried this round.
    pub batch: usize,
}

/// A shot was decoded.
#[derive(Clone, Debug, PartialEq)]
pub struct ShotResult {
    /// The shot.
    pub shot: u64,
    /// Round steps taken, the final round included (T).
    pub rounds: usize,
    /// The readout's logits, one per observable.
    pub logits: Vec<f32>,
    /// Predicted observable flips.
    pub prediction: Vec<bool>,
    /// Calibrated probability that the prediction is right.
    pub confidence: f64,
    /// From the final round's push to the prediction (last round in, prediction out).
    pub decision_latency: Duration,
    /// Shots in the batch that carried the final round.
    pub batch: usize,
}

/// What a session receives.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// A round was applied.
    Ack(RoundAck),
    /// A shot finished.
    Result(ShotResult),
    /// A shot's round was refused by the worker.
    Error {
        /// The shot.
        shot: u64,
        /// Why.
        error: StreamError,
    },
}

impl Reply {
    fn shot(&self) -> u64 {
        match self {
            Reply::Ack(a) => a.shot,
            Reply::Result(r) => r.shot,
            Reply::Error { shot, .. } => *shot,
        }
    }
}

enum JobKind {
    Round { round: usize, events: Vec<bool> },
    Finish { round: usize, events: Vec<bool> },
    Abort,
}

/// Where a session's replies go. It is called on whichever thread steps the
/// batch, while that thread holds the engine: it must be quick and must not block.
pub type ReplyFn = Arc<dyn Fn(Reply) + Send + Sync>;

struct Job {
    session: u64,
    shot: u64,
    kind: JobKind,
    submitted: Instant,
    reply: ReplyFn,
}

/// What the sessions, the stepping threads and the helper share.
struct Shared {
    /// Jobs submitted and not yet taken into a batch.
    queue: Mutex<VecDeque<Job>>,
    /// The shots' states and the batch buffers; whoever holds it steps.
    core: Mutex<Worker>,
}

impl Shared {
    fn core(&self) -> MutexGuard<'_, Worker> {
        // A reply callback that panicked leaves the states consistent: every
        // state is written back before replies go out.
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn queued(&self) -> bool {
        !self.queue.lock().unwrap_or_else(PoisonError::into_inner).is_empty()
    }

    fn push(&self, job: Job) {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner).push_back(job);
    }

    /// Steps one batch here if the engine is idle; otherwise, or if work is
    /// left after it, rings the helper.
    fn drive(&self, bell: &Sender<()>) {
        let core = match self.core.try_lock() {
            Ok(core) => Some(core),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        };
        let more = core.is_none_or(|mut core| {
            core.step_queued(&self.queue);
            core.has_carry() || self.queued()
        });
        if more {
            // A full doorbell means the helper will look at the queue anyway.
            let _ = bell.try_send(());
        }
    }

    /// Steps batches until nothing is queued.
    fn drain(&self) {
        let mut core = self.core();
        while core.step_queued(&self.queue) {}
    }
}

/// One model's streaming engine: the shots' states, the sessions feeding
/// them, and a helper thread that steps when the sessions' own threads are busy.
pub struct StreamEngine {
    model: Arc<NeuralModel>,
    /// [`Backend::device`] of the backend stepping the shots.
    device: String,
    shared: Arc<Shared>,
    /// The helper's doorbell; every feed holds a clone, and the helper stops
    /// once they and this one are all dropped.
    bell: Option<Sender<()>>,
    helper: Option<JoinHandle<()>>,
    sessions: AtomicU64,
    spin: Duration,
}

impl StreamEngine {
    /// Starts the engine and its helper thread, on the CPU kernels with
    /// [`StreamOptions::threads`] threads.
    pub fn start(model: Arc<NeuralModel>, options: StreamOptions) -> Self {
        let backend = Box::new(model.cpu_backend(options.threads));
        Self::start_on(model, options, backend).expect("the model's own CPU backend fits it")
    }

    /// Starts the engine and its helper thread, stepping on `backend`
    /// (made for `model`'s weights, e.g. by [`NeuralModel::backend`]).
    ///
    /// # Errors
    /// [`BackendError::Input`] if the backend was made for another model shape.
    pub fn start_on(
        model: Arc<NeuralModel>,
        options: StreamOptions,
        backend: Box<dyn Backend>,
    ) -> Result<Self, BackendError> {
        if backend.config() != model.weights().config() {
            return Err(BackendError::Input(format!(
                "the {} backend was made for {:?}, model {} is {:?}",
                backend.device(),
                backend.config(),
                model.name(),
                model.weights().config()
            )));
        }
        let device = backend.device().to_string();
        let (bell, rung) = crossbeam_channel::bounded(1);
        let spin = options.spin;
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            core: Mutex::new(Worker::new(model.clone(), options, backend)),
        });
        let helper = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("qecd-stream-{}", model.name()))
                .spawn(move || help(&shared, &rung, spin))
                .expect("spawn the stream engine's helper")
        };
        Ok(Self { model, device, shared, bell: Some(bell), helper: Some(helper), sessions: AtomicU64::new(0), spin })
    }

    /// The model.
    pub fn model(&self) -> &Arc<NeuralModel> {
        &self.model
    }

    /// Where the shots are stepped ([`Backend::device`]): `cpu-avx512`, `cuda:0 (…)`.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Opens a session whose replies come through [`Session::recv`].
    pub fn open(&self) -> Session {
        let (reply, replies) = crossbeam_channel::unbounded();
        let reply: ReplyFn = Arc::new(move |r| {
            let _ = reply.send(r);
        });
        Session { feed: self.open_with(reply), replies, stash: VecDeque::new(), spin: self.spin }
    }

    /// Opens a feed whose replies are handed to `reply` on the stepping
    /// thread (see [`ReplyFn`]).
    pub fn open_with(&self, reply: ReplyFn) -> Feed {
        Feed {
            id: self.sessions.fetch_add(1, Ordering::Relaxed),
            model: self.model.clone(),
            shared: self.shared.clone(),
            bell: self.bell.clone().expect("the engine is running"),
            reply,
            open: HashMap::new(),
        }
    }

    /// Stops taking new sessions and waits until every open session has been
    /// dropped and all its queued rounds have been stepped and answered.
    pub fn shutdown(mut self) {
        self.bell = None;
        if let Some(helper) = self.helper.take() {
            helper.join().expect("the stream engine's helper panicked");
        }
    }
}

/// The helper thread: steps whatever is queued each time it is rung,
/// spinning for the next ring for `spin` before parking; drains the queue
/// and stops once every doorbell is dropped.
fn help(shared: &Shared, rung: &Receiver<()>, spin: Duration) {
    loop {
        let closed = spin_recv(rung, spin).is_none() && rung.recv().is_err();
        shared.drain();
        if closed {
            return;
        }
    }
}

/// The submitting half of a session: its open shots and where its replies
/// go. Submitting only queues; [`Feed::drive`] gets the queue stepped.
pub struct Feed {
    id: u64,
    model: Arc<NeuralModel>,
    shared: Arc<Shared>,
    bell: Sender<()>,
    reply: ReplyFn,
    /// Open shot → its next round.
    open: HashMap<u64, usize>,
}

impl Feed {
    /// The model.
    pub fn model(&self) -> &Arc<NeuralModel> {
        &self.model
    }

    /// Event bits a round needs: the memory-basis stabilizers for round 0,
    /// all of them for later rounds.
    pub fn round_bits(&self, round: usize) -> usize {
        if round == 0 { self.model.basis_stabilizers().len() } else { self.model.num_stabilizers() }
    }

    /// Event bits of the finishing (data-qubit) round.
    pub fn final_bits(&self) -> usize {
        self.model.basis_stabilizers().len()
    }

    /// Shots opened and not yet finished.
    pub fn open_shots(&self) -> usize {
        self.open.len()
    }

    /// Queues one round of a shot (round 0 opens the shot). Its
    /// [`Reply::Ack`] comes once the queue is stepped.
    pub fn submit_round(&mut self, shot: u64, round: usize, events: &[bool]) -> Result<(), StreamError> {
        let expected = self.next_round(shot);
        if round != expected {
            return Err(StreamError::RoundOrder { shot, expected, got: round });
        }
        self.check_bits(shot, round, events, self.round_bits(round))?;
        self.send(shot, JobKind::Round { round, events: events.to_vec() });
        self.open.insert(shot, round + 1);
        Ok(())
    }

    /// Queues a shot's final round (the memory-basis events from the data
    /// qubits). Its [`Reply::Result`] comes once the queue is stepped.
    pub fn submit_finish(&mut self, shot: u64, events: &[bool]) -> Result<(), StreamError> {
        let round = self.next_round(shot);
        if round == 0 {
            return Err(StreamError::NotStarted { shot });
        }
        self.check_bits(shot, round, events, self.final_bits())?;
        self.send(shot, JobKind::Finish { round, events: events.to_vec() });
        self.open.remove(&shot);
        Ok(())
    }

    /// Drops an open shot's state; it gets no result.
    pub fn abort(&mut self, shot: u64) {
        if self.open.remove(&shot).is_some() {
            self.send(shot, JobKind::Abort);
        }
    }

    /// Gets what is queued stepped: here, now, if the engine is idle;
    /// otherwise by the thread stepping now or by the helper. Call it
    /// without holding anything a reply callback takes.
    pub fn drive(&self) {
        self.shared.drive(&self.bell);
    }

    /// A handle that drives the engine like [`Feed::drive`], for a caller
    /// that keeps the feed behind a lock its reply callback takes.
    pub fn driver(&self) -> Driver {
        Driver { shared: self.shared.clone(), bell: self.bell.clone() }
    }

    fn next_round(&self, shot: u64) -> usize {
        self.open.get(&shot).copied().unwrap_or(0)
    }

    fn check_bits(&self, shot: u64, round: usize, events: &[bool], expected: usize) -> Result<(), StreamError> {
        if events.len() != expected {
            return Err(StreamError::EventBits { shot, round, expected, got: events.len() });
        }
        Ok(())
    }

    fn send(&self, shot: u64, kind: JobKind) {
        let job = Job { session: self.id, shot, kind, submitted: Instant::now(), reply: self.reply.clone() };
        self.shared.push(job);
    }
}

/// Drives an engine (see [`Feed::driver`]).
#[derive(Clone)]
pub struct Driver {
    shared: Arc<Shared>,
    bell: Sender<()>,
}

impl Driver {
    /// As [`Feed::drive`].
    pub fn drive(&self) {
        self.shared.drive(&self.bell);
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        for shot in self.open.keys().copied().collect::<Vec<_>>() {
            self.abort(shot);
        }
        // The helper frees their states; this may run inside a reply callback.
        let _ = self.bell.try_send(());
    }
}

/// A client's view of the engine: a [`Feed`] whose replies queue on a
/// channel, with calls that wait for them. Every call that waits drives the
/// engine first, so rounds submitted together are stepped as one batch.
pub struct Session {
    feed: Feed,
    replies: Receiver<Reply>,
    /// Replies received while waiting for another one.
    stash: VecDeque<Reply>,
    /// How long the blocking calls spin for their reply before parking.
    spin: Duration,
}

impl Session {
    /// The model.
    pub fn model(&self) -> &Arc<NeuralModel> {
        self.feed.model()
    }

    /// Event bits a round needs (see [`Feed::round_bits`]).
    pub fn round_bits(&self, round: usize) -> usize {
        self.feed.round_bits(round)
    }

    /// Event bits of the finishing (data-qubit) round.
    pub fn final_bits(&self) -> usize {
        self.feed.final_bits()
    }

    /// Shots opened and not yet finished.
    pub fn open_shots(&self) -> usize {
        self.feed.open_shots()
    }

    /// Queues one round of a shot (round 0 opens the shot) without waiting.
    /// Its [`Reply::Ack`] comes through [`Session::recv`].
    pub fn submit_round(&mut self, shot: u64, round: usize, events: &[bool]) -> Result<(), StreamError> {
        self.feed.submit_round(shot, round, events)
    }

    /// Queues a shot's final round (the memory-basis events from the data
    /// qubits) without waiting. Its [`Reply::Result`] comes through [`Session::recv`].
    pub fn submit_finish(&mut self, shot: u64, events: &[bool]) -> Result<(), StreamError> {
        self.feed.submit_finish(shot, events)
    }

    /// Drops an open shot's state; it gets no result.
    pub fn abort(&mut self, shot: u64) {
        self.feed.abort(shot);
    }

    /// The next reply, waiting for it.
    pub fn recv(&mut self) -> Result<Reply, StreamError> {
        if let Some(r) = self.stash.pop_front() {
            return Ok(r);
        }
        self.feed.drive();
        self.replies.recv().map_err(|_| StreamError::Closed)
    }

    /// The next reply, waiting at most `timeout`; `None` if none came.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Reply>, StreamError> {
        if let Some(r) = self.stash.pop_front() {
            return Ok(Some(r));
        }
        self.feed.drive();
        match self.replies.recv_timeout(timeout) {
            Ok(r) => Ok(Some(r)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(StreamError::Closed),
        }
    }

    /// Pushes one round and waits for its acknowledgement.
    pub fn push_round(&mut self, shot: u64, round: usize, events: &[bool]) -> Result<RoundAck, StreamError> {
        self.submit_round(shot, round, events)?;
        match self.wait_for(shot)? {
            Reply::Ack(ack) => Ok(ack),
            Reply::Error { error, .. } => Err(error),
            Reply::Result(_) => unreachable!("a shot's result before its finish"),
        }
    }

    /// Pushes a shot's final round and waits for its result.
    pub fn finish(&mut self, shot: u64, events: &[bool]) -> Result<ShotResult, StreamError> {
        self.submit_finish(shot, events)?;
        loop {
            match self.wait_for(shot)? {
                Reply::Result(result) => return Ok(result),
                Reply::Error { error, .. } => return Err(error),
                Reply::Ack(_) => {} // an earlier round of this shot, submitted without waiting
            }
        }
    }

    /// The next reply about `shot`; replies about other shots are kept for [`Session::recv`].
    fn wait_for(&mut self, shot: u64) -> Result<Reply, StreamError> {
        if let Some(i) = self.stash.iter().position(|r| r.shot() == shot) {
            return Ok(self.stash.remove(i).expect("index in range"));
        }
        self.feed.drive();
        loop {
            let reply = match spin_recv(&self.replies, self.spin) {
                Some(reply) => reply,
                None => self.replies.recv().map_err(|_| StreamError::Closed)?,
            };
            if reply.shot() == shot {
                return Ok(reply);
            }
            self.stash.push_back(reply);
        }
    }
}

/// The engine's core: the backend holding every open shot's state, which
/// slot each shot has, and the batch buffers.
struct Worker {
    model: Arc<NeuralModel>,
    options: StreamOptions,
    /// The shots' states, one slot each, on the backend's device.
    backend: Box<dyn Backend>,
    /// (session, shot) → its slot.
    slots: HashMap<(u64, u64), usize>,
    /// Slots released by finished or aborted shots, to be handed out again.
    free: Vec<usize>,
    /// Slots handed out so far: `0..next_slot`.
    next_slot: usize,
    /// Jobs of shots that already had a job in the last batch, kept in order.
    carry: VecDeque<Job>,
    /// Slots opened by this batch's round 0s, zeroed before the step.
    fresh: Vec<usize>,
    /// The batch's slots, in batch order.
    batch_slots: Vec<usize>,
    /// The batch's features, `[batch][S][NF]`.
    batch_features: Vec<f32>,
    /// The finishing shots' slots, in batch order.
    finishing: Vec<usize>,
    /// Their logits, `[finishing][O]`.
    logits: Vec<f32>,
}

impl Worker {
    fn new(model: Arc<NeuralModel>, options: StreamOptions, backend: Box<dyn Backend>) -> Self {
        Self {
            model,
            options,
            backend,
            slots: HashMap::new(),
            free: Vec::new(),
            next_slot: 0,
            carry: VecDeque::new(),
            fresh: Vec::new(),
            batch_slots: Vec::new(),
            batch_features: Vec::new(),
            finishing: Vec::new(),
            logits: Vec::new(),
        }
    }

    /// Takes the carried jobs and what is queued (up to
    /// [`StreamOptions::max_batch`] in all) and steps them; `false` if there was nothing.
    fn step_queued(&mut self, queue: &Mutex<VecDeque<Job>>) -> bool {
        let max = self.options.max_batch.max(1);
        let mut pending: Vec<Job> = self.carry.drain(..).collect();
        {
            let mut queue = queue.lock().unwrap_or_else(PoisonError::into_inner);
            let take = max.saturating_sub(pending.len()).min(queue.len());
            pending.extend(queue.drain(..take));
        }
        if pending.is_empty() {
            return false;
        }
        // Every state is written back before the first reply goes out, so a
        // reply callback that panics leaves the engine consistent.
        for (to, reply) in self.process(&mut pending) {
            to(reply);
        }
        true
    }

    fn has_carry(&self) -> bool {
        !self.carry.is_empty()
    }

    /// Steps one batch and returns its replies. A shot with several jobs
    /// queued gets its first one stepped now and the rest carried to the
    /// next batch, in order.
    fn process(&mut self, pending: &mut Vec<Job>) -> Vec<(ReplyFn, Reply)> {
        let mut replies = Vec::with_capacity(pending.len());
        let mut seen = HashSet::new();
        let mut batch: Vec<Job> = Vec::with_capacity(pending.len());
        self.batch_slots.clear();
        for job in pending.drain(..) {
            let key = (job.session, job.shot);
            if !seen.insert(key) {
                self.carry.push_back(job);
                continue;
            }
            let slot = match &job.kind {
                JobKind::Abort => {
                    self.release(key);
                    continue;
                }
                JobKind::Round { round: 0, .. } => match self.open_slot(key) {
                    Ok(slot) => slot,
                    Err(error) => {
                        replies.push((job.reply, Reply::Error { shot: job.shot, error }));
                        continue;
                    }
                },
                JobKind::Round { .. } | JobKind::Finish { .. } => match self.slots.get(&key) {
                    Some(&slot) => slot,
                    None => {
                        // The session checks order, so this is a shot the engine refused at round 0.
                        let error = StreamError::NotStarted { shot: job.shot };
                        replies.push((job.reply, Reply::Error { shot: job.shot, error }));
                        continue;
                    }
                },
            };
            self.batch_slots.push(slot);
            batch.push(job);
        }
        if batch.is_empty() {
            return replies;
        }
        let n = batch.len();
        let config = self.model.weights().config();
        let (per_round, o) = (config.features_len(), config.observables);
        self.batch_features.clear();
        self.batch_features.resize(n * per_round, 0.0);
        for (job, f) in batch.iter().zip(self.batch_features.chunks_exact_mut(per_round)) {
            write_features(self.model.basis_stabilizers(), &job.kind, f);
        }
        self.finishing.clear();
        for (job, &slot) in batch.iter().zip(&self.batch_slots) {
            if matches!(job.kind, JobKind::Finish { .. }) {
                self.finishing.push(slot);
            }
        }
        self.logits.resize(self.finishing.len() * o, 0.0);
        let reset = self.backend.reset(&self.fresh);
        self.fresh.clear();
        let started = Instant::now();
        let stepped = reset.and_then(|()| self.backend.step(&self.batch_slots, &self.batch_features));
        let compute = started.elapsed();
        // The finished shots' readout (their slots are released below).
        let read = stepped.and_then(|()| self.backend.readout(&self.finishing, &mut self.logits));
        if let Err(e) = read {
            let message = format!("{}: {e}", self.backend.device());
            for job in batch {
                self.release((job.session, job.shot));
                let error = StreamError::Backend { shot: job.shot, message: message.clone() };
                replies.push((job.reply, Reply::Error { shot: job.shot, error }));
            }
            return replies;
        }
        let mut finished = 0;
        for job in batch {
            let latency = job.submitted.elapsed();
            let reply = match job.kind {
                JobKind::Round { round, .. } => {
                    Reply::Ack(RoundAck { shot: job.shot, round, latency, compute, batch: n })
                }
                JobKind::Finish { round, .. } => {
                    let logits = self.logits[finished * o..][..o].to_vec();
                    finished += 1;
                    let (prediction, confidence) = self.model.decide(&logits);
                    self.release((job.session, job.shot));
                    Reply::Result(ShotResult {
                        shot: job.shot,
                        rounds: round + 1,
                        logits,
                        prediction,
                        confidence,
                        decision_latency: latency,
                        batch: n,
                    })
                }
                JobKind::Abort => unreachable!("aborts are not stepped"),
            };
            replies.push((job.reply, reply));
        }
        replies
    }

    /// A slot for a new shot, queued to be zeroed before the step; an error
    /// when the engine is full or the backend cannot make room.
    fn open_slot(&mut self, key: (u64, u64)) -> Result<usize, StreamError> {
        if let Some(&slot) = self.slots.get(&key) {
            self.fresh.push(slot);
            return Ok(slot);
        }
        if self.slots.len() >= self.options.max_open_shots {
            return Err(StreamError::Capacity { shot: key.1, limit: self.options.max_open_shots });
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.backend.reserve(self.next_slot + 1).map_err(|e| StreamError::Backend {
                    shot: key.1,
                    message: format!("{}: {e}", self.backend.device()),
                })?;
                self.next_slot += 1;
                self.next_slot - 1
            }
        };
        self.fresh.push(slot);
        self.slots.insert(key, slot);
        Ok(slot)
    }

    fn release(&mut self, key: (u64, u64)) {
        if let Some(slot) = self.slots.remove(&key) {
            self.free.push(slot);
        }
    }
}

/// A message from `rx` if one comes within `spin` (busy-waiting: waking a
/// parked thread costs tens of microseconds, more than a round step); `None`
/// otherwise, or if every sender is gone.
fn spin_recv<T>(rx: &Receiver<T>, spin: Duration) -> Option<T> {
    let deadline = Instant::now() + spin;
    loop {
        match rx.try_recv() {
            Ok(x) => return Some(x),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) if Instant::now() < deadline => std::hint::spin_loop(),
            Err(TryRecvError::Empty) => return None,
        }
    }
}

/// One round's features `[S][NF]` for a job (see the module doc for which
/// stabilizers each round carries).
fn write_features(basis: &[usize], kind: &JobKind, out: &mut [f32]) {
    if matches!(kind, JobKind::Finish { .. }) {
        out.chunks_exact_mut(NUM_FEATURES).for_each(|f| f[IS_FINAL] = 1.0);
    }
    let mut put = |s: usize, event: bool, is_final: bool| write_cell(&mut out[s * NUM_FEATURES..], event, is_final);
    match kind {
        JobKind::Round { round: 0, events } => basis.iter().zip(events).for_each(|(&s, &e)| put(s, e, false)),
        JobKind::Round { events, .. } => events.iter().enumerate().for_each(|(s, &e)| put(s, e, false)),
        JobKind::Finish { events, .. } => basis.iter().zip(events).for_each(|(&s, &e)| put(s, e, true)),
        JobKind::Abort => {}
    }
}
