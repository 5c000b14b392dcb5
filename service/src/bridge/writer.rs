//! The sending half of a bridge connection, and the raw socket calls that
//! must not block.

use std::io::{ErrorKind, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use frame_codec::{ErrorCode, ErrorReply, FrameEncoder, Message, Sender as End, StreamId};
use tracing::{error, warn};

use super::tls::Tls;

/// A peer that leaves this many reply bytes unread is treated as gone.
const MAX_UNSENT: usize = 64 << 20;

/// The sending half of a connection: every frame of every stream goes through it.
///
/// Frames are mostly sent by the thread that stepped the neural engine,
/// while it holds the engine, so a send must never block: it writes what
/// the socket takes at once (`MSG_DONTWAIT`) and leaves the rest to the
/// connection's flusher thread, which waits on the socket instead.
///
/// On a TLS connection the session lives here too, behind the same lock
/// (see [`super::tls`]): frames are sealed as they are encoded, and the
/// reader opens what it reads through [`Writer::open_tls`].
pub(super) struct Writer {
    state: Mutex<WriterState>,
    /// Signalled when bytes are left for the flusher, or the writer closes.
    wake: Condvar,
}

pub(super) struct WriterState {
    pub(super) socket: TcpStream,
    encoder: FrameEncoder,
    /// The connection's TLS session, if it speaks TLS.
    tls: Option<Tls>,
    /// Scratch buffer for one encoded frame.
    buf: Vec<u8>,
    /// Scratch buffer for its TLS records.
    sealed: Vec<u8>,
    /// Bytes the socket did not take yet, in order; the flusher sends them.
    pub(super) backlog: Vec<u8>,
    /// The flusher holds bytes taken from the backlog and not yet sent.
    pub(super) flushing: bool,
    /// False once the connection failed or was closed: nothing more is sent.
    open: bool,
}

impl WriterState {
    /// Sends `bytes` (already sealed) after the backlog, without blocking.
    fn push(&mut self, bytes: &[u8], wake: &Condvar) {
        if !self.open || bytes.is_empty() {
            return;
        }
        let mut sent = 0;
        if self.backlog.is_empty() && !self.flushing {
            match send_now(&self.socket, bytes) {
                Ok(n) => sent = n,
                Err(_) => return self.fail_now(wake),
            }
        }
        if sent < bytes.len() {
            self.backlog.extend_from_slice(&bytes[sent..]);
            if self.backlog.len() > MAX_UNSENT {
                warn!("bridge: the peer left {MAX_UNSENT} bytes of replies unread; closing the connection");
                self.fail_now(wake);
            }
            wake.notify_all();
        }
    }

    /// The connection failed: nothing more is sent.
    fn fail_now(&mut self, wake: &Condvar) {
        self.open = false;
        self.backlog.clear();
        let _ = self.socket.shutdown(Shutdown::Both);
        wake.notify_all();
    }

    /// Sends TLS's close_notify, if the connection speaks TLS.
    fn close_notify(&mut self, wake: &Condvar) {
        let Some(tls) = self.tls.as_mut() else { return };
        let mut out = std::mem::take(&mut self.sealed);
        out.clear();
        if tls.close(&mut out).is_ok() {
            self.push(&out, wake);
        }
        self.sealed = out;
    }
}

impl Writer {
    /// The sending half of `socket`, sealing with `tls` when given (after its handshake).
    pub(super) fn new(socket: TcpStream, tls: Option<Tls>) -> Self {
        let state = WriterState {
            socket,
            encoder: FrameEncoder::new(End::Qecd),
            tls,
            buf: Vec::new(),
            sealed: Vec::new(),
            backlog: Vec::new(),
            flushing: false,
            open: true,
        };
        Self { state: Mutex::new(state), wake: Condvar::new() }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, WriterState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends one frame, without blocking; `false` once the connection is gone.
    pub(super) fn send(&self, message: &Message, stream: StreamId, shot: u64, round: u32) -> bool {
        let mut state = self.lock();
        if !state.open {
            return false;
        }
        let mut buf = std::mem::take(&mut state.buf);
        buf.clear();
        match state.encoder.encode_message(message, stream, shot, round, &mut buf) {
            Ok(_) => self.push_frame(&mut state, &buf),
            // A reply the codec refuses is a bug here, not the peer's fault: skip it, keep the connection.
            Err(e) => error!("bridge: cannot encode a {} frame for stream {stream}: {e}", message.kind()),
        }
        state.buf = buf;
        state.open
    }

    /// Seals an encoded frame if need be, and sends it.
    fn push_frame(&self, state: &mut WriterState, frame: &[u8]) {
        let Some(tls) = state.tls.as_mut() else {
            return state.push(frame, &self.wake);
        };
        let mut sealed = std::mem::take(&mut state.sealed);
        sealed.clear();
        match tls.seal(frame, &mut sealed) {
            Ok(()) => state.push(&sealed, &self.wake),
            Err(e) => {
                error!("bridge: TLS cannot seal a frame: {e}");
                state.fail_now(&self.wake);
            }
        }
        state.sealed = sealed;
    }

    /// Opens the TLS records in `cipher` (bytes the reader read), appending
    /// their plaintext to `plain`; `Ok(true)` once the peer sent
    /// close_notify. Without TLS, `cipher` is the plaintext.
    pub(super) fn open_tls(&self, cipher: &[u8], plain: &mut Vec<u8>) -> std::io::Result<bool> {
        let mut state = self.lock();
        let Some(tls) = state.tls.as_mut() else {
            plain.extend_from_slice(cipher);
            return Ok(false);
        };
        let mut out = Vec::new();
        let opened = tls.open(cipher, plain, &mut out);
        state.push(&out, &self.wake);
        opened
    }

    /// Whether the connection speaks TLS.
    pub(super) fn is_tls(&self) -> bool {
        self.lock().tls.is_some()
    }

    /// The flusher thread's loop: sends the backlog on `socket` (a clone of
    /// the writer's), waiting on it, until the writer closes.
    pub(super) fn flush_loop(&self, mut socket: TcpStream) {
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
                state.fail_now(&self.wake);
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
    pub(super) fn fail(&self, code: ErrorCode, message: String) {
        self.send(&Message::Error(ErrorReply::new(code, message)), 0, 0, 0);
        self.finish(Shutdown::Write);
    }

    pub(super) fn is_open(&self) -> bool {
        self.lock().open
    }

    /// Sends what is left, then closes the connection.
    pub(super) fn close(&self) {
        self.finish(Shutdown::Both);
    }

    /// Sends what is left (and TLS's close_notify), then sends nothing more
    /// and shuts the socket down `how`.
    fn finish(&self, how: Shutdown) {
        self.lock().close_notify(&self.wake);
        self.wait_flushed();
        let mut state = self.lock();
        state.open = false;
        let _ = state.socket.shutdown(how);
        self.wake.notify_all();
    }
}

/// Reads what has arrived, polling the socket without blocking for up to
/// `poll`; `None` if nothing came in that time (then block on it).
pub(super) fn poll_read(socket: &TcpStream, buf: &mut [u8], poll: Duration) -> Option<std::io::Result<usize>> {
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
pub(super) fn send_now(socket: &TcpStream, bytes: &[u8]) -> std::io::Result<usize> {
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

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::TcpListener;
    use std::sync::Arc;

    use frame_codec::{Ack, FrameDecoder};

    use super::*;

    #[test]
    fn a_peer_that_stops_reading_never_blocks_a_send() {
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
        let writer = Arc::new(Writer::new(ours, None));
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
}
