//! Criterion bench `decode`: matching and correlated matching on CPU, one
//! thread, memory-Z SI1000 p=0.003 with rounds = d, d = 3..11.
//!
//! Each iteration decodes the same batch of sampled shots; criterion reports
//! time per batch and throughput in shots per second. The peer figure
//! (Python PyMatching's `decode_batch` on the same DEM and shots) comes from
//! `scripts/compare_python.sh`, which runs both in one go.
//!
//! Goal beside each bench: a decoder that keeps up with a 1 µs round clock
//! spends under `d` µs per shot of `d` rounds.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use decoder::{Decoder, DecoderKind, MatchingDecoder};
use simulator_bridge::sample::Sampler;
use simulator_bridge::{Basis, MemoryExperiment, NoiseModel};

const SHOTS: usize = 2048;

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    group.sample_size(10);
    for d in [3usize, 5, 7, 9, 11] {
        let experiment = MemoryExperiment::new(d, d, Basis::Z).expect("valid experiment");
        let circuit = experiment.noisy_circuit(&NoiseModel::Si1000 { p: 0.003 }).expect("noise applies");
        let dem = simulator_bridge::decoding_dem(&circuit).expect("decomposable DEM");
        let shots = Sampler::new(&circuit).sample(SHOTS, 7, 0).expect("sampling works");
        group.throughput(Throughput::Elements(SHOTS as u64));
        for kind in DecoderKind::MATCHING {
            let mut decoder = MatchingDecoder::from_dem(&dem, kind).expect("graph builds");
            let id = BenchmarkId::new(format!("cpu/{kind}"), format!("d={d} (goal < {d} us/shot)"));
            group.bench_function(id, |b| {
                b.iter(|| decoder.decode_batch(&shots.detectors).expect("decodes"));
            });
        }
    }
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
