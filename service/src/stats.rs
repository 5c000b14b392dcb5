//! Server-wide counters and latency histograms, for `GetStats` and the demo.
//! Recording takes no lock: every counter and histogram bucket is an atomic,
//! bumped where the latency is measured (on the engine's callback, say).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use decoder::DecoderKind;

/// Latency histogram with logarithmic buckets: 64 per factor of 10 from
/// 100 ns to 100 s (3.7% wide), so percentiles are exact to a few percent
/// with constant memory however long the server runs.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

const BUCKETS_PER_DECADE: f64 = 64.0;
const MIN_NS: f64 = 100.0;
const DECADES: usize = 9;

impl Default for Histogram {
    fn default() -> Self {
        Self { counts: vec![0; DECADES * BUCKETS_PER_DECADE as usize + 2], total: 0 }
    }
}

/// The bucket of a latency.
fn bucket(d: Duration, buckets: usize) -> usize {
    let ns = d.as_nanos() as f64;
    if ns < MIN_NS { 0 } else { (((ns / MIN_NS).log10() * BUCKETS_PER_DECADE) as usize + 1).min(buckets - 1) }
}

impl Histogram {
    /// Adds one sample.
    pub fn record(&mut self, d: Duration) {
        let i = bucket(d, self.counts.len());
        self.counts[i] += 1;
        self.total += 1;
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The `q`-quantile in microseconds (the upper edge of its bucket); NaN when empty.
    pub fn quantile_us(&self, q: f64) -> f64 {
        if self.total == 0 {
            return f64::NAN;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return MIN_NS * 10f64.powf(i as f64 / BUCKETS_PER_DECADE) / 1e3;
            }
        }
        unreachable!("rank ≤ total")
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &Histogram) {
        self.counts.iter_mut().zip(&other.counts).for_each(|(a, b)| *a += b);
        self.total += other.total;
    }

    /// p50, p99 and p99.9 in microseconds.
    pub fn percentiles_us(&self) -> [f64; 3] {
        [self.quantile_us(0.5), self.quantile_us(0.99), self.quantile_us(0.999)]
    }
}

/// A [`Histogram`] that many threads record into at once without a lock.
#[derive(Debug)]
struct SharedHistogram {
    counts: Box<[AtomicU64]>,
}

impl Default for SharedHistogram {
    fn default() -> Self {
        Self { counts: (0..Histogram::default().counts.len()).map(|_| AtomicU64::new(0)).collect() }
    }
}

impl SharedHistogram {
    fn record(&self, d: Duration) {
        self.counts[bucket(d, self.counts.len())].fetch_add(1, Ordering::Relaxed);
    }

    /// What it holds now (buckets read one by one, so a sample recorded
    /// meanwhile may or may not be in it).
    fn snapshot(&self) -> Histogram {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        Histogram { total: counts.iter().sum(), counts }
    }
}

/// Per answering decoder: round-acknowledgement and decision latencies.
#[derive(Clone, Debug, Default)]
pub struct DecoderLatency {
    /// Round received → acknowledgement sent.
    pub round: Histogram,
    /// Final round received → result sent.
    pub decision: Histogram,
}

/// Everything `GetStats` reports.
#[derive(Debug)]
pub struct Stats {
    /// Round and decision histograms of each kind, in `DecoderKind::ALL`'s order.
    latency: Vec<(DecoderKind, [SharedHistogram; 2])>,
    /// Shots no decoder could answer (each got a failure status instead).
    pub failed_shots: AtomicU64,
    /// Neural steps that missed their budget.
    pub budget_misses: AtomicU64,
    /// Shots moved to correlated matching because the backlog passed its bound.
    pub backlog_fallbacks: AtomicU64,
    /// Shots answered by correlated matching after leaving the neural decoder.
    pub fallbacks: AtomicU64,
    /// Shots shadow-decoded in the checked mode.
    pub checked: AtomicU64,
    /// Of those, the ones where correlated matching agreed.
    pub agreed: AtomicU64,
    /// Streams open now.
    pub open_streams: AtomicU64,
    /// Streams refused for lack of room.
    pub rejected_streams: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        let zero = || AtomicU64::new(0);
        Self {
            latency: DecoderKind::ALL.into_iter().map(|k| (k, Default::default())).collect(),
            failed_shots: zero(),
            budget_misses: zero(),
            backlog_fallbacks: zero(),
            fallbacks: zero(),
            checked: zero(),
            agreed: zero(),
            open_streams: zero(),
            rejected_streams: zero(),
        }
    }
}

impl Stats {
    /// Records a round acknowledgement's latency.
    pub fn round(&self, kind: DecoderKind, d: Duration) {
        self.of(kind)[0].record(d);
    }

    /// Records a decision's latency.
    pub fn decision(&self, kind: DecoderKind, d: Duration) {
        self.of(kind)[1].record(d);
    }

    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A copy of the latency histograms of the decoders that answered anything.
    pub fn latencies(&self) -> Vec<(DecoderKind, DecoderLatency)> {
        self.latency
            .iter()
            .map(|(kind, [round, decision])| {
                (*kind, DecoderLatency { round: round.snapshot(), decision: decision.snapshot() })
            })
            .filter(|(_, l)| l.round.count() + l.decision.count() > 0)
            .collect()
    }

    fn of(&self, kind: DecoderKind) -> &[SharedHistogram; 2] {
        &self.latency.iter().find(|(k, _)| *k == kind).expect("every kind has histograms").1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_within_a_bucket() {
        let mut h = Histogram::default();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let [p50, p99, p999] = h.percentiles_us();
        for (got, want) in [(p50, 500.0), (p99, 990.0), (p999, 999.0)] {
            assert!(got >= want && got <= want * 1.04, "{got} vs {want}");
        }
        assert!(Histogram::default().quantile_us(0.5).is_nan());
    }

    #[test]
    fn threads_record_without_losing_samples() {
        let stats = Stats::default();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let stats = &stats;
                s.spawn(move || {
                    for us in 0..10_000u64 {
                        stats.round(DecoderKind::Neural, Duration::from_micros(1 + (us + t) % 100));
                    }
                });
            }
        });
        stats.decision(DecoderKind::Correlated, Duration::from_micros(7));
        let all = stats.latencies();
        let kinds: Vec<DecoderKind> = all.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, [DecoderKind::Correlated, DecoderKind::Neural]);
        assert_eq!(all[1].1.round.count(), 40_000);
        assert_eq!(all[1].1.decision.count(), 0);
        let mut alone = Histogram::default();
        (0..10_000u64).for_each(|us| alone.record(Duration::from_micros(1 + us % 100)));
        assert_eq!(all[1].1.round.percentiles_us(), alone.percentiles_us());
    }
}
