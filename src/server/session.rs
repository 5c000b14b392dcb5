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
use decoder::{
    Decoder, DecoderKind, Driver, Feed, GapCalibration, MatchingDecoder, NeuralMatching, PackedShots, Reply, ReplyFn,
    ShotStream,
};
use models::ModelLayout;
use models::posterior::PosteriorModel;
use simulator_bridge::layout::StabilizerType;
use simulator_bridge::{Basis, MemoryExperiment, NoiseModel, StabilizerLayout};
use tonic::Code;

use super::proto::{self, DecodeResponse, decode_response::Message as Out};
use super::stats::Stats;
use super::{Hub, Model};

/// A message of the client, in order.
#[derive(Debug)]
pub enum Input {
    /// A second `open`: the session is open already.
    Open,
    /// One stabilizer round of a shot.
    Round(proto::Round),
    /// The final round of a shot.
    Final(proto::FinalRound),
    /// A message the transport could not make sense of.
    Invalid(String),
}

/// What ends a stream: a status code and a message naming the problem.
#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    /// gRPC status code.
    pub code: Code,
    /// What was wrong.
    pub message: String,
}

impl Fault {
    fn new(code: Code, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

impl From<Fault> for tonic::Status {
    fn from(f: Fault) -> Self {
        tonic::Status::new(f.code, f.message)
    }
}

/// Where a stream's responses go; returns `false` once the client is gone.
pub type Sink = Arc<dyn Fn(DecodeResponse) -> bool + Send + Sync>;

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

    fn from_proto(kind: i32) -> Result<Self, Fault> {
        match proto::DecoderKind::try_from(kind) {
            Ok(proto::DecoderKind::Neural) => Ok(Mode::Neural { checked: false }),
            Ok(proto::DecoderKind::NeuralChecked) => Ok(Mode::Neural { checked: true }),
            Ok(proto::DecoderKind::Matching) => Ok(Mode::Whole(DecoderKind::Matching)),
            Ok(proto::DecoderKind::Correlated) => Ok(Mode::Whole(DecoderKind::Correlated)),
            Ok(proto::DecoderKind::NeuralMatching) => Ok(Mode::Whole(DecoderKind::NeuralMatching)),
            _ => Err(Fault::new(
                Code::InvalidArgument,
                format!("decoder {kind} is not one of neural, matching, correlated, neural_checked, neural_matching"),
            )),
        }
    }
}

/// A proto `Code`: distance, basis, rounds and the matching decoders' noise
/// model (SI1000 and p = 0.003 where left empty).
pub fn parse_code(code: &proto::Code) -> Result<(usize, Basis, usize, NoiseModel), Fault> {
    let basis = match proto::Basis::try_from(code.basis) {
        Ok(proto::Basis::X) => Basis::X,
        Ok(proto::Basis::Z) => Basis::Z,
        _ => return Err(Fault::new(Code::InvalidArgument, "code.basis must be BASIS_X or BASIS_Z")),
    };
    let name = if code.noise.is_empty() { "si1000" } else { code.noise.as_str() };
    let p = if code.p == 0.0 { 0.003 } else { code.p };
    let noise = NoiseModel::from_name(name, p).map_err(|e| Fault::new(Code::InvalidArgument, e.to_string()))?;
    Ok((code.distance as usize, basis, code.rounds as usize, noise))
}

/// The proto name of a decoder kind.
pub fn proto_kind(kind: DecoderKind) -> proto::DecoderKind {
    match kind {
        DecoderKind::Neural => proto::DecoderKind::Neural,
        DecoderKind::Matching => proto::DecoderKind::Matching,
        DecoderKind::Correlated => proto::DecoderKind::Correlated,
        DecoderKind::NeuralMatching => proto::DecoderKind::NeuralMatching,
        // The service does not run belief-matching, so nothing it answers comes from it.
        DecoderKind::Belief => proto::DecoderKind::Unspecified,
    }
}

/// Which circuit detector each event bit of each round is.
struct RoundMap {
    /// Round 0's bits, then the middle rounds', then the final round's.
    first: Vec<usize>,
    /// Rounds 1..: `[round - 1][bit]`.
    middle: Vec<Vec<usize>>,
    last: Vec<usize>,
    num_detectors: usize,
}

impl RoundMap {
    /// The detector of every (round, model stabilizer), with the model's bit order.
    fn new(order: &ModelLayout, circuit: &StabilizerLayout, rounds: usize) -> Result<Self, Fault> {
        let model_index: HashMap<(u64, u64), usize> =
            order.stabilizers.iter().enumerate().map(|(i, s)| ((s.x.to_bits(), s.y.to_bits()), i)).collect();
        let mut cell = HashMap::new();
        for (det, site) in circuit.detectors.iter().enumerate() {
            let s = &circuit.stabilizers[site.stabilizer];
            let m = model_index.get(&(s.x.to_bits(), s.y.to_bits())).ok_or_else(|| {
                Fault::new(Code::Internal, format!("circuit stabilizer at ({}, {}) is not in the code", s.x, s.y))
            })?;
            cell.insert((site.round, *m), det);
        }
        let own = order.basis;
        let basis_stabs: Vec<usize> =
            (0..order.stabilizers.len()).filter(|&i| order.stabilizers[i].kind == memory_type(own)).collect();
        let all: Vec<usize> = (0..order.stabilizers.len()).collect();
        let pick = |round: usize, stabs: &[usize]| -> Result<Vec<usize>, Fault> {
            stabs
                .iter()
                .map(|s| {
                    cell.get(&(round, *s)).copied().ok_or_else(|| {
                        Fault::new(Code::Internal, format!("no detector for stabilizer {s} in round {round}"))
                    })
                })
                .collect()
        };
        let first = pick(0, &basis_stabs)?;
        let middle = (1..rounds).map(|t| pick(t, &all)).collect::<Result<_, _>>()?;
        let last = pick(rounds, &basis_stabs)?;
        Ok(Self { first, middle, last, num_detectors: circuit.num_detectors() })
    }

