//! The tonic service of proto/qecd/v1/decoder.proto, with gRPC health
//! checking and server reflection (v1 and v1alpha, for older clients such
//! as Python's `grpcio-reflection`).
//!
//! A Decode stream runs on the tokio task that reads its messages (`run`),
//! and its responses go back through an unbounded channel. A bad message
//! ends that stream with the status of its [`Fault`]; nothing else on the
//! server notices.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use qecd_service::api::{Fault, Status as ServiceStatus};
use qecd_service::session::Stream;
use qecd_service::stats::Histogram;
use qecd_service::{Hub, StreamSlot};
use tokio::sync::mpsc::UnboundedSender;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::convert;
use crate::proto::decoder_server::{Decoder as DecoderApi, DecoderServer};
use crate::proto::{self, DecodeRequest, DecodeResponse, decode_request::Message as In};

/// The gRPC front of a [`Hub`].
pub struct DecoderService {
    hub: Arc<Hub>,
}

impl DecoderService {
    /// Serves `hub`.
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }
}

#[tonic::async_trait]
impl DecoderApi for DecoderService {
    type DecodeStream = UnboundedReceiverStream<Result<DecodeResponse, Status>>;

    async fn decode(&self, request: Request<Streaming<DecodeRequest>>) -> Result<Response<Self::DecodeStream>, Status> {
        let hub = self.hub.clone();
        let slot = hub.admit().map_err(convert::status)?;
        let inbound = request.into_inner();
        let (out_tx, out_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let result = run(hub, inbound, out_tx.clone()).await;
            // The stream no longer counts as open once the client can learn that it ended.
            drop::<StreamSlot>(slot);
            if let Err(fault) = result {
                let _ = out_tx.send(Err(convert::status(fault)));
            }
        });
        Ok(Response::new(UnboundedReceiverStream::new(out_rx)))
    }

    async fn decode_batch(
        &self,
        request: Request<proto::DecodeBatchRequest>,
    ) -> Result<Response<proto::DecodeBatchResponse>, Status> {
        let hub = self.hub.clone();
        let req = convert::batch_request(request.into_inner()).map_err(convert::status)?;
        let reply = tokio::task::spawn_blocking(move || hub.decode_batch(req))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(convert::status)?;
        Ok(Response::new(convert::batch_response(reply)))
    }

    async fn list_models(
        &self,
        _: Request<proto::ListModelsRequest>,
    ) -> Result<Response<proto::ListModelsResponse>, Status> {
        let models = self
            .hub
            .models
            .summaries()
            .into_iter()
            .map(|m| proto::ModelInfo {
                name: m.name,
                distance: m.distance as u32,
                basis: convert::basis(m.basis) as i32,
                noise: m.noise,
                p: m.p,
                rounds_trained: m.rounds_trained,
                width: m.width as u32,
                layers: m.layers as u32,
                temperature: m.temperature,
            })
            .collect();
        Ok(Response::new(proto::ListModelsResponse { models }))
    }

    async fn get_stats(&self, _: Request<proto::GetStatsRequest>) -> Result<Response<proto::GetStatsResponse>, Status> {
        Ok(Response::new(stats_response(&self.hub)))
    }
}

/// Runs one Decode stream until the client's messages end and every answer
/// owed has been sent, or the client goes away. Each message is handled
/// right here, on the task that read it, and a neural round is stepped here
/// too when the engine is idle (see [`Stream`]); only opening the
/// session and waiting for the last answers leave the async runtime.
async fn run(
    hub: Arc<Hub>,
    mut inbound: Streaming<DecodeRequest>,
    out: UnboundedSender<Result<DecodeResponse, Status>>,
) -> Result<(), Fault> {
    let open = match inbound.message().await {
        Ok(Some(DecodeRequest { message: Some(In::Open(open)) })) => convert::open_request(open)?,
        Ok(Some(_)) => {
            return Err(Fault::new(
                ServiceStatus::FailedPrecondition,
                "no session opened: the first message of a Decode stream must be `open`",
            ));
        }
        Ok(None) | Err(_) => return Ok(()),
    };
    let sink: qecd_service::api::Sink = Arc::new(move |r| out.send(Ok(convert::response(r))).is_ok());
    let stream = tokio::task::spawn_blocking(move || Stream::open(hub, open, sink))
        .await
        .map_err(|e| Fault::internal(format!("opening the session failed: {e}")))??;
    serve_stream(stream, inbound).await
}

