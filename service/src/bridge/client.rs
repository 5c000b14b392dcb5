//! The FPGA's end of a bridge connection: frames out through a
//! [`FrameSink`] (queued, then written in one system call), replies in
//! through a [`FrameSource`], each on its own thread if need be.
//!
//! Over TLS ([`connect_tls`]) the two halves share the session behind a
//! mutex, as the bridge does (see [`super::tls`]): the sink seals and
//! writes under it, the source opens what it read under it.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use frame_codec::{Frame, FrameDecoder, FrameEncoder, Message, Open, Sender, StreamId};
use rustls::pki_types::ServerName;

use super::tls::{ClientTls, Tls, client_config};

/// A TLS session shared by a connection's sink and source.
type Shared = Arc<Mutex<Tls>>;

/// Connects to a bridge at `addr` with `TCP_NODELAY`; reading a reply gives
/// up after `read_timeout` without a byte.
pub fn connect(addr: SocketAddr, read_timeout: Duration) -> Result<(FrameSink, FrameSource)> {
    let socket = TcpStream::connect(addr).with_context(|| format!("cannot connect to the bridge at {addr}"))?;
    socket.set_nodelay(true)?;
    socket.set_read_timeout(Some(read_timeout))?;
    let reader = socket.try_clone()?;
    Ok((FrameSink::new(socket), FrameSource::new(reader)))
}

/// [`connect`] over TLS: the bridge's certificate must be signed by
/// `tls.ca` and name `server_name` (a DNS name or an IP address), and the
/// client presents `tls.identity` if the bridge asks for one. The handshake
/// gives up after `read_timeout` without a byte.
pub fn connect_tls(
    addr: SocketAddr,
    server_name: &str,
    read_timeout: Duration,
    tls: &ClientTls,
) -> Result<(FrameSink, FrameSource)> {
    let name = match server_name.parse::<IpAddr>() {
        Ok(ip) => ServerName::from(ip),
        Err(_) => ServerName::try_from(server_name.to_string())
            .with_context(|| format!("'{server_name}' is neither a DNS name nor an IP address"))?,
    };
    let mut session = Tls::client(&client_config(tls)?, name)?;
    let mut socket = TcpStream::connect(addr).with_context(|| format!("cannot connect to the bridge at {addr}"))?;
    socket.set_nodelay(true)?;
    socket.set_read_timeout(Some(read_timeout))?;
    session.handshake(&mut socket).with_context(|| format!("TLS handshake with the bridge at {addr}"))?;
    let shared = Arc::new(Mutex::new(session));
    let reader = socket.try_clone()?;
    let mut sink = FrameSink::new(socket);
    sink.tls = Some(shared.clone());
    let mut source = FrameSource::new(reader);
    source.tls = Some(shared);
    Ok((sink, source))
}

/// Writes `plain` on `socket`, sealed by `tls` when there is one.
fn write_sealed(socket: &mut TcpStream, tls: Option<&Shared>, plain: &[u8]) -> std::io::Result<()> {
    let Some(tls) = tls else { return socket.write_all(plain) };
    // Held while writing, so that the source's rare writes (a key update's
    // answer) cannot cut into a record.
    let mut tls = tls.lock().unwrap_or_else(PoisonError::into_inner);
    let mut sealed = Vec::with_capacity(plain.len() + 64);
    tls.seal(plain, &mut sealed)?;
    socket.write_all(&sealed)
}

/// Sends frames as the FPGA: they are encoded into a buffer by
/// [`FrameSink::queue`] and leave together at [`FrameSink::flush`].
pub struct FrameSink {
    socket: TcpStream,
    /// The TLS session, on a TLS connection.
    tls: Option<Shared>,
    encoder: FrameEncoder,
    out: Vec<u8>,
}

impl FrameSink {
    /// The sending side of `socket`.
    pub fn new(socket: TcpStream) -> Self {
        Self { socket, tls: None, encoder: FrameEncoder::new(Sender::Fpga), out: Vec::new() }
    }

    /// Encodes a frame into the buffer; returns its sequence number.
    pub fn queue(&mut self, message: &Message, stream: StreamId, shot: u64, round: u32) -> Result<u32> {
        let sequence = self.encoder.encode_message(message, stream, shot, round, &mut self.out)?;
        Ok(sequence)
    }

