//! One decode stream, whatever carries it (gRPC or the FPGA bridge): the
//! session it opens, its shots, the budgets, the fallback to correlated
//! matching and the shadow check.
//!
//! A [`Stream`] runs on its transport's own thread or task, and on the
//! thread that steps the neural engine (see [`Stream`]). Everything it sends
//! goes through a [`Sink`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use decoder::confidence::CALIBRATION_SEED;
use decoder::{
    Decoder, DecoderKind, Driver, Feed, GapCalibration, MatchingDecoder, NeuralMatching, NeuralModel, PackedShots,
    Reply as EngineReply, ReplyFn, ShotStream,
};
use models::posterior::PosteriorModel;
use simulator_bridge::shots::unpack_bits;
use simulator_bridge::{DemFile, DemShape, MemoryExperiment, RoundLayout, StabilizerLayout};
use tracing::{Span, error, info_span, warn};

use crate::api::{
    BaselineCheck, CodeSpec, Fault, Input, OpenRequest, Opened, Reply, RoundAck, RoundEvents, SessionDecoder,
    SessionStabilizer, ShotFailure, ShotResult, Sink, Status,
};
use crate::stats::Stats;
use crate::{Hub, Model};

/// The decoding modes of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Neural { checked: bool },
    Whole(DecoderKind),
}

impl Mode {
    /// The decoder that answers whole shots: the session's own, or correlated
    /// matching for shots that leave the neural decoder.
    fn whole_kind(self) -> DecoderKind {
        match self {
            Mode::Whole(kind) => kind,
            Mode::Neural { .. } => DecoderKind::Correlated,
        }
    }

    fn of(decoder: SessionDecoder) -> Self {
        match decoder {
            SessionDecoder::Neural => Mode::Neural { checked: false },
            SessionDecoder::NeuralChecked => Mode::Neural { checked: true },
            SessionDecoder::Matching => Mode::Whole(DecoderKind::Matching),
            SessionDecoder::Correlated => Mode::Whole(DecoderKind::Correlated),
            SessionDecoder::NeuralMatching => Mode::Whole(DecoderKind::NeuralMatching),
        }
    }
}

/// What the circuit of a session gives its decoders: built once per code and shared.
pub struct CircuitInfo {
    dem_text: String,
    /// The SHA-256 of the operator's DEM file it was built from, if any.
    dem_sha256: Option<String>,
    layout: StabilizerLayout,
    /// How its shots travel, round by round.
    rounds: RoundLayout,
    /// Gap calibrations of plain and correlated matching, fitted on held-out shots of the DEM.
    calibrations: [(DecoderKind, GapCalibration); 2],
    /// The built-in posterior model and its confidence calibration for this
    /// circuit, fitted the first time a neural-matching session asks.
    posterior: OnceLock<Result<(Arc<PosteriorModel>, GapCalibration), String>>,
}

impl std::fmt::Debug for CircuitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitInfo")
            .field("detectors", &self.layout.detectors.len())
            .field("rounds", &self.layout.num_rounds)
            .field("dem_bytes", &self.dem_text.len())
            .finish_non_exhaustive()
    }
}

/// Held-out shots that fit neural-matching's confidence (fewer than
/// matching's: a shot costs about 60 times as much at d=11).
const POSTERIOR_CALIBRATION_SHOTS: usize = 4_000;

/// Held-out shots that fit the matching decoders' confidence, once per code
/// (half of `qecd predict`'s, to keep a code's first open short); their seed
/// is every calibration's, [`CALIBRATION_SEED`].
const CALIBRATION_SHOTS: usize = 10_000;

