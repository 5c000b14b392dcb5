//! `qecd replay`: plays an experiment directory over the FPGA bridge as an
//! FPGA would, in real time, and checks every answer.
//!
//! `--streams N` streams (logical qubits) run side by side: stream `i` plays
//! shots `i, i + N, i + 2N, ...` back to back. Every round period, each stream
//! sends the next frame of its shot in flight (ROUND 0 to r − 1, FINAL r, then
//! ROUND 0 of its next shot) without waiting for replies, as an FPGA does.
//! The rounds start `--settle-ms` after the OPEN frames, since the protocol
//! has no reply to a successful OPEN. A deadline clock paces the ticks (sleep, then spin). A sender that falls
//! behind catches up without skipping, and the report says by how much.
//!
//! A second thread reads the replies. Every shot must get exactly one
//! DECISION, equal to offline decoding of the same shot: the same model
//! through [`NeuralDecoder`] for the neural decoders, matching on the DEM the
//! bridge decodes with (SI1000 p = 0.003) for the matching ones, and
//! correlated matching for shots that fell back. The report gives the
//! backlog, the latency percentiles of ACKs and DECISIONs, the budget misses
//! and the fallbacks. The exit status is 1 when a shot was lost, answered
//! twice or answered differently, and 2 for bad input, as elsewhere.

use std::io::Write;
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::Args;
use decoder::{Decoder, DecoderKind, MatchingDecoder, NeuralDecoder, NeuralModel, PackedShots};
use frame_codec::{Decision, DecoderChoice, ErrorReply, Events, Message, Open, StreamId};
use simulator_bridge::experiment::Experiment;
use simulator_bridge::pacing::Pacer;
use simulator_bridge::shots::{pack_bits, unpack_bits};
use simulator_bridge::{Basis, MemoryExperiment, NoiseModel, RoundLayout, StabilizerLayout};

use qecd_service::api::{DEFAULT_NOISE as NOISE, DEFAULT_P as NOISE_P};
use qecd_service::bridge::{FrameSink, FrameSource};
use qecd_service::stats::Histogram;

/// Arguments of `qecd replay`.
#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// Experiment directory: circuit_noisy.stim, detection_events.b8, obs_flips_actual.01 (`qecd sample --out-dir`).
    #[arg(long)]
    pub dir: PathBuf,
    /// The bridge, HOST:PORT (`qecd serve --bridge-listen`).
    #[arg(long)]
    pub addr: String,
    /// Time between two rounds of a stream, in µs (the QPU's cycle).
    #[arg(long, default_value_t = 1.0)]
    pub round_period_us: f64,
    /// Decoder: neural, matching, correlated or neural-checked.
    #[arg(long, default_value = "neural")]
    pub decoder: String,
    /// Neural model (default: the server's model for the code).
    #[arg(long, default_value = "")]
    pub model: String,
    /// The checkpoints the server runs (`qecd serve --models`); default: the zoo built into qecd.
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// Streams played side by side.
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// Per-round latency budget in µs sent in OPEN (0: none).
    #[arg(long, default_value_t = 0)]
    pub budget_us: u32,
    /// Memory basis of the experiment (default: metadata.json's).
    #[arg(long)]
    pub basis: Option<Basis>,
    /// Play only the first N shots (default: all).
    #[arg(long)]
    pub shots: Option<usize>,
    /// Pause between the OPEN frames and the first round, in ms: an FPGA opens its sessions before the
    /// experiment starts, and the server builds each new code's circuit and matching decoders on OPEN.
    #[arg(long, default_value_t = 500)]
    pub settle_ms: u64,
    /// The DEM the server decodes this code with (`qecd serve --code-dem`):
    /// replay checks the server's matching answers against matching with this
    /// file, not with the code's simulated circuit.
    #[arg(long)]
    pub dem: Option<PathBuf>,
    /// Give up when no reply comes for this many seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout_s: u64,
    /// Speak TLS to the bridge (`qecd serve --bridge-tls`), trusting this CA certificate (PEM);
    /// the bridge's certificate must name --addr's host.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate chain (PEM), for a bridge that asks for one (`--tls-client-ca`).
    #[arg(long, requires_all = ["tls_ca", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// The experiment as the bridge plays it.