    fn round(&self, t: usize) -> &[usize] {
        if t == 0 { &self.first } else { &self.middle[t - 1] }
    }
}

/// What the circuit of a session gives its decoders: built once per code and shared.
pub struct CircuitInfo {
    dem_text: String,
    layout: StabilizerLayout,
    /// Gap calibrations of plain and correlated matching, fitted on held-out shots of the DEM.
    calibrations: [(DecoderKind, GapCalibration); 2],
    /// The built-in posterior model and its confidence calibration for this
    /// circuit, fitted the first time a neural-matching session asks.
    posterior: OnceLock<Result<(Arc<PosteriorModel>, GapCalibration), String>>,
}

/// Held-out shots that fit neural-matching's confidence (fewer than
/// matching's: a shot costs about 60 times as much at d=11).
const POSTERIOR_CALIBRATION_SHOTS: usize = 4_000;

/// Held-out shots that fit the matching decoders' confidence, and their seed.
const CALIBRATION_SHOTS: usize = 10_000;
const CALIBRATION_SEED: u64 = 0x6361_6c69_6272_6174;

impl CircuitInfo {
    /// The circuit, DEM and layout of a code.
    pub fn build(d: usize, basis: Basis, rounds: usize, noise: &NoiseModel) -> anyhow::Result<Self> {
        let circuit = MemoryExperiment::new(d, rounds, basis)?.noisy_circuit(noise)?;
        let dem = crate::cmd::decoding_dem(&circuit)?;
        let dem_text = dem.to_string();
        let fit = |kind| -> anyhow::Result<(DecoderKind, GapCalibration)> {
            let decoder = MatchingDecoder::from_dem(&dem, kind)?;
            Ok((kind, decoder.fit_calibration(&dem, CALIBRATION_SHOTS, CALIBRATION_SEED)?))
        };
        let calibrations = [fit(DecoderKind::Matching)?, fit(DecoderKind::Correlated)?];
        Ok(Self {
            dem_text,
            layout: StabilizerLayout::from_circuit(&circuit, basis)?,
            calibrations,
            posterior: OnceLock::new(),
        })
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
                let (_, model) = crate::cmd::load_posterior(None)?;
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
}

struct Shot {
    next_round: u32,
    /// The shot's detection events in circuit order, b8.
    events: Vec<u8>,
    /// Still decoded by the neural engine.
    neural: bool,
    fallback: Option<String>,
}

impl Shot {
    fn set(&mut self, detectors: &[usize], bits: &[u8]) {
        for (k, &det) in detectors.iter().enumerate() {
            if bits[k / 8] >> (k % 8) & 1 == 1 {
                self.events[det / 8] |= 1 << (det % 8);
            }
        }
    }
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
    sink: Sink,
    /// Set when the stream ends or the client goes away: nothing more is sent.
    closed: Arc<AtomicBool>,
    mode: Mode,
    rounds: u32,
    budget: Option<Duration>,
    max_backlog: usize,
    map: RoundMap,
    /// Keeps the model (and its engine) alive while the stream runs.
    _model: Option<Model>,
    driver: Option<Driver>,
    state: Mutex<State>,
    /// Signalled when the last pending round is answered.
    drained: Condvar,
    lane_thread: Mutex<Option<JoinHandle<()>>>,
}

impl Stream {
    /// Opens a session (sending its `opened` response). It builds the code's
    /// circuit and matching graph the first time, which takes milliseconds:
    /// call it where blocking is fine.
    pub fn open(hub: Arc<Hub>, open: proto::OpenSession, sink: Sink) -> Result<Arc<Self>, Fault> {
        let code = open.code.ok_or_else(|| Fault::new(Code::InvalidArgument, "open: `code` is missing"))?;
        let (d, basis, rounds, noise) =
            parse_code(&code).map_err(|f| Fault::new(f.code, format!("open: {}", f.message)))?;
        if rounds == 0 {
            return Err(Fault::new(Code::InvalidArgument, "open: code.rounds must be at least 1"));
        }
        let mode = Mode::from_proto(open.decoder)?;
        let model = match mode {
            Mode::Neural { .. } => Some(hub.models.find(&open.model, d, basis)?),
            Mode::Whole(_) => None,
        };
        let info = hub.circuit(d, basis, rounds, &noise)?;
        let order =
            ModelLayout::for_code(d, basis).map_err(|e| Fault::new(Code::InvalidArgument, format!("open: {e}")))?;
        let map = RoundMap::new(&order, &info.layout, rounds)?;
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
        let (lane, lane_thread) = spawn_lane(hub.clone(), info, mode.whole_kind(), map.num_detectors, sink.clone())?;
        let opened = proto::SessionOpened {
            model: model.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
            first_round_events: map.first.len() as u32,
            round_events: order.stabilizers.len() as u32,
            final_round_events: map.last.len() as u32,
            stabilizer_x: order.stabilizers.iter().map(|s| s.x).collect(),
            stabilizer_y: order.stabilizers.iter().map(|s| s.y).collect(),
            stabilizer_is_memory_basis: order.stabilizers.iter().map(|s| s.kind == memory_type(basis)).collect(),
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
                max_backlog: if open.max_backlog == 0 { hub.options.max_backlog } else { open.max_backlog as usize },
                budget: (open.round_budget_us > 0).then(|| Duration::from_micros(u64::from(open.round_budget_us))),
                hub,
                sink,
                closed,
                mode,
                rounds: code.rounds,
                map,
                driver: feed.as_ref().map(Feed::driver),
                _model: model,
                state: Mutex::new(State { feed, shots: HashMap::new(), pending: HashMap::new(), lane: Some(lane) }),
                drained: Condvar::new(),
                lane_thread: Mutex::new(Some(lane_thread)),
            }
        });
        (stream.sink)(DecodeResponse { message: Some(Out::Opened(opened)) });
        Ok(stream)
    }

