//! What the service tests share: a `qecd serve` process on free loopback
//! ports, simulated d=3 shots as a stream sends them, and their offline decoding.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use decoder::neural::rounds_of_features;
use decoder::{Decoder, DecoderKind, MatchingDecoder, NeuralDecoder, NeuralModel};
use simulator_bridge::sample::Sampler;
use simulator_bridge::{Basis, MemoryExperiment, NoiseModel, PackedShots, StabilizerLayout};

/// The zoo's d=3 model.
pub const ZOO_D3: &str = "d3_z_si1000_p003";

/// A `qecd serve` process on free loopback ports, killed on drop.
pub struct Server {
    /// The process.
    pub child: Child,
    /// The gRPC address, `127.0.0.1:PORT`.
    pub grpc: String,
    /// The FPGA bridge's address, when it was asked for.
    bridge_addr: Option<String>,
}

impl Server {
    /// Starts `qecd serve --listen 127.0.0.1:0` with `extra` arguments and
    /// reads the addresses from its first line, "qecd serve: gRPC on A[; bridge on B]; models: ...".
    pub fn start(extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_qecd"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        let grpc = words.iter().find(|w| w.starts_with("127.0.0.1:")).expect(&line);
        assert!(grpc.ends_with(';'), "{line}");
        let bridge = words.iter().position(|w| *w == "bridge").map(|at| {
            assert_eq!(words[at + 1], "on", "{line}");
            words[at + 2].trim_end_matches(';').to_string()
        });
        Self { grpc: grpc.trim_end_matches(';').to_string(), bridge_addr: bridge, child }
    }

    /// [`Server::start`] with the FPGA bridge on a free port too.
    pub fn with_bridge(extra: &[&str]) -> Self {
        let server = Self::start(&[&["--bridge-listen", "127.0.0.1:0"], extra].concat());
        assert_ne!(server.bridge(), server.grpc);
        server
    }

    /// The FPGA bridge's address.
    pub fn bridge(&self) -> &str {
        self.bridge_addr.as_deref().expect("started with_bridge")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    let featurizer = zoo_model().featurizer(&layout).unwrap();
    let mut features = Vec::new();
    featurizer.extend_features(&events, 0, n, &mut features);
    let per_round = features
        .chunks_exact(featurizer.shot_len())
        .map(|f| rounds_of_features(f, featurizer.num_stabilizers()))
        .collect();
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