    /// Queues an OPEN of `stream` for shots of `rounds` stabilizer rounds.
    pub fn open(&mut self, stream: StreamId, open: Open, rounds: u32) -> Result<u32> {
        self.queue(&Message::Open(open), stream, 0, rounds)
    }

    /// Writes what is queued; an error once the bridge has closed the connection.
    pub fn flush(&mut self) -> std::io::Result<()> {
        let written = write_sealed(&mut self.socket, self.tls.as_ref(), &self.out);
        self.out.clear();
        written
    }

    /// Queues and writes one frame.
    pub fn send(&mut self, message: &Message, stream: StreamId, shot: u64, round: u32) -> Result<u32> {
        let sequence = self.queue(message, stream, shot, round)?;
        self.flush()?;
        Ok(sequence)
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> &[u8] {
        &self.out
    }

    /// Writes raw bytes (a test's corrupted frame, say).
    pub fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        write_sealed(&mut self.socket, self.tls.as_ref(), bytes)
    }

    /// CLOSEs `streams`, then half-closes the connection: the bridge sends
    /// what it owes, then closes its side.
    pub fn finish(mut self, streams: impl IntoIterator<Item = StreamId>) -> Result<()> {
        for stream in streams {
            self.queue(&Message::Close, stream, 0, 0)?;
        }
        let _ = self.flush();
        if let Some(tls) = &self.tls {
            let mut tls = tls.lock().unwrap_or_else(PoisonError::into_inner);
            let mut out = Vec::new();
            if tls.close(&mut out).is_ok() {
                let _ = self.socket.write_all(&out);
            }
        }
        let _ = self.socket.shutdown(Shutdown::Write);
        Ok(())
    }
}

/// Reads the bridge's replies.
pub struct FrameSource {
    socket: TcpStream,
    /// The TLS session, on a TLS connection.
    tls: Option<Shared>,
    decoder: FrameDecoder,
    buf: Vec<u8>,
    /// Opened plaintext, on a TLS connection.
    plain: Vec<u8>,
    /// How TLS failed, reported once the frames before the failure are read.
    failed: Option<String>,
}

impl FrameSource {
    /// The receiving side of `socket`.
    pub fn new(socket: TcpStream) -> Self {
        Self {
            socket,
            tls: None,
            decoder: FrameDecoder::new(Sender::Qecd),
            buf: vec![0; 64 * 1024],
            plain: Vec::new(),
            failed: None,
        }
    }

    /// The next frame; `Ok(None)` once the bridge closed the connection
    /// cleanly. An error names how the reply stream ended otherwise: a
    /// malformed or cut frame, a timeout, or a failed read.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, String> {
        loop {
            match self.decoder.next_frame() {
                Ok(Some(frame)) => return Ok(Some(frame)),
                Ok(None) => {}
                Err(e) => return Err(format!("bad frame from the bridge: {e}")),
            }
            if let Some(failed) = &self.failed {
                return Err(failed.clone());
            }
            let got = match self.socket.read(&mut self.buf) {
                Ok(0) => {
                    return match self.decoder.finish() {
                        Ok(()) => Ok(None),
                        Err(e) => Err(format!("the bridge's reply stream ends badly: {e}")),
                    };
                }
                Ok(got) => got,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err("gave up waiting: no reply within the read timeout".into());
                }
                Err(e) => return Err(format!("reading replies failed: {e}")),
            };
            let Some(tls) = &self.tls else {
                self.decoder.feed(&self.buf[..got]);
                continue;
            };
            let mut tls = tls.lock().unwrap_or_else(PoisonError::into_inner);
            let (mut out, plain) = (Vec::new(), &mut self.plain);
            plain.clear();
            let opened = tls.open(&self.buf[..got], plain, &mut out);
            if !out.is_empty() {
                let _ = self.socket.write_all(&out);
            }
            drop(tls);
            self.decoder.feed(&self.plain);
            if let Err(e) = opened {
                self.failed = Some(format!("TLS with the bridge failed: {e}"));
            }
        }
    }
}
