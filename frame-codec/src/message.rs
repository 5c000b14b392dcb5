//! The typed payloads: OPEN's session parameters, the packed detection events
//! of ROUND and FINAL, ACK, DECISION with its packed flips, and ERROR, and
//! [`Message`], which parses and serializes them with their header flags.

use std::fmt;

use crate::error::FrameError;
use crate::header::{Frame, FrameKind, StreamId, flags, u16_at, u32_at};

/// The longest model name (OPEN) or error message (ERROR), in bytes of UTF-8.
pub const MAX_TEXT: usize = 1024;
/// The most detection events one ROUND or FINAL frame carries (the bit count is a `u16`).
pub const MAX_EVENTS: usize = u16::MAX as usize;
/// The most observables one DECISION predicts (the count is a `u8`).
pub const MAX_OBSERVABLES: usize = u8::MAX as usize;

/// The memory basis byte of OPEN (0 = X, 1 = Z).
///
/// The wire's own type: this crate depends on no other qecd crate, so a
/// caller maps it to its domain's basis at its edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Basis {
    /// Memory in the X basis (code 0).
    X,
    /// Memory in the Z basis (code 1).
    Z,
}

impl Basis {
    /// The byte on the wire.
    pub fn code(self) -> u8 {
        match self {
            Basis::X => 0,
            Basis::Z => 1,
        }
    }

    /// The basis with wire byte `code`, if there is one.
    pub fn from_code(code: u8) -> Option<Self> {
        [Basis::X, Basis::Z].into_iter().find(|b| b.code() == code)
    }
}

impl fmt::Display for Basis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Basis::X => "X",
            Basis::Z => "Z",
        })
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
    /// A deadline passed: a handshake or an idle connection timed out (gRPC 4).
    DeadlineExceeded,
    /// A bug or an unexpected failure inside qecd (gRPC 13).
    Internal,
    /// The server is shutting down (gRPC 14).
    Unavailable,
}

impl ErrorCode {
    /// Every code, by number.
    pub const ALL: [ErrorCode; 7] = [
        ErrorCode::InvalidArgument,
        ErrorCode::DeadlineExceeded,
        ErrorCode::NotFound,
        ErrorCode::ResourceExhausted,
        ErrorCode::FailedPrecondition,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
    ];