impl CircuitInfo {
    /// The circuit, DEM, layout and calibrations of a code; `None` when
    /// `stop` said so. It is asked between the stages and while the
    /// calibrations decode (every quarter of a second or so), so that a build
    /// nobody waits for any more ends soon: at d=3 with 1,000 rounds its
    /// longest stretch without asking, sampling the held-out shots, is 1.3 s.
    ///
    /// With `decoder_dem`, the decoders and their calibrations use that DEM
    /// instead of the circuit's (it must fit the circuit); the layouts still
    /// come from the circuit.
    pub fn build(
        code: &CodeSpec,
        decoder_dem: Option<&DemFile>,
        stop: &dyn Fn() -> bool,
    ) -> anyhow::Result<Option<Self>> {
        let basis = code.basis;
        let circuit = MemoryExperiment::new(code.distance, code.rounds, basis)?.noisy_circuit(&code.noise)?;
        if stop() {
            return Ok(None);
        }
        let dem = match decoder_dem {
            Some(file) => {
                if let Some(why) = file.misfit(&DemShape::of_circuit(&circuit)?) {
                    anyhow::bail!("{} does not fit the code's circuit: {why}", file.path().display());
                }
                file.text().parse().map_err(|e| anyhow::anyhow!("{}: {e}", file.path().display()))?
            }
            None => simulator_bridge::decoding_dem(&circuit)?,
        };
        let dem_text = dem.to_string();
        let layout = StabilizerLayout::from_circuit(&circuit, basis)?;
        drop(circuit);
        let fit = |kind| -> anyhow::Result<Option<(DecoderKind, GapCalibration)>> {
            if stop() {
                return Ok(None);
            }
            let decoder = MatchingDecoder::from_dem(&dem, kind)?;
            let fitted = decoder.fit_calibration_until(&dem, CALIBRATION_SHOTS, CALIBRATION_SEED, stop)?;
            Ok(fitted.map(|c| (kind, c)))
        };
        let Some(matching) = fit(DecoderKind::Matching)? else { return Ok(None) };
        let Some(correlated) = fit(DecoderKind::Correlated)? else { return Ok(None) };
        Ok(Some(Self {
            dem_text,
            dem_sha256: decoder_dem.map(|file| file.sha256().to_owned()),
            rounds: RoundLayout::new(&layout),
            layout,
            calibrations: [matching, correlated],
            posterior: OnceLock::new(),
        }))
    }

    /// Bytes it holds, estimated: the DEM text (by far the most: about 1 KB
    /// a detector, 7 MB for d=3 with 1,000 rounds), the stabilizer layout's
    /// detector sites, the round layout's two words a detector, and the
    /// posterior model's weights once a neural-matching session fitted them.
    /// Matching graphs are not counted: each stream builds its own from the
    /// text.
    pub fn estimated_bytes(&self) -> usize {
        let detectors = self.layout.detectors.len();
        let stabilizers = self.layout.stabilizers.len();
        let mut bytes = std::mem::size_of::<Self>()
            + self.dem_text.capacity()
            + detectors * std::mem::size_of::<simulator_bridge::layout::DetectorSite>()
            + 2 * stabilizers * std::mem::size_of::<simulator_bridge::layout::Stabilizer>()
            + detectors * 2 * std::mem::size_of::<usize>()
            + self.layout.num_rounds * 2 * std::mem::size_of::<Vec<usize>>();
        if let Some(Ok((model, _))) = self.posterior.get() {
            let weights: usize =
                model.config.tensor_shapes().iter().map(|(_, shape)| shape.iter().product::<usize>()).sum();
            bytes += weights * std::mem::size_of::<f32>();
        }
        bytes
    }

    /// A whole-shot matching decoder with its calibrated confidence.
    pub fn matching(&self, kind: DecoderKind) -> anyhow::Result<MatchingDecoder> {
        let calibration = self.calibrations.iter().find(|(k, _)| *k == kind).map(|c| c.1);
        let decoder = MatchingDecoder::from_dem_text(&self.dem_text, kind)?;
        Ok(match calibration {
            Some(c) => decoder.with_confidence(c),
            None => decoder,
        })
    }

    /// The whole-shot decoder of `kind`, with its calibrated confidence.
    pub fn whole(&self, kind: DecoderKind) -> anyhow::Result<Box<dyn Decoder>> {
        match kind {
            DecoderKind::NeuralMatching => Ok(Box::new(self.neural_matching()?)),
            kind => Ok(Box::new(self.matching(kind)?)),
        }
    }

    /// Neural-matching with the built-in posterior model and its confidence,
    /// fitted for this circuit the first time it is asked for.
    pub fn neural_matching(&self) -> anyhow::Result<NeuralMatching> {
        let dem: stim::DetectorErrorModel = self.dem_text.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
        let fitted = self.posterior.get_or_init(|| {
            let fit = || -> anyhow::Result<(Arc<PosteriorModel>, GapCalibration)> {
                let model = Arc::new(models::zoo::posterior()?);
                let mut probe = NeuralMatching::new(model.clone(), &dem, &self.layout)?;
                let calibration = probe.fit_calibration(&dem, POSTERIOR_CALIBRATION_SHOTS, CALIBRATION_SEED)?;
                Ok((model, calibration))
            };
            fit().map_err(|e| format!("{e:#}"))
        });
        let (model, calibration) = fitted.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(NeuralMatching::new(model.clone(), &dem, &self.layout)?.with_confidence(*calibration))
    }

