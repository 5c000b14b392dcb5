//! `qecd load --swap-models`: the model swaps made while the streams run,
//! and the checks of what the sessions got.
//!
//! Each swap loads, for every name, the next of that name's files with
//! LoadModel, so one name can alternate between checkpoints of the same
//! code: every swap is then a new version `NAME@N:HASH` with another hash.
//! After the run three things are checked, and any violation fails it:
//! - **order:** a stream's versions of a name never go backwards, a session
//!   opened after a swap's answer got that swap's version or a newer one,
//!   and every neural result named its session's version;
//! - **hashes:** every version a session named is one the server listed
//!   before the first swap or one a swap answered, and its hash is the
//!   sha256 of the file loaded, read here (so `--swap-models` paths must be
//!   readable by this client as well as by the server);
//! - **decisions:** for a sample of each version's sessions, every answer the
//!   neural model gave equals the offline batch decoding of the same shots
//!   with the weights of the file that version's hash names
//!   ([`NeuralDecoder`], as `qecd predict --decoder neural` decodes):
//!   prediction and confidence bit for bit, which holds because the server's
//!   CPU engine steps a shot exactly as the batch decoder does
//!   (decoder/tests/neural.rs; a server stepping on a GPU agrees only within
//!   the kernels' tolerance). Answers of the fallback (correlated matching,
//!   when a shot left the neural engine on a backlog, a budget or a full
//!   engine) name no version and are counted, not compared.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use decoder::{NeuralDecoder, NeuralModel, PackedShots, decode_parallel};
use qecd_grpc::{Credentials, proto};
use qecd_service::registry::sha256_hex;
use simulator_bridge::shots::pack_bits;
use simulator_bridge::{Basis, StabilizerLayout};

use crate::cmd::client::{SessionLog, ShotSet, Tally, parse_version};

/// One entry of `--swap-models`: `[NAME=]FILE`, a checkpoint to load as
/// `NAME` (default: the file's stem, as the server names it).
#[derive(Clone, Debug)]
pub struct SwapFile {
    /// The name it is loaded as.
    pub name: String,
    /// The file, on the server's machine (and readable here for the checks).
    pub path: PathBuf,
}

impl FromStr for SwapFile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, path) = match s.split_once('=') {
            Some((name, path)) if !name.is_empty() && !name.contains('/') => (name.to_string(), PathBuf::from(path)),
            _ => {
                let path = PathBuf::from(s);
                let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                (stem, path)
            }
        };
        if name.is_empty() || path.as_os_str().is_empty() {
            return Err(format!("{s:?}: expected [NAME=]FILE"));
        }
        Ok(Self { name, path })
    }
}

/// The swaps to make: each name with its files, taken in turn.
pub struct Plan {
    /// Names in the order first given, each with its files in order.
    turns: Vec<(String, Vec<PathBuf>)>,
    /// sha256 (hex) of every file, as read here.
    sha256: HashMap<PathBuf, String>,
}

impl Plan {
    /// Groups `files` by name and reads each to know its sha256.
    pub fn new(files: &[SwapFile]) -> Result<Self> {
        let mut turns: Vec<(String, Vec<PathBuf>)> = Vec::new();
        let mut sha256 = HashMap::new();
        for f in files {
            let bytes = std::fs::read(&f.path).with_context(|| {
                format!("cannot read {} here: the swap checks decode with the files they load", f.path.display())
            })?;
            sha256.insert(f.path.clone(), sha256_hex(&bytes));
            match turns.iter_mut().find(|(name, _)| *name == f.name) {
                Some((_, paths)) => paths.push(f.path.clone()),
                None => turns.push((f.name.clone(), vec![f.path.clone()])),
            }
        }
        Ok(Self { turns, sha256 })
    }

    /// What swap `k` (from 0) loads: for each name, its next file.
    fn at(&self, k: usize) -> impl Iterator<Item = (&str, &Path)> {
        self.turns.iter().map(move |(name, paths)| (name.as_str(), paths[k % paths.len()].as_path()))
    }

