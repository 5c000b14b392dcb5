//! The server's cache of built codes: each code's circuit, DEM, layouts and
//! calibrations ([`CircuitInfo`]), built the first time a stream asks.
//!
//! A build takes from milliseconds (d=3, 3 rounds) to a minute (d=3, 1,000
//! rounds), so it runs on a thread of its own and the cache's lock is held
//! only to look an entry up or change it, never across a build. Streams that
//! open the same code while it builds wait for that one build. Each waiter
//! asks its `gone` probe every [`POLL`]; when the last one has gone the build
//! is told to stop and its entry leaves, so the next open builds afresh.
//!
//! The cache is bounded twice: at most `max_codes` entries, building ones
//! included, and at most `code_cache_mib` of estimated bytes
//! ([`CircuitInfo::estimated_bytes`]; a build counts its
//! [`predicted_bytes`] until it is done). Past either bound, the least
//! recently used entry that no stream holds is dropped; when every entry is
//! held, a new code is refused before any work is done on it.
//!
//! A code the operator gave a DEM file for ([`crate::code_dem`]) is built
//! with that DEM; the file stays with the cache, so a code evicted and
//! opened again is built with it again. A new file for the code
//! ([`CodeCache::replace_dem`]) drops the code's entry: new opens build it
//! with the new file, while sessions keep the [`CircuitInfo`] they opened,
//! and a build under way with the old file still answers the opens that
//! wait for it but is not kept.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use simulator_bridge::Basis;
use tracing::{info, warn};

use crate::api::{CodeSpec, Fault, Status};
use crate::code_dem::CodeDem;
use crate::session::CircuitInfo;

/// How often a waiting open asks whether its client has gone.
pub const POLL: Duration = Duration::from_millis(50);

/// Predicted bytes of a code's [`CircuitInfo`] per detector, before it is
/// built. Built codes hold 600 (d=3, 3 rounds) to 1,060 (d=11, 11 rounds)
/// bytes a detector, most of it DEM text.
pub const PREDICTED_BYTES_PER_DETECTOR: usize = 1200;

/// What tells two codes apart: distance, basis, rounds, noise model's name and p's bits.
pub(crate) type CodeKey = (usize, Basis, usize, String, u64);

pub(crate) fn key_of(code: &CodeSpec) -> CodeKey {
    (code.distance, code.basis, code.rounds, code.noise.name(), code.noise.p().to_bits())
}

/// Bytes a code's [`CircuitInfo`] is expected to hold before it is built:
/// [`PREDICTED_BYTES_PER_DETECTOR`] for each of its `(d² − 1)·rounds`
/// detectors (half the stabilizers in the first round and in the final one).
pub fn predicted_bytes(code: &CodeSpec) -> usize {
    let stabilizers = code.distance.saturating_mul(code.distance).saturating_sub(1);
    stabilizers.saturating_mul(code.rounds).saturating_mul(PREDICTED_BYTES_PER_DETECTOR)
}

/// What the cache holds and has done, for the operator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CodeCacheStats {
    /// Codes built and kept.
    pub codes: usize,
    /// Codes being built.
    pub building: usize,
    /// Estimated bytes of the kept codes and predicted bytes of those building.
    pub bytes: usize,
    /// Builds started (a shared build counts once).
    pub builds: u64,
    /// Builds left by every open waiting for them, and so told to stop.
    pub abandoned: u64,
    /// Builds that did stop when told (their threads have ended).
    pub cancelled: u64,
    /// Builds that failed (their code was invalid): reported to every waiter, not kept.
    pub failed: u64,
    /// Kept codes dropped to make room for others.
    pub evictions: u64,
    /// Opens refused because every entry was held.
    pub refused: u64,
}

/// The cache's bounds.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most entries, building ones included (`--max-codes`).
    pub max_codes: usize,
    /// Most estimated bytes, in MiB (`--code-cache-mib`).
    pub max_mib: usize,
}

impl Limits {
    fn max_bytes(&self) -> usize {
        self.max_mib.saturating_mul(1 << 20)
    }
}

