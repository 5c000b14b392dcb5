//! Models swapped into a running server (LoadModel, and the directory
//! watcher of `qecd serve --watch-models`): a stream opened before a swap
//! answers every shot with the version it opened on while one opened after
//! gets the new version, and the old engine goes when its last session
//! ends; swapped to other weights under the same name, each session decides
//! exactly as offline decoding with the weights its version's hash names,
//! and `qecd load --swap-models` checks the same under load (and fails
//! against a server that decides unlike the file its version names); every
//! neural result names its version; a file that cannot be served is refused
//! with INVALID_ARGUMENT naming it, and the model before it keeps serving;
//! the watcher serves a new file, a changed one and forgets a removed one
//! within seconds.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use decoder::{Decoder, Device, NeuralDecoder, NeuralModel, StreamOptions};
use models::Checkpoint;
use qecd_grpc::proto;
use qecd_service::registry::sha256_hex;
use qecd_service::watch::{POLL, Watcher};
use qecd_service::{Loaded, Models};
use simulator_bridge::shots::pack_bits as pack;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

mod common;
use common::{Server, Shots, ZOO_D3, shots};

use proto::decode_request::Message as In;
use proto::decode_response::Message as Out;
use proto::decoder_client::DecoderClient;

type Client = DecoderClient<tonic::transport::Channel>;

fn zoo_file(stem: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("fixtures/models/{stem}.safetensors"))
}

/// A models directory holding a copy of the zoo's d=3 checkpoint.
fn models_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(zoo_file(ZOO_D3), dir.path().join(format!("{ZOO_D3}.safetensors"))).unwrap();
    dir
}

/// The zoo's d=3 checkpoint with another temperature (so another sha256), saved at `path`.
fn save_variant(path: &Path, temperature: f64) -> String {
    let mut ckpt = Checkpoint::load(&zoo_file(ZOO_D3)).unwrap();
    ckpt.meta.temperature = temperature;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    ckpt.save(path).unwrap();
    sha256_hex(&std::fs::read(path).unwrap())
}

/// `NAME@N:HASH` as the server writes it.
fn version(name: &str, n: u64, sha256: &str) -> String {
    format!("{name}@{n}:{}", &sha256[..12])
}

/// A server of the checkpoints in `dir`, LoadModel confined to it.
fn serve_dir(dir: &Path, security: qecd_grpc::Security) -> Server {
    let loaded = Loaded::all(Some(dir)).unwrap();
    let models = Models::serve(loaded, &StreamOptions::default(), Device::Cpu).unwrap().confined_to(dir).unwrap();
    Server::serving(models, Server::options(), security)
}

async fn connect(server: &Server) -> Client {
    DecoderClient::connect(format!("http://{}", server.grpc)).await.unwrap()
}

async fn load(client: &mut Client, path: &Path) -> Result<proto::LoadModelResponse, tonic::Status> {
    load_as(client, path, "").await
}

/// LoadModel of `path` served as `name` (empty: the file's stem).
async fn load_as(client: &mut Client, path: &Path, name: &str) -> Result<proto::LoadModelResponse, tonic::Status> {
    let request = proto::LoadModelRequest { path: path.display().to_string(), name: name.into() };
    client.load_model(request).await.map(tonic::Response::into_inner)
}

async fn list(client: &mut Client) -> Vec<proto::ModelInfo> {
    client.list_models(proto::ListModelsRequest {}).await.unwrap().into_inner().models
}

/// One open Decode stream of d=3 shots, fed as the test goes.
struct Live {
    tx: mpsc::Sender<proto::DecodeRequest>,
    responses: tonic::Streaming<proto::DecodeResponse>,
    /// What its SessionOpened named.
    version: String,
}

