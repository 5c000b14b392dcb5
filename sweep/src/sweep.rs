//! `qecd sweep`: logical error rates over decoders, distances and noise
//! strengths, written as sinter CSV.
//!
//! Each case (decoder, distance, rounds, basis, noise, p) is sampled and
//! decoded in batches until it reaches `--max-errors` or `--max-shots`. Every
//! finished batch is appended to the CSV at once, so an interrupted sweep
//! loses at most the batches in flight, and running the same command again
//! resumes it: the counts already in the file are subtracted from the budget.
//! Batch seeds mix `--seed`, a hash of the case's circuit, how many lines the
//! case already had when this run started, and the batch index, so a resumed
//! run never reuses the shots of a recorded batch, and different decoders on
//! the same circuit in one sweep decode exactly the same shots.
//!
//! A batch holds at most [`MAX_BATCH_BITS`] detection-event bits, so long
//! experiments (10,000 rounds at d=5 is 240,000 detectors a shot) keep each
//! thread's memory and each batch's time bounded. Cases on the same circuit
//! share its text and DEM ([`CircuitTexts`]).
//!
//! With `--decoder-dem`, shots still come from each case's circuit, but its
//! decoder is built from the file that fits the circuit ([`pick_dem`], through
//! [`CaseInputs`], which gives every case its models and file). Every
//! file is read, and every case given its file, before the CSV is opened or a
//! shot sampled: a bad file or a case that no file (or two) fits writes nothing.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use decoder::stats::{DEFAULT_LIKELIHOOD_FACTOR, ErrorCount};
use decoder::{Decoder, DecoderKind};
use indicatif::ProgressBar;
use sha2::{Digest, Sha256};
use simulator_bridge::sample::{derive_seed, resolve_threads};
use simulator_bridge::{Basis, DemFile, DemShape, MemoryExperiment, NoiseModel, PackedShots};

use crate::case::{Case, CircuitTexts};
use crate::decoders::build_decoder;
use crate::inputs::CaseInputs;
use crate::progress::shot_bar;
use crate::sinter_csv::{self, CSV_HEADER, StatsRow};

/// Arguments of `qecd sweep`.
#[derive(Args, Debug)]
pub struct SweepArgs {
    /// Decoders to compare: matching, correlated, belief, neural, neural-matching.
    #[arg(long, value_delimiter = ',', default_value = "matching,correlated")]
    pub decoders: Vec<String>,
    /// Code distances.
    #[arg(long, value_delimiter = ',', default_value = "3,5,7")]
    pub distances: Vec<usize>,
    /// Rounds per experiment: `d` (the distance) or a list of numbers.
    #[arg(long, value_delimiter = ',', default_value = "d")]
    pub rounds: Vec<String>,
    /// Memory basis: x or z.
    #[arg(long, default_value = "z")]
    pub basis: Basis,
    /// Noise model: si1000, si1000-varied:SEED, device:FILE (a TOML device
    /// description laid on SI1000; see docs/device-noise.md) or depolarizing.
    #[arg(long, default_value = "si1000")]
    pub noise: String,
    /// Physical error rates.
    #[arg(long, value_delimiter = ',', default_value = "0.003", allow_negative_numbers = true)]
    pub p: Vec<f64>,
    /// Stop a case after this many shots.
    #[arg(long, alias = "max_shots", default_value_t = 100_000)]
    pub max_shots: u64,
    /// Stop a case after this many logical errors.
    #[arg(long, alias = "max_errors", default_value_t = 1_000)]
    pub max_errors: u64,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Append statistics to this sinter CSV (resuming the cases already in it).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Run only shard i of n (cases whose index is i mod n), e.g. 0/4.
    #[arg(long)]
    pub shard: Option<String>,
    /// Base seed (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Neural-decoder checkpoints; each neural case uses the one for its
    /// distance and basis. Default: the zoo built into qecd.
    #[arg(long, value_delimiter = ',')]
    pub model: Vec<PathBuf>,
    /// The posterior model of neural-matching cases. Default: the one built into qecd.
    #[arg(long)]
    pub posterior: Option<PathBuf>,
    /// Detector error models (Stim's text format; `qecd learn-noise` writes
    /// one) that the decoders use instead of each circuit's own DEM. Shots
    /// still come from the circuit; each case decodes with the one file whose
    /// detectors and observables fit its circuit. The CSV records the file
    /// and its sha256. The neural decoder uses no DEM.
    #[arg(long, value_delimiter = ',', value_name = "FILE")]
    pub decoder_dem: Vec<PathBuf>,
    /// After the sweep, plot every case in --out (earlier runs' included):
    /// LER per round against distance, as `qecd plot` draws it.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// The most detection-event bits in one batch (32 MiB packed). At 240,000
/// detectors a shot (d=5, 10,000 rounds) that is 1,118 shots, a few minutes of
/// decoding; stim's sampler needs a few times the packed size while it works.
pub const MAX_BATCH_BITS: u64 = 1 << 28;

/// Shots in the next batch of a case with `left` shots still unclaimed:
/// a sixteenth of what is left, within [1,024, 32,768], then at most
/// [`MAX_BATCH_BITS`] bits and at least one shot. It depends on nothing else
/// (not the thread count), so the batches, and so the shots, are the same for
/// every decoder on a circuit.
pub fn batch_shots(left: u64, num_detectors: usize) -> u64 {
    let by_bits = (MAX_BATCH_BITS / num_detectors.max(1) as u64).max(1);
    (left / 16).clamp(1024, 32_768).min(by_bits).min(left)
}

/// Per-case budget.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Stop after this many shots.
    pub max_shots: u64,
    /// Stop after this many errors.
    pub max_errors: u64,
}