    /// The decoding DEM, as text.
    pub fn dem_text(&self) -> &str {
        &self.dem_text
    }

    /// The circuit's stabilizer layout.
    pub fn layout(&self) -> &StabilizerLayout {
        &self.layout
    }

    /// How the circuit's shots travel, round by round.
    pub fn rounds(&self) -> &RoundLayout {
        &self.rounds
    }
}

struct Shot {
    next_round: u32,
    /// The shot's detection events in circuit order, b8.
    events: Vec<u8>,
    /// Still decoded by the neural engine.
    neural: bool,
    fallback: Option<String>,
}

/// Work for a stream's matching lane.
enum LaneJob {
    /// A round of a shot that a stepping decoder (neural-matching) takes as
    /// it arrives: the circuit detectors of that round that fired.
    Round { shot: u64, events: Vec<u64> },
    /// Answer a shot with the whole-shot decoder.
    Whole { shot: u64, events: Vec<u8>, fallback: Option<String>, received: Instant },
    /// Shadow-decode a neural answer (the checked mode).
    Check { shot: u64, events: Vec<u8>, prediction: Vec<bool> },
}

/// What the stream's mutex guards: everything both the transport's thread
/// and the engine's reply callback change.
struct State {
    /// The neural engine's session; `None` in the matching modes and once the stream ended.
    feed: Option<Feed>,
    shots: HashMap<u64, Shot>,
    /// Receipt time of every round and final handed to the engine.
    pending: HashMap<(u64, u32), Instant>,
    /// The matching lane's queue; `None` once the stream ended.
    lane: Option<Sender<LaneJob>>,
}

/// Says whether the client of an opening stream has gone away (its reply
/// channel closed, its connection ended).
pub type Gone = Arc<dyn Fn() -> bool + Send + Sync>;

/// One decode stream. Its transport (a gRPC task, a bridge connection's
/// reader) hands it the client's messages one at a time with
/// [`Stream::input`], then calls [`Stream::drive`]: the neural engine steps
/// the round right there if it is idle, and its reply comes back through a
/// callback into the stream, so a round crosses no thread on its way.
/// Whole-shot decoding (the matching modes, shots that fell back) and the
/// checked mode's shadow run on the stream's matching lane, a thread of its
/// own, off the neural path.
pub struct Stream {
    hub: Arc<Hub>,
    /// The stream's log span: its number, code and decoder.
    span: Span,
    sink: Sink,
    /// Set when the stream ends or the client goes away: nothing more is sent.
    closed: Arc<AtomicBool>,
    mode: Mode,
    /// Code distance and basis, for messages.
    code: (usize, simulator_bridge::Basis),
    rounds: u32,
    budget: Option<Duration>,
    max_backlog: usize,
    /// The code's circuit: its round layout, DEM and calibrations.
    info: Arc<CircuitInfo>,
    /// The model version of the session, kept (with its engine) while the
    /// stream runs: a swap leaves the session on it.
    model: Option<Model>,
    driver: Option<Driver>,
    state: Mutex<State>,
    /// Signalled when the last pending round is answered.
    drained: Condvar,
    lane_thread: Mutex<Option<JoinHandle<()>>>,
}

impl Stream {
    /// Opens a session (sending its [`Opened`] reply). It builds the code's
    /// circuit and matching graph the first time, which takes milliseconds:
    /// call it where blocking is fine.
    pub fn open(hub: Arc<Hub>, open: OpenRequest, sink: Sink) -> Result<Arc<Self>, Fault> {
        Self::open_or_cancel(hub, open, sink, Arc::new(|| false))
    }

