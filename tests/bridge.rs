//! The FPGA bridge over loopback (the server in this process on free
//! ports), spoken by the service's bridge client: streams of one connection decode as
//! offline decoding does, each round acknowledged once and each shot answered
//! once; bad frames get the ERROR code of docs/fpga-bridge.md while the other
//! streams go on; a corrupted frame ends the connection; and `qecd replay`
//! plays an experiment directory and checks every answer.

use std::collections::HashMap;

use std::time::Duration;

use decoder::DecoderKind;
use frame_codec::{Basis, Decision, DecoderChoice, ErrorCode, Events, Frame, Message, Open, StreamId};
use qecd_service::ServerOptions;
use qecd_service::bridge::{FrameSink, FrameSource};
use simulator_bridge::shots::{pack_bits, unpack_bits};

mod common;
use common::{Server, ZOO_D3, offline, shots};

mod cli_support;
use cli_support::qecd;

/// An FPGA's end of a connection, on the service's bridge client.
struct Fpga {
    sink: Option<FrameSink>,
    source: FrameSource,
}

impl Fpga {
    fn connect(server: &Server) -> Self {
        let (sink, source) = qecd_service::bridge::connect(server.bridge(), Duration::from_secs(60)).unwrap();
        Self { sink: Some(sink), source }
    }

    fn sink(&mut self) -> &mut FrameSink {
        self.sink.as_mut().expect("still sending")
    }

    fn send(&mut self, message: &Message, stream: StreamId, shot: u64, round: u32) {
        self.sink().send(message, stream, shot, round).unwrap();
    }

    fn open(&mut self, stream: StreamId, decoder: DecoderChoice, model: &str, rounds: u32) {
        let open = Open { distance: 3, basis: Basis::Z, decoder, budget_us: 0, model: model.into() };
        self.send(&Message::Open(open), stream, 0, rounds);
    }

    fn round(&mut self, stream: StreamId, shot: u64, round: u32, bits: &[bool]) {
        self.send(&Message::Round(Events::from_packed(pack_bits(bits), bits.len()).unwrap()), stream, shot, round);
    }

    fn finish(&mut self, stream: StreamId, shot: u64, round: u32, bits: &[bool]) {
        self.send(&Message::Final(Events::from_packed(pack_bits(bits), bits.len()).unwrap()), stream, shot, round);
    }

    /// CLOSEs `streams` and half-closes the connection.
    fn close(&mut self, streams: &[StreamId]) {
        self.sink.take().expect("still sending").finish(streams.iter().copied()).unwrap();
    }

    /// The next frame from qecd, or `None` once it closed the connection.
    fn next(&mut self) -> Option<Frame> {
        self.source.next_frame().expect("well-formed replies within 60 s")
    }
}

/// A DECISION's predicted flips, one `bool` per observable.
fn flips(d: &Decision) -> Vec<bool> {
    unpack_bits(d.flips.packed(), d.flips.len())
}

/// The ERROR frame's code and message.
fn error_of(frame: &Frame) -> (ErrorCode, String) {
    match frame.message().unwrap() {
        Message::Error(e) => (e.code, e.message),
        m => panic!("not an ERROR: {m:?}"),
    }
}