/// How one run of a case goes: what earlier runs recorded, and with what.
#[derive(Clone, Copy, Debug)]
pub struct CaseRun {
    /// Counts that earlier runs recorded for the case.
    pub prior: ErrorCount,
    /// How many CSV lines earlier runs left for the case (keeps batch seeds fresh).
    pub generation: u64,
    /// The case's budget.
    pub limits: Limits,
    /// Worker threads (0: one per core).
    pub threads: usize,
    /// Base seed.
    pub seed: u64,
}

/// Shared accounting of one case's batches.
struct Ledger {
    done: ErrorCount,
    claimed: u64,
    next_batch: u64,
}

/// Runs one case until its budget is spent, calling `record` with every
/// finished batch, and returns what this run added.
pub fn run_case(
    case: &Case,
    run: &CaseRun,
    bar: &ProgressBar,
    record: &(dyn Fn(&StatsRow) -> Result<()> + Sync),
) -> Result<ErrorCount> {
    let make_decoder = |circuit: &stim::Circuit| {
        build_decoder(case.decoder, case.dem_text(), Some(circuit), case.model.as_ref(), case.posterior.as_ref())
    };
    run_case_with(case, run, bar, record, &make_decoder)
}

/// [`run_case`], each worker decoding with what `make_decoder` builds from
/// the case's circuit.
fn run_case_with(
    case: &Case,
    run: &CaseRun,
    bar: &ProgressBar,
    record: &(dyn Fn(&StatsRow) -> Result<()> + Sync),
    make_decoder: &(dyn Fn(&stim::Circuit) -> Result<Box<dyn Decoder>> + Sync),
) -> Result<ErrorCount> {
    let CaseRun { prior, generation, limits, threads, seed } = *run;
    let budget = limits.max_shots.saturating_sub(prior.shots);
    if budget == 0 || prior.errors >= limits.max_errors {
        return Ok(ErrorCount::default());
    }
    let threads = resolve_threads(threads) as u64;
    // The shots depend on the circuit, not on the decoder, and batch sizes do
    // not depend on the thread count: decoders swept together on the same
    // circuit decode the same shots, so their error rates compare pairwise.
    let circuit_hash = Sha256::digest(case.texts.circuit.as_bytes());
    let case_seed = derive_seed(seed, u64::from_le_bytes(circuit_hash[..8].try_into().expect("8 bytes")));
    let ledger = Mutex::new(Ledger { done: ErrorCount::default(), claimed: 0, next_batch: 0 });
    let claim = || -> Option<(u64, u64)> {
        let mut l = ledger.lock().expect("ledger lock");
        if l.claimed >= budget || prior.errors + l.done.errors >= limits.max_errors {
            return None;
        }
        let n = batch_shots(budget - l.claimed, case.texts.num_detectors);
        l.claimed += n;
        l.next_batch += 1;
        Some((l.next_batch - 1, n))
    };
    let results: Vec<Result<()>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    let circuit: stim::Circuit = case.texts.circuit.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
                    let mut decoder = make_decoder(&circuit)?;
                    while let Some((batch, n)) = claim() {
                        let start = Instant::now();
                        let batch_seed = derive_seed(case_seed, (generation << 32) | batch);
                        let mut sampler = circuit.compile_detector_sampler_with_seed(batch_seed);
                        let (dets, obs) = sampler.sample_bit_packed_separate_observables(n);
                        let dets = PackedShots::from_bytes(dets, decoder.num_detectors())?;
                        let obs = PackedShots::from_bytes(obs, decoder.num_observables())?;
                        let predictions = decoder.decode_batch(&dets)?.predictions;
                        let errors = decoder::count_errors(&predictions, &obs) as u64;
                        let row = StatsRow {
                            shots: n,
                            errors,
                            discards: 0,
                            seconds: start.elapsed().as_secs_f64(),
                            decoder: case.decoder.name().to_string(),
                            strong_id: case.strong_id.clone(),
                            json_metadata: case.metadata.clone(),
                        };
                        let mut l = ledger.lock().expect("ledger lock");
                        record(&row)?;
                        l.done += ErrorCount { shots: n, errors };
                        bar.inc(n);
                        bar.set_message(format!("{}: {} errors", case.label(), prior.errors + l.done.errors));
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("sweep worker panicked")).collect()
    });
    for r in results {
        r?;
    }
    let done = ledger.into_inner().expect("ledger lock").done;
    // Shots never drawn because the error budget was reached leave the bar.
    bar.set_length(bar.length().unwrap_or(0).saturating_sub(budget - done.shots));
    Ok(done)
}

