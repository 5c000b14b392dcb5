//! The frame header: magic, version, the 32-byte layout, flags, kinds and
//! senders, and [`Frame`], the header's fields with the raw payload.
//!
//! Header layout (all little-endian): magic (0..4), version (4), kind (5),
//! flags (6..8), stream (8..12), sequence (12..16), shot (16..24), round
//! (24..28), payload length (28..32); then the payload and its CRC32C.

use std::fmt;

use crate::crc::crc32c;
use crate::error::FrameError;
use crate::message::Message;

/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"QECF";
/// The format version this codec reads and writes.
pub const VERSION: u8 = 1;
/// Bytes of header before the payload.
pub const HEADER_LEN: usize = 32;
/// Bytes of CRC32C after the payload.
pub const CRC_LEN: usize = 4;
/// The largest payload, in bytes. A header that declares more is an error
/// before any byte of the payload is buffered.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// Identifies a session (one model, distance and basis) within a connection;
/// the FPGA picks it in OPEN, and every later frame of the session repeats it.
pub type StreamId = u32;

/// Per connection and direction: 0 for the first frame, then +1 per frame,
/// wrapping from `u32::MAX` to 0.
pub type SequenceNumber = u32;

/// Flag bits of the header, by frame kind. Bits not listed for a kind are reserved and must be 0.
pub mod flags {
    /// ACK: the step fitted the session's per-round budget.
    pub const ACK_BUDGET_MET: u16 = 1 << 0;
    /// DECISION: the neural decoder missed its budget and correlated matching answered.
    pub const DECISION_FELL_BACK: u16 = 1 << 0;
    /// DECISION: the correlated-matching baseline agreed with the answer (only with `DECISION_BASELINE_CHECKED`).
    pub const DECISION_BASELINE_AGREED: u16 = 1 << 1;
    /// DECISION: the correlated-matching baseline decoded this shot too.
    pub const DECISION_BASELINE_CHECKED: u16 = 1 << 2;
}

/// Which end of the connection sends a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sender {
    /// The FPGA (or anything else that streams rounds to qecd): OPEN, ROUND, FINAL, CLOSE.
    Fpga,
    /// qecd's replies: ACK, DECISION, ERROR.
    Qecd,
}

impl fmt::Display for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Sender::Fpga => "the FPGA",
            Sender::Qecd => "qecd",
        })
    }
}

/// What a frame is; the high bit of the code says who sends it (0: the FPGA, 1: qecd).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// Opens a session (payload [`Open`](crate::Open)).
    Open,
    /// One round of detection events of one shot (payload [`Events`](crate::Events)).
    Round,
    /// The last round of a shot, built from the data-qubit measurements (payload [`Events`](crate::Events)).
    Final,
    /// Closes a session (no payload).
    Close,
    /// A ROUND was applied (payload [`Ack`](crate::Ack)).
    Ack,
    /// The prediction for a shot, answering its FINAL (payload [`Decision`](crate::Decision)).
    Decision,
    /// A request failed (payload [`ErrorReply`](crate::ErrorReply)).
    Error,
}

impl FrameKind {
    /// Every kind, FPGA's first.
    pub const ALL: [FrameKind; 7] = [
        FrameKind::Open,
        FrameKind::Round,
        FrameKind::Final,
        FrameKind::Close,
        FrameKind::Ack,
        FrameKind::Decision,
        FrameKind::Error,
    ];

    /// The byte on the wire.
    pub fn code(self) -> u8 {
        match self {
            FrameKind::Open => 0x01,
            FrameKind::Round => 0x02,
            FrameKind::Final => 0x03,
            FrameKind::Close => 0x04,
            FrameKind::Ack => 0x81,
            FrameKind::Decision => 0x82,
            FrameKind::Error => 0x83,
        }
    }

    /// The kind with wire byte `code`, if there is one.
    pub fn from_code(code: u8) -> Option<Self> {
        FrameKind::ALL.into_iter().find(|k| k.code() == code)
    }

    /// Who sends frames of this kind.
    pub fn sender(self) -> Sender {
        if self.code() & 0x80 == 0 { Sender::Fpga } else { Sender::Qecd }
    }

    /// The flag bits this kind defines (see [`flags`]); the others must be 0.
    pub fn flag_mask(self) -> u16 {
        match self {
            FrameKind::Ack => flags::ACK_BUDGET_MET,
            FrameKind::Decision => {
                flags::DECISION_FELL_BACK | flags::DECISION_BASELINE_AGREED | flags::DECISION_BASELINE_CHECKED
            }
            _ => 0,
        }
    }

