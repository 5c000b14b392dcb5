//! The CUDA engine on this machine's GPU: a correctness check against the CPU
//! engine, then the latency of one round step at batch 1 and the throughput
//! at batch 1024, for d = 3, 5, 7, 9, 11 with random weights. Prints a
//! markdown table. Run it through `scripts/gpu_bench.sh`.
//!
//! ```text
//! gpu_bench [--wide] [--steps N] [--distances 3,5,7]
//! ```
//!
//! `--wide` adds D = 64 (H = 4, L = 2, F = 128) to D = 32 (F = 64);
//! `--steps` sets the number of timed batch-1 steps (default 20000). Without
//! a GPU it exits with status 2 and "no GPU: …"; a correctness failure exits
//! with status 1.

#[path = "../tests/support/random.rs"]
mod random;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use kernels::cuda::{CudaEngine, CudaError, nvrtc_version};
use random::{Rng, config, cpu_logits, random_features, random_weights};

/// Tolerance of the GPU logits against the CPU engine (the contract with tch).
const TOLERANCE: f32 = 1e-4;
/// Streams of the throughput runs.
const BATCH: usize = 1024;

struct Options {
    widths: Vec<usize>,
    steps: usize,
    distances: Vec<usize>,
}

fn parse() -> Result<Options, String> {
    let mut o = Options { widths: vec![32], steps: 20_000, distances: vec![3, 5, 7, 9, 11] };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--wide" => o.widths.push(64),
            "--steps" => o.steps = args.next().and_then(|v| v.parse().ok()).ok_or("--steps needs a number")?,
            "--distances" => {
                let v = args.next().ok_or("--distances needs a list")?;
                o.distances = v
                    .split(',')
                    .map(|d| d.parse().map_err(|_| format!("bad distance {d}")))
                    .collect::<Result<_, _>>()?;
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(o)
}

/// One table row.
struct Row {
    distance: usize,
    width: usize,
    stabilizers: usize,
    threads: u32,
    shared_kb: f64,
    max_err: f32,
    /// Batch-1 step latency (features in, step, synchronize): p50, p99, p99.9.
    step: [Duration; 3],
    /// Batch-1 readout latency (launch, logits back), p50.
    readout_p50: Duration,
    /// Shot-rounds per second: live streams stepped round by round, and whole shots in one launch.
    step_throughput: f64,
    shot_throughput: f64,
}

fn main() -> ExitCode {
    let options = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("gpu_bench: {e}");
            return ExitCode::from(2);
        }
    };
    let mut rows = Vec::new();
    let mut device = String::new();
    let mut failed = false;
    for &width in &options.widths {
        for &d in &options.distances {
            match bench(d, width, options.steps, &mut device) {
                Ok(row) => {
                    failed |= row.max_err >= TOLERANCE || row.max_err.is_nan();
                    eprintln!("d = {d}, D = {width}: done");
                    rows.push(row);
                }
                Err(e @ CudaError::NoGpu(_)) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
                Err(e) => {
                    eprintln!("d = {d}, D = {width}: {e}");
                    failed = true;
                }
            }
        }
    }
    print_table(&device, &rows);
    if failed {
        eprintln!("gpu_bench: FAILED (an error above, or |gpu - cpu| >= {TOLERANCE:e})");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

fn bench(d: usize, width: usize, steps: usize, device: &mut String) -> Result<Row, CudaError> {
    let c = config(d, width);
    let w = random_weights(&c, 1000 + d as u64);
    let mut gpu = CudaEngine::new(&w, BATCH)?;
    *device = gpu.device_name().to_string();
    let (threads, shared) = gpu.block_shape();
    let mut rng = Rng::new(d as u64);

    // Correctness: 64 shots of d + 1 rounds (whole shots, and live streams).
    let rounds = d + 1;
    let shots: Vec<f32> = (0..64).flat_map(|_| random_features(&c, &mut rng, rounds)).collect();
    let want = cpu_logits(&w, &shots, rounds);
    let got = gpu.forward_shots(&shots, rounds)?;
    let mut max_err = max_abs_diff(&got, &want);
    let sf = c.features_len();
    gpu.reset(0..64)?;
    for t in 0..rounds {
        let round: Vec<f32> =
            shots.chunks_exact(rounds * sf).flat_map(|shot| &shot[t * sf..(t + 1) * sf]).copied().collect();
        gpu.step_batch(&round)?;
    }
    let mut live = vec![0.0; 64];
    gpu.readout_batch(&mut live)?;
    max_err = max_err.max(max_abs_diff(&live, &want));

    // Latency at batch 1: one round's features in, the step, synchronize.
    let pool: Vec<f32> = random_features(&c, &mut rng, 64);
    let rounds_pool: Vec<&[f32]> = pool.chunks_exact(sf).collect();
    gpu.reset(0..1)?;
    for f in rounds_pool.iter().cycle().take(500) {
        gpu.step_batch(f)?;
        gpu.synchronize()?;
    }
    let mut times = Vec::with_capacity(steps);
    for (i, f) in rounds_pool.iter().cycle().take(steps).enumerate() {
        if i % 64 == 0 {
            gpu.reset(0..1)?;
            gpu.synchronize()?;
        }
        let start = Instant::now();
        gpu.step_batch(f)?;
        gpu.synchronize()?;
        times.push(start.elapsed());
    }
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    let step = [pct(0.50), pct(0.99), pct(0.999)];
    let mut readout_times = Vec::with_capacity(1000);
    let mut logit = [0.0f32];
    for _ in 0..1000 {
        let start = Instant::now();
        gpu.readout_batch(&mut logit)?;
        readout_times.push(start.elapsed());
    }
    readout_times.sort();
    let readout_p50 = readout_times[readout_times.len() / 2];

    // Throughput at batch 1024: live streams round by round (features copied in every round).
    let batch_rounds: Vec<Vec<f32>> = (0..8).map(|_| random_features(&c, &mut rng, BATCH)).collect();
    gpu.reset(0..BATCH)?;
    for f in &batch_rounds {
        gpu.step_batch(f)?;
    }
    gpu.synchronize()?;
    let timed_rounds = 40;
    let start = Instant::now();
    for f in batch_rounds.iter().cycle().take(timed_rounds) {
        gpu.step_batch(f)?;
    }
    gpu.synchronize()?;
    let step_throughput = (BATCH * timed_rounds) as f64 / start.elapsed().as_secs_f64();

    // Whole shots of d + 1 rounds, one launch (features in, logits out).
    let shots: Vec<f32> = (0..BATCH).flat_map(|_| random_features(&c, &mut rng, rounds)).collect();
    gpu.forward_shots(&shots, rounds)?;
    let repeats = 10;
    let start = Instant::now();
    for _ in 0..repeats {
        gpu.forward_shots(&shots, rounds)?;
    }
    let shot_throughput = (BATCH * rounds * repeats) as f64 / start.elapsed().as_secs_f64();

    Ok(Row {
        distance: d,
        width,
        stabilizers: c.stabilizers,
        threads,
        shared_kb: shared as f64 / 1024.0,
        max_err,
        step,
        readout_p50,
        step_throughput,
        shot_throughput,
    })
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, |m, e| if e.is_nan() { f32::NAN } else { m.max(e) })
}

