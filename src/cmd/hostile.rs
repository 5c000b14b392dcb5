//! Hostile but fair gRPC clients for `qecd load --hostile`: one of each kind
//! that issue 15 names, each repeating its attack until the run ends and
//! counting the statuses it gets. They run beside the load's healthy
//! streams, whose losses, duplicates and round trips are the measurement.
//!
//! - `huge-open`: opens a new code near `--max-rounds` (a fresh build each
//!   time) and leaves after 200 ms, cancelling it; and one code past the limit.
//! - `never-reads`: sends shots and never reads its replies until its stream ends.
//! - `unfinished`: starts shots and never finishes them.
//! - `oversized`: a 5 MiB round, past the 4 MiB message limit.
//! - `truncated`: a Decode message whose bytes are not protobuf.
//! - `idle`: opens a session, then sends nothing; and a stream that never opens.
//! - `no-token`: calls GetStats and Decode without the bearer token (only
//!   when the run has one; without, every client is unauthenticated alike).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use prost::Message as _;
use qecd_grpc::Credentials;
use qecd_grpc::client::{RawCodec, final_status};
use qecd_grpc::proto::{self, DecodeRequest, decode_request::Message as In};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::service::interceptor::InterceptedService;

/// Each client's pause between attacks: one hostile client of each kind,
/// not a flood. (A client that sends valid work as fast as it can takes its
/// share of the server's cores; qecd has no per-client rate limit.)
const PAUSE: Duration = Duration::from_secs(1);

/// The kinds, in the order they are reported.
pub const KINDS: [&str; 7] = ["huge-open", "never-reads", "unfinished", "oversized", "truncated", "idle", "no-token"];

/// What one hostile client met: each status (by gRPC name) and how often.
#[derive(Debug, Default)]
pub struct Met {
    /// The kind of client.
    pub kind: &'static str,
    /// Attempts made.
    pub attempts: u64,
    /// Status name → times seen.
    pub statuses: BTreeMap<String, u64>,
}

impl Met {
    fn saw(&mut self, status: &Status) {
        *self.statuses.entry(format!("{:?}", status.code())).or_default() += 1;
    }

    fn saw_ok(&mut self) {
        *self.statuses.entry("Ok".into()).or_default() += 1;
    }
}

/// Where the hostile clients connect, and the limits they aim at.
#[derive(Clone)]
pub struct Target {
    /// The server.
    pub addr: String,
    /// The healthy clients' TLS and token: hostile clients other than
    /// `no-token` use them too, so that they reach the limits.
    pub credentials: Credentials,
    /// The server's `--max-rounds`.
    pub max_rounds: u32,
}

/// Refuses a kind that is not one of [`KINDS`].
pub fn check_kinds(kinds: &[String]) -> Result<()> {
    match kinds.iter().find(|k| !KINDS.contains(&k.as_str())) {
        Some(k) => anyhow::bail!("--hostile {k}: unknown kind (expected some of {})", KINDS.join(", ")),
        None => Ok(()),
    }
}

/// Runs `kinds` (all of them when empty) until `until`; returns what each met.
pub async fn run(target: Target, kinds: Vec<String>, until: Instant) -> Vec<Met> {
    let mut tasks = Vec::new();
    for kind in KINDS {
        let chosen = kinds.is_empty() || kinds.iter().any(|k| k == kind);
        if !chosen || (kind == "no-token" && !target.credentials.has_token()) {
            continue;
        }
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut met = Met { kind, ..Met::default() };
            while Instant::now() < until {
                met.attempts += 1;
                if let Err(e) = attack(kind, &target, &mut met, until).await {
                    *met.statuses.entry(format!("client error: {e:#}")).or_default() += 1;
                }
                tokio::time::sleep(PAUSE).await;
            }
            met
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        if let Ok(met) = t.await {
            all.push(met);
        }
    }
    all
}

fn open(distance: u32, rounds: u32, kind: proto::DecoderKind) -> DecodeRequest {
    let code = proto::Code { distance, basis: proto::Basis::Z as i32, rounds, noise: String::new(), p: 0.0 };
    let open = proto::OpenSession { code: Some(code), decoder: kind as i32, ..Default::default() };
    DecodeRequest { message: Some(In::Open(open)) }
}

/// Round 0 of d=3 memory-Z: 4 event bits, none fired.
fn round0(shot: u64) -> DecodeRequest {
    let r = proto::Round { shot, round: 0, num_events: 4, events: vec![0], soft: vec![] };
    DecodeRequest { message: Some(In::Round(r)) }
}

/// The status a Decode stream of `messages` ends with (reading every reply),
/// within `limit`; `None` if it ended with OK or did not end in time.
async fn ends_with(
    target: &Target,
    messages: mpsc::Receiver<DecodeRequest>,
    limit: Duration,
) -> Result<Option<Status>> {
    let mut client = target.credentials.connect(&target.addr).await?;
    let outcome = async {
        match client.decode(ReceiverStream::new(messages)).await {
            Ok(r) => final_status(&mut r.into_inner()).await,
            Err(status) => Some(status),
        }
    };
    Ok(tokio::time::timeout(limit, outcome).await.unwrap_or(None))
}

