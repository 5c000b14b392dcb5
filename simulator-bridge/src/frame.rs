//! The FPGA bridge's binary frame codec, format version 1 (specified byte for
//! byte in `docs/fpga-bridge.md`).
//!
//! A connection carries frames back to back in each direction: a 32-byte
//! little-endian header, a payload of at most [`MAX_PAYLOAD`] bytes, and a
//! CRC32C over both. The header carries a per-connection, per-direction
//! sequence number, so a lost or repeated frame is an error rather than a
//! silently shifted shot.
//!
//! The codec is strict on purpose. What the FPGA sends becomes the input of a
//! decoder, and a lenient parser would turn a firmware bug into wrong logical
//! predictions instead of an error. So reserved bits, padding bits, unknown
//! enum codes and trailing bytes are all errors, and a [`Frame`] that comes out
//! of [`FrameDecoder`] always has a well-formed payload for its kind.
//!
//! Checks run in an order that makes errors name the real fault: magic,
//! version and payload length first (they are needed to find the frame's end,
//! and a huge length is refused before anything is buffered for it), then the
//! CRC, and only then the fields a corrupted byte could have faked: kind,
//! flags, sequence number and payload.
//!
//! The codec does not know the conversation (OPEN before ROUND, one DECISION
//! per FINAL); the bridge listener enforces that.

use std::fmt;

use crate::code::Basis;

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
/// The longest model name (OPEN) or error message (ERROR), in bytes of UTF-8.
pub const MAX_TEXT: usize = 1024;
/// The most detection events one ROUND or FINAL frame carries (the bit count is a `u16`).
pub const MAX_EVENTS: usize = u16::MAX as usize;

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
    /// Opens a session (payload [`Open`]).
    Open,
    /// One round of detection events of one shot (payload [`Events`]).
    Round,
    /// The last round of a shot, built from the data-qubit measurements (payload [`Events`]).
    Final,
    /// Closes a session (no payload).
    Close,
    /// A ROUND was applied (payload [`Ack`]).
    Ack,
    /// The prediction for a shot, answering its FINAL (payload [`Decision`]).
    Decision,
    /// A request failed (payload [`ErrorReply`]).
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

/// The decoder a session asks for in OPEN, or the one that answered in DECISION.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecoderChoice {
    /// The recurrent-transformer neural decoder (code 0).
    Neural,
    /// Uncorrelated minimum-weight perfect matching (code 1).
    Matching,
    /// Two-pass correlated matching (code 2).
    Correlated,
    /// Neural, shadow-checked by correlated matching (code 3; OPEN only, never the one that answered).
    NeuralChecked,
    /// Neural-posterior matching: the posterior model's edge probabilities as matching's weights (code 4).
    NeuralMatching,
}

impl DecoderChoice {
    /// The byte on the wire.
    pub fn code(self) -> u8 {
        match self {
            DecoderChoice::Neural => 0,
            DecoderChoice::Matching => 1,
            DecoderChoice::Correlated => 2,
            DecoderChoice::NeuralChecked => 3,
            DecoderChoice::NeuralMatching => 4,
        }
    }

    /// The choice with wire byte `code`, if there is one.
    pub fn from_code(code: u8) -> Option<Self> {
        [
            DecoderChoice::Neural,
            DecoderChoice::Matching,
            DecoderChoice::Correlated,
            DecoderChoice::NeuralChecked,
            DecoderChoice::NeuralMatching,
        ]
        .into_iter()
        .find(|d| d.code() == code)
    }
}

/// Why a request failed, numbered as gRPC status codes so that the bridge and
/// the gRPC service report failures alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A frame or a parameter is malformed (gRPC 3).
    InvalidArgument,
    /// The model or stream named does not exist (gRPC 5).
    NotFound,
    /// Too many sessions, or a backlog past its bound (gRPC 8).
    ResourceExhausted,
    /// The frame is valid but not now, e.g. ROUND before OPEN (gRPC 9).
    FailedPrecondition,
    /// A bug or an unexpected failure inside qecd (gRPC 13).
    Internal,
}

impl ErrorCode {
    /// Every code, by number.
    pub const ALL: [ErrorCode; 5] = [
        ErrorCode::InvalidArgument,
        ErrorCode::NotFound,
        ErrorCode::ResourceExhausted,
        ErrorCode::FailedPrecondition,
        ErrorCode::Internal,
    ];

    /// The gRPC status code, which is also the `u16` on the wire.
    pub fn code(self) -> u16 {
        match self {
            ErrorCode::InvalidArgument => 3,
            ErrorCode::NotFound => 5,
            ErrorCode::ResourceExhausted => 8,
            ErrorCode::FailedPrecondition => 9,
            ErrorCode::Internal => 13,
        }
    }

    /// The error code with number `code`, if it is one of these.
    pub fn from_code(code: u16) -> Option<Self> {
        ErrorCode::ALL.into_iter().find(|c| c.code() == code)
    }