#[test]
fn streams_of_one_connection_decode_like_offline_exactly_once() {
    // No backlog bound: every frame is sent at once, and every shot must stay neural.
    let server = Server::with_bridge(ServerOptions { max_backlog: 1_000_000, ..Server::options() });
    let s = shots(3, 200, 31);
    let mut fpga = Fpga::connect(&server);
    let (neural, correlated) = (5, 6);
    fpga.open(neural, DecoderChoice::Neural, ZOO_D3, s.rounds as u32);
    fpga.open(correlated, DecoderChoice::Correlated, "", s.rounds as u32);
    for t in 0..s.rounds {
        for (shot, r) in s.per_round.iter().enumerate() {
            for stream in [neural, correlated] {
                fpga.round(stream, shot as u64, t as u32, &r[t]);
            }
        }
    }
    for (shot, r) in s.per_round.iter().enumerate() {
        for stream in [neural, correlated] {
            fpga.finish(stream, shot as u64, s.rounds as u32, r.last().unwrap());
        }
    }
    // Half-close: qecd still answers every shot, then closes its side.
    fpga.close(&[neural, correlated]);

    let mut acks: HashMap<(StreamId, u64, u32), usize> = HashMap::new();
    let mut decisions: HashMap<(StreamId, u64), Vec<Decision>> = HashMap::new();
    while let Some(frame) = fpga.next() {
        match frame.message().unwrap() {
            Message::Ack(_) => *acks.entry((frame.stream, frame.shot, frame.round)).or_default() += 1,
            Message::Decision(d) => {
                assert_eq!(frame.round, s.rounds as u32, "a DECISION repeats the FINAL's round");
                decisions.entry((frame.stream, frame.shot)).or_default().push(d);
            }
            m => panic!("unexpected {m:?} on stream {}", frame.stream),
        }
    }
    let n = s.per_round.len() as u64;
    assert_eq!(acks.len(), 2 * n as usize * s.rounds, "every round of both streams acknowledged");
    assert!(acks.values().all(|&c| c == 1), "rounds acknowledged more than once");
    for (stream, want, by) in [
        (neural, offline(&s, DecoderKind::Neural), DecoderChoice::Neural),
        (correlated, offline(&s, DecoderKind::Correlated), DecoderChoice::Correlated),
    ] {
        for shot in 0..n {
            let d = decisions.get(&(stream, shot)).unwrap_or_else(|| panic!("stream {stream} shot {shot} unanswered"));
            assert_eq!(d.len(), 1, "stream {stream} shot {shot} answered {} times", d.len());
            let d = &d[0];
            assert_eq!(flips(d), vec![want[shot as usize]], "stream {stream} shot {shot}");
            assert_eq!((d.decoder, d.fell_back, d.baseline), (by, false, None), "stream {stream} shot {shot}");
            assert!(d.confidence > 0.4 && d.confidence <= 1.0, "confidence {}", d.confidence);
            assert!(d.latency_ns > 0);
        }
    }
    assert_eq!(decisions.len(), 2 * n as usize);
}

