//! The CUDA path against the CPU engine and the `f64` reference.
//!
//! What runs depends on the machine, and every test says on stderr what it
//! skipped: the PTX compile needs only libnvrtc (on `LD_LIBRARY_PATH`); the
//! numerical tests need libcuda and a GPU. Without libcuda, the typed
//! "no GPU" error is checked instead.
#![cfg(feature = "cuda")]

#[path = "support/random.rs"]
mod random;

use kernels::cuda::{CudaEngine, CudaError, driver_available, nvrtc_available, ptx_for};
use kernels::{KernelConfig, Scratch, Weights, reference};
use random::{Rng, config, cpu_logits, random_features, random_weights};

/// A ragged shape: widths that are no multiple of 32, three heads of 6, two observables.
fn odd() -> KernelConfig {
    kernels::testutil::odd()
}

/// Many stabilizers: S·NF = 600, too many features to pass in a launch.
fn wide() -> KernelConfig {
    KernelConfig {
        stabilizers: 200,
        width: 16,
        heads: 2,
        layers: 1,
        ffn_width: 32,
        readout_width: 8,
        observables: 1,
        features: 3,
    }
}

fn compile_configs() -> Vec<KernelConfig> {
    let mut configs: Vec<KernelConfig> = [3, 5, 7, 9, 11].into_iter().map(|d| config(d, 32)).collect();
    configs.extend([3, 5, 11].into_iter().map(|d| config(d, 64)));
    configs.extend([odd(), wide()]);
    configs
}

#[test]
fn kernels_compile_to_ptx() {
    if !nvrtc_available() {
        let err = ptx_for(&config(3, 32)).unwrap_err();
        assert!(matches!(err, CudaError::NoNvrtc(_)), "{err}");
        eprintln!("SKIPPED: libnvrtc not found ({err}); checked the typed error only");
        return;
    }
    let (major, minor) = kernels::cuda::nvrtc_version().unwrap();
    for c in compile_configs() {
        let start = std::time::Instant::now();
        let ptx = ptx_for(&c).unwrap_or_else(|e| panic!("{c:?}: {e}"));
        for kernel in ["qecd_step", "qecd_shot", "qecd_readout"] {
            assert!(ptx.contains(&format!(".entry {kernel}(")), "{c:?}: no entry {kernel}");
        }
        // The batch-1 step with the features in the launch, where they fit in 2 KiB.
        assert_eq!(ptx.contains(".entry qecd_step_one("), c.features_len() <= 512, "{c:?}");
        // Per-thread arrays (accumulators, a query, a row) stay in registers: no local memory.
        assert!(!ptx.contains(".local"), "{c:?}: the PTX uses local memory");
        eprintln!(
            "NVRTC {major}.{minor}: S={} D={} H={} L={} F={}: {} bytes of PTX in {:.2?}",
            c.stabilizers,
            c.width,
            c.heads,
            c.layers,
            c.ffn_width,
            ptx.len(),
            start.elapsed()
        );
    }
}

#[test]
fn without_a_gpu_the_engine_is_a_typed_error() {
    let w = random_weights(&config(3, 32), 1);
    match CudaEngine::new(&w, 4) {
        Err(CudaError::NoGpu(why)) => {
            if !driver_available() {
                assert!(why.contains("libcuda not found"), "{why}");
            }
            eprintln!("no GPU, as expected here: {why}");
        }
        Ok(engine) => {
            assert!(driver_available());
            eprintln!("SKIPPED: a GPU is present ({}); the no-GPU error cannot be provoked", engine.device_name());
        }
        Err(e) => panic!("expected NoGpu or an engine, got: {e}"),
    }
}

/// A decoder moves its engine to a worker thread.
#[test]
fn engine_is_send() {
    fn send<T: Send>() {}
    send::<CudaEngine>();
}