    /// A file here whose sha256 is `sha256`.
    fn file_of(&self, sha256: &str) -> Option<&Path> {
        let mut files: Vec<&PathBuf> = self.sha256.iter().filter(|(_, s)| *s == sha256).map(|(p, _)| p).collect();
        files.sort();
        files.first().map(|p| p.as_path())
    }
}

/// One model load of a swap, as LoadModel answered it.
pub struct Swap {
    /// When its answer came: sessions opened later must get this version or a newer one.
    done: Instant,
    /// The name it was asked to serve the file as.
    name: String,
    /// `NAME@N:HASH` as answered, and its `N`.
    version: String,
    n: u64,
    /// The file loaded.
    path: PathBuf,
    /// sha256 of it, as the server answered.
    sha256: String,
}

/// What the swapping task saw: the versions served before the first swap, and the swaps.
pub struct Swaps {
    /// `(version, sha256)` of each model ListModels named before the first swap.
    start: Vec<(String, String)>,
    /// The loads, in the order answered.
    loads: Vec<Swap>,
}

/// Lists the models, then makes `swaps` swaps evenly spread between
/// `start` and `until`.
pub async fn run(
    addr: String,
    credentials: Credentials,
    plan: Arc<Plan>,
    swaps: usize,
    start: Instant,
    until: Instant,
) -> Result<Swaps> {
    let mut client = credentials.connect(&addr).await?;
    let listed = client.list_models(proto::ListModelsRequest {}).await?.into_inner().models;
    let mut out = Swaps { start: listed.into_iter().map(|m| (m.version, m.sha256)).collect(), loads: Vec::new() };
    let span = until - start;
    for k in 0..swaps {
        tokio::time::sleep_until((start + span.mul_f64((k + 1) as f64 / (swaps + 1) as f64)).into()).await;
        for (name, path) in plan.at(k) {
            let request = proto::LoadModelRequest { path: path.display().to_string(), name: name.to_string() };
            let loaded =
                client.load_model(request).await.map_err(|s| anyhow::anyhow!("LoadModel {}: {s}", path.display()))?;
            let loaded = loaded.into_inner();
            let n = parse_version(&loaded.version).map(|v| v.1).context("LoadModel answered no NAME@N version")?;
            out.loads.push(Swap {
                done: Instant::now(),
                name: name.to_string(),
                version: loaded.version,
                n,
                path: path.to_path_buf(),
                sha256: loaded.sha256,
            });
        }
    }
    Ok(out)
}

/// The hash a version carries: `NAME@N:HASH` → `HASH`.
fn version_hash(version: &str) -> Option<&str> {
    version.rsplit_once(':').map(|(_, h)| h).filter(|h| !h.is_empty())
}

/// The versions sessions may name, each with the file of its weights here
/// (`None`: no file of `--swap-models` has its hash); prints each, and
/// counts the loads whose answer does not fit the file loaded.
fn known_versions(plan: &Plan, swaps: &Swaps) -> (BTreeMap<String, Option<PathBuf>>, u64) {
    let mut known = BTreeMap::new();
    let mut faults = 0u64;
    for (version, sha256) in &swaps.start {
        let fits = version_hash(version).is_some_and(|h| sha256.starts_with(h));
        let file = plan.file_of(sha256);
        let here = file.map_or("no file here has its hash".into(), |f| format!("weights here: {}", f.display()));
        println!("  served before the first swap {version} ({here})");
        if !fits {
            println!("    FAULT: its hash is not the start of its sha256 {sha256}");
            faults += 1;
        }
        known.insert(version.clone(), file.map(Path::to_path_buf));
    }
    for w in &swaps.loads {
        let here = &plan.sha256[&w.path];
        println!("  swapped in {} from {}", w.version, w.path.display());
        let fits = w.sha256 == *here && version_hash(&w.version).is_some_and(|h| here.starts_with(h));
        if !fits || parse_version(&w.version).map(|v| v.0) != Some(w.name.as_str()) {
            println!("    FAULT: answered {} sha256 {}; the file here has sha256 {here}", w.version, w.sha256);
            faults += 1;
        }
        known.insert(w.version.clone(), Some(w.path.clone()));
    }
    (known, faults)
}