#[test]
fn bad_frames_get_their_error_code_while_other_streams_go_on() {
    let server = Server::with_bridge(Server::options());
    let s = shots(3, 1, 32);
    let shot = &s.per_round[0];
    let mut fpga = Fpga::connect(&server);
    // A healthy stream, open through everything below.
    fpga.open(1, DecoderChoice::Neural, ZOO_D3, 3);
    fpga.round(1, 0, 0, &shot[0]);
    // ROUND before OPEN; the stream's next ROUND gets no second ERROR.
    fpga.round(2, 11, 0, &shot[0]);
    fpga.round(2, 11, 1, &shot[1]);
    // A wrong event count.
    fpga.open(3, DecoderChoice::Neural, ZOO_D3, 3);
    fpga.round(3, 0, 0, &[true; 5]);
    // An unknown model.
    fpga.open(4, DecoderChoice::Neural, "no_such_model", 3);
    // A round out of order.
    fpga.open(6, DecoderChoice::Neural, ZOO_D3, 3);
    fpga.round(6, 0, 0, &shot[0]);
    fpga.round(6, 0, 2, &shot[2]);
    // No rounds per shot in OPEN.
    fpga.open(7, DecoderChoice::Correlated, "", 0);
    // FINAL after 1 of 3 rounds.
    fpga.open(8, DecoderChoice::Correlated, "", 3);
    fpga.round(8, 4, 0, &shot[0]);
    fpga.finish(8, 4, 3, &shot[3]);
    // The healthy stream finishes its shot.
    fpga.round(1, 0, 1, &shot[1]);
    fpga.round(1, 0, 2, &shot[2]);
    fpga.finish(1, 0, 3, &shot[3]);

    let mut errors: HashMap<StreamId, Vec<(u64, u32, ErrorCode, String)>> = HashMap::new();
    let mut healthy = None;
    let mut healthy_acks = 0;
    while healthy.is_none() || errors.len() < 6 {
        let frame = fpga.next().expect("the connection stays open");
        match frame.message().unwrap() {
            Message::Error(e) => {
                errors.entry(frame.stream).or_default().push((frame.shot, frame.round, e.code, e.message))
            }
            Message::Decision(d) if frame.stream == 1 => healthy = Some(d),
            Message::Ack(_) if frame.stream == 1 => healthy_acks += 1,
            Message::Ack(_) => {}
            m => panic!("unexpected {m:?} on stream {}", frame.stream),
        }
    }
    let healthy = healthy.unwrap();
    assert_eq!(flips(&healthy), vec![offline(&s, DecoderKind::Neural)[0]]);
    assert_eq!((healthy.decoder, healthy.fell_back), (DecoderChoice::Neural, false));
    assert_eq!(healthy_acks, 3);
    let expect = |stream: StreamId, shot: u64, round: u32, code: ErrorCode, needle: &str| {
        let got = errors.get(&stream).unwrap_or_else(|| panic!("no ERROR for stream {stream}"));
        assert_eq!(got.len(), 1, "stream {stream}: {got:?}");
        let (s, r, c, message) = &got[0];
        assert_eq!((*s, *r, *c), (shot, round, code), "stream {stream}: {message}");
        assert!(message.contains(needle), "stream {stream}: '{message}' does not mention '{needle}'");
    };
    expect(2, 11, 0, ErrorCode::FailedPrecondition, "not open");
    expect(3, 0, 0, ErrorCode::InvalidArgument, "5 events");
    expect(4, 0, 0, ErrorCode::NotFound, "no_such_model");
    expect(6, 0, 2, ErrorCode::FailedPrecondition, "out of order");
    expect(7, 0, 0, ErrorCode::InvalidArgument, "at least 1");
    expect(8, 4, 3, ErrorCode::FailedPrecondition, "after 1 of 3 rounds");

    // A corrupted CRC ends the connection: one ERROR for the whole of it, then EOF.
    let events = Message::Round(Events::from_packed(pack_bits(&shot[0]), shot[0].len()).unwrap());
    let corrupted = fpga.sink().queue(&events, 1, 1, 0).unwrap();
    let mut out = fpga.sink().queued().to_vec();
    let last = out.len() - 1;
    out[last] ^= 0x40;
    fpga.sink().write_raw(&out).unwrap();
    let frame = fpga.next().expect("an ERROR before the connection closes");
    let (code, message) = error_of(&frame);
    assert_eq!((frame.stream, frame.shot, frame.round), (0, 0, 0));
    assert_eq!(code, ErrorCode::InvalidArgument, "{message}");
    assert!(message.contains("CRC32C") && message.contains(&format!("frame {corrupted} at byte")), "{message}");
    assert!(fpga.next().is_none(), "qecd closes the connection after a framing error");
}

#[test]
fn a_stream_past_the_server_limit_is_refused() {
    let server = Server::with_bridge(ServerOptions { max_streams: 2, ..Server::options() });
    let s = shots(2, 1, 33);
    let mut fpga = Fpga::connect(&server);
    for stream in [1, 2, 3] {
        fpga.open(stream, DecoderChoice::Correlated, "", 2);
    }
    let frame = fpga.next().unwrap();
    let (code, message) = error_of(&frame);
    assert_eq!((frame.stream, code), (3, ErrorCode::ResourceExhausted), "{message}");
    assert!(message.contains("--max-streams 2"), "{message}");
    // The two streams that fit still decode.
    for stream in [1, 2] {
        let r = &s.per_round[0];
        fpga.round(stream, 0, 0, &r[0]);
        fpga.round(stream, 0, 1, &r[1]);
        fpga.finish(stream, 0, 2, &r[2]);
    }
    let want = offline(&s, DecoderKind::Correlated)[0];
    let mut answered = Vec::new();
    while answered.len() < 2 {
        let frame = fpga.next().unwrap();
        if let Message::Decision(d) = frame.message().unwrap() {
            assert_eq!(flips(&d), vec![want]);
            answered.push(frame.stream);
        }
    }
    answered.sort();
    assert_eq!(answered, vec![1, 2]);
}

