//! A DEM from a file, a learned one say, decoding in `qecd sweep
//! --decoder-dem` and `qecd serve --code-dem` as `qecd predict --dem` does
//! (issue 16): the circuit's own DEM from a file changes nothing, another
//! DEM changes the decisions, the sweep's CSV keeps cases decoded with
//! different DEMs apart, the service decodes a code with its file exactly as
//! `qecd predict` does, and bad files or files that fit nothing are refused
//! before anything is written or served.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qecd_grpc::proto;
use qecd_grpc::proto::decode_request::Message as In;
use qecd_grpc::proto::decode_response::Message as Out;
use qecd_sweep::sinter_csv::{StatsRow, parse_csv, read_cases};
use simulator_bridge::formats::read_shots_file;
use simulator_bridge::{Basis, BitLabels, MemoryExperiment, NoiseModel, ResultFormat, RoundLayout, StabilizerLayout};

mod cli_support;
mod common;
use cli_support::{ok, p, qecd};

/// Runs qecd expecting exit status 2 with `needle` in its message.
fn fails(args: &[&str], needle: &str) -> String {
    let o = qecd(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "qecd {args:?} should fail with 2: {err}");
    assert!(err.contains(needle), "qecd {args:?}: expected '{needle}' in: {err}");
    err
}

fn crosstalk() -> String {
    format!("device:{}/fixtures/devices/crosstalk.toml", env!("CARGO_MANIFEST_DIR"))
}

/// `sha256sum`'s hex digest of a file.
fn sha256(path: &Path) -> String {
    let o = Command::new("sha256sum").arg(path).output().expect("sha256sum runs");
    assert!(o.status.success());
    String::from_utf8_lossy(&o.stdout)[..64].to_string()
}

/// Its first 12 hex digits.
fn sha256_prefix(path: &Path) -> String {
    sha256(path)[..12].to_string()
}

/// The circuit's own decoding DEM, written by `qecd sample --dem-out`.
fn own_dem(dir: &Path, name: &str, d: usize, r: usize, noise: &str, p_phys: &str) -> PathBuf {
    let path = dir.join(name);
    let junk = dir.join(format!("{name}.b8"));
    let (d, r) = (d.to_string(), r.to_string());
    ok(&[
        "sample",
        "-d",
        &d,
        "-r",
        &r,
        "--noise",
        noise,
        "--p",
        p_phys,
        "--shots",
        "8",
        "--out",
        p(&junk),
        "--dem-out",
        p(&path),
    ]);
    path
}

/// A sweep of `decoders` at d=3, 3 rounds on `noise`, p=0.003, seeded.
fn sweep(decoders: &str, noise: &str, shots: u64, out: &Path, extra: &[&str]) -> String {
    let shots = shots.to_string();
    let args = [
        "sweep",
        "--decoders",
        decoders,
        "--distances",
        "3",
        "--rounds",
        "3",
        "--noise",
        noise,
        "--p",
        "0.003",
        "--max-shots",
        &shots,
        "--max-errors",
        "1000000000",
        "--threads",
        "2",
        "--seed",
        "7",
        "--out",
        p(out),
    ];
    ok(&[&args[..], extra].concat())
}

fn rows(csv: &Path) -> Vec<StatsRow> {
    parse_csv(&std::fs::read_to_string(csv).unwrap()).unwrap()
}

/// Each decoder's batches as sorted (shots, errors).
fn batches(rows: &[StatsRow], decoder: &str) -> Vec<(u64, u64)> {
    let mut b: Vec<(u64, u64)> = rows.iter().filter(|r| r.decoder == decoder).map(|r| (r.shots, r.errors)).collect();
    b.sort();
    b
}