    /// [`Stream::open`], given up (with a CANCELLED-like fault that nobody
    /// reads) once `gone` says the client has left: a code's build that no
    /// open waits for any more stops.
    pub fn open_or_cancel(hub: Arc<Hub>, open: OpenRequest, sink: Sink, gone: Gone) -> Result<Arc<Self>, Fault> {
        let OpenRequest { code, decoder, model, round_budget, max_backlog } = open;
        let (d, basis, rounds) = (code.distance, code.basis, code.rounds);
        let span = info_span!("stream", n = hub.stream_number(), d, %basis, rounds, %decoder);
        hub.check_size(&code)?;
        let mode = Mode::of(decoder);
        let model = match mode {
            Mode::Neural { .. } => Some(hub.models.find(model.as_deref(), d, basis)?),
            Mode::Whole(_) => None,
        };
        let info = hub.circuit_or_cancel(&code, &*gone)?;
        if let Some(m) = &model {
            check_model_order(&m.model, &info.rounds)?;
        }
        let closed = Arc::new(AtomicBool::new(false));
        let sink: Sink = {
            let closed = closed.clone();
            Arc::new(move |r| {
                if closed.load(Ordering::Acquire) {
                    return false;
                }
                let sent = sink(r);
                if !sent {
                    closed.store(true, Ordering::Release);
                }
                sent
            })
        };
        let (lane, lane_thread) = spawn_lane(hub.clone(), info.clone(), mode.whole_kind(), sink.clone(), span.clone())?;
        let layout = &info.rounds;
        let opened = Opened {
            model: model.as_ref().map(|m| m.name.clone()),
            model_version: model.as_ref().map(|m| m.version.clone()),
            dem_sha256: info.dem_sha256.clone(),
            first_round_events: layout.events_in(0),
            round_events: layout.stabilizers().len(),
            final_round_events: layout.events_in(rounds),
            stabilizers: layout
                .stabilizers()
                .iter()
                .map(|s| SessionStabilizer { x: s.x, y: s.y, kind: s.kind })
                .collect(),
            basis,
        };
        let stream = Arc::new_cyclic(|me: &Weak<Stream>| {
            let feed = model.as_ref().map(|m| {
                let me = me.clone();
                let reply: ReplyFn = Arc::new(move |reply| {
                    if let Some(stream) = me.upgrade() {
                        stream.engine_reply(reply);
                    }
                });
                m.engine.open_with(reply)
            });
            Stream {
                max_backlog: max_backlog.unwrap_or(hub.options.max_backlog),
                budget: round_budget,
                hub,
                span,
                sink,
                closed,
                mode,
                code: (d, basis),
                rounds: rounds as u32,
                info,
                driver: feed.as_ref().map(Feed::driver),
                model,
                state: Mutex::new(State { feed, shots: HashMap::new(), pending: HashMap::new(), lane: Some(lane) }),
                drained: Condvar::new(),
                lane_thread: Mutex::new(Some(lane_thread)),
            }
        });
        (stream.sink)(Reply::Opened(opened));
        Ok(stream)
    }

    /// Handles one message of the client after the open. A fault ends the
    /// stream: the transport reports it and calls [`Stream::abandon`].
    pub fn input(&self, input: Input) -> Result<(), Fault> {
        match input {
            Input::Open => Err(Fault::new(Status::FailedPrecondition, "the session is already open")),
            Input::Round { round, events } => self.round(round, events),
            Input::Final(events) => self.finish(events),
            Input::Invalid(why) => Err(Fault::invalid(why)),
        }
    }

    /// Gets the rounds queued by [`Stream::input`] stepped, on this thread
    /// if the engine is idle. Call it after every input.
    pub fn drive(&self) {
        if let Some(driver) = &self.driver {
            driver.drive();
        }
    }

