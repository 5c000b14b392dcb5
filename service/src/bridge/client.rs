//! The FPGA's end of a bridge connection: frames out through a
//! [`FrameSink`] (queued, then written in one system call), replies in
//! through a [`FrameSource`], each on its own thread if need be.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result};
use frame_codec::{Frame, FrameDecoder, FrameEncoder, Message, Open, Sender, StreamId};

/// Connects to a bridge at `addr` with `TCP_NODELAY`; reading a reply gives
/// up after `read_timeout` without a byte.
pub fn connect(addr: SocketAddr, read_timeout: Duration) -> Result<(FrameSink, FrameSource)> {
    let socket = TcpStream::connect(addr).with_context(|| format!("cannot connect to the bridge at {addr}"))?;
    socket.set_nodelay(true)?;
    socket.set_read_timeout(Some(read_timeout))?;
    let reader = socket.try_clone()?;
    Ok((FrameSink::new(socket), FrameSource::new(reader)))
}

/// Sends frames as the FPGA: they are encoded into a buffer by
/// [`FrameSink::queue`] and leave together at [`FrameSink::flush`].
pub struct FrameSink {
    socket: TcpStream,
    encoder: FrameEncoder,
    out: Vec<u8>,
}

impl FrameSink {
    /// The sending side of `socket`.
    pub fn new(socket: TcpStream) -> Self {
        Self { socket, encoder: FrameEncoder::new(Sender::Fpga), out: Vec::new() }
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
        let written = self.socket.write_all(&self.out);
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
        self.socket.write_all(bytes)
    }

    /// CLOSEs `streams`, then half-closes the connection: the bridge sends
    /// what it owes, then closes its side.
    pub fn finish(mut self, streams: impl IntoIterator<Item = StreamId>) -> Result<()> {
        for stream in streams {
            self.queue(&Message::Close, stream, 0, 0)?;
        }
        let _ = self.flush();
        let _ = self.socket.shutdown(Shutdown::Write);
        Ok(())
    }
}

/// Reads the bridge's replies.
pub struct FrameSource {
    socket: TcpStream,
    decoder: FrameDecoder,
    buf: Vec<u8>,
}

impl FrameSource {
    /// The receiving side of `socket`.
    pub fn new(socket: TcpStream) -> Self {
        Self { socket, decoder: FrameDecoder::new(Sender::Qecd), buf: vec![0; 64 * 1024] }
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
            self.decoder.feed(&self.buf[..got]);
        }
    }
}
