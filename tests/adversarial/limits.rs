//! Size limits and unfinished shots, each refused before any work.

use std::time::{Duration, Instant};

use frame_codec::{Basis, DecoderChoice, Message, Open};
use qecd_grpc::proto;
use qecd_service::ServerOptions;
use simulator_bridge::shots::pack_bits;
use tonic::Code;

use crate::common::{Server, memory_z, shots};
use crate::{Healthy, open, round, status_of};
use proto::decoder_client::DecoderClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_code_is_refused_before_any_work_while_others_decode() {
    let server = Server::start(Server::options());
    let healthy = Healthy::open(&server).await;
    let started = Instant::now();
    // 10,000 rounds at d=3 took 3 GiB and 16 s to build before this limit.
    let status =
        status_of(&server, vec![open(proto::DecoderKind::Correlated, 3, 10_000)], Duration::from_secs(5)).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{}", status.message());
    assert!(status.message().contains("--max-rounds 100"), "{}", status.message());
    let status = status_of(&server, vec![open(proto::DecoderKind::Matching, 41, 3)], Duration::from_secs(5)).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{}", status.message());
    assert!(status.message().contains("--max-distance 15"), "{}", status.message());
    // DecodeBatch goes through the same check.
    let mut client = DecoderClient::connect(format!("http://{}", server.grpc)).await.unwrap();
    let code = memory_z(3, 5000);
    let batch = proto::DecodeBatchRequest {
        code: Some(code),
        decoder: proto::DecoderKind::Correlated as i32,
        ..Default::default()
    };
    let status = client.decode_batch(batch).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{}", status.message());
    assert!(started.elapsed() < Duration::from_secs(5), "refusals took {:?}", started.elapsed());
    healthy.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unfinished_shots_ends_its_stream_only() {
    let server = Server::start(ServerOptions { max_stream_shots: 100, ..Server::options() });
    let healthy = Healthy::open(&server).await;
    let s = shots(3, 1, 42);
    let first = &s.per_round[0][0];
    // Round 0 of 101 shots, none finished.
    let mut msgs = vec![open(proto::DecoderKind::Correlated, 3, 3)];
    msgs.extend((0..101).map(|shot| round(shot, 0, pack_bits(first), first.len())));
    let status = status_of(&server, msgs, Duration::from_secs(10)).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{}", status.message());
    assert!(status.message().contains("100 unfinished shots (--max-stream-shots 100)"), "{}", status.message());
    healthy.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonzero_padding_bits_are_refused_as_the_bridge_refuses_them() {
    let server = Server::start(Server::options());
    let healthy = Healthy::open(&server).await;
    // Round 0 of d=3 memory-Z has 4 event bits: bits 4..8 of its byte are padding.
    let msgs = vec![open(proto::DecoderKind::Correlated, 3, 3), round(0, 0, vec![0b1000_0001], 4)];
    let status = status_of(&server, msgs, Duration::from_secs(10)).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(status.message().contains("padding bits"), "{}", status.message());
    healthy.finish().await;
}

#[test]
fn a_huge_bridge_open_gets_its_error_at_once() {
    let server = Server::with_bridge(Server::options());
    let (mut sink, mut source) = qecd_service::bridge::connect(server.bridge(), Duration::from_secs(10)).unwrap();
    let started = Instant::now();
    // A 51-byte OPEN of 2,000 rounds took 672 MiB before this limit.
    let open =
        Open { distance: 3, basis: Basis::Z, decoder: DecoderChoice::Correlated, budget_us: 0, model: String::new() };
    sink.send(&Message::Open(open), 7, 0, 2000).unwrap();
    let frame = source.next_frame().unwrap().expect("an ERROR frame");
    let Message::Error(e) = frame.message().unwrap() else { panic!("not an ERROR") };
    assert_eq!((frame.stream, e.code), (7, frame_codec::ErrorCode::ResourceExhausted), "{}", e.message);
    assert!(e.message.contains("--max-rounds 100"), "{}", e.message);
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}
