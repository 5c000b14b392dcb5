//! `qecd demo`: the README's first command. It starts the decoding server
//! in-process on loopback, streams simulated shots (memory-Z, SI1000
//! p=0.003, d=3 and d=5, rounds = d) through gRPC with the built-in zoo
//! models, and prints the neural decoder's and correlated matching's logical
//! error rates on the same shots, the neural confidence, and the latency
//! percentiles of round acknowledgements and decisions.
//!
//! Each distance gets one stream in the checked mode: the neural decoder
//! answers every shot, and correlated matching shadow-decodes it off the hot
//! path. `--window` shots are in flight at once, each sending its next round
//! when the previous one is acknowledged, as a control stack would.

use std::time::Instant;

use anyhow::Result;
use clap::Args;
use decoder::stats::{DEFAULT_LIKELIHOOD_FACTOR, ErrorCount};
use decoder::{DecoderKind, PackedShots, decode_parallel};
use simulator_bridge::Basis;

use super::client::{Drive, ShotSet, drive};
use qecd_grpc::proto;
use qecd_grpc::proto::decoder_client::DecoderClient;
use qecd_service::stats::Histogram;
use qecd_service::{Hub, Models, ServerOptions};

/// Arguments of `qecd demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Shots per distance.
    #[arg(long, default_value_t = 10_000)]
    pub shots: usize,
    /// Shots in flight at once on each stream.
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// Seed of the simulated shots.
    #[arg(long, default_value_t = 2026)]
    pub seed: u64,
}

/// What one distance's stream measured.
struct Outcome {
    d: usize,
    model: String,
    shots: usize,
    neural: Option<ErrorCount>,
    correlated: ErrorCount,
    confidence: f64,
    round_rtt: Histogram,
    decision_rtt: Histogram,
    seconds: f64,
    /// The same shots decoded in-process: (decoder, errors, seconds).
    offline: Vec<(DecoderKind, u64, f64)>,
}