    /// The stream's log span: transports log its events inside it.
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// True once the client is gone (or the stream ended): stop reading it.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The client sends no more: waits until every round and shot it sent is
    /// answered (or the client goes away), then ends the stream. Blocks.
    pub fn end(&self) {
        let mut state = self.lock();
        while !state.pending.is_empty() && !self.is_closed() {
            state =
                self.drained.wait_timeout(state, Duration::from_millis(50)).unwrap_or_else(PoisonError::into_inner).0;
        }
        state.feed = None;
        state.lane = None;
        drop(state);
        // The lane answers the shots queued on it, then stops.
        if let Some(thread) = self.lane_thread.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = thread.join();
        }
        self.closed.store(true, Ordering::Release);
    }

    /// Ends the stream now, after a fault: nothing more is sent, the
    /// engine forgets its shots and the lane stops after its current shot.
    pub fn abandon(&self) {
        self.closed.store(true, Ordering::Release);
        let mut state = self.lock();
        state.feed = None;
        state.lane = None;
        state.pending.clear();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The session's own check of a round's size: transports check only their framing.
    fn check_events(&self, what: &str, expected: usize, e: &RoundEvents) -> Result<(), Fault> {
        let shot = e.shot;
        if e.num_events != expected {
            let (d, basis) = (self.code.0, self.code.1);
            return Err(Fault::invalid(format!(
                "shot {shot}, {what}: {} events, but that round of a d={d} memory-{basis} session has {expected}",
                e.num_events
            )));
        }
        if e.events.len() != expected.div_ceil(8) {
            return Err(Fault::invalid(format!(
                "shot {shot}, {what}: {expected} event bits take {} bytes, but {} came",
                expected.div_ceil(8),
                e.events.len()
            )));
        }
        if !expected.is_multiple_of(8) && e.events.last().is_some_and(|last| last >> (expected % 8) != 0) {
            return Err(Fault::invalid(format!(
                "shot {shot}, {what}: the padding bits after the {expected} event bits must be 0"
            )));
        }
        Ok(())
    }

    fn round(&self, t: u32, r: RoundEvents) -> Result<(), Fault> {
        let received = Instant::now();
        let shot_id = r.shot;
        let mut guard = self.lock();
        let state = &mut *guard;
        let next = state.shots.get(&shot_id).map(|s| s.next_round).unwrap_or(0);
        if t != next || t >= self.rounds {
            let why = if t >= self.rounds {
                format!("the session has {} rounds (0..{}); send the final round next", self.rounds, self.rounds - 1)
            } else {
                format!("round {next} is next (rounds come in order, each once)")
            };
            return Err(Fault::new(
                Status::FailedPrecondition,
                format!("shot {shot_id}: round {t} is out of order: {why}"),
            ));
        }
        if t == 0 && state.shots.len() >= self.hub.options.max_stream_shots {
            return Err(Fault::new(
                Status::ResourceExhausted,
                format!(
                    "shot {shot_id}: this stream already has {} unfinished shots (--max-stream-shots {})",
                    state.shots.len(),
                    self.hub.options.max_stream_shots
                ),
            ));
        }
        let layout = &self.info.rounds;
        let width = layout.events_in(t as usize);
        self.check_events(&format!("round {t}"), width, &r)?;
        let neural_mode = matches!(self.mode, Mode::Neural { .. });
        let bytes = layout.num_detectors().div_ceil(8);
        let shot = state.shots.entry(shot_id).or_insert_with(|| Shot {
            next_round: 0,
            events: vec![0; bytes],
            neural: neural_mode,
            fallback: None,
        });
        layout.scatter(t as usize, &r.events, &mut shot.events);
        shot.next_round += 1;
        if shot.neural && state.pending.len() >= self.max_backlog {
            shot.neural = false;
            shot.fallback =
                Some(format!("backlog of {} rounds reached its bound {}", state.pending.len(), self.max_backlog));
            Stats::bump(&self.hub.stats.backlog_fallbacks);
            if let Some(feed) = state.feed.as_mut() {
                feed.abort(shot_id);
            }
        }
        if shot.neural {
            let bits = unpack_bits(&r.events, width);
            let feed = state.feed.as_mut().ok_or_else(ended)?;
            feed.submit_round(shot_id, t as usize, &bits).map_err(Fault::internal)?;
            state.pending.insert((shot_id, t), received);
            return Ok(());
        }
        let answered = self.mode.whole_kind();
        if answered == DecoderKind::NeuralMatching {
            Self::round_to_lane(state, shot_id, layout.fired(t as usize, &r.events));
        }
        self.hub.stats.round(answered, received.elapsed());
        let ack = RoundAck {
            shot: shot_id,
            round: t,
            step_latency: Duration::ZERO,
            budget_met: true,
            backlog: state.pending.len(),
        };
        (self.sink)(Reply::Ack(ack));
        Ok(())
    }

    fn finish(&self, f: RoundEvents) -> Result<(), Fault> {
        let received = Instant::now();
        let shot_id = f.shot;
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(shot) = state.shots.get(&shot_id).filter(|s| s.next_round != u32::MAX) else {
            return Err(Fault::new(
                Status::FailedPrecondition,
                format!("shot {shot_id}: final round before round 0 (or after the shot's final round)"),
            ));
        };
        if shot.next_round != self.rounds {
            return Err(Fault::new(
                Status::FailedPrecondition,
                format!("shot {shot_id}: final round after {} of {} rounds", shot.next_round, self.rounds),
            ));
        }
        let layout = &self.info.rounds;
        let last = self.rounds as usize;
        self.check_events("final round", layout.events_in(last), &f)?;
        let mut shot = state.shots.remove(&shot_id).expect("checked above");
        layout.scatter(last, &f.events, &mut shot.events);
        if self.mode == Mode::Whole(DecoderKind::NeuralMatching) {
            Self::round_to_lane(state, shot_id, layout.fired(last, &f.events));
        }
        if shot.neural {
            let bits = unpack_bits(&f.events, layout.events_in(last));
            let feed = state.feed.as_mut().ok_or_else(ended)?;
            feed.submit_finish(shot_id, &bits).map_err(Fault::internal)?;
            state.pending.insert((shot_id, self.rounds), received);
            // Keep the events for the shadow check, or for correlated matching
            // should one of its rounds turn out to have missed the budget.
            state.shots.insert(shot_id, Shot { next_round: u32::MAX, ..shot });
            return Ok(());
        }
        Self::to_lane(state, shot_id, shot, received);
        Ok(())
    }

    /// Hands a round to the lane's stepping decoder: the circuit detectors that fired in it.
    fn round_to_lane(state: &mut State, shot_id: u64, fired: impl Iterator<Item = usize>) {
        if let Some(lane) = &state.lane {
            let _ = lane.send(LaneJob::Round { shot: shot_id, events: fired.map(|d| d as u64).collect() });
        }
    }

    /// Hands a shot to the whole-shot decoder: the session's, or correlated
    /// matching for a shot that left the neural decoder.
    fn to_lane(state: &mut State, shot_id: u64, shot: Shot, received: Instant) {
        if let Some(lane) = &state.lane {
            let job = LaneJob::Whole { shot: shot_id, events: shot.events, fallback: shot.fallback, received };
            let _ = lane.send(job);
        }
    }

    /// Handles one reply of the engine, on the thread that stepped it.
    fn engine_reply(&self, reply: EngineReply) {
        let mut guard = self.lock();
        let state = &mut *guard;
        match reply {
            EngineReply::Ack(ack) => {
                let key = (ack.shot, ack.round as u32);
                let Some(received) = state.pending.remove(&key) else { return };
                let latency = received.elapsed();
                let met = self.budget.is_none_or(|b| latency <= b);
                self.hub.stats.round(DecoderKind::Neural, latency);
                if !met {
                    Stats::bump(&self.hub.stats.budget_misses);
                    let why = format!("round {} took {:.1} µs, over the budget", ack.round, micros(latency));
                    Self::fall_back(state, ack.shot, why);
                }
                let ack = RoundAck {
                    shot: ack.shot,
                    round: ack.round as u32,
                    step_latency: latency,
                    budget_met: met,
                    backlog: state.pending.len(),
                };
                (self.sink)(Reply::Ack(ack));
            }
            EngineReply::Result(result) => {
                let Some(received) = state.pending.remove(&(result.shot, self.rounds)) else { return };
                let shot = state.shots.remove(&result.shot);
                match shot {
                    Some(shot) if shot.fallback.is_some() => {
                        // A round of this shot missed the budget after its final round was sent.
                        Self::to_lane(state, result.shot, shot, received);
                    }
                    shot => {
                        let version = self.model.as_ref().map(|m| m.version.clone());
                        send_result(
                            &self.hub,
                            &self.sink,
                            result.shot,
                            &result.prediction,
                            result.confidence,
                            (DecoderKind::Neural, version),
                            None,
                            received,
                        );
                        if let (Mode::Neural { checked: true }, Some(shot), Some(lane)) = (self.mode, shot, &state.lane)
                        {
                            let check = LaneJob::Check {
                                shot: result.shot,
                                events: shot.events,
                                prediction: result.prediction,
                            };
                            let _ = lane.send(check);
                        }
                    }
                }
            }
            EngineReply::Error { shot, error } => {
                // The engine refused the shot (it is full): correlated matching takes it over.
                let rounds: Vec<(u64, u32)> = state.pending.keys().filter(|k| k.0 == shot).copied().collect();
                Self::fall_back(state, shot, format!("the neural engine refused it: {error}"));
                for key in rounds {
                    let Some(received) = state.pending.remove(&key) else { continue };
                    if key.1 == self.rounds {
                        // Its final round was in the engine too, which will
                        // never answer it: correlated matching does, now.
                        if let Some(waiting) = state.shots.remove(&shot) {
                            Self::to_lane(state, shot, waiting, received);
                        }
                        continue;
                    }
                    let ack = RoundAck {
                        shot,
                        round: key.1,
                        step_latency: Duration::ZERO,
                        budget_met: true,
                        backlog: state.pending.len(),
                    };
                    (self.sink)(Reply::Ack(ack));
                }
            }
        }
        if state.pending.is_empty() || self.is_closed() {
            self.drained.notify_all();
        }
    }

    /// Moves a shot to correlated matching. Its rounds still queued in the
    /// engine are acknowledged as they are stepped; if its final round is
    /// already in the engine, the neural answer is set aside for correlated matching's.
    fn fall_back(state: &mut State, shot_id: u64, why: String) {
        let Some(shot) = state.shots.get_mut(&shot_id).filter(|s| s.fallback.is_none()) else { return };
        shot.fallback = Some(why);
        if shot.neural && shot.next_round != u32::MAX {
            shot.neural = false;
            if let Some(feed) = state.feed.as_mut() {
                feed.abort(shot_id);
            }
        }
    }
}

