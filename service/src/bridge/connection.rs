//! One bridge connection: its reader, and the streams it maps frames onto.
//!
//! Each connection has one reader thread, which maps frames straight onto
//! the session's [`Input`]s. The replies of every stream go back through one
//! [`Writer`] (one [`FrameEncoder`](frame_codec::FrameEncoder) behind a
//! mutex), so the connection's sequence numbers stay in order.
//!
//! The session checks the conversation (rounds in order, event counts); the
//! reader checks only what belongs to the frames themselves (a stream id
//! that is not open, FINAL's round field). A fault of the session ends its
//! stream with an ERROR that repeats the shot and round of the frame at
//! fault, after every reply the stream owed before that frame.
//!
//! The connection's time bounds are one socket read timeout, re-armed when
//! it fires: until a session opens, the handshake timeout from the accept;
//! then the idle timeout from the last frame; and with half a frame
//! buffered, [`STALL_TIMEOUT`] from the last byte. Over TLS the handshake
//! runs first on this thread, under the same handshake timeout.

use std::collections::HashMap;
use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use frame_codec::{
    Ack, Decision, DecoderChoice, ErrorCode, ErrorReply, Events, Frame, FrameDecoder, Message, Open, Sender as End,
    StreamId,
};
use rustls::ServerConfig;
use simulator_bridge::Basis;
use tracing::{error, info};

use super::server::{Control, STALL_TIMEOUT, Shared, WRITE_TIMEOUT};
use super::tls::Tls;
use super::writer::{Writer, poll_read};
use crate::api::{CodeSpec, Fault, Input, OpenRequest, Reply, RoundEvents, SessionDecoder, ShotResult, Sink, Status};
use crate::session::{Gone, Stream};
use crate::{Hub, StreamSlot};

/// After a connection-level ERROR, how long the peer's further bytes are read
/// and dropped, so that closing the socket does not reset the connection
/// before the peer has read the ERROR.
const DRAIN_AFTER_ERROR: Duration = Duration::from_secs(1);

/// A connection the listener accepted, with what its thread needs.
pub(super) struct Accepted {
    pub(super) hub: Arc<Hub>,
    pub(super) socket: TcpStream,
    /// The TLS configuration, when the bridge speaks TLS.
    pub(super) tls: Option<Arc<ServerConfig>>,
    /// When it was accepted: the handshake timeout counts from here.
    pub(super) since: Instant,
    pub(super) shared: Arc<Shared>,
    pub(super) control: Arc<Control>,
}

/// A timeout option as a bound: zero means none.
pub(super) fn limit(timeout: Duration) -> Option<Duration> {
    (!timeout.is_zero()).then_some(timeout)
}

/// The seconds of a duration as a flag takes them (`0.3`, `120`).
fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Serves one connection until the peer stops sending, a framing error, a
/// timeout or the listener's shutdown; then lets the streams answer what
/// they owe (unless the connection failed) and closes it.
pub(super) fn serve(accepted: Accepted) {
    let Accepted { hub, mut socket, tls, since, shared, control } = accepted;
    let _ = socket.set_write_timeout(Some(WRITE_TIMEOUT));
    let tls = match tls {
        Some(config) => match handshake(&config, &mut socket, since, &hub) {
            Ok(tls) => Some(tls),
            Err(e) => {
                info!("bridge: TLS handshake failed: {e:#}");
                return;
            }
        },
        None => None,
    };
    let (writer, flush_socket) = match (socket.try_clone(), socket.try_clone()) {
        (Ok(a), Ok(b)) => (Arc::new(Writer::new(a, tls)), b),
        (Err(e), _) | (_, Err(e)) => {
            error!("bridge: cannot use a new connection: {e}");
            return;
        }
    };
    let flusher = {
        let writer = writer.clone();
        let spawned =
            std::thread::Builder::new().name("qecd-bridge-flush".into()).spawn(move || writer.flush_loop(flush_socket));
        match spawned {
            Ok(t) => t,
            Err(e) => {
                error!("bridge: cannot start a connection's flusher: {e}");
                return;
            }
        }
    };
    let gone: Gone = {
        let (writer, control, socket) = (writer.clone(), control.clone(), socket.try_clone().ok());
        Arc::new(move || {
            !writer.is_open()
                || control.closing().is_some()
                || socket.as_ref().is_some_and(|s| s.take_error().ok().flatten().is_some())
        })
    };
    let mut conn = Connection {
        hub,
        writer: writer.clone(),
        shared,
        gone,
        streams: HashMap::new(),
        closing: Vec::new(),
        touched: Vec::new(),
        opened: false,
    };
    let failure = conn.read(&mut socket, since, &control);
    if let Some((code, message)) = failure {
        // The shots in flight are answered by the connection-level ERROR.
        for entry in conn.streams.values() {
            if let Some(stream) = &entry.stream {
                stream.abandon();
            }
        }
        writer.fail(code, message);
        drain(&mut socket);
    }
    // Every stream's input ends: the sessions answer the shots whose FINAL
    // came (unless the connection failed), then end.
    for (_, entry) in conn.streams.drain() {
        if let Some(stream) = &entry.stream {
            stream.end();
        }
    }
    for thread in conn.closing.drain(..) {
        let _ = thread.join();
    }
    writer.close();
    let _ = flusher.join();
}