/// On device shots, the circuit's own DEM given as a file decodes every
/// batch of every decoder exactly as the sweep without it; the CSV records
/// the file and its sha256, under another strong id.
#[test]
fn the_circuits_own_dem_as_a_file_changes_no_count() {
    let tmp = tempfile::tempdir().unwrap();
    let noise = crosstalk();
    let own = own_dem(tmp.path(), "own.dem", 3, 3, &noise, "0.003");
    let (plain, with) = (tmp.path().join("plain.csv"), tmp.path().join("with.csv"));
    sweep("matching,correlated,belief", &noise, 10_000, &plain, &[]);
    let out = sweep("matching,correlated,belief", &noise, 10_000, &with, &["--decoder-dem", p(&own)]);
    let hash = sha256_prefix(&own);
    assert!(out.contains(&format!("decoded with {} (sha256 {hash})", own.display())), "{out}");
    let (plain, with) = (rows(&plain), rows(&with));
    for decoder in ["matching", "correlated", "belief"] {
        let (a, b) = (batches(&plain, decoder), batches(&with, decoder));
        assert_eq!(a.iter().map(|r| r.0).sum::<u64>(), 10_000, "{decoder}");
        assert!(a.iter().map(|r| r.1).sum::<u64>() > 0, "{decoder}: no errors to compare");
        assert_eq!(a, b, "{decoder}: the circuit's own DEM from a file decoded differently");
    }
    for row in &with {
        assert_eq!(row.json_metadata["dem"], "own.dem");
        assert_eq!(row.json_metadata["dem_sha256"], hash.as_str());
        assert_eq!(row.json_metadata["noise"], noise.as_str());
        assert!(plain.iter().all(|r| r.strong_id != row.strong_id));
    }
    assert!(plain.iter().all(|r| r.json_metadata.get("dem").is_none()));
}

/// A DEM's text with every mechanism that flips the observable made
/// `factor` times likelier (at most 0.45): a DEM that misleads matching.
fn favouring_the_observable(text: &str, factor: f64) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        match (trimmed.strip_prefix("error("), trimmed.find(')')) {
            (Some(rest), Some(close)) if trimmed[close..].split_whitespace().any(|t| t == "L0") => {
                let p: f64 = rest[..close - "error(".len()].parse().unwrap();
                out += &format!("error({}){}\n", (p * factor).min(0.45), &trimmed[close + 1..]);
            }
            _ => out += &format!("{line}\n"),
        }
    }
    out
}

/// A DEM learned from device shots decodes the same device shots as a case
/// of its own: it resumes on its own, never merged with the circuit's DEM
/// nor with another file under the same name, and a file that misleads
/// matching shows in the errors; `qecd report` gives each DEM its column.
#[test]
fn a_learned_dem_changes_decoding_and_resumes_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let noise = crosstalk();
    // 20,000 device shots, under a prior of plain SI1000, as a lab has them.
    let exp = tmp.path().join("exp");
    ok(&["sample", "-d", "3", "-r", "3", "--noise", &noise, "--shots", "20000", "--seed", "3", "--out-dir", p(&exp)]);
    let prior = own_dem(tmp.path(), "prior.dem", 3, 3, "si1000", "0.003");
    let prior_circuit = tmp.path().join("prior.stim");
    let x = tmp.path().join("x.b8");
    ok(&["sample", "-d", "3", "-r", "3", "--shots", "8", "--out", p(&x), "--circuit-out", p(&prior_circuit)]);
    std::fs::copy(&prior_circuit, exp.join("circuit_noisy.stim")).unwrap();
    let learned = tmp.path().join("learned.dem");
    ok(&["learn-noise", "--data", p(&exp), "--out", p(&learned)]);
    assert_ne!(std::fs::read_to_string(&learned).unwrap(), std::fs::read_to_string(&prior).unwrap());

    let csv = tmp.path().join("s.csv");
    sweep("correlated", &noise, 20_000, &csv, &[]);
    let plain = rows(&csv);
    sweep("correlated", &noise, 20_000, &csv, &["--decoder-dem", p(&learned)]);
    let after = rows(&csv);
    assert_eq!(&after[..plain.len()], &plain[..], "earlier lines untouched");
    let mine = &after[plain.len()..];
    let id = &mine[0].strong_id;
    assert!(mine.iter().all(|r| &r.strong_id == id) && plain.iter().all(|r| &r.strong_id != id));
    assert_eq!(mine.iter().map(|r| r.shots).sum::<u64>(), 20_000, "the learned DEM's case resumed the plain one");
    assert_eq!(mine[0].json_metadata["dem_sha256"], sha256_prefix(&learned).as_str());

    // The same command again: its case is done.
    let before = std::fs::read_to_string(&csv).unwrap();
    sweep("correlated", &noise, 20_000, &csv, &["--decoder-dem", p(&learned)]);
    assert_eq!(std::fs::read_to_string(&csv).unwrap(), before, "a finished case ran again");

    // Another DEM under the same name is another case, and this one
    // (observable flips 20 times likelier) misleads matching on the same shots.
    let text = std::fs::read_to_string(&learned).unwrap();
    std::fs::write(&learned, favouring_the_observable(&text, 20.0)).unwrap();
    sweep("correlated", &noise, 20_000, &csv, &["--decoder-dem", p(&learned)]);
    let cases = read_cases(&[&csv]).unwrap();
    assert_eq!(cases.len(), 3, "{cases:?}");
    assert!(cases.iter().all(|c| c.shots == 20_000), "{cases:?}");
    assert_ne!(cases[1].json_metadata["dem_sha256"], cases[2].json_metadata["dem_sha256"]);
    assert!(cases[2].errors > 2 * cases[0].errors, "the misleading DEM did not change decoding: {cases:?}");

    let report = ok(&["report", "--in", p(&csv)]);
    for case in &cases[1..] {
        let column = format!("correlated [learned.dem {}]", case.json_metadata["dem_sha256"].as_str().unwrap());
        assert!(report.contains(&column), "no column {column}: {report}");
    }
}

