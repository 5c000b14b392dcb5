//! The neural models a server offers, swappable while it runs.
//!
//! Every served model has a version, `NAME@N:HASH`: `N` counts the loads of
//! that name in this server (1 for the first) and `HASH` is the first 12 hex
//! digits of the checkpoint file's sha256, so that an answer can be traced
//! to a file. Every neural answer names the version that gave it.
//!
//! The registry is a snapshot behind a lock: [`Models::find`] clones a
//! [`Model`] out of it, and a session keeps that clone (and so its engine)
//! for its whole life. Loading a model of a name already served replaces it
//! in the snapshot with its own new engine: sessions opened from then on get
//! the new version, open ones finish on theirs, and the old engine stops
//! when its last session ends. A file that cannot be served is refused
//! before anything changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use anyhow::{Context, Result};
use decoder::{Device, NeuralModel, StreamEngine, StreamOptions};
use models::Checkpoint;
use sha2::{Digest, Sha256};
use simulator_bridge::{Basis, MemoryExperiment, RoundLayout, StabilizerLayout};

use crate::api::{Fault, ModelSummary};

/// Hex digits of the sha256 a version carries.
const SHORT_HASH: usize = 12;

/// A checkpoint read for serving, with where it came from.
#[derive(Clone)]
pub struct Loaded {
    /// The weights.
    pub model: Arc<NeuralModel>,
    /// sha256 of the checkpoint's bytes, hex.
    pub sha256: String,
    /// The file; `None` for the zoo built into qecd.
    pub path: Option<PathBuf>,
}

impl Loaded {
    /// Reads one checkpoint file, named after its stem. A file that is not
    /// a qecd checkpoint, is truncated or holds mis-shaped tensors is an
    /// INVALID_ARGUMENT fault naming the file and why.
    pub fn read(path: &Path) -> Result<Self, Fault> {
        Self::read_as(path, None)
    }

    /// As [`Loaded::read`], the weights named `name` (default: the file's
    /// stem): the name sessions ask for it by.
    pub fn read_as(path: &Path, name: Option<&str>) -> Result<Self, Fault> {
        let refused = |why: String| Fault::invalid(format!("model file {}: {why}", path.display()));
        let bytes = std::fs::read(path).map_err(|e| refused(format!("cannot read it: {e}")))?;
        let stem = || path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let name = name.map_or_else(stem, str::to_string);
        let origin = path.display().to_string();
        // The checkpoint's own errors name the file already.
        let ckpt = Checkpoint::from_bytes(&bytes, &origin).map_err(|e| Fault::invalid(e.to_string()))?;
        let model = NeuralModel::from_checkpoint(name, &ckpt, &origin).map_err(|e| refused(e.to_string()))?;
        Ok(Self { model: Arc::new(model), sha256: sha256_hex(&bytes), path: Some(absolute(path)) })
    }

    /// The zoo checkpoints built into qecd.
    pub fn zoo() -> Result<Vec<Self>> {
        let weights = NeuralModel::zoo()?;
        Ok(weights
            .into_iter()
            .zip(models::zoo::CHECKPOINTS)
            .map(|(model, (_, bytes))| Self { model: Arc::new(model), sha256: sha256_hex(bytes), path: None })
            .collect())
    }

    /// Every `*.safetensors` in `dir`, in name order, or without one the zoo.
    pub fn all(dir: Option<&Path>) -> Result<Vec<Self>> {
        let Some(dir) = dir else { return Self::zoo() };
        let paths = checkpoint_files(dir)?;
        anyhow::ensure!(!paths.is_empty(), "{} holds no .safetensors checkpoints", dir.display());
        paths.iter().map(|p| Ok(Self::read(p)?)).collect()
    }
}

/// The `*.safetensors` files of `dir`, in name order.
pub fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the models directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    paths.sort();
    Ok(paths)
}

/// `path` with its directory made absolute and free of links, so that one
/// file has one spelling whichever way it was named (the file itself may be
/// a link, or gone).
pub fn absolute(path: &Path) -> PathBuf {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    match (parent.canonicalize(), path.file_name()) {
        (Ok(dir), Some(file)) => dir.join(file),
        _ => path.to_path_buf(),
    }
}

/// sha256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A neural model served by name, with its streaming engine.
#[derive(Clone)]
pub struct Model {
    /// Its name (the checkpoint's file stem, or the name it was loaded as).
    pub name: String,
    /// `NAME@N:HASH` (see the module doc).
    pub version: Arc<str>,
    /// sha256 of its checkpoint, hex.
    pub sha256: String,
    /// Its file; `None` for the zoo built into qecd.
    pub path: Option<PathBuf>,
    /// The weights.
    pub model: Arc<NeuralModel>,
    /// The engine every stream using this version shares.
    pub engine: Arc<StreamEngine>,
}

