//! What the service tests share: a server on free loopback ports inside the
//! test's process (its addresses come from the API), simulated d=3 shots as
//! a stream sends them, and their offline decoding.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use decoder::{Decoder, DecoderKind, MatchingDecoder, NeuralDecoder, NeuralModel, StreamOptions};
use qecd_service::bridge::Bridge;
use qecd_service::{Hub, Models, ServerOptions};
use simulator_bridge::sample::Sampler;
use simulator_bridge::{Basis, MemoryExperiment, NoiseModel, PackedShots, RoundLayout, StabilizerLayout};

/// The zoo's d=3 model.
pub const ZOO_D3: &str = "d3_z_si1000_p003";

/// A memory-Z code of `distance` and `rounds` as a client opens it, with
/// the server's default noise (SI1000, p=0.003).
pub fn memory_z(distance: u32, rounds: u32) -> qecd_grpc::proto::Code {
    qecd_grpc::proto::Code { distance, basis: qecd_grpc::proto::Basis::Z as i32, rounds, noise: String::new(), p: 0.0 }
}

/// A server on free loopback ports in this process: gRPC on a runtime of
/// its own, and the FPGA bridge when asked for. Dropping it stops both.
pub struct Server {
    /// The gRPC address, `127.0.0.1:PORT`.
    pub grpc: String,
    /// What its streams share (the counters, say).
    pub hub: Arc<Hub>,
    bridge: Option<Bridge>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    serving: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    /// Serves the zoo with `options` over gRPC on 127.0.0.1, port 0.
    pub fn start(options: ServerOptions) -> Self {
        Self::start_with(options, StreamOptions::default())
    }

    /// [`Server::start`], with the neural engines' options.
    pub fn start_with(options: ServerOptions, engine: StreamOptions) -> Self {
        Self::start_full(options, engine, qecd_grpc::Security::none())
    }

    /// [`Server::start`], gRPC with TLS or a token.
    pub fn start_secure(options: ServerOptions, security: qecd_grpc::Security) -> Self {
        Self::start_full(options, StreamOptions::default(), security)
    }

    fn start_full(options: ServerOptions, engine: StreamOptions, security: qecd_grpc::Security) -> Self {
        Self::serving(Models::embedded(&engine).unwrap(), options, security)
    }

    /// Serves `models` (from a directory, say) over gRPC on 127.0.0.1, port 0.
    pub fn serving(models: Models, options: ServerOptions, security: qecd_grpc::Security) -> Self {
        let hub = Arc::new(Hub::new(models, options));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = {
            let hub = hub.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
                runtime.block_on(async move {
                    let server = qecd_grpc::LocalServer::start_with(hub, security).await?;
                    addr_tx.send(server.addr)?;
                    let _ = stopped.await;
                    server.stop().await
                })
            })
        };
        let addr = addr_rx.recv().expect("the server binds its port");
        Self { grpc: addr.to_string(), hub, bridge: None, stop: Some(stop), serving: Some(serving) }
    }

    /// [`Server::start`] with the FPGA bridge on a free port too.
    pub fn with_bridge(options: ServerOptions) -> Self {
        let mut server = Self::start(options);
        let bridge = Bridge::start(server.hub.clone(), SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        server.bridge = Some(bridge);
        server
    }

    /// [`Server::with_bridge`], the bridge over TLS with `files`.
    pub fn with_bridge_tls(options: ServerOptions, files: &qecd_service::TlsFiles) -> Self {
        let mut server = Self::start(options);
        let bridge = Bridge::start_tls(server.hub.clone(), SocketAddr::from(([127, 0, 0, 1], 0)), files).unwrap();
        server.bridge = Some(bridge);
        server
    }

    /// Shuts the bridge down ([`Bridge::shutdown`]) with `deadline` for its open connections.
    pub fn shutdown_bridge(&mut self, deadline: std::time::Duration) {
        self.bridge.take().expect("started with_bridge").shutdown(deadline);
    }

    /// A server's default limits.
    pub fn options() -> ServerOptions {
        ServerOptions::default()
    }

    /// The FPGA bridge's address.
    pub fn bridge(&self) -> SocketAddr {
        self.bridge.as_ref().expect("started with_bridge").addr()
    }

    /// Stops taking streams, as on SIGTERM: the open ones finish their shots.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits until gRPC serving has ended (after [`Server::begin_shutdown`]).
    pub fn wait(&mut self) -> anyhow::Result<()> {
        self.serving.take().map(|t| t.join().expect("the server thread")).unwrap_or(Ok(()))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Streams a test left open would hold a graceful shutdown: the
        // server's threads end with the test process instead.
        self.begin_shutdown();
    }
}

