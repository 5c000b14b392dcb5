//! The perf report of docs/perf.md: latency percentiles and throughput of the
//! neural engine, with its peers measured in the same run.
//!
//! ```text
//! cargo run --release -p qecd-benches --features train --bin perf -- [--csv PATH] [--quick]
//! ```
//!
//! - Per-round step at batch 1, d = 3..11: p50, p99, p99.9 of single `step`
//!   calls, each timed on its own (the state is reset every 25 rounds).
//! - Throughput at batch 64 and 1024: shot-rounds per second of `step_batch`
//!   over all cores.
//! - Decision latency, d=5 with 25 rounds: from pushing a shot's final round
//!   into a streaming session to holding its prediction, against correlated
//!   (and plain) matching decoding the same whole shot, one shot per call.
//! - With feature `train`, the tch forward (the training model, libtorch 2.11
//!   on CPU) at batch 1 and 1024 on the same inputs: the peer of the ratios.
//!
//! Criterion's benches (`cargo bench -p qecd-benches --bench engine`) time the
//! same operations with confidence intervals; this report adds the tails.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use decoder::{Decoder, DecoderKind, MatchingDecoder, StreamEngine, StreamOptions};
use kernels::{Scratch, step, step_batch};
use qecd_benches::{Workload, bench_model, cores, cpu_label, percentiles};
use simulator_bridge::BridgeError;
use simulator_bridge::fsutil::write_atomically;

const DISTANCES: [usize; 5] = [3, 5, 7, 9, 11];

struct Row {
    section: &'static str,
    case: String,
    model: String,
    p50: f64,
    p99: f64,
    p999: f64,
    throughput: f64,
    goal: String,
}

impl Row {
    /// A latency figure: p50, p99 and p99.9 in µs.
    fn latency(section: &'static str, case: String, model: String, [p50, p99, p999]: [f64; 3], goal: String) -> Self {
        Self { section, case, model, p50, p99, p999, throughput: f64::NAN, goal }
    }

    /// A throughput figure (no latency percentiles).
    fn throughput(case: String, model: String, throughput: f64, goal: String) -> Self {
        let nan = f64::NAN;
        Self { section: "shot-rounds/s", case, model, p50: nan, p99: nan, p999: nan, throughput, goal }
    }
}

struct Report {
    rows: Vec<Row>,
    quick: bool,
}

impl Report {
    fn push(&mut self, row: Row) {
        let fmt = |x: f64| if x.is_nan() { "–".to_string() } else { format!("{x:.2}") };
        let tp = if row.throughput.is_nan() { "–".to_string() } else { format!("{:.3e}", row.throughput) };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            row.section,
            row.case,
            row.model,
            fmt(row.p50),
            fmt(row.p99),
            fmt(row.p999),
            tp,
            row.goal
        );
        std::io::stdout().flush().ok();
        self.rows.push(row);
    }

    fn iterations(&self, full: usize) -> usize {
        if self.quick { (full / 20).max(50) } else { full }
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Times `n` single round steps at batch 1; microseconds per step.
fn kernel_steps(model: &decoder::NeuralModel, rounds: &[f32], n: usize) -> Vec<f64> {
    let w = model.weights();
    let (sd, per_round) = (w.config().state_len(), w.config().features_len());
    let mut scratch = Scratch::new(w.config());
    let mut state = vec![0.0f32; sd];
    let count = rounds.len() / per_round;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        if i % 25 == 0 {
            state.fill(0.0);
        }
        let f = &rounds[(i % count) * per_round..][..per_round];
        let start = Instant::now();
        step(w, &mut state, f, &mut scratch);
        out.push(micros(start.elapsed()));
    }
    out
}

/// Shot-rounds per second of `step_batch` over `streams` streams on every core.
fn kernel_throughput(model: &decoder::NeuralModel, rounds: &[f32], streams: usize, min_time: Duration) -> f64 {
    let w = model.weights();
    let threads = cores();
    let mut scratches: Vec<Scratch> = (0..threads).map(|_| Scratch::with_block(w.config(), 8)).collect();
    let mut states = vec![0.0f32; streams * w.config().state_len()];
    let (start, mut steps) = (Instant::now(), 0u64);
    while steps < 3 || start.elapsed() < min_time {
        if steps % 25 == 0 {
            states.fill(0.0);
        }
        step_batch(w, &mut states, rounds, &mut scratches, threads);
        steps += 1;
    }
    (steps as f64 * streams as f64) / start.elapsed().as_secs_f64()
}

#[cfg(feature = "train")]
mod tch_peer {
    //! The tch forward on the same inputs.
    use std::time::{Duration, Instant};

