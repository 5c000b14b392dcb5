//! The neural engine: the batch decoder and the streaming sessions agree bit
//! for bit, bad rounds are refused for their shot alone, and bad checkpoints
//! are named.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use decoder::{
    BackendError, Decoder, Device, NeuralDecoder, NeuralModel, Reply, ReplyFn, RoundAck, StreamEngine, StreamError,
    StreamOptions,
};
use models::ModelConfig;
use models::checkpoint::{Checkpoint, ModelLayout};
use simulator_bridge::sample::Sampler;
use simulator_bridge::{Basis, MemoryExperiment, NoiseModel, PackedShots, StabilizerLayout};

fn random_model(d: usize, basis: Basis, seed: u64) -> Arc<NeuralModel> {
    let layout = ModelLayout::for_code(d, basis).unwrap();
    let ckpt = Checkpoint::random(ModelConfig::for_distance(d, 32, 4, 2, 64), layout, seed);
    Arc::new(NeuralModel::from_checkpoint(format!("random-d{d}"), &ckpt, "random").unwrap())
}

fn zoo_d3() -> Arc<NeuralModel> {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/models/d3_z_si1000_p003.safetensors"));
    Arc::new(NeuralModel::load(&path).unwrap())
}

struct Shots {
    events: PackedShots,
    layout: StabilizerLayout,
}

fn shots(d: usize, rounds: usize, basis: Basis, n: usize, seed: u64) -> (Shots, Arc<NeuralModel>) {
    let circuit =
        MemoryExperiment::new(d, rounds, basis).unwrap().noisy_circuit(&NoiseModel::Si1000 { p: 0.006 }).unwrap();
    let layout = StabilizerLayout::from_circuit(&circuit, basis).unwrap();
    let events = Sampler::new(&circuit).sample(n, seed, 1).unwrap().detectors;
    let model = random_model(d, basis, seed);
    (Shots { events, layout }, model)
}

/// Each shot's rounds, as a stream pushes them.
fn stream_rounds(s: &Shots) -> Vec<Vec<Vec<bool>>> {
    let rounds = simulator_bridge::RoundLayout::new(&s.layout);
    (0..s.events.num_shots()).map(|shot| rounds.split(&s.events, shot)).collect()
}

#[test]
fn streaming_equals_batch_bit_for_bit() {
    for (d, rounds, basis) in [(3, 1, Basis::Z), (3, 6, Basis::X), (5, 3, Basis::Z)] {
        let (s, model) = shots(d, rounds, basis, 40, 11 + rounds as u64);
        let mut batch = NeuralDecoder::new(model.clone(), &s.layout).unwrap();
        let want = batch.logits(&s.events).unwrap().to_vec();
        let decisions = batch.decode_batch(&s.events).unwrap();
        let engine = StreamEngine::start(model.clone(), StreamOptions::default());
        let mut session = engine.open();
        // All shots interleaved, round by round, so that batches mix shots.
        let per_shot = stream_rounds(&s);
        let t_count = per_shot[0].len();
        assert_eq!(t_count, rounds + 1);
        for t in 0..t_count - 1 {
            for (shot, r) in per_shot.iter().enumerate() {
                assert_eq!(r[t].len(), session.round_bits(t));
                session.submit_round(shot as u64, t, &r[t]).unwrap();
            }
        }
        for (shot, r) in per_shot.iter().enumerate() {
            session.submit_finish(shot as u64, &r[t_count - 1]).unwrap();
        }
        let mut results = vec![None; per_shot.len()];
        let mut acks = 0;
        while results.iter().any(Option::is_none) {
            match session.recv().unwrap() {
                Reply::Ack(_) => acks += 1,
                Reply::Result(r) => {
                    let shot = r.shot as usize;
                    results[shot] = Some(r);
                }
                Reply::Error { shot, error } => panic!("shot {shot}: {error}"),
            }
        }
        assert_eq!(acks, per_shot.len() * (t_count - 1));
        for (shot, r) in results.into_iter().enumerate() {
            let r = r.unwrap();
            assert_eq!(r.rounds, t_count);
            assert_eq!(r.logits, want[shot..shot + 1], "d={d} r={rounds} shot {shot}");
            assert_eq!(r.prediction, vec![decisions.predictions.get(shot, 0)]);
            assert_eq!(r.confidence, decisions.confidence.as_ref().unwrap()[shot]);
        }
        drop(session);
        engine.shutdown();
    }
}