async fn attack(kind: &str, target: &Target, met: &mut Met, until: Instant) -> Result<()> {
    let left = until.saturating_duration_since(Instant::now());
    match kind {
        "huge-open" => {
            // A fresh code each time (rounds vary), given up after 200 ms.
            let rounds = target.max_rounds - (met.attempts % (target.max_rounds as u64 / 2).max(1)) as u32;
            let (tx, rx) = mpsc::channel(4);
            tx.send(open(3, rounds, proto::DecoderKind::Correlated)).await?;
            match ends_with(target, rx, Duration::from_millis(200)).await? {
                Some(status) => met.saw(&status),
                None => *met.statuses.entry("left after 200 ms".into()).or_default() += 1,
            }
            // And once in a while one past the limit, refused at once.
            if met.attempts % 10 == 1 {
                let (tx, rx) = mpsc::channel(1);
                tx.send(open(3, target.max_rounds * 100, proto::DecoderKind::Correlated)).await?;
                drop(tx);
                record(met, ends_with(target, rx, Duration::from_secs(5)).await?);
            }
        }
        "never-reads" => {
            // Shots go out; the replies are read only once sending is stuck or
            // 5 s have passed, to learn how the stream ended.
            let mut client = target.credentials.connect(&target.addr).await?;
            let (tx, rx) = mpsc::channel(64);
            tx.send(open(3, 1, proto::DecoderKind::Correlated)).await?;
            let mut replies = client.decode(ReceiverStream::new(rx)).await?.into_inner();
            let stop = Instant::now() + Duration::from_secs(5).min(left);
            let mut shot = 0u64;
            while Instant::now() < stop {
                let r = proto::Round { shot, round: 0, num_events: 4, events: vec![0], soft: vec![] };
                let f = proto::FinalRound { shot, num_events: 4, events: vec![0] };
                let sent = tokio::time::timeout(Duration::from_millis(500), async {
                    tx.send(DecodeRequest { message: Some(In::Round(r)) }).await?;
                    tx.send(DecodeRequest { message: Some(In::Final(f)) }).await
                })
                .await;
                match sent {
                    Ok(Ok(())) => shot += 1,
                    _ => break, // the server stopped reading, or the stream ended
                }
            }
            drop(tx);
            let ended = tokio::time::timeout(Duration::from_secs(10), final_status(&mut replies)).await.unwrap_or(None);
            record(met, ended);
        }
        "unfinished" => {
            let (tx, rx) = mpsc::channel(256);
            let feeder = tokio::spawn(async move {
                tx.send(open(3, 3, proto::DecoderKind::Correlated)).await?;
                for shot in 0..1_000_000u64 {
                    tx.send(round0(shot)).await?;
                }
                anyhow::Ok(())
            });
            record(met, ends_with(target, rx, Duration::from_secs(10).min(left)).await?);
            feeder.abort();
        }
        "oversized" => {
            let (tx, rx) = mpsc::channel(2);
            tx.send(open(3, 3, proto::DecoderKind::Correlated)).await?;
            let huge = proto::Round { shot: 0, round: 0, num_events: 4, events: vec![0; 5 << 20], soft: vec![] };
            tx.send(DecodeRequest { message: Some(In::Round(huge)) }).await?;
            drop(tx);
            record(met, ends_with(target, rx, Duration::from_secs(10)).await?);
        }
        "truncated" => {
            // An open, then field 2 (round) announced as 5 bytes long with 1 given.
            let mut open_bytes = Vec::new();
            open(3, 3, proto::DecoderKind::Correlated).encode(&mut open_bytes)?;
            let messages = vec![open_bytes, vec![0x12, 0x05, 0x08]];
            let channel = target.credentials.channel(&target.addr).await?;
            let mut grpc = tonic::client::Grpc::new(InterceptedService::new(channel, target.credentials.bearer()));
            grpc.ready().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            let path = tonic::codegen::http::uri::PathAndQuery::from_static("/qecd.v1.Decoder/Decode");
            let request = tonic::Request::new(tokio_stream::iter(messages));
            let outcome = tokio::time::timeout(Duration::from_secs(10), async {
                match grpc.streaming(request, path, RawCodec).await {
                    Ok(r) => final_status(&mut r.into_inner()).await,
                    Err(status) => Some(status),
                }
            })
            .await
            .unwrap_or(None);
            record(met, outcome);
        }
        "idle" => {
            // An open session that then sends nothing, and a stream with no open.
            let (open_tx, open_rx) = mpsc::channel(1);
            open_tx.send(open(3, 3, proto::DecoderKind::Correlated)).await?;
            let (_silent_tx, silent_rx) = mpsc::channel::<DecodeRequest>(1);
            let (a, b) = tokio::join!(ends_with(target, open_rx, left), ends_with(target, silent_rx, left));
            record(met, a?);
            record(met, b?);
            drop(open_tx);
        }
        "no-token" => {
            let mut client = target.credentials.without_token().connect(&target.addr).await?;
            match client.get_stats(proto::GetStatsRequest {}).await {
                Ok(_) => met.saw_ok(),
                Err(status) => met.saw(&status),
            }
            let (tx, rx) = mpsc::channel(1);
            tx.send(open(3, 3, proto::DecoderKind::Correlated)).await?;
            match client.decode(ReceiverStream::new(rx)).await {
                Ok(_) => met.saw_ok(),
                Err(status) => met.saw(&status),
            }
        }
        other => anyhow::bail!("unknown hostile client {other}"),
    }
    Ok(())
}

fn record(met: &mut Met, ended: Option<Status>) {
    match ended {
        Some(status) => met.saw(&status),
        None => *met.statuses.entry("no status (ended OK or timed out)".into()).or_default() += 1,
    }
}

/// Prints what each hostile client met.
pub fn report(all: &[Met]) {
    println!("\nhostile clients (beside the streams above):");
    for m in all {
        let seen: Vec<String> = m.statuses.iter().map(|(s, n)| format!("{s} ×{n}")).collect();
        println!("  {:<12} {:>6} attempts: {}", m.kind, m.attempts, seen.join(", "));
    }
}