/// Sends a shot's result and counts its decision latency; `false` once the
/// client is gone. `answered_by` is the decoder, with the neural model's version.
#[allow(clippy::too_many_arguments)]
fn send_result(
    hub: &Hub,
    sink: &Sink,
    shot: u64,
    prediction: &[bool],
    confidence: f64,
    answered_by: (DecoderKind, Option<Arc<str>>),
    fallback: Option<String>,
    received: Instant,
) -> bool {
    let (kind, model_version) = answered_by;
    let latency = received.elapsed();
    hub.stats.decision(kind, latency);
    let result = ShotResult {
        shot,
        prediction: prediction.to_vec(),
        confidence,
        answered_by: kind,
        fallback,
        decision_latency: latency,
        model_version,
    };
    sink(Reply::Result(result))
}

/// A neural model takes a round's bits in its own stabilizer order: the
/// circuit's stabilizers must sit where the model's do, in the same order.
pub(crate) fn check_model_order(model: &NeuralModel, rounds: &RoundLayout) -> Result<(), Fault> {
    let ours = rounds.stabilizers();
    let theirs = &model.meta().layout.stabilizers;
    let sits = |s: &simulator_bridge::layout::Stabilizer| (s.x.to_bits(), s.y.to_bits(), s.kind);
    let mut at = theirs.iter().map(sits);
    if ours.iter().map(sits).all(|s| at.any(|t| t == s)) {
        Ok(())
    } else {
        Err(Fault::invalid(format!(
            "model '{}' orders its stabilizers unlike this code's circuit; it cannot decode it round by round",
            model.name()
        )))
    }
}

