//! The tonic service of proto/qecd/v1/decoder.proto, with gRPC health
//! checking and server reflection.
//!
//! A Decode stream runs on the tokio task that reads its messages ([`run`]),
//! and its responses go back through an unbounded channel. A bad message
//! ends that stream with the status of its [`session::Fault`]; nothing else
//! on the server notices.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use decoder::{Decoder, DecoderKind, MatchingDecoder, NeuralDecoder, PackedShots};
use simulator_bridge::Basis;
use tokio::sync::mpsc::UnboundedSender;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use super::Hub;
use super::proto::decoder_server::{Decoder as DecoderApi, DecoderServer};
use super::proto::{self, DecodeRequest, DecodeResponse, decode_request::Message as In};
use super::session::{self, Fault, Input, pack, proto_kind};

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

/// Counts a stream as open for as long as it lives.
struct OpenStream(Arc<Hub>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.stats.open_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

#[tonic::async_trait]
impl DecoderApi for DecoderService {
    type DecodeStream = UnboundedReceiverStream<Result<DecodeResponse, Status>>;

    async fn decode(&self, request: Request<Streaming<DecodeRequest>>) -> Result<Response<Self::DecodeStream>, Status> {
        let hub = self.hub.clone();
        let open = hub.stats.open_streams.fetch_add(1, Ordering::Relaxed);
        let guard = OpenStream(hub.clone());
        if open as usize >= hub.options.max_streams {
            super::stats::Stats::bump(&hub.stats.rejected_streams);
            return Err(Status::resource_exhausted(format!(
                "this server already has {open} open Decode streams (--max-streams {})",
                hub.options.max_streams
            )));
        }
        let inbound = request.into_inner();
        let (out_tx, out_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let result = run(hub, inbound, out_tx.clone()).await;
            // The stream no longer counts as open once the client can learn that it ended.
            drop(guard);
            if let Err(fault) = result {
                let _ = out_tx.send(Err(fault.into()));
            }
        });
        Ok(Response::new(UnboundedReceiverStream::new(out_rx)))
    }

    async fn decode_batch(
        &self,
        request: Request<proto::DecodeBatchRequest>,
    ) -> Result<Response<proto::DecodeBatchResponse>, Status> {
        let hub = self.hub.clone();
        let req = request.into_inner();
        tokio::task::spawn_blocking(move || decode_batch(&hub, req).map_err(Status::from))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map(Response::new)
    }

    async fn list_models(
        &self,
        _: Request<proto::ListModelsRequest>,
    ) -> Result<Response<proto::ListModelsResponse>, Status> {
        let models = self
            .hub
            .models
            .all()
            .iter()
            .map(|m| {
                let meta = m.model.meta();
                proto::ModelInfo {
                    name: m.name.clone(),
                    distance: m.model.distance() as u32,
                    basis: proto_basis(m.model.basis()) as i32,
                    noise: meta.provenance.noise.clone(),
                    p: meta.provenance.p,
                    rounds_trained: meta.provenance.rounds.clone(),
                    width: meta.config.width as u32,
                    layers: meta.config.layers as u32,
                    temperature: meta.temperature,
                }
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
/// too when the engine is idle (see [`session::Stream`]); only opening the
/// session and waiting for the last answers leave the async runtime.
async fn run(
    hub: Arc<Hub>,
    mut inbound: Streaming<DecodeRequest>,
    out: UnboundedSender<Result<DecodeResponse, Status>>,
) -> Result<(), Fault> {
    let open = match inbound.message().await {
        Ok(Some(DecodeRequest { message: Some(In::Open(open)) })) => open,
        Ok(Some(_)) => {
            return Err(Fault {
                code: Code::FailedPrecondition,
                message: "no session opened: the first message of a Decode stream must be `open`".into(),
            });
        }
        Ok(None) | Err(_) => return Ok(()),
    };
    let sink: session::Sink = Arc::new(move |r| out.send(Ok(r)).is_ok());
    let stream = tokio::task::spawn_blocking(move || session::Stream::open(hub, open, sink))
        .await
        .map_err(|e| Fault { code: Code::Internal, message: format!("opening the session failed: {e}") })??;
    let mut ended = false;
    while !ended {
        // Handle every message that has arrived before stepping, so that a
        // client sending faster than the engine steps shows up as this
        // stream's backlog (and falls back), not as bytes piling up unread.
        let mut next = Some(inbound.message().await);
        while let Some(message) = next.take() {
            let input = match message {
                Ok(Some(DecodeRequest { message: Some(In::Open(_)) })) => Input::Open,
                Ok(Some(DecodeRequest { message: Some(In::Round(r)) })) => Input::Round(r),
                Ok(Some(DecodeRequest { message: Some(In::Final(f)) })) => Input::Final(f),
                Ok(Some(DecodeRequest { message: None })) => {
                    Input::Invalid("a DecodeRequest with no message (open, round or final)".into())
                }
                Ok(None) | Err(_) => {
                    ended = true; // the client finished sending, or went away
                    break;
                }
            };
            if let Err(fault) = stream.input(input) {
                stream.abandon();
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
    let percentiles = |h: &super::stats::Histogram| {
        let [p50_us, p99_us, p999_us] = h.percentiles_us();
        proto::Percentiles { count: h.count(), p50_us, p99_us, p999_us }
    };
    let decoders = s
        .latencies()
        .iter()
        .map(|(kind, l)| proto::DecoderStats {
            decoder: proto_kind(*kind) as i32,
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
    }
}

fn proto_basis(basis: Basis) -> proto::Basis {
    match basis {
        Basis::X => proto::Basis::X,
        Basis::Z => proto::Basis::Z,
    }
}

fn bad(message: String) -> Fault {
    Fault { code: Code::InvalidArgument, message }
}

fn decode_batch(hub: &Hub, req: proto::DecodeBatchRequest) -> Result<proto::DecodeBatchResponse, Fault> {
    let code = req.code.ok_or_else(|| bad("`code` is missing".into()))?;
    let (d, basis, rounds, noise) = session::parse_code(&code)?;
    let info = hub.circuit(d, basis, rounds, &noise)?;
    let mut decoder: Box<dyn Decoder> = match proto::DecoderKind::try_from(req.decoder) {
        Ok(proto::DecoderKind::Neural) => {
            let model = hub.models.find(&req.model, d, basis)?;
            Box::new(NeuralDecoder::new(model.model, info.layout()).map_err(|e| bad(e.to_string()))?)
        }
        Ok(proto::DecoderKind::Matching) => Box::new(matching(&info, DecoderKind::Matching)?),
        Ok(proto::DecoderKind::Correlated) => Box::new(matching(&info, DecoderKind::Correlated)?),
        _ => return Err(bad("DecodeBatch takes neural, matching or correlated".into())),
    };
    let n = decoder.num_detectors();
    let row = n.div_ceil(8);
    if req.detection_events_b8.len() != row * req.num_shots as usize {
        return Err(bad(format!(
            "{} shots of {n} detectors take {} bytes of b8, but {} came",
            req.num_shots,
            row * req.num_shots as usize,
            req.detection_events_b8.len()
        )));
    }
    let events = PackedShots::from_bytes(req.detection_events_b8, n).map_err(|e| bad(e.to_string()))?;
    let decisions = decoder.decode_batch(&events).map_err(|e| bad(e.to_string()))?;
    let o = decoder.num_observables();
    let mut predictions = Vec::with_capacity(events.num_shots() * o.div_ceil(8));
    for s in 0..events.num_shots() {
        predictions.extend(pack(&(0..o).map(|k| decisions.predictions.get(s, k)).collect::<Vec<_>>()));
    }
    let kind = match proto::DecoderKind::try_from(req.decoder) {
        Ok(k) => k,
        Err(_) => proto::DecoderKind::Unspecified,
    };
    Ok(proto::DecodeBatchResponse {
        num_observables: o as u32,
        predictions_b8: predictions,
        confidence: decisions.confidence.unwrap_or_default(),
        answered_by: kind as i32,
    })
}

fn matching(info: &session::CircuitInfo, kind: DecoderKind) -> Result<MatchingDecoder, Fault> {
    MatchingDecoder::from_dem_text(info.dem_text(), kind)
        .map_err(|e| Fault { code: Code::Internal, message: e.to_string() })
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
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
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