    /// The gRPC name (`INVALID_ARGUMENT`).
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::ResourceExhausted => "RESOURCE_EXHAUSTED",
            ErrorCode::FailedPrecondition => "FAILED_PRECONDITION",
            ErrorCode::Internal => "INTERNAL",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything that can be wrong with a frame or a payload.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The first four bytes are not `QECF`: not a frame, or the stream lost its framing.
    #[error("bad magic {found:02X?} (expected \"QECF\" = [51, 45, 43, 46])")]
    BadMagic {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// The version byte is not [`VERSION`].
    #[error("format version {found} is not supported (this codec speaks version {VERSION})")]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
    },
    /// The header declares a payload longer than [`MAX_PAYLOAD`].
    #[error("payload length {len} exceeds the maximum of {MAX_PAYLOAD} bytes")]
    PayloadTooLarge {
        /// The declared (or attempted) payload length.
        len: u64,
    },
    /// The CRC32C at the end of the frame does not match its header and payload.
    #[error("CRC32C 0x{found:08X} in the frame does not match 0x{expected:08X} computed over header and payload")]
    BadCrc {
        /// The CRC32C of the header and payload as received.
        expected: u32,
        /// The CRC32C stored in the frame.
        found: u32,
    },
    /// The kind byte names no kind.
    #[error("unknown frame kind 0x{code:02X}")]
    UnknownKind {
        /// The kind byte found.
        code: u8,
    },
    /// A frame came from the wrong end of the connection (an ACK sent to qecd, say).
    #[error("{kind} frames are sent by {}, but this stream carries frames from {expected}", kind.sender())]
    WrongSender {
        /// The frame's kind.
        kind: FrameKind,
        /// Who sends the frames this stream carries.
        expected: Sender,
    },
    /// Flag bits that the kind does not define are set.
    #[error("{kind} frame has reserved flag bits set: flags 0x{flags:04X}, allowed 0x{:04X}", kind.flag_mask())]
    ReservedFlags {
        /// The frame's kind.
        kind: FrameKind,
        /// The whole flags field.
        flags: u16,
    },
    /// The sequence number is not the one after the previous frame's: a frame was lost or repeated.
    #[error("sequence number {found} where {expected} was expected (a frame was lost or repeated)")]
    SequenceGap {
        /// The sequence number due.
        expected: SequenceNumber,
        /// The sequence number in the frame.
        found: SequenceNumber,
    },
    /// The payload ends inside a field.
    #[error("{kind} payload ends inside the {field}: it needs {need} more bytes, {have} are left")]
    Truncated {
        /// The frame's kind.
        kind: FrameKind,
        /// The field cut short.
        field: &'static str,
        /// Bytes the field needs.
        need: usize,
        /// Bytes that were left for it.
        have: usize,
    },
    /// The payload goes on after its last field.
    #[error("{kind} payload has {extra} bytes after its last field")]
    TrailingBytes {
        /// The frame's kind.
        kind: FrameKind,
        /// How many bytes too many.
        extra: usize,
    },
    /// A payload field or flag holds a value the format does not allow.
    #[error("invalid {field} in {kind} frame: {why}")]
    InvalidField {
        /// The frame's kind.
        kind: FrameKind,
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// Detection events that do not fit a ROUND or FINAL frame, or packed bytes that do not match their bit count.
    #[error("invalid detection events: {0}")]
    InvalidEvents(String),
    /// The input ends inside a frame.
    #[error("input ends after {have} bytes of a frame that needs at least {need}")]
    Incomplete {
        /// Bytes of the frame present.
        have: usize,
        /// Bytes needed: the header's length while it is incomplete, else the whole frame's.
        need: usize,
    },
}

impl FrameError {
    /// The status to put in the ERROR reply that answers this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::PayloadTooLarge { .. } => ErrorCode::ResourceExhausted,
            _ => ErrorCode::InvalidArgument,
        }
    }
}

/// A [`FrameError`] on a connection, with where it happened.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("frame {frame} at byte {offset}: {error}")]
pub struct StreamError {
    /// Which frame of the connection, counting from 0 (the sequence number it was due to carry).
    pub frame: u64,
    /// Offset of the frame's first byte in the connection's byte stream.
    pub offset: u64,
    /// What is wrong.
    #[source]
    pub error: FrameError,
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
    /// Position of the frame on its connection and direction; [`FrameEncoder`] stamps it.
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
    /// connection's history ([`FrameDecoder`] checks it).
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
fn needed(bytes: &[u8]) -> usize {
    if bytes.len() < HEADER_LEN {
        return HEADER_LEN;
    }
    HEADER_LEN + u32_at(bytes, 28) as usize + CRC_LEN
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3], b[at + 4], b[at + 5], b[at + 6], b[at + 7]])
}

/// Finds the frame at the start of `buf` and checks everything but the
/// sequence number and the payload's layout. `Ok(None)`: more bytes are needed.
fn split_frame(buf: &[u8], sender: Option<Sender>) -> Result<Option<(Frame, usize)>, FrameError> {
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

/// Session parameters, the payload of OPEN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Open {
    /// Code distance of the surface-code memory experiment.
    pub distance: u8,
    /// Memory basis.
    pub basis: Basis,
    /// The decoder asked for.
    pub decoder: DecoderChoice,
    /// Per-round latency budget in µs; 0 means no budget.
    pub budget_us: u32,
    /// The model to decode with (a checkpoint name); may be empty for the matching decoders.
    pub model: String,
}

/// One round's detection events, bit-packed as a row of Stim's `b8` format:
/// event `k` is bit `k % 8` of byte `k / 8`, and padding bits are 0.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Events {
    /// Number of events (bits).
    len: usize,
    /// `ceil(len / 8)` bytes, padding bits clear.
    packed: Vec<u8>,
}

impl Events {
    /// Packs unpacked events; at most [`MAX_EVENTS`].
    pub fn from_bits(bits: &[bool]) -> Result<Self, FrameError> {
        if bits.len() > MAX_EVENTS {
            return Err(FrameError::InvalidEvents(format!("{} events, at most {MAX_EVENTS} fit a frame", bits.len())));
        }
        let mut packed = Vec::new();
        pack(bits, &mut packed);
        Ok(Self { len: bits.len(), packed })
    }

    /// Wraps `len` events already packed (a `b8` row): the length must be
    /// `ceil(len / 8)` and the padding bits must be 0.
    pub fn from_packed(packed: Vec<u8>, len: usize) -> Result<Self, FrameError> {
        if len > MAX_EVENTS {
            return Err(FrameError::InvalidEvents(format!("{len} events, at most {MAX_EVENTS} fit a frame")));
        }
        if packed.len() != len.div_ceil(8) {
            return Err(FrameError::InvalidEvents(format!(
                "{len} events pack into {} bytes, got {}",
                len.div_ceil(8),
                packed.len()
            )));
        }
        if !padding_clear(&packed, len) {
            return Err(FrameError::InvalidEvents(format!("bits set past bit {len} (padding must be zero)")));
        }
        Ok(Self { len, packed })
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no events at all (not whether none fired).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Event `k`, or `None` past the end.
    pub fn get(&self, k: usize) -> Option<bool> {
        (k < self.len).then(|| (self.packed[k / 8] >> (k % 8)) & 1 == 1)
    }

    /// The packed bytes.
    pub fn packed(&self) -> &[u8] {
        &self.packed
    }

    /// The events unpacked.
    pub fn to_bits(&self) -> Vec<bool> {
        unpack(&self.packed, self.len)
    }

    /// Number of events that fired.
    pub fn count_ones(&self) -> usize {
        self.packed.iter().map(|b| b.count_ones() as usize).sum()
    }
}

/// The payload of ACK (and its flag): a ROUND was applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    /// Time the decoder took for the round's step, in ns.
    pub step_latency_ns: u32,
    /// Whether the step fitted the session's budget (flag bit 0).
    pub budget_met: bool,
}

