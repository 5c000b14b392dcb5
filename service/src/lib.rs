//! The qecd decoding service as a library: the models it serves, with
//! their versions, swappable while it runs ([`registry`], [`watch`]), what
//! every stream shares ([`Hub`]), one decode stream whatever carries it
//! ([`session`]), whole-batch decoding ([`batch`]), the counters behind
//! `GetStats` ([`stats`]) and the FPGA bridge's listener and client
//! ([`bridge`]).
//!
//! Codes are built once and kept, within bounds ([`codes`]), each with its
//! circuit's DEM or the one its operator gave ([`code_dem`]).
//!
//! It owns the service's own request and reply types ([`api`]): gRPC is an
//! adapter over them in the `qecd-grpc` crate, and the bridge maps its
//! frames straight onto them. It has no tonic, no protobuf and no plots.
//! It logs through `tracing`, one span per stream; the binary installs the subscriber.
#![deny(missing_docs)]

pub mod api;
pub mod batch;
pub mod bridge;
pub mod code_dem;
pub mod codes;
pub mod registry;
pub mod session;
pub mod stats;
pub mod watch;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use decoder::NeuralModel;
use simulator_bridge::Basis;

use api::CodeSpec;
pub use api::{Fault, Status};
use codes::{CodeCache, CodeCacheStats, Limits};
pub use registry::{Loaded, Model, Models};
use session::CircuitInfo;
use stats::Stats;

/// The neural checkpoints a server runs: every `*.safetensors` in `dir`,
/// or without one the zoo built into qecd. Loads weights only; no engine
/// starts (`qecd replay` checks answers with these).
pub fn load_checkpoints(dir: Option<&Path>) -> Result<Vec<Arc<NeuralModel>>> {
    Ok(Loaded::all(dir)?.into_iter().map(|l| l.model).collect())
}

/// The model called `name`, or without a name the first one for the code;
/// it must decode distance `d` in `basis`.
pub fn find_model<'a>(
    models: &'a [Arc<NeuralModel>],
    name: Option<&str>,
    d: usize,
    basis: Basis,
) -> Result<&'a Arc<NeuralModel>, Fault> {
    let names = || models.iter().map(|m| m.name()).collect::<Vec<_>>().join(", ");
    let found = match name {
        None => models.iter().find(|m| m.distance() == d && m.basis() == basis).ok_or_else(|| {
            Fault::new(Status::NotFound, format!("no model for d={d} memory-{basis}; this server has: {}", names()))
        })?,
        Some(name) => models.iter().find(|m| m.name() == name).ok_or_else(|| {
            Fault::new(Status::NotFound, format!("unknown model '{name}'; this server has: {}", names()))
        })?,
    };
    if found.distance() != d || found.basis() != basis {
        return Err(Fault::invalid(format!(
            "model '{}' decodes d={} memory-{}, not d={d} memory-{basis}",
            found.name(),
            found.distance(),
            found.basis()
        )));
    }
    Ok(found)
}

/// Limits of a server.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Most Decode streams open at once; more get RESOURCE_EXHAUSTED.
    pub max_streams: usize,
    /// Default bound on a stream's rounds waiting for the engine.
    pub max_backlog: usize,
    /// How long a bridge connection's reader polls its socket for the next
    /// frame before blocking on it (zero: it blocks at once). Polling spares
    /// the wake-up of a blocked thread, tens of µs on a VM, at the price of a
    /// core kept busy while frames keep coming.
    pub bridge_poll: std::time::Duration,
    /// Largest code distance a session may open.
    pub max_distance: usize,
    /// Most stabilizer rounds per shot a session may open: a code's circuit,
    /// DEM and calibration grow with its rounds.
    pub max_rounds: usize,
    /// Most shots a stream may have started and not finished.
    pub max_stream_shots: usize,
    /// Most distinct codes (distance, basis, rounds, noise) whose circuit,
    /// DEM and calibration the server keeps; past it the least recently used
    /// one no stream holds is dropped.
    pub max_codes: usize,
    /// Most memory, in MiB, the kept codes may hold (estimated), evicted as above.
    pub code_cache_mib: usize,
    /// Codes built at start-up, before the first stream asks.
    pub prebuild: Vec<CodeSpec>,
    /// Codes decoded with a DEM from a file instead of their circuit's
    /// ([`code_dem::load_all`] checks them).
    pub code_dems: Vec<Arc<code_dem::CodeDem>>,
    /// Most reply bytes a stream may leave unread (gRPC); past it the stream
    /// ends with RESOURCE_EXHAUSTED.
    pub max_reply_bytes: usize,
    /// Most bridge connections open at once.
    pub max_bridge_connections: usize,
    /// How long a new stream (gRPC) or connection (bridge) may take to open
    /// its first session; zero: no limit.
    pub handshake_timeout: std::time::Duration,
    /// How long a stream or bridge connection may send nothing before it is
    /// closed; zero: no limit.
    pub idle_timeout: std::time::Duration,
    /// On shutdown, how long shots in flight have to be answered before
    /// their streams end with UNAVAILABLE.
    pub drain_timeout: std::time::Duration,
    /// Fault injection for tests: every n-th shot of a stream (shot ids n-1,
    /// 2n-1, …) fails in its matching lane as a decoder's failure would.
    pub fail_decoding_every: Option<u64>,
}