impl Live {
    async fn open(
        client: &mut Client,
        kind: proto::DecoderKind,
        model: &str,
        rounds: usize,
    ) -> Result<Self, tonic::Status> {
        let code = common::memory_z(3, rounds as u32);
        // Every message of a batch goes at once: no backlog bound.
        let open = proto::OpenSession {
            code: Some(code),
            decoder: kind as i32,
            model: model.into(),
            round_budget_us: 0,
            max_backlog: 1 << 30,
        };
        let (tx, rx) = mpsc::channel(4096);
        tx.send(proto::DecodeRequest { message: Some(In::Open(open)) }).await.unwrap();
        let mut responses = client.decode(ReceiverStream::new(rx)).await?.into_inner();
        let version = match responses.next().await.expect("a reply to the open")?.message {
            Some(Out::Opened(o)) => o.model_version,
            other => panic!("the first reply is not SessionOpened: {other:?}"),
        };
        Ok(Self { tx, responses, version })
    }

    /// Plays every shot of `s` with ids from `first`, and returns their results.
    async fn play(&mut self, s: &Shots, first: u64) -> Vec<proto::ShotResult> {
        self.send_rounds(s, first).await;
        self.send_finals(s, first).await;
        self.collect(s, first).await
    }

    /// Sends every round but the final one of each shot of `s`, ids from `first`.
    async fn send_rounds(&mut self, s: &Shots, first: u64) {
        for t in 0..s.rounds {
            for (i, r) in s.per_round.iter().enumerate() {
                let bits = &r[t];
                let round = proto::Round {
                    shot: first + i as u64,
                    round: t as u32,
                    num_events: bits.len() as u32,
                    events: pack(bits),
                    soft: vec![],
                };
                self.tx.send(proto::DecodeRequest { message: Some(In::Round(round)) }).await.unwrap();
            }
        }
    }

    /// Sends the final round of each shot of `s`, ids from `first`.
    async fn send_finals(&mut self, s: &Shots, first: u64) {
        for (i, r) in s.per_round.iter().enumerate() {
            let bits = r.last().unwrap();
            let last = proto::FinalRound { shot: first + i as u64, num_events: bits.len() as u32, events: pack(bits) };
            self.tx.send(proto::DecodeRequest { message: Some(In::Final(last)) }).await.unwrap();
        }
    }

    /// Waits for the results of the shots of `s` with ids from `first`.
    async fn collect(&mut self, s: &Shots, first: u64) -> Vec<proto::ShotResult> {
        let mut results: Vec<proto::ShotResult> = Vec::new();
        while results.len() < s.per_round.len() {
            let reply = tokio::time::timeout(Duration::from_secs(30), self.responses.next())
                .await
                .expect("an answer within 30 s")
                .expect("the stream goes on")
                .unwrap();
            match reply.message {
                Some(Out::Result(r)) => results.push(r),
                Some(Out::Failed(f)) => panic!("shot {} failed: {}", f.shot, f.message),
                _ => {}
            }
        }
        let mut ids: Vec<u64> = results.iter().map(|r| r.shot).collect();
        ids.sort_unstable();
        assert_eq!(ids, (first..first + s.per_round.len() as u64).collect::<Vec<_>>(), "each shot answered once");
        results
    }

    /// Ends the stream and waits for the server to end it too.
    async fn close(self) {
        drop(self.tx);
        let mut responses = self.responses;
        while let Some(reply) = responses.next().await {
            reply.unwrap();
        }
    }
}

