//! The FPGA bridge listener (docs/fpga-bridge.md): binary frames over TCP,
//! one decode session per stream id, any number of streams per connection.
//!
//! The bridge is a second transport for [`Stream`], next to gRPC, and it
//! decodes nothing itself. Each connection has one reader thread, which
//! maps frames straight onto the session's [`Input`]s.
//! The replies of every stream go back through one [`FrameEncoder`] behind a
//! mutex, so the connection's sequence numbers stay in order. It is all plain
//! threads and blocking sockets with `TCP_NODELAY`: a frame costs one read and
//! one write system call, and no async runtime sits between the socket and the
//! decoder.
//!
//! The session checks the conversation (rounds in order, event counts); the
//! reader checks only what belongs to the frames themselves (a stream id
//! that is not open, FINAL's round field). A fault of the session ends its
//! stream with an ERROR that repeats the shot and round of the frame at
//! fault, after every reply the stream owed before that frame.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use frame_codec::{
    Ack, Decision, DecoderChoice, ErrorCode, ErrorReply, Events, Frame, FrameDecoder, FrameEncoder, Message, Open,
    Sender as End, StreamId,
};
use simulator_bridge::Basis;
use tracing::{error, info, warn};

use crate::api::{CodeSpec, Fault, Input, OpenRequest, Reply, RoundEvents, SessionDecoder, ShotResult, Sink, Status};
use crate::session::Stream;
use crate::{Hub, StreamSlot};

/// A frame half received for this long without another byte is a framing error.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(5);
/// A peer that takes no reply bytes for this long is treated as gone (its
/// streams stop), so that no session blocks forever on a full socket.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After a connection-level ERROR, how long the peer's further bytes are read
/// and dropped, so that closing the socket does not reset the connection
/// before the peer has read the ERROR.
const DRAIN_AFTER_ERROR: Duration = Duration::from_secs(1);

