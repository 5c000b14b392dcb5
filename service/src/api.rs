//! The service's own requests, replies and statuses. Transports translate
//! their messages (protobuf, bridge frames) into these and back; nothing
//! here knows how they travel.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use decoder::DecoderKind;
use simulator_bridge::layout::StabilizerType;
use simulator_bridge::{Basis, NoiseModel};

/// Why a request failed. The transports map these one to one onto their
/// own codes (gRPC status codes, bridge ERROR codes, which share gRPC's numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The request itself is wrong (a bad code, event count or decoder).
    InvalidArgument,
    /// It names a model the server does not have.
    NotFound,
    /// It comes at the wrong point of the conversation (out of order, before the open).
    FailedPrecondition,
    /// The server is out of room for it.
    ResourceExhausted,
    /// The server failed.
    Internal,
    /// A deadline passed: no open in time, or a stream idle too long.
    DeadlineExceeded,
    /// The server is shutting down.
    Unavailable,
}

/// What ends a request or a stream: a status and a message naming the problem.
#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    /// The kind of failure.
    pub status: Status,
    /// What was wrong, for a person.
    pub message: String,
}

impl Fault {
    /// A fault of `status`.
    pub fn new(status: Status, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    /// An [`Status::InvalidArgument`] fault.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Status::InvalidArgument, message)
    }

    /// An [`Status::Internal`] fault.
    pub fn internal(message: impl fmt::Display) -> Self {
        Self::new(Status::Internal, message.to_string())
    }

    /// The same fault with `context: ` before its message.
    pub fn context(self, context: &str) -> Self {
        Self { status: self.status, message: format!("{context}: {}", self.message) }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.status, self.message)
    }
}

impl std::error::Error for Fault {}

/// The noise model a session's matching decoders use when a request names none.
pub const DEFAULT_NOISE: &str = "si1000";
/// The physical error rate used when a request gives none.
pub const DEFAULT_P: f64 = 0.003;

/// A surface-code memory experiment: what a session decodes.
#[derive(Clone, Debug)]
pub struct CodeSpec {
    /// Code distance.
    pub distance: usize,
    /// Memory basis.
    pub basis: Basis,
    /// Stabilizer rounds per shot (at least 1).
    pub rounds: usize,
    /// The noise model of the matching decoders' detector error model.
    pub noise: NoiseModel,
}

impl CodeSpec {
    /// A code with the named noise model (`None`: [`DEFAULT_NOISE`]) at `p`
    /// (`None`: [`DEFAULT_P`]).
    pub fn new(
        distance: usize,
        basis: Basis,
        rounds: usize,
        noise: Option<&str>,
        p: Option<f64>,
    ) -> Result<Self, Fault> {
        if rounds == 0 {
            return Err(Fault::invalid("code.rounds must be at least 1"));
        }
        let p = p.unwrap_or(DEFAULT_P);
        if !(MIN_P..=0.5).contains(&p) {
            return Err(Fault::invalid(format!("code.p must be a number from {MIN_P:e} to 0.5, not {p:e}")));
        }
        let name = noise.unwrap_or(DEFAULT_NOISE);
        // `device:PATH` reads a file: a client must not make the server open paths of its choosing.
        if name.to_ascii_lowercase().starts_with("device:") {
            return Err(Fault::invalid(format!(
                "code.noise '{name}': device noise files are read by the command line (qecd sample, sweep), \
                 not by the service; name si1000, si1000-varied:SEED or depolarizing"
            )));
        }
        let noise = NoiseModel::from_name(name, p).map_err(|e| Fault::invalid(e.to_string()))?;
        Ok(Self { distance, basis, rounds, noise })
    }
}

/// The smallest physical error rate a code may have. The circuit writes its
/// rates as plain decimals, and Stim's parser refuses one with a hundred
/// zeros after the point (p=1e-100 fails, 1e-30 builds); no decoding
/// question needs a rate this small.
pub const MIN_P: f64 = 1e-15;

