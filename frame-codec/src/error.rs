//! [`FrameError`]: everything that can be wrong with one frame or payload.

use crate::header::{FrameKind, MAX_PAYLOAD, Sender, SequenceNumber, VERSION};
use crate::message::ErrorCode;

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