/// The payload of DECISION (and its flags): the prediction for a shot.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Predicted flip of each logical observable (1 to 255 of them).
    pub flips: Vec<bool>,
    /// Calibrated confidence in the prediction, in [0, 1].
    pub confidence: f32,
    /// Time from the FINAL frame's arrival to the decision, in ns.
    pub latency_ns: u32,
    /// The decoder that answered: never [`DecoderChoice::NeuralChecked`],
    /// and [`DecoderChoice::Correlated`] whenever `fell_back` is set.
    pub decoder: DecoderChoice,
    /// The neural decoder missed its budget and correlated matching answered (flag bit 0).
    pub fell_back: bool,
    /// The baseline check: `None` if correlated matching did not decode the
    /// shot, else whether it agreed (flag bits 2 and 1).
    pub baseline: Option<bool>,
}

/// The payload of ERROR: why a request failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorReply {
    /// The gRPC-style status.
    pub code: ErrorCode,
    /// What was wrong, for a person; at most [`MAX_TEXT`] bytes.
    pub message: String,
}

impl ErrorReply {
    /// A reply whose message is cut to [`MAX_TEXT`] bytes, at a character boundary.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_TEXT {
            let mut cut = MAX_TEXT;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        Self { code, message }
    }
}

/// The typed view of a frame's kind, flags and payload.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// OPEN: start a session.
    Open(Open),
    /// ROUND: one round's detection events.
    Round(Events),
    /// FINAL: the events of the final, data-qubit round.
    Final(Events),
    /// CLOSE: end the session.
    Close,
    /// ACK: a round was applied.
    Ack(Ack),
    /// DECISION: a shot's prediction.
    Decision(Decision),
    /// ERROR: a request failed.
    Error(ErrorReply),
}

impl Message {
    /// The frame kind that carries this message.
    pub fn kind(&self) -> FrameKind {
        match self {
            Message::Open(_) => FrameKind::Open,
            Message::Round(_) => FrameKind::Round,
            Message::Final(_) => FrameKind::Final,
            Message::Close => FrameKind::Close,
            Message::Ack(_) => FrameKind::Ack,
            Message::Decision(_) => FrameKind::Decision,
            Message::Error(_) => FrameKind::Error,
        }
    }

    /// A frame carrying this message, with sequence number 0 (an encoder stamps the real one).
    pub fn to_frame(&self, stream: StreamId, shot: u64, round: u32) -> Result<Frame, FrameError> {
        let mut payload = Vec::new();
        let flags = self.encode_payload(&mut payload)?;
        Message::parse(self.kind(), flags, &payload)?;
        Ok(Frame { kind: self.kind(), flags, stream, sequence: 0, shot, round, payload })
    }

    /// Writes the payload and returns the flags.
    fn encode_payload(&self, out: &mut Vec<u8>) -> Result<u16, FrameError> {
        let kind = self.kind();
        match self {
            Message::Open(open) => {
                out.extend_from_slice(&[open.distance, basis_code(open.basis), open.decoder.code(), 0]);
                out.extend_from_slice(&open.budget_us.to_le_bytes());
                put_text(kind, "model name", &open.model, out)?;
                Ok(0)
            }
            Message::Round(events) | Message::Final(events) => {
                out.extend_from_slice(&(events.len as u16).to_le_bytes());
                out.extend_from_slice(&events.packed);
                Ok(0)
            }
            Message::Close => Ok(0),
            Message::Ack(ack) => {
                out.extend_from_slice(&ack.step_latency_ns.to_le_bytes());
                Ok(if ack.budget_met { flags::ACK_BUDGET_MET } else { 0 })
            }
            Message::Decision(d) => {
                let count = u8::try_from(d.flips.len()).map_err(|_| FrameError::InvalidField {
                    kind,
                    field: "observable count",
                    why: format!("{} observables, at most 255", d.flips.len()),
                })?;
                out.push(count);
                pack(&d.flips, out);
                out.extend_from_slice(&d.confidence.to_le_bytes());
                out.extend_from_slice(&d.latency_ns.to_le_bytes());
                out.push(d.decoder.code());
                let mut bits = if d.fell_back { flags::DECISION_FELL_BACK } else { 0 };
                match d.baseline {
                    None => {}
                    Some(false) => bits |= flags::DECISION_BASELINE_CHECKED,
                    Some(true) => bits |= flags::DECISION_BASELINE_CHECKED | flags::DECISION_BASELINE_AGREED,
                }
                Ok(bits)
            }
            Message::Error(e) => {
                out.extend_from_slice(&e.code.code().to_le_bytes());
                put_text(kind, "message", &e.message, out)?;
                Ok(0)
            }
        }
    }

