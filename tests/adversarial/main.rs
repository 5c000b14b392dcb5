//! A hostile but fair client against the service (issue 15), one case per
//! limit: each gets a status naming the limit and its value, before the
//! server does any work for it, while a healthy stream on the same server
//! keeps getting every answer. Each case bounds its own time.
//!
//! One test binary, one module per concern: `limits` (sizes and unfinished
//! shots), `codes` (the code cache and its builds), `grpc` (the gRPC
//! transport: reply queue, undecodable messages, timeouts, drain, TLS and
//! tokens), `bridge` (the FPGA bridge's connections, timeouts, drain and
//! TLS) and `failures` (a decoder's failure on a shot).

use std::time::Duration;

use decoder::DecoderKind;
use qecd_grpc::client::final_status;
use qecd_grpc::proto;
use simulator_bridge::shots::pack_bits;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

#[path = "../common/mod.rs"]
mod common;

mod bridge;
mod codes;
mod failures;
mod grpc;
mod limits;
use common::{Server, ZOO_D3, offline, shots};
use proto::decode_request::Message as In;
use proto::decode_response::Message as Out;
use proto::decoder_client::DecoderClient;

pub fn open(kind: proto::DecoderKind, distance: u32, rounds: u32) -> proto::DecodeRequest {
    let code = common::memory_z(distance, rounds);
    let open =
        proto::OpenSession { code: Some(code), decoder: kind as i32, max_backlog: 1 << 30, ..Default::default() };
    proto::DecodeRequest { message: Some(In::Open(open)) }
}

pub fn round(shot: u64, t: usize, events: Vec<u8>, num_events: usize) -> proto::DecodeRequest {
    let r = proto::Round { shot, round: t as u32, num_events: num_events as u32, events, soft: vec![] };
    proto::DecodeRequest { message: Some(In::Round(r)) }
}

/// The status a stream of `msgs` ends with, within `limit`.
pub async fn status_of(server: &Server, msgs: Vec<proto::DecodeRequest>, limit: Duration) -> tonic::Status {
    let mut client = DecoderClient::connect(format!("http://{}", server.grpc)).await.unwrap();
    let run = async {
        match client.decode(tokio_stream::iter(msgs)).await {
            Ok(r) => final_status(&mut r.into_inner()).await.expect("the stream ended with OK"),
            Err(status) => status,
        }
    };
    tokio::time::timeout(limit, run).await.expect("the refusal comes at once")
}

/// A healthy neural stream on `server`: opens, then decodes `n` shots while
/// the caller does its worst; returns a closure-like handle to finish it.
pub struct Healthy {
    pub tx: mpsc::Sender<proto::DecodeRequest>,
    responses: tonic::Streaming<proto::DecodeResponse>,
    shots: common::Shots,
}

impl Healthy {
    pub async fn open(server: &Server) -> Self {
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
    pub async fn finish(mut self) {
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