/// The server's end of a TLS handshake, under the handshake timeout.
fn handshake(config: &Arc<ServerConfig>, socket: &mut TcpStream, since: Instant, hub: &Hub) -> anyhow::Result<Tls> {
    let left = limit(hub.options.handshake_timeout).map(|t| (since + t).saturating_duration_since(Instant::now()));
    let _ = socket.set_read_timeout(Some(left.unwrap_or(STALL_TIMEOUT).max(Duration::from_millis(1))));
    let mut tls = Tls::server(config)?;
    tls.handshake(socket)?;
    Ok(tls)
}

/// Reads and drops what the peer still sends, until it closes or for [`DRAIN_AFTER_ERROR`].
pub(super) fn drain(socket: &mut TcpStream) {
    let until = Instant::now() + DRAIN_AFTER_ERROR;
    let _ = socket.set_read_timeout(Some(Duration::from_millis(100)));
    let mut sink = [0u8; 4096];
    while Instant::now() < until {
        match socket.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(_) => return,
        }
    }
}

/// The frame an ERROR blames, with the status and message it carries.
#[derive(Clone, Debug)]
struct Blame {
    code: ErrorCode,
    shot: u64,
    round: u32,
    message: String,
}

/// What a connection's reader knows about one of its streams.
struct StreamEntry {
    /// The session; `None` once the stream failed (its ROUND and FINAL
    /// frames are then dropped until CLOSE or a new OPEN).
    stream: Option<Arc<Stream>>,
    /// Counts the stream as open on the server while it lives.
    slot: Option<StreamSlot>,
    /// Stabilizer rounds per shot (OPEN's round field).
    rounds: u32,
}

impl StreamEntry {
    /// A stream that got its ERROR (or never opened): its frames are dropped.
    fn failed() -> Self {
        Self { stream: None, slot: None, rounds: 0 }
    }

    fn live(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| !s.is_closed())
    }
}

/// A connection as its reader sees it.
struct Connection {
    hub: Arc<Hub>,
    writer: Arc<Writer>,
    streams: HashMap<StreamId, StreamEntry>,
    /// Threads ending closed streams (finished ones are pruned).
    closing: Vec<JoinHandle<()>>,
    /// Streams given rounds since the engine was last driven.
    touched: Vec<Arc<Stream>>,
    /// What the listener shares with its connections (is it stopping?).
    shared: Arc<Shared>,
    /// Says the connection is gone (failed, or closed by the listener), for a session's open.
    gone: Gone,
    /// A session has opened on it: the handshake is over.
    opened: bool,
}