    /// Parses and checks a payload of `kind` with header flags `flags`.
    pub fn parse(kind: FrameKind, flags: u16, payload: &[u8]) -> Result<Message, FrameError> {
        if flags & !kind.flag_mask() != 0 {
            return Err(FrameError::ReservedFlags { kind, flags });
        }
        let mut r = Reader { kind, buf: payload, pos: 0 };
        let message = match kind {
            FrameKind::Open => {
                let distance = r.u8("distance")?;
                let basis = match r.u8("basis")? {
                    0 => Basis::X,
                    1 => Basis::Z,
                    b => return Err(invalid(kind, "basis", format!("{b} (expected 0 = X or 1 = Z)"))),
                };
                let code = r.u8("decoder")?;
                let decoder = DecoderChoice::from_code(code)
                    .ok_or_else(|| invalid(kind, "decoder", format!("{code} (expected 0 to 4)")))?;
                let reserved = r.u8("reserved byte")?;
                if reserved != 0 {
                    return Err(invalid(kind, "reserved byte", format!("{reserved} (must be 0)")));
                }
                let budget_us = r.u32("budget")?;
                let model = r.text("model name")?;
                Message::Open(Open { distance, basis, decoder, budget_us, model })
            }
            FrameKind::Round | FrameKind::Final => {
                let len = r.u16("event count")? as usize;
                let packed = r.bytes(len.div_ceil(8), "events")?;
                if !padding_clear(packed, len) {
                    return Err(invalid(kind, "events", format!("bits set past bit {len} (padding must be zero)")));
                }
                let events = Events { len, packed: packed.to_vec() };
                if kind == FrameKind::Round { Message::Round(events) } else { Message::Final(events) }
            }
            FrameKind::Close => Message::Close,
            FrameKind::Ack => Message::Ack(Ack {
                step_latency_ns: r.u32("step latency")?,
                budget_met: flags & flags::ACK_BUDGET_MET != 0,
            }),
            FrameKind::Decision => {
                let count = r.u8("observable count")? as usize;
                if count == 0 {
                    return Err(invalid(kind, "observable count", "0 (a decision predicts at least one)".into()));
                }
                let packed = r.bytes(count.div_ceil(8), "predicted flips")?;
                if !padding_clear(packed, count) {
                    return Err(invalid(kind, "predicted flips", format!("bits set past bit {count}")));
                }
                let flips = unpack(packed, count);
                let confidence = f32::from_bits(r.u32("confidence")?);
                if !(0.0..=1.0).contains(&confidence) {
                    return Err(invalid(kind, "confidence", format!("{confidence} (must lie in [0, 1])")));
                }
                let latency_ns = r.u32("decision latency")?;
                let code = r.u8("decoder")?;
                let decoder = match DecoderChoice::from_code(code) {
                    Some(DecoderChoice::NeuralChecked) | None => {
                        return Err(invalid(kind, "decoder", format!("{code} (expected 0, 1, 2 or 4)")));
                    }
                    Some(d) => d,
                };
                let fell_back = flags & flags::DECISION_FELL_BACK != 0;
                if fell_back && decoder != DecoderChoice::Correlated {
                    return Err(invalid(
                        kind,
                        "decoder",
                        format!("{code}, but the fell-back flag says 2 (correlated)"),
                    ));
                }
                let agreed = flags & flags::DECISION_BASELINE_AGREED != 0;
                let baseline = match (flags & flags::DECISION_BASELINE_CHECKED != 0, agreed) {
                    (true, agreed) => Some(agreed),
                    (false, false) => None,
                    (false, true) => {
                        return Err(invalid(kind, "flags", "baseline-agreed bit set without baseline-checked".into()));
                    }
                };
                Message::Decision(Decision { flips, confidence, latency_ns, decoder, fell_back, baseline })
            }
            FrameKind::Error => {
                let number = r.u16("error code")?;
                let code = ErrorCode::from_code(number)
                    .ok_or_else(|| invalid(kind, "error code", format!("{number} (expected 3, 5, 8, 9 or 13)")))?;
                Message::Error(ErrorReply { code, message: r.text("message")? })
            }
        };
        r.end()?;
        Ok(message)
    }
}

fn invalid(kind: FrameKind, field: &'static str, why: String) -> FrameError {
    FrameError::InvalidField { kind, field, why }
}

fn basis_code(basis: Basis) -> u8 {
    match basis {
        Basis::X => 0,
        Basis::Z => 1,
    }
}

/// Writes a `u16` length and the UTF-8 bytes of `text`, at most [`MAX_TEXT`] of them.
fn put_text(kind: FrameKind, field: &'static str, text: &str, out: &mut Vec<u8>) -> Result<(), FrameError> {
    if text.len() > MAX_TEXT {
        return Err(invalid(kind, field, format!("{} bytes, at most {MAX_TEXT}", text.len())));
    }
    out.extend_from_slice(&(text.len() as u16).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

/// Appends `bits` packed LSB-first, padding bits 0.
fn pack(bits: &[bool], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + bits.len().div_ceil(8), 0);
    for (k, _) in bits.iter().enumerate().filter(|(_, b)| **b) {
        out[start + k / 8] |= 1 << (k % 8);
    }
}

fn unpack(packed: &[u8], len: usize) -> Vec<bool> {
    (0..len).map(|k| (packed[k / 8] >> (k % 8)) & 1 == 1).collect()
}

/// Whether the bits of `packed` past the first `len` are all 0.
fn padding_clear(packed: &[u8], len: usize) -> bool {
    len.is_multiple_of(8) || packed.last().is_none_or(|last| last >> (len % 8) == 0)
}

/// Reads little-endian fields off a payload, naming the field that is cut short.
struct Reader<'a> {
    kind: FrameKind,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], FrameError> {
        let have = self.buf.len() - self.pos;
        if have < n {
            return Err(FrameError::Truncated { kind: self.kind, field, need: n, have });
        }
        self.pos += n;
        Ok(&self.buf[self.pos - n..self.pos])
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, FrameError> {
        Ok(self.bytes(1, field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, FrameError> {
        Ok(u16_at(self.bytes(2, field)?, 0))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, FrameError> {
        Ok(u32_at(self.bytes(4, field)?, 0))
    }

    /// A `u16` length and that many bytes of UTF-8, at most [`MAX_TEXT`].
    fn text(&mut self, field: &'static str) -> Result<String, FrameError> {
        let len = self.u16(field)? as usize;
        if len > MAX_TEXT {
            return Err(invalid(self.kind, field, format!("{len} bytes, at most {MAX_TEXT}")));
        }
        let bytes = self.bytes(len, field)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| invalid(self.kind, field, format!("not UTF-8 ({e})")))
    }

    fn end(self) -> Result<(), FrameError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            extra => Err(FrameError::TrailingBytes { kind: self.kind, extra }),
        }
    }
}

/// Stamps sequence numbers on the frames one end sends, and encodes them.
#[derive(Clone, Debug)]
pub struct FrameEncoder {
    /// Who sends: frames of the other end's kinds are refused.
    sender: Sender,
    /// The sequence number of the next frame.
    next_sequence: SequenceNumber,
}

impl FrameEncoder {
    /// An encoder for a new connection: its first frame gets sequence number 0.
    pub fn new(sender: Sender) -> Self {
        Self { sender, next_sequence: 0 }
    }

    /// The sequence number the next frame will carry.
    pub fn next_sequence(&self) -> SequenceNumber {
        self.next_sequence
    }

    /// Stamps `frame` with the next sequence number and appends its bytes to
    /// `out`. On error neither `out` nor the sequence number changes.
    pub fn encode(&mut self, frame: &mut Frame, out: &mut Vec<u8>) -> Result<(), FrameError> {
        if frame.kind.sender() != self.sender {
            return Err(FrameError::WrongSender { kind: frame.kind, expected: self.sender });
        }
        let previous = std::mem::replace(&mut frame.sequence, self.next_sequence);
        if let Err(e) = frame.encode(out) {
            frame.sequence = previous;
            return Err(e);
        }
        self.next_sequence = self.next_sequence.wrapping_add(1);
        Ok(())
    }

    /// Encodes `message` as the next frame of `stream` for `shot` and `round`,
    /// returning the sequence number it got.
    pub fn encode_message(
        &mut self,
        message: &Message,
        stream: StreamId,
        shot: u64,
        round: u32,
        out: &mut Vec<u8>,
    ) -> Result<SequenceNumber, FrameError> {
        let mut frame = message.to_frame(stream, shot, round)?;
        self.encode(&mut frame, out)?;
        Ok(frame.sequence)
    }
}

/// Reassembles frames from a byte stream fed in arbitrary chunks (as they come off a socket).
///
/// Feed bytes with [`feed`](Self::feed), then call
/// [`next_frame`](Self::next_frame) until it returns `Ok(None)`. The decoder
/// checks everything, the sequence number included, and never panics. Any
/// error is final: the stream has lost its framing or its integrity, so later
/// calls return the same error and further bytes are dropped. At the end of
/// the input, [`finish`](Self::finish) reports a frame cut short.
#[derive(Clone, Debug)]
pub struct FrameDecoder {
    /// Who sends the frames: the other end's kinds are errors.
    sender: Sender,
    /// Bytes received and not yet decoded start at `buf[start]`.
    buf: Vec<u8>,
    /// Index in `buf` of the first byte not yet decoded.
    start: usize,
    /// Stream offset of `buf[start]`.
    offset: u64,
    /// Frames decoded so far.
    frames: u64,
    /// The sequence number the next frame must carry.
    next_sequence: SequenceNumber,
    /// The error that ended the stream, if any.
    failed: Option<StreamError>,
}

impl FrameDecoder {
    /// A decoder for a new connection whose frames come from `sender`; the
    /// first frame must carry sequence number 0.
    pub fn new(sender: Sender) -> Self {
        Self { sender, buf: Vec::new(), start: 0, offset: 0, frames: 0, next_sequence: 0, failed: None }
    }

    /// Appends received bytes (dropped once the stream has failed).
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed, or the error that ended the stream.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, StreamError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.split() {
            Ok(Some((frame, len))) => {
                self.start += len;
                self.offset += len as u64;
                self.frames += 1;
                self.next_sequence = self.next_sequence.wrapping_add(1);
                Ok(Some(frame))
            }
            Ok(None) => Ok(None),
            Err(error) => {
                let e = StreamError { frame: self.frames, offset: self.offset, error };
                self.failed = Some(e.clone());
                self.buf = Vec::new();
                self.start = 0;
                Err(e)
            }
        }
    }

    fn split(&self) -> Result<Option<(Frame, usize)>, FrameError> {
        let Some((frame, len)) = split_frame(&self.buf[self.start..], Some(self.sender))? else {
            return Ok(None);
        };
        if frame.sequence != self.next_sequence {
            return Err(FrameError::SequenceGap { expected: self.next_sequence, found: frame.sequence });
        }
        Message::parse(frame.kind, frame.flags, &frame.payload)?;
        Ok(Some((frame, len)))
    }

    /// Call at the end of the input: an error if the stream failed or stops inside a frame.
    pub fn finish(&self) -> Result<(), StreamError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let rest = &self.buf[self.start..];
        if rest.is_empty() {
            return Ok(());
        }
        let error = FrameError::Incomplete { have: rest.len(), need: needed(rest) };
        Err(StreamError { frame: self.frames, offset: self.offset, error })
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Stream offset of the first byte not yet decoded (the end of the last frame returned).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Frames decoded so far.
    pub fn frames_decoded(&self) -> u64 {
        self.frames
    }

    /// The sequence number the next frame must carry.
    pub fn next_sequence(&self) -> SequenceNumber {
        self.next_sequence
    }
}

