//! The FPGA bridge listener (docs/fpga-bridge.md): binary frames over TCP,
//! one decode session per stream id, any number of streams per connection.
//!
//! The bridge is a second transport for [`Stream`](crate::session::Stream),
//! next to gRPC, and it decodes nothing itself. This module is the listener:
//! it accepts connections up to `--max-bridge-connections`, gives each a
//! thread of its own (the `connection` module), and on shutdown stops
//! accepting, lets the open connections finish until a deadline, then ends
//! the rest with UNAVAILABLE. It is all plain threads and blocking sockets
//! with `TCP_NODELAY`: a frame costs one read and one write system call, and
//! no async runtime sits between the socket and the decoder.
//!
//! Every bound is held without a thread of its own: a connection over the
//! limit is answered by the accept loop with one non-blocking write, and the
//! handshake, idle and stall timeouts are the reader's socket read timeout.
//! Only a refusal over TLS needs a thread (for its handshake), and at most
//! [`MAX_REFUSING`] of those run at once.

use std::collections::HashMap;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use frame_codec::{ErrorCode, ErrorReply, FrameEncoder, Message, Sender as End};
use rustls::ServerConfig;
use tracing::{error, info, warn};

use super::connection::{self, Accepted};
use super::tls::{self, Tls};
use super::writer::send_now;
use crate::{Hub, TlsFiles};

pub use super::connection::{decision, error_code};

/// A frame half received for this long without another byte is a framing error.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(5);
/// A peer that takes no reply bytes for this long is treated as gone (its
/// streams stop), so that no session blocks forever on a full socket.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most refusals over TLS (each a handshake on a short-lived thread) at once;
/// past it a connection over the limit is closed without a word.
pub const MAX_REFUSING: usize = 8;
/// After the drain deadline, how long the connections still open get to send
/// their UNAVAILABLE before their sockets are shut down under them.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// A running bridge listener.
pub struct Bridge {
    addr: SocketAddr,
    /// A handle on the listening socket, to shut it down.
    listener: TcpListener,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

/// What the accept loop, the connections and [`Bridge::shutdown`] share.
pub(super) struct Shared {
    /// Set when the listener stops accepting: new sessions get UNAVAILABLE.
    pub(super) stopping: AtomicBool,
    /// The connections open now, by number.
    connections: Mutex<HashMap<u64, Arc<Control>>>,
    /// Signalled when a connection ends.
    ended: Condvar,
    /// TLS refusals running now.
    refusing: AtomicUsize,
}

impl Shared {
    fn connections(&self) -> MutexGuard<'_, HashMap<u64, Arc<Control>>> {
        self.connections.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What the listener can do to one of its connections.
pub(super) struct Control {
    /// A handle on the connection's socket.
    socket: TcpStream,
    /// Why the listener closes it, once it does: the reader sends this as a
    /// connection-level UNAVAILABLE.
    closing: Mutex<Option<String>>,
}

impl Control {
    /// Why the listener is closing this connection, if it is.
    pub(super) fn closing(&self) -> Option<String> {
        self.closing.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Asks the connection to end with UNAVAILABLE `why`: its reader wakes
    /// up to an end of input and sends it.
    fn close(&self, why: &str) {
        *self.closing.lock().unwrap_or_else(PoisonError::into_inner) = Some(why.to_string());
        let _ = self.socket.shutdown(Shutdown::Read);
    }
}

impl Bridge {
    /// Listens on `addr` (port 0 picks a free one) and serves `hub` to every connection.
    pub fn start(hub: Arc<Hub>, addr: SocketAddr) -> Result<Self> {
        Self::listen(hub, addr, None)
    }

    /// [`Bridge::start`] over TLS with `files` (`qecd serve --bridge-tls`):
    /// with a client CA, a peer without a certificate it signed is refused
    /// in the handshake, which makes mutual TLS the bridge's authentication.
    pub fn start_tls(hub: Arc<Hub>, addr: SocketAddr, files: &TlsFiles) -> Result<Self> {
        Self::listen(hub, addr, Some(tls::server_config(files)?))
    }