    /// The gRPC status code, which is also the `u16` on the wire.
    pub fn code(self) -> u16 {
        match self {
            ErrorCode::InvalidArgument => 3,
            ErrorCode::NotFound => 5,
            ErrorCode::ResourceExhausted => 8,
            ErrorCode::FailedPrecondition => 9,
            ErrorCode::DeadlineExceeded => 4,
            ErrorCode::Internal => 13,
            ErrorCode::Unavailable => 14,
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
            ErrorCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::Unavailable => "UNAVAILABLE",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
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
///
/// The codec carries events packed only; a caller holding one `bool` per
/// event packs and unpacks them with `simulator_bridge::shots`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Events {
    /// Number of events (bits).
    len: usize,
    /// `ceil(len / 8)` bytes, padding bits clear.
    packed: Vec<u8>,
}

impl Events {
    /// Wraps `len` packed events (a `b8` row, as `simulator_bridge::shots::pack_bits`
    /// writes it): at most [`MAX_EVENTS`], `ceil(len / 8)` bytes, padding bits 0.
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
        bit(&self.packed, self.len, k)
    }

    /// The packed bytes.
    pub fn packed(&self) -> &[u8] {
        &self.packed
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

/// A DECISION's predicted flip of each logical observable, packed as
/// [`Events`] are: observable `k` is bit `k % 8` of byte `k / 8`, and padding
/// bits are 0.
///
/// There are 1 to [`MAX_OBSERVABLES`] of them, so every `Flips` fits a
/// frame. A caller holding one `bool` per observable packs and unpacks them
/// with `simulator_bridge::shots`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flips {
    /// Number of observables (bits), 1 to [`MAX_OBSERVABLES`].
    len: usize,
    /// `ceil(len / 8)` bytes, padding bits clear.
    packed: Vec<u8>,
}

impl Flips {
    /// Wraps the packed flips of `len` observables (as
    /// `simulator_bridge::shots::pack_bits` writes them): 1 to
    /// [`MAX_OBSERVABLES`], `ceil(len / 8)` bytes, padding bits 0. The errors
    /// are the ones a DECISION frame with these flips would get.
    pub fn from_packed(packed: Vec<u8>, len: usize) -> Result<Self, FrameError> {
        let kind = FrameKind::Decision;
        if len == 0 {
            return Err(invalid(kind, "observable count", "0 (a decision predicts at least one)".into()));
        }
        if len > MAX_OBSERVABLES {
            return Err(invalid(kind, "observable count", format!("{len} observables, at most {MAX_OBSERVABLES}")));
        }
        if packed.len() != len.div_ceil(8) {
            return Err(invalid(
                kind,
                "predicted flips",
                format!("{len} observables pack into {} bytes, got {}", len.div_ceil(8), packed.len()),
            ));
        }
        if !padding_clear(&packed, len) {
            return Err(invalid(kind, "predicted flips", format!("bits set past bit {len}")));
        }
        Ok(Self { len, packed })
    }

    /// Number of observables; never 0.
    #[allow(clippy::len_without_is_empty, reason = "a decision predicts at least one observable")]
    pub fn len(&self) -> usize {
        self.len
    }

    /// The predicted flip of observable `k`, or `None` past the end.
    pub fn get(&self, k: usize) -> Option<bool> {
        bit(&self.packed, self.len, k)
    }

    /// The packed bytes.
    pub fn packed(&self) -> &[u8] {
        &self.packed
    }
}

/// The payload of DECISION (and its flags): the prediction for a shot.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Predicted flip of each logical observable.
    pub flips: Flips,
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
                out.extend_from_slice(&[open.distance, open.basis.code(), open.decoder.code(), 0]);
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
                // `Flips` holds 1 to MAX_OBSERVABLES (= u8::MAX), so the count fits its byte.
                out.push(d.flips.len as u8);
                out.extend_from_slice(&d.flips.packed);
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
                let code = r.u8("basis")?;
                let basis = Basis::from_code(code)
                    .ok_or_else(|| invalid(kind, "basis", format!("{code} (expected 0 = X or 1 = Z)")))?;
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
                let flips = Flips::from_packed(r.bytes(count.div_ceil(8), "predicted flips")?.to_vec(), count)?;
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
                let code = ErrorCode::from_code(number).ok_or_else(|| {
                    invalid(kind, "error code", format!("{number} (expected 3, 4, 5, 8, 9, 13 or 14)"))
                })?;
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

/// Writes a `u16` length and the UTF-8 bytes of `text`, at most [`MAX_TEXT`] of them.
fn put_text(kind: FrameKind, field: &'static str, text: &str, out: &mut Vec<u8>) -> Result<(), FrameError> {
    if text.len() > MAX_TEXT {
        return Err(invalid(kind, field, format!("{} bytes, at most {MAX_TEXT}", text.len())));
    }
    out.extend_from_slice(&(text.len() as u16).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

/// Bit `k` of the first `len` of LSB-first `packed`, or `None` past them.
fn bit(packed: &[u8], len: usize, k: usize) -> Option<bool> {
    (k < len).then(|| (packed[k / 8] >> (k % 8)) & 1 == 1)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::framed;

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
            (Error, 0, &[6, 0, 0, 0], "invalid error code in ERROR frame: 6 (expected 3, 4, 5, 8, 9, 13 or 14)"),
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
    fn events_stay_packed_as_b8_rows() {
        let events = Events::from_packed(vec![0b0000_1001, 0b1], 9).unwrap();
        assert_eq!(events.packed(), &[0b0000_1001, 0b1]);
        assert_eq!((events.len(), events.count_ones(), events.get(8), events.get(9)), (9, 3, Some(true), None));
        assert_eq!((0..9).filter_map(|k| events.get(k)).filter(|&e| e).count(), 3);
        assert!(Events::from_packed(vec![0, 0], 9).is_ok());
        assert_eq!(
            Events::from_packed(vec![0, 2], 9).unwrap_err().to_string(),
            "invalid detection events: bits set past bit 9 (padding must be zero)"
        );
        assert_eq!(
            Events::from_packed(vec![0], 9).unwrap_err().to_string(),
            "invalid detection events: 9 events pack into 2 bytes, got 1"
        );
        let too_many = MAX_EVENTS + 1;
        assert_eq!(
            Events::from_packed(vec![0; too_many.div_ceil(8)], too_many).unwrap_err().to_string(),
            "invalid detection events: 65536 events, at most 65535 fit a frame"
        );
        assert!(
            Events::from_packed(vec![0xFF; MAX_EVENTS.div_ceil(8) - 1].into_iter().chain([0x7F]).collect(), MAX_EVENTS)
                .is_ok()
        );
        assert!(Events::default().is_empty());
    }

    #[test]
    fn flips_stay_packed_and_always_fit_a_decision() {
        let flips = Flips::from_packed(vec![0b1000_0001, 0b10], 10).unwrap();
        assert_eq!(flips.packed(), &[0b1000_0001, 0b10]);
        let bits: Vec<Option<bool>> = (0..11).map(|k| flips.get(k)).collect();
        let want = [true, false, false, false, false, false, false, true, false, true];
        assert_eq!(bits, want.iter().copied().map(Some).chain([None]).collect::<Vec<_>>());
        assert_eq!(flips.len(), 10);
        let all = Flips::from_packed(vec![0xFF; 31].into_iter().chain([0x7F]).collect(), MAX_OBSERVABLES).unwrap();
        assert_eq!((all.len(), all.get(254), all.get(255)), (255, Some(true), None));
        for (packed, len, want) in [
            (vec![], 0, "invalid observable count in DECISION frame: 0 (a decision predicts at least one)"),
            (vec![0; 32], 256, "invalid observable count in DECISION frame: 256 observables, at most 255"),
            (vec![0], 9, "invalid predicted flips in DECISION frame: 9 observables pack into 2 bytes, got 1"),
            (vec![0b10], 1, "invalid predicted flips in DECISION frame: bits set past bit 1"),
        ] {
            assert_eq!(Flips::from_packed(packed, len).unwrap_err().to_string(), want, "{len} observables");
        }
    }

    #[test]
    fn basis_and_decoder_codes_are_the_docs() {
        assert_eq!((Basis::X.code(), Basis::Z.code()), (0, 1));
        assert_eq!((Basis::from_code(1), Basis::from_code(2)), (Some(Basis::Z), None));
        let codes: Vec<u8> = (0..=255).filter(|&c| DecoderChoice::from_code(c).is_some()).collect();
        assert_eq!(codes, [0, 1, 2, 3, 4]);
        assert_eq!(DecoderChoice::from_code(4), Some(DecoderChoice::NeuralMatching));
    }
}
