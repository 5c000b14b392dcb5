//! The [`Backend`] trait: the CPU backend against the `f64` reference and the
//! free functions, the CUDA backend against the CPU backend (on a GPU), and
//! the typed error where CUDA cannot run.

#[path = "support/random.rs"]
mod random;

use kernels::{Backend, BackendError, Device, KernelConfig, Weights, backend, forward_shot, reference};
use random::{Rng, config, random_features, random_weights};

/// Shot `i` lives in slot `SLOTS[i]`: the first three are one ascending run
/// (the in-place path), the rest are not (the gather path).
const SLOTS: [usize; 7] = [3, 4, 5, 0, 8, 2, 9];
const ROUNDS: usize = 6;

fn configs() -> Vec<KernelConfig> {
    vec![config(3, 32), kernels::testutil::odd(), config(5, 32)]
}

/// Rows `[slots.len()][S][NF]` of round `t` of `shots` (each `[T][S][NF]`), in `order` (indices into `shots`).
fn round_of(c: &KernelConfig, shots: &[Vec<f32>], order: &[usize], t: usize) -> Vec<f32> {
    let sf = c.features_len();
    order.iter().flat_map(|&i| shots[i][t * sf..(t + 1) * sf].iter().copied()).collect()
}

/// Runs the shots through `b` in slots [`SLOTS`] from the zero state:
/// even rounds in one call over all slots, odd rounds in two calls (the
/// ascending run, then the rest, listed backwards). Returns the logits and
/// final states, in shot order.
fn through(b: &mut dyn Backend, shots: &[Vec<f32>]) -> (Vec<f32>, Vec<f32>) {
    let c = b.config().clone();
    b.reserve(10).unwrap();
    assert!(b.slots() >= 10);
    b.reset(&SLOTS).unwrap();
    let all: Vec<usize> = (0..shots.len()).collect();
    for t in 0..ROUNDS {
        if t % 2 == 0 {
            b.step(&SLOTS, &round_of(&c, shots, &all, t)).unwrap();
        } else {
            b.step(&SLOTS[..3], &round_of(&c, shots, &all[..3], t)).unwrap();
            let rest: Vec<usize> = (3..shots.len()).rev().collect();
            let slots: Vec<usize> = rest.iter().map(|&i| SLOTS[i]).collect();
            b.step(&slots, &round_of(&c, shots, &rest, t)).unwrap();
        }
    }
    let mut logits = vec![f32::NAN; shots.len() * c.observables];
    b.readout(&SLOTS, &mut logits).unwrap();
    let mut states = vec![f32::NAN; shots.len() * c.state_len()];
    b.states(&SLOTS, &mut states).unwrap();
    (logits, states)
}

fn shots_for(c: &KernelConfig, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = Rng::new(seed);
    (0..SLOTS.len()).map(|_| random_features(c, &mut rng, ROUNDS)).collect()
}

