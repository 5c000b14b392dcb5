//! One decode stream, whatever carries it (gRPC or the FPGA bridge): the
//! session it opens, its shots, the budgets, the fallback to correlated
//! matching and the shadow check.
//!
//! Each stream runs on its own thread ([`run_stream`]). It waits on two
//! channels at once: the client's messages, and the neural engine's replies
//! for its session. Everything it sends goes through a [`Sink`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};
use decoder::{Decoder, DecoderKind, GapCalibration, MatchingDecoder, PackedShots, Reply, Session};
use models::ModelLayout;
use simulator_bridge::layout::StabilizerType;
use simulator_bridge::{Basis, MemoryExperiment, NoiseModel, StabilizerLayout};
use tonic::Code;

use super::proto::{self, DecodeResponse, decode_response::Message as Out};
use super::stats::Stats;
use super::{Hub, Model};

/// A message of the client, in order.
#[derive(Debug)]
pub enum Input {
    /// Opens the session; must come first, once.
    Open(proto::OpenSession),
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
            _ => Err(Fault::new(
                Code::InvalidArgument,
                format!("decoder {kind} is not one of neural, matching, correlated, neural_checked"),
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
}

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
        Ok(Self { dem_text, layout: StabilizerLayout::from_circuit(&circuit, basis)?, calibrations })
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

/// A shot to shadow-decode.
struct Check {
    shot: u64,
    events: Vec<u8>,
    prediction: Vec<bool>,
}

struct Stream {
    hub: Arc<Hub>,
    sink: Sink,
    mode: Mode,
    rounds: u32,
    budget: Option<Duration>,
    max_backlog: usize,
    map: RoundMap,
    /// Keeps the model (and its engine) alive while the stream runs.
    _model: Option<Model>,
    neural: Option<Session>,
    whole: Option<MatchingDecoder>,
    shots: HashMap<u64, Shot>,
    /// Receipt time of every round and final handed to the engine.
    pending: HashMap<(u64, u32), Instant>,
    shadow: Option<(Sender<Check>, std::thread::JoinHandle<()>)>,
    num_observables: usize,
}

/// Runs a stream until the client's messages end and every answer owed has
/// been sent, or the client goes away. A bad message ends the stream with a
/// [`Fault`]; other streams are never affected.
pub fn run_stream(hub: Arc<Hub>, inputs: Receiver<Input>, sink: Sink) -> Result<(), Fault> {
    let open = match inputs.recv() {
        Ok(Input::Open(open)) => open,
        Ok(_) => {
            return Err(Fault::new(
                Code::FailedPrecondition,
                "no session opened: the first message of a Decode stream must be `open`",
            ));
        }
        Err(_) => return Ok(()),
    };
    let mut stream = Stream::open(hub, open, sink)?;
    let result = stream.serve(&inputs);
    stream.close();
    result
}

impl Stream {
    fn open(hub: Arc<Hub>, open: proto::OpenSession, sink: Sink) -> Result<Self, Fault> {
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
        let matching = |kind| {
            info.matching(kind).map_err(|e| Fault::new(Code::Internal, format!("cannot build {kind} matching: {e}")))
        };
        let whole = Some(matching(mode.whole_kind())?);
        let num_observables = whole.as_ref().map(|w| w.num_observables()).unwrap_or(1);
        let shadow = match mode {
            Mode::Neural { checked: true } => Some(spawn_shadow(hub.clone(), info.dem_text.clone(), sink.clone())),
            _ => None,
        };
        let neural = model.as_ref().map(|m| m.engine.open());
        let opened = proto::SessionOpened {
            model: model.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
            first_round_events: map.first.len() as u32,
            round_events: order.stabilizers.len() as u32,
            final_round_events: map.last.len() as u32,
            stabilizer_x: order.stabilizers.iter().map(|s| s.x).collect(),
            stabilizer_y: order.stabilizers.iter().map(|s| s.y).collect(),
            stabilizer_is_memory_basis: order.stabilizers.iter().map(|s| s.kind == memory_type(basis)).collect(),
        };
        let stream = Self {
            max_backlog: if open.max_backlog == 0 { hub.options.max_backlog } else { open.max_backlog as usize },
            budget: (open.round_budget_us > 0).then(|| Duration::from_micros(u64::from(open.round_budget_us))),
            hub,
            sink,
            mode,
            rounds: code.rounds,
            map,
            _model: model,
            neural,
            whole,
            shots: HashMap::new(),
            pending: HashMap::new(),
            shadow,
            num_observables,
        };
        (stream.sink)(DecodeResponse { message: Some(Out::Opened(opened)) });
        Ok(stream)
    }

    fn serve(&mut self, inputs: &Receiver<Input>) -> Result<(), Fault> {
        let never = crossbeam_channel::never();
        let mut inputs_open = true;
        loop {
            if !inputs_open && self.pending.is_empty() {
                return Ok(());
            }
            let replies = self.neural.as_ref().map(|s| s.reply_receiver().clone()).unwrap_or_else(|| never.clone());
            let input_rx = if inputs_open { inputs.clone() } else { crossbeam_channel::never() };
            select! {
                recv(input_rx) -> msg => match msg {
                    Ok(Input::Open(_)) => {
                        return Err(Fault::new(Code::FailedPrecondition, "the session is already open"));
                    }
                    Ok(Input::Round(r)) => self.round(r)?,
                    Ok(Input::Final(f)) => self.finish(f)?,
                    Ok(Input::Invalid(why)) => return Err(Fault::new(Code::InvalidArgument, why)),
                    Err(_) => inputs_open = false,
                },
                recv(replies) -> reply => match reply {
                    Ok(reply) => {
                        if !self.engine_reply(reply) {
                            return Ok(());
                        }
                    }
                    Err(_) => return Err(Fault::new(Code::Internal, "the neural engine stopped")),
                },
            }
        }
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

    fn round(&mut self, r: proto::Round) -> Result<(), Fault> {
        let received = Instant::now();
        let (shot_id, t) = (r.shot, r.round);
        let next = self.shots.get(&shot_id).map(|s| s.next_round).unwrap_or(0);
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
        let shot = self.shots.entry(shot_id).or_insert_with(|| Shot {
            next_round: 0,
            events: vec![0; bytes],
            neural: neural_mode,
            fallback: None,
        });
        shot.set(detectors, &r.events);
        shot.next_round += 1;
        if shot.neural && self.pending.len() >= self.max_backlog {
            shot.neural = false;
            shot.fallback =
                Some(format!("backlog of {} rounds reached its bound {}", self.pending.len(), self.max_backlog));
            Stats::bump(&self.hub.stats.backlog_fallbacks);
            if let Some(s) = self.neural.as_mut() {
                s.abort(shot_id);
            }
        }
        if shot.neural {
            let bits = unpack(&r.events, detectors.len());
            let session = self.neural.as_mut().expect("neural mode has a session");
            session.submit_round(shot_id, t as usize, &bits).map_err(|e| Fault::new(Code::Internal, e.to_string()))?;
            self.pending.insert((shot_id, t), received);
            return Ok(());
        }
        let answered = self.mode.whole_kind();
        let latency = received.elapsed();
        self.hub.stats.round(answered, latency);
        let ack = proto::RoundAck {
            shot: shot_id,
            round: t,
            step_latency_ns: 0,
            budget_met: true,
            backlog: self.pending.len() as u32,
        };
        (self.sink)(DecodeResponse { message: Some(Out::Ack(ack)) });
        Ok(())
    }

    fn finish(&mut self, f: proto::FinalRound) -> Result<(), Fault> {
        let received = Instant::now();
        let shot_id = f.shot;
        let Some(shot) = self.shots.get(&shot_id) else {
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
        let mut shot = self.shots.remove(&shot_id).expect("checked above");
        shot.set(&self.map.last, &f.events);
        if shot.neural {
            let bits = unpack(&f.events, self.map.last.len());
            let session = self.neural.as_mut().expect("neural mode has a session");
            session.submit_finish(shot_id, &bits).map_err(|e| Fault::new(Code::Internal, e.to_string()))?;
            self.pending.insert((shot_id, self.rounds), received);
            // Keep the events for the shadow check, or for correlated matching
            // should one of its rounds turn out to have missed the budget.
            self.shots.insert(shot_id, Shot { next_round: u32::MAX, ..shot });
            return Ok(());
        }
        self.decode_whole(shot_id, shot, received).map(|_| ())
    }

    /// Answers a shot with the whole-shot decoder: the session's, or correlated
    /// matching for a shot that left the neural decoder.
    fn decode_whole(&mut self, shot_id: u64, shot: Shot, received: Instant) -> Result<bool, Fault> {
        let kind = self.mode.whole_kind();
        let events = PackedShots::from_bytes(shot.events, self.map.num_detectors).map_err(internal)?;
        let decisions = self.whole.as_mut().expect("always built").decode_batch(&events).map_err(internal)?;
        let prediction: Vec<bool> = (0..self.num_observables).map(|k| decisions.predictions.get(0, k)).collect();
        let confidence = decisions.confidence.map(|c| c[0]).unwrap_or(f64::NAN);
        if shot.fallback.is_some() {
            Stats::bump(&self.hub.stats.fallbacks);
        }
        Ok(self.send_result(shot_id, &prediction, confidence, kind, shot.fallback, received))
    }

    /// Handles one reply of the engine; `false` when the client is gone.
    fn engine_reply(&mut self, reply: Reply) -> bool {
        match reply {
            Reply::Ack(ack) => {
                let key = (ack.shot, ack.round as u32);
                let Some(received) = self.pending.remove(&key) else { return true };
                let latency = received.elapsed();
                let met = self.budget.is_none_or(|b| latency <= b);
                self.hub.stats.round(DecoderKind::Neural, latency);
                if !met {
                    Stats::bump(&self.hub.stats.budget_misses);
                    self.fall_back(
                        ack.shot,
                        format!("round {} took {:.1} µs, over the budget", ack.round, micros(latency)),
                    );
                }
                let ack = proto::RoundAck {
                    shot: ack.shot,
                    round: ack.round as u32,
                    step_latency_ns: latency.as_nanos() as u64,
                    budget_met: met,
                    backlog: self.pending.len() as u32,
                };
                (self.sink)(DecodeResponse { message: Some(Out::Ack(ack)) })
            }
            Reply::Result(result) => {
                let Some(received) = self.pending.remove(&(result.shot, self.rounds)) else { return true };
                let shot = self.shots.remove(&result.shot);
                if shot.as_ref().is_some_and(|s| s.fallback.is_some()) {
                    // A round of this shot missed the budget after its final round was sent.
                    let shot = shot.expect("checked");
                    return self.decode_whole(result.shot, shot, received).unwrap_or(false);
                }
                let ok = self.send_result(
                    result.shot,
                    &result.prediction,
                    result.confidence,
                    DecoderKind::Neural,
                    None,
                    received,
                );
                if let (Some((shadow, _)), Some(shot)) = (&self.shadow, shot) {
                    let _ =
                        shadow.send(Check { shot: result.shot, events: shot.events, prediction: result.prediction });
                }
                ok
            }
            Reply::Error { shot, error } => {
                // The engine refused the shot (it is full): correlated matching takes it over.
                let rounds: Vec<(u64, u32)> = self.pending.keys().filter(|k| k.0 == shot).copied().collect();
                self.fall_back(shot, format!("the neural engine refused it: {error}"));
                let mut ok = true;
                for key in rounds {
                    if key.1 == self.rounds {
                        continue;
                    }
                    self.pending.remove(&key);
                    let ack = proto::RoundAck {
                        shot,
                        round: key.1,
                        step_latency_ns: 0,
                        budget_met: true,
                        backlog: self.pending.len() as u32,
                    };
                    ok &= (self.sink)(DecodeResponse { message: Some(Out::Ack(ack)) });
                }
                ok
            }
        }
    }

    /// Moves a shot to correlated matching. Its rounds still queued in the
    /// engine are acknowledged as they are stepped; if its final round is
    /// already in the engine, the neural answer is set aside for correlated matching's.
    fn fall_back(&mut self, shot_id: u64, why: String) {
        let Some(shot) = self.shots.get_mut(&shot_id).filter(|s| s.fallback.is_none()) else { return };
        shot.fallback = Some(why);
        if shot.neural && shot.next_round != u32::MAX {
            shot.neural = false;
            if let Some(s) = self.neural.as_mut() {
                s.abort(shot_id);
            }
        }
    }

    fn send_result(
        &self,
        shot: u64,
        prediction: &[bool],
        confidence: f64,
        kind: DecoderKind,
        fallback: Option<String>,
        received: Instant,
    ) -> bool {
        let latency = received.elapsed();
        self.hub.stats.decision(kind, latency);
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
        (self.sink)(DecodeResponse { message: Some(Out::Result(result)) })
    }

    /// Ends the stream: the engine forgets its open shots, and the shadow
    /// finishes the checks it was given.
    fn close(&mut self) {
        self.neural = None;
        if let Some((tx, worker)) = self.shadow.take() {
            drop(tx);
            let _ = worker.join();
        }
    }
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

/// The checked mode's shadow: correlated matching on every neural shot, off the hot path.
fn spawn_shadow(hub: Arc<Hub>, dem_text: String, sink: Sink) -> (Sender<Check>, std::thread::JoinHandle<()>) {
    let (tx, rx) = crossbeam_channel::unbounded::<Check>();
    let worker = std::thread::spawn(move || {
        // PyMatching's graph cannot cross threads: build it here.
        let Ok(mut matching) = MatchingDecoder::from_dem_text(&dem_text, DecoderKind::Correlated) else { return };
        let n = matching.num_detectors();
        for check in rx {
            let Ok(events) = PackedShots::from_bytes(check.events, n) else { continue };
            let Ok(d) = matching.decode_batch(&events) else { continue };
            let baseline: Vec<bool> = (0..check.prediction.len()).map(|k| d.predictions.get(0, k)).collect();
            let agreed = baseline == check.prediction;
            Stats::bump(&hub.stats.checked);
            if agreed {
                hub.stats.agreed.fetch_add(1, Ordering::Relaxed);
            }
            let msg = proto::BaselineCheck { shot: check.shot, agreed, baseline_prediction: pack(&baseline) };
            if !sink(DecodeResponse { message: Some(Out::Check(msg)) }) {
                return;
            }
        }
    });
    (tx, worker)
}
