//! `qecd serve --watch-models`: a thread that polls the models directory
//! and serves what changes in it. A new or changed `*.safetensors` is
//! loaded ([`Models::load_file`](crate::Models::load_file)); one that cannot be served is logged and
//! the model of its name keeps serving; a removed one stops being offered to
//! new sessions. A file is looked at again only when its modification time
//! or size changes, and loaded only when its content (sha256) differs from
//! what is served from it, so a copy still being written is retried once it
//! grows. Write checkpoints atomically (a rename) to spare the warning.
//!
//! `qecd serve --watch-code-dems` polls each `--code-dem` file the same way
//! ([`Watcher::code_dems`]). A changed file whose content differs from the
//! DEM its code decodes with is read and checked as at start-up
//! ([`CodeDem::load`]): one that fits becomes the code's DEM for new
//! sessions ([`CodeCache::replace_dem`](crate::codes::CodeCache::replace_dem)),
//! one that does not is logged and the DEM before it keeps serving.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crate::Hub;
use crate::code_dem::{CodeDem, CodeDemSpec};
use crate::registry::{checkpoint_files, sha256_hex};

/// How often the directory is polled.
pub const POLL: Duration = Duration::from_secs(1);

/// The watching thread; stops when dropped (or when its hub is gone).
pub struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What a poll last saw of a file: its modification time and size.
type Seen = (Option<SystemTime>, u64);

impl Watcher {
    /// Watches `dir` for `hub`, polling every `every`. The files there now
    /// count as seen: the hub serves them already.
    pub fn start(hub: &Arc<Hub>, dir: &Path, every: Duration) -> std::io::Result<Self> {
        let mut seen: HashMap<PathBuf, Seen> = HashMap::new();
        for path in checkpoint_files(dir).unwrap_or_default() {
            if let Ok(meta) = std::fs::metadata(&path) {
                seen.insert(path, (meta.modified().ok(), meta.len()));
            }
        }
        let (hub, dir) = (Arc::downgrade(hub), dir.to_path_buf());
        Self::spawn("qecd-watch-models", every, move || poll(&hub, &dir, &mut seen))
    }

    /// Watches the `--code-dem` files of `hub` (its `options.code_dems`),
    /// polling every `every`. Each file is looked at on the first poll, and
    /// then whenever its modification time or size changes.
    pub fn code_dems(hub: &Arc<Hub>, every: Duration) -> std::io::Result<Self> {
        let mut files: Vec<(CodeDemSpec, Option<Seen>)> = hub
            .options
            .code_dems
            .iter()
            .map(|d| (CodeDemSpec { code: d.code.clone(), path: d.file.path().to_path_buf() }, None))
            .collect();
        let hub = Arc::downgrade(hub);
        Self::spawn("qecd-watch-dems", every, move || poll_code_dems(&hub, &mut files))
    }

    /// Runs `poll` every `every` on a thread of its own, until it says `false` or the watcher drops.
    fn spawn(name: &str, every: Duration, mut poll: impl FnMut() -> bool + Send + 'static) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || {
            while !stopped.load(Ordering::Acquire) {
                std::thread::sleep(every);
                if !poll() {
                    return;
                }
            }
        })?;
        Ok(Self { stop, thread: Some(thread) })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One look at the directory; `false` once the hub is gone.
fn poll(hub: &Weak<Hub>, dir: &Path, seen: &mut HashMap<PathBuf, Seen>) -> bool {
    let Some(hub) = hub.upgrade() else { return false };
    let files = match checkpoint_files(dir) {
        Ok(files) => files,
        Err(e) => {
            tracing::warn!("watching models: {e:#}");
            return true;
        }
    };
    for path in &files {
        let Ok(meta) = std::fs::metadata(path) else { continue };
        let now = (meta.modified().ok(), meta.len());
        if seen.insert(path.clone(), now) == Some(now) {
            continue;
        }
        let Ok(bytes) = std::fs::read(path) else { continue };
        if hub.models.serves(path, &sha256_hex(&bytes)) {
            continue;
        }
        match hub.models.load_file(path, None) {
            Ok(model) => tracing::info!(version = %model.version, "loaded a new model from the watched directory"),
            Err(fault) => {
                tracing::warn!(file = %path.display(), "refused a model; the one before keeps serving: {}", fault.message)
            }
        }
    }
    let gone: Vec<PathBuf> = seen.keys().filter(|p| !files.contains(p)).cloned().collect();
    for path in gone {
        seen.remove(&path);
        hub.models.retire(&path);
    }
    true
}

/// One look at each code's DEM file; `false` once the hub is gone.
fn poll_code_dems(hub: &Weak<Hub>, files: &mut [(CodeDemSpec, Option<Seen>)]) -> bool {
    let Some(hub) = hub.upgrade() else { return false };
    for (spec, seen) in files.iter_mut() {
        let Ok(meta) = std::fs::metadata(&spec.path) else { continue };
        let now = (meta.modified().ok(), meta.len());
        if seen.replace(now) == Some(now) {
            continue;
        }
        let Ok(bytes) = std::fs::read(&spec.path) else { continue };
        if hub.codes.dem_of(&spec.code).is_some_and(|d| d.file.sha256() == sha256_hex(&bytes)) {
            continue;
        }
        match CodeDem::load(spec) {
            Ok(dem) => {
                let dem = Arc::new(dem);
                hub.codes.replace_dem(dem.clone());
                tracing::info!(code = %spec.code, dem = %dem.describe(), "the code decodes new sessions with its new DEM");
            }
            Err(e) => tracing::warn!(
                code = %spec.code,
                file = %spec.path.display(),
                "refused a code's DEM; the one before keeps serving: {e:#}"
            ),
        }
    }
    true
}
