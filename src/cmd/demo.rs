//! `qecd demo`: the README's first command. A small sweep on an embedded
//! default (memory-Z, SI1000 p=0.003, d=3 and 5, rounds = d), matching and
//! correlated matching on the same kind of shots, printed as a table.

use std::time::Instant;

use anyhow::Result;
use clap::Args;
use decoder::DecoderKind;
use decoder::stats::ErrorCount;
use simulator_bridge::Basis;

use super::sweep::{Case, CaseRun, Limits, cases, print_table, run_case};

/// Arguments of `qecd demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Shots per case.
    #[arg(long, default_value_t = 20_000)]
    pub shots: u64,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Seed.
    #[arg(long, default_value_t = 2026)]
    pub seed: u64,
}

/// Runs `qecd demo`.
pub fn run(args: &DemoArgs) -> Result<()> {
    let start = Instant::now();
    println!("qecd demo: rotated surface code, memory-Z, SI1000 p=0.003, rounds = d, {} shots per case\n", args.shots);
    let specs = cases(&DecoderKind::MATCHING, &[3, 5], &["d".into()], Basis::Z, "si1000", &[0.003])?;
    let bar = super::shot_bar(args.shots * specs.len() as u64, "demo");
    let limits = Limits { max_shots: args.shots, max_errors: u64::MAX };
    let mut table = Vec::new();
    for (decoder, experiment, noise) in specs {
        let case = Case::build(decoder, experiment, noise, None)?;
        let run =
            CaseRun { prior: ErrorCount::default(), generation: 0, limits, threads: args.threads, seed: args.seed };
        let count = run_case(&case, &run, &bar, &|_| Ok(()))?;
        let label =
            format!("{:<12} {:>3} {:>5} {:>8}", decoder.name(), experiment.distance, experiment.rounds, noise.p());
        table.push((label, experiment.rounds as u64, count));
    }
    bar.finish_and_clear();
    print_table(&table);
    println!(
        "\n{:.1} s. Next: `qecd sweep --help`, `qecd sample --help`, `qecd predict --help`.",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