impl Connection {
    /// Reads and handles frames until the peer stops sending (`None`) or
    /// the connection fails: the ERROR it gets then.
    fn read(&mut self, socket: &mut TcpStream, since: Instant, control: &Control) -> Option<(ErrorCode, String)> {
        let writer = self.writer.clone();
        let mut decoder = FrameDecoder::new(End::Fpga);
        let (mut buf, mut plain) = (vec![0u8; 64 * 1024], Vec::new());
        let poll = self.hub.options.bridge_poll;
        let (handshake, idle) = (self.hub.options.handshake_timeout, self.hub.options.idle_timeout);
        let (mut last_byte, mut last_frame) = (since, since);
        // When the peer will have taken too long: to open a session, then to send a frame.
        let deadline = |opened: bool, last_frame: Instant| match opened {
            false => limit(handshake).map(|t| since + t),
            true => limit(idle).map(|t| last_frame + t),
        };
        let expired = |opened: bool| {
            let why = match opened {
                false => format!("no session opened within {0} s (--handshake-timeout {0})", seconds(handshake)),
                true => format!("no frame for {0} s (--idle-timeout {0})", seconds(idle)),
            };
            Some((ErrorCode::DeadlineExceeded, why))
        };
        let wait = |until: Option<Instant>, now: Instant| {
            until
                .map_or(STALL_TIMEOUT, |u| u.saturating_duration_since(now).min(STALL_TIMEOUT))
                .max(Duration::from_millis(1))
        };
        let _ = socket.set_read_timeout(Some(wait(deadline(false, since), Instant::now())));
        let tls = writer.is_tls();
        // Over TLS the handshake may have read records already: open them first.
        let mut opened_by_handshake = tls;
        loop {
            let n = if std::mem::take(&mut opened_by_handshake) {
                0
            } else {
                let polled = if poll.is_zero() { None } else { poll_read(socket, &mut buf, poll) };
                match polled.unwrap_or_else(|| socket.read(&mut buf)) {
                    Ok(0) => {
                        if let Some(why) = control.closing() {
                            return Some((ErrorCode::Unavailable, why));
                        }
                        return decoder.finish().err().map(|e| (e.error.code(), e.to_string()));
                    }
                    Ok(n) => n,
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        let now = Instant::now();
                        if decoder.buffered() > 0 && now >= last_byte + STALL_TIMEOUT {
                            let e = decoder.finish().expect_err("bytes are buffered");
                            let why = format!("no byte for {} s: {e}", STALL_TIMEOUT.as_secs());
                            return Some((ErrorCode::InvalidArgument, why));
                        }
                        let due = deadline(self.opened, last_frame);
                        if due.is_some_and(|at| now >= at) {
                            return expired(self.opened);
                        }
                        let stall = (decoder.buffered() > 0).then(|| last_byte + STALL_TIMEOUT);
                        let until = [due, stall].into_iter().flatten().min();
                        let _ = socket.set_read_timeout(Some(wait(until, now)));
                        continue;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => return None, // reset by the peer: nobody to tell
                }
            };
            last_byte = Instant::now();
            let mut peer_closed = false;
            if tls {
                plain.clear();
                peer_closed = match writer.open_tls(&buf[..n], &mut plain) {
                    Ok(closed) => closed,
                    Err(e) => {
                        info!("bridge: TLS failed: {e}");
                        return None; // the alert went out; no frame can follow it
                    }
                };
                decoder.feed(&plain);
            } else {
                decoder.feed(&buf[..n]);
            }
            let mut framed = false;
            loop {
                match decoder.next_frame() {
                    Ok(Some(frame)) => {
                        framed = true;
                        self.handle(frame);
                    }
                    Ok(None) => break,
                    Err(e) => return Some((e.error.code(), e.to_string())),
                }
            }
            if framed {
                last_frame = Instant::now();
            }
            // Bytes that never make the frame a session needs (a trickle, or
            // frames refused one by one) do not put the deadline off.
            if deadline(self.opened, last_frame).is_some_and(|at| last_byte >= at) {
                return expired(self.opened);
            }
            // Every frame that came in this read is queued before any is
            // stepped, so that a peer sending faster than the engine steps shows
            // up as the streams' backlogs, not as bytes waiting in the socket.
            for stream in self.touched.drain(..) {
                stream.drive();
            }
            if !writer.is_open() {
                return None; // the peer stopped reading
            }
            if peer_closed {
                return decoder.finish().err().map(|e| (e.error.code(), e.to_string()));
            }
        }
    }