/// The engine on GPU 0. The GPU tests are `#[ignore]`d (the test summary
/// counts them as skipped) and run only where a GPU was found, so a missing
/// GPU here is a failure, never a pass.
fn engine_or_skip(w: &Weights, max_streams: usize, test: &str) -> Option<CudaEngine> {
    match CudaEngine::new(w, max_streams) {
        Ok(engine) => Some(engine),
        Err(e) => panic!("{test}: {e}"),
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
#[ignore = "needs a CUDA GPU; scripts/test runs it where nvidia-smi finds one"]
fn gpu_shots_match_the_cpu_engine() {
    for (i, c) in [config(3, 32), config(5, 32), odd(), config(7, 32), config(11, 64)].into_iter().enumerate() {
        let w = random_weights(&c, 100 + i as u64);
        // Room for 16 streams: batches of 33 run in three launches.
        let Some(mut gpu) = engine_or_skip(&w, 16, "gpu_shots_match_the_cpu_engine") else { return };
        let mut rng = Rng::new(i as u64);
        let mut worst = 0.0f32;
        for rounds in 1..=25 {
            let shots = [1, 2, 16, 33][rounds % 4];
            let features: Vec<f32> = (0..shots).flat_map(|_| random_features(&c, &mut rng, rounds)).collect();
            let got = gpu.forward_shots(&features, rounds).unwrap();
            let want = cpu_logits(&w, &features, rounds);
            let err = max_abs_diff(&got, &want);
            assert!(err < 1e-4, "{c:?}, {rounds} rounds, {shots} shots: |gpu - cpu| = {err:e}");
            worst = worst.max(err);
            if rounds % 6 == 1 {
                let exact = reference::forward(&w, &features[..rounds * c.features_len()], rounds);
                for (g, r) in got.iter().zip(&exact) {
                    assert!((*g as f64 - r).abs() < 1e-4, "{c:?}, {rounds} rounds: gpu {g} vs reference {r}");
                }
            }
        }
        eprintln!("{} on {}: max |gpu - cpu| over rounds 1..=25 = {worst:e}", short(&c), gpu.device_name());
    }
}

/// States agree to 1e-5 of their largest magnitude (at least 10): they are
/// sums of many residual terms, unlike the logits after LayerNorm.
fn assert_states_close(got: &[f32], want: &[f32], what: &str) {
    let scale = want.iter().fold(10.0f32, |m, v| m.max(v.abs()));
    let err = max_abs_diff(got, want);
    assert!(err < 1e-5 * scale, "{what}: |gpu - cpu| state = {err:e} (scale {scale})");
}

fn short(c: &KernelConfig) -> String {
    format!("S={} D={} H={} L={} F={}", c.stabilizers, c.width, c.heads, c.layers, c.ffn_width)
}

/// Live streams: step_batch / step_rounds / readout_batch / reset / states
/// against the CPU batch functions, round by round.
#[test]
#[ignore = "needs a CUDA GPU; scripts/test runs it where nvidia-smi finds one"]
fn gpu_live_streams_match_the_cpu_engine() {
    for (i, c) in [config(3, 32), odd(), config(9, 32)].into_iter().enumerate() {
        let w = random_weights(&c, 200 + i as u64);
        let Some(mut gpu) = engine_or_skip(&w, 7, "gpu_live_streams_match_the_cpu_engine") else { return };
        let (streams, rounds, sd, sf, o) = (5, 12, c.state_len(), c.features_len(), c.observables);
        let mut rng = Rng::new(7 + i as u64);
        let shots: Vec<Vec<f32>> = (0..streams).map(|_| random_features(&c, &mut rng, rounds)).collect();
        let round = |t: usize| -> Vec<f32> { shots.iter().flat_map(|s| &s[t * sf..(t + 1) * sf]).copied().collect() };

        let mut scratches = vec![Scratch::new(&c)];
        let mut cpu_states = vec![0.0; streams * sd];
        for t in 0..rounds {
            gpu.step_batch(&round(t)).unwrap();
            kernels::step_batch(&w, &mut cpu_states, &round(t), &mut scratches, 1);
            assert_states_close(&gpu.states(0..streams).unwrap(), &cpu_states, &format!("{c:?}, round {t}"));
        }
        let mut got = vec![0.0; streams * o];
        let mut want = vec![0.0; streams * o];
        gpu.readout_batch(&mut got).unwrap();
        kernels::readout_batch(&w, &cpu_states, &mut scratches, &mut want, 1);
        assert!(max_abs_diff(&got, &want) < 1e-4, "{c:?}: readout {got:?} vs {want:?}");
        // The live path ends where whole shots end.
        let whole: Vec<f32> = shots.concat();
        assert!(max_abs_diff(&gpu.forward_shots(&whole, rounds).unwrap(), &got) < 1e-4);

        // Streams 1 and 2 start over; the others are untouched.
        gpu.reset(1..3).unwrap();
        let after = gpu.states(0..streams).unwrap();
        assert!(after[sd..3 * sd].iter().all(|&v| v == 0.0));
        assert_states_close(&after[..sd], &cpu_states[..sd], "stream 0 after reset(1..3)");
        assert_states_close(&after[3 * sd..], &cpu_states[3 * sd..], "streams 3, 4 after reset(1..3)");

        // Several rounds in one launch equal the round-by-round steps.
        gpu.reset(0..streams).unwrap();
        gpu.step_rounds(&whole, rounds).unwrap();
        assert_states_close(&gpu.states(0..streams).unwrap(), &cpu_states, &format!("{c:?}, step_rounds"));

        // set_states / states round trip, and the checks on arguments.
        gpu.set_states(2, &cpu_states[..2 * sd]).unwrap();
        assert_eq!(gpu.states(2..4).unwrap(), cpu_states[..2 * sd].to_vec());
        assert!(matches!(gpu.step_batch(&vec![0.0; 8 * sf]), Err(CudaError::Input(_))));
        assert!(matches!(gpu.step_batch(&vec![0.0; sf + 1]), Err(CudaError::Input(_))));
        assert!(matches!(gpu.reset(5..9), Err(CudaError::Input(_))));
        assert!(matches!(gpu.forward_shots(&[], 0), Err(CudaError::Input(_))));
        assert!(gpu.forward_shots(&[], 3).unwrap().is_empty());
    }
}

/// Batch 1, where the features travel in the launch (S·NF ≤ 512), and a
/// shape too large for that ([`wide`]), which copies them in.
#[test]
#[ignore = "needs a CUDA GPU; scripts/test runs it where nvidia-smi finds one"]
fn gpu_single_stream_matches_the_cpu_engine() {
    for (i, c) in [config(3, 32), config(11, 32), wide()].into_iter().enumerate() {
        let w = random_weights(&c, 400 + i as u64);
        let Some(mut gpu) = engine_or_skip(&w, 2, "gpu_single_stream_matches_the_cpu_engine") else { return };
        let rounds = 15;
        let features = random_features(&c, &mut Rng::new(i as u64), rounds);
        let mut scratch = Scratch::new(&c);
        let mut state = vec![0.0; c.state_len()];
        for (t, f) in features.chunks_exact(c.features_len()).enumerate() {
            gpu.step_batch(f).unwrap();
            kernels::step(&w, &mut state, f, &mut scratch);
            assert_states_close(&gpu.states(0..1).unwrap(), &state, &format!("{}, round {t}", short(&c)));
        }
        let (mut got, mut want) = ([0.0f32], [0.0f32]);
        gpu.readout_batch(&mut got).unwrap();
        kernels::readout(&w, &state, &mut scratch, &mut want);
        assert!((got[0] - want[0]).abs() < 1e-4, "{}: {got:?} vs {want:?}", short(&c));
        // Stream 1 was never stepped.
        assert!(gpu.states(1..2).unwrap().iter().all(|&v| v == 0.0));
    }
}

/// A throughput-sized batch (1024 shots) against the CPU engine.
#[test]
#[ignore = "needs a CUDA GPU; scripts/test runs it where nvidia-smi finds one"]
fn gpu_large_batch_matches_the_cpu_engine() {
    for (i, c) in [config(3, 32), config(5, 64)].into_iter().enumerate() {
        let w = random_weights(&c, 300 + i as u64);
        let Some(mut gpu) = engine_or_skip(&w, 1024, "gpu_large_batch_matches_the_cpu_engine") else { return };
        let (shots, rounds) = (1024, 6);
        let mut rng = Rng::new(99);
        let features: Vec<f32> = (0..shots).flat_map(|_| random_features(&c, &mut rng, rounds)).collect();
        let got = gpu.forward_shots(&features, rounds).unwrap();
        let err = max_abs_diff(&got, &cpu_logits(&w, &features, rounds));
        assert!(err < 1e-4, "{c:?}: |gpu - cpu| = {err:e}");
    }
}
