//! The tonic service of proto/qecd/v1/decoder.proto, with gRPC health
//! checking and server reflection (v1 and v1alpha, for older clients such
//! as Python's `grpcio-reflection`), and the server's life: serving, then
//! draining to a deadline.
//!
//! A Decode stream runs on a task of its own (`stream.rs`) and its replies
//! go back through a queue bounded in bytes (`replies.rs`).
//! A bad message, a timeout or a client that stops reading ends that stream
//! with a status; nothing else on the server notices.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use qecd_service::stats::Histogram;
use qecd_service::{Hub, StreamSlot};
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

use crate::proto::decoder_server::{Decoder as DecoderApi, DecoderServer};
use crate::proto::{self, DecodeRequest};
use crate::replies::{self, Replies};
use crate::security::Security;
use crate::{convert, stream};

/// HTTP/2 pings on an idle connection this often: a peer that vanished
/// without closing (a cable pulled, a VM gone) is noticed and its streams end.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may wait for its answer before the connection is closed.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// TCP keepalive on every accepted socket, for peers that vanish mid-write.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// After the drain deadline, how long connections get to close before
/// serving returns without them.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// Where a server is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Taking streams.
    Serving,
    /// Shutting down: no new streams; the open ones finish their shots.
    Draining,
    /// The drain deadline has passed: the streams still open end with UNAVAILABLE.
    Closing,
}

/// The gRPC front of a [`Hub`].
pub struct DecoderService {
    hub: Arc<Hub>,
    phase: watch::Receiver<Phase>,
}

impl DecoderService {
    /// Serves `hub` while `phase` says [`Phase::Serving`].
    pub fn new(hub: Arc<Hub>, phase: watch::Receiver<Phase>) -> Self {
        Self { hub, phase }
    }

    /// UNAVAILABLE once the server is shutting down.
    fn check_serving(&self) -> Result<(), Status> {
        if *self.phase.borrow() == Phase::Serving {
            return Ok(());
        }
        Err(Status::unavailable(format!(
            "the server is shutting down and takes no new work (--drain-timeout {})",
            stream::secs(self.hub.options.drain_timeout)
        )))
    }
}

#[tonic::async_trait]
impl DecoderApi for DecoderService {
    type DecodeStream = Replies;

    async fn decode(&self, request: Request<Streaming<DecodeRequest>>) -> Result<Response<Self::DecodeStream>, Status> {
        self.check_serving()?;
        let hub = self.hub.clone();
        let slot = hub.admit().map_err(convert::status)?;
        let inbound = request.into_inner();
        let (replies, reader) = replies::queue(hub.options.max_reply_bytes);
        let phase = self.phase.clone();
        tokio::spawn(async move {
            let result = stream::run(hub, inbound, replies.clone(), phase).await;
            // The stream no longer counts as open once the client can learn that it ended.
            drop::<StreamSlot>(slot);
            if let Err(fault) = result {
                replies.end(convert::status(fault));
            }
        });
        Ok(Response::new(reader))
    }

    async fn decode_batch(
        &self,
        request: Request<proto::DecodeBatchRequest>,
    ) -> Result<Response<proto::DecodeBatchResponse>, Status> {
        self.check_serving()?;
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
        let models = self.hub.models.summaries().into_iter().map(convert::model_info).collect();
        Ok(Response::new(proto::ListModelsResponse { models }))
    }