/// Shots of d=3 memory-Z SI1000 p=0.003 and the rounds a stream sends for them.
pub struct Shots {
    /// Stabilizer rounds per shot.
    pub rounds: usize,
    /// Detection events.
    pub events: PackedShots,
    /// The circuit's layout.
    pub layout: StabilizerLayout,
    /// The noisy circuit.
    pub circuit: stim::Circuit,
    /// `[shot][round][bit]` in the session's order, the final round last.
    pub per_round: Vec<Vec<Vec<bool>>>,
}

/// The zoo's d=3 model, loaded for the kernels.
pub fn zoo_model() -> Arc<NeuralModel> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/models/d3_z_si1000_p003.safetensors");
    Arc::new(NeuralModel::load(std::path::Path::new(path)).unwrap())
}

/// `n` shots of `rounds` rounds, seeded.
pub fn shots(rounds: usize, n: usize, seed: u64) -> Shots {
    let circuit =
        MemoryExperiment::new(3, rounds, Basis::Z).unwrap().noisy_circuit(&NoiseModel::Si1000 { p: 0.003 }).unwrap();
    let layout = StabilizerLayout::from_circuit(&circuit, Basis::Z).unwrap();
    let events = Sampler::new(&circuit).sample(n, seed, 1).unwrap().detectors;
    let rounds_layout = RoundLayout::new(&layout);
    let per_round = (0..n).map(|shot| rounds_layout.split(&events, shot)).collect();
    Shots { rounds, events, layout, circuit, per_round }
}

/// Offline predictions of every shot by `kind` (neural: the zoo's d=3 model).
pub fn offline(s: &Shots, kind: DecoderKind) -> Vec<bool> {
    let mut decoder: Box<dyn Decoder> = match kind {
        DecoderKind::Neural => Box::new(NeuralDecoder::new(zoo_model(), &s.layout).unwrap()),
        DecoderKind::NeuralMatching => {
            let dem = simulator_bridge::decoding_dem(&s.circuit).unwrap();
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fixtures/posterior/posterior_z_si1000_p003.safetensors");
            let model = std::sync::Arc::new(models::posterior::PosteriorModel::load(&path).unwrap());
            Box::new(decoder::NeuralMatching::new(model, &dem, &s.layout).unwrap())
        }
        kind => {
            let dem = simulator_bridge::decoding_dem(&s.circuit).unwrap();
            Box::new(MatchingDecoder::from_dem(&dem, kind).unwrap())
        }
    };
    let d = decoder.decode_batch(&s.events).unwrap();
    (0..s.events.num_shots()).map(|i| d.predictions.get(i, 0)).collect()
}

/// A CA, a server certificate for 127.0.0.1 and localhost, and a client
/// certificate, as PEM files.
pub struct Pki {
    /// The CA's certificate.
    pub ca: std::path::PathBuf,
    /// The server's certificate and key.
    pub server: (std::path::PathBuf, std::path::PathBuf),
    /// The client's certificate and key, signed by the CA.
    pub client: (std::path::PathBuf, std::path::PathBuf),
}

/// Makes a [`Pki`] in `dir`.
pub fn pki(dir: &std::path::Path) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, "qecd test CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |name: &str, sans: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(sans).unwrap().signed_by(&key, &ca).unwrap();
        (write(&format!("{name}.pem"), cert.pem()), write(&format!("{name}.key"), key.serialize_pem()))
    };
    let server = leaf("server", vec!["127.0.0.1".into(), "localhost".into()]);
    let client = leaf("client", vec!["client.example".into()]);
    Pki { ca: write("ca.pem", ca.pem()), server, client }
}