    fn handle(&mut self, frame: Frame) {
        let Ok(message) = frame.message() else {
            unreachable!("the frame decoder checked the payload");
        };
        match message {
            Message::Open(open) => self.open(frame.stream, frame.round, open),
            Message::Round(events) => self.events(frame.stream, frame.shot, frame.round, events, false),
            Message::Final(events) => self.events(frame.stream, frame.shot, frame.round, events, true),
            Message::Close => self.close(frame.stream),
            Message::Ack(_) | Message::Decision(_) | Message::Error(_) => {
                unreachable!("the frame decoder refuses qecd's kinds from the FPGA")
            }
        }
    }

    /// An ERROR for `stream` that no session will send (the stream has none).
    fn refuse(&mut self, stream: StreamId, blame: Blame) {
        self.writer.send(&Message::Error(ErrorReply::new(blame.code, blame.message)), stream, blame.shot, blame.round);
        self.streams.insert(stream, StreamEntry::failed());
    }

    /// Ends a live stream with an ERROR blaming `blame`'s frame: it sends
    /// nothing more, and the ERROR is its last frame.
    fn fail_stream(&mut self, stream: StreamId, blame: Blame) {
        let Some(entry) = self.streams.get_mut(&stream) else { return };
        let Some(session) = entry.stream.take() else { return };
        entry.slot = None;
        session.abandon();
        session.span().in_scope(|| info!(code = ?blame.code, "stream ended: {}", blame.message));
        let error = Message::Error(ErrorReply::new(blame.code, blame.message));
        self.writer.send(&error, stream, blame.shot, blame.round);
    }

    fn open(&mut self, id: StreamId, rounds: u32, open: Open) {
        let whole = |code, message| Blame { code, shot: 0, round: 0, message };
        if self.streams.get(&id).is_some_and(StreamEntry::live) {
            // As a second `open` ends a gRPC stream.
            let why = format!("stream {id} is already open: CLOSE it before opening it again");
            return self.fail_stream(id, whole(ErrorCode::FailedPrecondition, why));
        }
        // A stream id that failed or closed may be opened again.
        if let Some(old) = self.streams.remove(&id) {
            self.end_later(old);
        }
        self.closing.retain(|t| !t.is_finished());
        if self.shared.stopping.load(Ordering::SeqCst) {
            let why = format!("OPEN of stream {id}: the server is shutting down and opens no more sessions");
            return self.refuse(id, whole(ErrorCode::Unavailable, why));
        }
        if rounds == 0 {
            let why = format!(
                "OPEN of stream {id}: the header's round field carries the stabilizer rounds per shot and must be at least 1"
            );
            return self.refuse(id, whole(ErrorCode::InvalidArgument, why));
        }
        let slot = match self.hub.admit() {
            Ok(slot) => slot,
            Err(fault) => return self.refuse(id, whole(error_code(fault.status), fault.message)),
        };
        let request = match open_request(rounds, open) {
            Ok(request) => request,
            Err(fault) => {
                return self
                    .refuse(id, whole(error_code(fault.status), format!("OPEN of stream {id}: {}", fault.message)));
            }
        };
        let writer = self.writer.clone();
        let sink: Sink = Arc::new(move |r| reply(&writer, id, rounds, r));
        let stream = match Stream::open_or_cancel(self.hub.clone(), request, sink, self.gone.clone()) {
            Ok(stream) => stream,
            Err(fault) => return self.refuse(id, whole(error_code(fault.status), fault.message)),
        };
        stream.span().in_scope(|| info!(bridge_stream = id, "opened over the bridge"));
        self.opened = true;
        self.streams.insert(id, StreamEntry { stream: Some(stream), slot: Some(slot), rounds });
    }