struct Plan {
    d: usize,
    basis: Basis,
    rounds: usize,
    layout: StabilizerLayout,
    /// Detection events of the shots played, in the circuit's order.
    events: PackedShots,
    /// Observable flips of the same shots.
    actual: PackedShots,
    /// `[shot][round]`: the events of each frame in the session's order, FINAL last.
    frames: Vec<Vec<Events>>,
    /// The DEM the bridge's matching decoders use.
    dem: stim::DetectorErrorModel,
}

impl Plan {
    fn frames_per_shot(&self) -> usize {
        self.rounds + 1
    }
}

/// Runs `qecd replay`; exits with status 1 if an answer is missing, doubled or wrong.
pub fn run(args: &ReplayArgs) -> Result<()> {
    let choice = parse_decoder(&args.decoder)?;
    ensure!(args.streams >= 1, "--streams must be at least 1");
    ensure!(
        args.round_period_us.is_finite() && args.round_period_us > 0.0,
        "--round-period-us must be positive, not {}",
        args.round_period_us
    );
    let plan = plan(args)?;
    let neural = match choice {
        DecoderChoice::Neural | DecoderChoice::NeuralChecked => Some(neural_model(args, &plan)?),
        _ => None,
    };
    let addr = args
        .addr
        .to_socket_addrs()
        .with_context(|| format!("--addr {}: not a HOST:PORT", args.addr))?
        .next()
        .with_context(|| format!("--addr {} resolves to no address", args.addr))?;
    let timeout = Duration::from_secs(args.timeout_s.max(1));
    let (sink, source) = match &args.tls_ca {
        Some(ca) => {
            let identity = args.tls_cert.clone().zip(args.tls_key.clone());
            let tls = qecd_service::bridge::ClientTls { ca: ca.clone(), identity };
            qecd_service::bridge::connect_tls(addr, host(&args.addr), timeout, &tls)?
        }
        None => qecd_service::bridge::connect(addr, timeout)?,
    };
    let n = plan.frames.len();
    println!(
        "qecd replay: {n} shots of d={} memory-{}, {} rounds, from {}",
        plan.d,
        plan.basis,
        plan.rounds,
        args.dir.display()
    );
    println!(
        "  to the bridge at {addr}{}: {} stream(s), decoder {}{}, budget {}, one round every {} µs per stream",
        if args.tls_ca.is_some() { " over TLS" } else { "" },
        args.streams,
        args.decoder,
        neural.as_ref().map(|(name, _)| format!(" (model {name})")).unwrap_or_default(),
        if args.budget_us == 0 { "none".to_string() } else { format!("{} µs", args.budget_us) },
        args.round_period_us
    );
    let clock = Arc::new(Clock::new(n * plan.frames_per_shot()));
    let reader = {
        let (clock, rounds) = (clock.clone(), plan.rounds);
        std::thread::Builder::new()
            .name("qecd-replay-reader".into())
            .spawn(move || read_replies(source, &clock, n, rounds))?
    };
    let sent = send(sink, &plan, args, choice, &clock)?;
    let received = reader.join().map_err(|_| anyhow!("the reply reader panicked"))?;
    let report = check(&plan, choice, neural.map(|(_, model)| model), &received, &clock)?;
    report.print(&sent, &received);
    std::io::stdout().flush()?;
    if !report.passed() {
        eprintln!("qecd replay: FAILED: {}", report.failures().join("; "));
        std::process::exit(1);
    }
    Ok(())
}

