//! The code cache: a code's build runs outside any lock, opens of one code
//! share its build, a build nobody waits for stops, and the cache is bounded.

use std::time::{Duration, Instant};

use qecd_grpc::proto;
use qecd_service::ServerOptions;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::common::Server;
use crate::{Healthy, open, status_of};
use proto::decode_response::Message as Out;
use proto::decoder_client::DecoderClient;

/// An open correlated-matching stream of d=3 with `rounds` rounds; dropping it leaves.
struct Open {
    tx: mpsc::Sender<proto::DecodeRequest>,
    responses: tonic::Streaming<proto::DecodeResponse>,
}

/// Sends the open of d=3 with `rounds` rounds, and returns the stream and
/// its first reply (Opened, or the status it ended with).
async fn start(server: &Server, rounds: u32) -> (Open, Result<proto::DecodeResponse, tonic::Status>) {
    let (tx, rx) = mpsc::channel(16);
    let mut client = DecoderClient::connect(format!("http://{}", server.grpc)).await.unwrap();
    tx.send(open(proto::DecoderKind::Correlated, 3, rounds)).await.unwrap();
    let mut responses = client.decode(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let first = responses.next().await.expect("a reply or a status");
    (Open { tx, responses }, first)
}

fn is_opened(first: &Result<proto::DecodeResponse, tonic::Status>) -> bool {
    matches!(first, Ok(proto::DecodeResponse { message: Some(Out::Opened(_)) }))
}

impl Open {
    /// Ends the stream as a client does and waits until the server has let
    /// it go, leaving `others` streams open.
    async fn close(self, server: &Server, others: u64) {
        drop(self.tx);
        let mut responses = self.responses;
        while let Some(r) = responses.next().await {
            r.unwrap();
        }
        let started = Instant::now();
        while server.hub.stats.open_streams.load(std::sync::atomic::Ordering::Relaxed) > others {
            assert!(started.elapsed() < Duration::from_secs(5), "the closed stream is still open");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Resident memory of this process (the server runs in it), from /proc.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS in /proc/self/status");
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_build_blocks_no_other_open_and_stops_when_its_client_leaves() {
    let server = Server::start(ServerOptions { max_rounds: 2000, ..Server::options() });
    // The healthy stream's open builds d=3 with its rounds: that code is now kept.
    let healthy = Healthy::open(&server).await;
    let before = server.hub.code_cache_stats();
    let rss_before = rss_bytes();
    // d=3 with 1,000 rounds took 658 MiB and over 50 s to build.
    let huge = {
        let grpc = server.grpc.clone();
        tokio::spawn(async move {
            let (tx, rx) = mpsc::channel(16);
            let mut client = DecoderClient::connect(format!("http://{grpc}")).await.unwrap();
            tx.send(open(proto::DecoderKind::Correlated, 3, 1000)).await.unwrap();
            let mut responses = client.decode(ReceiverStream::new(rx)).await.unwrap().into_inner();
            let first = responses.next().await;
            panic!("the huge open answered while its build should run: {first:?}");
        })
    };
    let started = Instant::now();
    while server.hub.code_cache_stats().building == 0 {
        assert!(started.elapsed() < Duration::from_secs(5), "the huge build never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Let it get well into its build.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let asked = Instant::now();
    let (cached, first) = start(&server, 3).await;
    let took = asked.elapsed();
    assert!(is_opened(&first), "{first:?}");
    assert!(took < Duration::from_secs(1), "a kept code's open took {took:?} beside the huge build");
    cached.close(&server, 2).await;
    assert_eq!(server.hub.code_cache_stats().builds, before.builds + 1, "the d=3 open built nothing");
    let rss_building = rss_bytes();
    // The huge client leaves: its build stops.
    huge.abort();
    let _ = huge.await;
    let left = Instant::now();
    while server.hub.code_cache_stats().cancelled == before.cancelled {
        assert!(left.elapsed() < Duration::from_secs(5), "the huge build still runs 5 s after its client left");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stopped = left.elapsed();
    let after = server.hub.code_cache_stats();
    assert_eq!((after.abandoned, after.building), (before.abandoned + 1, 0));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = rss_bytes();
    let grown = rss_after.saturating_sub(rss_before);
    eprintln!(
        "kept code opened in {took:?}; build stopped {stopped:?} after the client left; \
         RSS {} MiB before, {} MiB building, {} MiB after",
        rss_before >> 20,
        rss_building >> 20,
        rss_after >> 20
    );
    // Bound: a stopped build leaves no more than 1.5 GiB behind (the whole
    // build peaked at 658 MiB; glibc may keep some of it mapped).
    assert!(grown < 3 << 29, "RSS grew by {} MiB", grown >> 20);
    healthy.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_opens_of_one_new_code_share_its_build() {
    let server = Server::start(Server::options());
    let healthy = Healthy::open(&server).await;
    let before = server.hub.code_cache_stats().builds;
    let started = Instant::now();
    let ((a, first_a), (b, first_b)) =
        tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(start(&server, 40), start(&server, 40)) })
            .await
            .expect("both opens answer within 60 s");
    assert!(is_opened(&first_a) && is_opened(&first_b), "{first_a:?} {first_b:?}");
    assert_eq!(server.hub.code_cache_stats().builds, before + 1, "two builds of one code");
    eprintln!("two opens of d=3 with 40 rounds opened in {:?}", started.elapsed());
    a.close(&server, 2).await;
    b.close(&server, 1).await;
    healthy.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_codes_an_unheld_code_is_dropped_and_a_held_one_never() {
    let server = Server::start(ServerOptions { max_codes: 2, ..Server::options() });
    // The healthy stream holds its code (d=3, 3 rounds) throughout: one slot is left.
    let healthy = Healthy::open(&server).await;
    let run = async {
        for (i, rounds) in [4, 5, 6].into_iter().enumerate() {
            let (stream, first) = start(&server, rounds).await;
            assert!(is_opened(&first), "rounds={rounds}: {first:?}");
            let stats = server.hub.code_cache_stats();
            assert_eq!((stats.codes, stats.evictions), (2, i as u64), "after rounds={rounds}");
            if rounds < 6 {
                stream.close(&server, 1).await;
            } else {
                // Both kept codes are held: a new one is refused before any work.
                let builds = stats.builds;
                let status =
                    status_of(&server, vec![open(proto::DecoderKind::Correlated, 3, 7)], Duration::from_secs(5)).await;
                assert_eq!(status.code(), Code::ResourceExhausted, "{}", status.message());
                assert!(status.message().contains("--max-codes 2"), "{}", status.message());
                assert_eq!(server.hub.code_cache_stats().builds, builds, "the refused code was built");
                stream.close(&server, 1).await;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), run).await.expect("the opens answer within 60 s");
    healthy.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subnormal_p_is_refused_naming_p() {
    let server = Server::start(Server::options());
    let healthy = Healthy::open(&server).await;
    let mut request = open(proto::DecoderKind::Correlated, 3, 3);
    if let Some(proto::decode_request::Message::Open(o)) = request.message.as_mut() {
        o.code.as_mut().unwrap().p = 5e-324;
    }
    let builds = server.hub.code_cache_stats().builds;
    let status = status_of(&server, vec![request], Duration::from_secs(5)).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(status.message().contains("code.p must be a number from 1e-15 to 0.5"), "{}", status.message());
    assert!(!status.message().contains("Parens"), "Stim's parser text: {}", status.message());
    assert_eq!(server.hub.code_cache_stats().builds, builds, "the refused code was built");
    healthy.finish().await;
}
