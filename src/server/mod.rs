//! The decoding service: the model registry and what every stream shares
//! ([`Hub`]), the transport-agnostic stream logic ([`session`]), the tonic
//! gRPC service ([`grpc`]) and the counters behind `GetStats` ([`stats`]).

pub mod bridge;
pub mod grpc;
pub mod session;
pub mod stats;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use decoder::{NeuralModel, StreamEngine, StreamOptions};
use simulator_bridge::{Basis, NoiseModel};
use tonic::Code;

use session::{CircuitInfo, Fault};
use stats::Stats;

/// Code generated from proto/qecd/v1/decoder.proto.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("qecd.v1");
    /// The encoded file descriptor set, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/qecd_descriptor.bin"));
}


/// A neural model served by name, with its streaming engine.
#[derive(Clone)]
pub struct Model {
    /// Its name (the checkpoint's file stem).
    pub name: String,
    /// The weights.
    pub model: Arc<NeuralModel>,
    /// The engine every stream using it shares.
    pub engine: Arc<StreamEngine>,
}

/// The models a server holds.
pub struct Models {
    list: Vec<Model>,
}

impl Models {
    /// The zoo checkpoints built into the binary.
    pub fn embedded(options: &StreamOptions) -> Result<Self> {
        let list = NeuralModel::zoo()?
            .into_iter()
            .map(|model| Self::serve(model.name().to_string(), Arc::new(model), options))
            .collect();
        Ok(Self { list })
    }

    /// Every `*.safetensors` checkpoint in `dir`.
    pub fn load_dir(dir: &Path, options: &StreamOptions) -> Result<Self> {
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read the models directory {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        paths.sort();
        anyhow::ensure!(!paths.is_empty(), "{} holds no .safetensors checkpoints", dir.display());
        let list = paths
            .iter()
            .map(|p| {
                let ckpt = models::Checkpoint::load(p)?;
                let name = p.file_stem().unwrap_or_default().to_string_lossy().into_owned();
                Self::entry(name, &ckpt, options)
            })
            .collect::<Result<_>>()?;
        Ok(Self { list })
    }

    fn entry(name: String, ckpt: &models::Checkpoint, options: &StreamOptions) -> Result<Model> {
        let model = Arc::new(NeuralModel::from_checkpoint(name.clone(), ckpt, &name)?);
        Ok(Self::serve(name, model, options))
    }

    fn serve(name: String, model: Arc<NeuralModel>, options: &StreamOptions) -> Model {
        let engine = Arc::new(StreamEngine::start(model.clone(), options.clone()));
        Model { name, model, engine }
    }

    /// All of them.
    pub fn all(&self) -> &[Model] {
        &self.list
    }

    /// The model called `name`, or when `name` is empty the first one for
    /// the code; it must decode distance `d` in `basis`.
    pub fn find(&self, name: &str, d: usize, basis: Basis) -> Result<Model, Fault> {
        let names = || self.list.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ");
        let found = if name.is_empty() {
            self.list.iter().find(|m| m.model.distance() == d && m.model.basis() == basis).ok_or_else(|| Fault {
                code: Code::NotFound,
                message: format!("no model for d={d} memory-{basis}; this server has: {}", names()),
            })?
        } else {
            self.list.iter().find(|m| m.name == name).ok_or_else(|| Fault {
                code: Code::NotFound,
                message: format!("unknown model '{name}'; this server has: {}", names()),
            })?
        };
        if found.model.distance() != d || found.model.basis() != basis {
            return Err(Fault {
                code: Code::InvalidArgument,
                message: format!(
                    "model '{}' decodes d={} memory-{}, not d={d} memory-{basis}",
                    found.name,
                    found.model.distance(),
                    found.model.basis()
                ),
            });
        }
        Ok(found.clone())
    }
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
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self { max_streams: 256, max_backlog: 64, bridge_poll: std::time::Duration::ZERO }
    }
}

type CircuitKey = (usize, Basis, usize, String, u64);

/// What every stream of a server shares.
pub struct Hub {
    /// The neural models.
    pub models: Models,
    /// Counters and latency histograms.
    pub stats: Stats,
    /// Limits.
    pub options: ServerOptions,
    circuits: Mutex<HashMap<CircuitKey, Arc<CircuitInfo>>>,
}

impl Hub {
    /// A hub serving `models`.
    pub fn new(models: Models, options: ServerOptions) -> Self {
        Self { models, stats: Stats::default(), options, circuits: Mutex::new(HashMap::new()) }
    }

    /// The circuit of a code, built once and cached. The cache stays locked
    /// while a circuit is built, so that streams opening together for the
    /// same code wait for one build instead of each making their own.
    pub fn circuit(
        &self,
        d: usize,
        basis: Basis,
        rounds: usize,
        noise: &NoiseModel,
    ) -> Result<Arc<CircuitInfo>, Fault> {
        let key = (d, basis, rounds, noise.name(), noise.p().to_bits());
        let mut cache = self.circuits.lock().expect("circuit cache");
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let info = Arc::new(CircuitInfo::build(d, basis, rounds, noise).map_err(|e| Fault {
            code: Code::InvalidArgument,
            message: format!("code d={d} memory-{basis} rounds={rounds}: {e}"),
        })?);
        cache.insert(key, info.clone());
        Ok(info)
    }
}
