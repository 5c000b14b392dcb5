//! `qecd learn-noise`: a detector error model whose probabilities are learned
//! from an experiment directory's own detection events, its structure taken
//! from the directory's circuit (the lab's prior). The method is
//! `simulator_bridge::learn`'s; this command reads, reports and writes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use simulator_bridge::BridgeError;
use simulator_bridge::experiment::{CIRCUIT_NOISY, DETECTION_EVENTS, Experiment};
use simulator_bridge::fsutil::write_atomically;
use simulator_bridge::learn::{Comparison, Kept, LearnOptions, LearnedDem, MIN_COINCIDENCES, learn_dem};

/// Mechanisms of this probability or more are compared with the directory's own DEM.
const COMPARE_FROM: f64 = 1e-3;
/// Examples named for each reason a mechanism kept its prior.
const EXAMPLES: usize = 5;

/// Arguments of `qecd learn-noise`.
#[derive(Args, Debug)]
pub struct LearnNoiseArgs {
    /// Experiment directory: its circuit_noisy.stim gives the prior DEM, its
    /// detection_events.b8 the statistics.
    #[arg(long)]
    pub data: PathBuf,
    /// Where to write the learned detector error model (Stim's text format).
    #[arg(long)]
    pub out: PathBuf,
    /// Fewest shots in which all of a mechanism's detectors fired for it to be
    /// estimated; rarer ones keep the prior's probability.
    #[arg(long, default_value_t = MIN_COINCIDENCES)]
    pub min_coincidences: u64,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// Runs `qecd learn-noise`.
pub fn run(args: &LearnNoiseArgs) -> Result<()> {
    let exp = Experiment::read(&args.data)?;
    let circuit: stim::Circuit = exp.circuit_noisy.parse().map_err(|e: stim::StimError| {
        anyhow::anyhow!("{}: {CIRCUIT_NOISY} does not parse: {e}", args.data.display())
    })?;
    let prior = super::decoding_dem(&circuit)?;
    let reference = exp.dem.as_ref().and_then(|(name, text)| match text.parse::<stim::DetectorErrorModel>() {
        Ok(dem) => Some((name.clone(), dem)),
        Err(e) => {
            eprintln!("warning: {name} in {} is not a detector error model ({e}); not comparing", args.data.display());
            None
        }
    });

    let options = LearnOptions { min_coincidences: args.min_coincidences, threads: args.threads };
    let bar = super::shot_bar(exp.num_shots() as u64, "learn-noise");
    let learned = learn_dem(&prior, &exp.detection_events, &options, &|n| bar.inc(n as u64))
        .with_context(|| format!("learning from {}/{DETECTION_EVENTS}", args.data.display()))?;
    bar.finish_and_clear();
    let dem = learned.dem().context("the learned DEM does not parse back")?;

    write_atomically(&args.out, |w| w.write_all(learned.text().as_bytes()).map_err(|e| BridgeError::io(&args.out, e)))?;

    println!(
        "learned {} of {} mechanisms from {} shots of {}; wrote {}",
        learned.num_estimated(),
        learned.mechanisms.len(),
        learned.num_shots,
        args.data.display(),
        args.out.display()
    );
    report_kept(&learned);
    if let Some((name, reference)) = reference {
        let against = |candidate: &stim::DetectorErrorModel| Comparison::new(&reference, candidate, COMPARE_FROM);
        let (mine, theirs) = (against(&dem)?, against(&prior)?);
        println!("against {name}, its {} detector sets of p >= {COMPARE_FROM:e}:", mine.sets.len());
        for (what, c) in [("learned", &mine), ("prior", &theirs)] {
            if let Some(worst) = c.worst() {
                println!(
                    "  {what:8} median relative error {:5.1}%, max {:5.1}% (D{:?}: {:.3e} for {:.3e})",
                    100.0 * c.median_relative_error(),
                    100.0 * worst.relative_error(),
                    worst.detectors,
                    worst.candidate,
                    worst.reference
                );
            }
        }
    }
    Ok(())
}

/// Says how many mechanisms kept the prior, for each reason, with examples.
fn report_kept(learned: &LearnedDem) {
    let mut by_reason: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    for (m, why) in learned.kept() {
        let reason = match why {
            Kept::NoDetectors => "flip no detector",
            Kept::TooManyDetectors(_) => "flip too many detectors",
            Kept::TooFewCoincidences(_) => "too few shots: their detectors rarely fired together",
            Kept::ParityNotBelowHalf => "a parity at 1/2 or above",
            Kept::EstimateNotPositive(_) => "estimate not positive (too weak to see)",
        };
        by_reason.entry(reason).or_default().push(format!("{} (prior {:.2e}): {why}", m.targets, m.probability));
    }
    let kept: usize = by_reason.values().map(Vec::len).sum();
    if kept == 0 {
        return;
    }
    println!("{kept} mechanisms kept their prior probability:");
    for (reason, examples) in by_reason {
        println!("  {} — {reason}, e.g.", examples.len());
        for e in examples.iter().take(EXAMPLES) {
            println!("      error {e}");
        }
    }
}