    use models::Checkpoint;
    use models::net::Net;
    use tch::{Device, Kind, Tensor};

    pub struct Peer {
        net: Net,
        s: i64,
        d: i64,
    }

    impl Peer {
        pub fn new(ckpt: &Checkpoint) -> anyhow::Result<Self> {
            let c = &ckpt.meta.config;
            Ok(Self { net: Net::from_checkpoint(ckpt, Device::Cpu)?, s: c.num_stabilizers as i64, d: c.width as i64 })
        }

        fn input(&self, rounds: &[f32], streams: usize) -> Tensor {
            Tensor::from_slice(rounds).view([streams as i64, self.s, 3])
        }

        /// Microseconds per batch-1 step, `n` steps.
        pub fn steps(&self, rounds: &[f32], n: usize) -> Vec<f64> {
            let per_round = (self.s * 3) as usize;
            let count = rounds.len() / per_round;
            let inputs: Vec<Tensor> =
                (0..count.min(64)).map(|k| self.input(&rounds[k * per_round..][..per_round], 1)).collect();
            tch::no_grad(|| {
                let mut z = Tensor::zeros([1, self.s, self.d], (Kind::Float, Device::Cpu));
                let mut out = Vec::with_capacity(n);
                for i in 0..n {
                    if i % 25 == 0 {
                        z = Tensor::zeros([1, self.s, self.d], (Kind::Float, Device::Cpu));
                    }
                    let start = Instant::now();
                    z = self.net.step(&z, &inputs[i % inputs.len()]);
                    out.push(start.elapsed().as_secs_f64() * 1e6);
                }
                out
            })
        }

        /// Shot-rounds per second at `streams` streams.
        pub fn throughput(&self, rounds: &[f32], streams: usize, min_time: Duration) -> f64 {
            let x = self.input(rounds, streams);
            tch::no_grad(|| {
                let mut z = Tensor::zeros([streams as i64, self.s, self.d], (Kind::Float, Device::Cpu));
                let (start, mut steps) = (Instant::now(), 0u64);
                while steps < 3 || start.elapsed() < min_time {
                    z = self.net.step(&z, &x);
                    steps += 1;
                }
                let _ = z.sum(Kind::Float).double_value(&[]);
                (steps as f64 * streams as f64) / start.elapsed().as_secs_f64()
            })
        }
    }
}

fn run(report: &mut Report) -> Result<()> {
    let label = cpu_label();
    let min_time = if report.quick { Duration::from_millis(100) } else { Duration::from_secs(2) };
    let mut batch1 = Vec::new();
    for d in DISTANCES {
        let (model, source) = bench_model(d)?;
        let workload = Workload::new(d, d, 64, 7)?;
        let rounds = workload.middle_rounds(&model, 64)?;
        let mut t = kernel_steps(&model, &rounds, report.iterations(if d <= 5 { 40_000 } else { 10_000 }));
        let [p50, p99, p999] = percentiles(&mut t);
        let goal = match d {
            3 => "p50 ≤ 5, p99 ≤ 15",
            5 => "p50 ≤ 20",
            _ => "",
        };
        let case = format!("{label} kernels, batch 1, d={d}");
        report.push(Row::latency("step µs", case, source.to_string(), [p50, p99, p999], goal.into()));
        batch1.push((d, p50));
    }
    for streams in [64usize, 1024] {
        for d in DISTANCES {
            let (model, source) = bench_model(d)?;
            let workload = Workload::new(d, d, 256, 8)?;
            let rounds = workload.middle_rounds(&model, streams)?;
            let throughput = kernel_throughput(&model, &rounds, streams, min_time);
            let case = format!("{label} kernels, batch {streams}, {} threads, d={d}", cores());
            report.push(Row::throughput(case, source.to_string(), throughput, String::new()));
        }
    }
    #[cfg(feature = "train")]
    for d in DISTANCES {
        let (ckpt, source) = qecd_benches::bench_checkpoint(d)?;
        let (model, _) = bench_model(d)?;
        let peer = tch_peer::Peer::new(&ckpt)?;
        let workload = Workload::new(d, d, 256, 8)?;
        let rounds = workload.middle_rounds(&model, 1024)?;
        let mut t = peer.steps(&rounds, report.iterations(if d <= 5 { 4_000 } else { 1_000 }));
        let [p50, p99, p999] = percentiles(&mut t);
        let kernels_p50 = batch1.iter().find(|(k, _)| *k == d).map(|x| x.1).unwrap_or(f64::NAN);
        let case = format!("tch {} forward, batch 1, d={d}", tch::get_num_threads());
        let goal = format!("kernels ≥ 10× faster: {:.1}×", p50 / kernels_p50);
        report.push(Row::latency("step µs", case, source.to_string(), [p50, p99, p999], goal));
        let throughput = peer.throughput(&rounds, 1024, min_time);
        let ours = kernel_throughput(&model, &rounds, 1024, min_time);
        let case = format!("tch forward, batch 1024, {} threads, d={d}", tch::get_num_threads());
        let goal = format!("kernels ≥ 1.0× tch: {:.2}×", ours / throughput);
        report.push(Row::throughput(case, source.to_string(), throughput, goal));
    }
    decision_latency(report, &label)
}

