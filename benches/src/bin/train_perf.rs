//! Training throughput: the fused CPU trainer against the tch trainer, in one
//! run, on the same model, the same batches and the same threads.
//!
//! ```text
//! cargo run --release -p qecd-benches --features train --bin train_perf -- [--quick] [--csv PATH]
//! ```
//!
//! For d = 3 and 5, a random model of the zoo's shape (D=32, H=4, L=2, F=64),
//! batches of 256 shots of SI1000 p=0.003 with rounds drawn from 1..=25 as
//! `qecd train --rounds 1-25` draws them, sampled once with dense labels. Each
//! engine takes full optimizer steps (loss, backward, clipping, AdamW) over the
//! same batches; the passes alternate between the engines and the fastest pass
//! of each counts. Rows: final label only (today's training), and with the
//! per-round loss (`--aux-weight 0.5`). Samples per second count shots.

use std::io::Write;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use models::checkpoint::{Checkpoint, ModelLayout};
use models::train::{Batch, BatchSource, Engine, FusedEngine, SimulatedSource};
use models::{Featurizer, ModelConfig};
use qecd_benches::{P, cores, cpu_label};
use simulator_bridge::{Basis, MemoryExperiment, NoiseModel, StabilizerLayout};

const BATCH: usize = 256;

/// `steps` batches at distance `d`, rounds drawn from 1..=25, with dense labels.
fn batches(d: usize, steps: u64) -> Result<Vec<Batch>> {
    let layout = ModelLayout::for_code(d, Basis::Z)?;
    let mut cases = Vec::new();
    for r in 1..=25 {
        let circuit = MemoryExperiment::new(d, r, Basis::Z)?.noisy_circuit(&NoiseModel::Si1000 { p: P })?;
        let f = Featurizer::new(&layout, &StabilizerLayout::from_circuit(&circuit, Basis::Z)?)?;
        cases.push((f, circuit));
    }
    let mut source = SimulatedSource::new(cases, Basis::Z, 7, 0, true)?;
    (0..steps).map(|s| Ok(source.next_batch(s, BATCH)?)).collect()
}

/// Seconds of the fastest of `passes` passes of `engine` over `batches`.
fn time_passes(engine: &mut dyn Engine, batches: &[Batch], aux: f32) -> Result<f64> {
    let start = Instant::now();
    for b in batches {
        let loss = engine.step(b, 1e-4, 1.0, aux)?;
        if !loss.loss.is_finite() {
            bail!("{} diverged", engine.name());
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut quick, mut csv) = (false, None);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--csv" => csv = Some(args.next().context("--csv needs a path")?),
            other => bail!("unknown argument {other}"),
        }
    }
    let (steps, passes) = if quick { (8, 2) } else { (40, 3) };
    let threads = cores();
    tch::set_num_threads(threads as i32);
    println!(
        "Training throughput on {}, {threads} threads, batch {BATCH}, rounds 1..=25, {steps} steps a pass, best of {passes} passes.",
        cpu_label()
    );
    println!();
    println!("| d | loss | fused samples/s | tch samples/s | fused ÷ tch |");
    println!("|---|---|---|---|---|");
    let mut rows = Vec::new();
    for d in [3, 5] {
        let data = batches(d, steps)?;
        let layout = ModelLayout::for_code(d, Basis::Z)?;
        let ckpt = Checkpoint::random(ModelConfig::for_distance(d, 32, 4, 2, 64), layout, d as u64);
        let max_rounds = data.iter().map(|b| b.rounds).max().unwrap_or(1);
        for (label, aux) in [("final label", 0.0f32), ("per-round (aux 0.5)", 0.5)] {
            let mut fused = FusedEngine::new(&ckpt, "adamw", 1e-4, threads, BATCH, max_rounds)?;
            let mut tch = models::net::TchEngine::new(&ckpt, tch::Device::Cpu, 1e-4)?;
            // One warm-up pass each (allocation, libtorch's first calls).
            time_passes(&mut fused, &data[..2], aux)?;
            time_passes(&mut tch, &data[..2], aux)?;
            let (mut best_fused, mut best_tch) = (f64::INFINITY, f64::INFINITY);
            for _ in 0..passes {
                best_fused = best_fused.min(time_passes(&mut fused, &data, aux)?);
                best_tch = best_tch.min(time_passes(&mut tch, &data, aux)?);
            }
            let samples = (data.len() * BATCH) as f64;
            let (f, t) = (samples / best_fused, samples / best_tch);
            println!("| {d} | {label} | {f:.0} | {t:.0} | {:.2}× |", f / t);
            std::io::stdout().flush().ok();
            rows.push(format!("{d},{label},{f:.1},{t:.1},{:.3}", f / t));
        }
    }
    if let Some(path) = csv {
        let mut text = String::from("d,loss,fused_samples_per_s,tch_samples_per_s,ratio\n");
        text.extend(rows.iter().map(|r| format!("{r}\n")));
        std::fs::write(&path, text).with_context(|| format!("cannot write {path}"))?;
    }
    Ok(())
}
