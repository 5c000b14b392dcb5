//! The `qecd` binary end to end: round trips through files, and bad input
//! giving exit status 2, a message naming the problem, and no output file.

use std::path::PathBuf;
use std::process::{Command, Output};

mod cli_support;
use cli_support::{p, qecd};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs qecd expecting failure: exit status 2, `needle` in the message, and
/// none of `outputs` created.
fn fails(args: &[&str], needle: &str, outputs: &[&PathBuf]) {
    let o = qecd(args);
    assert_eq!(o.status.code(), Some(2), "qecd {args:?} should fail with 2; stderr: {}", stderr(&o));
    assert!(stderr(&o).contains(needle), "qecd {args:?}: expected '{needle}' in: {}", stderr(&o));
    for out in outputs {
        assert!(!out.exists(), "qecd {args:?} left {} behind", out.display());
    }
    let dir = outputs.first().and_then(|o| o.parent());
    if let Some(dir) = dir.filter(|d| d.exists()) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.starts_with(".qecd-partial"), "temporary file {name} left behind");
        }
    }
}

#[test]
fn sample_then_predict_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (dets, obs, dem, pred, conf) = (
        dir.path().join("dets.b8"),
        dir.path().join("obs.01"),
        dir.path().join("model.dem"),
        dir.path().join("pred.01"),
        dir.path().join("conf.txt"),
    );
    let o = qecd(&[
        "sample",
        "--distance",
        "3",
        "--rounds",
        "3",
        "--p",
        "0.003",
        "--shots",
        "2000",
        "--seed",
        "5",
        "--out",
        p(&dets),
        "--out-format",
        "b8",
        "--obs-out",
        p(&obs),
        "--dem-out",
        p(&dem),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::metadata(&dets).unwrap().len(), 2000 * 3); // 24 detectors = 3 bytes
    assert_eq!(std::fs::read_to_string(&obs).unwrap().lines().count(), 2000);
    let o = qecd(&[
        "predict",
        "--dem",
        p(&dem),
        "--in",
        p(&dets),
        "--in-format",
        "b8",
        "--out",
        p(&pred),
        "--out-format",
        "01",
        "--decoder",
        "correlated",
        "--confidence-out",
        p(&conf),
        "--obs-in",
        p(&obs),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report = String::from_utf8_lossy(&o.stdout);
    let errors: usize = report.split_whitespace().next().unwrap().parse().unwrap();
    assert!(errors < 200, "{report}");
    assert_eq!(std::fs::read_to_string(&pred).unwrap().lines().count(), 2000);
    let confidence: Vec<f64> = std::fs::read_to_string(&conf).unwrap().lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(confidence.len(), 2000);
    assert!(confidence.iter().all(|c| (0.0..=1.0).contains(c)));
}

#[test]
fn sample_writes_an_experiment_directory() {
    let dir = tempfile::tempdir().unwrap();
    let exp = dir.path().join("exp");
    let o = qecd(&["sample", "-d", "3", "-r", "2", "--shots", "100", "--seed", "1", "--out-dir", p(&exp)]);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [
        "circuit_noisy.stim",
        "circuit_ideal.stim",
        "detection_events.b8",
        "obs_flips_actual.01",
        "circuit_detector_error_model.dem",
        "metadata.json",
    ] {
        assert!(exp.join(f).is_file(), "{f} missing");
    }
    fails(&["sample", "--shots", "10", "--out-dir", p(&exp)], "refusing to overwrite", &[]);
}

#[test]
fn bad_b8_size_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (dem, dets, pred) = (dir.path().join("m.dem"), dir.path().join("bad.b8"), dir.path().join("pred.01"));
    let o = qecd(&[
        "sample",
        "-d",
        "3",
        "--shots",
        "10",
        "--seed",
        "1",
        "--out",
        p(&dir.path().join("x.b8")),
        "--dem-out",
        p(&dem),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::write(&dets, [0u8; 7]).unwrap(); // 24 detectors → 3 bytes per shot
    fails(
        &["predict", "--dem", p(&dem), "--in", p(&dets), "--out", p(&pred)],
        "not a multiple of the row width",
        &[&pred],
    );
}

#[test]
fn circuit_without_coordinates_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (circuit, out) = (dir.path().join("c.stim"), dir.path().join("out.b8"));
    std::fs::write(&circuit, "X_ERROR(0.1) 0\nM 0\nDETECTOR rec[-1]\nOBSERVABLE_INCLUDE(0) rec[-1]\n").unwrap();
    fails(&["sample", "--circuit", p(&circuit), "--shots", "10", "--out", p(&out)], "needs (x, y, t)", &[&out]);
}

#[test]
fn bad_parameters_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.b8");
    let o = p(&out);
    fails(&["sample", "--distance", "4", "--out", o], "odd distance", &[&out]);
    fails(&["sample", "--distance", "1", "--out", o], "odd distance", &[&out]);
    fails(&["sample", "--p", "0.7", "--out", o], "outside [0, 0.5]", &[&out]);
    fails(&["sample", "--p", "-0.1", "--out", o], "outside [0, 0.5]", &[&out]);
    fails(&["sample", "--out-format", "b9", "--out", o], "unknown result format 'b9'", &[&out]);
    fails(&["sample", "--out", o, "--shots", "10", "--out-format", "ptb64"], "multiple of 64", &[&out]);
    fails(
        &["predict", "--dem", "nope.dem", "--in", "x", "--in-format", "zz", "--out", o],
        "unknown result format 'zz'",
        &[&out],
    );
    fails(&["sweep", "--distances", "3,6", "--max-shots", "10"], "odd distance", &[]);
    fails(&["sweep", "--decoders", "magic", "--max-shots", "10"], "unknown decoder 'magic'", &[]);
}

#[test]
fn sweep_appends_resumes_and_shards_concatenate() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("stats.csv");
    let args = |extra: &[&str]| {
        let mut a = vec![
            "sweep",
            "--decoders",
            "matching,correlated",
            "--distances",
            "3",
            "--p",
            "0.005",
            "--max-errors",
            "1000000",
            "--seed",
            "4",
            "--out",
            p(&csv),
        ];
        a.extend_from_slice(extra);
        qecd(&a)
    };
    let o = args(&["--max-shots", "3000"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(
        text.starts_with("     shots,    errors,  discards, seconds,decoder,strong_id,json_metadata,custom_counts\n")
    );
    let shots = |t: &str, decoder: &str| -> u64 {
        t.lines()
            .skip(1)
            .filter(|l| l.contains(&format!(",{decoder},")))
            .map(|l| l.split(',').next().unwrap().trim().parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(shots(&text, "matching"), 3000);
    assert!(
        text.contains(
            r#""{""basis"":""Z"",""d"":3,""decoder"":""matching"",""noise"":""si1000"",""p"":0.005,""r"":3}""#
        ),
        "{text}"
    );
    // Resuming with a larger budget only tops up.
    let o = args(&["--max-shots", "5000"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(shots(&text, "matching"), 5000);
    assert_eq!(shots(&text, "correlated"), 5000);
    assert_eq!(text.matches("shots,").count(), 1, "one header");
    // Two shards, concatenated, cover both cases once.
    let (a, b) = (dir.path().join("a.csv"), dir.path().join("b.csv"));
    for (shard, path) in [("0/2", &a), ("1/2", &b)] {
        let o = qecd(&[
            "sweep",
            "--distances",
            "3",
            "--p",
            "0.005",
            "--max-shots",
            "1000",
            "--shard",
            shard,
            "--out",
            p(path),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let both = std::fs::read_to_string(&a).unwrap() + &std::fs::read_to_string(&b).unwrap();
    assert_eq!(shots(&both, "matching"), 1000);
    assert_eq!(shots(&both, "correlated"), 1000);
    let merged = dir.path().join("merged.csv");
    std::fs::write(&merged, both).unwrap();
    let png = dir.path().join("ler.png");
    let o = qecd(&["plot", "--in", p(&merged), "--out", p(&png)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(&std::fs::read(&png).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
    // A file that is not a sinter CSV is never appended to.
    let junk = dir.path().join("junk.csv");
    std::fs::write(&junk, "hello\n").unwrap();
    fails(&["sweep", "--distances", "3", "--max-shots", "100", "--out", p(&junk)], "refusing to append", &[]);
    assert_eq!(std::fs::read_to_string(&junk).unwrap(), "hello\n");
}

#[test]
fn sweep_plots_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (csv, png, md) = (dir.path().join("s.csv"), dir.path().join("s.png"), dir.path().join("s.md"));
    let mut sweep = vec!["sweep", "--distances", "3", "--rounds", "3,25", "--p", "0.005", "--max-shots", "1000"];
    sweep.extend_from_slice(&["--seed", "2", "--plot", p(&png)]);
    fails(&sweep, "give --out too", &[&png]);
    sweep.extend_from_slice(&["--out", p(&csv)]);
    let o = qecd(&sweep);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(&std::fs::read(&png).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
    assert!(stderr(&o).contains("(4 cases)"), "{}", stderr(&o));

    let o = qecd(&["report", "--in", p(&csv), "--out", p(&md)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&md).unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), text);
    assert!(text.contains("| matching ÷ correlated |"), "{text}");
    for r in ["3", "25"] {
        let prefix = format!("| Z | si1000 | 0.005 | 3 | {r} | 1000 | ");
        assert!(text.lines().any(|l| l.starts_with(&prefix)), "no row for r={r} in:\n{text}");
    }
    let o = qecd(&["report", "--in", p(&csv), "--by", "rounds"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && out.contains("| correlated | Z | si1000 | 0.005 | 3 | 3 | 1000 |"), "{out}");
    assert!(out.lines().filter(|l| l.ends_with("| (reference) |")).count() == 2, "{out}");
    let rounds_png = dir.path().join("rounds.png");
    let o = qecd(&["plot", "--x", "rounds", "--in", p(&csv), "--out", p(&rounds_png)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(&std::fs::read(&rounds_png).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
    let missing = dir.path().join("missing.csv");
    fails(&["report", "--in", p(&missing), "--out", p(&dir.path().join("m.md"))], "missing.csv", &[]);
}

#[test]
fn demo_streams_through_grpc_and_prints_its_table() {
    let o = qecd(&["demo", "--shots", "300", "--window", "8"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    assert!(out.contains("decoding server on 127.0.0.1:"), "{out}");
    // One table row per distance, each with the neural and the correlated LER.
    for d in [" 3  3 d3_z_si1000_p003", " 5  5 "] {
        assert!(out.lines().any(|l| l.starts_with(d) && l.contains("% (")), "no row '{d}' in:\n{out}");
    }
    assert!(out.contains("correlated matching agreed with the neural decoder"), "{out}");
}

#[test]
fn load_echo_measures_the_transport_floor() {
    let o = qecd(&["load", "--echo", "--streams", "2", "--seconds", "1", "--distances", "3", "--runtime-threads", "1"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    assert!(out.contains("transport floor: a tonic echo service, no decoding"), "{out}");
    // d, decoder, streams, shots, lost, dup, dup acks, LER/shot, then the latencies.
    let row: Vec<&str> =
        out.lines().find(|l| l.starts_with(" 3 echo")).expect("an echo row").split_whitespace().collect();
    assert_eq!(row[2], "2", "{out}");
    assert!(row[3].parse::<u64>().unwrap() > 0, "no shot answered: {out}");
    assert_eq!(&row[4..8], ["0", "0", "0", "-"], "lost, dup, dup acks and LER: {out}");
    fails(&["load", "--echo", "--addr", "http://127.0.0.1:1"], "cannot be used with", &[]);
}

#[test]
fn serve_prints_its_addresses_logs_through_tracing_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader, Read};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_qecd"))
        .args(["serve", "--listen", "127.0.0.1:0", "--bridge-listen", "127.0.0.1:0"])
        .env("QECD_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("qecd serve: gRPC on 127.0.0.1:") && line.contains("; bridge on 127.0.0.1:"), "{line}");
    assert!(line.contains("d3_z_si1000_p003"), "{line}");
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let mut logs = String::new();
    child.stderr.take().unwrap().read_to_string(&mut logs).unwrap();
    assert!(logs.contains("INFO") && logs.contains("shutting down"), "{logs}");
}

#[test]
fn serve_and_load_refuse_bad_arguments() {
    fails(&["serve", "--listen", "127.0.0.1:0", "--models", "/no/such/dir"], "/no/such/dir", &[]);
    let empty = tempfile::tempdir().unwrap();
    fails(&["serve", "--listen", "127.0.0.1:0", "--models", p(empty.path())], "no .safetensors", &[]);
    // Without a GPU (or a build without CUDA), asking for one says why.
    if std::process::Command::new("nvidia-smi").arg("-L").output().map_or(true, |o| !o.status.success()) {
        fails(&["serve", "--listen", "127.0.0.1:0", "--device", "cuda"], "the CUDA backend is unavailable", &[]);
    }
    fails(&["serve", "--listen", "127.0.0.1:0", "--device", "gpu"], "expected cpu, cuda or cuda:N", &[]);
    fails(&["load", "--streams", "0"], "must be positive", &[]);
    fails(&["demo", "--shots", "0"], "must be positive", &[]);
}

#[test]
fn sweep_uses_the_built_in_zoo_and_names_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("stats.csv");
    let o = qecd(&[
        "sweep",
        "--decoders",
        "neural,correlated",
        "--distances",
        "3",
        "--rounds",
        "d",
        "--max-shots",
        "2000",
        "--seed",
        "5",
        "--out",
        p(&csv),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(text.contains("d3_z_si1000_p003.safetensors") && text.contains("neural"), "{text}");
    // The zoo has memory-Z models only.
    fails(
        &["sweep", "--decoders", "neural", "--distances", "3", "--basis", "x", "--max-shots", "10"],
        "no neural model for d=3 memory-X",
        &[],
    );
}

/// SIGTERM with an idle gRPC stream and an idle bridge session open: both
/// transports stop accepting at once, the idle ones end with UNAVAILABLE
/// after `--drain-timeout`, and the process exits soon after (issue 15).
#[test]
fn serve_drains_idle_streams_within_the_drain_timeout_on_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_qecd"))
        .args(["serve", "--listen", "127.0.0.1:0", "--bridge-listen", "127.0.0.1:0", "--drain-timeout", "1"])
        .args(["--prebuild", "d=3,rounds=3"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let grpc = line.split("gRPC on ").nth(1).unwrap().split(';').next().unwrap().to_string();
    let bridge: std::net::SocketAddr =
        line.split("bridge on ").nth(1).unwrap().split(';').next().unwrap().parse().unwrap();

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    use qecd_grpc::proto;
    use tokio_stream::StreamExt;
    let (tx, mut replies) = runtime.block_on(async {
        let mut client = proto::decoder_client::DecoderClient::connect(format!("http://{grpc}")).await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let code = proto::Code { distance: 3, basis: proto::Basis::Z as i32, rounds: 3, noise: String::new(), p: 0.0 };
        let open = proto::OpenSession {
            code: Some(code),
            decoder: proto::DecoderKind::Correlated as i32,
            ..Default::default()
        };
        tx.send(proto::DecodeRequest { message: Some(proto::decode_request::Message::Open(open)) }).await.unwrap();
        let mut replies = client.decode(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
        let opened = replies.next().await.unwrap().unwrap();
        assert!(matches!(opened.message, Some(proto::decode_response::Message::Opened(_))));
        (tx, replies)
    });
    let (mut sink, mut source) = qecd_service::bridge::connect(bridge, Duration::from_secs(10)).unwrap();
    let open = frame_codec::Open {
        distance: 3,
        basis: frame_codec::Basis::Z,
        decoder: frame_codec::DecoderChoice::Correlated,
        budget_us: 0,
        model: String::new(),
    };
    sink.send(&frame_codec::Message::Open(open), 1, 0, 3).unwrap();

    // The bridge's reply is read as it comes, as an FPGA would: a peer that
    // leaves the closing ERROR unread is cut off.
    let bridge_reply = std::thread::spawn(move || {
        let _sink = sink;
        source.next_frame()
    });
    let started = Instant::now();
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    // New connections are refused at once (give the signal a moment to land).
    std::thread::sleep(Duration::from_millis(200));
    assert!(std::net::TcpStream::connect_timeout(&bridge, Duration::from_secs(1)).is_err(), "the bridge still accepts");
    let status = runtime.block_on(async {
        loop {
            match replies.next().await {
                Some(Ok(_)) => continue,
                Some(Err(status)) => return status,
                None => panic!("the idle stream ended with OK"),
            }
        }
    });
    assert_eq!(status.code(), tonic::Code::Unavailable, "{}", status.message());
    assert!(status.message().contains("--drain-timeout"), "{}", status.message());
    // The idle bridge session gets ERROR UNAVAILABLE; a peer that has not
    // taken it half a second later is cut off, and the process exits. On a
    // loaded machine this test's reader thread can be that slow, and then it
    // sees the reset instead (tests/adversarial/bridge.rs checks the ERROR
    // itself, in-process).
    match bridge_reply.join().unwrap() {
        Ok(frame) => {
            let frame = frame.expect("an ERROR before the bridge closes");
            let frame_codec::Message::Error(e) = frame.message().unwrap() else { panic!("not an ERROR: {frame:?}") };
            assert_eq!(e.code, frame_codec::ErrorCode::Unavailable, "{}", e.message);
        }
        Err(e) => assert!(e.contains("Connection reset by peer"), "the bridge connection ended with {e}"),
    }
    let exit = child.wait().unwrap();
    let took = started.elapsed();
    assert!(exit.success(), "{exit}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(4), "exited after {took:?}");
    drop(tx);
}