#[test]
fn staggered_shots_mix_first_middle_and_final_rounds_in_one_batch() {
    // Shot k starts at step k, so every batch holds round 0 of one shot,
    // middle rounds of others and the final round of another.
    let (s, model) = shots(3, 5, Basis::Z, 30, 3);
    let want = NeuralDecoder::new(model.clone(), &s.layout).unwrap().logits(&s.events).unwrap().to_vec();
    let per_shot = stream_rounds(&s);
    let t_count = per_shot[0].len();
    let engine = StreamEngine::start(model, StreamOptions::default());
    let mut session = engine.open();
    let mut got = vec![f32::NAN; per_shot.len()];
    for step in 0..per_shot.len() + t_count {
        let mut expected = 0;
        // Newest shot first, so that the finishing one comes after rounds of others.
        for (shot, rounds) in per_shot.iter().enumerate().rev() {
            let Some(t) = step.checked_sub(shot).filter(|&t| t < t_count) else { continue };
            if t + 1 < t_count {
                session.submit_round(shot as u64, t, &rounds[t]).unwrap();
            } else {
                session.submit_finish(shot as u64, &rounds[t]).unwrap();
            }
            expected += 1;
        }
        for _ in 0..expected {
            match session.recv().unwrap() {
                Reply::Ack(a) => assert!(a.batch >= 1),
                Reply::Result(r) => got[r.shot as usize] = r.logits[0],
                Reply::Error { shot, error } => panic!("shot {shot}: {error}"),
            }
        }
    }
    assert_eq!(got, want);
}

#[test]
fn sessions_on_threads_share_the_worker() {
    let (s, model) = shots(3, 4, Basis::Z, 24, 5);
    let want = NeuralDecoder::new(model.clone(), &s.layout).unwrap().logits(&s.events).unwrap().to_vec();
    let per_shot = stream_rounds(&s);
    let engine = StreamEngine::start(model, StreamOptions { max_batch: 7, ..StreamOptions::default() });
    std::thread::scope(|scope| {
        for part in 0..4 {
            let mut session = engine.open();
            let (per_shot, want) = (&per_shot, &want);
            scope.spawn(move || {
                for shot in (part..per_shot.len()).step_by(4) {
                    let rounds = &per_shot[shot];
                    for (t, events) in rounds[..rounds.len() - 1].iter().enumerate() {
                        let ack = session.push_round(shot as u64, t, events).unwrap();
                        assert_eq!((ack.shot, ack.round), (shot as u64, t));
                        assert!(ack.latency >= ack.compute && ack.batch >= 1);
                    }
                    let result = session.finish(shot as u64, rounds.last().unwrap()).unwrap();
                    assert_eq!(result.logits, want[shot..shot + 1]);
                    assert!(result.decision_latency > Duration::ZERO);
                }
            });
        }
    });
    engine.shutdown();
}

