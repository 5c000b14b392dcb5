//! The gRPC service over loopback with a real tonic client, the server in
//! this process on a free port: streamed shots decode as offline decoding
//! does, every round is acknowledged once and every shot answered once; bad
//! input gets the right status while other streams go on; a client that
//! vanishes mid-shot hurts nobody; shutdown drains open shots. (`qecd serve`
//! itself, SIGTERM included, is tested in tests/cli.rs.)

use decoder::DecoderKind;
use qecd_service::ServerOptions;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

mod common;
use common::{Server, Shots, ZOO_D3, offline, shots};

use proto::decode_request::Message as In;
use proto::decode_response::Message as Out;
use proto::decoder_client::DecoderClient;
use qecd_grpc::proto;
use simulator_bridge::shots::pack_bits as pack;

fn open(kind: proto::DecoderKind, model: &str, rounds: usize, budget_us: u32) -> proto::DecodeRequest {
    // These tests send every message at once: no backlog bound, unless a test sets one.
    open_with_backlog(kind, model, rounds, budget_us, 1 << 30)
}

fn open_with_backlog(
    kind: proto::DecoderKind,
    model: &str,
    rounds: usize,
    budget_us: u32,
    max_backlog: u32,
) -> proto::DecodeRequest {
    let code = common::memory_z(3, rounds as u32);
    let open = proto::OpenSession {
        code: Some(code),
        decoder: kind as i32,
        model: model.into(),
        round_budget_us: budget_us,
        max_backlog,
    };
    proto::DecodeRequest { message: Some(In::Open(open)) }
}

fn round(shot: u64, t: usize, bits: &[bool]) -> proto::DecodeRequest {
    let r = proto::Round { shot, round: t as u32, num_events: bits.len() as u32, events: pack(bits), soft: vec![] };
    proto::DecodeRequest { message: Some(In::Round(r)) }
}

fn final_round(shot: u64, bits: &[bool]) -> proto::DecodeRequest {
    let f = proto::FinalRound { shot, num_events: bits.len() as u32, events: pack(bits) };
    proto::DecodeRequest { message: Some(In::Final(f)) }
}

/// Every message of a stream of all `shots`, rounds interleaved across shots.
fn all_messages(s: &Shots) -> Vec<proto::DecodeRequest> {
    let mut msgs = Vec::new();
    for t in 0..s.rounds {
        for (shot, r) in s.per_round.iter().enumerate() {
            msgs.push(round(shot as u64, t, &r[t]));
        }
    }
    for (shot, r) in s.per_round.iter().enumerate() {
        msgs.push(final_round(shot as u64, r.last().unwrap()));
    }
    msgs
}

/// What a stream answered.
#[derive(Default)]
struct Answers {
    acks: Vec<proto::RoundAck>,
    results: Vec<proto::ShotResult>,
    checks: Vec<proto::BaselineCheck>,
    status: Option<tonic::Status>,
}

async fn connect(server: &Server) -> DecoderClient<tonic::transport::Channel> {
    DecoderClient::connect(format!("http://{}", server.grpc)).await.unwrap()
}

async fn run(
    client: &mut DecoderClient<tonic::transport::Channel>,
    msgs: Vec<proto::DecodeRequest>,
) -> Result<Answers, tonic::Status> {
    let stream = tokio_stream::iter(msgs);
    let mut responses = client.decode(stream).await?.into_inner();
    let mut answers = Answers::default();
    loop {
        match responses.next().await {
            None => break,
            Some(Ok(r)) => match r.message.unwrap() {
                Out::Opened(o) => {
                    assert_eq!((o.first_round_events, o.round_events, o.final_round_events), (4, 8, 4));
                    assert_eq!(o.dem_sha256, "", "no --code-dem: the circuit's own DEM, no file to name");
                }
                Out::Ack(a) => answers.acks.push(a),
                Out::Result(r) => answers.results.push(r),
                Out::Check(c) => answers.checks.push(c),
                Out::Failed(f) => panic!("shot {} failed: {}", f.shot, f.message),
            },
            Some(Err(status)) => {
                answers.status = Some(status);
                break;
            }
        }
    }
    Ok(answers)
}

