//! The gRPC transport: reply queue bound, undecodable messages, timeouts, drain, TLS and tokens.
//! Each case bounds its own time, and a healthy stream beside it keeps
//! getting every answer, as offline decoding gives it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use decoder::DecoderKind;
use qecd_grpc::client::{Client, RawCodec, final_status};
use qecd_grpc::proto::decode_request::Message as In;
use qecd_grpc::proto::decode_response::Message as Out;
use qecd_grpc::proto::decoder_client::DecoderClient;
use qecd_grpc::{Credentials, Security, proto};
use qecd_service::{ServerOptions, TlsFiles};
use simulator_bridge::shots::pack_bits;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::common::{Server, offline, pki, shots};
use crate::{Healthy, open, round, status_of};

/// How long a test's client waits for what it expects before it gives up.
const PATIENCE: Duration = Duration::from_secs(20);

/// The messages of one shot, `[round][bit]` with the final round last, under the id `shot`.
fn shot_messages(per_round: &[Vec<bool>], shot: u64) -> Vec<proto::DecodeRequest> {
    let rounds = per_round.len() - 1;
    per_round
        .iter()
        .enumerate()
        .map(|(t, bits)| {
            if t < rounds {
                round(shot, t, pack_bits(bits), bits.len())
            } else {
                let f = proto::FinalRound { shot, num_events: bits.len() as u32, events: pack_bits(bits) };
                proto::DecodeRequest { message: Some(In::Final(f)) }
            }
        })
        .collect()
}

/// Decodes 20 d=3 shots with correlated matching over `client` and checks
/// that each is answered once, as offline decoding answers it.
async fn decodes(client: &mut Client) {
    let s = shots(3, 20, 43);
    let want = offline(&s, DecoderKind::Correlated);
    let mut msgs = vec![open(proto::DecoderKind::Correlated, 3, s.rounds as u32)];
    msgs.extend((0..want.len()).flat_map(|i| shot_messages(&s.per_round[i], i as u64)));
    let run = async {
        let mut responses = client.decode(tokio_stream::iter(msgs)).await.unwrap().into_inner();
        let mut answered = vec![0; want.len()];
        while let Some(r) = responses.next().await {
            if let Some(Out::Result(r)) = r.unwrap().message {
                answered[r.shot as usize] += 1;
                assert_eq!(r.prediction[0] & 1 == 1, want[r.shot as usize], "shot {}", r.shot);
            }
        }
        assert!(answered.iter().all(|&n| n == 1), "answers per shot: {answered:?}");
    };
    tokio::time::timeout(PATIENCE, run).await.expect("the shots are answered in time");
}

