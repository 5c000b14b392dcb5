//! `qecd serve`: the gRPC decoding service (and, with `--bridge-listen`, the FPGA bridge).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use clap::Args;
use decoder::StreamOptions;

use qecd_service::bridge::Bridge;
use qecd_service::watch::{POLL, Watcher};
use qecd_service::{Hub, Loaded, Models, ServerOptions};

/// The codes `qecd load` and the bridge open: d=3 and d=5 memory-Z, SI1000 p=0.003, d rounds.
fn default_prebuild() -> Vec<qecd_service::api::CodeSpec> {
    ["d=3,rounds=3", "d=5,rounds=5"].iter().map(|c| c.parse().expect("a valid code")).collect()
}

/// Arguments of `qecd serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address of the gRPC service (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Address of the FPGA bridge's TCP listener (docs/fpga-bridge.md).
    #[arg(long)]
    pub bridge_listen: Option<SocketAddr>,
    /// Directory of neural checkpoints (*.safetensors); default: the zoo
    /// built into qecd. With it, the admin call LoadModel reads files under
    /// this directory only.
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// Poll `--models` every second and serve what changes there without a
    /// restart: a new or changed checkpoint becomes a new version of its
    /// name, a removed one is no longer offered to new sessions, and one
    /// that cannot be served is logged while the model before it keeps serving.
    #[arg(long, requires = "models")]
    pub watch_models: bool,
    /// Most Decode streams open at once.
    #[arg(long, default_value_t = 256)]
    pub max_streams: usize,
    /// Default bound on a stream's rounds waiting for the neural engine.
    #[arg(long, default_value_t = 64)]
    pub max_backlog: usize,
    /// Largest code distance a session may open.
    #[arg(long, default_value_t = 15)]
    pub max_distance: usize,
    /// Most stabilizer rounds per shot a session may open (a code's circuit,
    /// DEM and calibration are built when it is first opened, and grow with it).
    #[arg(long, default_value_t = 100)]
    pub max_rounds: usize,
    /// Most shots a stream may have started and not finished; past it the
    /// stream ends with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 4096)]
    pub max_stream_shots: usize,
    /// Most distinct codes (distance, basis, rounds, noise) kept built; the
    /// least recently used one no stream holds is dropped past it.
    #[arg(long, default_value_t = 32)]
    pub max_codes: usize,
    /// Most memory (MiB, estimated) the kept codes may hold.
    #[arg(long, default_value_t = 1024)]
    pub code_cache_mib: usize,
    /// A code to build at start-up, in the background (repeatable):
    /// `d=3,rounds=3,basis=Z,noise=si1000,p=0.003`, noise and p optional.
    #[arg(long = "prebuild", value_name = "CODE", default_values_t = default_prebuild())]
    pub prebuild: Vec<qecd_service::api::CodeSpec>,
    /// Decode a code with this detector error model instead of its simulated
    /// circuit's (repeatable): `d=3,rounds=10,p=0.003=learned.dem`, a code as
    /// `--prebuild` takes it, then `=` and the file. Its matching decoders,
    /// their confidence, the neural fallback and neural-matching use the
    /// file; a file that does not parse or fit the code fails start-up.
    #[arg(long = "code-dem", value_name = "CODE=FILE")]
    pub code_dem: Vec<qecd_service::code_dem::CodeDemSpec>,
    /// Poll each `--code-dem` file every second and decode new sessions of
    /// its code with the file's new DEM without a restart (sessions already
    /// open keep theirs); a new file that does not parse or fit the code is
    /// logged and the DEM before it keeps serving.
    #[arg(long, requires = "code_dem")]
    pub watch_code_dems: bool,
    /// Most reply bytes a gRPC stream may leave unread; past it the stream
    /// ends with RESOURCE_EXHAUSTED (the bridge cuts off a peer at 64 MiB).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_reply_bytes: usize,
    /// Most bridge connections open at once.
    #[arg(long, default_value_t = 64)]
    pub max_bridge_connections: usize,
    /// Seconds a new gRPC stream or bridge connection may take to open its
    /// first session (0: no limit).
    #[arg(long, default_value_t = 10.0)]
    pub handshake_timeout: f64,
    /// Seconds a stream or bridge connection may send nothing before it is
    /// closed (0: no limit).
    #[arg(long, default_value_t = 120.0)]
    pub idle_timeout: f64,
    /// Seconds that shots in flight get to be answered after SIGTERM; then
    /// their streams end with UNAVAILABLE and the process exits.
    #[arg(long, default_value_t = 10.0)]
    pub drain_timeout: f64,
    /// Server certificate chain (PEM) for TLS on gRPC (and on the bridge with `--bridge-tls`).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA certificate (PEM): clients must present a certificate it signed (mutual TLS).
    #[arg(long, requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// File holding a bearer token every gRPC call must carry
    /// (`authorization: Bearer TOKEN`); leading and trailing whitespace is ignored.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// The bridge speaks TLS too, with `--tls-cert`, `--tls-key` and `--tls-client-ca`.
    #[arg(long, requires = "tls_cert")]
    pub bridge_tls: bool,
    /// µs a bridge connection's reader polls its socket for the next frame
    /// before blocking (0: block at once). Give it a core of its own.
    #[arg(long, default_value_t = 0)]
    pub bridge_poll_us: u64,
    /// Threads of the async runtime that runs the gRPC streams (0: one per
    /// core). A stream's rounds are stepped on these threads when the engine
    /// is idle; with one, a lone stream never waits for another runtime thread
    /// to wake, at the price of throughput under load (docs/perf.md).
    #[arg(long, default_value_t = 0)]
    pub io_threads: usize,
    /// Threads of each model's engine for large batches (CPU).
    #[arg(long, default_value_t = 1)]
    pub engine_threads: usize,
    /// Where the neural engines step: `cpu`, or `cuda` / `cuda:N` for a GPU's
    /// CUDA kernels (a build with the `cuda` feature and a CUDA driver).
    #[arg(long, default_value = "cpu")]
    pub device: decoder::Device,
}

