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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use decoder::stats::{DEFAULT_LIKELIHOOD_FACTOR, ErrorCount};
use models::{Featurizer, ModelLayout};
use simulator_bridge::sample::Sampler;
use simulator_bridge::{Basis, MemoryExperiment, NoiseModel, StabilizerLayout};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::server::proto::decode_request::Message as In;
use crate::server::proto::decode_response::Message as Out;
use crate::server::proto::decoder_client::DecoderClient;
use crate::server::proto::{self, DecodeRequest};
use crate::server::session::pack;
use crate::server::stats::Histogram;
use crate::server::{Hub, Models, ServerOptions, grpc};

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
}

/// Runs `qecd demo`.
pub fn run(args: &DemoArgs) -> Result<()> {
    anyhow::ensure!(args.shots > 0 && args.window > 0, "--shots and --window must be positive");
    let start = Instant::now();
    let models = Models::embedded(&decoder::StreamOptions::default())?;
    let hub = std::sync::Arc::new(Hub::new(models, ServerOptions::default()));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let (listener, addr) = grpc::bind("127.0.0.1:0".parse::<SocketAddr>()?).await?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(grpc::serve(hub.clone(), listener, async move {
            let _ = stopped.await;
        }));
        println!("qecd demo: decoding server on {addr} (gRPC, in-process)");
        println!(
            "streaming {} simulated shots per distance: rotated surface code, memory-Z, SI1000 p=0.003, rounds = d, {} in flight\n",
            args.shots, args.window
        );
        let mut client = DecoderClient::connect(format!("http://{addr}")).await?;
        let mut outcomes = Vec::new();
        for d in [3usize, 5] {
            let model = hub.models.find("", d, Basis::Z).ok().map(|m| m.name);
            outcomes.push(stream_distance(&mut client, d, model, args).await?);
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
        let _ = stop.send(());
        server.await??;
        anyhow::Ok(())
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
    let rounds = d;
    let circuit = MemoryExperiment::new(d, rounds, Basis::Z)?.noisy_circuit(&NoiseModel::Si1000 { p: 0.003 })?;
    let layout = StabilizerLayout::from_circuit(&circuit, Basis::Z)?;
    let sampled = Sampler::new(&circuit).sample(args.shots, args.seed ^ d as u64, 0)?;
    let featurizer = Featurizer::new(&ModelLayout::for_code(d, Basis::Z)?, &layout)?;
    let mut features = Vec::new();
    featurizer.extend_features(&sampled.detectors, 0, args.shots, &mut features);
    let per_shot: Vec<Vec<Vec<bool>>> = features
        .chunks_exact(featurizer.shot_len())
        .map(|f| decoder::neural::rounds_of_features(f, featurizer.num_stabilizers()))
        .collect();

    let kind = if model.is_some() { proto::DecoderKind::NeuralChecked } else { proto::DecoderKind::Correlated };
    let code = proto::Code {
        distance: d as u32,
        basis: proto::Basis::Z as i32,
        rounds: rounds as u32,
        noise: "si1000".into(),
        p: 0.003,
    };
    let open = proto::OpenSession {
        code: Some(code),
        decoder: kind as i32,
        model: model.clone().unwrap_or_default(),
        round_budget_us: 0,
        max_backlog: 0,
    };
    let (tx, rx) = mpsc::channel::<DecodeRequest>(4 * args.window + 16);
    tx.send(DecodeRequest { message: Some(In::Open(open)) }).await?;
    let mut responses = client.decode(ReceiverStream::new(rx)).await?.into_inner();

    let message = |shot: usize, t: usize| -> DecodeRequest {
        let bits = &per_shot[shot][t];
        let events = pack(bits);
        let num_events = bits.len() as u32;
        let message = if t < rounds {
            In::Round(proto::Round { shot: shot as u64, round: t as u32, num_events, events, soft: vec![] })
        } else {
            In::Final(proto::FinalRound { shot: shot as u64, num_events, events })
        };
        DecodeRequest { message: Some(message) }
    };
    let started = Instant::now();
    let bar = super::shot_bar(args.shots as u64, &format!("d={d}"));
    let mut sent_at: HashMap<u64, Instant> = HashMap::new();
    let mut next_shot = 0usize;
    for _ in 0..args.window.min(args.shots) {
        sent_at.insert(next_shot as u64, Instant::now());
        tx.send(message(next_shot, 0)).await?;
        next_shot += 1;
    }
    let actual = |shot: u64| sampled.observables.get(shot as usize, 0);
    let (mut neural, mut correlated) = (ErrorCount::default(), ErrorCount::default());
    let (mut round_rtt, mut decision_rtt) = (Histogram::default(), Histogram::default());
    let (mut confidence, mut results, mut checks) = (0.0, 0usize, 0usize);
    let want_checks = if model.is_some() { args.shots } else { 0 };
    while results < args.shots || checks < want_checks {
        let response = responses.next().await.context("the server closed the stream early")??;
        match response.message {
            Some(Out::Ack(ack)) => {
                let now = Instant::now();
                round_rtt.record(now - sent_at[&ack.shot]);
                sent_at.insert(ack.shot, now);
                tx.send(message(ack.shot as usize, ack.round as usize + 1)).await?;
            }
            Some(Out::Result(r)) => {
                decision_rtt.record(sent_at.remove(&r.shot).context("a result for a shot never sent")?.elapsed());
                let wrong = u64::from((r.prediction[0] & 1 == 1) != actual(r.shot));
                let count = if model.is_some() { &mut neural } else { &mut correlated };
                *count += ErrorCount { shots: 1, errors: wrong };
                confidence += r.confidence;
                results += 1;
                bar.inc(1);
                if next_shot < args.shots {
                    sent_at.insert(next_shot as u64, Instant::now());
                    tx.send(message(next_shot, 0)).await?;
                    next_shot += 1;
                }
            }
            Some(Out::Check(c)) => {
                let wrong = u64::from((c.baseline_prediction[0] & 1 == 1) != actual(c.shot));
                correlated += ErrorCount { shots: 1, errors: wrong };
                checks += 1;
            }
            Some(Out::Opened(_)) | None => {}
        }
    }
    bar.finish_and_clear();
    drop(tx);
    Ok(Outcome {
        d,
        model: model.unwrap_or_else(|| "(none in the zoo)".into()),
        shots: args.shots,
        neural: (want_checks > 0).then_some(neural),
        correlated,
        confidence: confidence / args.shots as f64,
        round_rtt,
        decision_rtt,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn print_outcomes(outcomes: &[Outcome]) {
    println!(
        "{:>2} {:>2} {:<18} {:>7} {:>20} {:>20} {:>7} {:>22} {:>22} {:>9}",
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
            "{:>2} {:>2} {:<18} {:>7} {:>20} {:>20} {:>7.4} {:>22} {:>22} {:>9.0}",
            o.d,
            o.d,
            o.model.chars().take(18).collect::<String>(),
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
}