fn ended() -> Fault {
    Fault::new(Status::FailedPrecondition, "the stream has ended")
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Starts a stream's matching lane: a thread that owns the whole-shot
/// decoder (PyMatching's graph cannot cross threads, so it is built there)
/// and answers the shots and shadow checks queued on it, in order. Returns
/// its queue and its thread.
fn spawn_lane(
    hub: Arc<Hub>,
    info: Arc<CircuitInfo>,
    kind: DecoderKind,
    sink: Sink,
    span: Span,
) -> Result<(Sender<LaneJob>, JoinHandle<()>), Fault> {
    let (tx, rx) = crossbeam_channel::unbounded::<LaneJob>();
    let (built_tx, built) = crossbeam_channel::bounded::<Result<(), String>>(1);
    let thread = std::thread::Builder::new()
        .name("qecd-lane".into())
        .spawn(move || {
            let _span = span.entered();
            let num_detectors = info.rounds.num_detectors();
            let built = if kind == DecoderKind::NeuralMatching {
                info.neural_matching().map(|nm| LaneDecoder::Stepping(Box::new(nm), HashMap::new()))
            } else {
                info.whole(kind).map(LaneDecoder::Whole)
            };
            let mut decoder = match built {
                Ok(d) => {
                    let _ = built_tx.send(Ok(()));
                    d
                }
                Err(e) => {
                    let _ = built_tx.send(Err(format!("cannot build {kind}: {e:#}")));
                    return;
                }
            };
            for job in rx {
                let sent = match job {
                    LaneJob::Round { shot, events } => {
                        if let LaneDecoder::Stepping(nm, shots) = &mut decoder {
                            let stream = shots.entry(shot).or_insert_with(|| nm.start_shot());
                            if let Err(e) = nm.push_round(stream, &events) {
                                warn!(shot, "neural-matching could not take a round: {e}");
                                shots.remove(&shot);
                            }
                        }
                        continue;
                    }
                    LaneJob::Whole { shot, events, fallback, received } => {
                        let decoded = match hub.options.fail_decoding_every {
                            Some(n) if shot % n == n - 1 => Err(format!("injected failure (shot {shot})")),
                            _ => decoder.decode(shot, events, num_detectors),
                        };
                        let (prediction, confidence) = match decoded {
                            Ok(answer) => answer,
                            Err(why) => {
                                error!(shot, "{kind} failed on a shot: {why}");
                                Stats::bump(&hub.stats.failed_shots);
                                let message = format!("shot {shot}: {kind} failed: {why}");
                                if !sink(Reply::Failed(ShotFailure { shot, status: Status::Internal, message })) {
                                    return;
                                }
                                continue;
                            }
                        };
                        if fallback.is_some() {
                            Stats::bump(&hub.stats.fallbacks);
                        }
                        send_result(&hub, &sink, shot, &prediction, confidence, (kind, None), fallback, received)
                    }
                    LaneJob::Check { shot, events, prediction } => {
                        let (baseline, _) = match decoder.decode(shot, events, num_detectors) {
                            Ok(answer) => answer,
                            // The shot has its answer already; only the check is missing.
                            Err(why) => {
                                warn!(shot, "the shadow check failed on a shot: {why}");
                                continue;
                            }
                        };
                        let agreed = baseline == prediction;
                        Stats::bump(&hub.stats.checked);
                        if agreed {
                            hub.stats.agreed.fetch_add(1, Ordering::Relaxed);
                        }
                        sink(Reply::Check(BaselineCheck { shot, agreed, baseline }))
                    }
                };
                if !sent {
                    return;
                }
            }
        })
        .map_err(|e| Fault::internal(format!("cannot start the stream's matching thread: {e}")))?;
    match built.recv() {
        Ok(Ok(())) => Ok((tx, thread)),
        Ok(Err(why)) => Err(Fault::internal(why)),
        Err(_) => Err(Fault::internal("the stream's matching thread stopped")),
    }
}

/// A lane's decoder: one that takes whole shots, or neural-matching, which
/// steps its model as each round arrives and matches at the final round
/// (with the shots it is stepping).
enum LaneDecoder {
    Whole(Box<dyn Decoder>),
    Stepping(Box<NeuralMatching>, HashMap<u64, ShotStream>),
}

impl LaneDecoder {
    /// A finished shot's flips and confidence, or why decoding failed.
    fn decode(&mut self, shot: u64, events: Vec<u8>, num_detectors: usize) -> Result<(Vec<bool>, f64), String> {
        match self {
            LaneDecoder::Whole(d) => decode_one(d.as_mut(), events, num_detectors),
            LaneDecoder::Stepping(nm, shots) => match shots.remove(&shot) {
                Some(stream) => match nm.finish_shot(&stream) {
                    Ok((flips, weight)) => {
                        let prediction = (0..nm.num_observables()).map(|o| flips >> o & 1 != 0).collect();
                        Ok((prediction, nm.confidence(weight).unwrap_or(f64::NAN)))
                    }
                    Err(e) => Err(e.to_string()),
                },
                // Its rounds never reached the lane (it is being shadow-checked,
                // say): the whole shot at once.
                None => decode_one(nm.as_mut(), events, num_detectors),
            },
        }
    }
}

/// One shot through a whole-shot decoder: its predicted flips and confidence
/// (NaN without a calibration), or why decoding failed.
fn decode_one(decoder: &mut dyn Decoder, events: Vec<u8>, num_detectors: usize) -> Result<(Vec<bool>, f64), String> {
    let events = PackedShots::from_bytes(events, num_detectors).map_err(|e| e.to_string())?;
    let d = decoder.decode_batch(&events).map_err(|e| e.to_string())?;
    let prediction = (0..decoder.num_observables()).map(|k| d.predictions.get(0, k)).collect();
    Ok((prediction, d.confidence.map(|c| c[0]).unwrap_or(f64::NAN)))
}
