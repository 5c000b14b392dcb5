//! The FPGA bridge's binary frame format, version 1, as `docs/fpga-bridge.md`
//! specifies it byte for byte.
//!
//! This crate owns that wire format and nothing else: the header and its
//! flags ([`header`]), the typed payloads ([`message`]), the per-connection
//! encoder and streaming decoder ([`codec`]) and the CRC32C that seals each
//! frame ([`crc`]). It knows no socket, no session and no decoder, and it
//! depends on no other qecd crate, so the bridge listener, `qecd replay`, the
//! benches and the fuzz target all link the same codec and nothing more.
//! Callers map its wire types (the OPEN [`Basis`] byte, say) to their own at
//! their edge.
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
//! Detection events and predicted flips travel packed, as rows of Stim's
//! `b8` format ([`Events`], [`Flips`]); the codec checks their padding bits
//! but does not unpack them, and it has no bit packer of its own (callers use
//! `simulator_bridge::shots`).
//!
//! The codec does not know the conversation (OPEN before ROUND, one DECISION
//! per FINAL); the bridge listener enforces that.
#![deny(missing_docs)]

pub mod codec;
pub mod crc;
pub mod error;
pub mod header;
pub mod message;

#[cfg(test)]
mod testing;

pub use codec::{FrameDecoder, FrameEncoder, StreamError};
pub use crc::{crc32c, crc32c_append};
pub use error::FrameError;
pub use header::{
    CRC_LEN, Frame, FrameKind, HEADER_LEN, MAGIC, MAX_PAYLOAD, Sender, SequenceNumber, StreamId, VERSION, flags,
};
pub use message::{
    Ack, Basis, Decision, DecoderChoice, ErrorCode, ErrorReply, Events, Flips, MAX_EVENTS, MAX_OBSERVABLES, MAX_TEXT,
    Message, Open,
};