/// Decision latency at d=5, 25 rounds: streamed neural against whole-shot matching on the same shots.
fn decision_latency(report: &mut Report, label: &str) -> Result<()> {
    let (d, rounds) = (5, 25);
    let (model, source) = bench_model(d)?;
    let shots = report.iterations(4_000);
    let workload = Workload::new(d, rounds, shots, 9)?;
    let stream_rounds = workload.stream_rounds();
    let engine = StreamEngine::start(model.clone(), StreamOptions::default());
    let mut session = engine.open();
    let mut neural = Vec::with_capacity(shots);
    let mut engine_side = Vec::with_capacity(shots);
    for (shot, per_round) in stream_rounds.iter().enumerate() {
        let (last, body) = per_round.split_last().context("a shot has rounds")?;
        for (t, events) in body.iter().enumerate() {
            session.push_round(shot as u64, t, events)?;
        }
        let start = Instant::now();
        let result = session.finish(shot as u64, last)?;
        neural.push(micros(start.elapsed()));
        engine_side.push(micros(result.decision_latency));
    }
    drop(session);
    engine.shutdown();
    let [p50, p99, p999] = percentiles(&mut neural);
    let mut peers = Vec::new();
    for kind in DecoderKind::MATCHING {
        let mut decoder = MatchingDecoder::from_dem(&workload.dem, kind)?;
        let mut t = Vec::with_capacity(shots);
        for shot in 0..shots {
            let one = workload.events.slice(shot, shot + 1);
            let start = Instant::now();
            decoder.decode_batch(&one)?;
            t.push(micros(start.elapsed()));
        }
        peers.push((kind, percentiles(&mut t)));
    }
    let correlated = peers.iter().find(|(k, _)| *k == DecoderKind::Correlated).map(|p| p.1).context("correlated")?;
    let case = format!("{label} stream: final round in → prediction out, d=5 r=25");
    let goal = format!("≤ 0.5× correlated: p50 {:.2}×, p99 {:.2}×", p50 / correlated[0], p99 / correlated[1]);
    report.push(Row::latency("decision µs", case, source.to_string(), [p50, p99, p999], goal));
    let case = "(engine side: push timestamp → result sent)".to_string();
    report.push(Row::latency("decision µs", case, source.to_string(), percentiles(&mut engine_side), String::new()));
    for (kind, percentiles) in peers {
        let case = format!("{label} {kind}, whole shot, d=5 r=25");
        report.push(Row::latency("decision µs", case, "PyMatching 2 (C++)".into(), percentiles, String::new()));
    }
    Ok(())
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut csv, mut quick) = (None, false);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--csv" => csv = Some(args.next().context("--csv needs a path")?),
            "--quick" => quick = true,
            other => bail!("unknown argument '{other}' (expected --csv PATH, --quick)"),
        }
    }
    println!("machine: {} cores, {}, instruction set {:?}", cores(), cpu_name(), kernels::Isa::detect());
    println!();
    println!("| what | case | model | p50 | p99 | p99.9 | throughput | goal |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut report = Report { rows: Vec::new(), quick };
    run(&mut report)?;
    if let Some(path) = csv {
        let mut text = String::from("section,case,model,p50_us,p99_us,p999_us,throughput_per_s,goal\n");
        for r in &report.rows {
            let q = |s: &str| format!("\"{}\"", s.replace('"', "'"));
            text += &format!(
                "{},{},{},{},{},{},{},{}\n",
                q(r.section),
                q(&r.case),
                q(&r.model),
                r.p50,
                r.p99,
                r.p999,
                r.throughput,
                q(&r.goal)
            );
        }
        let path = std::path::Path::new(&path);
        write_atomically(path, |w| w.write_all(text.as_bytes()).map_err(|e| BridgeError::io(path, e)))?;
    }
    Ok(())
}

/// The CPU's model name, from /proc/cpuinfo where there is one.
fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