/// Checks every stream's sessions against the swaps (order and hashes,
/// see the module doc) and decodes up to `sample` sessions of each version
/// again offline. `streams` pairs each distance's shots with its streams'
/// tallies. Prints what it found; `true` on any violation.
pub fn check(plan: &Plan, swaps: &Swaps, streams: &[(&ShotSet, &[Tally])], sample: usize) -> Result<bool> {
    let (mut backwards, mut stale, mut strays, mut unversioned, mut unknown) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut sessions, mut versioned) = (0u64, 0u64);
    println!("\nmodel versions:");
    let (known, mut faults) = known_versions(plan, swaps);
    let mut seen: BTreeMap<String, std::collections::BTreeSet<u64>> = Default::default();
    // Each version's sessions, with the shots they played.
    let mut by_version: BTreeMap<(&str, u64, &str), Vec<Played>> = BTreeMap::new();
    for (set, tallies) in streams {
        for t in *tallies {
            let mut last: HashMap<&str, u64> = Default::default();
            for s in &t.sessions {
                sessions += 1;
                versioned += s.versioned;
                strays += s.strays;
                let Some((name, n)) = parse_version(&s.version) else {
                    // A session the run ended before it sent a shot never read its SessionOpened.
                    unversioned += u64::from(s.neural > 0);
                    continue;
                };
                seen.entry(name.to_string()).or_default().insert(n);
                if !known.contains_key(&s.version) {
                    unknown += 1;
                }
                if last.insert(name, n).is_some_and(|before| before > n) {
                    backwards += 1;
                }
                if swaps.loads.iter().any(|w| w.name == name && w.done < s.opened && w.n > n) {
                    stale += 1;
                }
                if !s.answers.is_empty() {
                    by_version.entry((name, n, &s.version)).or_default().push((set, s));
                }
            }
        }
    }
    println!("  {sessions} sessions, {versioned} results naming their version");
    for (name, ns) in &seen {
        let ns: Vec<String> = ns.iter().map(|n| n.to_string()).collect();
        println!("  {name}: sessions answered by versions @{}", ns.join(", @"));
    }
    println!(
        "  sessions whose version went backwards {backwards}, opened after a swap on an older version {stale}, \
         neural results not naming their session's version {strays}, sessions with neural answers but no version \
         {unversioned}, naming a version neither listed nor loaded {unknown}, loads not matching their file {faults}"
    );
    faults += backwards + stale + strays + unversioned + unknown;
    if sample == 0 {
        println!("  decisions not decoded again offline (--check-sessions 0)");
        return Ok(faults > 0);
    }
    println!(
        "decisions decoded again offline with each version's file (NeuralDecoder, CPU): up to {sample} sessions \
         per version, half of them ones still answering after a later swap of their name; every neural answer must \
         equal it bit for bit (prediction and confidence); fallback answers (correlated matching) are not compared"
    );
    let mut cache = Decoders::default();
    let (mut checked_sessions, mut checked_answers) = (0usize, 0u64);
    for (&(name, _, version), list) in &mut by_version {
        list.sort_by_key(|(_, s)| s.opened);
        let Some(Some(file)) = known.get(version) else {
            if known.contains_key(version) {
                println!("  {version}: FAULT: no file of --swap-models has its hash; its sessions cannot be checked");
                faults += 1;
            }
            continue;
        };
        // Opened before a swap of its name answered, and still going after it.
        let straddles =
            |s: &SessionLog| swaps.loads.iter().any(|w| w.name == name && s.opened < w.done && w.done < s.ended);
        let picked = pick(list, sample, |(_, s)| straddles(s));
        let mut tally = Compared::default();
        for &(set, s) in &picked {
            tally.add(cache.compare(file, set, s)?, straddles(s));
        }
        checked_sessions += picked.len();
        checked_answers += tally.equal + tally.differ;
        println!(
            "  {version} ({}): {} of its {} sessions with answers, {} of them still answering after a later swap; \
             {} neural answers equal offline, {} differ; {} fallback answers not compared",
            file.file_name().map(|f| f.to_string_lossy()).unwrap_or_default(),
            picked.len(),
            list.len(),
            tally.straddling,
            tally.equal,
            tally.differ,
            tally.fallbacks
        );
        for line in &tally.examples {
            println!("    {line}");
        }
        faults += tally.differ;
    }
    println!(
        "  {checked_sessions} sessions of {} versions decoded again offline, {checked_answers} neural answers compared",
        by_version.len()
    );
    Ok(faults > 0)
}