    /// Handles one message of the client after the open. A fault ends the
    /// stream: the transport reports it and calls [`Stream::abandon`].
    pub fn input(&self, input: Input) -> Result<(), Fault> {
        match input {
            Input::Open => Err(Fault::new(Code::FailedPrecondition, "the session is already open")),
            Input::Round(r) => self.round(r),
            Input::Final(f) => self.finish(f),
            Input::Invalid(why) => Err(Fault::new(Code::InvalidArgument, why)),
        }
    }

    /// Gets the rounds queued by [`Stream::input`] stepped, on this thread
    /// if the engine is idle. Call it after every input.
    pub fn drive(&self) {
        if let Some(driver) = &self.driver {
            driver.drive();
        }
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

    fn check_events(&self, shot: u64, what: &str, expected: usize, num: u32, bytes: &[u8]) -> Result<(), Fault> {
        if num as usize != expected || bytes.len() != expected.div_ceil(8) {
            return Err(Fault::new(
                Code::InvalidArgument,
                format!(
                    "shot {shot}, {what}: {num} event bits in {} bytes, but this session's {what} has {expected} ({} bytes)",
                    bytes.len(),
                    expected.div_ceil(8)
                ),
            ));
        }
        Ok(())
    }

    fn round(&self, r: proto::Round) -> Result<(), Fault> {
        let received = Instant::now();
        let (shot_id, t) = (r.shot, r.round);
        let mut guard = self.lock();
        let state = &mut *guard;
        let next = state.shots.get(&shot_id).map(|s| s.next_round).unwrap_or(0);
        if t != next || t >= self.rounds {
            let why = if t >= self.rounds {
                format!("the session has {} rounds (0..{}); send the final round next", self.rounds, self.rounds - 1)
            } else {
                format!("round {next} is next (rounds come in order, each once)")
            };
            return Err(Fault::new(Code::InvalidArgument, format!("shot {shot_id}: round {t} is out of order: {why}")));
        }
        let detectors = self.map.round(t as usize);
        self.check_events(shot_id, &format!("round {t}"), detectors.len(), r.num_events, &r.events)?;
        let neural_mode = matches!(self.mode, Mode::Neural { .. });
        let bytes = self.map.num_detectors.div_ceil(8);
        let shot = state.shots.entry(shot_id).or_insert_with(|| Shot {
            next_round: 0,
            events: vec![0; bytes],
            neural: neural_mode,
            fallback: None,
        });
        shot.set(detectors, &r.events);
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
            let bits = unpack(&r.events, detectors.len());
            let feed = state.feed.as_mut().ok_or_else(ended)?;
            feed.submit_round(shot_id, t as usize, &bits).map_err(internal)?;
            state.pending.insert((shot_id, t), received);
            return Ok(());
        }
        let answered = self.mode.whole_kind();
        if answered == DecoderKind::NeuralMatching {
            Self::round_to_lane(state, shot_id, detectors, &r.events);
        }
        self.hub.stats.round(answered, received.elapsed());
        let ack = proto::RoundAck {
            shot: shot_id,
            round: t,
            step_latency_ns: 0,
            budget_met: true,
            backlog: state.pending.len() as u32,
        };
        (self.sink)(DecodeResponse { message: Some(Out::Ack(ack)) });
        Ok(())
    }