/// The process's resident memory (the server runs in it), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("a VmRSS line");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Waits until the server counts `n` open streams.
async fn open_streams_reach(server: &Server, n: u64) {
    let started = Instant::now();
    while server.hub.stats.open_streams.load(Ordering::Acquire) != n {
        assert!(
            started.elapsed() < PATIENCE,
            "open streams stay at {}",
            server.hub.stats.open_streams.load(Ordering::Acquire)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_replies_is_cut_off_at_the_reply_bound() {
    const BOUND: usize = 64 << 10;
    const SHOTS: u64 = 50_000;
    let server = Server::start(ServerOptions { max_reply_bytes: BOUND, ..Server::options() });
    let healthy = Healthy::open(&server).await;
    let before = rss_kib();
    // A small HTTP/2 stream window, so that what the client leaves unread
    // piles up on the server and not in this client's buffers. The
    // connection window stays large: h2 (0.4.20) lets a connection buffer
    // unread DATA frames under 256 bytes only up to a budget of half the
    // connection window, then ends the connection itself (GOAWAY
    // ENHANCE_YOUR_CALM, "too_many_data_frames"), and with a 64 KiB
    // connection window this client's own h2 did so first in about 1 run in
    // 15. Half of 32 MiB covers any 64 KiB of gRPC frames.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .initial_stream_window_size(Some(64 << 10))
        .initial_connection_window_size(Some(32 << 20))
        .connect()
        .await
        .unwrap();
    let mut client = DecoderClient::new(channel);
    let s = shots(3, 1, 42);
    let sent = Arc::new(AtomicU64::new(0));
    // Shots made as the transport takes them: 50,000 would answer with
    // about 4 MB of replies.
    let flood = {
        let (one, sent) = (s.per_round[0].clone(), sent.clone());
        let shots = (0..SHOTS).flat_map(move |shot| {
            sent.fetch_add(1, Ordering::Relaxed);
            shot_messages(&one, shot)
        });
        tokio_stream::iter(std::iter::once(open(proto::DecoderKind::Correlated, 3, 3)).chain(shots))
    };
    let mut responses = client.decode(flood).await.unwrap().into_inner();
    // Reads nothing until the server has ended the stream.
    open_streams_reach(&server, 1).await;
    let grown = rss_kib().saturating_sub(before);
    let mut replies = 0;
    let status = loop {
        match tokio::time::timeout(PATIENCE, responses.next()).await.expect("the stream ends") {
            Some(Ok(_)) => replies += 1,
            Some(Err(status)) => break status,
            None => panic!("the stream ended with OK after {replies} replies"),
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{}", status.message());
    assert!(status.message().contains(&format!("--max-reply-bytes {BOUND}")), "{}", status.message());
    let sent = sent.load(Ordering::Relaxed);
    assert!(sent < SHOTS, "the stream was cut before the client had sent its {SHOTS} shots, not after");
    // The queue holds at most 64 KiB of replies. Without the bound the
    // server holds every reply of the 50,000 shots it takes (about 31 MiB
    // more, measured on the development machine).
    assert!(grown < 16 << 10, "the server grew by {grown} KiB while its client read nothing");
    println!("cut off after {sent} shots sent and {replies} replies read; RSS grew by {grown} KiB");
    healthy.finish().await;
}

/// The status a Decode stream of raw `messages` ends with.
async fn raw_status(server: &Server, messages: Vec<Vec<u8>>) -> tonic::Status {
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc)).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/qecd.v1.Decoder/Decode");
    let run = async {
        match grpc.streaming(tonic::Request::new(tokio_stream::iter(messages)), path, RawCodec).await {
            Ok(r) => final_status(&mut r.into_inner()).await.expect("the stream ended with OK"),
            Err(status) => status,
        }
    };
    tokio::time::timeout(PATIENCE, run).await.expect("the stream ends")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_messages_end_their_stream_with_invalid_argument() {
    let server = Server::start(Server::options());
    let healthy = Healthy::open(&server).await;
    // A round of 5 MiB, past tonic's 4 MiB limit on a message, after an open.
    let huge = round(0, 0, vec![0; 5 << 20], 4);
    let status = status_of(&server, vec![open(proto::DecoderKind::Correlated, 3, 3), huge], PATIENCE).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(
        status.message().contains("undecodable message") && status.message().contains("too large"),
        "{}",
        status.message()
    );
    // Field 2 (a round) said to hold 16 bytes, and only one follows.
    let truncated = vec![0x12, 0x10, 0x08];
    let status = raw_status(&server, vec![truncated.clone()]).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(status.message().contains("undecodable message"), "{}", status.message());
    // The same after a valid open (field 1: an OpenSession of d=3, 3 rounds, correlated).
    let code = [0x08, 3, 0x10, proto::Basis::Z as u8, 0x18, 3];
    let open_session = [&[0x0a, code.len() as u8][..], &code, &[0x10, proto::DecoderKind::Correlated as u8]].concat();
    let valid_open = [&[0x0a, open_session.len() as u8][..], &open_session].concat();
    let status = raw_status(&server, vec![valid_open, truncated]).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(status.message().contains("undecodable message"), "{}", status.message());
    healthy.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_never_opens_or_goes_idle_ends_with_deadline_exceeded() {
    let timeout = Duration::from_millis(300);
    let options = ServerOptions { handshake_timeout: timeout, idle_timeout: timeout, ..Server::options() };
    let server = Server::start(options);
    let healthy = Healthy::open(&server).await;
    let checks = async {
        let mut client = Credentials::none().connect(&server.grpc).await.unwrap();
        // Never opens: the request stream stays open with nothing in it.
        let (_silent, rx) = mpsc::channel::<proto::DecodeRequest>(1);
        let started = Instant::now();
        let mut responses = client.decode(ReceiverStream::new(rx)).await.unwrap().into_inner();
        let status = tokio::time::timeout(PATIENCE, responses.next()).await.unwrap().unwrap().unwrap_err();
        let waited = started.elapsed();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{}", status.message());
        assert!(status.message().contains("--handshake-timeout 0.3 s"), "{}", status.message());
        assert!(waited >= timeout && waited < timeout * 5, "ended after {waited:?}");
        // Opens, starts a shot, then sends nothing.
        let (tx, rx) = mpsc::channel(8);
        let mut responses = client.decode(ReceiverStream::new(rx)).await.unwrap().into_inner();
        tx.send(open(proto::DecoderKind::Correlated, 3, 3)).await.unwrap();
        assert!(matches!(responses.next().await.unwrap().unwrap().message, Some(Out::Opened(_))));
        let s = shots(3, 1, 42);
        tx.send(shot_messages(&s.per_round[0], 0).remove(0)).await.unwrap();
        let started = Instant::now();
        let status = loop {
            match tokio::time::timeout(PATIENCE, responses.next()).await.unwrap().unwrap() {
                Ok(reply) => assert!(matches!(reply.message, Some(Out::Ack(_))), "{reply:?}"),
                Err(status) => break status,
            }
        };
        let waited = started.elapsed();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{}", status.message());
        assert!(status.message().contains("--idle-timeout 0.3 s"), "{}", status.message());
        assert!(waited < timeout * 5, "ended after {waited:?}");
        // Both slots are free: only the healthy stream may still be open.
        assert!(server.hub.stats.open_streams.load(Ordering::Acquire) <= 1);
        drop(tx);
        // A stream that sends a message every 100 ms, for four idle timeouts
        // and more, is never idle.
        let s = shots(3, 3, 44);
        let want = offline(&s, DecoderKind::Correlated);
        let (tx, rx) = mpsc::channel(8);
        let mut responses = client.decode(ReceiverStream::new(rx)).await.unwrap().into_inner();
        tx.send(open(proto::DecoderKind::Correlated, 3, 3)).await.unwrap();
        for (i, per_round) in s.per_round.iter().enumerate() {
            for msg in shot_messages(per_round, i as u64) {
                tokio::time::sleep(timeout / 3).await;
                tx.send(msg).await.unwrap();
            }
        }
        drop(tx);
        let mut answered = vec![false; want.len()];
        while let Some(reply) = tokio::time::timeout(PATIENCE, responses.next()).await.unwrap() {
            if let Some(Out::Result(r)) = reply.unwrap().message {
                assert_eq!(r.prediction[0] & 1 == 1, want[r.shot as usize], "shot {}", r.shot);
                answered[r.shot as usize] = true;
            }
        }
        assert!(answered.iter().all(|&a| a), "{answered:?}");
    };
    // The healthy stream sends its shots meanwhile: it is never idle.
    tokio::join!(healthy.finish(), checks);
    open_streams_reach(&server, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_shutdown_open_streams_finish_and_an_idle_one_ends_at_the_drain_deadline() {
    let drain = Duration::from_millis(500);
    let mut server = Server::start(ServerOptions { drain_timeout: drain, ..Server::options() });
    let healthy = Healthy::open(&server).await;
    let mut client = Credentials::none().connect(&server.grpc).await.unwrap();
    let (idle_tx, rx) = mpsc::channel(8);
    let mut idle = client.decode(ReceiverStream::new(rx)).await.unwrap().into_inner();
    idle_tx.send(open(proto::DecoderKind::Correlated, 3, 3)).await.unwrap();
    assert!(matches!(idle.next().await.unwrap().unwrap().message, Some(Out::Opened(_))));
    let started = Instant::now();
    server.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A new stream on a connection made before the shutdown is refused:
    // the connection got GOAWAY, so the client's own HTTP/2 layer cancels
    // it (CANCELLED), or it reaches the server, which answers UNAVAILABLE.
    let refused = match client.decode(tokio_stream::iter(vec![open(proto::DecoderKind::Correlated, 3, 3)])).await {
        Err(status) => status,
        Ok(r) => r.into_inner().next().await.unwrap().unwrap_err(),
    };
    assert!(matches!(refused.code(), Code::Unavailable | Code::Cancelled), "{refused:?}");
    assert!(Credentials::none().connect(&server.grpc).await.is_err(), "the listener is closed");
    // A stream open at the shutdown finishes its shots.
    healthy.finish().await;
    let status = tokio::time::timeout(PATIENCE, idle.next()).await.unwrap().unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert!(status.message().contains("the server is shutting down (--drain-timeout 0.5 s)"), "{}", status.message());
    assert!(started.elapsed() >= drain, "ended after {:?}", started.elapsed());
    let served = tokio::task::spawn_blocking(move || {
        server.wait().unwrap();
        server
    });
    let _server = tokio::time::timeout(PATIENCE, served).await.unwrap().unwrap();
    let stopped = started.elapsed();
    assert!(stopped < drain + Duration::from_secs(1), "serving returned {stopped:?} after the shutdown began");
    drop(idle_tx);
}

/// A token file in `dir`, with whitespace around the token.
fn token_file(dir: &std::path::Path, token: &str) -> std::path::PathBuf {
    let path = dir.join("token");
    std::fs::write(&path, format!("  {token}\n")).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_a_token_refuses_calls_without_it() {
    const TOKEN: &str = "qecd-test-token-7f3a";
    let dir = tempfile::tempdir().unwrap();
    let security = Security::load(None, Some(&token_file(dir.path(), TOKEN))).unwrap();
    let server = Server::start_secure(Server::options(), security);
    for credentials in [Credentials::none(), Credentials::none().with_token("not-the-token").unwrap()] {
        let mut client = credentials.connect(&server.grpc).await.unwrap();
        let msgs = vec![open(proto::DecoderKind::Correlated, 3, 3)];
        let status = client.decode(tokio_stream::iter(msgs)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{}", status.message());
        assert!(!status.message().contains(TOKEN), "{}", status.message());
        let status = client.get_stats(proto::GetStatsRequest {}).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{}", status.message());
        let status = client.list_models(proto::ListModelsRequest {}).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{}", status.message());
    }
    assert_eq!(server.hub.stats.open_streams.load(Ordering::Acquire), 0, "no refused stream took a slot");
    let mut client = Credentials::none().with_token(TOKEN).unwrap().connect(&server.grpc).await.unwrap();
    decodes(&mut client).await;
    assert!(client.get_stats(proto::GetStatsRequest {}).await.is_ok());
}

/// Whether a client with `credentials` can make no call at all.
async fn refused(credentials: &Credentials, addr: &str) -> bool {
    let call = async {
        match credentials.connect(addr).await {
            Err(_) => true,
            Ok(mut client) => client.get_stats(proto::GetStatsRequest {}).await.is_err(),
        }
    };
    tokio::time::timeout(PATIENCE, call).await.expect("refused in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_decode_and_with_a_client_ca_only_those_with_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let ca = std::fs::read(&pki.ca).unwrap();
    let identity = (std::fs::read(&pki.client.0).unwrap(), std::fs::read(&pki.client.1).unwrap());
    let trusting = Credentials::none().with_tls(&ca, None);
    let with_certificate = Credentials::none().with_tls(&ca, Some((&identity.0, &identity.1)));

    let files = TlsFiles { cert: pki.server.0.clone(), key: pki.server.1.clone(), client_ca: None };
    let server = Server::start_secure(Server::options(), Security::load(Some(&files), None).unwrap());
    decodes(&mut trusting.connect(&server.grpc).await.unwrap()).await;
    assert!(refused(&Credentials::none(), &server.grpc).await, "a plaintext client is refused");
    drop(server);

    let files = TlsFiles { client_ca: Some(pki.ca.clone()), ..files };
    let server = Server::start_secure(Server::options(), Security::load(Some(&files), None).unwrap());
    assert!(refused(&trusting, &server.grpc).await, "a client without a certificate is refused");
    assert!(refused(&Credentials::none(), &server.grpc).await, "a plaintext client is refused");
    decodes(&mut with_certificate.connect(&server.grpc).await.unwrap()).await;
}

#[test]
fn a_key_that_is_not_the_certificates_fails_at_start_up_naming_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    // The client's key with the server's certificate.
    let files = TlsFiles { cert: pki.server.0.clone(), key: pki.client.1.clone(), client_ca: None };
    let err = format!("{:#}", Security::load(Some(&files), None).err().expect("refused"));
    assert!(err.contains("--tls-cert") && err.contains("server.pem") && err.contains("client.key"), "{err}");
    let files = TlsFiles { client_ca: Some(dir.path().join("no-such-ca.pem")), ..files };
    let err = format!("{:#}", Security::load(Some(&files), None).err().expect("refused"));
    assert!(err.contains("--tls-client-ca") && err.contains("no-such-ca.pem"), "{err}");
}
