//! The FPGA bridge: connection limit, handshake and idle timeouts, drain, TLS.
//! Each case bounds its own time, and a healthy bridge stream beside it
//! keeps getting every answer, as offline decoding gives it.

use std::net::{SocketAddr, TcpStream};
use std::ops::Range;

use std::time::{Duration, Instant};

use decoder::DecoderKind;
use frame_codec::{Basis, DecoderChoice, ErrorCode, Events, Frame, Message, Open, StreamId};
use qecd_service::bridge::{ClientTls, FrameSink, FrameSource, connect, connect_tls};
use qecd_service::{ServerOptions, TlsFiles};
use simulator_bridge::shots::{pack_bits, unpack_bits};

use crate::common::{Server, Shots, ZOO_D3, offline, pki, shots};

/// How long a test's client waits for a reply before it gives up.
const PATIENCE: Duration = Duration::from_secs(20);

/// The ERROR frame's code and message.
fn error_of(frame: &Frame) -> (ErrorCode, String) {
    match frame.message().unwrap() {
        Message::Error(e) => (e.code, e.message),
        m => panic!("not an ERROR: {m:?}"),
    }
}

/// The next frame, which must be a connection-level ERROR: its code and message.
fn connection_error(source: &mut FrameSource) -> (ErrorCode, String) {
    let frame = source.next_frame().unwrap().expect("an ERROR frame");
    assert_eq!((frame.stream, frame.shot, frame.round), (0, 0, 0), "{:?}", error_of(&frame));
    error_of(&frame)
}

fn send_events(sink: &mut FrameSink, stream: StreamId, shot: u64, round: u32, bits: &[bool], last: bool) {
    let events = Events::from_packed(pack_bits(bits), bits.len()).unwrap();
    let message = if last { Message::Final(events) } else { Message::Round(events) };
    sink.queue(&message, stream, shot, round).unwrap();
}

/// Sends shots `which` of `s` on stream 1, opening it first (the zoo's d=3 model) when `open`.
fn send_shots(sink: &mut FrameSink, s: &Shots, open: bool, which: Range<usize>) -> std::io::Result<()> {
    if open {
        let open =
            Open { distance: 3, basis: Basis::Z, decoder: DecoderChoice::Neural, budget_us: 0, model: ZOO_D3.into() };
        sink.open(1, open, s.rounds as u32).unwrap();
    }
    for shot in which {
        for (t, bits) in s.per_round[shot].iter().enumerate() {
            send_events(sink, 1, shot as u64, t as u32, bits, t == s.rounds);
        }
    }
    sink.flush()
}

/// Reads stream 1's replies until the bridge closes the connection: each
/// shot's predicted flip of observable 0, once each.
fn answers(source: &mut FrameSource, n: usize) -> Vec<bool> {
    let mut answered = vec![None; n];
    while let Some(frame) = source.next_frame().unwrap() {
        match frame.message().unwrap() {
            Message::Decision(d) => {
                let shot = frame.shot as usize;
                assert!(answered[shot].is_none(), "shot {shot} answered twice");
                answered[shot] = Some(unpack_bits(d.flips.packed(), d.flips.len())[0]);
            }
            Message::Ack(_) => {}
            m => panic!("the healthy stream got {m:?}"),
        }
    }
    answered.into_iter().enumerate().map(|(i, a)| a.unwrap_or_else(|| panic!("shot {i} unanswered"))).collect()
}

/// A whole healthy session on a connection: every shot decoded as offline decoding decodes it.
fn healthy(mut sink: FrameSink, mut source: FrameSource, s: &Shots, want: &[bool]) {
    send_shots(&mut sink, s, true, 0..want.len()).unwrap();
    sink.finish([1]).unwrap();
    assert_eq!(answers(&mut source, want.len()), want);
}

