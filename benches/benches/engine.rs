//! Criterion bench `engine`: the neural engine on CPU, named with the device
//! (`cpu-<instruction set>`), memory-Z SI1000 p=0.003.
//!
//! - `step_batch1`: one round step of one stream, d = 3..11 (goal: d=3 p50 ≤ 5 µs, d=5 ≤ 20 µs).
//! - `step_throughput`: one round step of 64 and 1024 streams on every core;
//!   throughput in shot-rounds per second.
//! - `decision_d5_r25`: a d=5, 25-round shot's last round in, prediction out,
//!   through a streaming session; beside it correlated and plain matching
//!   decoding the same whole shots one at a time (goal: neural ≤ 0.5× correlated).
//! - with feature `train`, `tch_step`: the tch forward's round step at batch 1
//!   and 1024 on the same inputs (goals: kernels ≥ 10× faster at batch 1,
//!   ≥ 1.0× the throughput at 1024).
//!
//! Percentiles (p99, p99.9) come from the perf report, `src/bin/perf.rs`.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use decoder::{Decoder, DecoderKind, MatchingDecoder, StreamEngine, StreamOptions};
use kernels::{Scratch, step, step_batch};
use qecd_benches::{Workload, bench_model, cores, cpu_label};

fn step_batch1(c: &mut Criterion) {
    let mut group = c.benchmark_group("step_batch1");
    let label = cpu_label();
    for d in [3usize, 5, 7, 9, 11] {
        let (model, source) = bench_model(d).expect("model");
        let rounds = Workload::new(d, d, 64, 7).and_then(|w| w.middle_rounds(&model, 64)).expect("workload");
        let w = model.weights();
        let per_round = w.config().features_len();
        let mut scratch = Scratch::new(w.config());
        let mut state = vec![0.0f32; w.config().state_len()];
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::new(format!("{label}/kernels"), format!("d={d} ({source})")), |b| {
            let mut i = 0usize;
            b.iter(|| {
                if i.is_multiple_of(25) {
                    state.fill(0.0);
                }
                step(w, &mut state, &rounds[(i % 64) * per_round..][..per_round], &mut scratch);
                i += 1;
            });
        });
    }
    group.finish();
}

fn step_throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("step_throughput");
    group.sample_size(20);
    let (label, threads) = (cpu_label(), cores());
    for streams in [64usize, 1024] {
        for d in [3usize, 5, 7, 9, 11] {
            let (model, source) = bench_model(d).expect("model");
            let rounds = Workload::new(d, d, 256, 8).and_then(|w| w.middle_rounds(&model, streams)).expect("workload");
            let w = model.weights();
            let mut scratches: Vec<Scratch> = (0..threads).map(|_| Scratch::with_block(w.config(), 8)).collect();
            let mut states = vec![0.0f32; streams * w.config().state_len()];
            group.throughput(Throughput::Elements(streams as u64));
            let id = BenchmarkId::new(
                format!("{label}/kernels/batch{streams}/{threads}threads"),
                format!("d={d} ({source})"),
            );
            let mut i = 0usize;
            group.bench_function(id, |b| {
                b.iter(|| {
                    if i.is_multiple_of(25) {
                        states.fill(0.0);
                    }
                    step_batch(w, &mut states, &rounds, &mut scratches, threads);
                    i += 1;
                })
            });
        }
    }
    group.finish();
}

fn decision(c: &mut Criterion) {
    let mut group = c.benchmark_group("decision_d5_r25");
    let label = cpu_label();
    let (model, source) = bench_model(5).expect("model");
    let workload = Workload::new(5, 25, 512, 9).expect("workload");
    let shots = workload.stream_rounds();
    let engine = StreamEngine::start(model.clone(), StreamOptions::default());
    let mut session = engine.open();
    let mut next = 0u64;
    group.bench_function(
        BenchmarkId::new(format!("{label}/neural-stream"), format!("last round in, prediction out ({source})")),
        |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let rounds = &shots[next as usize % shots.len()];
                    let (last, body) = rounds.split_last().expect("rounds");
                    for (t, events) in body.iter().enumerate() {
                        session.push_round(next, t, events).expect("round");
                    }
                    let start = Instant::now();
                    session.finish(next, last).expect("result");
                    total += start.elapsed();
                    next += 1;
                }
                total
            })
        },
    );
    for kind in DecoderKind::MATCHING {
        let mut decoder = MatchingDecoder::from_dem(&workload.dem, kind).expect("graph");
        let singles: Vec<_> = (0..512).map(|s| workload.events.slice(s, s + 1)).collect();
        let mut i = 0usize;
        group.bench_function(BenchmarkId::new(format!("{label}/{kind}"), "whole shot"), |b| {
            b.iter(|| {
                decoder.decode_batch(&singles[i % singles.len()]).expect("decodes");
                i += 1;
            })
        });
    }
    group.finish();
}

#[cfg(feature = "train")]
fn tch_step(c: &mut Criterion) {
    use models::net::Net;
    use tch::{Device, Kind, Tensor};
    let mut group = c.benchmark_group("tch_step");
    group.sample_size(10);
    for (streams, ds) in [(1usize, &[3usize, 5, 7, 9, 11][..]), (1024, &[3, 5, 7, 9, 11][..])] {
        for &d in ds {
            let (ckpt, source) = qecd_benches::bench_checkpoint(d).expect("checkpoint");
            let (model, _) = bench_model(d).expect("model");
            let rounds = Workload::new(d, d, 256, 8).and_then(|w| w.middle_rounds(&model, streams)).expect("workload");
            let net = Net::from_checkpoint(&ckpt, Device::Cpu).expect("net");
            let (s, width) = (ckpt.meta.config.num_stabilizers as i64, ckpt.meta.config.width as i64);
            let x = Tensor::from_slice(&rounds).view([streams as i64, s, 3]);
            let mut z = Tensor::zeros([streams as i64, s, width], (Kind::Float, Device::Cpu));
            group.throughput(Throughput::Elements(streams as u64));
            let id = BenchmarkId::new(
                format!("cpu/tch/batch{streams}/{}threads", tch::get_num_threads()),
                format!("d={d} ({source})"),
            );
            let mut i = 0usize;
            group.bench_function(id, |b| {
                b.iter(|| {
                    tch::no_grad(|| {
                        if i.is_multiple_of(25) {
                            z = Tensor::zeros([streams as i64, s, width], (Kind::Float, Device::Cpu));
                        }
                        z = net.step(&z, &x);
                    });
                    i += 1;
                })
            });
        }
    }
    group.finish();
}

#[cfg(not(feature = "train"))]
fn tch_step(_: &mut Criterion) {
    eprintln!("tch_step: SKIPPED (build with --features train for the tch peer)");
}

criterion_group!(benches, step_batch1, step_throughput, decision, tch_step);
criterion_main!(benches);