/// The hub a server built from these arguments uses.
pub fn hub(args: &ServeArgs) -> Result<Arc<Hub>> {
    let mut options = ServerOptions {
        max_streams: args.max_streams,
        max_backlog: args.max_backlog.max(1),
        bridge_poll: std::time::Duration::from_micros(args.bridge_poll_us),
        max_distance: args.max_distance,
        max_rounds: args.max_rounds,
        max_stream_shots: args.max_stream_shots.max(1),
        max_codes: args.max_codes.max(1),
        code_cache_mib: args.code_cache_mib,
        prebuild: args.prebuild.clone(),
        max_reply_bytes: args.max_reply_bytes,
        max_bridge_connections: args.max_bridge_connections,
        handshake_timeout: seconds("--handshake-timeout", args.handshake_timeout)?,
        idle_timeout: seconds("--idle-timeout", args.idle_timeout)?,
        drain_timeout: seconds("--drain-timeout", args.drain_timeout)?,
        ..ServerOptions::default()
    };
    // The operator's DEM files before the models: a bad one fails at once.
    options.code_dems = qecd_service::code_dem::load_all(&args.code_dem, &options)?;
    let engine = StreamOptions { threads: args.engine_threads.max(1), ..StreamOptions::default() };
    let checkpoints = Loaded::all(args.models.as_deref())?;
    let mut models = Models::serve(checkpoints, &engine, args.device)?;
    if let Some(dir) = &args.models {
        models = models.confined_to(dir)?;
    }
    Ok(Arc::new(Hub::new(models, options)))
}

/// A flag's seconds as a duration: finite and not negative.
fn seconds(flag: &str, s: f64) -> Result<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(s).map_err(|_| anyhow::anyhow!("{flag} {s}: give seconds, 0 or more"))
}

/// The TLS files of `--tls-cert`, `--tls-key` and `--tls-client-ca`, if given.
pub fn tls_files(args: &ServeArgs) -> Option<qecd_service::TlsFiles> {
    Some(qecd_service::TlsFiles {
        cert: args.tls_cert.clone()?,
        key: args.tls_key.clone()?,
        client_ca: args.tls_client_ca.clone(),
    })
}