/// The built codes of a server, shared by its streams.
pub struct CodeCache {
    limits: Limits,
    state: Mutex<State>,
}

/// What the cache's lock guards.
#[derive(Default)]
struct State {
    entries: HashMap<CodeKey, Entry>,
    /// Ticks once per lookup; an entry's `used` is the tick it was last looked up at.
    clock: u64,
    stats: CodeCacheStats,
    /// The operator's DEM files, by code: what the code's next build decodes with.
    dems: HashMap<CodeKey, Arc<CodeDem>>,
}

enum Entry {
    /// Being built; its waiters block on it.
    Building { build: Arc<Build>, predicted: usize },
    /// Built.
    Ready { info: Arc<CircuitInfo>, used: u64 },
}

/// One build of one code, and the opens waiting for it.
struct Build {
    /// Set when no open waits for it any more: the builder stops.
    stop: AtomicBool,
    outcome: Mutex<Outcome>,
    /// Signalled when the build ends.
    done: Condvar,
}

#[derive(Default)]
struct Outcome {
    /// Opens waiting for it.
    waiters: usize,
    /// `None` while it builds, and once its last waiter took it (so that
    /// only streams and the cache hold the code).
    result: Option<Result<Arc<CircuitInfo>, Fault>>,
    /// Set when the build ended.
    ended: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl CodeCache {
    /// An empty cache with these bounds, building the codes of `dems` with their files.
    pub fn new(limits: Limits, dems: &[Arc<CodeDem>]) -> Arc<Self> {
        let dems = dems.iter().map(|d| (key_of(&d.code), d.clone())).collect();
        Arc::new(Self { limits, state: Mutex::new(State { dems, ..State::default() }) })
    }

    /// The operator's DEM file for `code`, if any: what its next build decodes with.
    pub fn dem_of(&self, code: &CodeSpec) -> Option<Arc<CodeDem>> {
        lock(&self.state).dems.get(&key_of(code)).cloned()
    }

    /// Makes `dem` its code's DEM file for new opens, and returns the one it
    /// replaces. The code's entry, built or building with the file before,
    /// leaves the cache: sessions that opened it keep it, and opens waiting
    /// for its build still get that build, which is not kept.
    pub fn replace_dem(&self, dem: Arc<CodeDem>) -> Option<Arc<CodeDem>> {
        let key = key_of(&dem.code);
        let mut state = lock(&self.state);
        state.entries.remove(&key);
        state.dems.insert(key, dem)
    }

    /// The built code, building it on a thread of its own (or waiting for a
    /// build under way) if it is not kept. `gone` is asked every [`POLL`]
    /// while it waits: once it says the client has left, the open gives up,
    /// and a build that no open waits for any more stops.
    pub fn get(self: &Arc<Self>, code: &CodeSpec, gone: &dyn Fn() -> bool) -> Result<Arc<CircuitInfo>, Fault> {
        let key = key_of(code);
        let (build, to_start) = {
            let mut state = lock(&self.state);
            state.clock += 1;
            let now = state.clock;
            match state.entries.get_mut(&key) {
                Some(Entry::Ready { info, used }) => {
                    *used = now;
                    return Ok(info.clone());
                }
                Some(Entry::Building { build, .. }) => {
                    lock(&build.outcome).waiters += 1;
                    (build.clone(), None)
                }
                None => {
                    let predicted = predicted_bytes(code);
                    if let Err(fault) = self.make_room(&mut state, predicted) {
                        state.stats.refused += 1;
                        return Err(fault);
                    }
                    let build = Arc::new(Build {
                        stop: AtomicBool::new(false),
                        outcome: Mutex::new(Outcome { waiters: 1, ..Outcome::default() }),
                        done: Condvar::new(),
                    });
                    state.entries.insert(key.clone(), Entry::Building { build: build.clone(), predicted });
                    state.stats.builds += 1;
                    (build, Some(state.dems.get(&key).cloned()))
                }
            }
        };
        // A new build takes the code's DEM file as it is when its entry is made.
        if let Some(dem) = to_start {
            let cache = self.clone();
            let job = (key.clone(), code.clone(), build.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("qecd-build d={}", code.distance))
                .spawn(move || cache.run_build(job.0, job.1, dem, job.2));
            if let Err(e) = spawned {
                self.finish(
                    &key,
                    &build,
                    Err(Fault::internal(format!("cannot start a thread to build the code: {e}"))),
                );
            }
        }
        self.wait(&key, &build, gone)
    }

    /// What the cache holds and has done.
    pub fn stats(&self) -> CodeCacheStats {
        let state = lock(&self.state);
        let mut stats = state.stats;
        stats.codes = state.entries.values().filter(|e| matches!(e, Entry::Ready { .. })).count();
        stats.building = state.entries.len() - stats.codes;
        stats.bytes = Self::bytes(&state);
        stats
    }

    /// Estimated bytes of the entries.
    fn bytes(state: &State) -> usize {
        state
            .entries
            .values()
            .map(|e| match e {
                Entry::Building { predicted, .. } => *predicted,
                Entry::Ready { info, .. } => info.estimated_bytes(),
            })
            .sum()
    }

    /// Drops least recently used kept codes that no stream holds until one
    /// more entry of `incoming` bytes fits; a fault naming the bound when it
    /// cannot.
    fn make_room(&self, state: &mut State, incoming: usize) -> Result<(), Fault> {
        let max_bytes = self.limits.max_bytes();
        loop {
            let over_count = state.entries.len() >= self.limits.max_codes;
            let over_bytes = Self::bytes(state).saturating_add(incoming) > max_bytes;
            if !over_count && !over_bytes {
                return Ok(());
            }
            let Some(victim) = Self::least_recent_unheld(state, None) else {
                let held = state.entries.len();
                let message = if over_count {
                    format!(
                        "this server keeps {held} codes, all in use by open streams or being built (--max-codes {})",
                        self.limits.max_codes
                    )
                } else {
                    format!(
                        "this code needs about {} MiB and the {held} codes in use hold about {} MiB \
                         (--code-cache-mib {})",
                        incoming.div_ceil(1 << 20),
                        Self::bytes(state).div_ceil(1 << 20),
                        self.limits.max_mib
                    )
                };
                return Err(Fault::new(Status::ResourceExhausted, message));
            };
            state.entries.remove(&victim);
            state.stats.evictions += 1;
        }
    }

    /// The least recently used built code that only the cache holds, other than `keep`.
    fn least_recent_unheld(state: &State, keep: Option<&CodeKey>) -> Option<CodeKey> {
        state
            .entries
            .iter()
            .filter_map(|(key, e)| match e {
                Entry::Ready { info, used } if Arc::strong_count(info) == 1 && Some(key) != keep => Some((*used, key)),
                _ => None,
            })
            .min_by_key(|(used, _)| *used)
            .map(|(_, key)| key.clone())
    }

    /// Builds the code, then keeps it (unless it was stopped or failed) and
    /// wakes its waiters.
    fn run_build(&self, key: CodeKey, code: CodeSpec, dem: Option<Arc<CodeDem>>, build: Arc<Build>) {
        let stop = || build.stop.load(Ordering::Relaxed);
        let started = std::time::Instant::now();
        let result = match CircuitInfo::build(&code, dem.as_ref().map(|d| &d.file), &stop) {
            Ok(Some(info)) => Ok(Arc::new(info)),
            Ok(None) => {
                info!(%code, elapsed = ?started.elapsed(), "code build stopped: no open waits for it");
                lock(&self.state).stats.cancelled += 1;
                return;
            }
            Err(e) => Err(Fault::invalid(format!(
                "code d={} memory-{} rounds={}: {e:#}",
                code.distance, code.basis, code.rounds
            ))),
        };
        if result.is_ok() {
            match &dem {
                Some(dem) => info!(%code, dem = %dem.describe(), elapsed = ?started.elapsed(), "code built"),
                None => info!(%code, elapsed = ?started.elapsed(), "code built"),
            }
        }
        self.finish(&key, &build, result);
    }

    /// Ends `build` with `result`: a built code replaces its entry (if the
    /// build was not stopped meanwhile), a failed one removes it; every
    /// waiter wakes.
    fn finish(&self, key: &CodeKey, build: &Arc<Build>, result: Result<Arc<CircuitInfo>, Fault>) {
        let mut state = lock(&self.state);
        if Self::is_building(&state, key, build) {
            match &result {
                Ok(info) => {
                    state.clock += 1;
                    let used = state.clock;
                    state.entries.insert(key.clone(), Entry::Ready { info: info.clone(), used });
                    // The build may hold more than predicted: make room around it.
                    while Self::bytes(&state) > self.limits.max_bytes() {
                        let Some(victim) = Self::least_recent_unheld(&state, Some(key)) else { break };
                        state.entries.remove(&victim);
                        state.stats.evictions += 1;
                    }
                }
                Err(fault) => {
                    warn!(%fault, "code build failed");
                    state.entries.remove(key);
                    state.stats.failed += 1;
                }
            }
        }
        let mut outcome = lock(&build.outcome);
        if outcome.waiters > 0 {
            outcome.result = Some(result);
        }
        outcome.ended = true;
        build.done.notify_all();
    }

    /// Waits for `build`, asking `gone` every [`POLL`].
    fn wait(&self, key: &CodeKey, build: &Arc<Build>, gone: &dyn Fn() -> bool) -> Result<Arc<CircuitInfo>, Fault> {
        let mut outcome = lock(&build.outcome);
        loop {
            if outcome.ended {
                outcome.waiters -= 1;
                let result = if outcome.waiters == 0 { outcome.result.take() } else { outcome.result.clone() };
                return result.expect("an ended build keeps its result until its last waiter takes it");
            }
            outcome = build.done.wait_timeout(outcome, POLL).unwrap_or_else(PoisonError::into_inner).0;
            if !outcome.ended && gone() {
                drop(outcome);
                self.leave(key, build);
                return Err(Fault::new(Status::Unavailable, "the client left while its code was being built"));
            }
        }
    }

    /// One waiter of `build` has gone; the last one stops it.
    fn leave(&self, key: &CodeKey, build: &Arc<Build>) {
        let mut state = lock(&self.state);
        let mut outcome = lock(&build.outcome);
        outcome.waiters -= 1;
        if outcome.waiters > 0 || outcome.ended {
            if outcome.waiters == 0 {
                outcome.result = None;
            }
            return;
        }
        build.stop.store(true, Ordering::Relaxed);
        drop(outcome);
        if Self::is_building(&state, key, build) {
            state.entries.remove(key);
            state.stats.abandoned += 1;
        }
    }

    /// Whether `key`'s entry is `build`, under way.
    fn is_building(state: &State, key: &CodeKey, build: &Arc<Build>) -> bool {
        matches!(state.entries.get(key), Some(Entry::Building { build: b, .. }) if Arc::ptr_eq(b, build))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    use super::*;

    fn code(d: usize, rounds: usize) -> CodeSpec {
        CodeSpec::new(d, Basis::Z, rounds, None, None).unwrap()
    }

    fn cache(max_codes: usize, max_mib: usize) -> Arc<CodeCache> {
        CodeCache::new(Limits { max_codes, max_mib }, &[])
    }

    const STAY: &dyn Fn() -> bool = &|| false;

    #[test]
    fn the_least_recently_used_unheld_code_makes_room() {
        let cache = cache(2, 1024);
        for rounds in [1, 2] {
            cache.get(&code(3, rounds), STAY).unwrap();
        }
        // Rounds=1 is used again: rounds=2 is now the least recent.
        cache.get(&code(3, 1), STAY).unwrap();
        cache.get(&code(3, 3), STAY).unwrap();
        let stats = cache.stats();
        assert_eq!((stats.codes, stats.builds, stats.evictions), (2, 3, 1));
        cache.get(&code(3, 1), STAY).unwrap();
        assert_eq!(cache.stats().builds, 3, "rounds=1 was kept");
        cache.get(&code(3, 2), STAY).unwrap();
        assert_eq!(cache.stats().builds, 4, "rounds=2 was dropped");
    }

    #[test]
    fn held_codes_are_kept_and_a_new_one_is_refused_before_building() {
        let cache = cache(2, 1024);
        let held: Vec<_> = [1, 2].iter().map(|&r| cache.get(&code(3, r), STAY).unwrap()).collect();
        let fault = cache.get(&code(3, 3), STAY).unwrap_err();
        assert_eq!(fault.status, Status::ResourceExhausted);
        assert!(fault.message.contains("--max-codes 2"), "{}", fault.message);
        let stats = cache.stats();
        assert_eq!((stats.codes, stats.builds, stats.refused, stats.evictions), (2, 2, 1, 0));
        drop(held);
        cache.get(&code(3, 3), STAY).unwrap();
        assert_eq!(cache.stats().evictions, 1);
    }

    #[test]
    fn the_byte_bound_refuses_a_code_that_cannot_fit() {
        let fault = cache(32, 0).get(&code(3, 3), STAY).unwrap_err();
        assert_eq!(fault.status, Status::ResourceExhausted);
        assert!(fault.message.contains("--code-cache-mib 0"), "{}", fault.message);
        // 1 MiB holds d=3 codes of a few rounds (about 30 KB each), not 1,000 rounds (about 9 MB).
        let cache = cache(32, 1);
        let held = cache.get(&code(3, 3), STAY).unwrap();
        let fault = cache.get(&code(3, 1000), STAY).unwrap_err();
        assert!(fault.message.contains("--code-cache-mib 1"), "{}", fault.message);
        assert_eq!(cache.stats().bytes, held.estimated_bytes());
    }

    /// The prediction that admits a build is within a factor of 2 of the built code's estimate.
    #[test]
    fn predicted_bytes_are_near_the_built_codes_bytes() {
        for (d, rounds) in [(3, 3), (3, 50), (5, 5), (7, 7), (11, 11)] {
            let c = code(d, rounds);
            let built = CircuitInfo::build(&c, None, STAY).unwrap().unwrap().estimated_bytes();
            let predicted = predicted_bytes(&c);
            assert!(predicted * 2 > built && predicted < built * 2, "d={d} rounds={rounds}: {predicted} vs {built}");
        }
    }

    #[test]
    fn opens_of_one_code_share_its_build() {
        let cache = cache(32, 1024);
        let got: Vec<_> = std::thread::scope(|s| {
            let opens: Vec<_> = (0..4).map(|_| s.spawn(|| cache.get(&code(5, 5), STAY).unwrap())).collect();
            opens.into_iter().map(|o| o.join().unwrap()).collect()
        });
        assert!(got.iter().all(|info| Arc::ptr_eq(info, &got[0])));
        assert_eq!(cache.stats().builds, 1);
    }

    #[test]
    fn a_failed_build_is_reported_to_every_waiter_and_not_kept() {
        let cache = cache(32, 1024);
        let even = code(4, 3);
        let faults: Vec<_> = std::thread::scope(|s| {
            let opens: Vec<_> = (0..3).map(|_| s.spawn(|| cache.get(&even, STAY).unwrap_err())).collect();
            opens.into_iter().map(|o| o.join().unwrap()).collect()
        });
        for fault in &faults {
            assert_eq!(fault.status, Status::InvalidArgument);
            assert!(fault.message.starts_with("code d=4 memory-Z rounds=3: "), "{}", fault.message);
        }
        let stats = cache.stats();
        assert_eq!((stats.codes, stats.building, stats.failed), (0, 0, stats.builds));
    }

    /// d=3 with 400 rounds builds for about 20 s: its waiter leaves after
    /// 300 ms, and the build stops within 2 s of that (its longest step
    /// that asks no stop flag, sampling the held-out shots, takes 0.5 s).
    #[test]
    fn a_build_nobody_waits_for_stops() {
        let cache = cache(32, 1024);
        let left = AtomicBool::new(false);
        let started = Instant::now();
        let gone = || {
            if started.elapsed() > Duration::from_millis(300) {
                left.store(true, Ordering::Relaxed);
            }
            left.load(Ordering::Relaxed)
        };
        let fault = cache.get(&code(3, 400), &gone).unwrap_err();
        assert_eq!(fault.status, Status::Unavailable);
        assert_eq!(fault.message, "the client left while its code was being built");
        let gave_up = started.elapsed();
        assert!(gave_up < Duration::from_millis(300) + 2 * POLL, "gave up after {gave_up:?}");
        let stats = cache.stats();
        assert_eq!((stats.abandoned, stats.codes, stats.building), (1, 0, 0));
        while cache.stats().cancelled == 0 {
            assert!(started.elapsed() < gave_up + Duration::from_secs(2), "the build did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
        // A later open builds it afresh (and here, waits for it).
        let stays = cache.get(&code(3, 3), STAY);
        assert!(stays.is_ok());
        assert_eq!(cache.stats().builds, 2);
    }

    /// One waiter leaving does not stop a build another still waits for.
    #[test]
    fn a_build_stops_only_when_its_last_waiter_leaves() {
        let cache = cache(32, 1024);
        let c = code(3, 60);
        let info = std::thread::scope(|s| {
            let leaver = s.spawn(|| cache.get(&c, &|| true));
            let stayer = s.spawn(|| cache.get(&c, STAY));
            assert_eq!(leaver.join().unwrap().unwrap_err().status, Status::Unavailable);
            stayer.join().unwrap().unwrap()
        });
        let stats = cache.stats();
        assert_eq!((stats.builds, stats.abandoned, stats.cancelled, stats.codes), (1, 0, 0, 1));
        assert!(Arc::ptr_eq(&info, &cache.get(&c, STAY).unwrap()));
    }

    /// A code the operator gave a DEM for is built with it, again after an
    /// eviction; other codes keep their circuit's.
    #[test]
    fn a_code_dem_is_what_its_code_decodes_with() {
        let tmp = tempfile::tempdir().unwrap();
        let other =
            CircuitInfo::build(&CodeSpec::new(3, Basis::Z, 3, None, Some(0.01)).unwrap(), None, STAY).unwrap().unwrap();
        let path = tmp.path().join("other.dem");
        std::fs::write(&path, other.dem_text()).unwrap();
        let spec = crate::code_dem::CodeDemSpec { code: code(3, 3), path };
        let dem = Arc::new(crate::code_dem::CodeDem::load(&spec).unwrap());
        let cache = CodeCache::new(Limits { max_codes: 1, max_mib: 1024 }, &[dem]);
        let own = CircuitInfo::build(&code(3, 3), None, STAY).unwrap().unwrap();
        assert_ne!(own.dem_text(), other.dem_text());
        assert_eq!(cache.get(&code(3, 3), STAY).unwrap().dem_text(), other.dem_text());
        let own5 = CircuitInfo::build(&code(3, 5), None, STAY).unwrap().unwrap();
        assert_eq!(cache.get(&code(3, 5), STAY).unwrap().dem_text(), own5.dem_text());
        // d=3, 5 rounds evicted d=3, 3 rounds: built again, with the file again.
        assert_eq!(cache.get(&code(3, 3), STAY).unwrap().dem_text(), other.dem_text());
        assert_eq!(cache.stats().builds, 3);
        assert!(cache.dem_of(&code(3, 3)).is_some() && cache.dem_of(&code(3, 5)).is_none());
    }

    /// A DEM file at `path` for d=3 memory-Z with `rounds` rounds: its SI1000 circuit's at `p`.
    fn dem_file(path: std::path::PathBuf, rounds: usize, p: f64) -> Arc<crate::code_dem::CodeDem> {
        let noise = simulator_bridge::NoiseModel::Si1000 { p };
        let circuit =
            simulator_bridge::MemoryExperiment::new(3, rounds, Basis::Z).unwrap().noisy_circuit(&noise).unwrap();
        std::fs::write(&path, simulator_bridge::decoding_dem(&circuit).unwrap().to_string()).unwrap();
        Arc::new(crate::code_dem::CodeDem::load(&crate::code_dem::CodeDemSpec { code: code(3, rounds), path }).unwrap())
    }

    /// A new DEM file serves the opens after it; what was opened before,
    /// built or still building, keeps the file it was built with.
    #[test]
    fn a_replaced_dem_serves_new_opens_and_earlier_ones_keep_theirs() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (dem_file(tmp.path().join("a.dem"), 3, 0.01), dem_file(tmp.path().join("b.dem"), 3, 0.002));
        assert_ne!(a.file.text(), b.file.text());
        let cache = CodeCache::new(Limits { max_codes: 4, max_mib: 1024 }, std::slice::from_ref(&a));
        let held = cache.get(&code(3, 3), STAY).unwrap();
        assert_eq!(held.dem_text(), a.file.text());
        let before = cache.replace_dem(b.clone()).unwrap();
        assert!(Arc::ptr_eq(&before, &a));
        assert!(Arc::ptr_eq(&cache.dem_of(&code(3, 3)).unwrap(), &b));
        let after = cache.get(&code(3, 3), STAY).unwrap();
        assert_eq!(after.dem_text(), b.file.text());
        assert_eq!(held.dem_text(), a.file.text(), "a session's code changed under it");
        assert_eq!((cache.stats().builds, cache.stats().codes), (2, 1));
        // Replaced while it builds: its open gets the old file, later opens the new one.
        let (c, e) = (dem_file(tmp.path().join("c.dem"), 40, 0.01), dem_file(tmp.path().join("e.dem"), 40, 0.002));
        cache.replace_dem(c.clone());
        let started = Instant::now();
        let (first, second) = std::thread::scope(|s| {
            let first = s.spawn(|| cache.get(&code(3, 40), STAY).unwrap());
            while cache.stats().building == 0 {
                assert!(started.elapsed() < Duration::from_secs(5), "the build did not start");
                std::thread::sleep(Duration::from_millis(1));
            }
            assert!(cache.replace_dem(e.clone()).is_some_and(|old| Arc::ptr_eq(&old, &c)));
            (first.join().unwrap(), cache.get(&code(3, 40), STAY).unwrap())
        });
        assert_eq!(first.dem_text(), c.file.text());
        assert_eq!(second.dem_text(), e.file.text());
        assert!(Arc::ptr_eq(&second, &cache.get(&code(3, 40), STAY).unwrap()), "the new build is kept");
    }

    #[test]
    fn the_smallest_p_builds() {
        let c = CodeSpec::new(3, Basis::Z, 3, None, Some(crate::api::MIN_P)).unwrap();
        assert!(CircuitInfo::build(&c, None, STAY).unwrap().is_some());
    }

    /// A hub starts building its prebuild codes without waiting for them;
    /// a stream asking for one meanwhile shares its build.
    #[test]
    fn prebuild_codes_build_in_the_background() {
        let models =
            crate::Models::serve(Vec::new(), &decoder::StreamOptions::default(), decoder::Device::Cpu).unwrap();
        let options = crate::ServerOptions { prebuild: vec![code(3, 60)], ..Default::default() };
        let started = Instant::now();
        let hub = crate::Hub::new(models, options);
        assert!(started.elapsed() < Duration::from_secs(1), "Hub::new took {:?}", started.elapsed());
        while hub.code_cache_stats().building == 0 {
            assert!(started.elapsed() < Duration::from_secs(1), "the prebuild did not start");
            std::thread::sleep(Duration::from_millis(1));
        }
        hub.circuit(&code(3, 60)).unwrap();
        let stats = hub.code_cache_stats();
        assert_eq!((stats.builds, stats.codes, stats.building), (1, 1, 0));
    }
}