    fn finish(&self, f: proto::FinalRound) -> Result<(), Fault> {
        let received = Instant::now();
        let shot_id = f.shot;
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(shot) = state.shots.get(&shot_id).filter(|s| s.next_round != u32::MAX) else {
            return Err(Fault::new(
                Code::InvalidArgument,
                format!("shot {shot_id}: final round before round 0 (or the shot already finished)"),
            ));
        };
        if shot.next_round != self.rounds {
            return Err(Fault::new(
                Code::InvalidArgument,
                format!("shot {shot_id}: final round after {} of {} rounds", shot.next_round, self.rounds),
            ));
        }
        self.check_events(shot_id, "final round", self.map.last.len(), f.num_events, &f.events)?;
        let mut shot = state.shots.remove(&shot_id).expect("checked above");
        shot.set(&self.map.last, &f.events);
        if self.mode == Mode::Whole(DecoderKind::NeuralMatching) {
            Self::round_to_lane(state, shot_id, &self.map.last, &f.events);
        }
        if shot.neural {
            let bits = unpack(&f.events, self.map.last.len());
            let feed = state.feed.as_mut().ok_or_else(ended)?;
            feed.submit_finish(shot_id, &bits).map_err(internal)?;
            state.pending.insert((shot_id, self.rounds), received);
            // Keep the events for the shadow check, or for correlated matching
            // should one of its rounds turn out to have missed the budget.
            state.shots.insert(shot_id, Shot { next_round: u32::MAX, ..shot });
            return Ok(());
        }
        Self::to_lane(state, shot_id, shot, received);
        Ok(())
    }