/// A file that is not a DEM, a DEM that fits no case, and two files that
/// fit one case are refused before anything is sampled or written.
#[test]
fn bad_and_unfitting_dems_are_refused_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("s.csv");
    let junk = tmp.path().join("junk.dem");
    std::fs::write(&junk, "error(0.1) D0 D1\nerror(0.2 D2\n").unwrap();
    let d3 = own_dem(tmp.path(), "d3.dem", 3, 3, "si1000", "0.003");
    let d5 = own_dem(tmp.path(), "d5.dem", 5, 3, "si1000", "0.003");
    let copy = tmp.path().join("copy.dem");
    std::fs::copy(&d3, &copy).unwrap();
    let base = [
        "sweep",
        "--decoders",
        "matching,correlated",
        "--distances",
        "3",
        "--rounds",
        "3",
        "--max-shots",
        "1000",
        "--out",
        p(&csv),
        "--decoder-dem",
    ];
    fn with<'a>(base: &[&'a str], dems: &'a str) -> Vec<&'a str> {
        [base, &[dems]].concat()
    }
    fails(&with(&base, p(&junk)), &format!("{}: not a detector error model", junk.display()));
    let missing = tmp.path().join("missing.dem");
    fails(&with(&base, p(&missing)), &missing.display().to_string());
    let e = fails(
        &with(&base, p(&d5)),
        "case d=3 r=3 memory-Z si1000 p=0.003 (24 detectors and 1 observable): no --decoder-dem file fits it",
    );
    assert!(e.contains("d5.dem: it has 72 detectors and 1 observable"), "{e}");
    let e = fails(&with(&base, &format!("{},{}", p(&d3), p(&copy))), "all fit it; give one file per circuit");
    assert!(e.contains("d3.dem") && e.contains("copy.dem"), "{e}");
    assert!(!csv.exists(), "a refused sweep wrote its CSV");
    // A CSV from an earlier run is left as it was.
    ok(&["sweep", "--decoders", "matching", "--distances", "3", "--max-shots", "1000", "--out", p(&csv)]);
    let before = std::fs::read(&csv).unwrap();
    fails(&with(&base, p(&d5)), "no --decoder-dem file fits it");
    assert_eq!(std::fs::read(&csv).unwrap(), before);
    // d=5 with 3 rounds and d=3 with 9 rounds both have 72 detectors: the coordinates tell them apart.
    let d3r9 = own_dem(tmp.path(), "d3r9.dem", 3, 9, "si1000", "0.003");
    let small = |d: &str, r: &str, dems: &str| {
        ["sweep", "--decoders", "matching", "--distances", d, "--rounds", r, "--max-shots", "1000", "--decoder-dem"]
            .into_iter()
            .chain([dems])
            .map(str::to_string)
            .collect::<Vec<String>>()
    };
    let args = small("5", "3", &format!("{},{}", p(&d3r9), p(&d5)));
    let out = ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.contains(&format!("decoded with {} (sha256", d5.display())), "{out}");
    assert!(!out.contains("d3r9.dem"), "{out}");
    let args = small("3", "9", p(&d5));
    let e = fails(&args.iter().map(String::as_str).collect::<Vec<_>>(), "no --decoder-dem file fits it");
    assert!(e.contains("d5.dem: both have 72 detectors and 1 observable, but detector D"), "{e}");
}