/// Every result answered by the neural decoder with `version`.
fn all_answered_by(results: &[proto::ShotResult], version: &str) {
    for r in results {
        assert_eq!(r.answered_by, proto::DecoderKind::Neural as i32, "shot {}: {}", r.shot, r.fallback_reason);
        assert_eq!(r.model_version, version, "shot {}", r.shot);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_keeps_its_version_across_a_swap_and_new_streams_get_the_new_one() {
    let dir = models_dir();
    let server = serve_dir(dir.path(), qecd_grpc::Security::none());
    let mut client = connect(&server).await;
    let old =
        version(ZOO_D3, 1, &sha256_hex(&std::fs::read(dir.path().join(format!("{ZOO_D3}.safetensors"))).unwrap()));
    let s = shots(3, 40, 5);

    let mut before = Live::open(&mut client, proto::DecoderKind::Neural, "", s.rounds).await.unwrap();
    assert_eq!(before.version, old);
    all_answered_by(&before.play(&s, 0).await, &old);
    let old_engine = Arc::downgrade(&server.hub.models.find(None, 3, simulator_bridge::Basis::Z).unwrap().engine);

    let next = dir.path().join("next").join(format!("{ZOO_D3}.safetensors"));
    let sha = save_variant(&next, 1.25);
    let loaded = load(&mut client, &next).await.unwrap();
    let new = version(ZOO_D3, 2, &sha);
    assert_eq!(
        (loaded.name.as_str(), loaded.version.as_str(), loaded.sha256.as_str()),
        (ZOO_D3, new.as_str(), sha.as_str())
    );
    let listed = list(&mut client).await;
    assert_eq!(listed.len(), 1, "the new version replaces the old for new sessions");
    assert_eq!(
        (listed[0].version.as_str(), listed[0].sha256.as_str(), listed[0].temperature),
        (new.as_str(), sha.as_str(), 1.25)
    );

    // The stream opened before the swap answers all its later shots with the old version…
    all_answered_by(&before.play(&s, 1000).await, &old);
    // …while streams opened after it get the new one, by default or by name.
    let mut after = Live::open(&mut client, proto::DecoderKind::Neural, "", s.rounds).await.unwrap();
    assert_eq!(after.version, new);
    all_answered_by(&after.play(&s, 0).await, &new);
    let mut named = Live::open(&mut client, proto::DecoderKind::NeuralChecked, ZOO_D3, s.rounds).await.unwrap();
    assert_eq!(named.version, new);
    all_answered_by(&named.play(&s, 0).await, &new);
    // Matching answers name no model version.
    let mut matching = Live::open(&mut client, proto::DecoderKind::Correlated, "", s.rounds).await.unwrap();
    assert_eq!(matching.version, "");
    let results = matching.play(&s, 0).await;
    assert!(
        results.iter().all(|r| r.model_version.is_empty() && r.answered_by == proto::DecoderKind::Correlated as i32)
    );

    // The old engine lives while its last session does, and goes with it.
    assert!(old_engine.upgrade().is_some(), "the stream opened before the swap still holds the old engine");
    before.close().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while old_engine.upgrade().is_some() {
        assert!(Instant::now() < deadline, "the old engine outlived its last session by 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for live in [after, named, matching] {
        live.close().await;
    }
}

/// A models directory holding a copy of the zoo's d=3 checkpoint, and in
/// finetuned/ (which the server does not load at start) that model
/// fine-tuned on another device: the same code, other weights. The
/// directory and the two files.
fn tuned_dir() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = models_dir();
    let zoo = dir.path().join(format!("{ZOO_D3}.safetensors"));
    let tuned = dir.path().join("finetuned").join("d3_z_crosstalk.safetensors");
    std::fs::create_dir(tuned.parent().unwrap()).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/models/finetuned/d3_z_crosstalk.safetensors");
    std::fs::copy(fixture, &tuned).unwrap();
    (dir, zoo, tuned)
}

fn sha(path: &Path) -> String {
    sha256_hex(&std::fs::read(path).unwrap())
}

/// What the neural decoder decides offline, with the checkpoint at `path`,
/// for each shot of `s`: the prediction bit-packed as on the wire, and the confidence.
fn offline_with(path: &Path, s: &Shots) -> Vec<(Vec<u8>, f64)> {
    let model = Arc::new(NeuralModel::load(path).unwrap());
    let decided = NeuralDecoder::new(model, &s.layout).unwrap().decode_batch(&s.events).unwrap();
    let confidence = decided.confidence.unwrap();
    (0..s.events.num_shots()).map(|i| (pack(&[decided.predictions.get(i, 0)]), confidence[i])).collect()
}

/// Every result answered by the neural decoder with `version`, and deciding
/// shot `first + i` as `offline[i]`, bit for bit.
fn decided_as(results: &[proto::ShotResult], first: u64, version: &str, offline: &[(Vec<u8>, f64)]) {
    all_answered_by(results, version);
    for r in results {
        let (prediction, confidence) = &offline[(r.shot - first) as usize];
        assert_eq!(
            (&r.prediction, r.confidence.to_bits()),
            (prediction, confidence.to_bits()),
            "shot {} answered by {version}: confidence {} against {confidence} offline",
            r.shot,
            r.confidence
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_to_other_weights_each_session_decides_with_the_weights_its_version_names() {
    let (dir, zoo, tuned) = tuned_dir();
    let server = serve_dir(dir.path(), qecd_grpc::Security::none());
    let mut client = connect(&server).await;
    let (zoo_sha, tuned_sha) = (sha(&zoo), sha(&tuned));
    assert_ne!(zoo_sha[..12], tuned_sha[..12]);

    let s = shots(10, 300, 21);
    let (old, new) = (offline_with(&zoo, &s), offline_with(&tuned, &s));
    let differ = old.iter().zip(&new).filter(|(a, b)| a.0 != b.0).count();
    eprintln!("the zoo's and the fine-tuned weights predict {differ} of {} shots differently", old.len());
    assert!(differ > 0, "the two checkpoints predict these shots alike: decisions could not tell them apart");

    let v1 = version(ZOO_D3, 1, &zoo_sha);
    let mut before = Live::open(&mut client, proto::DecoderKind::Neural, "", s.rounds).await.unwrap();
    assert_eq!(before.version, v1);
    decided_as(&before.play(&s, 0).await, 0, &v1, &old);
    // Shots in flight across the swap: all their rounds but the final one go before it.
    before.send_rounds(&s, 1000).await;

    let loaded = load_as(&mut client, &tuned, ZOO_D3).await.unwrap();
    let v2 = version(ZOO_D3, 2, &tuned_sha);
    assert_eq!(
        (loaded.name.as_str(), loaded.version.as_str(), loaded.sha256.as_str()),
        (ZOO_D3, v2.as_str(), tuned_sha.as_str())
    );
    let listed = list(&mut client).await;
    assert_eq!(
        listed.iter().map(|m| (m.name.as_str(), m.version.as_str())).collect::<Vec<_>>(),
        [(ZOO_D3, v2.as_str())],
        "served under the name it was loaded as, not its file's stem"
    );
    // Asked for by the name it was loaded as (its file is called otherwise).
    let mut after = Live::open(&mut client, proto::DecoderKind::Neural, ZOO_D3, s.rounds).await.unwrap();
    assert_eq!(after.version, v2, "a session opened after the swap names the new hash");
    decided_as(&after.play(&s, 0).await, 0, &v2, &new);
    // The shots in flight, and new ones of the session opened before, finish on the old weights.
    before.send_finals(&s, 1000).await;
    decided_as(&before.collect(&s, 1000).await, 1000, &v1, &old);
    decided_as(&before.play(&s, 2000).await, 2000, &v1, &old);

    // Back to the zoo's weights: a third version, with the zoo's hash again.
    let loaded = load_as(&mut client, &zoo, ZOO_D3).await.unwrap();
    let v3 = version(ZOO_D3, 3, &zoo_sha);
    assert_eq!(loaded.version, v3);
    let mut back = Live::open(&mut client, proto::DecoderKind::Neural, "", s.rounds).await.unwrap();
    assert_eq!(back.version, v3);
    decided_as(&back.play(&s, 0).await, 0, &v3, &old);
    decided_as(&after.play(&s, 1000).await, 1000, &v2, &new);
    for live in [before, after, back] {
        live.close().await;
    }
}

/// `qecd load` against `server` for 4 s, d=3 only, sessions of 20 shots,
/// two swaps of `swap` (its `--swap-models`) and 4 sessions of each version
/// decoded again: whether it passed, and its output.
fn load_run(server: &Server, swap: &str) -> (bool, String) {
    let addr = format!("http://{}", server.grpc);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qecd"))
        .args(["load", "--addr", &addr, "--distances", "3", "--streams", "4", "--seconds", "4"])
        .args(["--reopen-every", "20", "--swaps", "2", "--check-sessions", "4", "--swap-models", swap])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// What `qecd load` says of the sessions of `version` it decoded again:
/// neural answers equal offline, and those that differ.
fn decoded_again(out: &str, version: &str) -> (u64, u64) {
    let line =
        out.lines().find(|l| l.starts_with(&format!("  {version} ("))).unwrap_or_else(|| panic!("{version}: {out}"));
    let count = |after: &str| -> u64 {
        let before = &line[..line.find(after).unwrap_or_else(|| panic!("{line}"))];
        before.rsplit(' ').next().unwrap().parse().unwrap()
    };
    (count(" neural answers equal offline"), count(" differ;"))
}

#[test]
fn the_load_run_decodes_each_versions_sessions_again_with_its_files_weights() {
    let (dir, zoo, tuned) = tuned_dir();
    let server = serve_dir(dir.path(), qecd_grpc::Security::none());
    // d3_z_si1000_p003 alternates: the fine-tuned weights (@2), the zoo's again (@3).
    let swap = format!("{ZOO_D3}={},{ZOO_D3}={}", tuned.display(), zoo.display());
    let (passed, out) = load_run(&server, &swap);
    assert!(passed, "{out}");
    let versions = [version(ZOO_D3, 1, &sha(&zoo)), version(ZOO_D3, 2, &sha(&tuned)), version(ZOO_D3, 3, &sha(&zoo))];
    assert!(out.contains(&format!("swapped in {} from {}", versions[1], tuned.display())), "{out}");
    assert!(out.contains(&format!("swapped in {} from {}", versions[2], zoo.display())), "{out}");
    for v in &versions[..2] {
        let (equal, differ) = decoded_again(&out, v);
        assert!(equal > 0 && differ == 0, "{v}: {equal} equal, {differ} differ\n{out}");
    }
}

#[test]
fn the_load_run_fails_when_a_version_decides_unlike_the_file_its_hash_names() {
    let (dir, zoo, tuned) = tuned_dir();
    // A server that names the zoo file's hash but decodes with the fine-tuned weights.
    let mut lying = Loaded::read_as(&tuned, Some(ZOO_D3)).unwrap();
    lying.sha256 = sha(&zoo);
    let models = Models::serve(vec![lying], &StreamOptions::default(), Device::Cpu).unwrap();
    let server =
        Server::serving(models.confined_to(dir.path()).unwrap(), Server::options(), qecd_grpc::Security::none());
    let swap = format!("{ZOO_D3}={},{ZOO_D3}={}", tuned.display(), zoo.display());
    let (passed, out) = load_run(&server, &swap);
    assert!(!passed, "{out}");
    assert!(out.contains("decided unlike their weights"), "{out}");
    let (_, differ) = decoded_again(&out, &version(ZOO_D3, 1, &sha(&zoo)));
    assert!(differ > 0, "{out}");
    // The swaps themselves load honestly.
    let (equal, differ) = decoded_again(&out, &version(ZOO_D3, 2, &sha(&tuned)));
    assert!(equal > 0 && differ == 0, "{equal} equal, {differ} differ\n{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_cannot_be_served_is_refused_and_the_old_model_keeps_serving() {
    let dir = models_dir();
    let server = serve_dir(dir.path(), qecd_grpc::Security::none());
    let mut client = connect(&server).await;
    let served = list(&mut client).await;
    assert_eq!(served.len(), 1);
    let zoo = Checkpoint::load(&zoo_file(ZOO_D3)).unwrap();
    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = bad.join(format!("{ZOO_D3}.{name}.safetensors"));
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let garbage = write("garbage", b"this is not a safetensors file");
    let bytes = std::fs::read(zoo_file(ZOO_D3)).unwrap();
    let truncated = write("truncated", &bytes[..bytes.len() / 2]);
    let mut flat = zoo.clone();
    let (name, (shape, _)) = flat.tensors.iter_mut().find(|(_, (shape, _))| shape.len() == 2).unwrap();
    let name = name.clone();
    *shape = vec![shape.iter().product()];
    let misshaped = write("misshaped", &flat.to_bytes().unwrap());
    let mut moved = zoo.clone();
    moved.meta.layout.stabilizers[0].x += 100.0;
    let elsewhere = write("elsewhere", &moved.to_bytes().unwrap());
    for (path, why) in [
        (garbage, "not a safetensors file"),
        (truncated, "not a safetensors file"),
        (misshaped, name.as_str()),
        (elsewhere, "orders its stabilizers unlike"),
        (bad.join("missing.safetensors"), "cannot read it"),
        (zoo_file(ZOO_D3), "loads models from"),
    ] {
        let status = load(&mut client, &path).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{}: {}", path.display(), status.message());
        let file = path.file_name().unwrap().to_string_lossy();
        assert!(
            status.message().contains(&*file),
            "{}: the status names the file: {}",
            path.display(),
            status.message()
        );
        assert!(status.message().contains(why), "{}: the status says why: {}", path.display(), status.message());
    }
    let status = load(&mut client, Path::new("")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // Nothing changed: the same version serves new sessions.
    let after = list(&mut client).await;
    assert_eq!(
        after.iter().map(|m| &m.version).collect::<Vec<_>>(),
        served.iter().map(|m| &m.version).collect::<Vec<_>>()
    );
    let s = shots(3, 20, 8);
    let mut live = Live::open(&mut client, proto::DecoderKind::Neural, "", s.rounds).await.unwrap();
    assert_eq!(live.version, served[0].version);
    all_answered_by(&live.play(&s, 0).await, &served[0].version);
    live.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_model_needs_the_token() {
    let dir = models_dir();
    let token = dir.path().join("token");
    std::fs::write(&token, "hot-swap-token\n").unwrap();
    let server = serve_dir(dir.path(), qecd_grpc::Security::load(None, Some(&token)).unwrap());
    let mut client = connect(&server).await;
    let path = dir.path().join(format!("{ZOO_D3}.safetensors"));
    let status = load(&mut client, &path).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{}", status.message());
    let mut request =
        tonic::Request::new(proto::LoadModelRequest { path: path.display().to_string(), name: String::new() });
    request.metadata_mut().insert("authorization", "Bearer hot-swap-token".parse().unwrap());
    let loaded = client.load_model(request).await.unwrap().into_inner();
    assert!(loaded.version.starts_with(&format!("{ZOO_D3}@2:")), "{}", loaded.version);
}

/// Polls ListModels until `done` holds of it, for at most `within`; how long it took.
async fn until_listed(client: &mut Client, within: Duration, done: impl Fn(&[proto::ModelInfo]) -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if done(&list(client).await) {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "not listed after {within:?}: {:?}", list(client).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_serves_new_and_changed_files_and_forgets_removed_ones() {
    let dir = models_dir();
    let server = serve_dir(dir.path(), qecd_grpc::Security::none());
    let _watcher = Watcher::start(&server.hub, dir.path(), POLL).unwrap();
    let mut client = connect(&server).await;
    let within = Duration::from_secs(10);
    let has = |v: String| move |models: &[proto::ModelInfo]| models.iter().any(|m| m.version == v);

    // A new file: a new name, version 1.
    let variant = version("d3_variant", 1, &save_variant(&dir.path().join("d3_variant.safetensors"), 1.5));
    let took = until_listed(&mut client, within, has(variant.clone())).await;
    eprintln!("a new file was served after {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");

    // A file that cannot be served is skipped (and logged); a changed one is a new version.
    std::fs::write(dir.path().join("broken.safetensors"), b"not a checkpoint").unwrap();
    let sha = save_variant(&dir.path().join(format!("{ZOO_D3}.safetensors")), 0.75);
    let took = until_listed(&mut client, within, has(version(ZOO_D3, 2, &sha))).await;
    eprintln!("a changed file was served after {took:?}");
    let names: Vec<String> = list(&mut client).await.into_iter().map(|m| m.name).collect();
    assert_eq!(names, [ZOO_D3, "d3_variant"], "the broken file is not served, the others are");
    let s = shots(3, 10, 3);
    let mut live = Live::open(&mut client, proto::DecoderKind::Neural, "d3_variant", s.rounds).await.unwrap();
    assert_eq!(live.version, variant);
    all_answered_by(&live.play(&s, 0).await, &variant);

    // A removed file is no longer offered; its open session finishes on it.
    std::fs::remove_file(dir.path().join("d3_variant.safetensors")).unwrap();
    until_listed(&mut client, within, |models| models.iter().all(|m| m.name != "d3_variant")).await;
    let status = Live::open(&mut client, proto::DecoderKind::Neural, "d3_variant", s.rounds).await.err().unwrap();
    assert_eq!(status.code(), Code::NotFound, "{}", status.message());
    all_answered_by(&live.play(&s, 100).await, &variant);
    live.close().await;
}
