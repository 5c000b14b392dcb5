//! The two ends of a connection: [`FrameEncoder`] stamps sequence numbers on
//! outgoing frames, and [`FrameDecoder`] reassembles incoming ones from
//! arbitrary chunks, failing the stream with a [`StreamError`] that says
//! where.

use crate::error::FrameError;
use crate::header::{Frame, Sender, SequenceNumber, StreamId, needed, split_frame};
use crate::message::Message;

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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::header::{FrameKind, HEADER_LEN, MAX_PAYLOAD, u32_at};
    use crate::message::{Ack, Basis, DecoderChoice, ErrorCode, ErrorReply, Flips, MAX_TEXT, Open};
    use crate::testing::{arb_message, decision, decode_chunks, framed, golden, one_of_each, open, round, stream_of};

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
        assert!(Flips::from_packed(vec![0; 32], 256).is_err(), "256 observables cannot reach the encoder");
        let mut frame = round().to_frame(0, 0, 0).unwrap();
        frame.flags = 0x8000;
        assert!(enc.encode(&mut frame, &mut out).is_err());
        assert_eq!((out.len(), enc.next_sequence()), (0, 0), "nothing written, no sequence number used");
        let e = ErrorReply::new(ErrorCode::Internal, "é".repeat(MAX_TEXT));
        assert_eq!(e.message.len(), MAX_TEXT);
        assert!(Message::Error(e).to_frame(0, 0, 0).is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

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
