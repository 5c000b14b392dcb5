//! The transport floor of the FPGA bridge: `qecd replay`'s client against a
//! null bridge that answers every frame at once and decodes nothing.
//!
//! ```text
//! cargo run --release -p qecd-benches --bin bridge_floor -- [--frames N] [--period-us P]
//! ```
//!
//! The client is `qecd replay`'s, the service's bridge client
//! ([`qecd_service::bridge::connect`]): one socket with `TCP_NODELAY`, a
//! [`FrameSink`] on a sender thread that paces frames on a deadline clock
//! (sleep with a 1 ns timer slack, then spin) and stamps each frame's send
//! time, and a [`FrameSource`] on a reader thread that times the replies.
//! The null bridge is the wire work of `qecd serve --bridge-listen`: per
//! connection one thread with a blocking `read` into a [`FrameDecoder`], and
//! one encoded reply written per frame (an ACK per ROUND, a DECISION per
//! FINAL). What the real bridge adds on top of these
//! round trips is its own cost: the hand-off to the session thread, the
//! decoding and the reply writer.
//!
//! The shots are fake d=3 memory-Z shots of 3 rounds: ROUND 0 with 4 events,
//! ROUNDs 1 and 2 with 8, FINAL with 4, random bits. Percentiles are exact
//! (nearest rank over every sample). The exit status is 1 when a reply is
//! missing, duplicated or unexpected.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use frame_codec::{
    Ack, Basis, Decision, DecoderChoice, Events, Flips, FrameDecoder, FrameEncoder, FrameKind, Message, Open,
    Sender as End, StreamId,
};
use qecd_benches::{cores, percentiles};
use qecd_service::bridge::{FrameSink, FrameSource};
use simulator_bridge::pacing::Pacer;
use simulator_bridge::shots::pack_bits;

/// Stabilizer rounds per shot; a shot is `ROUNDS` ROUND frames and one FINAL.
const ROUNDS: usize = 3;
/// Frames per shot.
const PER_SHOT: usize = ROUNDS + 1;
/// Detection events of ROUND 0 and FINAL at d=3 memory-Z (the Z stabilizers).
const HALF_EVENTS: usize = 4;
/// Detection events of the middle rounds at d=3 (every stabilizer).
const FULL_EVENTS: usize = 8;
/// Observables of a memory experiment: the length of a DECISION's flips.
const OBSERVABLES: usize = 1;
/// Distinct random shots the sender cycles through.
const PATTERNS: usize = 64;
/// The stream id of the one session.
const STREAM: StreamId = 1;
/// Pause between OPEN and the first round, as replay's `--settle-ms` (shorter: nothing is built).
const SETTLE: Duration = Duration::from_millis(100);
/// The reader gives up when no reply comes for this long.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

struct Args {
    frames: usize,
    period_us: f64,
}

fn parse_args() -> Result<Args> {
    let mut args = std::env::args().skip(1);
    let mut parsed = Args { frames: 20_000, period_us: 200.0 };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--frames" => parsed.frames = args.next().context("--frames needs a count")?.parse()?,
            "--period-us" => parsed.period_us = args.next().context("--period-us needs µs")?.parse()?,
            other => bail!("unknown argument '{other}' (expected --frames N, --period-us P)"),
        }
    }
    ensure!(parsed.frames > 0, "--frames must be at least 1");
    ensure!(
        parsed.period_us.is_finite() && parsed.period_us > 0.0,
        "--period-us must be positive, not {}",
        parsed.period_us
    );
    Ok(parsed)
}

/// Starts the null bridge on 127.0.0.1 (a free port): one thread per connection.
fn start_null_bridge() -> Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot listen on 127.0.0.1")?;
    let addr = listener.local_addr()?;
    std::thread::Builder::new().name("null-bridge".into()).spawn(move || {
        for socket in listener.incoming() {
            let Ok(socket) = socket else { continue };
            let _ = socket.set_nodelay(true);
            let spawned = std::thread::Builder::new().name("null-bridge-conn".into()).spawn(move || {
                if let Err(e) = serve_connection(socket) {
                    eprintln!("null bridge: {e:#}");
                }
            });
            if let Err(e) = spawned {
                eprintln!("null bridge: cannot start a connection's thread: {e}");
            }
        }
    })?;
    Ok(addr)
}