/// A `qecd serve` child, killed when dropped.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `qecd serve` with `args` and returns it with its first stdout line.
fn serve(args: &[&str]) -> (Serve, String) {
    let (server, line, _log) = serve_logged(args);
    (server, line)
}

/// What one stream answered: each shot's prediction, answering decoder and
/// fallback flag, and each shadow check's prediction.
#[derive(Default)]
struct Answers {
    results: Vec<Option<(bool, i32, bool)>>,
    checks: Vec<Option<bool>>,
    /// The `dem_sha256` SessionOpened named.
    dem_sha256: Option<String>,
}

/// Streams every shot of `per_round` through one session of `decoder` on
/// d=3, `rounds` rounds (the server's defaults: SI1000, p=0.003).
fn stream(grpc: &str, decoder: proto::DecoderKind, budget_us: u32, per_round: &[Vec<Vec<bool>>]) -> Answers {
    use simulator_bridge::shots::pack_bits as pack;
    use tokio_stream::StreamExt;
    let rounds = per_round[0].len() - 1;
    let code = common::memory_z(3, rounds as u32);
    let open = proto::OpenSession {
        code: Some(code),
        decoder: decoder as i32,
        round_budget_us: budget_us,
        max_backlog: 1 << 30,
        ..Default::default()
    };
    let mut msgs = vec![proto::DecodeRequest { message: Some(In::Open(open)) }];
    for (shot, r) in per_round.iter().enumerate() {
        for (t, bits) in r.iter().enumerate().take(rounds) {
            let round = proto::Round {
                shot: shot as u64,
                round: t as u32,
                num_events: bits.len() as u32,
                events: pack(bits),
                soft: vec![],
            };
            msgs.push(proto::DecodeRequest { message: Some(In::Round(round)) });
        }
        let last = &r[rounds];
        let fin = proto::FinalRound { shot: shot as u64, num_events: last.len() as u32, events: pack(last) };
        msgs.push(proto::DecodeRequest { message: Some(In::Final(fin)) });
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    runtime.block_on(async {
        let mut client = proto::decoder_client::DecoderClient::connect(format!("http://{grpc}")).await.unwrap();
        let mut replies = client.decode(tokio_stream::iter(msgs)).await.unwrap().into_inner();
        let n = per_round.len();
        let mut answers = Answers { results: vec![None; n], checks: vec![None; n], dem_sha256: None };
        while let Some(reply) = replies.next().await {
            match reply.unwrap().message.unwrap() {
                Out::Result(r) => {
                    let slot = &mut answers.results[r.shot as usize];
                    assert!(slot.is_none(), "shot {} answered twice", r.shot);
                    *slot = Some((r.prediction[0] & 1 == 1, r.answered_by, r.fell_back));
                }
                Out::Check(c) => answers.checks[c.shot as usize] = Some(c.baseline_prediction[0] & 1 == 1),
                Out::Failed(f) => panic!("shot {} failed: {}", f.shot, f.message),
                Out::Opened(o) => answers.dem_sha256 = Some(o.dem_sha256),
                _ => {}
            }
        }
        answers
    })
}

/// The shots of a b8 file of d=3 memory-Z detection events, `rounds`
/// rounds, each split into its rounds' events.
fn per_round(events: &Path, rounds: usize) -> Vec<Vec<Vec<bool>>> {
    let circuit =
        MemoryExperiment::new(3, rounds, Basis::Z).unwrap().noisy_circuit(&NoiseModel::Si1000 { p: 0.003 }).unwrap();
    let layout = StabilizerLayout::from_circuit(&circuit, Basis::Z).unwrap();
    let shots = read_shots_file(events, ResultFormat::B8, BitLabels::detectors(layout.detectors.len())).unwrap();
    let split = RoundLayout::new(&layout);
    (0..shots.num_shots()).map(|s| split.split(&shots, s)).collect()
}

/// `qecd predict`'s predictions of `events` with `dem` and `decoder`.
fn predict(dir: &Path, dem: &Path, events: &Path, decoder: &str) -> Vec<bool> {
    let out = dir.join(format!("{decoder}-{}.01", dem.file_stem().unwrap().to_string_lossy()));
    ok(&["predict", "--dem", p(dem), "--in", p(events), "--in-format", "b8", "--out", p(&out), "--decoder", decoder]);
    std::fs::read_to_string(&out).unwrap().lines().map(|l| l == "1").collect()
}

/// A code served with `--code-dem` decodes as `qecd predict --dem` does with
/// that file, in every decoder that uses a DEM: matching, correlated
/// matching, neural-matching, the neural decoder's fallback and its shadow
/// check. The file is not the circuit's DEM, and the circuit's would decide
/// some shots otherwise.
#[test]
fn serve_decodes_a_code_with_its_dem_as_predict_does() {
    let tmp = tempfile::tempdir().unwrap();
    let rounds = 5;
    // Uniform depolarizing noise weighs the code's graph unlike SI1000.
    let other = own_dem(tmp.path(), "other.dem", 3, rounds, "depolarizing", "0.003");
    let own = own_dem(tmp.path(), "own.dem", 3, rounds, "si1000", "0.003");
    let events = tmp.path().join("dets.b8");
    ok(&["sample", "-d", "3", "-r", "5", "--p", "0.01", "--shots", "400", "--seed", "9", "--out", p(&events)]);

    let (server, line) = serve(&["--code-dem", &format!("d=3,rounds=5={}", p(&other)), "--prebuild", "d=3,rounds=5"]);
    let hash = sha256_prefix(&other);
    let grpc = line.split("gRPC on ").nth(1).unwrap().split(';').next().unwrap().to_string();
    assert!(
        line.contains(&format!(
            "; code DEMs: d=3,rounds=5,basis=Z,noise=si1000,p=0.003 with {} (sha256 {hash})",
            other.display()
        )),
        "{line}"
    );

    let per_round = per_round(&events, rounds);
    let answered = |a: &Answers| -> Vec<bool> { a.results.iter().map(|r| r.expect("every shot answered").0).collect() };
    for (kind, name) in [
        (proto::DecoderKind::Matching, "matching"),
        (proto::DecoderKind::Correlated, "correlated"),
        (proto::DecoderKind::NeuralMatching, "neural-matching"),
    ] {
        let want = predict(tmp.path(), &other, &events, name);
        // Neural-matching takes only the graph from the DEM (its posterior
        // model gives the weights), and both DEMs have the same graph.
        if kind != proto::DecoderKind::NeuralMatching {
            let theirs = predict(tmp.path(), &own, &events, name);
            let differ = want.iter().zip(&theirs).filter(|(a, b)| a != b).count();
            eprintln!("{name}: the two DEMs decide {differ} of {} shots differently", want.len());
            assert!(differ > 0, "{name}: the two DEMs decide every shot alike; the test shows nothing");
        }
        let a = stream(&grpc, kind, 0, &per_round);
        assert_eq!(a.dem_sha256.as_deref(), Some(sha256(&other).as_str()), "{name}: SessionOpened names the file");
        assert_eq!(answered(&a), want, "{name} served differs from qecd predict --dem {}", other.display());
    }
    let correlated = predict(tmp.path(), &other, &events, "correlated");
    // A 1 µs budget sends every neural shot to correlated matching: the file's.
    let a = stream(&grpc, proto::DecoderKind::Neural, 1, &per_round);
    assert!(a.results.iter().all(|r| matches!(r, Some((_, k, true)) if *k == proto::DecoderKind::Correlated as i32)));
    assert_eq!(answered(&a), correlated);
    // The shadow check runs the file's correlated matching too.
    let a = stream(&grpc, proto::DecoderKind::NeuralChecked, 0, &per_round);
    let checks: Vec<bool> = a.checks.iter().map(|c| c.expect("every shot checked")).collect();
    assert_eq!(checks, correlated);
    drop(server);
}

/// Starts `qecd serve` with `args`; returns it, its first stdout line and
/// its log (stderr) as it grows.
fn serve_logged(args: &[&str]) -> (Serve, String, Arc<Mutex<String>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qecd"))
        .args(["serve", "--listen", "127.0.0.1:0", "--io-threads", "2"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (stderr, grows) = (child.stderr.take().unwrap(), log.clone());
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            grows.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    (Serve(child), line, log)
}

/// Waits (20 s at most) for a log line holding every one of `needles`.
fn wait_for_log(log: &Mutex<String>, needles: &[&str]) -> String {
    let started = Instant::now();
    loop {
        if let Some(line) = log.lock().unwrap().lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return line.to_string();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no log line with {needles:?} in: {}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes `text` to `path` as an operator should: a new file renamed over it.
fn replace_atomically(path: &Path, text: &[u8]) {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// One open matching session on d=3, `rounds` rounds (SI1000, p=0.003), fed as the test goes.
struct Live {
    tx: tokio::sync::mpsc::Sender<proto::DecodeRequest>,
    replies: tonic::Streaming<proto::DecodeResponse>,
    /// The `dem_sha256` its SessionOpened named.
    dem_sha256: String,
}

impl Live {
    async fn open(grpc: &str, rounds: usize) -> Self {
        let code = common::memory_z(3, rounds as u32);
        let open = proto::OpenSession {
            code: Some(code),
            decoder: proto::DecoderKind::Matching as i32,
            max_backlog: 1 << 30,
            ..Default::default()
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1 << 16);
        tx.send(proto::DecodeRequest { message: Some(In::Open(open)) }).await.unwrap();
        let mut client = proto::decoder_client::DecoderClient::connect(format!("http://{grpc}")).await.unwrap();
        let mut replies = client.decode(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
        let first = tokio::time::timeout(Duration::from_secs(30), tokio_stream::StreamExt::next(&mut replies)).await;
        let Some(Out::Opened(opened)) = first.expect("opened within 30 s").expect("a reply").unwrap().message else {
            panic!("the first reply is not SessionOpened");
        };
        Self { tx, replies, dem_sha256: opened.dem_sha256 }
    }

    /// Decodes `shots[ids]` in this session: each one's prediction, in order.
    async fn decode(&mut self, shots: &[Vec<Vec<bool>>], ids: std::ops::Range<usize>) -> Vec<bool> {
        use simulator_bridge::shots::pack_bits as pack;
        use tokio_stream::StreamExt;
        for shot in ids.clone() {
            let r = &shots[shot];
            let rounds = r.len() - 1;
            for (t, bits) in r.iter().enumerate().take(rounds) {
                let (num_events, events) = (bits.len() as u32, pack(bits));
                let round = proto::Round { shot: shot as u64, round: t as u32, num_events, events, soft: vec![] };
                self.tx.send(proto::DecodeRequest { message: Some(In::Round(round)) }).await.unwrap();
            }
            let fin =
                proto::FinalRound { shot: shot as u64, num_events: r[rounds].len() as u32, events: pack(&r[rounds]) };
            self.tx.send(proto::DecodeRequest { message: Some(In::Final(fin)) }).await.unwrap();
        }
        let mut got = vec![None; ids.len()];
        while got.iter().any(Option::is_none) {
            let reply = tokio::time::timeout(Duration::from_secs(30), self.replies.next()).await;
            match reply.expect("answers within 30 s").expect("the stream goes on").unwrap().message.unwrap() {
                Out::Result(r) => {
                    let slot = &mut got[r.shot as usize - ids.start];
                    assert!(slot.is_none(), "shot {} answered twice", r.shot);
                    *slot = Some(r.prediction[0] & 1 == 1);
                }
                Out::Failed(f) => panic!("shot {} failed: {}", f.shot, f.message),
                _ => {}
            }
        }
        got.into_iter().map(Option::unwrap).collect()
    }
}

/// With `--watch-code-dems`, a new DEM written over a code's file decodes
/// the sessions opened after it as `qecd predict --dem` does with the new
/// file, while a session opened before it finishes on the old one; files
/// that do not parse or do not fit the code are refused, with a log line
/// naming them, and the last good DEM keeps serving.
#[test]
fn a_watched_code_dem_is_swapped_for_new_sessions_and_bad_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let rounds = 5;
    let old = own_dem(tmp.path(), "old.dem", 3, rounds, "depolarizing", "0.003");
    let new = own_dem(tmp.path(), "new.dem", 3, rounds, "si1000", "0.003");
    let misfit = own_dem(tmp.path(), "misfit.dem", 3, 3, "si1000", "0.003");
    let events = tmp.path().join("dets.b8");
    ok(&["sample", "-d", "3", "-r", "5", "--p", "0.01", "--shots", "400", "--seed", "9", "--out", p(&events)]);
    let (want_old, want_new) =
        (predict(tmp.path(), &old, &events, "matching"), predict(tmp.path(), &new, &events, "matching"));
    let differ = want_old.iter().zip(&want_new).filter(|(a, b)| a != b).count();
    eprintln!("matching: the two DEMs decide {differ} of {} shots differently", want_old.len());
    assert!(differ > 0, "the two DEMs decide every shot alike; the test shows nothing");
    let shots = per_round(&events, rounds);

    let served = tmp.path().join("served.dem");
    std::fs::copy(&old, &served).unwrap();
    let code = format!("d=3,rounds=5={}", p(&served));
    let (server, line, log) = serve_logged(&["--code-dem", &code, "--watch-code-dems", "--prebuild", "d=3,rounds=5"]);
    let grpc = line.split("gRPC on ").nth(1).unwrap().split(';').next().unwrap().to_string();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let mut before = Live::open(&grpc, rounds).await;
        assert_eq!(before.dem_sha256, sha256(&old), "SessionOpened names the start-up file");
        assert_eq!(before.decode(&shots, 0..200).await, want_old[..200], "the start-up file");

        replace_atomically(&served, &std::fs::read(&new).unwrap());
        let swapped = format!("{} (sha256 {})", served.display(), sha256_prefix(&new));
        wait_for_log(&log, &["the code decodes new sessions with its new DEM", &swapped]);
        let mut after = Live::open(&grpc, rounds).await;
        assert_eq!(after.dem_sha256, sha256(&new), "SessionOpened names the new file");
        assert_eq!(after.decode(&shots, 0..400).await, want_new, "a session opened after the swap");
        assert_eq!(before.decode(&shots, 200..400).await, want_old[200..], "the session opened before the swap");

        replace_atomically(&served, &std::fs::read(&misfit).unwrap());
        wait_for_log(&log, &["refused a code's DEM", &served.display().to_string(), "does not fit the code's circuit"]);
        replace_atomically(&served, b"not a dem\n");
        wait_for_log(&log, &["refused a code's DEM", "not a detector error model"]);
        let mut last = Live::open(&grpc, rounds).await;
        assert_eq!(last.dem_sha256, sha256(&new), "the refused files are not named");
        assert_eq!(last.decode(&shots, 0..400).await, want_new, "the last good DEM keeps serving");
    });
    assert_eq!(log.lock().unwrap().matches("the code decodes new sessions with its new DEM").count(), 1);
    drop(server);
}

/// Waits for a `qecd serve` that must fail at start-up; its stderr.
fn start_up_failure(args: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qecd"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("qecd serve {args:?} did not fail at start-up");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    err
}

#[test]
fn a_bad_code_dem_fails_start_up_naming_the_flag_the_code_and_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("junk.dem");
    std::fs::write(&junk, "not a dem\n").unwrap();
    let d5 = own_dem(tmp.path(), "d5.dem", 5, 3, "si1000", "0.003");
    let d3 = own_dem(tmp.path(), "d3.dem", 3, 3, "si1000", "0.003");
    let flag = |file: &Path| format!("--code-dem d=3,rounds=3,basis=Z,noise=si1000,p=0.003={}", file.display());
    let err = start_up_failure(&["--code-dem", &format!("d=3,rounds=3={}", p(&junk))]);
    assert!(err.contains(&format!("error: {}: {}: not a detector error model", flag(&junk), junk.display())), "{err}");
    let err = start_up_failure(&["--code-dem", &format!("d=3,rounds=3={}", p(&d5))]);
    assert!(err.contains(&flag(&d5)), "{err}");
    assert!(
        err.contains("does not fit the code's circuit: it has 72 detectors and 1 observable, the circuit 24"),
        "{err}"
    );
    let twice = format!("d=3,rounds=3={}", p(&d3));
    let err = start_up_failure(&["--code-dem", &twice, "--code-dem", &twice]);
    assert!(err.contains("the code already has a DEM"), "{err}");
    let err = start_up_failure(&["--code-dem", "d=3,rounds=3"]);
    assert!(err.contains("is not CODE=FILE"), "{err}");
}

/// `qecd replay --dem FILE` checks a bridge that decodes its code with
/// `--code-dem` against matching with that file: every answer agrees. Without
/// `--dem` replay checks against the circuit's own DEM, and the answers that
/// the file decides differently are reported as differing.
#[test]
fn replay_checks_a_code_dem_server_against_the_same_file() {
    let tmp = tempfile::tempdir().unwrap();
    let other = own_dem(tmp.path(), "other.dem", 3, 5, "depolarizing", "0.003");
    let exp = tmp.path().join("exp");
    ok(&["sample", "-d", "3", "-r", "5", "--p", "0.01", "--shots", "400", "--seed", "9", "--out-dir", p(&exp)]);
    let (_server, line) = serve(&[
        "--code-dem",
        &format!("d=3,rounds=5={}", p(&other)),
        "--prebuild",
        "d=3,rounds=5",
        "--bridge-listen",
        "127.0.0.1:0",
    ]);
    let bridge = line.split("bridge on ").nth(1).unwrap().split(';').next().unwrap().trim().to_string();
    let replay = |extra: &[&str]| {
        let mut args = vec!["replay", "--dir", p(&exp), "--addr", &bridge, "--decoder", "matching"];
        args.extend_from_slice(extra);
        qecd(&args)
    };
    let with = replay(&["--dem", p(&other)]);
    let out = String::from_utf8_lossy(&with.stdout);
    assert_eq!(with.status.code(), Some(0), "{out}\n{}", String::from_utf8_lossy(&with.stderr));
    let without = replay(&[]);
    let err = String::from_utf8_lossy(&without.stderr);
    assert_eq!(without.status.code(), Some(1), "{err}");
    assert!(err.contains("answers differ from offline decoding"), "{err}");

    let d5 = own_dem(tmp.path(), "d5.dem", 5, 3, "si1000", "0.003");
    let misfit = replay(&["--dem", p(&d5)]);
    let err = String::from_utf8_lossy(&misfit.stderr);
    assert!(!misfit.status.success() && err.contains("--dem") && err.contains("d5.dem"), "{err}");
}
