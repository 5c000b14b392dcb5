//! `qecd load`: the load run of docs/perf.md. Many concurrent Decode streams
//! (d=3 and d=5 mixed) play simulated shots for a fixed time against a
//! server, in-process on loopback unless `--addr` names one; the run fails
//! if any shot is lost or answered twice. With `--echo` the in-process server
//! is [`super::echo`]'s, which decodes nothing: the same client's round trips
//! against it are the transport floor of the decoder's. With
//! `--swap-models` it swaps models while the streams run and checks what
//! the sessions got ([`swaps`]).

mod swaps;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;
use decoder::stats::DEFAULT_LIKELIHOOD_FACTOR;
use simulator_bridge::Basis;

use super::client::{Drive, ShotSet, Tally, drive};
use super::echo::LocalEcho;
use qecd_grpc::Credentials;
use qecd_grpc::proto;
use qecd_service::stats::Histogram;
use qecd_service::{Hub, Models, ServerOptions};

/// Arguments of `qecd load`.
#[derive(Args, Debug)]
pub struct LoadArgs {
    /// A running server (`http://HOST:PORT`, or `https://` with `--tls-ca`);
    /// default: one started in-process on loopback.
    #[arg(long)]
    pub addr: Option<String>,
    /// Run against an in-process echo of the Decode service that decodes nothing:
    /// the transport floor (gRPC, HTTP/2, tokio) of the round trips.
    #[arg(long, conflicts_with = "addr")]
    pub echo: bool,
    /// Concurrent Decode streams, each on its own connection.
    #[arg(long, default_value_t = 64)]
    pub streams: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 60.0)]
    pub seconds: f64,
    /// Distances, assigned to the streams in turn (rounds = d).
    #[arg(long, value_delimiter = ',', default_value = "3,5")]
    pub distances: Vec<usize>,
    /// Shots in flight per stream.
    #[arg(long, default_value_t = 1)]
    pub window: usize,
    /// Threads of the async runtime the in-process server and the clients
    /// share (0: one per core); 1 measures a lone stream without waits for
    /// another runtime thread to wake (docs/perf.md).
    #[arg(long, default_value_t = 0)]
    pub runtime_threads: usize,
    /// Seed of the simulated shots.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// File holding the bearer token of the server's `--token-file`.
    #[arg(long, requires = "addr")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) to trust: connect over TLS.
    #[arg(long, requires = "addr")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) to show a server with `--tls-client-ca` (mutual TLS).
    #[arg(long, requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Run one hostile client of each kind beside the streams (huge opens,
    /// a client that never reads, unfinished shots, oversized and truncated
    /// messages, idle streams, calls without the token) and report what
    /// each got; the streams' table is the measurement. With a list
    /// (`--hostile never-reads,idle`), those kinds only.
    #[arg(long, num_args = 0.., value_delimiter = ',', value_name = "KINDS")]
    pub hostile: Option<Vec<String>>,
    /// The server's `--max-rounds`, which the hostile huge opens aim at.
    #[arg(long, default_value_t = 100)]
    pub max_rounds: u32,
    /// Each stream ends its session after this many shots and opens a new
    /// one (default: one session per stream for the whole run), so that it
    /// sees models swapped while it runs.
    #[arg(long, value_name = "SHOTS")]
    pub reopen_every: Option<usize>,
    /// Checkpoints to swap in while the streams run (comma-separated
    /// `[NAME=]FILE`, paths on the server's machine that this client can read
    /// too): each swap loads, for every name (default: the file's stem), the
    /// next of its files with LoadModel, as a new version of that name, so
    /// two files of one name alternate. The run then fails unless every
    /// stream's versions go forwards in the order the swaps happened, each
    /// version's hash is its file's, and the sampled sessions' neural
    /// answers equal offline decoding with that file (see `--check-sessions`).
    #[arg(long, value_delimiter = ',', value_name = "[NAME=]FILE")]
    pub swap_models: Vec<swaps::SwapFile>,
    /// Swaps, evenly spread over the run (with `--swap-models`).
    #[arg(long, default_value_t = 10)]
    pub swaps: usize,
    /// With `--swap-models`: sessions of each model version whose neural
    /// answers are decoded again offline with the weights its hash names
    /// and must equal them bit for bit (0: none).
    #[arg(long, default_value_t = 16, value_name = "SESSIONS")]
    pub check_sessions: usize,
}

/// What answers the streams of one distance.
enum Answerer {
    /// The neural decoder, with this model.
    Neural(String),
    /// Correlated matching, where no neural model fits the distance.
    Correlated,
    /// The echo service of `--echo`.
    Echo,
}