#[test]
fn bad_rounds_are_refused_for_their_shot_alone() {
    let (s, model) = shots(3, 3, Basis::Z, 2, 9);
    let want = NeuralDecoder::new(model.clone(), &s.layout).unwrap().logits(&s.events).unwrap().to_vec();
    let rounds = stream_rounds(&s);
    let engine = StreamEngine::start(model, StreamOptions::default());
    let mut session = engine.open();
    let good = &rounds[0];
    session.push_round(0, 0, &good[0]).unwrap();
    // Shot 1 sends garbage while shot 0 is open.
    assert_eq!(
        session.push_round(1, 0, &[true; 7]),
        Err(StreamError::EventBits { shot: 1, round: 0, expected: 4, got: 7 })
    );
    assert_eq!(session.push_round(1, 2, &rounds[1][2]), Err(StreamError::RoundOrder { shot: 1, expected: 0, got: 2 }));
    assert_eq!(session.submit_finish(1, &rounds[1][3]), Err(StreamError::NotStarted { shot: 1 }));
    assert_eq!(
        session.push_round(0, 1, &[false; 4]).unwrap_err(),
        StreamError::EventBits { shot: 0, round: 1, expected: 8, got: 4 }
    );
    // The refused round of shot 0 changed nothing.
    session.push_round(0, 1, &good[1]).unwrap();
    session.push_round(0, 2, &good[2]).unwrap();
    // Shot 1 now runs cleanly and finishes between shot 0's rounds.
    for (t, e) in rounds[1][..3].iter().enumerate() {
        session.push_round(1, t, e).unwrap();
    }
    let r1 = session.finish(1, &rounds[1][3]).unwrap();
    let r0 = session.finish(0, &good[3]).unwrap();
    assert_eq!((r0.logits[0], r1.logits[0]), (want[0], want[1]));
    // A finished shot's id takes round 0 only, which starts a new shot.
    assert_eq!(session.push_round(0, 4, &good[2]), Err(StreamError::RoundOrder { shot: 0, expected: 0, got: 4 }));
    assert_eq!(session.submit_finish(1, &good[3]), Err(StreamError::NotStarted { shot: 1 }));
    for (t, e) in rounds[1][..3].iter().enumerate() {
        session.push_round(0, t, e).unwrap();
    }
    assert_eq!(session.finish(0, &rounds[1][3]).unwrap().logits[0], want[1], "a reused id starts from a zero state");
}

#[test]
fn an_idle_engine_steps_on_the_submitting_thread_and_a_busy_one_on_its_helper() {
    let (s, model) = shots(3, 3, Basis::Z, 1, 4);
    let rounds = &stream_rounds(&s)[0];
    let engine = StreamEngine::start(model, StreamOptions::default());
    let (tx, rx) = crossbeam_channel::unbounded();
    let reply: ReplyFn = Arc::new(move |r| tx.send((r, std::thread::current().id())).unwrap());
    let mut feed = engine.open_with(reply);
    feed.submit_round(0, 0, &rounds[0]).unwrap();
    // Submitting only queues.
    assert!(rx.try_recv().is_err());
    feed.drive();
    let (reply, stepped_on) = rx.try_recv().expect("stepped before drive returned");
    assert!(matches!(reply, Reply::Ack(RoundAck { shot: 0, round: 0, .. })));
    assert_eq!(stepped_on, std::thread::current().id());
    // While another thread holds the engine, driving hands the round to the helper.
    std::thread::scope(|scope| {
        let (hold_tx, hold_rx) = crossbeam_channel::bounded::<()>(0);
        let (go_tx, go_rx) = crossbeam_channel::bounded::<()>(0);
        let first = rounds[0].clone();
        let reply: ReplyFn = Arc::new(move |_| {
            // Runs on the stepping thread, holding the engine, until released.
            let _ = hold_tx.send(());
            let _ = go_rx.recv();
        });
        let mut holder = engine.open_with(reply);
        holder.submit_round(7, 0, &first).unwrap();
        scope.spawn(move || holder.drive());
        hold_rx.recv().unwrap();
        feed.submit_round(0, 1, &rounds[1]).unwrap();
        feed.drive();
        go_tx.send(()).unwrap();
        let (reply, stepped_on) = rx.recv_timeout(Duration::from_secs(10)).expect("the helper stepped it");
        assert!(matches!(reply, Reply::Ack(RoundAck { shot: 0, round: 1, .. })));
        assert_ne!(stepped_on, std::thread::current().id());
    });
}