/// `d=3,rounds=3,basis=Z,noise=si1000,p=0.003`, as `qecd serve --prebuild`
/// takes it: `d` and `rounds` are required, `basis` defaults to Z, `noise`
/// to [`DEFAULT_NOISE`] and `p` to [`DEFAULT_P`].
impl std::str::FromStr for CodeSpec {
    type Err = Fault;

    fn from_str(s: &str) -> Result<Self, Fault> {
        let (mut distance, mut rounds, mut basis, mut noise, mut p) = (None, None, Basis::Z, None, None);
        for pair in s.split(',').map(str::trim).filter(|pair| !pair.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| Fault::invalid(format!("'{pair}' in code '{s}' is not KEY=VALUE")))?;
            let bad = |what: &str| Fault::invalid(format!("{key}={value} in code '{s}': expected {what}"));
            match key.trim() {
                "d" | "distance" => distance = Some(value.parse().map_err(|_| bad("an odd distance"))?),
                "rounds" | "r" => rounds = Some(value.parse().map_err(|_| bad("a number of rounds"))?),
                "basis" => basis = value.parse().map_err(|_| bad("X or Z"))?,
                "noise" => noise = Some(value),
                "p" => p = Some(value.parse().map_err(|_| bad("a physical error rate"))?),
                other => {
                    return Err(Fault::invalid(format!(
                        "unknown key '{other}' in code '{s}' (expected d, rounds, basis, noise, p)"
                    )));
                }
            }
        }
        let distance = distance.ok_or_else(|| Fault::invalid(format!("code '{s}' has no d=")))?;
        let rounds = rounds.ok_or_else(|| Fault::invalid(format!("code '{s}' has no rounds=")))?;
        Self::new(distance, basis, rounds, noise, p)
    }
}

/// Writes what [`CodeSpec::from_str`](std::str::FromStr) reads.
impl fmt::Display for CodeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "d={},rounds={},basis={},noise={},p={}",
            self.distance,
            self.rounds,
            self.basis,
            self.noise.name(),
            self.noise.p()
        )
    }
}

/// How a stream decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionDecoder {
    /// The neural decoder, round by round, with correlated matching as its fallback.
    Neural,
    /// The neural decoder, with every answer shadow-decoded by correlated matching.
    NeuralChecked,
    /// Plain matching, at the final round.
    Matching,
    /// Correlated matching, at the final round.
    Correlated,
    /// The posterior model stepped round by round, matched at the final round.
    NeuralMatching,
}

impl fmt::Display for SessionDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SessionDecoder::Neural => "neural",
            SessionDecoder::NeuralChecked => "neural_checked",
            SessionDecoder::Matching => "matching",
            SessionDecoder::Correlated => "correlated",
            SessionDecoder::NeuralMatching => "neural_matching",
        })
    }
}

/// Opens a decode stream.
#[derive(Clone, Debug)]
pub struct OpenRequest {
    /// The code its shots come from.
    pub code: CodeSpec,
    /// How it decodes.
    pub decoder: SessionDecoder,
    /// The neural model by name; `None`: the server's model for the code.
    pub model: Option<String>,
    /// A neural round slower than this moves its shot to correlated matching.
    pub round_budget: Option<Duration>,
    /// Rounds waiting for the engine past which new shots fall back; `None`: the server's default.
    pub max_backlog: Option<usize>,
}

/// One round's detection events, in the session's stabilizer order
/// ([`Opened`]), packed LSB-first.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundEvents {
    /// The shot.
    pub shot: u64,
    /// How many event bits `events` holds.
    pub num_events: usize,
    /// The bits, LSB-first; padding bits must be 0.
    pub events: Vec<u8>,
}

/// A message of the client after the open, in order.
#[derive(Clone, Debug)]
pub enum Input {
    /// A second open: the session is open already.
    Open,
    /// Stabilizer round `round` of a shot (0-based, in order).
    Round {
        /// The round.
        round: u32,
        /// Its events.
        events: RoundEvents,
    },
    /// The final round of a shot: the data-qubit measurements' detectors.
    Final(RoundEvents),
    /// A message the transport could not make sense of.
    Invalid(String),
}