/// Feeds an open stream its client's messages until they end.
async fn serve_stream(stream: Arc<Stream>, mut inbound: Streaming<DecodeRequest>) -> Result<(), Fault> {
    stream.span().in_scope(|| tracing::debug!("opened over gRPC"));
    let mut ended = false;
    while !ended {
        // Handle every message that has arrived before stepping, so that a
        // client sending faster than the engine steps shows up as this
        // stream's backlog (and falls back), not as bytes piling up unread.
        let mut next = Some(inbound.message().await);
        while let Some(message) = next.take() {
            let input = match message {
                Ok(Some(DecodeRequest { message })) => convert::input(message),
                Ok(None) | Err(_) => {
                    ended = true; // the client finished sending, or went away
                    break;
                }
            };
            if let Err(fault) = stream.input(input) {
                stream.abandon();
                stream.span().in_scope(|| tracing::info!(status = ?fault.status, "stream ended: {}", fault.message));
                return Err(fault);
            }
            next = ready_now(inbound.message());
        }
        stream.drive();
        ended |= stream.is_closed();
    }
    let _ = tokio::task::spawn_blocking(move || stream.end()).await;
    Ok(())
}

/// The future's output if it is ready without waiting. Polling
/// `Streaming::message` and dropping it unfinished loses nothing: its state
/// lives in the stream.
fn ready_now<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

/// The `GetStats` answer of a hub.
pub fn stats_response(hub: &Hub) -> proto::GetStatsResponse {
    let s = &hub.stats;
    let percentiles = |h: &Histogram| {
        let [p50_us, p99_us, p999_us] = h.percentiles_us();
        proto::Percentiles { count: h.count(), p50_us, p99_us, p999_us }
    };
    let decoders = s
        .latencies()
        .iter()
        .map(|(kind, l)| proto::DecoderStats {
            decoder: convert::decoder_kind(*kind) as i32,
            round_latency: Some(percentiles(&l.round)),
            decision_latency: Some(percentiles(&l.decision)),
            shots: l.decision.count(),
        })
        .collect();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let (checked, agreed) = (load(&s.checked), load(&s.agreed));
    proto::GetStatsResponse {
        decoders,
        budget_misses: load(&s.budget_misses),
        backlog_fallbacks: load(&s.backlog_fallbacks),
        fallbacks: load(&s.fallbacks),
        checked_shots: checked,
        agreed_shots: agreed,
        agreement_rate: if checked == 0 { f64::NAN } else { agreed as f64 / checked as f64 },
        open_streams: load(&s.open_streams) as u32,
        rejected_streams: load(&s.rejected_streams),
        failed_shots: load(&s.failed_shots),
    }
}

/// Serves the decoder, health checking and reflection on `addr` until
/// `shutdown` resolves; then stops taking streams and waits for the open ones to finish.
pub async fn serve(
    hub: Arc<Hub>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<DecoderServer<DecoderService>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(DecoderServer::new(DecoderService::new(hub)))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    Ok(())
}

/// A server on a free loopback port inside this process (`qecd demo`, `qecd load`).
pub struct LocalServer {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl LocalServer {
    /// Starts serving `hub` on 127.0.0.1, port chosen by the system.
    pub async fn start(hub: Arc<Hub>) -> anyhow::Result<Self> {
        let (listener, addr) = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(hub, listener, async move {
            let _ = stopped.await;
        }));
        Ok(Self { addr, stop, task })
    }

    /// Shuts it down, waiting for open streams to finish.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await?
    }
}

/// Binds `addr` (port 0 picks a free one) and returns the listener and the address it got.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