/// A session, and the shots it played.
type Played<'a> = (&'a ShotSet, &'a SessionLog);

/// Up to `k` of `list` (in open order): half from those `special` says
/// (more if the others are too few), evenly spread, and the rest evenly
/// spread over the others.
fn pick<T: Copy>(list: &[T], k: usize, special: impl Fn(&T) -> bool) -> Vec<T> {
    let (first, rest): (Vec<T>, Vec<T>) = list.iter().partition(|x| special(x));
    let a = spread(&first, k.div_ceil(2).max(k.saturating_sub(rest.len())).min(first.len()));
    let b = spread(&rest, (k - a.len()).min(rest.len()));
    a.into_iter().chain(b).collect()
}

/// `k` of `list`, evenly spaced, the first and last included.
fn spread<T: Copy>(list: &[T], k: usize) -> Vec<T> {
    match k {
        0 => Vec::new(),
        1 => vec![list[list.len() - 1]],
        _ => (0..k).map(|i| list[i * (list.len() - 1) / (k - 1)]).collect(),
    }
}

/// What comparing sessions' answers with offline decoding found.
#[derive(Default)]
struct Compared {
    equal: u64,
    differ: u64,
    fallbacks: u64,
    straddling: u64,
    /// The first few differences, described.
    examples: Vec<String>,
}

impl Compared {
    fn add(&mut self, other: Compared, straddles: bool) {
        self.equal += other.equal;
        self.differ += other.differ;
        self.fallbacks += other.fallbacks;
        self.straddling += u64::from(straddles);
        for e in other.examples {
            if self.examples.len() < 5 {
                self.examples.push(e);
            }
        }
    }
}

/// The offline decoders, one per checkpoint file and distance.
#[derive(Default)]
struct Decoders {
    models: HashMap<PathBuf, Arc<NeuralModel>>,
    layouts: HashMap<usize, StabilizerLayout>,
}