/// One stabilizer of a session's order.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SessionStabilizer {
    /// Its x coordinate (Stim's detector coordinates).
    pub x: f64,
    /// Its y coordinate.
    pub y: f64,
    /// Its type; the memory basis's type has events in round 0 and the final round.
    pub kind: StabilizerType,
}

/// The first reply of a stream: how to lay out its rounds.
#[derive(Clone, Debug, PartialEq)]
pub struct Opened {
    /// The neural model decoding it, if any.
    pub model: Option<String>,
    /// That model's version (`NAME@N:HASH`), which answers every neural shot of the session.
    pub model_version: Option<Arc<str>>,
    /// The SHA-256 (hex) of the operator's DEM file the session decodes
    /// with (`--code-dem`); `None` for the DEM of the code's circuit.
    pub dem_sha256: Option<String>,
    /// Event bits of round 0 (the memory basis's stabilizers).
    pub first_round_events: usize,
    /// Event bits of rounds 1.. (every stabilizer).
    pub round_events: usize,
    /// Event bits of the final round.
    pub final_round_events: usize,
    /// The stabilizer order of the bits; round 0 and the final round hold
    /// the memory basis's stabilizers only, in this order.
    pub stabilizers: Vec<SessionStabilizer>,
    /// The memory basis.
    pub basis: Basis,
}

/// A round was taken.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundAck {
    /// The shot.
    pub shot: u64,
    /// The round.
    pub round: u32,
    /// Round received → neural step done; zero where no step runs per round.
    pub step_latency: Duration,
    /// False when the step missed the session's budget (the shot falls back).
    pub budget_met: bool,
    /// Rounds of this stream still waiting for the engine.
    pub backlog: usize,
}

/// A shot's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct ShotResult {
    /// The shot.
    pub shot: u64,
    /// Predicted flip of each observable.
    pub prediction: Vec<bool>,
    /// Probability that the prediction is right; NaN where uncalibrated.
    pub confidence: f64,
    /// The decoder that answered.
    pub answered_by: DecoderKind,
    /// Why it left the neural decoder, if it did.
    pub fallback: Option<String>,
    /// Final round received → result sent.
    pub decision_latency: Duration,
    /// The version of the neural model that answered (`NAME@N:HASH`);
    /// `None` when a matching decoder did.
    pub model_version: Option<Arc<str>>,
}

/// Correlated matching's shadow decoding of a neural answer (checked mode).
#[derive(Clone, Debug, PartialEq)]
pub struct BaselineCheck {
    /// The shot.
    pub shot: u64,
    /// Whether the two agreed.
    pub agreed: bool,
    /// Correlated matching's prediction.
    pub baseline: Vec<bool>,
}

/// What a stream sends back.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// The session is open.
    Opened(Opened),
    /// A round was taken.
    Ack(RoundAck),
    /// A shot is answered.
    Result(ShotResult),
    /// A shadow check's verdict.
    Check(BaselineCheck),
    /// A shot could not be decoded: its only answer. The stream goes on.
    Failed(ShotFailure),
}

/// A shot that no decoder could answer (a decoding failure inside qecd).
#[derive(Clone, Debug, PartialEq)]
pub struct ShotFailure {
    /// The shot.
    pub shot: u64,
    /// Why, as a status ([`Status::Internal`] for a decoder's failure).
    pub status: Status,
    /// What failed, for a person.
    pub message: String,
}

/// Where a stream's replies go; returns `false` once the client is gone.
pub type Sink = Arc<dyn Fn(Reply) -> bool + Send + Sync>;

/// Decodes whole shots at once.
#[derive(Clone, Debug)]
pub struct BatchRequest {
    /// The code the shots come from.
    pub code: CodeSpec,
    /// Neural, matching or correlated.
    pub decoder: DecoderKind,
    /// The neural model by name; `None`: the server's model for the code.
    pub model: Option<String>,
    /// Shots.
    pub num_shots: usize,
    /// Their detection events, b8 (one row of `ceil(detectors / 8)` bytes per shot).
    pub events_b8: Vec<u8>,
}