    /// The name used in the specification and in errors (`ROUND`).
    pub fn name(self) -> &'static str {
        match self {
            FrameKind::Open => "OPEN",
            FrameKind::Round => "ROUND",
            FrameKind::Final => "FINAL",
            FrameKind::Close => "CLOSE",
            FrameKind::Ack => "ACK",
            FrameKind::Decision => "DECISION",
            FrameKind::Error => "ERROR",
        }
    }
}

impl fmt::Display for FrameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One frame as it travels: the header's fields and the raw payload.
///
/// [`Message`] gives the typed view of `kind`, `flags` and `payload`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// What the frame is.
    pub kind: FrameKind,
    /// Kind-specific flag bits (see [`flags`]).
    pub flags: u16,
    /// The session the frame belongs to.
    pub stream: StreamId,
    /// Position of the frame on its connection and direction; [`FrameEncoder`](crate::FrameEncoder) stamps it.
    pub sequence: SequenceNumber,
    /// The shot a ROUND, FINAL, ACK, DECISION or ERROR concerns; 0 in OPEN and CLOSE.
    pub shot: u64,
    /// The round index within the shot (0 = first round; FINAL carries the index after the last ROUND);
    /// in OPEN, the number of stabilizer rounds per shot; 0 in CLOSE.
    pub round: u32,
    /// The payload, laid out as the kind says, at most [`MAX_PAYLOAD`] bytes.
    pub payload: Vec<u8>,
}

impl Frame {
    /// Bytes the frame takes on the wire.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload.len() + CRC_LEN
    }

    /// Appends the frame's bytes to `out`.
    ///
    /// The frame must be one that [`Frame::decode`] accepts (payload size,
    /// flags and payload layout are checked); on error `out` is unchanged.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        if self.payload.len() > MAX_PAYLOAD {
            return Err(FrameError::PayloadTooLarge { len: self.payload.len() as u64 });
        }
        Message::parse(self.kind, self.flags, &self.payload)?;
        let start = out.len();
        out.reserve(self.encoded_len());
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(self.kind.code());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&self.stream.to_le_bytes());
        out.extend_from_slice(&self.sequence.to_le_bytes());
        out.extend_from_slice(&self.shot.to_le_bytes());
        out.extend_from_slice(&self.round.to_le_bytes());
        out.extend_from_slice(&(self.payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.payload);
        let crc = crc32c(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(())
    }

    /// Decodes the frame at the start of `bytes`, returning it and the bytes it took.
    ///
    /// Everything is checked except the sequence number, which needs the
    /// connection's history ([`FrameDecoder`](crate::FrameDecoder) checks it).
    pub fn decode(bytes: &[u8]) -> Result<(Frame, usize), FrameError> {
        match split_frame(bytes, None)? {
            Some((frame, len)) => {
                Message::parse(frame.kind, frame.flags, &frame.payload)?;
                Ok((frame, len))
            }
            None => Err(FrameError::Incomplete { have: bytes.len(), need: needed(bytes) }),
        }
    }

    /// The typed payload.
    pub fn message(&self) -> Result<Message, FrameError> {
        Message::parse(self.kind, self.flags, &self.payload)
    }
}

/// How many bytes the frame at the start of `bytes` needs (its header's length while that is incomplete).
pub(crate) fn needed(bytes: &[u8]) -> usize {
    if bytes.len() < HEADER_LEN {
        return HEADER_LEN;
    }
    HEADER_LEN + u32_at(bytes, 28) as usize + CRC_LEN
}

/// The little-endian `u16` at `b[at..at + 2]`.
pub(crate) fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// The little-endian `u32` at `b[at..at + 4]`.
pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The little-endian `u64` at `b[at..at + 8]`.
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3], b[at + 4], b[at + 5], b[at + 6], b[at + 7]])
}