    /// Hands a round to the lane's stepping decoder: the circuit detectors of
    /// `detectors` whose bits in `bits` are set.
    fn round_to_lane(state: &mut State, shot_id: u64, detectors: &[usize], bits: &[u8]) {
        if let Some(lane) = &state.lane {
            let events = detectors
                .iter()
                .enumerate()
                .filter(|(k, _)| bits[k / 8] >> (k % 8) & 1 == 1)
                .map(|(_, &d)| d as u64)
                .collect();
            let _ = lane.send(LaneJob::Round { shot: shot_id, events });
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
    fn engine_reply(&self, reply: Reply) {
        let mut guard = self.lock();
        let state = &mut *guard;
        match reply {
            Reply::Ack(ack) => {
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
                let ack = proto::RoundAck {
                    shot: ack.shot,
                    round: ack.round as u32,
                    step_latency_ns: latency.as_nanos() as u64,
                    budget_met: met,
                    backlog: state.pending.len() as u32,
                };
                (self.sink)(DecodeResponse { message: Some(Out::Ack(ack)) });
            }
            Reply::Result(result) => {
                let Some(received) = state.pending.remove(&(result.shot, self.rounds)) else { return };
                let shot = state.shots.remove(&result.shot);
                match shot {
                    Some(shot) if shot.fallback.is_some() => {
                        // A round of this shot missed the budget after its final round was sent.
                        Self::to_lane(state, result.shot, shot, received);
                    }
                    shot => {
                        send_result(
                            &self.hub,
                            &self.sink,
                            result.shot,
                            &result.prediction,
                            result.confidence,
                            DecoderKind::Neural,
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
            Reply::Error { shot, error } => {
                // The engine refused the shot (it is full): correlated matching takes it over.
                let rounds: Vec<(u64, u32)> = state.pending.keys().filter(|k| k.0 == shot).copied().collect();
                Self::fall_back(state, shot, format!("the neural engine refused it: {error}"));
                for key in rounds {
                    if key.1 == self.rounds {
                        continue;
                    }
                    state.pending.remove(&key);
                    let ack = proto::RoundAck {
                        shot,
                        round: key.1,
                        step_latency_ns: 0,
                        budget_met: true,
                        backlog: state.pending.len() as u32,
                    };
                    (self.sink)(DecodeResponse { message: Some(Out::Ack(ack)) });
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

/// Sends a shot's result and counts its decision latency; `false` once the client is gone.
#[allow(clippy::too_many_arguments)]
fn send_result(
    hub: &Hub,
    sink: &Sink,
    shot: u64,
    prediction: &[bool],
    confidence: f64,
    kind: DecoderKind,
    fallback: Option<String>,
    received: Instant,
) -> bool {
    let latency = received.elapsed();
    hub.stats.decision(kind, latency);
    let result = proto::ShotResult {
        shot,
        num_observables: prediction.len() as u32,
        prediction: pack(prediction),
        confidence,
        answered_by: proto_kind(kind) as i32,
        fell_back: fallback.is_some(),
        fallback_reason: fallback.unwrap_or_default(),
        decision_latency_ns: latency.as_nanos() as u64,
    };
    sink(DecodeResponse { message: Some(Out::Result(result)) })
}

/// The stabilizer type measured in the first and final rounds of a memory experiment.
fn memory_type(basis: Basis) -> StabilizerType {
    match basis {
        Basis::X => StabilizerType::X,
        Basis::Z => StabilizerType::Z,
    }
}

fn internal(e: impl std::fmt::Display) -> Fault {
    Fault::new(Code::Internal, e.to_string())
}

fn ended() -> Fault {
    Fault::new(Code::FailedPrecondition, "the stream has ended")
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Bits `0..n` of LSB-first packed bytes.
pub fn unpack(bytes: &[u8], n: usize) -> Vec<bool> {
    (0..n).map(|k| bytes[k / 8] >> (k % 8) & 1 == 1).collect()
}

/// Packs bits LSB-first.
pub fn pack(bits: &[bool]) -> Vec<u8> {
    let mut out = vec![0u8; bits.len().div_ceil(8)];
    for (k, &b) in bits.iter().enumerate() {
        out[k / 8] |= u8::from(b) << (k % 8);
    }
    out
}

/// Starts a stream's matching lane: a thread that owns the whole-shot
/// decoder (PyMatching's graph cannot cross threads, so it is built there)
/// and answers the shots and shadow checks queued on it, in order. Returns
/// its queue and its thread.
fn spawn_lane(
    hub: Arc<Hub>,
    info: Arc<CircuitInfo>,
    kind: DecoderKind,
    num_detectors: usize,
    sink: Sink,
) -> Result<(Sender<LaneJob>, JoinHandle<()>), Fault> {
    let (tx, rx) = crossbeam_channel::unbounded::<LaneJob>();
    let (built_tx, built) = crossbeam_channel::bounded::<Result<(), String>>(1);
    let thread = std::thread::Builder::new()
        .name("qecd-lane".into())
        .spawn(move || {
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
                                eprintln!("qecd: neural-matching could not take a round of shot {shot}: {e}");
                                shots.remove(&shot);
                            }
                        }
                        continue;
                    }
                    LaneJob::Whole { shot, events, fallback, received } => {
                        let Some((prediction, confidence)) = decoder.decode(shot, events, num_detectors) else {
                            continue;
                        };
                        if fallback.is_some() {
                            Stats::bump(&hub.stats.fallbacks);
                        }
                        send_result(&hub, &sink, shot, &prediction, confidence, kind, fallback, received)
                    }
                    LaneJob::Check { shot, events, prediction } => {
                        let Some((baseline, _)) = decoder.decode(shot, events, num_detectors) else { continue };
                        let agreed = baseline == prediction;
                        Stats::bump(&hub.stats.checked);
                        if agreed {
                            hub.stats.agreed.fetch_add(1, Ordering::Relaxed);
                        }
                        let msg = proto::BaselineCheck { shot, agreed, baseline_prediction: pack(&baseline) };
                        sink(DecodeResponse { message: Some(Out::Check(msg)) })
                    }
                };
                if !sent {
                    return;
                }
            }
        })
        .map_err(|e| Fault::new(Code::Internal, format!("cannot start the stream's matching thread: {e}")))?;
    match built.recv() {
        Ok(Ok(())) => Ok((tx, thread)),
        Ok(Err(why)) => Err(Fault::new(Code::Internal, why)),
        Err(_) => Err(Fault::new(Code::Internal, "the stream's matching thread stopped")),
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
    /// A finished shot's flips and confidence; `None`, reported, if decoding fails.
    fn decode(&mut self, shot: u64, events: Vec<u8>, num_detectors: usize) -> Option<(Vec<bool>, f64)> {
        match self {
            LaneDecoder::Whole(d) => decode_one(d.as_mut(), events, num_detectors),
            LaneDecoder::Stepping(nm, shots) => match shots.remove(&shot) {
                Some(stream) => match nm.finish_shot(&stream) {
                    Ok((flips, weight)) => {
                        let prediction = (0..nm.num_observables()).map(|o| flips >> o & 1 != 0).collect();
                        Some((prediction, nm.confidence(weight).unwrap_or(f64::NAN)))
                    }
                    Err(e) => {
                        eprintln!("qecd: neural-matching failed on shot {shot}: {e}");
                        None
                    }
                },
                // Its rounds never reached the lane (it is being shadow-checked,
                // say): the whole shot at once.
                None => decode_one(nm.as_mut(), events, num_detectors),
            },
        }
    }
}

/// One shot through a whole-shot decoder: its predicted flips and confidence
/// (NaN without a calibration); `None`, reported, if decoding fails.
fn decode_one(decoder: &mut dyn Decoder, events: Vec<u8>, num_detectors: usize) -> Option<(Vec<bool>, f64)> {
    let decoded = PackedShots::from_bytes(events, num_detectors)
        .map_err(|e| e.to_string())
        .and_then(|events| decoder.decode_batch(&events).map_err(|e| e.to_string()));
    match decoded {
        Ok(d) => {
            let prediction = (0..decoder.num_observables()).map(|k| d.predictions.get(0, k)).collect();
            Some((prediction, d.confidence.map(|c| c[0]).unwrap_or(f64::NAN)))
        }
        Err(e) => {
            eprintln!("qecd: {} failed on a shot: {e}", decoder.name());
            None
        }
    }
}
