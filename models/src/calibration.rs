//! Confidence calibration: temperature scaling and the expected calibration error.
//!
//! The model's flip probability is `sigmoid(logit / τ)`. τ is fitted on
//! held-out shots by minimizing the binary cross-entropy (Guo et al. 2017).
//! The confidence of a prediction is `max(p, 1 − p)`; the expected
//! calibration error (ECE) bins predictions by confidence and averages
//! |accuracy − confidence| over the bins, weighted by their counts.

/// Bins used for the ECE and reliability diagrams.
pub const ECE_BINS: usize = 15;

fn nll(logits: &[f32], flips: &[bool], tau: f64) -> f64 {
    logits
        .iter()
        .zip(flips)
        .map(|(&x, &y)| {
            let z = x as f64 / tau;
            z.max(0.0) - if y { z } else { 0.0 } + (-z.abs()).exp().ln_1p()
        })
        .sum::<f64>()
        / logits.len().max(1) as f64
}

/// The temperature τ in [0.02, 50] minimizing the cross-entropy of
/// `sigmoid(logit / τ)` against the actual flips (golden-section search on ln τ).
pub fn fit_temperature(logits: &[f32], flips: &[bool]) -> f64 {
    assert_eq!(logits.len(), flips.len(), "one flip per logit");
    let (mut a, mut b) = (0.02f64.ln(), 50f64.ln());
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let f = |ln_tau: f64| nll(logits, flips, ln_tau.exp());
    let (mut c, mut d) = (b - g * (b - a), a + g * (b - a));
    let (mut fc, mut fd) = (f(c), f(d));
    for _ in 0..100 {
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - g * (b - a);
            fc = f(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + g * (b - a);
            fd = f(d);
        }
    }
    ((a + b) / 2.0).exp()
}

/// Confidence `max(p, 1 − p)` of the prediction `logit > 0`, at temperature τ.
pub fn confidence(logit: f32, tau: f64) -> f64 {
    let p = 1.0 / (1.0 + (-(logit as f64) / tau).exp());
    p.max(1.0 - p)
}

/// One bin of a reliability diagram.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bin {
    /// Lower edge of the bin.
    pub low: f64,
    /// Upper edge.
    pub high: f64,
    /// Predictions in the bin.
    pub count: usize,
    /// Mean confidence in the bin.
    pub confidence: f64,
    /// Fraction right in the bin.
    pub accuracy: f64,
}

/// Bins predictions by confidence into `bins` equal bins of [0, 1].
pub fn reliability(confidences: &[f64], right: &[bool], bins: usize) -> Vec<Bin> {
    assert_eq!(confidences.len(), right.len(), "one label per confidence");
    let mut sums = vec![(0usize, 0.0f64, 0usize); bins];
    for (&c, &r) in confidences.iter().zip(right) {
        let k = ((c * bins as f64) as usize).min(bins - 1);
        sums[k].0 += 1;
        sums[k].1 += c;
        sums[k].2 += r as usize;
    }
    sums.iter()
        .enumerate()
        .map(|(k, &(n, c, r))| Bin {
            low: k as f64 / bins as f64,
            high: (k + 1) as f64 / bins as f64,
            count: n,
            confidence: if n > 0 { c / n as f64 } else { 0.0 },
            accuracy: if n > 0 { r as f64 / n as f64 } else { 0.0 },
        })
        .collect()
}

/// Expected calibration error over `bins` equal bins.
pub fn ece(confidences: &[f64], right: &[bool], bins: usize) -> f64 {
    let total = confidences.len().max(1) as f64;
    reliability(confidences, right, bins)
        .iter()
        .map(|b| b.count as f64 / total * (b.accuracy - b.confidence).abs())
        .sum()
}

/// Error rate among the shots kept after rejecting the `reject` fraction with
/// the lowest confidence (postselection). Returns (kept shots, errors among them).
pub fn postselect(confidences: &[f64], right: &[bool], reject: f64) -> (usize, usize) {
    let mut order: Vec<usize> = (0..confidences.len()).collect();
    order.sort_by(|&a, &b| confidences[a].total_cmp(&confidences[b]));
    let skip = (reject * confidences.len() as f64).round() as usize;
    let kept = &order[skip.min(order.len())..];
    (kept.len(), kept.iter().filter(|&&i| !right[i]).count())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(state: &mut u64) -> f64 {
        *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (*state >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Logits whose true temperature is 2.5 (flips drawn from sigmoid(x / 2.5)).
    fn synthetic(tau: f64, n: usize) -> (Vec<f32>, Vec<bool>) {
        let mut s = 99u64;
        let mut logits = Vec::with_capacity(n);
        let mut flips = Vec::with_capacity(n);
        for _ in 0..n {
            let x = (lcg(&mut s) * 2.0 - 1.0) * 12.0;
            let p = 1.0 / (1.0 + (-x / tau).exp());
            logits.push(x as f32);
            flips.push(lcg(&mut s) < p);
        }
        (logits, flips)
    }

    #[test]
    fn temperature_scaling_recovers_a_known_tau() {
        let (logits, flips) = synthetic(2.5, 200_000);
        let tau = fit_temperature(&logits, &flips);
        assert!((tau - 2.5).abs() < 0.05, "fitted {tau}");
        let right: Vec<bool> = logits.iter().zip(&flips).map(|(&x, &y)| (x > 0.0) == y).collect();
        let raw: Vec<f64> = logits.iter().map(|&x| confidence(x, 1.0)).collect();
        let scaled: Vec<f64> = logits.iter().map(|&x| confidence(x, tau)).collect();
        let (before, after) = (ece(&raw, &right, ECE_BINS), ece(&scaled, &right, ECE_BINS));
        assert!(before > 0.05 && after < 0.01, "ECE {before} -> {after}");
    }

    #[test]
    fn postselection_keeps_the_confident_shots() {
        let conf = [0.6, 0.99, 0.7, 0.999];
        let right = [false, true, false, true];
        assert_eq!(postselect(&conf, &right, 0.5), (2, 0));
        assert_eq!(postselect(&conf, &right, 0.0), (4, 2));
    }
}
