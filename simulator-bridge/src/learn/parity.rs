//! Bit-parallel counts, over shots, of two events per detector subset: its
//! parity is odd, and all of its detectors fired.
//!
//! Shots are taken [`BLOCK_SHOTS`] at a time and transposed to
//! detector-major words (bit `s % 64` of word `s / 64` of detector `d`'s row
//! is shot `s`'s event on `d`), so a subset's counts over 64 shots cost one
//! XOR, one AND and two popcounts per detector. Blocks go to worker threads;
//! counts are integers, so the result does not depend on the thread count.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::layout::DetectorId;
use crate::shots::PackedShots;

/// Shots transposed and counted at a time (a block of 100 detectors is 800 KiB).
pub const BLOCK_SHOTS: usize = 1 << 16;

/// Per-subset counts over all shots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubsetCounts {
    /// `odd[k]`: shots in which an odd number of subset `k`'s detectors fired.
    pub odd: Vec<u64>,
    /// `all[k]`: shots in which every detector of subset `k` fired.
    pub all: Vec<u64>,
}

/// Counts, for each subset (ascending, non-empty detector lists), the shots
/// where its parity is odd and those where all its detectors fired, with
/// `threads` workers. `progress(n)` is called as each block of `n` shots is done.
pub fn count_subsets(
    shots: &PackedShots,
    subsets: &[Vec<DetectorId>],
    threads: usize,
    progress: &(dyn Fn(usize) + Sync),
) -> SubsetCounts {
    let blocks = shots.num_shots().div_ceil(BLOCK_SHOTS);
    let threads = crate::sample::resolve_threads(threads).min(blocks.max(1));
    let next = AtomicUsize::new(0);
    let partials: Vec<SubsetCounts> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = SubsetCounts { odd: vec![0; subsets.len()], all: vec![0; subsets.len()] };
                    let mut rows = Vec::new();
                    loop {
                        let b = next.fetch_add(1, Ordering::Relaxed);
                        if b >= blocks {
                            return mine;
                        }
                        let start = b * BLOCK_SHOTS;
                        let end = (start + BLOCK_SHOTS).min(shots.num_shots());
                        let words = transpose(shots, start, end, &mut rows);
                        count_block(&rows, words, subsets, &mut mine);
                        progress(end - start);
                    }
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("counting thread panicked")).collect()
    });
    let mut total = SubsetCounts { odd: vec![0; subsets.len()], all: vec![0; subsets.len()] };
    for part in partials {
        total.odd.iter_mut().zip(&part.odd).for_each(|(t, p)| *t += p);
        total.all.iter_mut().zip(&part.all).for_each(|(t, p)| *t += p);
    }
    total
}

/// Writes shots `start..end` detector-major into `rows` (`words` words per
/// detector, unused bits zero) and returns `words`.
fn transpose(shots: &PackedShots, start: usize, end: usize, rows: &mut Vec<u64>) -> usize {
    let words = (end - start).div_ceil(64);
    rows.clear();
    rows.resize(shots.bits_per_shot() * words, 0);
    for s in start..end {
        let (word, bit) = ((s - start) / 64, (s - start) % 64);
        for (i, &byte) in shots.row(s).iter().enumerate() {
            let mut byte = byte;
            while byte != 0 {
                let d = i * 8 + byte.trailing_zeros() as usize;
                rows[d * words + word] |= 1 << bit;
                byte &= byte - 1;
            }
        }
    }
    words
}

/// Adds one block's counts.
fn count_block(rows: &[u64], words: usize, subsets: &[Vec<DetectorId>], counts: &mut SubsetCounts) {
    for (k, subset) in subsets.iter().enumerate() {
        let (mut odd, mut all) = (0u64, 0u64);
        for w in 0..words {
            let (mut x, mut a) = (0u64, !0u64);
            for &d in subset {
                let v = rows[d * words + w];
                x ^= v;
                a &= v;
            }
            odd += u64::from(x.count_ones());
            all += u64::from(a.count_ones());
        }
        counts.odd[k] += odd;
        counts.all[k] += all;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same counts, one shot and one bit at a time.
    fn reference(shots: &PackedShots, subsets: &[Vec<DetectorId>]) -> SubsetCounts {
        let mut c = SubsetCounts { odd: vec![0; subsets.len()], all: vec![0; subsets.len()] };
        for s in 0..shots.num_shots() {
            for (k, subset) in subsets.iter().enumerate() {
                let fired = subset.iter().filter(|&&d| shots.get(s, d)).count();
                c.odd[k] += (fired % 2) as u64;
                c.all[k] += u64::from(fired == subset.len());
            }
        }
        c
    }

    #[test]
    fn counts_match_the_shot_by_shot_reference_for_any_thread_count() {
        // 150,001 shots: three blocks, the last one ragged.
        let (n, bits) = (2 * BLOCK_SHOTS + 18_929, 13);
        let mut shots = PackedShots::zeros(n, bits);
        let mut state = 0x1234_5678_9abc_def0u64;
        for s in 0..n {
            for d in 0..bits {
                state = crate::sample::derive_seed(state, 1);
                shots.set(s, d, state.is_multiple_of(7));
            }
        }
        let subsets = vec![vec![0], vec![12], vec![0, 1], vec![3, 8, 12], vec![1, 2, 5, 9], vec![0, 4, 6, 7, 10, 11]];
        let want = reference(&shots, &subsets);
        let seen = AtomicUsize::new(0);
        for threads in [1, 3] {
            let got = count_subsets(&shots, &subsets, threads, &|k| {
                seen.fetch_add(k, Ordering::Relaxed);
            });
            assert_eq!(got, want);
        }
        assert_eq!(seen.load(Ordering::Relaxed), 2 * n);
        assert!(want.all[3] > 0 && want.odd[5] > 0, "{want:?}");
    }
}