/// The host of HOST:PORT (an IPv6 address without its brackets).
fn host(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn parse_decoder(name: &str) -> Result<DecoderChoice> {
    Ok(match name {
        "neural" => DecoderChoice::Neural,
        "matching" => DecoderChoice::Matching,
        "correlated" => DecoderChoice::Correlated,
        "neural-checked" | "neural_checked" => DecoderChoice::NeuralChecked,
        "neural-matching" | "neural_matching" => DecoderChoice::NeuralMatching,
        _ => {
            bail!("unknown decoder '{name}' (expected neural, matching, correlated, neural-checked or neural-matching)")
        }
    })
}

/// Reads the experiment and turns its shots into frames.
fn plan(args: &ReplayArgs) -> Result<Plan> {
    let exp = Experiment::read(&args.dir)?;
    let basis = match args.basis {
        Some(b) => b,
        None => exp
            .metadata
            .as_ref()
            .and_then(|m| m.get("basis"))
            .and_then(|b| b.as_str())
            .context("the experiment's metadata.json names no basis: give --basis x or z")?
            .parse()?,
    };
    let circuit: stim::Circuit = exp.circuit_noisy.parse().map_err(|e| anyhow!("circuit_noisy.stim: {e}"))?;
    let layout = StabilizerLayout::from_circuit(&circuit, basis).context("circuit_noisy.stim")?;
    let stabilizers = layout.stabilizers.len();
    let d = ((stabilizers + 1) as f64).sqrt().round() as usize;
    ensure!(
        d * d == stabilizers + 1,
        "the circuit has {stabilizers} stabilizers, not d² − 1 of a rotated surface code"
    );
    ensure!(layout.num_rounds >= 2, "the circuit has no stabilizer round before its final one");
    let rounds = layout.num_rounds - 1;
    let ours = MemoryExperiment::new(d, rounds, basis)?.noisy_circuit(&NoiseModel::from_name(NOISE, NOISE_P)?)?;
    ensure!(
        StabilizerLayout::from_circuit(&ours, basis)? == layout,
        "the experiment's detectors are not those of the d={d} memory-{basis} experiment of {rounds} rounds that the \
         bridge decodes (Stim's rotated surface code)"
    );
    ensure!(
        exp.obs_flips.bits_per_shot() == ours.num_observables() as usize,
        "the experiment has {} observables; the bridge's circuit has {}",
        exp.obs_flips.bits_per_shot(),
        ours.num_observables()
    );
    let n = args.shots.unwrap_or(usize::MAX).min(exp.num_shots());
    ensure!(n > 0, "the experiment holds no shots to play");
    let first = |shots: &PackedShots| {
        PackedShots::from_bytes(shots.as_bytes()[..n * shots.stride()].to_vec(), shots.bits_per_shot())
    };
    let (events, actual) = (first(&exp.detection_events)?, first(&exp.obs_flips)?);
    let rounds_layout = RoundLayout::new(&layout);
    let frames = (0..n)
        .map(|shot| {
            let rounds = rounds_layout.split(&events, shot);
            rounds.iter().map(|bits| Events::from_packed(pack_bits(bits), bits.len())).collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let dem = match &args.dem {
        Some(path) => {
            let file = simulator_bridge::DemFile::read(path)?;
            if let Some(why) = file.misfit(&simulator_bridge::DemShape::of_circuit(&ours)?) {
                bail!("--dem {}: {why}", path.display());
            }
            file.text().parse::<stim::DetectorErrorModel>().map_err(|e| anyhow!("{}: {e}", path.display()))?
        }
        None => super::decoding_dem(&ours)?,
    };
    Ok(Plan { d, basis, rounds, layout, events, actual, frames, dem })
}

/// The model the server decodes with (its name and weights), as offline decoding loads it.
fn neural_model(args: &ReplayArgs, plan: &Plan) -> Result<(String, Arc<NeuralModel>)> {
    let checkpoints = qecd_service::load_checkpoints(args.models.as_deref())?;
    let name = (!args.model.is_empty()).then_some(args.model.as_str());
    let model =
        qecd_service::find_model(&checkpoints, name, plan.d, plan.basis).map_err(|f| anyhow!("{}", f.message))?;
    Ok((model.name().to_string(), model.clone()))
}

/// When each frame was sent, and how many frames wait for a reply.
struct Clock {
    start: Instant,
    /// ns after `start` (+1, so 0 means not sent) of `[shot * (rounds + 1) + round]`.
    sent: Vec<AtomicU64>,
    /// Frames sent and not yet acknowledged or decided.
    outstanding: AtomicI64,
}

impl Clock {
    fn new(frames: usize) -> Self {
        Self {
            start: Instant::now(),
            sent: (0..frames).map(|_| AtomicU64::new(0)).collect(),
            outstanding: AtomicI64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64 + 1
    }

    /// Time since frame `k` was sent, if it was.
    fn since(&self, k: usize, now: u64) -> Option<Duration> {
        let sent = self.sent[k].load(Ordering::Acquire);
        (sent > 0).then(|| Duration::from_nanos(now.saturating_sub(sent)))
    }
}

/// What the sender did.
struct Sent {
    ticks: u64,
    frames: u64,
    /// How late each tick started against its deadline.
    lag: Histogram,
    /// Ticks that started more than one period late.
    late_ticks: u64,
    max_lag: Duration,
    planned: Duration,
    took: Duration,
    max_outstanding: i64,
    /// Why sending stopped early, if it did.
    stopped: Option<String>,
}

fn send(mut sink: FrameSink, plan: &Plan, args: &ReplayArgs, choice: DecoderChoice, clock: &Clock) -> Result<Sent> {
    let n = plan.frames.len();
    let per_shot = plan.frames_per_shot();
    let streams = args.streams.min(n);
    let stream_id = |i: usize| (i + 1) as StreamId;
    for i in 0..streams {
        let open = Open {
            distance: plan.d as u8,
            basis: match plan.basis {
                Basis::X => frame_codec::Basis::X,
                Basis::Z => frame_codec::Basis::Z,
            },
            decoder: choice,
            budget_us: args.budget_us,
            model: args.model.clone(),
        };
        sink.open(stream_id(i), open, plan.rounds as u32)?;
    }
    let mut sent = Sent {
        ticks: 0,
        frames: 0,
        lag: Histogram::default(),
        late_ticks: 0,
        max_lag: Duration::ZERO,
        planned: Duration::ZERO,
        took: Duration::ZERO,
        max_outstanding: 0,
        stopped: None,
    };
    if let Err(e) = sink.flush() {
        sent.stopped = Some(format!("the bridge refused the OPEN frames: {e}"));
        return Ok(sent);
    }
    std::thread::sleep(Duration::from_millis(args.settle_ms));
    // Each stream's shot in flight and its next frame.
    let mut cursors: Vec<(usize, usize)> = (0..streams).map(|i| (i, 0)).collect();
    let pacer = Pacer::start(args.round_period_us);
    loop {
        if cursors.iter().all(|c| c.0 >= n) {
            break;
        }
        let lag = pacer.wait(sent.ticks as usize);
        sent.lag.record(lag);
        sent.max_lag = sent.max_lag.max(lag);
        if pacer.is_late(lag) {
            sent.late_ticks += 1;
        }
        let stamp = clock.now();
        let mut frames = 0;
        for (i, (shot, round)) in cursors.iter_mut().enumerate() {
            if *shot >= n {
                continue;
            }
            let events = plan.frames[*shot][*round].clone();
            let message = if *round < plan.rounds { Message::Round(events) } else { Message::Final(events) };
            sink.queue(&message, stream_id(i), *shot as u64, *round as u32)?;
            clock.sent[*shot * per_shot + *round].store(stamp, Ordering::Release);
            frames += 1;
            *round += 1;
            if *round == per_shot {
                (*shot, *round) = (*shot + streams, 0);
            }
        }
        if let Err(e) = sink.flush() {
            sent.stopped = Some(format!("the bridge closed the connection: {e}"));
            break;
        }
        sent.frames += frames;
        let outstanding = clock.outstanding.fetch_add(frames as i64, Ordering::AcqRel) + frames as i64;
        sent.max_outstanding = sent.max_outstanding.max(outstanding);
        sent.ticks += 1;
    }
    sent.took = pacer.elapsed();
    sent.planned = pacer.deadline(sent.ticks as usize) - pacer.deadline(0);
    // CLOSE every stream and half-close: the bridge sends what it owes, then closes its side.
    sink.finish((0..streams).map(stream_id))?;
    Ok(sent)
}

/// What came back.
struct Received {
    /// DECISIONs per shot.
    answers: Vec<u32>,
    /// The first DECISION of each shot.
    decisions: Vec<Option<Decision>>,
    /// ACKs per frame `[shot * (rounds + 1) + round]`.
    acks: Vec<u32>,
    ack_rtt: Histogram,
    ack_step: Histogram,
    decision_rtt: Histogram,
    decision_qecd: Histogram,
    budget_misses: u64,
    /// ERROR frames: stream, shot, round and payload.
    errors: Vec<(StreamId, u64, u32, ErrorReply)>,
    /// Replies for frames never sent.
    unexpected: u64,
    /// How reading ended, when not by the bridge closing the connection cleanly.
    ended: Option<String>,
}

fn read_replies(mut source: FrameSource, clock: &Clock, n: usize, rounds: usize) -> Received {
    let per_shot = rounds + 1;
    let mut r = Received {
        answers: vec![0; n],
        decisions: vec![None; n],
        acks: vec![0; n * per_shot],
        ack_rtt: Histogram::default(),
        ack_step: Histogram::default(),
        decision_rtt: Histogram::default(),
        decision_qecd: Histogram::default(),
        budget_misses: 0,
        errors: Vec::new(),
        unexpected: 0,
        ended: None,
    };
    loop {
        let frame = match source.next_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) => return r,
            Err(why) => {
                r.ended = Some(why);
                return r;
            }
        };
        let now = clock.now();
        let (shot, round) = (frame.shot as usize, frame.round as usize);
        match frame.message() {
            Ok(Message::Ack(ack)) if shot < n && round < rounds => {
                let k = shot * per_shot + round;
                r.acks[k] += 1;
                if r.acks[k] == 1 {
                    clock.outstanding.fetch_sub(1, Ordering::AcqRel);
                    if let Some(rtt) = clock.since(k, now) {
                        r.ack_rtt.record(rtt);
                    }
                    r.ack_step.record(Duration::from_nanos(ack.step_latency_ns.into()));
                    r.budget_misses += u64::from(!ack.budget_met);
                }
            }
            Ok(Message::Decision(d)) if shot < n && round == rounds => {
                r.answers[shot] += 1;
                if r.answers[shot] == 1 {
                    clock.outstanding.fetch_sub(1, Ordering::AcqRel);
                    if let Some(rtt) = clock.since(shot * per_shot + rounds, now) {
                        r.decision_rtt.record(rtt);
                    }
                    r.decision_qecd.record(Duration::from_nanos(d.latency_ns.into()));
                    r.decisions[shot] = Some(d);
                }
            }
            Ok(Message::Error(e)) => r.errors.push((frame.stream, frame.shot, frame.round, e)),
            _ => r.unexpected += 1,
        }
    }
}

/// The verdict on the answers.
struct Report {
    shots: usize,
    unsent: usize,
    once: usize,
    lost: usize,
    duplicated: u64,
    equal: usize,
    neural: usize,
    fell_back: usize,
    /// (shot, what was wrong), the first few.
    differ: Vec<(usize, String)>,
    num_differ: usize,
    logical_errors: usize,
    acks: u64,
    duplicate_acks: u64,
    rounds_sent: usize,
}

fn check(
    plan: &Plan,
    choice: DecoderChoice,
    neural: Option<Arc<NeuralModel>>,
    received: &Received,
    clock: &Clock,
) -> Result<Report> {
    let n = plan.frames.len();
    let per_shot = plan.frames_per_shot();
    let decide = |decoder: &mut dyn Decoder, events: &PackedShots| -> Result<Vec<Vec<bool>>> {
        let d = decoder.decode_batch(events)?;
        let k = decoder.num_observables();
        Ok((0..events.num_shots()).map(|s| (0..k).map(|j| d.predictions.get(s, j)).collect()).collect())
    };
    let matching = |kind| MatchingDecoder::from_dem(&plan.dem, kind).map_err(anyhow::Error::from);
    let (offline, expected_decoder) = match (choice, neural) {
        (DecoderChoice::Matching, _) => {
            (decide(&mut matching(DecoderKind::Matching)?, &plan.events)?, DecoderChoice::Matching)
        }
        (DecoderChoice::Correlated, _) => {
            (decide(&mut matching(DecoderKind::Correlated)?, &plan.events)?, DecoderChoice::Correlated)
        }
        (DecoderChoice::NeuralMatching, _) => {
            let (_, posterior) = super::load_posterior(None)?;
            let mut decoder = decoder::NeuralMatching::new(posterior, &plan.dem, &plan.layout)?;
            (decide(&mut decoder, &plan.events)?, DecoderChoice::NeuralMatching)
        }
        (_, Some(model)) => {
            (decide(&mut NeuralDecoder::new(model, &plan.layout)?, &plan.events)?, DecoderChoice::Neural)
        }
        (_, None) => unreachable!("neural decoders come with their model"),
    };
    // Shots that fell back are compared with correlated matching.
    let fell: Vec<usize> = (0..n).filter(|&s| received.decisions[s].as_ref().is_some_and(|d| d.fell_back)).collect();
    let mut fallback = vec![Vec::new(); n];
    if !fell.is_empty() {
        let stride = plan.events.stride();
        let rows: Vec<u8> = fell.iter().flat_map(|&s| plan.events.row(s).iter().copied()).collect();
        let subset = PackedShots::from_bytes(rows, plan.events.bits_per_shot())?;
        debug_assert_eq!(subset.as_bytes().len(), fell.len() * stride);
        for (s, p) in fell.iter().zip(decide(&mut matching(DecoderKind::Correlated)?, &subset)?) {
            fallback[*s] = p;
        }
    }
    let mut report = Report {
        shots: n,
        unsent: (0..n).filter(|&s| clock.sent[s * per_shot + plan.rounds].load(Ordering::Acquire) == 0).count(),
        once: received.answers.iter().filter(|&&a| a == 1).count(),
        lost: (0..n)
            .filter(|&s| received.answers[s] == 0 && clock.sent[s * per_shot + plan.rounds].load(Ordering::Acquire) > 0)
            .count(),
        duplicated: received.answers.iter().map(|&a| u64::from(a.saturating_sub(1))).sum(),
        equal: 0,
        neural: 0,
        fell_back: fell.len(),
        differ: Vec::new(),
        num_differ: 0,
        logical_errors: 0,
        acks: received.acks.iter().map(|&a| u64::from(a)).sum(),
        duplicate_acks: received.acks.iter().map(|&a| u64::from(a.saturating_sub(1))).sum(),
        rounds_sent: (0..n * per_shot)
            .filter(|&k| k % per_shot < plan.rounds && clock.sent[k].load(Ordering::Acquire) > 0)
            .count(),
    };
    for (s, d) in received.decisions.iter().enumerate() {
        let Some(d) = d else { continue };
        let (want, want_decoder) =
            if d.fell_back { (&fallback[s], DecoderChoice::Correlated) } else { (&offline[s], expected_decoder) };
        let actual: Vec<bool> = (0..plan.actual.bits_per_shot()).map(|j| plan.actual.get(s, j)).collect();
        let flips = unpack_bits(d.flips.packed(), d.flips.len());
        report.logical_errors += usize::from(flips != actual);
        if flips == *want && d.decoder == want_decoder {
            report.equal += 1;
            report.neural += usize::from(d.decoder == DecoderChoice::Neural);
        } else {
            report.num_differ += 1;
            if report.differ.len() < 5 {
                report.differ.push((
                    s,
                    format!(
                        "flips {:?} by {:?}{}, offline {:?} by {want_decoder:?}",
                        flips,
                        d.decoder,
                        if d.fell_back { " (fell back)" } else { "" },
                        want
                    ),
                ));
            }
        }
    }
    Ok(report)
}

impl Report {
    fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        if self.unsent > 0 {
            f.push(format!("{} shots not sent", self.unsent));
        }
        if self.lost > 0 {
            f.push(format!("{} shots lost", self.lost));
        }
        if self.duplicated > 0 {
            f.push(format!("{} duplicate answers", self.duplicated));
        }
        if self.num_differ > 0 {
            f.push(format!("{} answers differ from offline decoding", self.num_differ));
        }
        f
    }

    fn passed(&self) -> bool {
        self.failures().is_empty()
    }

    fn print(&self, sent: &Sent, r: &Received) {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let [lag50, _, _] = sent.lag.percentiles_us();
        println!(
            "sent {} frames in {} ticks over {:.2} ms ({:.2} ms planned); behind schedule on {} ticks \
             (lag p50 {lag50:.1} µs, max {:.1} µs)",
            sent.frames,
            sent.ticks,
            ms(sent.took),
            ms(sent.planned),
            sent.late_ticks,
            sent.max_lag.as_secs_f64() * 1e6
        );
        if let Some(why) = &sent.stopped {
            println!("  sending stopped early: {why}");
        }
        println!(
            "answers: {} of {} shots answered exactly once; {} lost, {} duplicated, {} not sent; \
             {} ERROR frames, {} unexpected replies",
            self.once,
            self.shots,
            self.lost,
            self.duplicated,
            self.unsent,
            r.errors.len(),
            r.unexpected
        );
        for (stream, shot, round, e) in r.errors.iter().take(5) {
            println!("  ERROR stream {stream} shot {shot} round {round}: {} {}", e.code, e.message);
        }
        if let Some(why) = &r.ended {
            println!("  {why}");
        }
        let answered = r.decisions.iter().filter(|d| d.is_some()).count();
        println!(
            "offline: {} of {answered} answers equal offline decoding ({} neural, {} fell back to correlated \
             matching); {} differ",
            self.equal, self.neural, self.fell_back, self.num_differ
        );
        for (shot, why) in &self.differ {
            println!("  shot {shot}: {why}");
        }
        println!(
            "acks: {} for {} rounds sent ({} duplicated); {} over budget; {} shots fell back",
            self.acks, self.rounds_sent, self.duplicate_acks, r.budget_misses, self.fell_back
        );
        println!(
            "backlog: at most {} frames outstanding (sent, not yet acknowledged or decided)",
            sent.max_outstanding
        );
        println!("{:<28} {:>8} {:>10} {:>10} {:>10}", "latency (µs)", "count", "p50", "p99", "p99.9");
        for (name, h) in [
            ("ACK round trip", &r.ack_rtt),
            ("ACK step (qecd)", &r.ack_step),
            ("DECISION round trip", &r.decision_rtt),
            ("DECISION (qecd)", &r.decision_qecd),
        ] {
            let [p50, p99, p999] = h.percentiles_us();
            println!("  {name:<26} {:>8} {p50:>10.1} {p99:>10.1} {p999:>10.1}", h.count());
        }
        println!(
            "logical errors: {} of {answered} answered shots ({:.3}%)",
            self.logical_errors,
            100.0 * self.logical_errors as f64 / answered.max(1) as f64
        );
    }
}