    /// A ROUND (`last` false) or FINAL frame.
    fn events(&mut self, id: StreamId, shot: u64, round: u32, events: Events, last: bool) {
        let kind = if last { "FINAL" } else { "ROUND" };
        let blame = |code, message| Blame { code, shot, round, message };
        let Some(entry) = self.streams.get_mut(&id) else {
            let why = format!("{kind} for stream {id}, which is not open: OPEN comes first");
            return self.refuse(id, blame(ErrorCode::FailedPrecondition, why));
        };
        if !entry.live() {
            return; // the stream already got its ERROR
        }
        if last && round != entry.rounds {
            let why = format!(
                "shot {shot}: FINAL carries round {round}, but it is round {}, after the last ROUND",
                entry.rounds
            );
            return self.fail_stream(id, blame(ErrorCode::FailedPrecondition, why));
        }
        let events = RoundEvents { shot, num_events: events.len(), events: events.packed().to_vec() };
        let input = if last { Input::Final(events) } else { Input::Round { round, events } };
        let Some(stream) = entry.stream.clone() else { return };
        if let Err(fault) = stream.input(input) {
            return self.fail_stream(id, blame(error_code(fault.status), fault.message));
        }
        if !self.touched.iter().any(|s| Arc::ptr_eq(s, &stream)) {
            self.touched.push(stream);
        }
    }

    fn close(&mut self, id: StreamId) {
        match self.streams.remove(&id) {
            Some(entry) => self.end_later(entry),
            None => {
                let why = format!("CLOSE for stream {id}, which is not open");
                self.writer.send(&Message::Error(ErrorReply::new(ErrorCode::FailedPrecondition, why)), id, 0, 0);
            }
        }
    }

    /// Ends a stream whose input is over, on a thread of its own: it answers
    /// the shots whose FINAL came, while this reader goes on with the others.
    fn end_later(&mut self, entry: StreamEntry) {
        if entry.stream.is_none() {
            return;
        }
        let ending = std::thread::Builder::new().name("qecd-bridge-close".into()).spawn(move || {
            if let Some(stream) = &entry.stream {
                stream.end();
            }
            drop(entry);
        });
        match ending {
            Ok(thread) => self.closing.push(thread),
            Err(e) => error!("bridge: cannot start a thread to end a stream: {e}"),
        }
    }
}

/// The session an OPEN asks for. OPEN has no field for the noise model:
/// the matching decoders use the service's default DEM (SI1000, p = 0.003).
fn open_request(rounds: u32, open: Open) -> Result<OpenRequest, Fault> {
    let decoder = match open.decoder {
        DecoderChoice::Neural => SessionDecoder::Neural,
        DecoderChoice::Matching => SessionDecoder::Matching,
        DecoderChoice::Correlated => SessionDecoder::Correlated,
        DecoderChoice::NeuralChecked => SessionDecoder::NeuralChecked,
        DecoderChoice::NeuralMatching => SessionDecoder::NeuralMatching,
    };
    let basis = match open.basis {
        frame_codec::Basis::X => Basis::X,
        frame_codec::Basis::Z => Basis::Z,
    };
    Ok(OpenRequest {
        code: CodeSpec::new(open.distance.into(), basis, rounds as usize, None, None)?,
        decoder,
        model: (!open.model.is_empty()).then_some(open.model),
        round_budget: (open.budget_us > 0).then(|| Duration::from_micros(u64::from(open.budget_us))),
        max_backlog: None,
    })
}

/// Sends a session's reply as a frame; `false` once the connection is gone.
fn reply(writer: &Writer, stream: StreamId, rounds: u32, reply: Reply) -> bool {
    match reply {
        Reply::Ack(a) => {
            let ack = Ack { step_latency_ns: saturate(a.step_latency), budget_met: a.budget_met };
            writer.send(&Message::Ack(ack), stream, a.shot, a.round)
        }
        Reply::Result(r) => match decision(&r) {
            Ok(d) => writer.send(&Message::Decision(d), stream, r.shot, rounds),
            // A bug here, not the peer's fault: the shot's answer is an ERROR, and the stream goes on.
            Err(e) => {
                error!("bridge: no DECISION for stream {stream} shot {}: {e}", r.shot);
                let failed = ErrorReply::new(ErrorCode::Internal, format!("shot {}: no DECISION: {e}", r.shot));
                writer.send(&Message::Error(failed), stream, r.shot, rounds)
            }
        },
        // INTERNAL naming the shot, in the FINAL's round: that shot's one answer (docs/fpga-bridge.md).
        Reply::Failed(f) => {
            let failed = ErrorReply::new(error_code(f.status), f.message);
            writer.send(&Message::Error(failed), stream, f.shot, rounds)
        }
        // A successful OPEN has no reply, and the shadow check's verdict
        // comes after the DECISION it would belong in (see docs/fpga-bridge.md).
        Reply::Opened(_) | Reply::Check(_) => writer.is_open(),
    }
}

