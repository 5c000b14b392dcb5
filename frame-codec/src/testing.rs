//! Messages, streams and golden bytes shared by the unit tests.

use proptest::prelude::*;

use crate::codec::{FrameDecoder, FrameEncoder, StreamError};
use crate::crc::crc32c;
use crate::header::{Frame, FrameKind, MAGIC, Sender, VERSION};
use crate::message::{
    Ack, Basis, Decision, DecoderChoice, ErrorCode, ErrorReply, Events, Flips, MAX_EVENTS, Message, Open,
};

pub fn open() -> Message {
    Message::Open(Open {
        distance: 3,
        basis: Basis::Z,
        decoder: DecoderChoice::NeuralChecked,
        budget_us: 1000,
        model: "d3_z".into(),
    })
}

/// Eight events, of which 1 and 6 fired.
pub fn round() -> Message {
    Message::Round(Events::from_packed(vec![0b0100_0010], 8).unwrap())
}

pub fn decision() -> Message {
    Message::Decision(Decision {
        flips: Flips::from_packed(vec![1], 1).unwrap(),
        confidence: 0.984375,
        latency_ns: 1520,
        decoder: DecoderChoice::Neural,
        fell_back: false,
        baseline: Some(true),
    })
}

/// One message of every kind, in a plausible order for each sender.
pub fn one_of_each() -> Vec<Message> {
    vec![
        open(),
        round(),
        Message::Final(Events::from_packed(vec![0b101], 3).unwrap()),
        Message::Close,
        Message::Ack(Ack { step_latency_ns: 12_345, budget_met: true }),
        decision(),
        Message::Error(ErrorReply::new(ErrorCode::FailedPrecondition, "ROUND for stream 9 before its OPEN")),
    ]
}

/// The bytes of `messages` from `sender`, as one connection, with the frame boundaries.
pub fn stream_of(sender: Sender, messages: &[Message]) -> (Vec<u8>, Vec<Frame>) {
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
pub fn decode_chunks<'a>(
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

/// Re-frames `payload` as a valid frame of `kind` so that only the payload can be wrong.
pub fn framed(kind: FrameKind, flags: u16, payload: &[u8]) -> Vec<u8> {
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

/// The bytes of the fenced block after `<!-- golden: name -->` in docs/fpga-bridge.md;
/// `#` starts a comment.
pub fn golden(name: &str) -> Vec<u8> {
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

/// A random bit count in `lens` and that many random bits, packed, padding bits clear.
fn arb_packed(lens: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = (Vec<u8>, usize)> {
    lens.prop_flat_map(|len| {
        proptest::collection::vec(any::<u8>(), len.div_ceil(8)).prop_map(move |mut packed| {
            if let Some(last) = packed.last_mut()
                && len % 8 != 0
            {
                *last &= (1 << (len % 8)) - 1;
            }
            (packed, len)
        })
    })
}

/// Up to `max` random events.
pub fn arb_events(max: usize) -> impl Strategy<Value = Events> {
    assert!(max <= MAX_EVENTS);
    arb_packed(0..=max).prop_map(|(packed, len)| Events::from_packed(packed, len).unwrap())
}

pub fn arb_message() -> impl Strategy<Value = Message> {
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
    let decision = (
        arb_packed(1..=19).prop_map(|(packed, len)| Flips::from_packed(packed, len).unwrap()),
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
        arb_events(699).prop_map(Message::Round),
        arb_events(699).prop_map(Message::Final),
        Just(Message::Close),
        (any::<u32>(), any::<bool>())
            .prop_map(|(step_latency_ns, budget_met)| Message::Ack(Ack { step_latency_ns, budget_met })),
        decision,
        error,
    ]
}