/// Parses `i/n`.
fn parse_shard(text: &str) -> Result<(usize, usize)> {
    let (i, n) = text.split_once('/').context("--shard takes the form i/n, e.g. 0/4")?;
    let (i, n): (usize, usize) = (i.trim().parse()?, n.trim().parse()?);
    if n == 0 || i >= n {
        bail!("--shard {text}: need 0 <= i < n");
    }
    Ok((i, n))
}

/// The file of `files` that decodes shots of a circuit of shape `circuit`;
/// an error naming the circuit (`label`), its counts and the files when none
/// or more than one fits.
pub fn pick_dem<'a>(files: &'a [Arc<DemFile>], circuit: &DemShape, label: &str) -> Result<&'a Arc<DemFile>> {
    let fits: Vec<&Arc<DemFile>> = files.iter().filter(|f| f.misfit(circuit).is_none()).collect();
    match fits[..] {
        [one] => Ok(one),
        [] => {
            let why: Vec<String> =
                files.iter().filter_map(|f| Some(format!("{}: {}", f.path().display(), f.misfit(circuit)?))).collect();
            bail!("case {label} ({}): no --decoder-dem file fits it ({})", circuit.counts(), why.join("; "))
        }
        _ => {
            let names: Vec<String> = fits.iter().map(|f| f.path().display().to_string()).collect();
            bail!(
                "case {label} ({}): --decoder-dem files {} all fit it; give one file per circuit",
                circuit.counts(),
                names.join(", ")
            )
        }
    }
}

/// Expands the command line into cases, in a stable order.
pub fn cases(
    decoders: &[DecoderKind],
    distances: &[usize],
    rounds: &[String],
    basis: Basis,
    noise: &str,
    ps: &[f64],
) -> Result<Vec<(DecoderKind, MemoryExperiment, NoiseModel)>> {
    let mut out = Vec::new();
    for &p in ps {
        let model = NoiseModel::from_name(noise, p)?;
        for &d in distances {
            for r in rounds {
                let r = if r.trim() == "d" {
                    d
                } else {
                    r.trim().parse().with_context(|| format!("--rounds takes 'd' or whole numbers, not '{r}'"))?
                };
                let experiment = MemoryExperiment::new(d, r, basis)?;
                for &decoder in decoders {
                    out.push((decoder, experiment, model));
                }
            }
        }
    }
    Ok(out)
}