fn print_table(device: &str, rows: &[Row]) {
    let nvrtc = nvrtc_version().map(|(a, b)| format!("{a}.{b}")).unwrap_or_else(|e| e.to_string());
    println!("### qecd CUDA kernels on {device} (NVRTC {nvrtc}; H = 4, L = 2, F = 2D, random weights)\n");
    println!(
        "| d | S | D | threads | smem KiB | max \\|gpu−cpu\\| | step p50 µs | p99 µs | p99.9 µs | readout p50 µs \
         | batch {BATCH}, per-round steps (shot-rounds/s) | batch {BATCH}, whole shots of d+1 rounds (shot-rounds/s) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let us = |t: Duration| t.as_secs_f64() * 1e6;
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {:.1} | {:.1e} | {:.1} | {:.1} | {:.1} | {:.1} | {:.3e} | {:.3e} |",
            r.distance,
            r.stabilizers,
            r.width,
            r.threads,
            r.shared_kb,
            r.max_err,
            us(r.step[0]),
            us(r.step[1]),
            us(r.step[2]),
            us(r.readout_p50),
            r.step_throughput,
            r.shot_throughput
        );
    }
    println!(
        "\nStep latency: host clock around one batch-1 `step_batch` (features copied in, fused step kernel) \
         and a stream synchronize. Throughput: {BATCH} streams, host clock, features copied in per launch."
    );
}