#[test]
fn the_engine_refuses_shots_beyond_its_capacity() {
    let model = random_model(3, Basis::Z, 1);
    let engine = StreamEngine::start(model, StreamOptions { max_open_shots: 2, ..StreamOptions::default() });
    let mut session = engine.open();
    let first = vec![false; session.round_bits(0)];
    session.push_round(0, 0, &first).unwrap();
    session.push_round(1, 0, &first).unwrap();
    assert_eq!(session.push_round(2, 0, &first), Err(StreamError::Capacity { shot: 2, limit: 2 }));
    // Finishing a shot frees its slot.
    session.finish(0, &first).unwrap();
    session.push_round(3, 0, &first).unwrap();
}

#[test]
fn the_zoo_model_decodes_like_its_fixture() {
    // The fixture's predictions were stored from the tch forward.
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/models"));
    let text = std::fs::read_to_string(dir.join("d3_z_si1000_p003.fixture.stim")).unwrap();
    let circuit: stim::Circuit = text.parse().unwrap();
    let layout = StabilizerLayout::from_circuit(&circuit, Basis::Z).unwrap();
    let events = simulator_bridge::formats::read_shots_file(
        &dir.join("d3_z_si1000_p003.fixture.b8"),
        simulator_bridge::ResultFormat::B8,
        simulator_bridge::BitLabels::detectors(circuit.num_detectors() as usize),
    )
    .unwrap();
    let stored = std::fs::read_to_string(dir.join("d3_z_si1000_p003.fixture.pred.01")).unwrap();
    let mut decoder = NeuralDecoder::new(zoo_d3(), &layout).unwrap();
    let logits = decoder.logits(&events).unwrap().to_vec();
    let decisions = decoder.decode_batch(&events).unwrap();
    let mut differ = 0;
    for (shot, line) in stored.lines().enumerate() {
        if (line == "1") != decisions.predictions.get(shot, 0) {
            assert!(logits[shot].abs() < 1e-4, "shot {shot}: logit {} disagrees with tch", logits[shot]);
            differ += 1;
        }
    }
    assert!(differ <= 1, "{differ} predictions differ");
    assert_eq!(stored.lines().count(), events.num_shots());
}

#[test]
fn a_bad_checkpoint_names_the_tensor() {
    let layout = ModelLayout::for_code(3, Basis::Z).unwrap();
    let mut ckpt = Checkpoint::random(ModelConfig::for_distance(3, 32, 4, 2, 64), layout, 3);
    ckpt.tensors.get_mut("layers.1.attn.wk").unwrap().1[5] = f32::NAN;
    let err = NeuralModel::from_checkpoint("bad".into(), &ckpt, "bad.safetensors").unwrap_err().to_string();
    assert!(err.contains("layers.1.attn.wk") && err.contains("bad.safetensors"), "{err}");
    let mut ckpt =
        Checkpoint::random(ModelConfig::for_distance(3, 32, 4, 2, 64), ModelLayout::for_code(3, Basis::Z).unwrap(), 3);
    ckpt.tensors.remove("readout.w2");
    let err = NeuralModel::from_checkpoint("bad".into(), &ckpt, "bad.safetensors").unwrap_err().to_string();
    assert!(err.contains("readout.w2"), "{err}");
}

/// Every shot of `s` streamed through `engine`, interleaved round by round; the logits in shot order.
fn stream_all(engine: &StreamEngine, s: &Shots) -> Vec<f32> {
    let mut session = engine.open();
    let per_shot = stream_rounds(s);
    let t_count = per_shot[0].len();
    for t in 0..t_count - 1 {
        for (shot, r) in per_shot.iter().enumerate() {
            session.submit_round(shot as u64, t, &r[t]).unwrap();
        }
    }
    for (shot, r) in per_shot.iter().enumerate() {
        session.submit_finish(shot as u64, &r[t_count - 1]).unwrap();
    }
    let mut logits = vec![f32::NAN; per_shot.len()];
    let mut left = per_shot.len();
    while left > 0 {
        match session.recv().unwrap() {
            Reply::Ack(_) => {}
            Reply::Result(r) => {
                logits[r.shot as usize] = r.logits[0];
                left -= 1;
            }
            Reply::Error { shot, error } => panic!("shot {shot}: {error}"),
        }
    }
    logits
}