/// A batch's answers.
#[derive(Clone, Debug)]
pub struct BatchReply {
    /// Observables per shot.
    pub num_observables: usize,
    /// Predicted flips, b8 (one row of `ceil(observables / 8)` bytes per shot).
    pub predictions_b8: Vec<u8>,
    /// Per-shot confidence, where the decoder has one.
    pub confidence: Option<Vec<f64>>,
    /// The decoder that answered.
    pub answered_by: DecoderKind,
}

/// A served model, as `ListModels` describes it.
#[derive(Clone, Debug)]
pub struct ModelSummary {
    /// Its name.
    pub name: String,
    /// The version new sessions get (`NAME@N:HASH`).
    pub version: String,
    /// sha256 of its checkpoint, hex.
    pub sha256: String,
    /// Code distance.
    pub distance: usize,
    /// Memory basis.
    pub basis: Basis,
    /// Noise model it was trained on.
    pub noise: String,
    /// Physical error rate it was trained at.
    pub p: f64,
    /// Rounds it was trained on, as its card writes them.
    pub rounds_trained: String,
    /// Model width.
    pub width: usize,
    /// Transformer layers.
    pub layers: usize,
    /// Its calibration temperature.
    pub temperature: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_reads_back_what_it_writes() {
        let code: CodeSpec = "d=5, rounds=7,basis=x,noise=depolarizing,p=0.001".parse().unwrap();
        assert_eq!((code.distance, code.rounds, code.basis), (5, 7, Basis::X));
        assert_eq!((code.noise.name(), code.noise.p()), ("depolarizing".to_string(), 0.001));
        let again: CodeSpec = code.to_string().parse().unwrap();
        assert_eq!(again.to_string(), code.to_string());
        let plain: CodeSpec = "d=3,rounds=3".parse().unwrap();
        assert_eq!(
            (plain.basis, plain.noise.name(), plain.noise.p()),
            (Basis::Z, DEFAULT_NOISE.to_string(), DEFAULT_P)
        );
    }

    #[test]
    fn a_bad_code_names_its_bad_key() {
        for (text, named) in [
            ("d=3,rounds=3,q=1", "unknown key 'q'"),
            ("d=three,rounds=3", "d=three"),
            ("d=3,rounds=-1", "rounds=-1"),
            ("d=3,rounds=3,basis=Y", "basis=Y"),
            ("d=3,rounds=3,p=high", "p=high"),
            ("d=3,rounds=3,noise=pink", "unknown noise model 'pink'"),
            ("rounds=3", "no d="),
            ("d=3", "no rounds="),
            ("d=3,rounds", "'rounds' in code 'd=3,rounds' is not KEY=VALUE"),
            // A client must not make the server read a file: nothing is opened.
            ("d=3,rounds=3,noise=device:/etc/passwd", "device noise files are read by the command line"),
            ("d=3,rounds=3,noise=DEVICE:fixtures/devices/crosstalk.toml", "not by the service"),
        ] {
            let fault = text.parse::<CodeSpec>().unwrap_err();
            assert_eq!(fault.status, Status::InvalidArgument);
            assert!(fault.message.contains(named), "{text}: {}", fault.message);
        }
    }

    #[test]
    fn p_outside_its_range_is_refused_naming_p() {
        for p in [5e-324, 1e-100, 0.0, -0.1, 0.6, f64::NAN, f64::INFINITY] {
            let fault = CodeSpec::new(3, Basis::Z, 3, None, Some(p)).unwrap_err();
            assert_eq!(fault.status, Status::InvalidArgument);
            assert!(fault.message.starts_with("code.p must be"), "{p}: {}", fault.message);
        }
        assert!(CodeSpec::new(3, Basis::Z, 3, None, Some(MIN_P)).is_ok());
    }
}