/// Finds the frame at the start of `buf` and checks everything but the
/// sequence number and the payload's layout. `Ok(None)`: more bytes are needed.
pub(crate) fn split_frame(buf: &[u8], sender: Option<Sender>) -> Result<Option<(Frame, usize)>, FrameError> {
    if buf.len() >= 4 && buf[..4] != MAGIC {
        return Err(FrameError::BadMagic { found: [buf[0], buf[1], buf[2], buf[3]] });
    }
    if buf.len() >= 5 && buf[4] != VERSION {
        return Err(FrameError::UnsupportedVersion { found: buf[4] });
    }
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32_at(buf, 28);
    if len as usize > MAX_PAYLOAD {
        return Err(FrameError::PayloadTooLarge { len: len.into() });
    }
    let end = HEADER_LEN + len as usize;
    if buf.len() < end + CRC_LEN {
        return Ok(None);
    }
    let expected = crc32c(&buf[..end]);
    let found = u32_at(buf, end);
    if expected != found {
        return Err(FrameError::BadCrc { expected, found });
    }
    let kind = FrameKind::from_code(buf[5]).ok_or(FrameError::UnknownKind { code: buf[5] })?;
    if let Some(expected) = sender
        && kind.sender() != expected
    {
        return Err(FrameError::WrongSender { kind, expected });
    }
    let frame = Frame {
        kind,
        flags: u16_at(buf, 6),
        stream: u32_at(buf, 8),
        sequence: u32_at(buf, 12),
        shot: u64_at(buf, 16),
        round: u32_at(buf, 24),
        payload: buf[HEADER_LEN..end].to_vec(),
    };
    Ok(Some((frame, end + CRC_LEN)))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::testing::{arb_message, decode_chunks, framed, one_of_each, open, round, stream_of};

    #[test]
    fn every_kind_round_trips() {
        for m in one_of_each() {
            let frame = m.to_frame(3, 99, 4).unwrap();
            let mut bytes = Vec::new();
            frame.encode(&mut bytes).unwrap();
            assert_eq!(bytes.len(), frame.encoded_len());
            let (back, used) = Frame::decode(&bytes).unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(back, frame);
            assert_eq!(back.message().unwrap(), m, "{}", m.kind());
        }
    }

    #[test]
    fn header_fields_sit_where_the_doc_says() {
        let mut frame = round().to_frame(0x0403_0201, 0x0C0B_0A09_0807_0605, 0x100F_0E0D).unwrap();
        frame.sequence = 0x1413_1211;
        let mut b = Vec::new();
        frame.encode(&mut b).unwrap();
        assert_eq!(&b[0..8], &[b'Q', b'E', b'C', b'F', 1, 0x02, 0, 0]);
        assert_eq!(&b[8..12], &[1, 2, 3, 4]);
        assert_eq!(&b[12..16], &[0x11, 0x12, 0x13, 0x14]);
        assert_eq!(&b[16..24], &[5, 6, 7, 8, 9, 10, 11, 12]);
        assert_eq!(&b[24..28], &[0x0D, 0x0E, 0x0F, 0x10]);
        assert_eq!(&b[28..32], &[3, 0, 0, 0]);
        assert_eq!(&b[32..35], &[8, 0, 0x42]);
        assert_eq!(u32_at(&b, 35), crc32c(&b[..35]));
    }

    #[test]
    fn header_errors_are_named() {
        let (bytes, _) = stream_of(Sender::Fpga, &[open()]);
        let mut bad = bytes.clone();
        bad[..4].copy_from_slice(b"GET ");
        assert_eq!(Frame::decode(&bad[..4]).unwrap_err(), FrameError::BadMagic { found: *b"GET " });
        let mut bad = bytes.clone();
        bad[4] = 2;
        assert_eq!(
            Frame::decode(&bad[..5]).unwrap_err().to_string(),
            "format version 2 is not supported (this codec speaks version 1)"
        );
        let unknown = framed(FrameKind::Close, 0, &[]);
        let mut unknown = unknown[..unknown.len() - 4].to_vec();
        unknown[5] = 0x05;
        let crc = crc32c(&unknown);
        unknown.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(Frame::decode(&unknown).unwrap_err().to_string(), "unknown frame kind 0x05");
        let (_, end) = decode_chunks(Sender::Qecd, [bytes.as_slice()]);
        assert_eq!(
            end.unwrap_err().to_string(),
            "frame 0 at byte 0: OPEN frames are sent by the FPGA, but this stream carries frames from qecd"
        );
        assert_eq!(
            Frame::decode(&bytes[..10]).unwrap_err().to_string(),
            "input ends after 10 bytes of a frame that needs at least 32"
        );
        let (_, end) = decode_chunks(Sender::Fpga, [&bytes[..40]]);
        assert_eq!(
            end.unwrap_err().error,
            FrameError::Incomplete { have: 40, need: bytes.len() },
            "the decoder reports a connection closed inside a frame"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn messages_round_trip(m in arb_message(), stream: u32, sequence: u32, shot: u64, round: u32) {
            let mut frame = m.to_frame(stream, shot, round).unwrap();
            frame.sequence = sequence;
            let mut bytes = Vec::new();
            frame.encode(&mut bytes).unwrap();
            let (back, used) = Frame::decode(&bytes).unwrap();
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(&back, &frame);
            prop_assert_eq!(back.message().unwrap(), m);
        }
    }
}
