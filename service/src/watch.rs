//! `qecd serve --watch-models`: a thread that polls the models directory
//! and serves what changes in it. A new or changed `*.safetensors` is
//! loaded ([`Models::load_file`](crate::Models::load_file)); one that cannot be served is logged and
//! the model of its name keeps serving; a removed one stops being offered to
//! new sessions. A file is looked at again only when its modification time
//! or size changes, and loaded only when its content (sha256) differs from
//! what is served from it, so a copy still being written is retried once it
//! grows. Write checkpoints atomically (a rename) to spare the warning.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crate::Hub;
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
        let stop = Arc::new(AtomicBool::new(false));
        let mut seen: HashMap<PathBuf, Seen> = HashMap::new();
        for path in checkpoint_files(dir).unwrap_or_default() {
            if let Ok(meta) = std::fs::metadata(&path) {
                seen.insert(path, (meta.modified().ok(), meta.len()));
            }
        }
        let (hub, dir, stopped) = (Arc::downgrade(hub), dir.to_path_buf(), stop.clone());
        let thread = std::thread::Builder::new().name("qecd-watch-models".into()).spawn(move || {
            while !stopped.load(Ordering::Acquire) {
                std::thread::sleep(every);
                if !poll(&hub, &dir, &mut seen) {
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
