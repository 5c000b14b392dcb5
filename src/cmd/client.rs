//! A gRPC client that plays simulated shots into a Decode stream as a
//! control stack would: each shot in flight sends its next round when the
//! previous one is acknowledged, and a new shot starts when one is answered.
//! Used by `qecd demo` and `qecd load`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use decoder::stats::ErrorCount;
use indicatif::ProgressBar;
use simulator_bridge::sample::Sampler;
use simulator_bridge::{Basis, MemoryExperiment, NoiseModel, PackedShots, RoundLayout, StabilizerLayout};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use qecd_grpc::proto::decode_request::Message as In;
use qecd_grpc::proto::decode_response::Message as Out;
use qecd_grpc::proto::decoder_client::DecoderClient;
use qecd_grpc::proto::{self, DecodeRequest};
use qecd_service::stats::Histogram;
use simulator_bridge::shots::pack_bits as pack;
use tonic::codegen::{Body, Bytes, StdError};

/// Simulated shots (memory-Z, SI1000 p=0.003), as a stream sends them.
pub struct ShotSet {
    /// Code distance.
    pub d: usize,
    /// Stabilizer rounds per shot.
    pub rounds: usize,
    /// `[shot][round][bit]` in the session's order, the final round last.
    pub per_shot: Vec<Vec<Vec<bool>>>,
    /// The actual observable flip of each shot.
    pub observables: Vec<bool>,
    /// The shots' detection events in circuit order, and the circuit, for
    /// decoding them in-process.
    pub detectors: PackedShots,
    /// See `detectors`.
    pub circuit: String,
}

impl ShotSet {
    /// Samples `shots` shots of distance `d` and `rounds` rounds.
    pub fn simulate(d: usize, rounds: usize, shots: usize, seed: u64) -> Result<Self> {
        let circuit = MemoryExperiment::new(d, rounds, Basis::Z)?.noisy_circuit(&NoiseModel::Si1000 { p: 0.003 })?;
        let layout = StabilizerLayout::from_circuit(&circuit, Basis::Z)?;
        let sampled = Sampler::new(&circuit).sample(shots, seed, 0)?;
        let rounds_layout = RoundLayout::new(&layout);
        let per_shot = (0..shots).map(|s| rounds_layout.split(&sampled.detectors, s)).collect();
        let observables = (0..shots).map(|s| sampled.observables.get(s, 0)).collect();
        Ok(Self { d, rounds, per_shot, observables, detectors: sampled.detectors, circuit: circuit.to_string() })
    }

    fn message(&self, id: u64, t: usize) -> DecodeRequest {
        let bits = &self.per_shot[id as usize % self.per_shot.len()][t];
        let (events, num_events) = (pack(bits), bits.len() as u32);
        let message = if t < self.rounds {
            In::Round(proto::Round { shot: id, round: t as u32, num_events, events, soft: vec![] })
        } else {
            In::Final(proto::FinalRound { shot: id, num_events, events })
        };
        DecodeRequest { message: Some(message) }
    }
}

/// How to drive a stream.
pub struct Drive {
    /// The session's decoder.
    pub decoder: proto::DecoderKind,
    /// The neural model's name (empty: the server's for the code).
    pub model: String,
    /// Shots in flight at once.
    pub window: usize,
    /// Stop starting shots after this many…
    pub shots: usize,
    /// …or at this instant.
    pub until: Option<Instant>,
    /// Counts answered shots.
    pub bar: Option<ProgressBar>,
    /// Ends each session after this many shots and opens a new one, so that
    /// the stream sees models swapped while it runs; `None`: one session.
    pub reopen_every: Option<usize>,
    /// Keeps every result's answer in its session's log ([`SessionLog::answers`]).
    pub keep_answers: bool,
}

/// What a stream measured.
#[derive(Default)]
pub struct Tally {
    /// Shots started.
    pub started: u64,
    /// Distinct shots answered.
    pub answered: u64,
    /// Answers to a shot already answered.
    pub duplicates: u64,
    /// Of the shots answered, those answered with a failure status (`ShotFailed`).
    pub failed: u64,
    /// Round acknowledgements received, and those for a round already acknowledged.
    pub acks: u64,
    /// Duplicate acknowledgements.
    pub duplicate_acks: u64,
    /// The answering decoder's errors.
    pub errors: ErrorCount,
    /// Correlated matching's errors on the same shots (checked mode).
    pub baseline: ErrorCount,
    /// Shots that fell back to correlated matching.
    pub fell_back: u64,
    /// Sum of the answers' confidences.
    pub confidence_sum: f64,
    /// Client round trip: round sent → acknowledgement.
    pub round_rtt: Histogram,
    /// Client round trip: final round sent → decision.
    pub decision_rtt: Histogram,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Its sessions, in order, with the model version that answered each.
    pub sessions: Vec<SessionLog>,
}