/// TLS certificate files of a transport (PEM).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The server's certificate chain.
    pub cert: std::path::PathBuf,
    /// Its private key.
    pub key: std::path::PathBuf,
    /// With one, clients must present a certificate signed by this CA (mutual TLS).
    pub client_ca: Option<std::path::PathBuf>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            max_streams: 256,
            max_backlog: 64,
            bridge_poll: std::time::Duration::ZERO,
            max_distance: 15,
            max_rounds: 100,
            max_stream_shots: 4096,
            max_codes: 32,
            code_cache_mib: 1024,
            prebuild: Vec::new(),
            code_dems: Vec::new(),
            max_reply_bytes: 1 << 20,
            max_bridge_connections: 64,
            handshake_timeout: std::time::Duration::from_secs(10),
            idle_timeout: std::time::Duration::from_secs(120),
            drain_timeout: std::time::Duration::from_secs(10),
            fail_decoding_every: None,
        }
    }
}

/// What every stream of a server shares.
pub struct Hub {
    /// The neural models.
    pub models: Models,
    /// Counters and latency histograms.
    pub stats: Stats,
    /// Limits.
    pub options: ServerOptions,
    codes: Arc<CodeCache>,
    /// Numbers the streams, for their log spans.
    next_stream: AtomicU64,
}

impl Hub {
    /// A hub serving `models`. The codes of `options.prebuild` start
    /// building on a thread of their own, one after another: streams that
    /// open one of them meanwhile wait for its build.
    pub fn new(models: Models, options: ServerOptions) -> Self {
        let limits = Limits { max_codes: options.max_codes, max_mib: options.code_cache_mib };
        let codes = CodeCache::new(limits, &options.code_dems);
        let hub = Self { models, stats: Stats::default(), options, codes, next_stream: AtomicU64::new(0) };
        hub.prebuild();
        hub
    }

    fn prebuild(&self) {
        let refused: Vec<_> =
            self.options.prebuild.iter().filter_map(|code| self.check_size(code).err().map(|f| (code, f))).collect();
        for (code, fault) in refused {
            tracing::warn!(%code, %fault, "not prebuilt");
        }
        let codes: Vec<CodeSpec> =
            self.options.prebuild.iter().filter(|code| self.check_size(code).is_ok()).cloned().collect();
        if codes.is_empty() {
            return;
        }
        let cache = self.codes.clone();
        let spawned = std::thread::Builder::new().name("qecd-prebuild".into()).spawn(move || {
            for code in codes {
                if let Err(fault) = cache.get(&code, &|| false) {
                    tracing::warn!(%code, %fault, "prebuild failed");
                }
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the prebuild thread: {e}");
        }
    }

    /// What the code cache holds and has done.
    pub fn code_cache_stats(&self) -> CodeCacheStats {
        self.codes.stats()
    }

    /// Takes one of the server's stream slots (gRPC and bridge together),
    /// held until the returned guard drops; RESOURCE_EXHAUSTED when all
    /// `max_streams` are taken.
    pub fn admit(self: &Arc<Self>) -> Result<StreamSlot, Fault> {
        let open = self.stats.open_streams.fetch_add(1, Ordering::Relaxed);
        let slot = StreamSlot(self.clone());
        if open as usize >= self.options.max_streams {
            Stats::bump(&self.stats.rejected_streams);
            return Err(Fault::new(
                Status::ResourceExhausted,
                format!(
                    "this server already has {open} open streams, gRPC and bridge together (--max-streams {})",
                    self.options.max_streams
                ),
            ));
        }
        Ok(slot)
    }

    /// Refuses a code past the server's size limits before any work is done on it.
    pub fn check_size(&self, code: &CodeSpec) -> Result<(), Fault> {
        let over = |what: String| Err(Fault::new(Status::ResourceExhausted, what));
        if code.distance > self.options.max_distance {
            return over(format!(
                "d={} is over this server's limit of d={} (--max-distance {})",
                code.distance, self.options.max_distance, self.options.max_distance
            ));
        }
        if code.rounds > self.options.max_rounds {
            return over(format!(
                "{} rounds per shot is over this server's limit of {} (--max-rounds {})",
                code.rounds, self.options.max_rounds, self.options.max_rounds
            ));
        }
        Ok(())
    }

    /// A number for a new stream, unique in this server.
    fn stream_number(&self) -> u64 {
        self.next_stream.fetch_add(1, Ordering::Relaxed)
    }

    /// The circuit of a code, built once and kept ([`codes`]): streams
    /// opening together for the same code wait for one build, and no lock
    /// is held while it runs.
    pub fn circuit(&self, code: &CodeSpec) -> Result<Arc<CircuitInfo>, Fault> {
        self.circuit_or_cancel(code, &|| false)
    }

    /// [`Hub::circuit`] for a caller who may leave: `gone` is asked while
    /// the build runs, and a build that no caller waits for any more stops.
    pub fn circuit_or_cancel(&self, code: &CodeSpec, gone: &dyn Fn() -> bool) -> Result<Arc<CircuitInfo>, Fault> {
        self.check_size(code)?;
        self.codes.get(code, gone)
    }
}

/// One of a server's stream slots ([`Hub::admit`]); freed when dropped.
pub struct StreamSlot(Arc<Hub>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.stats.open_streams.fetch_sub(1, Ordering::Relaxed);
    }
}