/// Runs `qecd serve` until SIGINT or SIGTERM; then both transports stop
/// taking streams at once and drain together: open streams (gRPC and
/// bridge) have `--drain-timeout` to finish their shots, and the process
/// exits soon after.
pub fn run(args: &ServeArgs) -> Result<()> {
    // Certificates and the token first: a bad file fails before models load.
    let security = qecd_grpc::Security::load(tls_files(args).as_ref(), args.token_file.as_deref())?;
    let hub = hub(args)?;
    for dem in &hub.options.code_dems {
        tracing::info!(code = %dem.code, dem = %dem.describe(), "the code decodes with the operator's DEM");
    }
    let _watcher = match (&args.models, args.watch_models) {
        (Some(dir), true) => Some(Watcher::start(&hub, dir, POLL)?),
        _ => None,
    };
    let _dem_watcher = if args.watch_code_dems { Some(Watcher::code_dems(&hub, POLL)?) } else { None };
    let bridge_tls = if args.bridge_tls { tls_files(args) } else { None };
    let bridge = args
        .bridge_listen
        .map(|addr| match &bridge_tls {
            Some(files) => Bridge::start_tls(hub.clone(), addr, files),
            None => Bridge::start(hub.clone(), addr),
        })
        .transpose()?;
    let runtime = super::runtime(args.io_threads)?;
    runtime.block_on(async {
        // Handlers first: a SIGTERM right after the address line is a shutdown, not a kill.
        let shutdown = shutdown_signal()?;
        let (listener, addr) = qecd_grpc::bind(args.listen).await?;
        warn_if_open(args, addr, &security, bridge.as_ref().map(Bridge::addr));
        let versions: Vec<String> = hub.models.all().iter().map(|m| m.version.to_string()).collect();
        let bridge_on = bridge.as_ref().map(|b| format!("; bridge on {}", b.addr())).unwrap_or_default();
        let tls = if security.has_tls() { " (TLS)" } else { "" };
        let dems: Vec<String> =
            hub.options.code_dems.iter().map(|d| format!("{} with {}", d.code, d.describe())).collect();
        let dems_on = if dems.is_empty() { String::new() } else { format!("; code DEMs: {}", dems.join(", ")) };
        println!("qecd serve: gRPC on {addr}{tls}{bridge_on}; models: {}{dems_on}", versions.join(", "));
        use std::io::Write;
        std::io::stdout().flush()?;
        // The bridge drains beside gRPC, from the moment the signal comes.
        let (bridge_tx, bridge_stopping) = tokio::sync::oneshot::channel();
        let drain = hub.options.drain_timeout;
        let on_signal = async move {
            shutdown.await;
            if let Some(bridge) = bridge {
                let _ = bridge_tx.send(tokio::task::spawn_blocking(move || bridge.shutdown(drain)));
            }
        };
        let served = qecd_grpc::serve_with(hub.clone(), listener, security, on_signal).await;
        if let Ok(stopping) = bridge_stopping.await {
            stopping.await?;
        }
        served
    })
}

/// Warns when a transport listens beyond loopback and lets anyone in.
fn warn_if_open(args: &ServeArgs, grpc: SocketAddr, security: &qecd_grpc::Security, bridge: Option<SocketAddr>) {
    if !grpc.ip().is_loopback() && !security.authenticates() {
        tracing::warn!(
            "gRPC on {grpc} asks for no token and no client certificate: anyone who reaches it can decode \
             and read GetStats (--token-file, --tls-client-ca)"
        );
    }
    let bridge_mtls = args.bridge_tls && args.tls_client_ca.is_some();
    if let Some(bridge) = bridge.filter(|b| !b.ip().is_loopback() && !bridge_mtls) {
        tracing::warn!(
            "the bridge on {bridge} asks for no client certificate: anyone who reaches it can decode \
             (--bridge-tls with --tls-client-ca)"
        );
    }
}

/// Installs the SIGINT and SIGTERM handlers now, and returns a future that
/// resolves on either signal.
pub fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down; open streams finish their shots");
    })
}