/// The results table printed at the end of a sweep or demo.
pub fn print_table(rows: &[(String, u64, ErrorCount)]) {
    println!(
        "{:<12} {:>3} {:>5} {:>8} {:>10} {:>8} {:>10}  {:<34}",
        "decoder", "d", "r", "p", "shots", "errors", "LER/shot", "LER/round [1000x likelihood interval]"
    );
    for (label, rounds, count) in rows {
        let f = count.fit_per_round(*rounds as f64, DEFAULT_LIKELIHOOD_FACTOR);
        println!(
            "{label} {:>10} {:>8} {:>10.3e}  {:.3e} [{:.2e}, {:.2e}]",
            count.shots,
            count.errors,
            count.per_shot(),
            f.best,
            f.low,
            f.high
        );
    }
}

/// A seed from the clock, for runs without `--seed`.
pub fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    derive_seed(nanos as u64, std::process::id() as u64)
}

/// Runs `qecd sweep`.
pub fn run(args: &SweepArgs) -> Result<()> {
    let decoders: Vec<DecoderKind> = args.decoders.iter().map(|d| d.parse()).collect::<Result<_, _>>()?;
    let all = cases(&decoders, &args.distances, &args.rounds, args.basis, &args.noise, &args.p)?;
    let (shard, shards) = args.shard.as_deref().map(parse_shard).transpose()?.unwrap_or((0, 1));
    let mine: Vec<_> = all.into_iter().enumerate().filter(|(k, _)| k % shards == shard).map(|(_, c)| c).collect();
    if args.max_shots == 0 {
        bail!("--max-shots must be positive");
    }
    let limits = Limits { max_shots: args.max_shots, max_errors: args.max_errors };
    if let Some(png) = &args.plot {
        if args.out.is_none() {
            bail!("--plot draws the cases recorded in the --out CSV: give --out too");
        }
        crate::plot::check_png_out(png)?;
    }

    let existing = match &args.out {
        Some(path) if path.exists() => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            sinter_csv::parse_csv(&text)
                .with_context(|| format!("{} is not a sinter CSV; refusing to append to it", path.display()))?
        }
        _ => Vec::new(),
    };
    let mut inputs = CaseInputs::read(&args.model, args.posterior.as_deref(), &args.decoder_dem)?;

    let seed = args.seed.unwrap_or_else(fresh_seed);
    let bar = shot_bar(0, "sweep");
    let mut built: Vec<(Case, ErrorCount, u64)> = Vec::new();
    for (decoder, experiment, noise) in mine {
        // `cases` lists the decoders of a circuit together.
        let texts = match built.last() {
            Some((last, ..)) if last.experiment == experiment && last.noise == noise => last.texts.clone(),
            _ => Arc::new(CircuitTexts::build(experiment, noise)?),
        };
        let case = inputs.case(decoder, experiment, noise, texts)?;
        let prior_rows: Vec<&StatsRow> = existing.iter().filter(|r| r.strong_id == case.strong_id).collect();
        let prior = prior_rows.iter().fold(ErrorCount::default(), |mut acc, r| {
            acc += ErrorCount { shots: r.shots, errors: r.errors };
            acc
        });
        bar.inc_length(limits.max_shots.saturating_sub(prior.shots));
        built.push((case, prior, prior_rows.len() as u64));
    }
    for (file, _) in inputs.decoder_dems().filter(|(_, used)| !used) {
        eprintln!(
            "warning: --decoder-dem {} ({}) fits no case of this run",
            file.path().display(),
            file.shape().counts()
        );
    }
    let file = match &args.out {
        Some(path) => {
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            if f.metadata()?.len() == 0 {
                writeln!(f, "{CSV_HEADER}")?;
            }
            Some(Mutex::new(f))
        }
        None => None,
    };
    let record = |row: &StatsRow| -> Result<()> {
        if let Some(f) = &file {
            let mut f = f.lock().expect("csv lock");
            f.write_all(format!("{}\n", row.to_csv_line()).as_bytes())?;
            f.flush()?;
        }
        Ok(())
    };
    let mut table = Vec::new();
    for (case, prior, generation) in &built {
        let run = CaseRun { prior: *prior, generation: *generation, limits, threads: args.threads, seed };
        let done = run_case(case, &run, &bar, &record)?;
        let mut total = *prior;
        total += done;
        let label = format!(
            "{:<12} {:>3} {:>5} {:>8}",
            case.decoder.name(),
            case.experiment.distance,
            case.experiment.rounds,
            case.noise.p()
        );
        table.push((label, case.experiment.rounds as u64, total));
    }
    bar.finish_and_clear();
    print_table(&table);
    for (file, _) in inputs.decoder_dems().filter(|(_, used)| *used) {
        println!(
            "decoded with {} (sha256 {}) for circuits of {}",
            file.path().display(),
            file.short_hash(),
            file.shape().counts()
        );
    }
    if let Some(path) = &args.out {
        eprintln!("statistics appended to {}", path.display());
        if let Some(png) = &args.plot {
            let cases = sinter_csv::read_cases(std::slice::from_ref(path))?;
            crate::plot::plot_ler(&cases, png)?;
            eprintln!("wrote {} ({} cases)", png.display(), cases.len());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(exp: MemoryExperiment, noise: NoiseModel) -> Arc<CircuitTexts> {
        Arc::new(CircuitTexts::build(exp, noise).unwrap())
    }

    /// Batches shrink to bound their bits, never below one shot, and depend
    /// only on what is left and the detector count.
    #[test]
    fn batch_sizes() {
        assert_eq!(batch_shots(100_000, 24), 6_250);
        assert_eq!(batch_shots(1_000_000_000, 24), 32_768);
        assert_eq!(batch_shots(500, 24), 500);
        assert_eq!(batch_shots(5_000, 24), 1_024);
        // d=5, 10,000 rounds: 240,000 detectors.
        assert_eq!(batch_shots(20_000, 240_000), 1_118);
        assert!(batch_shots(20_000, 240_000) * 240_000 <= MAX_BATCH_BITS);
        assert_eq!(batch_shots(20_000, 1 << 30), 1);
        assert_eq!(batch_shots(1, 1 << 30), 1);
    }

    #[test]
    fn shards_partition_the_cases() {
        assert_eq!(parse_shard("1/4").unwrap(), (1, 4));
        assert!(parse_shard("4/4").is_err());
        assert!(parse_shard("x").is_err());
        let all = cases(&DecoderKind::MATCHING, &[3, 5], &["d".into()], Basis::Z, "si1000", &[0.003, 0.001]).unwrap();
        assert_eq!(all.len(), 8);
        assert!(cases(&DecoderKind::MATCHING, &[4], &["d".into()], Basis::Z, "si1000", &[0.003]).is_err());
    }

    /// Passes every batch to plain matching, keeping a copy of its detection events.
    struct Spy {
        matching: Box<dyn Decoder>,
        seen: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl Decoder for Spy {
        fn name(&self) -> &str {
            self.matching.name()
        }

        fn num_detectors(&self) -> usize {
            self.matching.num_detectors()
        }

        fn num_observables(&self) -> usize {
            self.matching.num_observables()
        }

        fn decode_batch(&mut self, dets: &PackedShots) -> Result<decoder::Decisions, decoder::DecodeError> {
            self.seen.lock().unwrap().push(dets.as_bytes().to_vec());
            self.matching.decode_batch(dets)
        }
    }

    /// Runs 5,000 shots of `case`, decoded by plain matching whatever the
    /// case's decoder, and returns each batch's detection events and each
    /// batch's (shots, errors), both sorted (threads finish in any order).
    fn batches(case: &Case, threads: usize, seed: u64, generation: u64) -> (Vec<Vec<u8>>, Vec<(u64, u64)>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let rows = Mutex::new(Vec::new());
        let spy = |_: &stim::Circuit| -> Result<Box<dyn Decoder>> {
            let matching = build_decoder(DecoderKind::Matching, &case.texts.dem, None, None, None)?;
            Ok(Box::new(Spy { matching, seen: seen.clone() }))
        };
        let record = |r: &StatsRow| {
            rows.lock().unwrap().push((r.shots, r.errors));
            Ok(())
        };
        let limits = Limits { max_shots: 5_000, max_errors: u64::MAX };
        let run = CaseRun { prior: ErrorCount::default(), generation, limits, threads, seed };
        run_case_with(case, &run, &ProgressBar::hidden(), &record, &spy).unwrap();
        let mut seen = std::mem::take(&mut *seen.lock().unwrap());
        let mut rows = rows.into_inner().unwrap();
        seen.sort();
        rows.sort();
        (seen, rows)
    }

    /// Decoders swept on one circuit decode the same shots: the batches
    /// depend on the circuit, the seed and the generation, not on the case's
    /// decoder, its strong id or the thread count.
    #[test]
    fn decoders_on_one_circuit_share_shots() {
        let exp = MemoryExperiment::new(3, 3, Basis::Z).unwrap();
        let noise = NoiseModel::Si1000 { p: 0.01 };
        let matching = Case::build(DecoderKind::Matching, exp, noise, texts(exp, noise), None, None).unwrap();
        let correlated = Case::build(DecoderKind::Correlated, exp, noise, texts(exp, noise), None, None).unwrap();
        assert_ne!(matching.strong_id, correlated.strong_id);
        let (shots, rows) = batches(&matching, 1, 9, 0);
        // Four batches of 1,024 shots, then 904.
        assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), [904, 1024, 1024, 1024, 1024]);
        assert_eq!(shots.len(), 5);
        assert!(rows.iter().all(|r| r.1 > 0), "{rows:?}");
        let (same_shots, same_rows) = batches(&correlated, 2, 9, 0);
        assert!(same_shots == shots, "the case's decoder or the thread count changed the shots");
        assert_eq!(same_rows, rows, "one decoder on the same shots made different errors");
        // Another seed, or a resumed run's generation, draws other shots.
        for (seed, generation) in [(10, 0), (9, 1)] {
            let (other, _) = batches(&correlated, 2, seed, generation);
            assert_eq!(other.len(), 5);
            assert!(other.iter().all(|b| !shots.contains(b)), "seed {seed}, generation {generation} reused a batch");
        }
    }

    fn dem_file(dir: &std::path::Path, name: &str, exp: MemoryExperiment, noise: NoiseModel) -> Arc<DemFile> {
        let path = dir.join(name);
        std::fs::write(&path, &texts(exp, noise).dem).unwrap();
        Arc::new(DemFile::read(&path).unwrap())
    }

    /// Each circuit takes the one file that fits it; none or two is an error
    /// naming the case, its counts and the files.
    #[test]
    fn each_circuit_takes_the_one_dem_file_that_fits() {
        let tmp = tempfile::tempdir().unwrap();
        let noise = NoiseModel::Si1000 { p: 0.003 };
        let shape = |d, r| {
            let exp = MemoryExperiment::new(d, r, Basis::Z).unwrap();
            DemShape::of_circuit(&texts(exp, noise).circuit.parse().unwrap()).unwrap()
        };
        let d3 = dem_file(tmp.path(), "d3.dem", MemoryExperiment::new(3, 3, Basis::Z).unwrap(), noise);
        let d5 = dem_file(tmp.path(), "d5.dem", MemoryExperiment::new(5, 5, Basis::Z).unwrap(), noise);
        let files = [d3.clone(), d5.clone()];
        assert!(Arc::ptr_eq(pick_dem(&files, &shape(3, 3), "d=3").unwrap(), &d3));
        assert!(Arc::ptr_eq(pick_dem(&files, &shape(5, 5), "d=5").unwrap(), &d5));
        let none = pick_dem(&files, &shape(3, 4), "d=3 r=4").unwrap_err().to_string();
        assert!(
            none.starts_with("case d=3 r=4 (32 detectors and 1 observable): no --decoder-dem file fits it ("),
            "{none}"
        );
        assert!(none.contains("d3.dem: it has 24 detectors and 1 observable"), "{none}");
        assert!(none.contains("d5.dem: it has 120 detectors"), "{none}");
        let twice = pick_dem(&[d3.clone(), d3.clone()], &shape(3, 3), "d=3").unwrap_err().to_string();
        assert!(twice.contains("(24 detectors and 1 observable): --decoder-dem files"), "{twice}");
        assert!(twice.contains("all fit it; give one file per circuit"), "{twice}");
    }

    /// A case decoding with its circuit's own DEM from a file makes the same
    /// errors on the same batches as without it; another DEM makes others.
    #[test]
    fn a_decoder_dem_decodes_the_same_shots() {
        let tmp = tempfile::tempdir().unwrap();
        let exp = MemoryExperiment::new(3, 3, Basis::Z).unwrap();
        let noise = NoiseModel::Si1000 { p: 0.01 };
        let rows_of = |case: &Case| {
            let rows = Mutex::new(Vec::new());
            let record = |r: &StatsRow| {
                rows.lock().unwrap().push((r.shots, r.errors));
                Ok(())
            };
            let limits = Limits { max_shots: 20_000, max_errors: u64::MAX };
            let run = CaseRun { prior: ErrorCount::default(), generation: 0, limits, threads: 2, seed: 4 };
            run_case(case, &run, &ProgressBar::hidden(), &record).unwrap();
            let mut rows = rows.into_inner().unwrap();
            rows.sort();
            rows
        };
        let case = || Case::build(DecoderKind::Correlated, exp, noise, texts(exp, noise), None, None).unwrap();
        let plain = rows_of(&case());
        let own = case().with_decoder_dem(dem_file(tmp.path(), "own.dem", exp, noise)).unwrap();
        assert_eq!(rows_of(&own), plain);
        // A uniform depolarizing DEM at p=0.01 weighs the same graph otherwise.
        let other_noise = NoiseModel::UniformDepolarizing { p: 0.01 };
        let other = case().with_decoder_dem(dem_file(tmp.path(), "other.dem", exp, other_noise)).unwrap();
        let errors = |rows: &[(u64, u64)]| rows.iter().map(|r| r.1).sum::<u64>();
        assert_ne!(errors(&rows_of(&other)), errors(&plain));
    }

    /// Stopping at max-errors, and resuming without redoing recorded work.
    #[test]
    fn budget_and_resume() {
        let exp = MemoryExperiment::new(3, 3, Basis::Z).unwrap();
        let noise = NoiseModel::Si1000 { p: 0.01 };
        let case = Case::build(DecoderKind::Matching, exp, noise, texts(exp, noise), None, None).unwrap();
        let rows = Mutex::new(Vec::new());
        let record = |r: &StatsRow| {
            rows.lock().unwrap().push(r.clone());
            Ok(())
        };
        let bar = ProgressBar::hidden();
        let limits = Limits { max_shots: 1_000_000, max_errors: 50 };
        let run = |prior, generation, limits| CaseRun { prior, generation, limits, threads: 2, seed: 1 };
        let done = run_case(&case, &run(ErrorCount::default(), 0, limits), &bar, &record).unwrap();
        assert!(done.errors >= 50 && done.shots < 1_000_000, "{done:?}");
        let recorded: u64 = rows.lock().unwrap().iter().map(|r| r.shots).sum();
        assert_eq!(recorded, done.shots);
        // A resumed case with its budget already spent does nothing.
        let again = run_case(&case, &run(done, 3, limits), &bar, &record).unwrap();
        assert_eq!(again, ErrorCount::default());
        // A shot budget is met exactly.
        let limits = Limits { max_shots: 3_000, max_errors: u64::MAX };
        let done = run_case(&case, &run(ErrorCount { shots: 1_000, errors: 0 }, 1, limits), &bar, &record).unwrap();
        assert_eq!(done.shots, 2_000);
    }
}