impl Tally {
    /// Shots started and never answered.
    pub fn lost(&self) -> u64 {
        self.started - self.answered
    }
}

/// Plays `set` into Decode streams of `client` as `drive` says: one
/// session for the whole run, or a new one every `drive.reopen_every`
/// shots. Shot ids run on across sessions. The client may be plain or
/// carry credentials ([`qecd_grpc::client::Client`]).
pub async fn drive<T>(client: &mut DecoderClient<T>, set: &ShotSet, drive: &Drive) -> Result<Tally>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<StdError>,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    let started = Instant::now();
    let mut tally = Tally::default();
    loop {
        let session = play_session(client, set, drive, &mut tally).await?;
        tally.sessions.push(session);
        if !drive.more(&tally) {
            break;
        }
    }
    if tally.answered + tally.lost() != tally.started {
        bail!("bookkeeping: {} started, {} answered", tally.started, tally.answered);
    }
    tally.seconds = started.elapsed().as_secs_f64();
    Ok(tally)
}

impl Drive {
    /// True while the run starts shots.
    fn more(&self, tally: &Tally) -> bool {
        tally.started < self.shots as u64 && self.until.is_none_or(|u| Instant::now() < u)
    }
}

/// One Decode stream: opens its session, plays shots until the run or the
/// session's share of shots is over, and waits for their answers.
async fn play_session<T>(
    client: &mut DecoderClient<T>,
    set: &ShotSet,
    drive: &Drive,
    tally: &mut Tally,
) -> Result<SessionLog>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<StdError>,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    let code = proto::Code {
        distance: set.d as u32,
        basis: proto::Basis::Z as i32,
        rounds: set.rounds as u32,
        noise: "si1000".into(),
        p: 0.003,
    };
    let open = proto::OpenSession {
        code: Some(code),
        decoder: drive.decoder as i32,
        model: drive.model.clone(),
        round_budget_us: 0,
        max_backlog: 0,
    };
    let (tx, rx) = mpsc::channel::<DecodeRequest>(4 * drive.window + 16);
    let mut log = SessionLog { opened: Instant::now(), ..SessionLog::default() };
    tx.send(DecodeRequest { message: Some(In::Open(open)) }).await?;
    let mut responses = client.decode(ReceiverStream::new(rx)).await?.into_inner();
    let checked = drive.decoder == proto::DecoderKind::NeuralChecked;
    let first = tally.started;
    let share = drive.reopen_every.map_or(u64::MAX, |n| n.max(1) as u64);
    let more = |tally: &Tally| drive.more(tally) && tally.started - first < share;
    let mut sent_at: HashMap<u64, Instant> = HashMap::new();
    let mut acked: HashSet<(u64, u32)> = HashSet::new();
    let mut answered: HashSet<u64> = HashSet::new();
    let (mut checks, mut answered_here) = (0u64, 0u64);
    let mut tx = Some(tx);
    while tally.started - first < drive.window as u64 && more(tally) {
        sent_at.insert(tally.started, Instant::now());
        tx.as_ref().expect("open").send(set.message(tally.started, 0)).await?;
        tally.started += 1;
    }
    loop {
        if sent_at.is_empty() && !more(tally) {
            // Nothing in flight and nothing more to send: close our side.
            tx = None;
            if !checked || checks >= answered_here {
                break;
            }
        }
        let response = tokio::time::timeout(Duration::from_secs(30), responses.next())
            .await
            .context("no answer from the server for 30 s")?;
        let Some(response) = response else { break };
        let response = response?;
        let actual = |id: u64| set.observables[id as usize % set.observables.len()];
        match response.message {
            Some(Out::Ack(ack)) => {
                tally.acks += 1;
                if !acked.insert((ack.shot, ack.round)) {
                    tally.duplicate_acks += 1;
                    continue;
                }
                let now = Instant::now();
                let sent = sent_at.get(&ack.shot).context("an acknowledgement for a shot not in flight")?;
                tally.round_rtt.record(now - *sent);
                sent_at.insert(ack.shot, now);
                let tx = tx.as_ref().context("an acknowledgement after the stream closed")?;
                tx.send(set.message(ack.shot, ack.round as usize + 1)).await?;
            }
            Some(Out::Result(r)) => {
                if !answered.insert(r.shot) {
                    tally.duplicates += 1;
                    continue;
                }
                for t in 0..set.rounds as u32 {
                    acked.remove(&(r.shot, t));
                }
                let sent = sent_at.remove(&r.shot).context("a decision for a shot not in flight")?;
                tally.decision_rtt.record(sent.elapsed());
                tally.answered += 1;
                answered_here += 1;
                tally.fell_back += u64::from(r.fell_back);
                log.note(&r, drive.keep_answers);
                tally.errors +=
                    ErrorCount { shots: 1, errors: u64::from((r.prediction[0] & 1 == 1) != actual(r.shot)) };
                tally.confidence_sum += r.confidence;
                if let Some(bar) = &drive.bar {
                    bar.inc(1);
                }
                if more(tally) {
                    sent_at.insert(tally.started, Instant::now());
                    tx.as_ref().expect("open while shots remain").send(set.message(tally.started, 0)).await?;
                    tally.started += 1;
                }
            }
            Some(Out::Failed(f)) => {
                if !answered.insert(f.shot) {
                    tally.duplicates += 1;
                    continue;
                }
                sent_at.remove(&f.shot).context("a failure for a shot not in flight")?;
                tally.answered += 1;
                answered_here += 1;
                tally.failed += 1;
                if more(tally) {
                    sent_at.insert(tally.started, Instant::now());
                    tx.as_ref().expect("open while shots remain").send(set.message(tally.started, 0)).await?;
                    tally.started += 1;
                }
            }
            Some(Out::Check(c)) => {
                checks += 1;
                let wrong = (c.baseline_prediction[0] & 1 == 1) != actual(c.shot);
                tally.baseline += ErrorCount { shots: 1, errors: u64::from(wrong) };
            }
            Some(Out::Opened(o)) => log.version = o.model_version,
            None => {}
        }
    }
    log.ended = Instant::now();
    Ok(log)
}