/// The models a server holds, each with its engine; models can be loaded
/// and retired while streams run.
pub struct Models {
    /// What new sessions choose from, in load order (a replaced model keeps its place).
    served: RwLock<Arc<[Model]>>,
    /// Loads so far of each name; its lock also makes loads one at a time.
    loads: Mutex<HashMap<String, u64>>,
    /// Options of the engines of models loaded later.
    options: StreamOptions,
    /// Where those engines step.
    device: Device,
    /// `LoadModel` reads files under this directory only; `None`: any file.
    dir: Option<PathBuf>,
}

impl Models {
    /// The zoo checkpoints built into the binary, on the CPU.
    pub fn embedded(options: &StreamOptions) -> Result<Self> {
        Self::serve(Loaded::zoo()?, options, Device::Cpu)
    }

    /// Starts an engine for each model, stepping on `device` (the CPU
    /// backend with `options.threads` threads, or a GPU's CUDA kernels).
    /// Each is version 1 of its name.
    pub fn serve(loaded: Vec<Loaded>, options: &StreamOptions, device: Device) -> Result<Self> {
        let models = Self {
            served: RwLock::new(Vec::new().into()),
            loads: Mutex::new(HashMap::new()),
            options: options.clone(),
            device,
            dir: None,
        };
        for l in loaded {
            models.install(l).map_err(|f| anyhow::anyhow!("{}", f.message))?;
        }
        Ok(models)
    }

    /// Limits [`Models::load_file`] to files under `dir` (`--models DIR`).
    pub fn confined_to(mut self, dir: &Path) -> Result<Self> {
        let dir = dir.canonicalize().with_context(|| format!("the models directory {}", dir.display()))?;
        self.dir = Some(dir);
        Ok(self)
    }

