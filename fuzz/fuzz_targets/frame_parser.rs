//! Fuzzes the FPGA bridge's streaming frame decoder (the `frame-codec` crate).
//!
//! Input: one control byte, then the byte stream. Control bit 7 picks who
//! sends (0: the FPGA, 1: qecd), bit 6 asks for the CRCs and sequence numbers
//! of the stream's frames to be repaired first (so that mutations reach the
//! checks behind the CRC), and bits 0..6 give the size of the chunks the
//! stream is fed in, minus 1.
//!
//! Checks: the decoder never panics; once it fails it keeps failing with the
//! same error; every frame it yields re-encodes to exactly the bytes it came
//! from, through both `Frame::encode` and the typed `Message`, and
//! `Frame::decode` reads those bytes the same way.
#![no_main]

use libfuzzer_sys::fuzz_target;

use frame_codec::{CRC_LEN, Frame, FrameDecoder, HEADER_LEN, MAX_PAYLOAD, Sender, crc32c};

/// Rewrites the sequence number and CRC of each whole frame of `stream` whose header is plausible.
fn repair(stream: &mut [u8]) {
    let mut at = 0;
    let mut sequence = 0u32;
    while stream.len() - at >= HEADER_LEN + CRC_LEN {
        let len = u32::from_le_bytes(stream[at + 28..at + 32].try_into().unwrap()) as usize;
        let end = at + HEADER_LEN + len;
        if len > MAX_PAYLOAD || end + CRC_LEN > stream.len() {
            return;
        }
        stream[at + 12..at + 16].copy_from_slice(&sequence.to_le_bytes());
        let crc = crc32c(&stream[at..end]);
        stream[end..end + CRC_LEN].copy_from_slice(&crc.to_le_bytes());
        sequence = sequence.wrapping_add(1);
        at = end + CRC_LEN;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let sender = if control & 0x80 == 0 { Sender::Fpga } else { Sender::Qecd };
    let chunk = usize::from(control & 0x3F) + 1;
    let mut stream = stream.to_vec();
    if control & 0x40 != 0 {
        repair(&mut stream);
    }

    let mut decoder = FrameDecoder::new(sender);
    for piece in stream.chunks(chunk) {
        decoder.feed(piece);
        loop {
            let start = decoder.offset() as usize;
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    let original = &stream[start..decoder.offset() as usize];
                    let mut again = Vec::new();
                    frame.encode(&mut again).expect("a decoded frame encodes");
                    assert_eq!(again, original, "re-encoding changed the bytes");

                    let message = frame.message().expect("a decoded frame has a valid payload");
                    let mut typed = message.to_frame(frame.stream, frame.shot, frame.round).expect("typed re-encoding");
                    typed.sequence = frame.sequence;
                    assert_eq!(typed, frame, "the typed message does not give back the frame");

                    assert_eq!(Frame::decode(original), Ok((frame, original.len())));
                }
                Ok(None) => break,
                Err(error) => {
                    assert_eq!(decoder.next_frame(), Err(error.clone()), "the error did not stick");
                    assert_eq!(decoder.finish(), Err(error));
                    return;
                }
            }
        }
    }
    let _ = decoder.finish();
});