    async fn load_model(
        &self,
        request: Request<proto::LoadModelRequest>,
    ) -> Result<Response<proto::LoadModelResponse>, Status> {
        self.check_serving()?;
        let request = request.into_inner();
        if request.path.is_empty() {
            return Err(Status::invalid_argument("LoadModel needs `path`: a checkpoint file on the server"));
        }
        let hub = self.hub.clone();
        let name = (!request.name.is_empty()).then_some(request.name);
        let loaded = tokio::task::spawn_blocking(move || {
            hub.models.load_file(std::path::Path::new(&request.path), name.as_deref())
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        match loaded {
            Ok(m) => Ok(Response::new(proto::LoadModelResponse {
                name: m.name,
                version: m.version.to_string(),
                sha256: m.sha256,
            })),
            Err(fault) => {
                tracing::warn!("LoadModel refused: {}", fault.message);
                Err(convert::status(fault))
            }
        }
    }

    async fn get_stats(&self, _: Request<proto::GetStatsRequest>) -> Result<Response<proto::GetStatsResponse>, Status> {
        Ok(Response::new(stats_response(&self.hub)))
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

/// [`serve_with`] without TLS or token.
pub async fn serve(
    hub: Arc<Hub>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with(hub, listener, Security::none(), shutdown).await
}

/// Serves the decoder, health checking and reflection on `listener` until
/// `shutdown` resolves. Then it drains: the listener closes and new streams
/// get UNAVAILABLE at once, the open ones finish their shots, and those
/// still open after the hub's `drain_timeout` end with UNAVAILABLE. It
/// returns once every connection has closed, or half a second after the
/// deadline (`CLOSE_GRACE`).
pub async fn serve_with(
    hub: Arc<Hub>,
    listener: tokio::net::TcpListener,
    security: Security,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<DecoderServer<DecoderService>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let (phase_tx, mut phase) = watch::channel(Phase::Serving);
    let phase_tx = Arc::new(phase_tx);
    let draining = {
        let phase_tx = phase_tx.clone();
        async move {
            shutdown.await;
            phase_tx.send_replace(Phase::Draining);
            health.set_not_serving::<DecoderServer<DecoderService>>().await;
        }
    };
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
    if let Some(tls) = security.tls() {
        builder = builder.tls_config(tls)?;
    }
    // Health and reflection take no token (see `crate::security`).
    let decoder =
        DecoderServer::with_interceptor(DecoderService::new(hub.clone(), phase.clone()), security.interceptor());
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(TCP_KEEPALIVE));
    let serving = builder
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(decoder)
        .serve_with_incoming_shutdown(incoming, draining);
    let mut serving = std::pin::pin!(serving);
    tokio::select! {
        served = &mut serving => return Ok(served?),
        _ = phase.wait_for(|p| *p != Phase::Serving) => {}
    }
    let drain = hub.options.drain_timeout;
    tracing::info!("draining: open streams have {} to finish their shots", stream::secs(drain));
    if let Ok(served) = tokio::time::timeout(drain, &mut serving).await {
        return Ok(served?);
    }
    phase_tx.send_replace(Phase::Closing);
    tracing::warn!(
        "the drain deadline (--drain-timeout {}) has passed: the streams still open end with UNAVAILABLE",
        stream::secs(drain)
    );
    match tokio::time::timeout(CLOSE_GRACE, &mut serving).await {
        Ok(served) => Ok(served?),
        Err(_) => {
            tracing::warn!("connections still open {} after the drain deadline are dropped", stream::secs(CLOSE_GRACE));
            Ok(())
        }
    }
}

/// A server on a free loopback port inside this process (`qecd demo`, `qecd load`, the tests).
pub struct LocalServer {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl LocalServer {
    /// Starts serving `hub` on 127.0.0.1, port chosen by the system.
    pub async fn start(hub: Arc<Hub>) -> anyhow::Result<Self> {
        Self::start_with(hub, Security::none()).await
    }

    /// [`LocalServer::start`] with TLS or a token.
    pub async fn start_with(hub: Arc<Hub>, security: Security) -> anyhow::Result<Self> {
        let (listener, addr) = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve_with(hub, listener, security, async move {
            let _ = stopped.await;
        }));
        Ok(Self { addr, stop, task })
    }

    /// Shuts it down, draining its streams as [`serve_with`] does.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn once_draining_new_work_gets_unavailable_and_stats_are_still_answered() {
        let models = qecd_service::Models::embedded(&decoder::StreamOptions::default()).unwrap();
        let hub = Arc::new(Hub::new(models, qecd_service::ServerOptions::default()));
        let (phase_tx, phase) = watch::channel(Phase::Serving);
        let service = DecoderService::new(hub, phase);
        let batch = || Request::new(proto::DecodeBatchRequest::default());
        let status = service.decode_batch(batch()).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "serving: the empty request itself is refused");
        phase_tx.send_replace(Phase::Draining);
        let status = service.decode_batch(batch()).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("--drain-timeout 10 s"), "{}", status.message());
        assert!(service.get_stats(Request::new(proto::GetStatsRequest {})).await.is_ok());
    }
}