/// The model version one session of a stream was answered by.
#[derive(Clone, Debug)]
pub struct SessionLog {
    /// When its open was sent.
    pub opened: Instant,
    /// When its stream ended (every answer in).
    pub ended: Instant,
    /// The version its SessionOpened named; empty without a neural model.
    pub version: String,
    /// Its results answered by the neural decoder.
    pub neural: u64,
    /// Its results that named a model version.
    pub versioned: u64,
    /// Its neural results (not fallbacks) whose version was not the session's, or was missing.
    pub strays: u64,
    /// Its results in the order they came, with [`Drive::keep_answers`]; empty without.
    pub answers: Vec<Answer>,
}

/// One result as a session got it.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The shot's id; its events are the shot set's row `shot % len`.
    pub shot: u64,
    /// The predicted observable flips, bit-packed as on the wire.
    pub prediction: Vec<u8>,
    /// The calibrated confidence.
    pub confidence: f64,
    /// True when the neural decoder answered it (not a fallback).
    pub neural: bool,
}

impl Default for SessionLog {
    fn default() -> Self {
        let now = Instant::now();
        Self {
            opened: now,
            ended: now,
            version: String::new(),
            neural: 0,
            versioned: 0,
            strays: 0,
            answers: Vec::new(),
        }
    }
}

impl SessionLog {
    /// Checks a result's model version against the session's, and keeps the
    /// answer if asked to.
    fn note(&mut self, r: &proto::ShotResult, keep: bool) {
        let neural = r.answered_by == proto::DecoderKind::Neural as i32;
        if keep {
            let prediction = r.prediction.clone();
            self.answers.push(Answer { shot: r.shot, prediction, confidence: r.confidence, neural });
        }
        if !r.model_version.is_empty() {
            self.versioned += 1;
        }
        if neural {
            self.neural += 1;
            if r.model_version != self.version {
                self.strays += 1;
            }
        }
    }
}

/// A model version's name and load count: `d3_z_si1000_p003@4:9f1c0a7e3b21` → (`d3_z_si1000_p003`, 4).
pub fn parse_version(version: &str) -> Option<(&str, u64)> {
    let (name, rest) = version.rsplit_once('@')?;
    let n = rest.split_once(':').map_or(rest, |(n, _)| n);
    Some((name, n.parse().ok()?))
}