/// Answers every ROUND with an ACK and every FINAL with a DECISION, one
/// `write_all` per reply, until the peer closes its side.
fn serve_connection(mut socket: TcpStream) -> Result<()> {
    let mut decoder = FrameDecoder::new(End::Fpga);
    let mut encoder = FrameEncoder::new(End::Qecd);
    let ack = Message::Ack(Ack { step_latency_ns: 0, budget_met: true });
    let decision = Message::Decision(Decision {
        flips: Flips::from_packed(vec![0; OBSERVABLES.div_ceil(8)], OBSERVABLES)?,
        confidence: 0.5,
        latency_ns: 0,
        decoder: DecoderChoice::Neural,
        fell_back: false,
        baseline: None,
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    loop {
        let n = match socket.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("read"),
        };
        decoder.feed(&buf[..n]);
        while let Some(frame) = decoder.next_frame()? {
            let reply = match frame.kind {
                FrameKind::Round => &ack,
                FrameKind::Final => &decision,
                _ => continue,
            };
            out.clear();
            encoder.encode_message(reply, frame.stream, frame.shot, frame.round, &mut out)?;
            socket.write_all(&out).context("write")?;
        }
    }
    decoder.finish()?;
    let _ = socket.shutdown(Shutdown::Write);
    Ok(())
}

/// `[pattern][round]`: the events of each frame of a few random shots, FINAL last.
fn fake_shots() -> Result<Vec<Vec<Events>>> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut bit = move || {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state & 1 == 1
    };
    let mut shots = Vec::with_capacity(PATTERNS);
    for _ in 0..PATTERNS {
        let mut frames = Vec::with_capacity(PER_SHOT);
        for round in 0..PER_SHOT {
            let len = if round == 0 || round == ROUNDS { HALF_EVENTS } else { FULL_EVENTS };
            let bits: Vec<bool> = (0..len).map(|_| bit()).collect();
            frames.push(Events::from_packed(pack_bits(&bits), len)?);
        }
        shots.push(frames);
    }
    Ok(shots)
}

/// When each frame was sent: ns after `start`, +1 so that 0 means not sent,
/// indexed `[shot * PER_SHOT + round]`.
struct Clock {
    start: Instant,
    sent: Vec<AtomicU64>,
}

impl Clock {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64 + 1
    }
}

/// What the sender did.
struct Sent {
    frames: usize,
    /// µs late of each tick against its deadline.
    lag_us: Vec<f64>,
    /// Ticks that started more than one period late.
    late_ticks: usize,
    took: Duration,
    planned: Duration,
    /// Why sending stopped early, if it did.
    stopped: Option<String>,
}

fn send(mut sink: FrameSink, shots: usize, period_us: f64, clock: &Clock) -> Result<Sent> {
    let patterns = fake_shots()?;
    let open =
        Open { distance: 3, basis: Basis::Z, decoder: DecoderChoice::Neural, budget_us: 0, model: String::new() };
    sink.open(STREAM, open, ROUNDS as u32)?;
    sink.flush().context("the null bridge refused the OPEN frame")?;
    std::thread::sleep(SETTLE);
    let total = shots * PER_SHOT;
    let mut sent = Sent {
        frames: 0,
        lag_us: Vec::with_capacity(total),
        late_ticks: 0,
        took: Duration::ZERO,
        planned: Duration::ZERO,
        stopped: None,
    };
    let pacer = Pacer::start(period_us);
    for k in 0..total {
        let (shot, round) = (k / PER_SHOT, k % PER_SHOT);
        let lag = pacer.wait(k);
        sent.lag_us.push(lag.as_secs_f64() * 1e6);
        if pacer.is_late(lag) {
            sent.late_ticks += 1;
        }
        let events = patterns[shot % PATTERNS][round].clone();
        let message = if round < ROUNDS { Message::Round(events) } else { Message::Final(events) };
        sink.queue(&message, STREAM, shot as u64, round as u32)?;
        clock.sent[k].store(clock.now(), Ordering::Release);
        if let Err(e) = sink.flush() {
            sent.stopped = Some(format!("the null bridge closed the connection: {e}"));
            break;
        }
        sent.frames += 1;
    }
    sent.took = pacer.elapsed();
    sent.planned = pacer.deadline(sent.frames) - pacer.deadline(0);
    // CLOSE and half-close: the null bridge answers what it read, then closes its side.
    sink.finish([STREAM])?;
    Ok(sent)
}

