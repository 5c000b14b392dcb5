//! A hostile but fair client against the service (issue 15), one case per
//! limit: each gets a status naming the limit and its value, before the
//! server does any work for it, while a healthy stream on the same server
//! keeps getting every answer. Each case bounds its own time.

use std::time::{Duration, Instant};

use decoder::DecoderKind;
use frame_codec::{Basis, DecoderChoice, Message, Open};
use qecd_grpc::proto;
use qecd_service::ServerOptions;
use simulator_bridge::shots::pack_bits;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

mod common;
use common::{Server, ZOO_D3, offline, shots};
use proto::decode_request::Message as In;
use proto::decode_response::Message as Out;
use proto::decoder_client::DecoderClient;

fn open(kind: proto::DecoderKind, distance: u32, rounds: u32) -> proto::DecodeRequest {
    let code = proto::Code { distance, basis: proto::Basis::Z as i32, rounds, noise: String::new(), p: 0.0 };
    let open =
        proto::OpenSession { code: Some(code), decoder: kind as i32, max_backlog: 1 << 30, ..Default::default() };
    proto::DecodeRequest { message: Some(In::Open(open)) }
}

fn round(shot: u64, t: usize, events: Vec<u8>, num_events: usize) -> proto::DecodeRequest {
    let r = proto::Round { shot, round: t as u32, num_events: num_events as u32, events, soft: vec![] };
    proto::DecodeRequest { message: Some(In::Round(r)) }
}

/// The status a stream of `msgs` ends with, within `limit`.
async fn status_of(server: &Server, msgs: Vec<proto::DecodeRequest>, limit: Duration) -> tonic::Status {
    let mut client = DecoderClient::connect(format!("http://{}", server.grpc)).await.unwrap();
    let run = async {
        let mut responses = match client.decode(tokio_stream::iter(msgs)).await {
            Ok(r) => r.into_inner(),
            Err(status) => return status,
        };
        loop {
            match responses.next().await {
                Some(Ok(_)) => {}
                Some(Err(status)) => return status,
                None => panic!("the stream ended with OK"),
            }
        }
    };
    tokio::time::timeout(limit, run).await.expect("the refusal comes at once")
}

/// A healthy neural stream on `server`: opens, then decodes `n` shots while
/// the caller does its worst; returns a closure-like handle to finish it.
struct Healthy {
    tx: mpsc::Sender<proto::DecodeRequest>,
    responses: tonic::Streaming<proto::DecodeResponse>,
    shots: common::Shots,
}

impl Healthy {
    async fn open(server: &Server) -> Self {
        let shots = shots(3, 20, 41);
        let (tx, rx) = mpsc::channel(4096);
        let mut client = DecoderClient::connect(format!("http://{}", server.grpc)).await.unwrap();
        let mut responses = client.decode(ReceiverStream::new(rx)).await.unwrap().into_inner();
        let mut o = open(proto::DecoderKind::Neural, 3, shots.rounds as u32);
        if let Some(In::Open(open)) = o.message.as_mut() {
            open.model = ZOO_D3.into();
        }
        tx.send(o).await.unwrap();
        assert!(matches!(responses.next().await.unwrap().unwrap().message, Some(Out::Opened(_))));
        Self { tx, responses, shots }
    }

    /// Sends every shot, then checks each is answered once, as offline decoding answers it.
    async fn finish(mut self) {
        let s = &self.shots;
        for (shot, r) in s.per_round.iter().enumerate() {
            for (t, bits) in r.iter().enumerate() {
                let msg = if t < s.rounds {
                    round(shot as u64, t, pack_bits(bits), bits.len())
                } else {
                    let f =
                        proto::FinalRound { shot: shot as u64, num_events: bits.len() as u32, events: pack_bits(bits) };
                    proto::DecodeRequest { message: Some(In::Final(f)) }
                };
                self.tx.send(msg).await.unwrap();
            }
        }
        drop(self.tx);
        let want = offline(s, DecoderKind::Neural);
        let mut answered = vec![0; want.len()];
        while let Some(r) = self.responses.next().await {
            if let Some(Out::Result(r)) = r.unwrap().message {
                answered[r.shot as usize] += 1;
                assert_eq!(r.prediction[0] & 1 == 1, want[r.shot as usize]);
            }
        }
        assert!(answered.iter().all(|&n| n == 1), "the healthy stream's shots: {answered:?}");
    }
}

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
    let code = proto::Code { distance: 3, basis: proto::Basis::Z as i32, rounds: 5000, noise: String::new(), p: 0.0 };
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
