//! The transport floor of `qecd load --echo`: the Decode service of
//! proto/qecd/v1/decoder.proto answered by an echo that decodes nothing.
//!
//! It is served the way [`qecd_grpc::serve`] serves the decoder
//! (tonic, loopback, `TCP_NODELAY`) and answers through the same kind of
//! response stream, but one tokio task reads a stream's requests and answers
//! each at once, hands it to nothing and never looks at its detection events.
//! Round trips against it are what gRPC, HTTP/2 and tokio cost; the decoder's
//! overhead is the difference from them.

use std::net::SocketAddr;

use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use qecd_grpc::bind;
use qecd_grpc::proto::decode_request::Message as In;
use qecd_grpc::proto::decode_response::Message as Out;
use qecd_grpc::proto::decoder_server::{Decoder as DecoderApi, DecoderServer};
use qecd_grpc::proto::{self, DecodeRequest, DecodeResponse};

/// The echo service: every round acknowledged, every shot answered "no flip".
pub struct EchoService;

/// The answer to one request, made without looking at its detection events.
fn answer(request: In) -> Out {
    match request {
        In::Open(open) => {
            // Event counts of the rotated surface code, as the real session reports them.
            let d = open.code.map_or(0, |c| c.distance);
            let stabilizers = (d * d).saturating_sub(1);
            Out::Opened(proto::SessionOpened {
                model: "echo".into(),
                first_round_events: stabilizers / 2,
                round_events: stabilizers,
                final_round_events: stabilizers / 2,
                ..Default::default()
            })
        }
        In::Round(r) => {
            Out::Ack(proto::RoundAck { shot: r.shot, round: r.round, step_latency_ns: 0, budget_met: true, backlog: 0 })
        }
        In::Final(f) => Out::Result(proto::ShotResult {
            shot: f.shot,
            num_observables: 1,
            prediction: vec![0],
            confidence: f64::NAN,
            answered_by: proto::DecoderKind::Unspecified as i32,
            fell_back: false,
            fallback_reason: String::new(),
            decision_latency_ns: 0,
            model_version: String::new(),
        }),
    }
}

#[tonic::async_trait]
impl DecoderApi for EchoService {
    /// The real service's response stream type, so that both answer through the same path.
    type DecodeStream = UnboundedReceiverStream<Result<DecodeResponse, Status>>;

    async fn decode(&self, request: Request<Streaming<DecodeRequest>>) -> Result<Response<Self::DecodeStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let response = match inbound.message().await {
                    Ok(Some(DecodeRequest { message: Some(m) })) => Ok(DecodeResponse { message: Some(answer(m)) }),
                    Ok(Some(DecodeRequest { message: None })) => {
                        Err(Status::invalid_argument("a DecodeRequest with no message (open, round or final)"))
                    }
                    Ok(None) | Err(_) => return, // the client finished sending, or went away
                };
                let last = response.is_err();
                if tx.send(response).is_err() || last {
                    return;
                }
            }
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }

    async fn decode_batch(
        &self,
        _: Request<proto::DecodeBatchRequest>,
    ) -> Result<Response<proto::DecodeBatchResponse>, Status> {
        Err(Status::unimplemented("the echo server answers Decode and GetStats only"))
    }

    async fn list_models(
        &self,
        _: Request<proto::ListModelsRequest>,
    ) -> Result<Response<proto::ListModelsResponse>, Status> {
        Err(Status::unimplemented("the echo server answers Decode and GetStats only"))
    }

    async fn get_stats(&self, _: Request<proto::GetStatsRequest>) -> Result<Response<proto::GetStatsResponse>, Status> {
        Ok(Response::new(proto::GetStatsResponse::default()))
    }

    async fn load_model(
        &self,
        _: Request<proto::LoadModelRequest>,
    ) -> Result<Response<proto::LoadModelResponse>, Status> {
        Err(Status::unimplemented("the echo server answers Decode and GetStats only"))
    }
}

/// An echo server on a free loopback port inside this process.
pub struct LocalEcho {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl LocalEcho {
    /// Starts the echo service on 127.0.0.1, port chosen by the system.
    pub async fn start() -> anyhow::Result<Self> {
        let (listener, addr) = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(DecoderServer::new(EchoService))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    async move {
                        let _ = stopped.await;
                    },
                ),
        );
        Ok(Self { addr, stop, task })
    }

    /// Shuts it down, waiting for open streams to finish.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        Ok(self.task.await??)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_are_acknowledged_and_shots_answered_with_no_flip() {
        let ack =
            answer(In::Round(proto::Round { shot: 7, round: 2, num_events: 8, events: vec![0xff], soft: vec![] }));
        assert_eq!(
            ack,
            Out::Ack(proto::RoundAck { shot: 7, round: 2, step_latency_ns: 0, budget_met: true, backlog: 0 })
        );
        let Out::Result(r) = answer(In::Final(proto::FinalRound { shot: 7, num_events: 4, events: vec![0x0f] })) else {
            panic!("a final round must be answered with a ShotResult");
        };
        assert_eq!((r.shot, r.num_observables, r.prediction), (7, 1, vec![0]));
        assert!(r.confidence.is_nan());
        assert_eq!(r.answered_by, proto::DecoderKind::Unspecified as i32);
    }

    #[test]
    fn open_reports_the_event_counts_of_the_code() {
        let code = proto::Code { distance: 5, rounds: 5, ..Default::default() };
        let Out::Opened(o) = answer(In::Open(proto::OpenSession { code: Some(code), ..Default::default() })) else {
            panic!("open must be answered with SessionOpened");
        };
        assert_eq!((o.first_round_events, o.round_events, o.final_round_events), (12, 24, 12));
    }
}
