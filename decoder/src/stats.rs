//! Logical-error-rate statistics, with sinter's conventions.

/// Shots and logical errors counted for one case.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorCount {
    /// Shots decoded.
    pub shots: u64,
    /// Shots whose prediction was wrong.
    pub errors: u64,
}

/// A rate and the interval of rates compatible with the data.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fit {
    /// Lowest compatible rate.
    pub low: f64,
    /// Maximum-likelihood rate.
    pub best: f64,
    /// Highest compatible rate.
    pub high: f64,
}

/// sinter's default width for plotted intervals: hypotheses within a Bayes
/// factor of 1000 of the best one.
pub const DEFAULT_LIKELIHOOD_FACTOR: f64 = 1000.0;

impl ErrorCount {
    /// Logical error rate per shot.
    pub fn per_shot(&self) -> f64 {
        if self.shots == 0 { 0.0 } else { self.errors as f64 / self.shots as f64 }
    }

    /// The per-shot rate with its binomial interval.
    pub fn fit(&self, likelihood_factor: f64) -> Fit {
        fit_binomial(self.shots, self.errors, likelihood_factor)
    }

    /// The per-round rate with its interval, by sinter's formula.
    pub fn fit_per_round(&self, rounds: f64, likelihood_factor: f64) -> Fit {
        let f = self.fit(likelihood_factor);
        Fit {
            low: per_round_rate(f.low, rounds),
            best: per_round_rate(f.best, rounds),
            high: per_round_rate(f.high, rounds),
        }
    }
}

impl std::ops::AddAssign for ErrorCount {
    fn add_assign(&mut self, other: Self) {
        self.shots += other.shots;
        self.errors += other.errors;
    }
}

/// Converts a per-shot error rate S over `rounds` rounds into a per-round rate:
/// `0.5 − 0.5·(1 − 2S)^(1/rounds)`, as `sinter.shot_error_rate_to_piece_error_rate` does.
pub fn per_round_rate(shot_rate: f64, rounds: f64) -> f64 {
    assert!((0.0..=1.0).contains(&shot_rate), "shot error rate {shot_rate} outside [0, 1]");
    assert!(rounds > 0.0, "rounds must be positive");
    if rounds == 1.0 {
        return shot_rate;
    }
    if shot_rate > 0.5 {
        return 1.0 - per_round_rate(1.0 - shot_rate, rounds);
    }
    let round_rate = 0.5 - 0.5 * (1.0 - 2.0 * shot_rate).powf(1.0 / rounds);
    if round_rate == 0.0 { shot_rate / rounds } else { round_rate }
}

fn log_binomial(p: f64, n: u64, hits: u64) -> f64 {
    let (n, h) = (n as f64, hits as f64);
    let term = |count: f64, prob: f64| if count == 0.0 { 0.0 } else { count * prob.ln() };
    term(h, p) + term(n - h, 1.0 - p)
}

/// The binomial rates whose likelihood is within `likelihood_factor` of the
/// maximum-likelihood rate `hits / shots` (sinter's `fit_binomial`).
pub fn fit_binomial(shots: u64, hits: u64, likelihood_factor: f64) -> Fit {
    assert!(likelihood_factor >= 1.0, "likelihood factor must be at least 1");
    assert!(hits <= shots, "more hits than shots");
    if shots == 0 {
        return Fit { low: 0.0, best: 0.5, high: 1.0 };
    }
    let best = hits as f64 / shots as f64;
    let target = log_binomial(best, shots, hits) - likelihood_factor.ln();
    // Bisection on each side of the maximum, where the log-likelihood is monotone.
    let solve = |mut inside: f64, mut outside: f64| {
        for _ in 0..200 {
            let mid = 0.5 * (inside + outside);
            if log_binomial(mid, shots, hits) >= target {
                inside = mid;
            } else {
                outside = mid;
            }
        }
        inside
    };
    let low = if hits == 0 { 0.0 } else { solve(best, 0.0) };
    let high = if hits == shots { 1.0 } else { solve(best, 1.0) };
    Fit { low, best, high }
}

/// McNemar's statistic for two decoders on the same shots: `only_a_wrong` shots
/// where only A erred, `only_b_wrong` where only B did. Positive means A is worse.
/// Under the hypothesis that both are equally good it is approximately standard normal.
pub fn mcnemar_z(only_a_wrong: u64, only_b_wrong: u64) -> f64 {
    let n = (only_a_wrong + only_b_wrong) as f64;
    if n == 0.0 { 0.0 } else { (only_a_wrong as f64 - only_b_wrong as f64) / n.sqrt() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_round_matches_sinter_examples() {
        // Values printed by sinter.shot_error_rate_to_piece_error_rate's docstring.
        assert!((per_round_rate(0.1, 2.0) - 0.05278640450004207).abs() < 1e-15);
        assert!((per_round_rate(1e-9, 100.0) - 1.000000082740371e-11).abs() < 1e-20);
        assert_eq!(per_round_rate(0.3, 1.0), 0.3);
        let r = per_round_rate(0.6, 10.0);
        assert!((r - (1.0 - per_round_rate(0.4, 10.0))).abs() < 1e-15);
    }

    #[test]
    fn fit_binomial_matches_sinter_examples() {
        // sinter.fit_binomial(num_shots=10, num_hits=5, max_likelihood_factor=9)
        // == Fit(low=0.202, best=0.5, high=0.798) (sinter rounds to 1/100 of a hit).
        let f = fit_binomial(10, 5, 9.0);
        assert!((f.low - 0.202).abs() < 1e-3 && (f.high - 0.798).abs() < 1e-3, "{f:?}");
        // sinter.fit_binomial(num_shots=100_000_000, num_hits=2, max_likelihood_factor=1000)
        // == Fit(low=2e-10, best=2e-08, high=1.259e-07)
        let f = fit_binomial(100_000_000, 2, 1000.0);
        assert!((f.best - 2e-8).abs() < 1e-20);
        assert!((f.high - 1.259e-7).abs() < 1e-9, "{f:?}");
        assert!(f.low > 1e-10 && f.low < 3e-10, "{f:?}");
        let f = fit_binomial(1000, 0, 1000.0);
        assert_eq!(f.low, 0.0);
        assert!(f.high > 0.0 && f.high < 0.01);
    }

    #[test]
    fn mcnemar_sign_and_scale() {
        assert!(mcnemar_z(120, 80) > 2.8);
        assert!(mcnemar_z(80, 120) < -2.8);
        assert_eq!(mcnemar_z(0, 0), 0.0);
    }
}
