//! Speed of neural-posterior matching and of the per-shot weight override,
//! each against its peer measured in the same run on the same shots, one
//! thread each.
//!
//! ```text
//! cargo run --release -p qecd-benches --bin posterior_perf -- [--shots N] [--model PATH] [--distances 5,11]
//! ```
//!
//! Per distance d (memory-Z, SI1000 p=0.003, rounds = d), on the same
//! sampled shots:
//! - whole shot: correlated matching, belief-matching and neural-matching,
//!   µs per shot (best of three passes), and neural-matching ÷ correlated;
//! - the posterior model's per-round step at batch 1: each round's
//!   `Stream::push_round`, timed alone, p50 and p99 over the non-final rounds
//!   of all shots (the final round also finishes the rounds still waiting on
//!   it, `layers · ahead` of them, and is reported apart);
//! - the override: PyMatching's blossom graph decoding each shot with the
//!   model's own weights, plainly and through the per-shot override with the
//!   same weights (best of three), and their ratio.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use decoder::reweight::WeightedMatching;
use decoder::{BeliefMatching, BpOptions, Decoder, DecoderKind, MatchingDecoder, NeuralMatching, PackedShots};
use models::posterior::{Geometry, PosteriorModel};
use models::posterior_cpu::{Prepared, Rounds, Stream};
use qecd_benches::{P, cpu_label};
use simulator_bridge::sample::Sampler;
use simulator_bridge::{Basis, MemoryExperiment, NoiseModel, StabilizerLayout};

/// The fastest of three runs of `f`, in seconds.
fn best_of<T, E, F>(mut f: F) -> Result<f64>
where
    E: std::error::Error + Send + Sync + 'static,
    F: FnMut() -> Result<T, E>,
{
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn hits(shots: &PackedShots, s: usize) -> Vec<u64> {
    shots.hits(s).map(|k| k as u64).collect()
}

fn main() -> Result<()> {
    let mut shots = 2000usize;
    let mut distances = vec![5usize, 11];
    let mut model_path = qecd_benches::posterior_path();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--shots" => shots = args.next().context("--shots N")?.parse()?,
            "--model" => model_path = args.next().context("--model PATH")?.into(),
            "--distances" => {
                distances =
                    args.next().context("--distances 5,11")?.split(',').map(str::parse).collect::<Result<_, _>>()?
            }
            other => bail!("unknown argument {other}"),
        }
    }
    let model = Arc::new(PosteriorModel::load(&model_path)?);
    println!("{}; one thread; {shots} shots per distance; model {}", cpu_label(), model_path.display());
    println!();
    println!(
        "| d | correlated µs/shot | belief µs/shot | neural-matching µs/shot | neural-matching ÷ correlated | step p50 / p99 µs | final round p50 µs | plain matching µs/shot | override µs/shot | override ÷ plain |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for d in distances {
        let circuit = MemoryExperiment::new(d, d, Basis::Z)?.noisy_circuit(&NoiseModel::Si1000 { p: P })?;
        let dem = simulator_bridge::decoding_dem(&circuit)?;
        let layout = StabilizerLayout::from_circuit(&circuit, Basis::Z)?;
        let sampled = Sampler::new(&circuit).sample(shots, 2026 + d as u64, 0)?;
        let events = &sampled.detectors;

        let mut correlated = MatchingDecoder::from_dem(&dem, DecoderKind::Correlated)?;
        let t_corr = best_of(|| correlated.decode_batch(events))?;
        let mut belief = BeliefMatching::from_dem(&dem, BpOptions::default())?;
        let t_belief = best_of(|| belief.decode_batch(events))?;
        let mut nm = NeuralMatching::new(model.clone(), &dem, &layout)?;
        let t_nm = best_of(|| nm.decode_batch(events))?;

        // The per-round step.
        let mut weighted = WeightedMatching::from_dem(&dem, decoder::neural_matching::MAX_WEIGHT)?;
        let keys: Vec<(u64, u64)> =
            weighted.edges().iter().map(|e| (e.node1.min(e.node2), e.node1.max(e.node2))).collect();
        let geometry = Geometry::new(&model.config, &layout, &keys)?;
        let rounds = Rounds::new(&geometry);
        let prepared = Prepared::new(&model);
        let mut stream = Stream::default();
        let (mut steps, mut finals) = (Vec::new(), Vec::new());
        for s in 0..shots {
            let mut by_round = vec![Vec::new(); geometry.num_rounds];
            for det in events.hits(s) {
                by_round[geometry.tokens[geometry.token_of_detector[det] as usize].0 as usize].push(det);
            }
            stream.reset(&prepared, &geometry);
            let last = by_round.len() - 1;
            for (t, round) in by_round.into_iter().enumerate() {
                let start = Instant::now();
                stream.push_round(&prepared, &geometry, &rounds, round);
                let us = start.elapsed().as_secs_f64() * 1e6;
                if t == last { finals.push(us) } else { steps.push(us) }
            }
        }
        steps.sort_by(f64::total_cmp);
        finals.sort_by(f64::total_cmp);

        // The override against plain decoding with the same (the model's own) weights.
        let own = weighted.own_weights();
        let per_shot: Vec<Vec<u64>> = (0..shots).map(|s| hits(events, s)).collect();
        let mut obs = vec![0u8; weighted.num_observables()];
        let t_plain = best_of(|| per_shot.iter().try_for_each(|e| weighted.decode(e, &mut obs).map(drop)))?;
        let t_override =
            best_of(|| per_shot.iter().try_for_each(|e| weighted.decode_with_weights(e, &own, &mut obs).map(drop)))?;

        let us = |t: f64| t * 1e6 / shots as f64;
        println!(
            "| {d} | {:.1} | {:.1} | {:.1} | {:.2}× | {:.1} / {:.1} | {:.1} | {:.1} | {:.1} | {:.2}× |",
            us(t_corr),
            us(t_belief),
            us(t_nm),
            t_nm / t_corr,
            percentile(&steps, 0.5),
            percentile(&steps, 0.99),
            percentile(&finals, 0.5),
            us(t_plain),
            us(t_override),
            t_override / t_plain
        );
    }
    Ok(())
}
