//! Why neural-matching decodes as it does: the posterior model's edge
//! probabilities against BP's, on the same fresh shots.
//!
//! ```text
//! cargo run --release -p qecd-benches --bin posterior_diagnose -- [--shots N] [--distance D] [--model PATH]
//! ```
//!
//! Memory-Z, SI1000 p=0.003, rounds = d, shots from Stim's DEM sampler with
//! per-edge labels. Over the shots with detection events it prints:
//! - the model's calibration: per decile of predicted edge probability, the
//!   mean prediction and the fraction of those edges that carry an error;
//! - the per-edge cross-entropy of the model's probabilities and of BP's
//!   edge posteriors (20 iterations, as belief-matching runs it);
//! - errors of neural-matching, of belief-matching, and of matching with
//!   BP's posteriors on every shot (without belief-matching's shortcut of
//!   answering with BP's own error when it satisfies the syndrome), split by
//!   whether BP converged;
//! - errors of matching with weights from the true labels, a check that the
//!   edges are mapped right (it should make none).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use decoder::reweight::WeightedMatching;
use decoder::{BeliefMatching, BpOptions, NeuralMatching};
use models::posterior::PosteriorModel;
use qecd_benches::P;
use simulator_bridge::edges::EdgeSampler;
use simulator_bridge::{Basis, MemoryExperiment, NoiseModel, StabilizerLayout};

fn main() -> Result<()> {
    let (mut shots, mut d) = (3000usize, 5usize);
    let mut model_path = qecd_benches::posterior_path();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--shots" => shots = args.next().context("--shots N")?.parse()?,
            "--distance" => d = args.next().context("--distance D")?.parse()?,
            "--model" => model_path = args.next().context("--model PATH")?.into(),
            other => bail!("unknown argument {other}"),
        }
    }
    let circuit = MemoryExperiment::new(d, d, Basis::Z)?.noisy_circuit(&NoiseModel::Si1000 { p: P })?;
    let dem = simulator_bridge::decoding_dem(&circuit)?;
    let layout = StabilizerLayout::from_circuit(&circuit, Basis::Z)?;
    let model = Arc::new(PosteriorModel::load(&model_path)?);
    let mut nm = NeuralMatching::new(model, &dem, &layout)?;
    let mut bp = BeliefMatching::from_dem(&dem, BpOptions::default())?;
    let mut weighted = WeightedMatching::from_dem(&dem, 32.3)?;
    let index: HashMap<(u64, u64), usize> =
        weighted.edges().iter().enumerate().map(|(i, e)| ((e.node1.min(e.node2), e.node1.max(e.node2)), i)).collect();
    let mut sampler = EdgeSampler::new(&dem, 4242)?;
    let to_graph: Vec<usize> = sampler.edges().edges.iter().map(|k| index[k]).collect();
    let sampled = sampler.sample(shots)?;
    let mut deciles = [(0.0f64, 0u64, 0u64); 10];
    let (mut ce_model, mut ce_bp, mut edges_seen) = (0.0f64, 0.0f64, 0u64);
    // [converged][decoder] errors; decoders: neural-matching, belief, BP posteriors always matched.
    let mut errors = [[0u64; 3]; 2];
    let mut counts = [0u64; 2];
    let mut oracle_errors = 0u64;
    let mut obs = vec![0u8; weighted.num_observables()];
    for s in 0..shots {
        let events: Vec<u64> = sampled.detectors.hits(s).map(|k| k as u64).collect();
        if events.is_empty() {
            continue;
        }
        let truth = sampled.observables.get(s, 0);
        let mut label = vec![false; to_graph.len()];
        for e in sampled.edge_labels.hits(s) {
            label[to_graph[e]] = true;
        }
        let oracle: Vec<f64> = label.iter().map(|&l| if l { 0.5 } else { 10.0 }).collect();
        weighted.decode_with_weights(&events, &oracle, &mut obs)?;
        oracle_errors += u64::from((obs[0] != 0) != truth);

        let model_p: Vec<f64> = nm.edge_logits(&events).iter().map(|&l| 1.0 / (1.0 + (-l as f64).exp())).collect();
        let (nm_flips, _) = nm.decode_shot(&events)?;
        let converged_before = bp.stats().converged;
        let belief_flips = bp.decode_shot(&events)?;
        let converged = usize::from(bp.stats().converged > converged_before);
        let bp_p = bp.edge_posteriors(&events)?.to_vec();
        let bp_weights: Vec<f64> = bp_p.iter().map(|p| -p.clamp(1e-14, 1.0 - 1e-14).ln()).collect();
        weighted.decode_with_weights(&events, &bp_weights, &mut obs)?;
        counts[converged] += 1;
        errors[converged][0] += u64::from((nm_flips & 1 != 0) != truth);
        errors[converged][1] += u64::from((belief_flips & 1 != 0) != truth);
        errors[converged][2] += u64::from((obs[0] != 0) != truth);
        for (i, &l) in label.iter().enumerate() {
            let (pm, pb) = (model_p[i].clamp(1e-12, 1.0 - 1e-12), bp_p[i].clamp(1e-12, 1.0 - 1e-12));
            ce_model -= if l { pm.ln() } else { (1.0 - pm).ln() };
            ce_bp -= if l { pb.ln() } else { (1.0 - pb).ln() };
            edges_seen += 1;
            let bin = &mut deciles[((pm * 10.0) as usize).min(9)];
            bin.0 += pm;
            bin.1 += 1;
            bin.2 += u64::from(l);
        }
    }
    println!("d={d}, {shots} shots, model {}", model_path.display());
    println!("matching with weights from the true labels: {oracle_errors} errors (should be 0)");
    println!("\n| predicted edge probability | edges | mean prediction | fraction with an error |\n|---|---|---|---|");
    for (k, (sum, n, hits)) in deciles.iter().enumerate() {
        if *n > 0 {
            println!(
                "| {:.1}-{:.1} | {n} | {:.4} | {:.4} |",
                k as f64 / 10.0,
                (k + 1) as f64 / 10.0,
                sum / *n as f64,
                *hits as f64 / *n as f64
            );
        }
    }
    println!(
        "\nper-edge cross-entropy over shots with events (nats): model {:.5}, BP posteriors {:.5}",
        ce_model / edges_seen as f64,
        ce_bp / edges_seen as f64
    );
    println!(
        "\n| shots | count | neural-matching errors | belief errors | BP posteriors, always matched |\n|---|---|---|---|---|"
    );
    for (c, name) in [(1, "BP converged"), (0, "BP did not converge")] {
        println!("| {name} | {} | {} | {} | {} |", counts[c], errors[c][0], errors[c][1], errors[c][2]);
    }
    Ok(())
}