impl Decoders {
    /// Decodes the shots `session` played with the weights in `file` and
    /// compares each neural answer with it.
    fn compare(&mut self, file: &Path, set: &ShotSet, session: &SessionLog) -> Result<Compared> {
        let model = match self.models.get(file) {
            Some(m) => m.clone(),
            None => {
                let m = Arc::new(NeuralModel::load(file).with_context(|| format!("loading {}", file.display()))?);
                self.models.insert(file.to_path_buf(), m.clone());
                m
            }
        };
        if let Entry::Vacant(slot) = self.layouts.entry(set.d) {
            let circuit: stim::Circuit = set.circuit.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
            slot.insert(StabilizerLayout::from_circuit(&circuit, Basis::Z)?);
        }
        let layout = &self.layouts[&set.d];
        let neural: Vec<_> = session.answers.iter().filter(|a| a.neural).collect();
        let mut events = PackedShots::zeros(neural.len(), set.detectors.bits_per_shot());
        for (i, a) in neural.iter().enumerate() {
            let row = a.shot as usize % set.detectors.num_shots();
            events.row_mut(i).copy_from_slice(set.detectors.row(row));
        }
        let decided = decode_parallel(|| NeuralDecoder::new(model.clone(), layout), &events, 0)?;
        let o = model.num_observables();
        let confidence = decided.confidence.context("the neural decoder gave no confidences")?;
        let mut out = Compared { fallbacks: (session.answers.len() - neural.len()) as u64, ..Compared::default() };
        for (i, a) in neural.iter().enumerate() {
            let bits: Vec<bool> = (0..o).map(|k| decided.predictions.get(i, k)).collect();
            let want = (pack_bits(&bits), confidence[i]);
            if a.prediction == want.0 && a.confidence.to_bits() == want.1.to_bits() {
                out.equal += 1;
            } else {
                out.differ += 1;
                if out.examples.len() < 5 {
                    out.examples.push(format!(
                        "shot {}: answered {:?} confidence {}, offline {:?} confidence {}",
                        a.shot, a.prediction, a.confidence, want.0, want.1
                    ));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_files_take_a_name_or_the_stem() {
        let f: SwapFile = "d3=/m/alt/tuned.safetensors".parse().unwrap();
        assert_eq!((f.name.as_str(), f.path.as_path()), ("d3", Path::new("/m/alt/tuned.safetensors")));
        let f: SwapFile = "/m/d5_z.safetensors".parse().unwrap();
        assert_eq!((f.name.as_str(), f.path.as_path()), ("d5_z", Path::new("/m/d5_z.safetensors")));
        let f: SwapFile = "/m/a=b/x.safetensors".parse().unwrap();
        assert_eq!(f.name, "x", "an = inside the path is not a name");
        assert!("d3=".parse::<SwapFile>().is_err());
    }

    #[test]
    fn a_name_with_two_files_alternates_and_one_with_one_reloads_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = |n: &str, bytes: &[u8]| {
            let p = dir.path().join(n);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let (a, b, c) = (file("a", b"a"), file("b", b"b"), file("c", b"c"));
        let entries = [
            SwapFile { name: "x".into(), path: b.clone() },
            SwapFile { name: "x".into(), path: a.clone() },
            SwapFile { name: "y".into(), path: c.clone() },
        ];
        let plan = Plan::new(&entries).unwrap();
        let at = |k| plan.at(k).map(|(n, p)| (n.to_string(), p.to_path_buf())).collect::<Vec<_>>();
        assert_eq!(at(0), [("x".into(), b.clone()), ("y".into(), c.clone())]);
        assert_eq!(at(1), [("x".into(), a.clone()), ("y".into(), c.clone())]);
        assert_eq!(at(2), [("x".into(), b), ("y".into(), c)]);
        assert_eq!(plan.file_of(&sha256_hex(b"a")), Some(a.as_path()));
        assert_eq!(plan.file_of(&sha256_hex(b"z")), None);
        let missing = [SwapFile { name: "x".into(), path: dir.path().join("gone") }];
        let refused = Plan::new(&missing).err().expect("an unreadable file is refused");
        assert!(format!("{refused:#}").contains("gone"), "{refused:#}");
    }

    #[test]
    fn the_sample_takes_half_from_the_special_ones_and_spreads_the_rest() {
        let list: Vec<u32> = (0..20).collect();
        assert_eq!(spread(&list, 3), [0, 9, 19]);
        assert_eq!(spread(&list, 1), [19]);
        let picked = pick(&list, 6, |x| x % 5 == 4);
        assert_eq!(picked, [4, 9, 19, 0, 8, 18]);
        assert_eq!(pick(&list, 6, |&x| x < 18), [0, 5, 11, 17, 18, 19], "too few others: more special ones");
        assert_eq!(pick(&list[..3], 8, |_| false), [0, 1, 2], "fewer than asked: all of them");
    }
}