/// Runs `qecd demo`.
pub fn run(args: &DemoArgs) -> Result<()> {
    anyhow::ensure!(args.shots > 0 && args.window > 0, "--shots and --window must be positive");
    let start = Instant::now();
    let models = Models::embedded(&decoder::StreamOptions::default())?;
    let hub = std::sync::Arc::new(Hub::new(models, ServerOptions::default()));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let server = qecd_grpc::LocalServer::start(hub.clone()).await?;
        let addr = server.addr;
        println!("qecd demo: decoding server on {addr} (gRPC, in-process)");
        println!(
            "streaming {} simulated shots per distance: rotated surface code, memory-Z, SI1000 p=0.003, rounds = d, {} in flight\n",
            args.shots, args.window
        );
        let mut client = DecoderClient::connect(format!("http://{addr}")).await?;
        let mut outcomes = Vec::new();
        for d in [3usize, 5] {
            let found = hub.models.find(None, d, Basis::Z).ok();
            let model = found.as_ref().map(|m| m.name.clone());
            let mut outcome = stream_distance(&mut client, d, model, args).await?;
            if let Some(m) = found {
                let seen = m.model.meta().provenance.samples_seen as f64;
                outcome.model = format!("{} ({:.1}M samples)", m.name, seen / 1e6);
            }
            outcomes.push(outcome);
        }
        print_outcomes(&outcomes);
        let stats = client.get_stats(proto::GetStatsRequest {}).await?.into_inner();
        println!(
            "\nserver: {} budget misses, {} fallbacks; correlated matching agreed with the neural decoder on {:.2}% of {} shots",
            stats.budget_misses,
            stats.fallbacks,
            100.0 * stats.agreement_rate,
            stats.checked_shots
        );
        server.stop().await
    })?;
    println!(
        "\n{:.1} s. Next: `qecd serve --help` (the service), `qecd sweep --help` (LER sweeps), docs/.",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn stream_distance(
    client: &mut DecoderClient<tonic::transport::Channel>,
    d: usize,
    model: Option<String>,
    args: &DemoArgs,
) -> Result<Outcome> {
    let set = ShotSet::simulate(d, d, args.shots, args.seed ^ d as u64)?;
    let bar = super::shot_bar(args.shots as u64, &format!("d={d}"));
    let plan = Drive {
        decoder: if model.is_some() { proto::DecoderKind::NeuralChecked } else { proto::DecoderKind::Correlated },
        model: model.clone().unwrap_or_default(),
        window: args.window,
        shots: args.shots,
        until: None,
        bar: Some(bar.clone()),
        reopen_every: None,
        keep_answers: false,
    };
    let tally = drive(client, &set, &plan).await?;
    bar.finish_and_clear();
    anyhow::ensure!(
        tally.lost() == 0 && tally.duplicates == 0,
        "d={d}: {} shots lost, {} answered twice",
        tally.lost(),
        tally.duplicates
    );
    let mut offline = Vec::new();
    let circuit: stim::Circuit = set.circuit.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let dem_text = super::decoding_dem(&circuit)?.to_string();
    let truth = PackedShots::from_rows(&set.observables.iter().map(|&o| [o]).collect::<Vec<_>>(), 1);
    for kind in [DecoderKind::Correlated, DecoderKind::Belief, DecoderKind::NeuralMatching] {
        let began = Instant::now();
        let make = || -> Result<Box<dyn decoder::Decoder>, decoder::DecodeError> {
            let circuit: stim::Circuit = set.circuit.parse()?;
            super::build_decoder(kind, &dem_text, Some(&circuit), None, None)
                .map_err(|e| decoder::DecodeError::Invalid(format!("{e:#}")))
        };
        let decided = decode_parallel(make, &set.detectors, 0)?;
        let errors = decoder::count_errors(&decided.predictions, &truth) as u64;
        offline.push((kind, errors, began.elapsed().as_secs_f64()));
    }
    let (neural, correlated) = match model {
        Some(_) => (Some(tally.errors), tally.baseline),
        None => (None, tally.errors),
    };
    Ok(Outcome {
        d,
        model: model.unwrap_or_else(|| "(none in the zoo)".into()),
        shots: args.shots,
        neural,
        correlated,
        confidence: tally.confidence_sum / tally.answered.max(1) as f64,
        round_rtt: tally.round_rtt,
        decision_rtt: tally.decision_rtt,
        seconds: tally.seconds,
        offline,
    })
}

fn print_outcomes(outcomes: &[Outcome]) {
    println!(
        "{:>2} {:>2} {:<33} {:>7} {:>20} {:>20} {:>7} {:>22} {:>22} {:>9}",
        "d",
        "r",
        "model",
        "shots",
        "neural LER/shot",
        "correlated LER/shot",
        "conf.",
        "round ack p50/p99 µs",
        "decision p50/p99 µs",
        "shots/s"
    );
    for o in outcomes {
        let ler = |c: &ErrorCount| {
            let f = c.fit_per_round(1.0, DEFAULT_LIKELIHOOD_FACTOR);
            format!("{:.3}% ({} err)", 100.0 * f.best, c.errors)
        };
        let [r50, r99, _] = o.round_rtt.percentiles_us();
        let [d50, d99, _] = o.decision_rtt.percentiles_us();
        println!(
            "{:>2} {:>2} {:<33} {:>7} {:>20} {:>20} {:>7.4} {:>22} {:>22} {:>9.0}",
            o.d,
            o.d,
            o.model,
            o.shots,
            o.neural.as_ref().map(ler).unwrap_or_else(|| "–".into()),
            ler(&o.correlated),
            o.confidence,
            format!("{r50:.1} / {r99:.1}"),
            format!("{d50:.1} / {d99:.1}"),
            o.shots as f64 / o.seconds
        );
    }
    println!(
        "\nLatencies are client round trips over loopback gRPC: from sending a round to its acknowledgement, and \
         from sending the final round to the decision."
    );
    println!("\nThe same shots, decoded in-process (errors; ÷ correlated; shots/s on all cores):");
    for o in outcomes {
        let base = o.offline.iter().find(|(k, ..)| *k == DecoderKind::Correlated).map_or(1, |x| x.1.max(1));
        let cells: Vec<String> = o
            .offline
            .iter()
            .map(|(k, errors, secs)| {
                format!("{k} {errors} ({:.2}×, {:.0}/s)", *errors as f64 / base as f64, o.shots as f64 / secs)
            })
            .collect();
        println!("  d={}: {}", o.d, cells.join("; "));
    }
    println!(
        "belief is belief-matching (BP posteriors as matching weights); neural-matching is the posterior model's \
         edge probabilities as matching weights (docs/posterior.md)."
    );
    println!(
        "A neural model is as good as its training: the zoo's cards (fixtures/models/*.json) and docs/results.md \
         say how each was trained and how it compares."
    );
}