impl Answerer {
    /// The decoder column of the table.
    fn name(&self) -> &'static str {
        match self {
            Answerer::Neural(_) => "neural",
            Answerer::Correlated => "correlated",
            Answerer::Echo => "echo",
        }
    }

    /// The decoder and model the streams open their sessions with.
    fn session(&self) -> (proto::DecoderKind, String) {
        match self {
            Answerer::Neural(name) => (proto::DecoderKind::Neural, name.clone()),
            Answerer::Correlated => (proto::DecoderKind::Correlated, String::new()),
            Answerer::Echo => (proto::DecoderKind::Unspecified, String::new()),
        }
    }
}

/// A server started in-process for the run.
enum Local {
    /// The decoding server.
    Decoder(qecd_grpc::LocalServer),
    /// The transport floor of `--echo`.
    Echo(LocalEcho),
}

impl Local {
    /// Shuts it down, waiting for open streams to finish.
    async fn stop(self) -> Result<()> {
        match self {
            Local::Decoder(server) => server.stop().await,
            Local::Echo(server) => server.stop().await,
        }
    }
}

/// Runs `qecd load`.
pub fn run(args: &LoadArgs) -> Result<()> {
    anyhow::ensure!(
        args.streams > 0 && args.window > 0 && args.seconds > 0.0,
        "--streams, --window and --seconds must be positive"
    );
    let identity = args.tls_cert.as_deref().zip(args.tls_key.as_deref());
    let credentials = Credentials::load(args.tls_ca.as_deref(), identity, args.token_file.as_deref())?;
    if let Some(kinds) = &args.hostile {
        super::hostile::check_kinds(kinds)?;
    }
    let runtime = super::runtime(args.runtime_threads)?;
    runtime.block_on(async move {
        let (answerers, addr, stop): (Vec<(usize, Answerer)>, String, Option<Local>) = if args.echo {
            let server = LocalEcho::start().await?;
            let answerers = args.distances.iter().map(|&d| (d, Answerer::Echo)).collect();
            (answerers, format!("http://{}", server.addr), Some(Local::Echo(server)))
        } else {
            let models = Models::embedded(&decoder::StreamOptions::default())?;
            let answerers = args
                .distances
                .iter()
                .map(|&d| match models.find(None, d, Basis::Z) {
                    Ok(m) => (d, Answerer::Neural(m.name)),
                    Err(_) => (d, Answerer::Correlated),
                })
                .collect();
            match &args.addr {
                Some(a) => (answerers, a.clone(), None),
                None => {
                    let options = ServerOptions { max_streams: args.streams + 16, ..ServerOptions::default() };
                    let server = qecd_grpc::LocalServer::start(Arc::new(Hub::new(models, options))).await?;
                    (answerers, format!("http://{}", server.addr), Some(Local::Decoder(server)))
                }
            }
        };
        let sets: Vec<Arc<ShotSet>> = args
            .distances
            .iter()
            .map(|&d| ShotSet::simulate(d, d, 4096, args.seed ^ d as u64).map(Arc::new))
            .collect::<Result<_>>()?;
        println!(
            "qecd load: {} streams for {} s against {addr}{}, distances {:?} (rounds = d), {} shot(s) in flight per stream",
            args.streams,
            args.seconds,
            if args.echo { " (echo)" } else { "" },
            args.distances,
            args.window
        );
        let until = Instant::now() + Duration::from_secs_f64(args.seconds);
        let hostile = args.hostile.as_ref().map(|kinds| {
            let target =
                super::hostile::Target { addr: addr.clone(), credentials: credentials.clone(), max_rounds: args.max_rounds };
            tokio::spawn(super::hostile::run(target, kinds.clone(), until))
        });
        let plan = (!args.swap_models.is_empty()).then(|| swaps::Plan::new(&args.swap_models)).transpose()?;
        let plan = plan.map(Arc::new);
        let swapping = plan.clone().map(|plan| {
            let (addr, credentials) = (addr.clone(), credentials.clone());
            tokio::spawn(swaps::run(addr, credentials, plan, args.swaps, Instant::now(), until))
        });
        let mut tasks = Vec::new();
        for i in 0..args.streams {
            let k = i % sets.len();
            let (set, addr, credentials) = (sets[k].clone(), addr.clone(), credentials.clone());
            let (decoder, model) = answerers[k].1.session();
            let plan = Drive {
                decoder,
                model,
                window: args.window,
                shots: usize::MAX,
                until: Some(until),
                bar: None,
                reopen_every: args.reopen_every,
                keep_answers: swapping.is_some() && args.check_sessions > 0,
            };
            tasks.push(tokio::spawn(async move {
                let mut client = credentials.connect(&addr).await?;
                drive(&mut client, &set, &plan).await
            }));
        }
        let mut per_distance: Vec<Vec<Tally>> = (0..sets.len()).map(|_| Vec::new()).collect();
        for (i, t) in tasks.into_iter().enumerate() {
            per_distance[i % sets.len()].push(t.await??);
        }
        let mut stats_client = credentials.connect(&addr).await?;
        let stats = stats_client.get_stats(proto::GetStatsRequest {}).await?.into_inner();
        let mut failed = report(args, &answerers, &per_distance, &stats);
        if let (Some(swapping), Some(plan)) = (swapping, &plan) {
            let swaps = swapping.await??;
            let neural: Vec<(&ShotSet, &[Tally])> = answerers
                .iter()
                .zip(&sets)
                .zip(&per_distance)
                .filter(|((a, _), _)| matches!(a.1, Answerer::Neural(_)))
                .map(|((_, set), tallies)| (set.as_ref(), tallies.as_slice()))
                .collect();
            failed |= swaps::check(plan, &swaps, &neural, args.check_sessions)?;
        }
        if let Some(hostile) = hostile {
            super::hostile::report(&hostile.await?);
        }
        if let Some(server) = stop {
            server.stop().await?;
        }
        if failed {
            bail!(
                "shots were lost or answered twice, or model versions went out of order, named a wrong hash or \
                 decided unlike their weights (see above)"
            );
        }
        anyhow::Ok(())
    })
}