    fn listen(hub: Arc<Hub>, addr: SocketAddr, tls: Option<Arc<ServerConfig>>) -> Result<Self> {
        let listener = TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr} (--bridge-listen)"))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            connections: Mutex::new(HashMap::new()),
            ended: Condvar::new(),
            refusing: AtomicUsize::new(0),
        });
        let handle = listener.try_clone()?;
        let accept = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("qecd-bridge".into())
                .spawn(move || accept_loop(hub, listener, tls, shared))
                .context("cannot start the bridge's accept thread")?
        };
        Ok(Self { addr, listener: handle, shared, accept: Some(accept) })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Takes no more connections, at once: a connect from now on is refused.
    /// Open connections go on, but their new sessions get UNAVAILABLE.
    pub fn stop_accepting(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Shutting a listening socket down wakes the accept loop (it gets an
        // error and sees `stopping`) and resets connects from then on.
        // SAFETY: shutdown(2) on a descriptor this handle owns, open for the call.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
    }

    /// Stops accepting, lets the open connections finish (their peers close
    /// them) for up to `deadline`, then sends each one still open a
    /// connection-level ERROR UNAVAILABLE and closes it. Returns within
    /// `deadline` and a grace of 0.5 s.
    pub fn shutdown(mut self, deadline: Duration) {
        self.stop_accepting();
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        let until = Instant::now() + deadline;
        let mut open = self.shared.connections();
        if !open.is_empty() {
            info!("waiting up to {deadline:?} for {} bridge connection(s) to close", open.len());
        }
        open = self.wait_until(open, until);
        if open.is_empty() {
            return;
        }
        let why = format!("the server is shutting down (--drain-timeout {})", deadline.as_secs_f64());
        warn!("closing {} bridge connection(s) still open: {why}", open.len());
        for control in open.values() {
            control.close(&why);
        }
        open = self.wait_until(open, Instant::now() + CLOSE_GRACE);
        // Peers that do not even take their ERROR are cut off.
        for control in open.values() {
            let _ = control.socket.shutdown(Shutdown::Both);
        }
    }

    /// Waits until no connection is open or `until`.
    fn wait_until<'a>(
        &'a self,
        mut open: MutexGuard<'a, HashMap<u64, Arc<Control>>>,
        until: Instant,
    ) -> MutexGuard<'a, HashMap<u64, Arc<Control>>> {
        while !open.is_empty() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            open = self.shared.ended.wait_timeout(open, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        open
    }
}

fn accept_loop(hub: Arc<Hub>, listener: TcpListener, tls: Option<Arc<ServerConfig>>, shared: Arc<Shared>) {
    let mut next = 0u64;
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
        let since = Instant::now();
        let max = hub.options.max_bridge_connections;
        let mut open = shared.connections();
        if open.len() >= max {
            drop(open);
            let why = format!("this bridge already has {max} open connections (--max-bridge-connections {max})");
            refuse(socket, &tls, &hub, &shared, why);
            continue;
        }
        let control = match socket.try_clone() {
            Ok(handle) => Arc::new(Control { socket: handle, closing: Mutex::new(None) }),
            Err(e) => {
                error!("bridge: cannot use a new connection: {e}");
                continue;
            }
        };
        let id = next;
        next += 1;
        open.insert(id, control.clone());
        drop(open);
        let accepted = Accepted { hub: hub.clone(), socket, tls: tls.clone(), since, shared: shared.clone(), control };
        let done = shared.clone();
        let spawned = std::thread::Builder::new().name("qecd-bridge-conn".into()).spawn(move || {
            connection::serve(accepted);
            done.connections().remove(&id);
            done.ended.notify_all();
        });
        if let Err(e) = spawned {
            error!("bridge: cannot start a connection's thread: {e}");
            shared.connections().remove(&id);
            shared.ended.notify_all();
        }
    }
}

/// Answers a connection over the limit with a connection-level
/// RESOURCE_EXHAUSTED, and closes it. In plain TCP that is one write that
/// does not wait, from the accept loop; over TLS it takes a handshake, on a
/// short-lived thread bounded by the handshake timeout.
fn refuse(socket: TcpStream, tls: &Option<Arc<ServerConfig>>, hub: &Hub, shared: &Arc<Shared>, why: String) {
    let mut frame = Vec::new();
    let error = Message::Error(ErrorReply::new(ErrorCode::ResourceExhausted, why));
    if let Err(e) = FrameEncoder::new(End::Qecd).encode_message(&error, 0, 0, 0, &mut frame) {
        error!("bridge: cannot encode a refusal: {e}");
        return;
    }
    let Some(config) = tls else {
        let _ = send_now(&socket, &frame);
        let _ = socket.shutdown(Shutdown::Write);
        return;
    };
    if shared.refusing.fetch_add(1, Ordering::SeqCst) >= MAX_REFUSING {
        shared.refusing.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    let config = config.clone();
    let limit = connection::limit(hub.options.handshake_timeout).unwrap_or(STALL_TIMEOUT).min(STALL_TIMEOUT);
    let spawned = std::thread::Builder::new().name("qecd-bridge-refuse".into()).spawn({
        let shared = shared.clone();
        move || {
            let mut socket = socket;
            let _ = socket.set_read_timeout(Some(limit));
            let _ = socket.set_write_timeout(Some(limit));
            let mut out = Vec::new();
            let sent = Tls::server(&config).and_then(|mut tls| {
                tls.handshake(&mut socket)?;
                tls.seal(&frame, &mut out)?;
                tls.close(&mut out)?;
                Ok(())
            });
            if sent.is_ok() {
                use std::io::Write;
                let _ = socket.write_all(&out);
                let _ = socket.shutdown(Shutdown::Write);
                connection::drain(&mut socket);
            }
            shared.refusing.fetch_sub(1, Ordering::SeqCst);
        }
    });
    if spawned.is_err() {
        shared.refusing.fetch_sub(1, Ordering::SeqCst);
    }
}