/// What came back.
struct Received {
    /// Replies per frame `[shot * PER_SHOT + round]` (ACKs for rounds, DECISIONs for FINALs).
    replies: Vec<u32>,
    /// µs from send to receipt of each first ACK.
    ack_rtt_us: Vec<f64>,
    /// µs from send to receipt of each first DECISION.
    decision_rtt_us: Vec<f64>,
    /// Replies of the wrong kind, or for frames that do not exist.
    unexpected: u64,
    /// How reading ended, when not by the null bridge closing cleanly.
    ended: Option<String>,
}

fn read_replies(mut source: FrameSource, clock: &Clock, shots: usize) -> Received {
    let total = shots * PER_SHOT;
    let mut r = Received {
        replies: vec![0; total],
        ack_rtt_us: Vec::with_capacity(shots * ROUNDS),
        decision_rtt_us: Vec::with_capacity(shots),
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
        let k = shot * PER_SHOT + round;
        let samples = match frame.kind {
            FrameKind::Ack if shot < shots && round < ROUNDS => &mut r.ack_rtt_us,
            FrameKind::Decision if shot < shots && round == ROUNDS => &mut r.decision_rtt_us,
            _ => {
                r.unexpected += 1;
                continue;
            }
        };
        r.replies[k] += 1;
        let sent = clock.sent[k].load(Ordering::Acquire);
        if r.replies[k] == 1 && sent > 0 {
            samples.push(now.saturating_sub(sent) as f64 / 1e3);
        }
    }
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let shots = args.frames.div_ceil(PER_SHOT);
    let total = shots * PER_SHOT;
    let addr = start_null_bridge()?;
    let (sink, source) = qecd_service::bridge::connect(addr, READ_TIMEOUT)?;
    println!(
        "bridge_floor: {shots} shots ({total} frames) of fake d=3 memory-Z, {ROUNDS} rounds, one frame every {} µs, \
         to {addr}",
        args.period_us
    );
    println!("null bridge: same frames and threads as qecd replay → qecd serve --bridge-listen, no decoding");
    println!("machine: {} cores", cores());
    let clock = Arc::new(Clock { start: Instant::now(), sent: (0..total).map(|_| AtomicU64::new(0)).collect() });
    let reader = {
        let clock = clock.clone();
        std::thread::Builder::new()
            .name("bridge-floor-reader".into())
            .spawn(move || read_replies(source, &clock, shots))?
    };
    let mut sent = send(sink, shots, args.period_us, &clock)?;
    let mut r = reader.join().map_err(|_| anyhow!("the reply reader panicked"))?;

    let was_sent = |k: usize| clock.sent[k].load(Ordering::Acquire) > 0;
    let missing = (0..total).filter(|&k| was_sent(k) && r.replies[k] == 0).count();
    let duplicated: u64 = r.replies.iter().map(|&n| u64::from(n.saturating_sub(1))).sum();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let [lag50, _, _] = percentiles(&mut sent.lag_us);
    // `percentiles` sorted the lags: the last is the largest.
    let max_lag = sent.lag_us.last().copied().unwrap_or(0.0);
    println!(
        "sent {} frames over {:.2} ms ({:.2} ms planned); behind schedule on {} ticks (lag p50 {lag50:.1} µs, \
         max {max_lag:.1} µs)",
        sent.frames,
        ms(sent.took),
        ms(sent.planned),
        sent.late_ticks
    );
    if let Some(why) = &sent.stopped {
        println!("  sending stopped early: {why}");
    }
    println!(
        "replies: {} ACKs, {} DECISIONs for {} frames sent; {missing} missing, {duplicated} duplicated, {} unexpected",
        r.ack_rtt_us.len(),
        r.decision_rtt_us.len(),
        sent.frames,
        r.unexpected
    );
    if let Some(why) = &r.ended {
        println!("  {why}");
    }
    println!("{:<28} {:>8} {:>10} {:>10} {:>10}", "latency (µs)", "count", "p50", "p99", "p99.9");
    for (name, samples) in [("ACK round trip", &mut r.ack_rtt_us), ("DECISION round trip", &mut r.decision_rtt_us)] {
        let count = samples.len();
        let [p50, p99, p999] = percentiles(samples);
        println!("  {name:<26} {count:>8} {p50:>10.1} {p99:>10.1} {p999:>10.1}");
    }
    std::io::stdout().flush()?;
    let failed = missing > 0
        || duplicated > 0
        || r.unexpected > 0
        || r.ended.is_some()
        || sent.stopped.is_some()
        || sent.frames < total;
    if failed {
        eprintln!("bridge_floor: FAILED: a reply is missing, duplicated or unexpected, or the connection broke");
        std::process::exit(1);
    }
    Ok(())
}