/// CRC32C lookup table (Castagnoli, reflected polynomial 0x82F63B78), built at compile time.
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC32C (Castagnoli, as in iSCSI, ext4 and SSE4.2's `crc32`) of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c_append(0, data)
}

/// Extends a CRC32C: `crc32c_append(crc32c(a), b) == crc32c(a ++ b)`.
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    let mut c = !crc;
    for &byte in data {
        c = CRC32C_TABLE[((c ^ u32::from(byte)) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn open() -> Message {
        Message::Open(Open {
            distance: 3,
            basis: Basis::Z,
            decoder: DecoderChoice::NeuralChecked,
            budget_us: 1000,
            model: "d3_z".into(),
        })
    }

    fn round() -> Message {
        Message::Round(Events::from_bits(&[false, true, false, false, false, false, true, false]).unwrap())
    }

    fn decision() -> Message {
        Message::Decision(Decision {
            flips: vec![true],
            confidence: 0.984375,
            latency_ns: 1520,
            decoder: DecoderChoice::Neural,
            fell_back: false,
            baseline: Some(true),
        })
    }

    /// One message of every kind, in a plausible order for each sender.
    fn one_of_each() -> Vec<Message> {
        vec![
            open(),
            round(),
            Message::Final(Events::from_bits(&[true, false, true]).unwrap()),
            Message::Close,
            Message::Ack(Ack { step_latency_ns: 12_345, budget_met: true }),
            decision(),
            Message::Error(ErrorReply::new(ErrorCode::FailedPrecondition, "ROUND for stream 9 before its OPEN")),
        ]
    }

    /// The bytes of `messages` from `sender`, as one connection, with the frame boundaries.
    fn stream_of(sender: Sender, messages: &[Message]) -> (Vec<u8>, Vec<Frame>) {
        let mut enc = FrameEncoder::new(sender);
        let mut out = Vec::new();
        let mut frames = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let mut f = m.to_frame(7, 40 + i as u64, i as u32).unwrap();
            enc.encode(&mut f, &mut out).unwrap();
            frames.push(f);
        }
        (out, frames)
    }

    /// Feeds `chunks` to a fresh decoder and collects what comes out.
    fn decode_chunks<'a>(
        sender: Sender,
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> (Vec<Frame>, Result<(), StreamError>) {
        let mut dec = FrameDecoder::new(sender);
        let mut frames = Vec::new();
        for chunk in chunks {
            dec.feed(chunk);
            loop {
                match dec.next_frame() {
                    Ok(Some(f)) => frames.push(f),
                    Ok(None) => break,
                    Err(e) => return (frames, Err(e)),
                }
            }
        }
        let end = dec.finish();
        (frames, end)
    }

    /// The bytes of the fenced block after `<!-- golden: name -->` in docs/fpga-bridge.md;
    /// `#` starts a comment.
    fn golden(name: &str) -> Vec<u8> {
        let doc = include_str!("../../docs/fpga-bridge.md");
        let marker = format!("<!-- golden: {name} -->");
        let after = &doc[doc.find(&marker).unwrap_or_else(|| panic!("no {marker} in the doc"))..];
        let block = after.split("```").nth(1).expect("a fenced block after the marker");
        block
            .lines()
            .skip(1)
            .flat_map(|line| line.split('#').next().unwrap().split_whitespace())
            .map(|tok| u8::from_str_radix(tok, 16).unwrap_or_else(|_| panic!("'{tok}' is not a hex byte")))
            .collect()
    }

    #[test]
    fn crc32c_matches_the_standard_check_value_and_rfc_3720() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        // RFC 3720, appendix B.4.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        let up: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&up), 0x46DD_794E);
        let down: Vec<u8> = (0..32).rev().collect();
        assert_eq!(crc32c(&down), 0x113F_DB5C);
        let mut pdu = [0u8; 48];
        for (at, byte) in [(0, 0x01), (1, 0xC0), (16, 0x14), (22, 0x04), (27, 0x14), (31, 0x18), (32, 0x28), (40, 0x02)]
        {
            pdu[at] = byte;
        }
        assert_eq!(crc32c(&pdu), 0xD996_3A56);
        assert_eq!(crc32c_append(crc32c(b"1234"), b"56789"), 0xE306_9283);
    }

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
    fn golden_frames_match_the_doc_byte_for_byte() {
        let cases = [
            ("open", Sender::Fpga, open(), 7, 0, 0, 6),
            ("round", Sender::Fpga, round(), 7, 3, 42, 5),
            ("decision", Sender::Qecd, decision(), 7, 9, 42, 6),
        ];
        for (name, sender, message, stream, sequence, shot, round) in cases {
            let mut frame = message.to_frame(stream, shot, round).unwrap();
            frame.sequence = sequence;
            let mut bytes = Vec::new();
            frame.encode(&mut bytes).unwrap();
            assert_eq!(bytes, golden(name), "{name}: encoded {bytes:02X?}");
            let mut dec = FrameDecoder::new(sender);
            dec.next_sequence = sequence;
            dec.feed(&bytes);
            assert_eq!(dec.next_frame().unwrap().unwrap().message().unwrap(), message, "{name}");
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
    fn splitting_at_every_boundary_gives_the_same_frames() {
        for sender in [Sender::Fpga, Sender::Qecd] {
            let messages: Vec<Message> = one_of_each().into_iter().filter(|m| m.kind().sender() == sender).collect();
            let (bytes, frames) = stream_of(sender, &messages);
            for cut in 0..=bytes.len() {
                let (got, end) = decode_chunks(sender, [&bytes[..cut], &bytes[cut..]]);
                assert_eq!(end, Ok(()), "cut at {cut}");
                assert_eq!(got, frames, "cut at {cut}");
            }
            let ends: Vec<usize> = frames
                .iter()
                .scan(0, |at, f| {
                    *at += f.encoded_len();
                    Some(*at)
                })
                .collect();
            for cut in 0..bytes.len() {
                let (got, end) = decode_chunks(sender, [&bytes[..cut]]);
                let whole = ends.iter().filter(|&&e| e <= cut).count();
                assert_eq!(got, frames[..whole], "prefix of {cut} bytes");
                let at_boundary = cut == 0 || ends.contains(&cut);
                assert_eq!(end.is_ok(), at_boundary, "prefix of {cut} bytes: {end:?}");
            }
            let (got, end) = decode_chunks(sender, bytes.chunks(1));
            assert_eq!((got, end), (frames, Ok(())));
        }
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        for m in one_of_each() {
            let sender = m.kind().sender();
            let (bytes, _) = stream_of(sender, std::slice::from_ref(&m));
            for bit in 0..bytes.len() * 8 {
                let mut bad = bytes.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                let (got, end) = decode_chunks(sender, [bad.as_slice()]);
                let err = end.expect_err(&format!("{}: flip of bit {bit} went unnoticed", m.kind()));
                assert!(got.is_empty(), "{}: flip of bit {bit} decoded", m.kind());
                let byte = bit / 8;
                let expected_class = match byte {
                    0..4 => matches!(err.error, FrameError::BadMagic { .. }),
                    4 => matches!(err.error, FrameError::UnsupportedVersion { .. }),
                    28..32 => matches!(
                        err.error,
                        FrameError::BadCrc { .. } | FrameError::PayloadTooLarge { .. } | FrameError::Incomplete { .. }
                    ),
                    _ => matches!(err.error, FrameError::BadCrc { .. }),
                };
                assert!(expected_class, "{}: flip of bit {bit}: {err}", m.kind());
            }
        }
    }

    #[test]
    fn oversized_length_is_refused_from_the_header_alone() {
        let mut bytes = Vec::new();
        round().to_frame(1, 2, 3).unwrap().encode(&mut bytes).unwrap();
        for len in [MAX_PAYLOAD as u32 + 1, u32::MAX] {
            let mut header = bytes[..HEADER_LEN].to_vec();
            header[28..32].copy_from_slice(&len.to_le_bytes());
            let mut dec = FrameDecoder::new(Sender::Fpga);
            dec.feed(&header);
            let err = dec.next_frame().unwrap_err();
            assert_eq!(err.error, FrameError::PayloadTooLarge { len: len.into() });
            assert_eq!(
                err.to_string(),
                format!("frame 0 at byte 0: payload length {len} exceeds the maximum of 65536 bytes")
            );
            assert!(dec.buf.capacity() < 1024, "the decoder reserved {} bytes", dec.buf.capacity());
            dec.feed(&[0; 4096]);
            assert_eq!(dec.buffered(), 0, "bytes after the error are dropped");
            assert_eq!(Frame::decode(&header).unwrap_err(), FrameError::PayloadTooLarge { len: len.into() });
        }
        let frame = Frame {
            kind: FrameKind::Round,
            flags: 0,
            stream: 0,
            sequence: 0,
            shot: 0,
            round: 0,
            payload: vec![0; MAX_PAYLOAD + 1],
        };
        let mut out = vec![1, 2];
        assert_eq!(frame.encode(&mut out), Err(FrameError::PayloadTooLarge { len: MAX_PAYLOAD as u64 + 1 }));
        assert_eq!(out, vec![1, 2]);
    }

    #[test]
    fn sequence_gaps_and_repeats_are_errors() {
        let (bytes, frames) = stream_of(Sender::Fpga, &[open(), round(), round(), round()]);
        let len: Vec<usize> = frames.iter().map(Frame::encoded_len).collect();
        // Drop frame 2: frame 3 arrives where 2 was due.
        let mut gap = bytes[..len[0] + len[1]].to_vec();
        gap.extend_from_slice(&bytes[len[0] + len[1] + len[2]..]);
        let (got, end) = decode_chunks(Sender::Fpga, [gap.as_slice()]);
        assert_eq!(got, frames[..2]);
        let err = end.unwrap_err();
        assert_eq!(err.error, FrameError::SequenceGap { expected: 2, found: 3 });
        assert_eq!((err.frame, err.offset), (2, (len[0] + len[1]) as u64));
        assert_eq!(
            err.to_string(),
            format!(
                "frame 2 at byte {}: sequence number 3 where 2 was expected (a frame was lost or repeated)",
                len[0] + len[1]
            )
        );
        // Repeat frame 1.
        let mut repeat = bytes[..len[0] + len[1]].to_vec();
        repeat.extend_from_slice(&bytes[len[0]..len[0] + len[1]]);
        let (got, end) = decode_chunks(Sender::Fpga, [repeat.as_slice()]);
        assert_eq!(got.len(), 2);
        assert_eq!(end.unwrap_err().error, FrameError::SequenceGap { expected: 2, found: 1 });
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut enc = FrameEncoder::new(Sender::Qecd);
        enc.next_sequence = u32::MAX;
        let mut dec = FrameDecoder::new(Sender::Qecd);
        dec.next_sequence = u32::MAX;
        let mut out = Vec::new();
        let ack = Message::Ack(Ack { step_latency_ns: 1, budget_met: false });
        assert_eq!(enc.encode_message(&ack, 1, 1, 1, &mut out), Ok(u32::MAX));
        assert_eq!(enc.encode_message(&ack, 1, 1, 2, &mut out), Ok(0));
        dec.feed(&out);
        assert_eq!(dec.next_frame().unwrap().unwrap().sequence, u32::MAX);
        assert_eq!(dec.next_frame().unwrap().unwrap().sequence, 0);
        assert_eq!(dec.next_sequence(), 1);
    }

    #[test]
    fn bad_crc_names_both_values() {
        let (mut bytes, _) = stream_of(Sender::Fpga, &[open()]);
        let n = bytes.len();
        let expected = u32_at(&bytes, n - 4);
        bytes[n - 4..].copy_from_slice(&0xDEAD_BEEFu32.to_le_bytes());
        let (_, end) = decode_chunks(Sender::Fpga, [bytes.as_slice()]);
        let err = end.unwrap_err();
        assert_eq!(err.error, FrameError::BadCrc { expected, found: 0xDEAD_BEEF });
        assert_eq!(
            err.to_string(),
            format!(
                "frame 0 at byte 0: CRC32C 0xDEADBEEF in the frame does not match 0x{expected:08X} computed over header and payload"
            )
        );
    }

    /// Re-frames `payload` as a valid frame of `kind` so that only the payload can be wrong.
    fn framed(kind: FrameKind, flags: u16, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&[VERSION, kind.code()]);
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&[0; 20]);
        b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        b.extend_from_slice(payload);
        let crc = crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn malformed_payloads_name_the_field() {
        use FrameKind::*;
        let cases: &[(FrameKind, u16, &[u8], &str)] = &[
            (Open, 0, &[3, 1, 0, 0, 0, 0], "OPEN payload ends inside the budget: it needs 4 more bytes, 2 are left"),
            (Open, 0, &[3, 2, 0, 0, 0, 0, 0, 0, 0, 0], "invalid basis in OPEN frame: 2 (expected 0 = X or 1 = Z)"),
            (Open, 0, &[3, 1, 5, 0, 0, 0, 0, 0, 0, 0], "invalid decoder in OPEN frame: 5 (expected 0 to 4)"),
            (Open, 0, &[3, 1, 0, 9, 0, 0, 0, 0, 0, 0], "invalid reserved byte in OPEN frame: 9 (must be 0)"),
            (
                Open,
                0,
                &[3, 1, 0, 0, 0, 0, 0, 0, 2, 0, 0xC3],
                "OPEN payload ends inside the model name: it needs 2 more bytes, 1 are left",
            ),
            (Open, 0, &[3, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0xFF], "invalid model name in OPEN frame: not UTF-8"),
            (Round, 0, &[9, 0, 0xFF], "ROUND payload ends inside the events: it needs 2 more bytes, 1 are left"),
            (
                Round,
                0,
                &[9, 0, 0xFF, 0x02],
                "invalid events in ROUND frame: bits set past bit 9 (padding must be zero)",
            ),
            (Final, 0, &[1, 0, 1, 0], "FINAL payload has 1 bytes after its last field"),
            (Close, 0, &[0], "CLOSE payload has 1 bytes after its last field"),
            (Close, 1, &[], "CLOSE frame has reserved flag bits set: flags 0x0001, allowed 0x0000"),
            (Ack, 2, &[0, 0, 0, 0], "ACK frame has reserved flag bits set: flags 0x0002, allowed 0x0001"),
            (Ack, 0, &[0, 0, 0], "ACK payload ends inside the step latency: it needs 4 more bytes, 3 are left"),
            (Decision, 0, &[0], "invalid observable count in DECISION frame: 0"),
            (Decision, 0, &[1, 1, 0, 0, 0xC0, 0x3F, 0, 0, 0, 0, 0], "invalid confidence in DECISION frame: 1.5"),
            (Decision, 0, &[1, 1, 0, 0, 0xC0, 0x7F, 0, 0, 0, 0, 0], "invalid confidence in DECISION frame: NaN"),
            (
                Decision,
                0,
                &[1, 1, 0, 0, 0x80, 0x3F, 0, 0, 0, 0, 3],
                "invalid decoder in DECISION frame: 3 (expected 0, 1, 2 or 4)",
            ),
            (Decision, 1, &[1, 1, 0, 0, 0x80, 0x3F, 0, 0, 0, 0, 0], "but the fell-back flag says 2"),
            (Decision, 2, &[1, 1, 0, 0, 0x80, 0x3F, 0, 0, 0, 0, 0], "baseline-agreed bit set without baseline-checked"),
            (
                Decision,
                0,
                &[1, 3, 0, 0, 0x80, 0x3F, 0, 0, 0, 0, 0],
                "invalid predicted flips in DECISION frame: bits set past bit 1",
            ),
            (Error, 0, &[4, 0, 0, 0], "invalid error code in ERROR frame: 4 (expected 3, 5, 8, 9 or 13)"),
            (Error, 0, &[3, 0, 1, 4], "invalid message in ERROR frame: 1025 bytes, at most 1024"),
        ];
        for &(kind, flags, payload, want) in cases {
            let bytes = framed(kind, flags, payload);
            let err = Frame::decode(&bytes).unwrap_err();
            assert!(err.to_string().contains(want), "{kind} {payload:02X?}: got '{err}', want '{want}'");
            assert_eq!(Message::parse(kind, flags, payload).unwrap_err(), err);
        }
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

    #[test]
    fn encoders_refuse_what_decoders_would_refuse() {
        let mut enc = FrameEncoder::new(Sender::Fpga);
        let mut out = Vec::new();
        let ack = Message::Ack(Ack { step_latency_ns: 0, budget_met: true });
        assert!(matches!(enc.encode_message(&ack, 0, 0, 0, &mut out), Err(FrameError::WrongSender { .. })));
        let long = Message::Open(Open {
            distance: 3,
            basis: Basis::X,
            decoder: DecoderChoice::Matching,
            budget_us: 0,
            model: "m".repeat(MAX_TEXT + 1),
        });
        assert!(enc.encode_message(&long, 0, 0, 0, &mut out).unwrap_err().to_string().contains("1025 bytes"));
        let mut d = match decision() {
            Message::Decision(d) => d,
            _ => unreachable!(),
        };
        d.fell_back = true;
        assert!(Message::Decision(d.clone()).to_frame(0, 0, 0).is_err(), "fell back but answered by neural");
        d.decoder = DecoderChoice::Correlated;
        assert!(Message::Decision(d.clone()).to_frame(0, 0, 0).is_ok());
        d.flips = vec![false; 256];
        assert!(Message::Decision(d.clone()).to_frame(0, 0, 0).is_err());
        let mut frame = round().to_frame(0, 0, 0).unwrap();
        frame.flags = 0x8000;
        assert!(enc.encode(&mut frame, &mut out).is_err());
        assert_eq!((out.len(), enc.next_sequence()), (0, 0), "nothing written, no sequence number used");
        assert!(Events::from_bits(&vec![false; MAX_EVENTS + 1]).is_err());
        assert!(Events::from_packed(vec![0, 0], 9).is_ok());
        assert!(Events::from_packed(vec![0, 2], 9).is_err());
        assert!(Events::from_packed(vec![0], 9).is_err());
        let e = ErrorReply::new(ErrorCode::Internal, "é".repeat(MAX_TEXT));
        assert_eq!(e.message.len(), MAX_TEXT);
        assert!(Message::Error(e).to_frame(0, 0, 0).is_ok());
    }

    #[test]
    fn events_pack_like_b8() {
        let bits = [true, false, false, true, false, false, false, false, true];
        let events = Events::from_bits(&bits).unwrap();
        assert_eq!(events.packed(), &[0b0000_1001, 0b1]);
        assert_eq!((events.len(), events.count_ones(), events.get(8), events.get(9)), (9, 3, Some(true), None));
        assert_eq!(events.to_bits(), bits);
        assert_eq!(Events::from_packed(vec![0b0000_1001, 0b1], 9).unwrap(), events);
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        let basis = prop_oneof![Just(Basis::X), Just(Basis::Z)];
        let choice = prop_oneof![
            Just(DecoderChoice::Neural),
            Just(DecoderChoice::Matching),
            Just(DecoderChoice::Correlated),
            Just(DecoderChoice::NeuralChecked)
        ];
        let open = (any::<u8>(), basis, choice, any::<u32>(), "\\PC{0,40}").prop_map(
            |(distance, basis, decoder, budget_us, model)| {
                Message::Open(Open { distance, basis, decoder, budget_us, model })
            },
        );
        let events = proptest::collection::vec(any::<bool>(), 0..700);
        let decision = (
            proptest::collection::vec(any::<bool>(), 1..20),
            0.0f32..=1.0,
            any::<u32>(),
            0u8..3,
            any::<bool>(),
            proptest::option::of(any::<bool>()),
        )
            .prop_map(|(flips, confidence, latency_ns, decoder, fell_back, baseline)| {
                let decoder =
                    if fell_back { DecoderChoice::Correlated } else { DecoderChoice::from_code(decoder).unwrap() };
                Message::Decision(Decision { flips, confidence, latency_ns, decoder, fell_back, baseline })
            });
        let error = (0..ErrorCode::ALL.len(), "\\PC{0,80}")
            .prop_map(|(i, message)| Message::Error(ErrorReply::new(ErrorCode::ALL[i], message)));
        prop_oneof![
            open,
            events.clone().prop_map(|b| Message::Round(Events::from_bits(&b).unwrap())),
            events.prop_map(|b| Message::Final(Events::from_bits(&b).unwrap())),
            Just(Message::Close),
            (any::<u32>(), any::<bool>())
                .prop_map(|(step_latency_ns, budget_met)| Message::Ack(Ack { step_latency_ns, budget_met })),
            decision,
            error,
        ]
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

        #[test]
        fn streams_decode_the_same_in_any_chunks(
            ms in proptest::collection::vec(arb_message(), 1..12),
            cuts in proptest::collection::vec(any::<usize>(), 0..20),
        ) {
            for sender in [Sender::Fpga, Sender::Qecd] {
                let ms: Vec<Message> = ms.iter().filter(|m| m.kind().sender() == sender).cloned().collect();
                let (bytes, frames) = stream_of(sender, &ms);
                let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
                cuts.push(0);
                cuts.push(bytes.len());
                cuts.sort_unstable();
                let chunks = cuts.windows(2).map(|w| &bytes[w[0]..w[1]]);
                let (got, end) = decode_chunks(sender, chunks);
                prop_assert_eq!(end, Ok(()));
                prop_assert_eq!(got, frames);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), valid_prefix: bool) {
            // A valid header first lets the garbage reach the CRC and payload checks.
            let mut input = if valid_prefix { framed(FrameKind::Round, 0, &[])[..28].to_vec() } else { Vec::new() };
            input.extend_from_slice(&bytes);
            for sender in [Sender::Fpga, Sender::Qecd] {
                let (frames, _) = decode_chunks(sender, input.chunks(7));
                for f in frames {
                    let mut again = Vec::new();
                    f.encode(&mut again).unwrap();
                }
            }
            let _ = Frame::decode(&input);
        }
    }
}