/// Each round acknowledged once, each shot answered once, with offline's predictions.
fn check_exactly_once(s: &Shots, a: &Answers, want: &[bool], answered_by: proto::DecoderKind) {
    assert!(a.status.is_none(), "{:?}", a.status);
    let n = s.per_round.len();
    let mut acks = vec![0; n * s.rounds];
    for ack in &a.acks {
        acks[ack.shot as usize * s.rounds + ack.round as usize] += 1;
    }
    assert!(acks.iter().all(|&c| c == 1), "rounds not acknowledged exactly once");
    let mut seen = vec![false; n];
    for r in &a.results {
        assert!(!seen[r.shot as usize], "shot {} answered twice", r.shot);
        seen[r.shot as usize] = true;
        assert_eq!(r.prediction[0] & 1 == 1, want[r.shot as usize], "shot {}", r.shot);
        assert_eq!(r.answered_by, answered_by as i32, "shot {}: {}", r.shot, r.fallback_reason);
        assert!(r.confidence > 0.4 && r.confidence <= 1.0);
        assert!(r.decision_latency_ns > 0);
    }
    assert!(seen.iter().all(|&s| s), "shots never answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neural_and_matching_streams_decode_like_offline() {
    let server = Server::start(Server::options());
    let mut client = connect(&server).await;
    let s = shots(5, 300, 21);
    let mut with_open = vec![open(proto::DecoderKind::Neural, ZOO_D3, s.rounds, 0)];
    with_open.extend(all_messages(&s));
    let answers = run(&mut client, with_open).await.unwrap();
    check_exactly_once(&s, &answers, &offline(&s, DecoderKind::Neural), proto::DecoderKind::Neural);
    for (kind, proto_kind) in [
        (DecoderKind::Correlated, proto::DecoderKind::Correlated),
        (DecoderKind::Matching, proto::DecoderKind::Matching),
        (DecoderKind::NeuralMatching, proto::DecoderKind::NeuralMatching),
    ] {
        let mut msgs = vec![open(proto_kind, "", s.rounds, 0)];
        msgs.extend(all_messages(&s));
        let answers = run(&mut client, msgs).await.unwrap();
        check_exactly_once(&s, &answers, &offline(&s, kind), proto_kind);
    }
    let models = client.list_models(proto::ListModelsRequest {}).await.unwrap().into_inner().models;
    assert!(models.iter().any(|m| m.name == ZOO_D3 && m.distance == 3));
    let stats = client.get_stats(proto::GetStatsRequest {}).await.unwrap().into_inner();
    let neural = stats.decoders.iter().find(|d| d.decoder == proto::DecoderKind::Neural as i32).unwrap();
    assert_eq!(neural.shots, 300);
    assert_eq!(neural.round_latency.as_ref().unwrap().count, 1500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checked_mode_and_budget_fallback() {
    let server = Server::start(Server::options());
    let mut client = connect(&server).await;
    let s = shots(3, 200, 22);
    let mut msgs = vec![open(proto::DecoderKind::NeuralChecked, "", s.rounds, 0)];
    msgs.extend(all_messages(&s));
    let answers = run(&mut client, msgs).await.unwrap();
    check_exactly_once(&s, &answers, &offline(&s, DecoderKind::Neural), proto::DecoderKind::Neural);
    assert_eq!(answers.checks.len(), 200, "one baseline check per shot");
    let correlated = offline(&s, DecoderKind::Correlated);
    for c in &answers.checks {
        assert_eq!(c.baseline_prediction[0] & 1 == 1, correlated[c.shot as usize]);
    }
    let stats = client.get_stats(proto::GetStatsRequest {}).await.unwrap().into_inner();
    assert_eq!(stats.checked_shots, 200);
    assert!(stats.agreement_rate > 0.9, "{}", stats.agreement_rate);

    // A 1 µs budget cannot be met: every shot falls back to correlated matching, and says so.
    let mut msgs = vec![open(proto::DecoderKind::Neural, "", s.rounds, 1)];
    msgs.extend(all_messages(&s));
    let answers = run(&mut client, msgs).await.unwrap();
    check_exactly_once(&s, &answers, &correlated, proto::DecoderKind::Correlated);
    assert!(answers.results.iter().all(|r| r.fell_back && r.fallback_reason.contains("budget")));
    assert!(answers.acks.iter().any(|a| !a.budget_met));
    let stats = client.get_stats(proto::GetStatsRequest {}).await.unwrap().into_inner();
    assert!(stats.budget_misses >= 200 && stats.fallbacks == 200, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_past_its_bound_moves_shots_to_correlated_matching() {
    let server = Server::start(Server::options());
    let mut client = connect(&server).await;
    let s = shots(5, 300, 26);
    let mut msgs = vec![open_with_backlog(proto::DecoderKind::Neural, ZOO_D3, s.rounds, 0, 8)];
    msgs.extend(all_messages(&s));
    let answers = run(&mut client, msgs).await.unwrap();
    assert!(answers.status.is_none(), "{:?}", answers.status);
    let (neural, correlated) = (offline(&s, DecoderKind::Neural), offline(&s, DecoderKind::Correlated));
    let mut fell_back = 0;
    for r in &answers.results {
        if r.fell_back {
            fell_back += 1;
            assert!(r.fallback_reason.contains("backlog"), "{}", r.fallback_reason);
            assert_eq!(r.answered_by, proto::DecoderKind::Correlated as i32);
            assert_eq!(r.prediction[0] & 1 == 1, correlated[r.shot as usize]);
        } else {
            assert_eq!(r.prediction[0] & 1 == 1, neural[r.shot as usize]);
        }
    }
    assert!(fell_back > 0, "a firehose of 1,800 messages against a bound of 8 must overflow");
    assert_eq!(answers.results.len(), 300);
    assert_eq!(answers.acks.len(), 1500);
    let stats = client.get_stats(proto::GetStatsRequest {}).await.unwrap().into_inner();
    assert_eq!(stats.backlog_fallbacks, fell_back);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shots_the_full_engine_refuses_are_answered_by_correlated_matching() {
    // An engine with room for 4 open shots: of 50 shots whose rounds all
    // arrive at once, the ones past that are refused at round 0 and leave for
    // correlated matching, each round still acknowledged once.
    let engine = decoder::StreamOptions { max_open_shots: 4, ..Default::default() };
    let server = Server::start_with(Server::options(), engine);
    let mut client = connect(&server).await;
    let s = shots(3, 50, 27);
    let mut msgs = vec![open(proto::DecoderKind::Neural, ZOO_D3, s.rounds, 0)];
    msgs.extend(all_messages(&s));
    let answers = run(&mut client, msgs).await.unwrap();
    assert!(answers.status.is_none(), "{:?}", answers.status);
    let (neural, correlated) = (offline(&s, DecoderKind::Neural), offline(&s, DecoderKind::Correlated));
    let mut refused = 0;
    let mut answered = vec![0; 50];
    for r in &answers.results {
        answered[r.shot as usize] += 1;
        if r.fell_back {
            refused += 1;
            assert!(r.fallback_reason.contains("the neural engine refused it"), "{}", r.fallback_reason);
            assert_eq!(r.answered_by, proto::DecoderKind::Correlated as i32);
            assert_eq!(r.prediction[0] & 1 == 1, correlated[r.shot as usize], "shot {}", r.shot);
        } else {
            assert_eq!(r.answered_by, proto::DecoderKind::Neural as i32);
            assert_eq!(r.prediction[0] & 1 == 1, neural[r.shot as usize], "shot {}", r.shot);
        }
    }
    assert!(answered.iter().all(|&n| n == 1), "every shot answered exactly once: {answered:?}");
    assert!(refused >= 40, "an engine with room for 4 shots refused only {refused} of 50");
    let mut acks = vec![0; 50 * s.rounds];
    for a in &answers.acks {
        acks[a.shot as usize * s.rounds + a.round as usize] += 1;
    }
    assert!(acks.iter().all(|&n| n == 1), "every round acknowledged exactly once");
    let stats = client.get_stats(proto::GetStatsRequest {}).await.unwrap().into_inner();
    assert_eq!(stats.fallbacks, refused);
}

async fn expect_status(
    client: &mut DecoderClient<tonic::transport::Channel>,
    msgs: Vec<proto::DecodeRequest>,
    code: Code,
    needle: &str,
) {
    let status = match run(client, msgs).await {
        Err(status) => status,
        Ok(a) => a.status.expect("the stream should have failed"),
    };
    assert_eq!(status.code(), code, "{}", status.message());
    assert!(status.message().contains(needle), "'{}' does not mention '{needle}'", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_status_while_others_go_on() {
    let server = Server::start(ServerOptions { max_streams: 3, ..Server::options() });
    let mut client = connect(&server).await;
    let s = shots(3, 50, 23);
    // A healthy stream stays open through everything below.
    let (tx, rx) = mpsc::channel(4096);
    let mut good = connect(&server).await.decode(ReceiverStream::new(rx)).await.unwrap().into_inner();
    tx.send(open(proto::DecoderKind::Neural, ZOO_D3, s.rounds, 0)).await.unwrap();
    assert!(matches!(good.next().await.unwrap().unwrap().message, Some(Out::Opened(_))));
    let first = &s.per_round[0];
    tx.send(round(0, 0, &first[0])).await.unwrap();

    let o = || open(proto::DecoderKind::Neural, ZOO_D3, s.rounds, 0);
    expect_status(&mut client, vec![round(0, 0, &first[0])], Code::FailedPrecondition, "no session opened").await;
    expect_status(&mut client, vec![o(), round(0, 0, &[true; 5])], Code::InvalidArgument, "5 events").await;
    expect_status(&mut client, vec![o(), round(0, 1, &first[1])], Code::FailedPrecondition, "out of order").await;
    expect_status(
        &mut client,
        vec![o(), round(0, 0, &first[0]), round(0, 0, &first[0])],
        Code::FailedPrecondition,
        "out of order",
    )
    .await;
    expect_status(&mut client, vec![o(), final_round(0, &first[3])], Code::FailedPrecondition, "before round 0").await;
    let unknown = open(proto::DecoderKind::Neural, "no_such_model", s.rounds, 0);
    expect_status(&mut client, vec![unknown], Code::NotFound, "no_such_model").await;
    // The zoo has memory-Z models only.
    let memory_x = {
        let mut m = open(proto::DecoderKind::Neural, "", 3, 0);
        if let Some(In::Open(o)) = m.message.as_mut() {
            o.code.as_mut().unwrap().basis = proto::Basis::X as i32;
        }
        m
    };
    expect_status(&mut client, vec![memory_x], Code::NotFound, "no model for d=3 memory-X").await;

    // Two more streams fill the server (3 allowed); the next is refused.
    let (_tx2, rx2) = mpsc::channel::<proto::DecodeRequest>(1);
    let _s2 = connect(&server).await.decode(ReceiverStream::new(rx2)).await.unwrap();
    let (_tx3, rx3) = mpsc::channel::<proto::DecodeRequest>(1);
    let _s3 = connect(&server).await.decode(ReceiverStream::new(rx3)).await.unwrap();
    let refused = connect(&server).await.decode(tokio_stream::iter(vec![o()])).await;
    let status = match refused {
        Err(s) => s,
        Ok(r) => r.into_inner().next().await.unwrap().unwrap_err(),
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{}", status.message());

    // The healthy stream finishes its shot with the right answer.
    for (t, bits) in first.iter().enumerate().take(s.rounds).skip(1) {
        tx.send(round(0, t, bits)).await.unwrap();
    }
    tx.send(final_round(0, &first[s.rounds])).await.unwrap();
    drop(tx);
    let mut result = None;
    while let Some(r) = good.next().await {
        if let Some(Out::Result(r)) = r.unwrap().message {
            result = Some(r);
        }
    }
    let result = result.expect("the healthy stream's shot was answered");
    assert_eq!(result.prediction[0] & 1 == 1, offline(&s, DecoderKind::Neural)[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_vanishing_mid_shot_hurts_nobody() {
    let server = Server::start(Server::options());
    let s = shots(3, 40, 24);
    {
        let (tx, rx) = mpsc::channel(64);
        let mut gone = connect(&server).await.decode(ReceiverStream::new(rx)).await.unwrap().into_inner();
        tx.send(open(proto::DecoderKind::Neural, ZOO_D3, s.rounds, 0)).await.unwrap();
        tx.send(round(7, 0, &s.per_round[7][0])).await.unwrap();
        tx.send(round(7, 1, &s.per_round[7][1])).await.unwrap();
        let _ = gone.next().await;
        // Dropping both halves resets the stream mid-shot.
    }
    let mut client = connect(&server).await;
    let mut msgs = vec![open(proto::DecoderKind::Neural, ZOO_D3, s.rounds, 0)];
    msgs.extend(all_messages(&s));
    let answers = run(&mut client, msgs).await.unwrap();
    check_exactly_once(&s, &answers, &offline(&s, DecoderKind::Neural), proto::DecoderKind::Neural);
    // The vanished stream is closed on the server.
    let mut open_streams = u32::MAX;
    for _ in 0..50 {
        open_streams = client.get_stats(proto::GetStatsRequest {}).await.unwrap().into_inner().open_streams;
        if open_streams == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(open_streams, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_open_shots() {
    let mut server = Server::start(Server::options());
    let s = shots(3, 20, 25);
    let (tx, rx) = mpsc::channel(4096);
    let mut responses = connect(&server).await.decode(ReceiverStream::new(rx)).await.unwrap().into_inner();
    tx.send(open(proto::DecoderKind::Neural, ZOO_D3, s.rounds, 0)).await.unwrap();
    for (shot, r) in s.per_round.iter().enumerate() {
        tx.send(round(shot as u64, 0, &r[0])).await.unwrap();
    }
    // Wait until the server has seen the rounds, then ask it to stop.
    let mut acks = 0;
    while acks < s.per_round.len() {
        if let Some(Out::Ack(_)) = responses.next().await.unwrap().unwrap().message {
            acks += 1;
        }
    }
    server.begin_shutdown();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // The open shots still finish.
    for msg in all_messages(&s).into_iter().skip(s.per_round.len()) {
        tx.send(msg).await.unwrap();
    }
    drop(tx);
    let mut results = 0;
    while let Some(r) = responses.next().await {
        if let Some(Out::Result(_)) = r.unwrap().message {
            results += 1;
        }
    }
    assert_eq!(results, s.per_round.len());
    server.wait().unwrap();
}