    /// The models new sessions choose from now.
    pub fn all(&self) -> Arc<[Model]> {
        self.served.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// What `ListModels` says of each.
    pub fn summaries(&self) -> Vec<ModelSummary> {
        self.all()
            .iter()
            .map(|m| {
                let meta = m.model.meta();
                ModelSummary {
                    name: m.name.clone(),
                    version: m.version.to_string(),
                    sha256: m.sha256.clone(),
                    distance: m.model.distance(),
                    basis: m.model.basis(),
                    noise: meta.provenance.noise.clone(),
                    p: meta.provenance.p,
                    rounds_trained: meta.provenance.rounds.clone(),
                    width: meta.config.width,
                    layers: meta.config.layers,
                    temperature: meta.temperature,
                }
            })
            .collect()
    }

    /// The model called `name`, or without a name the first one for the
    /// code ([`crate::find_model`]), with its engine.
    pub fn find(&self, name: Option<&str>, d: usize, basis: Basis) -> Result<Model, Fault> {
        let served = self.all();
        let weights: Vec<Arc<NeuralModel>> = served.iter().map(|m| m.model.clone()).collect();
        let found = crate::find_model(&weights, name, d, basis)?;
        let i = weights.iter().position(|w| Arc::ptr_eq(w, found)).expect("found among them");
        Ok(served[i].clone())
    }

    /// Loads the checkpoint at `path` (a path on the server's machine) and
    /// serves it as `name` (default: the file's stem), replacing the model
    /// of that name for new sessions. Refused with INVALID_ARGUMENT, and
    /// nothing changed, for a path outside the models directory or a file
    /// that cannot be served.
    pub fn load_file(&self, path: &Path, name: Option<&str>) -> Result<Model, Fault> {
        if let Some(dir) = &self.dir {
            // A file that is there is followed through links; one that is not will fail to read.
            let inside = path.canonicalize().unwrap_or_else(|_| absolute(path)).starts_with(dir);
            if !inside {
                return Err(Fault::invalid(format!(
                    "model file {}: this server loads models from {} only (--models)",
                    path.display(),
                    dir.display()
                )));
            }
        }
        self.install(Loaded::read_as(path, name)?)
    }

    /// Starts an engine for `loaded` and serves it under its weights' name
    /// (which [`Models::find`] looks up): a new version of that name, in its
    /// place, or a new name at the end.
    fn install(&self, loaded: Loaded) -> Result<Model, Fault> {
        let name = loaded.model.name().to_string();
        let name = name.as_str();
        let origin = loaded.path.as_ref().map_or_else(|| format!("built-in model {name}"), |p| p.display().to_string());
        let refused = |why: String| Fault::invalid(format!("model file {origin}: {why}"));
        if name.is_empty() {
            return Err(refused("a model needs a name".into()));
        }
        check_servable(&loaded.model).map_err(refused)?;
        let weights = loaded.model.clone();
        let engine = match self.device {
            Device::Cpu => StreamEngine::start(weights.clone(), self.options.clone()),
            device => {
                let backend = weights.backend(device).map_err(|e| refused(format!("on {device}: {e}")))?;
                StreamEngine::start_on(weights.clone(), self.options.clone(), backend)
                    .map_err(|e| refused(format!("on {device}: {e}")))?
            }
        };
        let mut loads = self.loads.lock().unwrap_or_else(PoisonError::into_inner);
        let n = loads.entry(name.to_string()).or_insert(0);
        *n += 1;
        let model = Model {
            name: name.to_string(),
            version: format!("{name}@{n}:{}", &loaded.sha256[..SHORT_HASH]).into(),
            sha256: loaded.sha256,
            path: loaded.path,
            model: weights,
            engine: Arc::new(engine),
        };
        let mut served = self.served.write().unwrap_or_else(PoisonError::into_inner);
        let mut next: Vec<Model> = served.to_vec();
        match next.iter_mut().find(|m| m.name == name) {
            Some(old) => *old = model.clone(),
            None => next.push(model.clone()),
        }
        *served = next.into();
        tracing::info!(version = %model.version, from = %origin, "serving model");
        Ok(model)
    }

    /// Stops offering the model loaded from `path` to new sessions (its
    /// open sessions finish on it); its name, if one was served from there.
    pub fn retire(&self, path: &Path) -> Option<String> {
        let path = &absolute(path);
        let _loading = self.loads.lock().unwrap_or_else(PoisonError::into_inner);
        let mut served = self.served.write().unwrap_or_else(PoisonError::into_inner);
        let gone = served.iter().find(|m| m.path.as_deref() == Some(path))?.clone();
        *served = served.iter().filter(|m| m.path.as_deref() != Some(path)).cloned().collect::<Vec<_>>().into();
        tracing::info!(version = %gone.version, "no longer offered: its file is gone");
        Some(gone.name)
    }

    /// True when the model served from `path` has the checkpoint `sha256`.
    pub fn serves(&self, path: &Path, sha256: &str) -> bool {
        let path = &absolute(path);
        self.all().iter().any(|m| m.path.as_deref() == Some(path) && m.sha256 == sha256)
    }
}

/// A model the service can step round by round: its distance and basis make
/// a memory circuit, and that circuit's stabilizers sit where the model's do.
fn check_servable(model: &NeuralModel) -> Result<(), String> {
    let (d, basis) = (model.distance(), model.basis());
    let circuit = MemoryExperiment::new(d, d, basis)
        .and_then(|e| e.ideal_circuit())
        .map_err(|e| format!("its code d={d} memory-{basis} cannot be served: {e}"))?;
    let layout = StabilizerLayout::from_circuit(&circuit, basis).map_err(|e| e.to_string())?;
    crate::session::check_model_order(model, &RoundLayout::new(&layout))
        .map_err(|f| format!("{} (d={d} memory-{basis})", f.message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(path: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/models").join(path)
    }

    #[test]
    fn a_file_loaded_under_another_name_is_found_by_that_name() {
        let zoo = Loaded::read(&fixture("d3_z_si1000_p003.safetensors")).unwrap();
        let models = Models::serve(vec![zoo], &StreamOptions::default(), Device::Cpu).unwrap();
        let tuned = fixture("finetuned/d3_z_crosstalk.safetensors");
        let loaded = models.load_file(&tuned, Some("d3_z_si1000_p003")).unwrap();
        let sha = sha256_hex(&std::fs::read(&tuned).unwrap());
        assert_eq!(&*loaded.version, format!("d3_z_si1000_p003@2:{}", &sha[..SHORT_HASH]));
        for name in [Some("d3_z_si1000_p003"), None] {
            let found = models.find(name, 3, Basis::Z).unwrap();
            assert_eq!((&*found.version, found.sha256.as_str()), (&*loaded.version, sha.as_str()), "{name:?}");
        }
        let missing = models.find(Some("d3_z_crosstalk"), 3, Basis::Z).err().expect("its stem is not a served name");
        assert!(missing.message.contains("this server has: d3_z_si1000_p003"), "{}", missing.message);
    }
}
