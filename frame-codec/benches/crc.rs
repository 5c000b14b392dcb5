//! CRC32C over a frame's bytes: the `crc32c` crate (SSE4.2 `crc32` where the
//! CPU has it), which the codec uses, against a byte-at-a-time lookup table,
//! the plain software CRC32C, as the baseline.
//!
//! ```text
//! cargo bench -p frame-codec --bench crc -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Sizes: 64 B (a d = 25 ROUND frame is 116 B), 1 KiB, and 64 KiB (the
//! largest payload). Goal: a d = 25 ROUND frame's CRC under 20 ns, 2% of a
//! 1 µs QPU round (each end computes it once per frame).
//!
//! Measured on the 2-core development machine (x86-64 with SSE4.2), median:
//!
//! | bytes | `crc32c` crate | table |
//! |---:|---:|---:|
//! | 64 | 6.3 ns (9.4 GiB/s) | 90 ns (678 MiB/s) |
//! | 1024 | 33 ns (28.9 GiB/s) | 2.17 µs (451 MiB/s) |
//! | 65536 | 2.74 µs (22.3 GiB/s) | 147 µs (426 MiB/s) |

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

/// CRC32C lookup table (Castagnoli, reflected polynomial 0x82F63B78), built at compile time.
const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC32C with one table lookup per byte.
fn table_crc32c(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &byte in data {
        c = TABLE[((c ^ u32::from(byte)) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

fn crc(c: &mut Criterion) {
    let mut group = c.benchmark_group("crc32c/cpu");
    for size in [64, 1024, 64 * 1024] {
        let data: Vec<u8> = (0..size as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        assert_eq!(frame_codec::crc32c(&data), table_crc32c(&data));
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("crc32c-crate", size), &data, |b, d| {
            b.iter(|| frame_codec::crc32c(black_box(d)))
        });
        group.bench_with_input(BenchmarkId::new("table", size), &data, |b, d| b.iter(|| table_crc32c(black_box(d))));
    }
    group.finish();
}

criterion_group!(benches, crc);
criterion_main!(benches);