/// Prints the run's table; `true` if any shot was lost or duplicated.
fn report(
    args: &LoadArgs,
    answerers: &[(usize, Answerer)],
    per_distance: &[Vec<Tally>],
    stats: &proto::GetStatsResponse,
) -> bool {
    println!(
        "\n{:>2} {:<11} {:>7} {:>9} {:>5} {:>5} {:>8} {:>11} {:>26} {:>26}",
        "d",
        "decoder",
        "streams",
        "shots",
        "lost",
        "dup",
        "dup acks",
        "LER/shot",
        "round ack p50/p99/p99.9 µs",
        "decision p50/p99/p99.9 µs"
    );
    let mut failed = false;
    for ((d, answerer), tallies) in answerers.iter().zip(per_distance) {
        let (mut round, mut decision) = (Histogram::default(), Histogram::default());
        let (mut answered, mut lost, mut dup, mut dup_acks, mut shots_failed) = (0, 0, 0, 0, 0);
        let mut errors = decoder::stats::ErrorCount::default();
        for t in tallies {
            round.merge(&t.round_rtt);
            decision.merge(&t.decision_rtt);
            answered += t.answered;
            lost += t.lost();
            dup += t.duplicates;
            dup_acks += t.duplicate_acks;
            shots_failed += t.failed;
            errors += t.errors;
        }
        failed |= lost > 0 || dup > 0 || dup_acks > 0 || shots_failed > 0;
        if shots_failed > 0 {
            println!("d={d}: {shots_failed} shots answered with ShotFailed (a decoder failed on them)");
        }
        let p = |h: &Histogram| {
            let [a, b, c] = h.percentiles_us();
            format!("{a:.0} / {b:.0} / {c:.0}")
        };
        // The echo answers "no flip" to every shot: its error rate measures nothing.
        let ler = match answerer {
            Answerer::Echo => "-".to_string(),
            _ => format!("{:.3}%", 100.0 * errors.fit_per_round(1.0, DEFAULT_LIKELIHOOD_FACTOR).best),
        };
        println!(
            "{d:>2} {:<11} {:>7} {answered:>9} {lost:>5} {dup:>5} {dup_acks:>8} {ler:>11} {:>26} {:>26}",
            answerer.name(),
            tallies.len(),
            p(&round),
            p(&decision)
        );
    }
    println!("\nclient round trips over loopback gRPC; {} s, {} shots in flight per stream", args.seconds, args.window);
    if args.echo {
        println!("transport floor: a tonic echo service, no decoding");
        return failed;
    }
    println!("server side (receipt → response queued), per answering decoder:");
    for d in &stats.decoders {
        let kind = proto::DecoderKind::try_from(d.decoder).map(|k| k.as_str_name()).unwrap_or("?");
        let (r, x) = (d.round_latency.unwrap_or_default(), d.decision_latency.unwrap_or_default());
        println!(
            "  {kind:<26} rounds {:>9}: p50 {:.1} p99 {:.1} p99.9 {:.1} µs; decisions {:>8}: p50 {:.1} p99 {:.1} p99.9 {:.1} µs",
            r.count, r.p50_us, r.p99_us, r.p999_us, x.count, x.p50_us, x.p99_us, x.p999_us
        );
    }
    println!(
        "  budget misses {}, fallbacks {}, rejected streams {}, failed shots {}",
        stats.budget_misses, stats.fallbacks, stats.rejected_streams, stats.failed_shots
    );
    failed
}