/// A running bridge listener.
pub struct Bridge {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

/// What the accept loop and the connections share.
struct Shared {
    /// Set by [`Bridge::shutdown`]: take no more connections.
    stopping: AtomicBool,
    /// Connections open now.
    connections: Mutex<usize>,
    /// Signalled when a connection ends.
    ended: Condvar,
}

impl Bridge {
    /// Listens on `addr` (port 0 picks a free one) and serves `hub` to every connection.
    pub fn start(hub: Arc<Hub>, addr: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr} (--bridge-listen)"))?;
        let addr = listener.local_addr()?;
        let shared =
            Arc::new(Shared { stopping: AtomicBool::new(false), connections: Mutex::new(0), ended: Condvar::new() });
        let accept = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("qecd-bridge".into())
                .spawn(move || accept_loop(hub, listener, shared))
                .context("cannot start the bridge's accept thread")?
        };
        Ok(Self { addr, shared, accept: Some(accept) })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Takes no more connections, then waits until the open ones end (their
    /// peers close them), as the gRPC service waits for its open streams.
    pub fn shutdown(mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop with a connection of our own.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(if wake.is_ipv4() { Ipv4Addr::LOCALHOST.into() } else { Ipv6Addr::LOCALHOST.into() });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        let mut open = self.shared.connections.lock().expect("bridge connections");
        if *open > 0 {
            info!("waiting for {} bridge connection(s) to close", *open);
        }
        while *open > 0 {
            open = self.shared.ended.wait(open).expect("bridge connections");
        }
    }
}

fn accept_loop(hub: Arc<Hub>, listener: TcpListener, shared: Arc<Shared>) {
    for socket in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let socket = match socket {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors, say: do not spin on it.
                warn!("bridge: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        *shared.connections.lock().expect("bridge connections") += 1;
        let (hub, done) = (hub.clone(), shared.clone());
        let spawned = std::thread::Builder::new().name("qecd-bridge-conn".into()).spawn(move || {
            serve_connection(hub, socket);
            *done.connections.lock().expect("bridge connections") -= 1;
            done.ended.notify_all();
        });
        if let Err(e) = spawned {
            error!("bridge: cannot start a connection's thread: {e}");
            *shared.connections.lock().expect("bridge connections") -= 1;
            shared.ended.notify_all();
        }
    }
}

/// The sending half of a connection: every frame of every stream goes through it.
///
/// Frames are mostly sent by the thread that stepped the neural engine,
/// while it holds the engine, so a send must never block: it writes what
/// the socket takes at once (`MSG_DONTWAIT`) and leaves the rest to the
/// connection's flusher thread, which waits on the socket instead.
struct Writer {
    state: Mutex<WriterState>,
    /// Signalled when bytes are left for the flusher, or the writer closes.
    wake: Condvar,
}

struct WriterState {
    socket: TcpStream,
    encoder: FrameEncoder,
    /// Scratch buffer for one encoded frame.
    buf: Vec<u8>,
    /// Bytes the socket did not take yet, in order; the flusher sends them.
    backlog: Vec<u8>,
    /// The flusher holds bytes taken from the backlog and not yet sent.
    flushing: bool,
    /// False once the connection failed or was closed: nothing more is sent.
    open: bool,
}

/// A peer that leaves this many reply bytes unread is treated as gone.
const MAX_UNSENT: usize = 64 << 20;

impl Writer {
    fn new(socket: TcpStream) -> Self {
        let state = WriterState {
            socket,
            encoder: FrameEncoder::new(End::Qecd),
            buf: Vec::new(),
            backlog: Vec::new(),
            flushing: false,
            open: true,
        };
        Self { state: Mutex::new(state), wake: Condvar::new() }
    }

    fn lock(&self) -> MutexGuard<'_, WriterState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends one frame, without blocking; `false` once the connection is gone.
    fn send(&self, message: &Message, stream: StreamId, shot: u64, round: u32) -> bool {
        let mut state = self.lock();
        let WriterState { socket, encoder, buf, backlog, flushing, open } = &mut *state;
        if !*open {
            return false;
        }
        buf.clear();
        if let Err(e) = encoder.encode_message(message, stream, shot, round, buf) {
            // A reply the codec refuses is a bug here, not the peer's fault: skip it, keep the connection.
            error!("bridge: cannot encode a {} frame for stream {stream}: {e}", message.kind());
            return true;
        }
        let mut sent = 0;
        if backlog.is_empty() && !*flushing {
            match send_now(socket, buf) {
                Ok(n) => sent = n,
                Err(_) => {
                    *open = false;
                    let _ = socket.shutdown(Shutdown::Both);
                    self.wake.notify_all();
                    return false;
                }
            }
        }
        if sent < buf.len() {
            backlog.extend_from_slice(&buf[sent..]);
            if backlog.len() > MAX_UNSENT {
                warn!("bridge: the peer left {MAX_UNSENT} bytes of replies unread; closing the connection");
                *open = false;
                let _ = socket.shutdown(Shutdown::Both);
            }
            self.wake.notify_all();
        }
        *open
    }

    /// The flusher thread's loop: sends the backlog on `socket` (a clone of
    /// the writer's), waiting on it, until the writer closes.
    fn flush_loop(&self, mut socket: TcpStream) {
        let mut state = self.lock();
        loop {
            while state.open && state.backlog.is_empty() {
                state = self.wake.wait(state).unwrap_or_else(PoisonError::into_inner);
            }
            if state.backlog.is_empty() {
                return; // closed, everything sent
            }
            let bytes = std::mem::take(&mut state.backlog);
            state.flushing = true;
            drop(state);
            let written = socket.write_all(&bytes);
            state = self.lock();
            state.flushing = false;
            if written.is_err() {
                state.open = false;
                state.backlog.clear();
                let _ = state.socket.shutdown(Shutdown::Both);
                return;
            }
        }
    }

    /// Waits until the flusher has sent everything queued (or the connection failed).
    fn wait_flushed(&self) {
        let mut state = self.lock();
        while state.open && (state.flushing || !state.backlog.is_empty()) {
            state = self.wake.wait_timeout(state, Duration::from_millis(10)).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    /// Sends a connection-level ERROR (stream, shot and round 0) as the last
    /// frame, and shuts down the sending side once it is out.
    fn fail(&self, code: ErrorCode, message: String) {
        self.send(&Message::Error(ErrorReply::new(code, message)), 0, 0, 0);
        self.wait_flushed();
        let mut state = self.lock();
        state.open = false;
        let _ = state.socket.shutdown(Shutdown::Write);
        self.wake.notify_all();
    }

    fn is_open(&self) -> bool {
        self.lock().open
    }

    /// Sends what is left, then closes the connection.
    fn close(&self) {
        self.wait_flushed();
        let mut state = self.lock();
        state.open = false;
        let _ = state.socket.shutdown(Shutdown::Both);
        self.wake.notify_all();
    }
}

/// Reads what has arrived, polling the socket without blocking for up to
/// `poll`; `None` if nothing came in that time (then block on it).
fn poll_read(socket: &TcpStream, buf: &mut [u8], poll: Duration) -> Option<std::io::Result<usize>> {
    use std::os::fd::AsRawFd;
    let until = Instant::now() + poll;
    loop {
        // SAFETY: `buf` is a live, writable buffer of `buf.len()` bytes, and
        // the descriptor belongs to `socket`, open for this call.
        let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n >= 0 {
            return Some(Ok(n as usize));
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::Interrupted if Instant::now() < until => std::hint::spin_loop(),
            ErrorKind::WouldBlock | ErrorKind::Interrupted => return None,
            _ => return Some(Err(e)),
        }
    }
}

/// Writes what the socket takes without waiting: the byte count, 0 when its
/// buffer is full.
fn send_now(socket: &TcpStream, bytes: &[u8]) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: `bytes` is a live, initialized buffer of `bytes.len()`
        // bytes, and the descriptor belongs to `socket`, open for this call.
        let n = unsafe {
            libc::send(socket.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            ErrorKind::WouldBlock => return Ok(0),
            ErrorKind::Interrupted => continue,
            _ => return Err(e),
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
}

/// Reads and handles frames until the peer stops sending or a framing error;
/// then lets the streams answer what they owe and closes the connection.
fn serve_connection(hub: Arc<Hub>, mut socket: TcpStream) {
    let (writer, flush_socket) = match (socket.try_clone(), socket.try_clone()) {
        (Ok(a), Ok(b)) => (Arc::new(Writer::new(a)), b),
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
    let _ = socket.set_read_timeout(Some(STALL_TIMEOUT));
    let _ = socket.set_write_timeout(Some(WRITE_TIMEOUT));
    let mut conn =
        Connection { hub, writer: writer.clone(), streams: HashMap::new(), closing: Vec::new(), touched: Vec::new() };
    let mut decoder = FrameDecoder::new(End::Fpga);
    let mut buf = vec![0u8; 64 * 1024];
    let poll = conn.hub.options.bridge_poll;
    let failure = 'read: loop {
        let polled = if poll.is_zero() { None } else { poll_read(&socket, &mut buf, poll) };
        let n = match polled.unwrap_or_else(|| socket.read(&mut buf)) {
            Ok(0) => break decoder.finish().err().map(|e| (e.error.code(), e.to_string())),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if decoder.buffered() == 0 {
                    continue;
                }
                let e = decoder.finish().expect_err("bytes are buffered");
                let why = format!("no byte for {} s: {e}", STALL_TIMEOUT.as_secs());
                break Some((ErrorCode::InvalidArgument, why));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break None, // reset by the peer: nobody to tell
        };
        decoder.feed(&buf[..n]);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => conn.handle(frame),
                Ok(None) => break,
                Err(e) => break 'read Some((e.error.code(), e.to_string())),
            }
        }
        // Every frame that came in this read is queued before any is
        // stepped, so that a peer sending faster than the engine steps shows
        // up as the streams' backlogs, not as bytes waiting in the socket.
        for stream in conn.touched.drain(..) {
            stream.drive();
        }
        if !writer.is_open() {
            break None; // the peer stopped reading
        }
    };
    if let Some((code, message)) = failure {
        // The shots in flight get no answers after a connection-level ERROR.
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

/// Reads and drops what the peer still sends, until it closes or for [`DRAIN_AFTER_ERROR`].
fn drain(socket: &mut TcpStream) {
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

impl Connection {
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
        let stream = match Stream::open(self.hub.clone(), request, sink) {
            Ok(stream) => stream,
            Err(fault) => return self.refuse(id, whole(error_code(fault.status), fault.message)),
        };
        stream.span().in_scope(|| info!(bridge_stream = id, "opened over the bridge"));
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
    fn a_peer_that_stops_reading_never_blocks_a_send() {
        use std::os::fd::AsRawFd;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, _) = listener.accept().unwrap();
        let small: libc::c_int = 4096;
        // SAFETY: SO_SNDBUF takes a c_int, passed by pointer with its size, on a live socket.
        let set = unsafe {
            libc::setsockopt(
                ours.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&small as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(set, 0);
        let writer = Arc::new(Writer::new(ours));
        let flusher = {
            let (writer, socket) = (writer.clone(), writer.lock().socket.try_clone().unwrap());
            std::thread::spawn(move || writer.flush_loop(socket))
        };
        // Far more than the socket buffers hold, with nobody reading: a
        // blocking send would hang here.
        let frames = 50_000u64;
        let ack = Message::Ack(Ack { step_latency_ns: 1, budget_met: true });
        for shot in 0..frames {
            assert!(writer.send(&ack, 1, shot, 0));
        }
        assert!(!writer.lock().backlog.is_empty() || writer.lock().flushing, "the socket took everything");
        // Once the peer reads, every frame arrives, in order.
        let reader = std::thread::spawn(move || {
            let mut decoder = FrameDecoder::new(End::Qecd);
            let (mut buf, mut next) = (vec![0u8; 1 << 16], 0u64);
            loop {
                let n = peer.read(&mut buf).unwrap();
                if n == 0 {
                    return next;
                }
                decoder.feed(&buf[..n]);
                while let Some(frame) = decoder.next_frame().unwrap() {
                    assert_eq!(frame.shot, next);
                    next += 1;
                }
            }
        });
        writer.close();
        flusher.join().unwrap();
        assert_eq!(reader.join().unwrap(), frames);
    }

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