#[test]
fn replay_plays_an_experiment_in_real_time_and_checks_every_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("exp");
    let dir = dir.to_str().unwrap();
    let sampled = qecd(&["sample", "-d", "3", "-r", "3", "--shots", "2000", "--seed", "34", "--out-dir", dir]);
    assert!(sampled.status.success(), "{}", String::from_utf8_lossy(&sampled.stderr));

    let server = Server::with_bridge(Server::options());
    let replay = qecd(&["replay", "--dir", dir, "--addr", &server.bridge().to_string(), "--round-period-us", "1"]);
    let stdout = String::from_utf8_lossy(&replay.stdout);
    assert_eq!(replay.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&replay.stderr));
    for needle in [
        "2000 shots of d=3 memory-Z, 3 rounds",
        "2000 of 2000 shots answered exactly once; 0 lost, 0 duplicated, 0 not sent; 0 ERROR frames",
        "2000 of 2000 answers equal offline decoding",
        "; 0 differ",
        "acks: 6000 for 6000 rounds sent (0 duplicated)",
    ] {
        assert!(stdout.contains(needle), "'{needle}' missing from:\n{stdout}");
    }
    let percentiles = |name: &str| -> Vec<f64> {
        let line = stdout.lines().find(|l| l.trim_start().starts_with(name)).unwrap_or_else(|| panic!("{stdout}"));
        line.trim_start()[name.len()..].split_whitespace().map(|w| w.parse().unwrap()).collect()
    };
    for (name, count) in [("ACK round trip", 6000.0), ("DECISION round trip", 2000.0), ("DECISION (qecd)", 2000.0)] {
        let [n, p50, p99, p999] = percentiles(name)[..] else { panic!("{name}: {stdout}") };
        assert_eq!(n, count, "{name}");
        assert!(p50 > 0.0 && p50 <= p99 && p99 <= p999, "{name}: {p50} {p99} {p999}");
    }
    // Two streams of plain matching; then neural-matching, whose model steps
    // on each round as it arrives: every answer equals offline decoding.
    let addr = server.bridge().to_string();
    for extra in [&["--decoder", "matching", "--streams", "2"][..], &["--decoder", "neural-matching"]] {
        let mut args = vec!["replay", "--dir", dir, "--addr", &addr, "--shots", "300"];
        args.extend(extra);
        let replay = qecd(&args);
        let stdout = String::from_utf8_lossy(&replay.stdout);
        assert_eq!(replay.status.code(), Some(0), "{args:?}: {stdout}\n{}", String::from_utf8_lossy(&replay.stderr));
        assert!(stdout.contains("300 of 300 shots answered exactly once") && stdout.contains("; 0 differ"), "{stdout}");
    }

    // A server that refuses every stream loses every shot: status 1.
    let full = Server::with_bridge(ServerOptions { max_streams: 0, ..Server::options() });
    let replay = qecd(&["replay", "--dir", dir, "--addr", &full.bridge().to_string(), "--shots", "50"]);
    let stdout = String::from_utf8_lossy(&replay.stdout);
    assert_eq!(replay.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("0 of 50 shots answered exactly once; 50 lost"), "{stdout}");
    assert!(stdout.contains("RESOURCE_EXHAUSTED"), "{stdout}");
    assert!(String::from_utf8_lossy(&replay.stderr).contains("FAILED: 50 shots lost"));

    // Bad input: status 2 and a message naming the problem.
    let missing = tmp.path().join("nowhere");
    for (args, needle) in [
        (vec!["--dir", missing.to_str().unwrap()], "is not a directory"),
        (vec!["--dir", dir, "--decoder", "bogus"], "unknown decoder 'bogus'"),
        (vec!["--dir", dir, "--model", "no_such_model"], "unknown model 'no_such_model'"),
    ] {
        let mut all = vec!["replay", "--addr", &addr];
        all.extend(args);
        let out = qecd(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{all:?}: {stderr}");
        assert!(stderr.contains(needle), "{all:?}: '{stderr}' does not mention '{needle}'");
    }
}