/// The free functions' logits and final states, shot by shot.
fn free_functions(w: &Weights, shots: &[Vec<f32>]) -> (Vec<f32>, Vec<f32>) {
    let c = w.config();
    let mut scratch = kernels::Scratch::new(c);
    let (mut logits, mut states) = (Vec::new(), Vec::new());
    for shot in shots {
        let mut state = vec![0.0; c.state_len()];
        let mut l = vec![0.0; c.observables];
        forward_shot(w, shot, ROUNDS, &mut scratch, &mut state, &mut l);
        logits.extend(l);
        states.extend(state);
    }
    (logits, states)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn cpu_backend_matches_the_reference_and_the_free_functions() {
    let mut worst = 0.0f64;
    for (i, c) in configs().into_iter().enumerate() {
        let w = random_weights(&c, 10 + i as u64);
        let shots = shots_for(&c, 20 + i as u64);
        let mut cpu = backend::cpu(w.clone());
        assert!(cpu.device().starts_with("cpu-"), "{}", cpu.device());
        let (logits, states) = through(&mut cpu, &shots);
        for (shot, got) in shots.iter().zip(logits.chunks_exact(c.observables)) {
            for (g, r) in got.iter().zip(reference::forward(&w, shot, ROUNDS)) {
                let err = (*g as f64 - r).abs();
                assert!(err < 1e-4, "{c:?}: logit {g} vs reference {r}");
                worst = worst.max(err);
            }
        }
        let (want_logits, want_states) = free_functions(&w, &shots);
        assert_eq!(bits(&logits), bits(&want_logits), "{c:?}: logits");
        assert_eq!(bits(&states), bits(&want_states), "{c:?}: states");
    }
    eprintln!("cpu backend: max |logit - reference| = {worst:e}");
}

#[test]
fn cpu_backend_threads_give_the_same_bits() {
    let c = kernels::testutil::odd();
    let w = random_weights(&c, 5);
    let streams = 300; // above the 256 streams from which a batch is split over threads
    let slots: Vec<usize> = (0..streams).rev().collect();
    let features = random_features(&c, &mut Rng::new(6), streams);
    let mut results = Vec::new();
    for threads in [1, 3] {
        let mut b = backend::cpu(w.clone()).with_threads(threads);
        b.reserve(streams).unwrap();
        b.step(&slots, &features).unwrap();
        b.step(&slots[..streams / 2], &features[..streams / 2 * c.features_len()]).unwrap();
        let mut logits = vec![0.0; streams * c.observables];
        b.readout(&slots, &mut logits).unwrap();
        results.push(bits(&logits));
    }
    assert_eq!(results[0], results[1]);
}

#[test]
fn cpu_backend_refuses_bad_calls_and_changes_nothing() {
    let c = config(3, 32);
    let w = random_weights(&c, 1);
    let mut b = backend::cpu(w);
    b.reserve(4).unwrap();
    let sf = c.features_len();
    let features = random_features(&c, &mut Rng::new(2), 3);
    b.step(&[0, 1, 3], &features).unwrap();
    let all = [0, 1, 2, 3];
    let mut before = vec![0.0; 4 * c.state_len()];
    b.states(&all, &mut before).unwrap();
    let input = |e: BackendError| match e {
        BackendError::Input(m) => m,
        other => panic!("expected an input error, got {other}"),
    };
    assert_eq!(input(b.step(&[0, 4], &features[..2 * sf]).unwrap_err()), "slot 4 outside 0..4");
    assert!(input(b.step(&[0, 1], &features).unwrap_err()).contains("features length"));
    assert_eq!(input(b.step(&[3, 1, 3], &features).unwrap_err()), "slot 3 appears twice in one call");
    assert_eq!(input(b.readout(&[2, 0, 2], &mut [0.0; 3]).unwrap_err()), "slot 2 appears twice in one call");
    assert!(input(b.readout(&[0], &mut [0.0; 2]).unwrap_err()).contains("logits length 2"));
    assert_eq!(input(b.reset(&[7]).unwrap_err()), "slot 7 outside 0..4");
    let mut after = vec![0.0; 4 * c.state_len()];
    b.states(&all, &mut after).unwrap();
    assert_eq!(bits(&before), bits(&after));
    assert!(before[2 * c.state_len()..3 * c.state_len()].iter().all(|&v| v == 0.0), "slot 2 was never stepped");
    assert!(before[..c.state_len()].iter().any(|&v| v != 0.0));
}

#[test]
fn slots_grow_and_reset_to_zero() {
    let c = config(3, 32);
    let mut b = backend::cpu(random_weights(&c, 3));
    assert_eq!(b.slots(), 0);
    b.reserve(2).unwrap();
    b.reserve(1).unwrap();
    assert_eq!(b.slots(), 2);
    b.step(&[1, 0], &random_features(&c, &mut Rng::new(4), 2)).unwrap();
    b.reserve(5).unwrap();
    let mut z = vec![f32::NAN; 5 * c.state_len()];
    b.states(&[0, 1, 2, 3, 4], &mut z).unwrap();
    assert!(z[..2 * c.state_len()].iter().any(|&v| v != 0.0), "grown slots keep their states");
    assert!(z[2 * c.state_len()..].iter().all(|&v| v == 0.0), "new slots are zero");
    b.reset(&[1]).unwrap();
    b.states(&[0, 1], &mut z[..2 * c.state_len()]).unwrap();
    assert!(z[..c.state_len()].iter().any(|&v| v != 0.0));
    assert!(z[c.state_len()..2 * c.state_len()].iter().all(|&v| v == 0.0));
    // Nothing to do is fine.
    b.step(&[], &[]).unwrap();
    b.readout(&[], &mut []).unwrap();
}

#[test]
fn devices_choose_the_backend() {
    let w = random_weights(&config(3, 32), 7);
    let cpu = backend::on(Device::Cpu, w.clone()).unwrap();
    assert_eq!(cpu.device(), format!("cpu-{:?}", w.isa()).to_lowercase());
    assert_eq!(cpu.config(), w.config());
}

/// Where CUDA cannot run, asking for it is a typed error that says why,
/// before libcuda is touched.
#[test]
fn the_cuda_backend_says_why_it_is_unavailable() {
    let w = random_weights(&config(3, 32), 8);
    #[cfg(feature = "cuda")]
    if kernels::cuda::driver_available() {
        let gpu = backend::cuda(&w, 0).unwrap_or_else(|e| panic!("libcuda is present, but: {e}"));
        assert!(gpu.device().starts_with("cuda:0 ("), "{}", gpu.device());
        eprintln!("SKIPPED: a GPU is present ({}); the no-GPU error cannot be provoked", gpu.device());
        return;
    }
    for err in [backend::cuda(&w, 0).unwrap_err(), backend::on(Device::Cuda(0), w.clone()).unwrap_err()] {
        let BackendError::Unavailable { backend, reason } = &err else { panic!("expected unavailable, got {err}") };
        assert_eq!(*backend, "CUDA");
        let why = if cfg!(feature = "cuda") { "libcuda not found" } else { "`cuda` feature" };
        assert!(reason.contains(why), "{reason}");
        assert!(err.to_string().starts_with("the CUDA backend is unavailable: "), "{err}");
    }
}

/// The CUDA backend against the CPU backend, through the trait, with the same
/// slot lists (one launch per ascending run of slots).
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a CUDA GPU; scripts/test runs it where nvidia-smi finds one"]
fn cuda_backend_matches_the_cpu_backend() {
    for (i, c) in configs().into_iter().enumerate() {
        let w = random_weights(&c, 30 + i as u64);
        let shots = shots_for(&c, 40 + i as u64);
        let mut gpu = backend::cuda(&w, 0).unwrap_or_else(|e| panic!("cuda_backend_matches_the_cpu_backend: {e}"));
        let (want_logits, want_states) = through(&mut backend::cpu(w.clone()), &shots);
        let (logits, states) = through(gpu.as_mut(), &shots);
        let err = logits.iter().zip(&want_logits).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(err < 1e-4, "{c:?}: |gpu - cpu| logit = {err:e}");
        let scale = want_states.iter().fold(10.0f32, |m, v| m.max(v.abs()));
        let err = states.iter().zip(&want_states).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(err < 1e-5 * scale, "{c:?}: |gpu - cpu| state = {err:e} (scale {scale})");
        // A repeated slot is refused on the GPU too.
        let sf = c.features_len();
        let twice = gpu.step(&[2, 5, 2], &shots[0][..3 * sf]).unwrap_err();
        assert_eq!(twice, BackendError::Input("slot 2 appears twice in one call".into()));
    }
}