/// The DECISION payload of a shot's result; an error when its prediction
/// has no observables or more than a DECISION carries.
pub fn decision(r: &ShotResult) -> Result<Decision, frame_codec::FrameError> {
    let decoder = match r.answered_by {
        decoder::DecoderKind::Matching => DecoderChoice::Matching,
        decoder::DecoderKind::Correlated => DecoderChoice::Correlated,
        decoder::DecoderKind::NeuralMatching => DecoderChoice::NeuralMatching,
        _ => DecoderChoice::Neural,
    };
    // A confidence the session could not compute says nothing either way.
    let confidence = if r.confidence.is_finite() { (r.confidence as f32).clamp(0.0, 1.0) } else { 0.5 };
    let flips = simulator_bridge::shots::pack_bits(&r.prediction);
    Ok(Decision {
        flips: frame_codec::Flips::from_packed(flips, r.prediction.len())?,
        confidence,
        latency_ns: saturate(r.decision_latency),
        decoder,
        fell_back: r.fallback.is_some(),
        baseline: None,
    })
}

fn saturate(d: Duration) -> u32 {
    u32::try_from(d.as_nanos()).unwrap_or(u32::MAX)
}

/// The ERROR code of a service status.
pub fn error_code(status: Status) -> ErrorCode {
    match status {
        Status::InvalidArgument => ErrorCode::InvalidArgument,
        Status::NotFound => ErrorCode::NotFound,
        Status::ResourceExhausted => ErrorCode::ResourceExhausted,
        Status::FailedPrecondition => ErrorCode::FailedPrecondition,
        Status::Internal => ErrorCode::Internal,
        Status::DeadlineExceeded => ErrorCode::DeadlineExceeded,
        Status::Unavailable => ErrorCode::Unavailable,
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_error_codes_with_grpc_numbers() {
        for (status, want, grpc) in [
            (Status::InvalidArgument, ErrorCode::InvalidArgument, 3),
            (Status::NotFound, ErrorCode::NotFound, 5),
            (Status::ResourceExhausted, ErrorCode::ResourceExhausted, 8),
            (Status::FailedPrecondition, ErrorCode::FailedPrecondition, 9),
            (Status::Internal, ErrorCode::Internal, 13),
            (Status::DeadlineExceeded, ErrorCode::DeadlineExceeded, 4),
            (Status::Unavailable, ErrorCode::Unavailable, 14),
        ] {
            assert_eq!(error_code(status), want);
            assert_eq!(want.code(), grpc);
        }
    }

    #[test]
    fn results_become_decisions_the_codec_accepts() {
        let mut result = ShotResult {
            shot: 9,
            prediction: vec![true, false, false, false, false, false, false, false, true],
            confidence: f64::NAN,
            answered_by: decoder::DecoderKind::Correlated,
            fallback: Some("budget".into()),
            decision_latency: Duration::from_nanos(1 << 40),
            model_version: None,
        };
        let d = decision(&result).unwrap();
        assert_eq!((d.flips.packed(), d.flips.len(), d.confidence, d.latency_ns), (&[1, 1][..], 9, 0.5, u32::MAX));
        assert_eq!((d.decoder, d.fell_back, d.baseline), (DecoderChoice::Correlated, true, None));
        let frame = Message::Decision(d).to_frame(3, 9, 5).unwrap();
        assert_eq!(frame.flags, frame_codec::flags::DECISION_FELL_BACK);
        assert_eq!(&frame.payload[..3], &[9, 1, 1], "the count, then the flips packed LSB-first");
        result.prediction.clear();
        assert!(decision(&result).unwrap_err().to_string().contains("observable count"));
    }
}
