//! A decoder's failure on a shot answers that shot, once: `ShotFailed`
//! (INTERNAL) over gRPC, an INTERNAL ERROR naming the shot on the bridge.
//! The stream goes on, and its other shots are decoded as offline decoding
//! decodes them. The failure is injected (`ServerOptions::fail_decoding_every`):
//! PyMatching does not fail on a surface code's shots.

use std::time::Duration;

use decoder::DecoderKind;
use frame_codec::{Basis, DecoderChoice, ErrorCode, Events, Message, Open};
use qecd_grpc::proto;
use qecd_service::ServerOptions;
use simulator_bridge::shots::pack_bits;
use tokio_stream::StreamExt;

use crate::common::{Server, offline, shots};
use crate::{Healthy, open, round};
use proto::decode_request::Message as In;
use proto::decode_response::Message as Out;
use proto::decoder_client::DecoderClient;

/// Every fifth shot (ids 4, 9, 14, …) fails in its stream's matching lane.
const EVERY: u64 = 5;

fn injected() -> ServerOptions {
    ServerOptions { fail_decoding_every: Some(EVERY), ..Server::options() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_shot_is_answered_with_its_status_and_the_stream_goes_on() {
    let server = Server::start(injected());
    // The healthy neural stream answers on the engine, not a matching lane: untouched.
    let healthy = Healthy::open(&server).await;
    let s = shots(3, 30, 43);
    let mut msgs = vec![open(proto::DecoderKind::Correlated, 3, s.rounds as u32)];
    for (shot, r) in s.per_round.iter().enumerate() {
        for (t, bits) in r.iter().enumerate() {
            msgs.push(if t < s.rounds {
                round(shot as u64, t, pack_bits(bits), bits.len())
            } else {
                let f = proto::FinalRound { shot: shot as u64, num_events: bits.len() as u32, events: pack_bits(bits) };
                proto::DecodeRequest { message: Some(In::Final(f)) }
            });
        }
    }
    let mut client = DecoderClient::connect(format!("http://{}", server.grpc)).await.unwrap();
    let want = offline(&s, DecoderKind::Correlated);
    let run = async {
        let mut responses = client.decode(tokio_stream::iter(msgs)).await.unwrap().into_inner();
        let (mut answers, mut failed) = (vec![0; want.len()], Vec::new());
        while let Some(r) = responses.next().await {
            match r.expect("the stream ends with OK").message {
                Some(Out::Result(r)) => {
                    answers[r.shot as usize] += 1;
                    assert_eq!(r.prediction[0] & 1 == 1, want[r.shot as usize], "shot {}", r.shot);
                }
                Some(Out::Failed(f)) => {
                    answers[f.shot as usize] += 1;
                    assert_eq!(f.code, tonic::Code::Internal as u32, "{}", f.message);
                    assert!(f.message.contains(&format!("shot {}", f.shot)), "{}", f.message);
                    failed.push(f.shot);
                }
                _ => {}
            }
        }
        (answers, failed)
    };
    let (answers, failed) = tokio::time::timeout(Duration::from_secs(30), run).await.expect("answers within 30 s");
    assert!(answers.iter().all(|&n| n == 1), "every shot answered once: {answers:?}");
    let expected: Vec<u64> = (0..want.len() as u64).filter(|s| s % EVERY == EVERY - 1).collect();
    assert_eq!(failed, expected);
    assert_eq!(server.hub.stats.failed_shots.load(std::sync::atomic::Ordering::Relaxed), expected.len() as u64);
    healthy.finish().await;
}

#[test]
fn a_failed_shot_on_the_bridge_gets_an_internal_error_naming_it_and_the_stream_goes_on() {
    let server = Server::with_bridge(injected());
    let (mut sink, mut source) = qecd_service::bridge::connect(server.bridge(), Duration::from_secs(30)).unwrap();
    let s = shots(3, 12, 44);
    let want = offline(&s, DecoderKind::Correlated);
    let open =
        Open { distance: 3, basis: Basis::Z, decoder: DecoderChoice::Correlated, budget_us: 0, model: String::new() };
    sink.send(&Message::Open(open), 1, 0, s.rounds as u32).unwrap();
    for (shot, r) in s.per_round.iter().enumerate() {
        for (t, bits) in r.iter().enumerate() {
            let events = Events::from_packed(pack_bits(bits), bits.len()).unwrap();
            let message = if t < s.rounds { Message::Round(events) } else { Message::Final(events) };
            sink.send(&message, 1, shot as u64, t as u32).unwrap();
        }
    }
    sink.finish([1]).unwrap();
    let (mut answers, mut failed) = (vec![0; want.len()], 0);
    while let Some(frame) = source.next_frame().unwrap() {
        match frame.message().unwrap() {
            Message::Decision(d) => {
                answers[frame.shot as usize] += 1;
                assert_eq!(d.flips.get(0), Some(want[frame.shot as usize]), "shot {}", frame.shot);
            }
            Message::Error(e) => {
                answers[frame.shot as usize] += 1;
                assert_eq!(e.code, ErrorCode::Internal, "{}", e.message);
                assert_eq!(frame.shot % EVERY, EVERY - 1, "only injected shots fail: {}", e.message);
                assert_eq!(frame.round, s.rounds as u32, "in the FINAL's round");
                failed += 1;
            }
            _ => {}
        }
    }
    assert!(answers.iter().all(|&n| n == 1), "every shot answered once: {answers:?}");
    assert_eq!(failed, want.len() as u64 / EVERY, "shots 4 and 9 of 12 fail");
}