#[test]
fn a_connection_over_the_limit_is_refused_while_the_others_decode() {
    let started = Instant::now();
    let server = Server::with_bridge(ServerOptions { max_bridge_connections: 2, ..Server::options() });
    let s = shots(3, 20, 41);
    let want = offline(&s, DecoderKind::Neural);
    let (sink, source) = connect(server.bridge(), PATIENCE).unwrap();
    let idle = connect(server.bridge(), PATIENCE).unwrap();
    // One thread accepts, in order: the third connection finds two open.
    let (_third_sink, mut third) = connect(server.bridge(), PATIENCE).unwrap();
    let (code, message) = connection_error(&mut third);
    assert_eq!(code, ErrorCode::ResourceExhausted, "{message}");
    assert!(message.contains("2 open connections (--max-bridge-connections 2)"), "{message}");
    assert_eq!(third.next_frame(), Ok(None), "the refused connection is closed");
    healthy(sink, source, &s, &want);
    // A slot freed is taken again (once the bridge has seen the close).
    drop(idle);
    let again = loop {
        let (mut sink, mut source) = connect(server.bridge(), PATIENCE).unwrap();
        // A refused connection may be closed before these bytes are out.
        let sent = send_shots(&mut sink, &s, true, 0..want.len());
        let first = source.next_frame().unwrap().expect("a reply");
        if let Ok(Message::Error(e)) = first.message() {
            assert_eq!(e.code, ErrorCode::ResourceExhausted, "{}", e.message);
            assert!(started.elapsed() < Duration::from_secs(20), "the slot was never freed");
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        sent.unwrap();
        sink.finish([1]).unwrap();
        break source;
    };
    let mut again = again;
    // Its first reply was an ACK; the rest answer every shot.
    assert_eq!(answers(&mut again, want.len()), want);
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
}

#[test]
fn a_connection_that_never_opens_or_falls_silent_is_closed_with_deadline_exceeded() {
    let started = Instant::now();
    let handshake = Duration::from_millis(300);
    let idle = Duration::from_millis(600);
    let options = ServerOptions { handshake_timeout: handshake, idle_timeout: idle, ..Server::options() };
    let server = Server::with_bridge(options);
    let s = shots(3, 20, 41);
    let want = offline(&s, DecoderKind::Neural);

    let (_silent_sink, mut silent) = connect(server.bridge(), PATIENCE).unwrap();
    let connected = Instant::now();
    // A connection that opens a session, answers one shot, starts another and falls silent.
    let (mut quiet_sink, mut quiet) = connect(server.bridge(), PATIENCE).unwrap();
    let open =
        Open { distance: 3, basis: Basis::Z, decoder: DecoderChoice::Correlated, budget_us: 0, model: String::new() };
    quiet_sink.open(5, open, s.rounds as u32).unwrap();
    for (t, bits) in s.per_round[0].iter().enumerate() {
        send_events(&mut quiet_sink, 5, 0, t as u32, bits, t == s.rounds);
    }
    send_events(&mut quiet_sink, 5, 1, 0, &s.per_round[1][0], false);
    quiet_sink.flush().unwrap();
    let last_sent = Instant::now();
    // Meanwhile a healthy connection decodes every shot.
    let (sink, source) = connect(server.bridge(), PATIENCE).unwrap();
    healthy(sink, source, &s, &want);

    let (code, message) = connection_error(&mut silent);
    let waited = connected.elapsed();
    assert_eq!(code, ErrorCode::DeadlineExceeded, "{message}");
    assert!(message.contains("(--handshake-timeout 0.3)"), "{message}");
    assert!(waited >= handshake && waited < Duration::from_secs(3), "the handshake timeout came after {waited:?}");
    assert_eq!(silent.next_frame(), Ok(None), "closed after its ERROR");

    let mut decided = Vec::new();
    let (code, message) = loop {
        let frame = quiet.next_frame().unwrap().expect("replies, then an ERROR");
        match frame.message().unwrap() {
            Message::Ack(_) => {}
            Message::Decision(d) => decided.push((frame.shot, unpack_bits(d.flips.packed(), d.flips.len())[0])),
            Message::Error(_) => {
                assert_eq!((frame.stream, frame.shot), (0, 0));
                break error_of(&frame);
            }
            m => panic!("{m:?}"),
        }
    };
    let waited = last_sent.elapsed();
    assert_eq!(code, ErrorCode::DeadlineExceeded, "{message}");
    assert!(message.contains("(--idle-timeout 0.6)"), "{message}");
    assert!(waited >= idle && waited < Duration::from_secs(5), "the idle timeout came after {waited:?}");
    // Shot 0 was answered before; shot 1, unfinished, has only the ERROR.
    let want_correlated = offline(&s, DecoderKind::Correlated);
    assert_eq!(decided, vec![(0, want_correlated[0])]);
    assert_eq!(quiet.next_frame(), Ok(None), "closed after its ERROR");
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
}

#[test]
fn shutdown_lets_connections_finish_then_ends_the_idle_ones_with_unavailable() {
    let mut server = Server::with_bridge(Server::options());
    let addr = server.bridge();
    let s = shots(3, 20, 41);
    let want = offline(&s, DecoderKind::Neural);
    let (mut idle_sink, mut idle) = connect(addr, PATIENCE).unwrap();
    let open =
        Open { distance: 3, basis: Basis::Z, decoder: DecoderChoice::Correlated, budget_us: 0, model: String::new() };
    idle_sink.open(2, open, s.rounds as u32).unwrap();
    idle_sink.flush().unwrap();
    // A healthy session is open (its first ACK came) when the shutdown begins.
    let (mut sink, mut source) = connect(addr, PATIENCE).unwrap();
    send_shots(&mut sink, &s, true, 0..1).unwrap();
    assert!(matches!(source.next_frame().unwrap().unwrap().message(), Ok(Message::Ack(_))));

    let deadline = Duration::from_millis(500);
    let stopping = std::thread::spawn(move || {
        let started = Instant::now();
        server.shutdown_bridge(deadline);
        (server, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(100));
    let refused = TcpStream::connect_timeout(&addr, Duration::from_secs(2));
    assert!(refused.is_err(), "a connect during the drain was taken");
    // The healthy connection finishes its shots during the drain.
    send_shots(&mut sink, &s, false, 1..want.len()).unwrap();
    sink.finish([1]).unwrap();
    assert_eq!(answers(&mut source, want.len()), want);

    let (code, message) = connection_error(&mut idle);
    assert_eq!(code, ErrorCode::Unavailable, "{message}");
    assert!(message.contains("shutting down (--drain-timeout 0.5)"), "{message}");
    assert_eq!(idle.next_frame(), Ok(None));
    let (_server, took) = stopping.join().unwrap();
    assert!(took >= deadline && took < Duration::from_millis(1500), "shutdown took {took:?}");
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err(), "a connect after shutdown was taken");
}

/// How a connection ends that gets no frame at all for its OPEN and shot
/// (a session would ACK the shot's rounds).
fn refused(mut sink: FrameSink, mut source: FrameSource, s: &Shots) -> String {
    // The writes may fail already: the bridge may have closed the connection.
    let _ = send_shots(&mut sink, s, true, 0..1);
    match source.next_frame() {
        Ok(Some(frame)) => panic!("a refused client got {:?}", frame.message()),
        Ok(None) => "closed".into(),
        Err(e) => e,
    }
}

#[test]
fn the_bridge_speaks_tls_and_with_a_client_ca_asks_for_a_certificate() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let s = shots(3, 20, 41);
    let want = offline(&s, DecoderKind::Neural);
    let files = TlsFiles { cert: pki.server.0.clone(), key: pki.server.1.clone(), client_ca: None };
    let server = Server::with_bridge_tls(Server::options(), &files);
    let trust = ClientTls { ca: pki.ca.clone(), identity: None };
    let tls = |addr: SocketAddr, tls: &ClientTls| connect_tls(addr, "127.0.0.1", PATIENCE, tls);

    let (sink, source) = tls(server.bridge(), &trust).unwrap();
    healthy(sink, source, &s, &want);
    // A plaintext client gets no frame (only the TLS alert): its OPEN is not a TLS handshake.
    let (sink, source) = connect(server.bridge(), PATIENCE).unwrap();
    let why = refused(sink, source, &s);
    assert!(why.contains("bad magic") || why == "closed", "{why}");
    // A client that trusts another CA refuses the bridge.
    let other_dir = dir.path().join("other");
    std::fs::create_dir(&other_dir).unwrap();
    let other = crate::common::pki(&other_dir);
    let e = tls(server.bridge(), &ClientTls { ca: other.ca, identity: None }).map(|_| ()).unwrap_err();
    assert!(format!("{e:#}").contains("certificate"), "{e:#}");

    // Mutual TLS: a client without a certificate the CA signed is refused.
    let files = TlsFiles { client_ca: Some(pki.ca.clone()), ..files };
    let mutual = Server::with_bridge_tls(Server::options(), &files);
    let why = match tls(mutual.bridge(), &trust) {
        Ok((sink, source)) => refused(sink, source, &s),
        Err(e) => format!("{e:#}"),
    };
    assert!(why.contains("CertificateRequired"), "{why}");
    let with_identity = ClientTls { ca: pki.ca.clone(), identity: Some(pki.client.clone()) };
    let (sink, source) = tls(mutual.bridge(), &with_identity).unwrap();
    healthy(sink, source, &s, &want);
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
}