#[test]
fn both_decoders_run_on_a_backend_chosen_by_device() {
    let (s, model) = shots(3, 4, Basis::Z, 70, 21);
    let want = NeuralDecoder::new(model.clone(), &s.layout).unwrap().logits(&s.events).unwrap().to_vec();
    let mut batch = NeuralDecoder::on(model.clone(), &s.layout, Device::Cpu).unwrap();
    assert!(batch.device().starts_with("cpu-"), "{}", batch.device());
    assert_eq!(batch.logits(&s.events).unwrap(), want, "70 shots: a full block of 64 and a partial one");
    let backend = model.backend(Device::Cpu).unwrap();
    let engine = StreamEngine::start_on(model.clone(), StreamOptions::default(), backend).unwrap();
    assert_eq!(engine.device(), batch.device());
    assert_eq!(stream_all(&engine, &s), want);
    engine.shutdown();
}

#[test]
fn a_backend_made_for_another_model_is_refused() {
    let (s, model) = shots(3, 2, Basis::Z, 2, 1);
    let other = random_model(5, Basis::Z, 1);
    let err = NeuralDecoder::with_backend(model.clone(), &s.layout, other.backend(Device::Cpu).unwrap())
        .err()
        .expect("a d=5 backend for a d=3 model")
        .to_string();
    assert!(err.contains("backend was made for") && err.contains("stabilizers: 24"), "{err}");
    let err = StreamEngine::start_on(model, StreamOptions::default(), other.backend(Device::Cpu).unwrap())
        .err()
        .expect("a d=5 backend for a d=3 model");
    assert!(matches!(err, BackendError::Input(_)), "{err}");
}

/// Without a GPU (or without the kernels' `cuda` feature) asking for CUDA
/// is an error that says why; with one, the decoder is made.
#[test]
fn the_neural_decoder_says_why_cuda_is_unavailable() {
    let (s, model) = shots(3, 2, Basis::Z, 2, 2);
    match NeuralDecoder::on(model.clone(), &s.layout, Device::Cuda(0)) {
        Ok(d) => eprintln!("SKIPPED: a GPU is present ({}); the unavailable error cannot be provoked", d.device()),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with("neural decoder on cuda:0: the CUDA backend is unavailable: "), "{msg}");
            assert!(msg.contains("libcuda not found") || msg.contains("`cuda` feature"), "{msg}");
            let err = model.backend(Device::Cuda(0)).unwrap_err();
            assert!(matches!(err, BackendError::Unavailable { backend: "CUDA", .. }), "{err}");
        }
    }
}

/// The batch decoder and the stream engine on the CUDA backend against the CPU one.
#[test]
#[ignore = "needs a CUDA GPU and the kernels crate's `cuda` feature; run with --ignored on a GPU machine"]
fn both_decoders_on_cuda_match_the_cpu() {
    for (d, rounds, n) in [(3, 5, 70), (5, 3, 40)] {
        let (s, model) = shots(d, rounds, Basis::Z, n, 31);
        let want = NeuralDecoder::new(model.clone(), &s.layout).unwrap().logits(&s.events).unwrap().to_vec();
        let close = |got: &[f32], what: &str| {
            let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(err < 1e-4, "d={d} {what}: |cuda - cpu| logit = {err:e}");
        };
        let mut gpu = NeuralDecoder::on(model.clone(), &s.layout, Device::Cuda(0)).unwrap();
        assert!(gpu.device().starts_with("cuda:0"), "{}", gpu.device());
        close(gpu.logits(&s.events).unwrap(), "batch");
        let engine =
            StreamEngine::start_on(model.clone(), StreamOptions::default(), model.backend(Device::Cuda(0)).unwrap())
                .unwrap();
        close(&stream_all(&engine, &s), "stream");
        engine.shutdown();
    }
}
