//! Turning a matching weight gap into a calibrated probability of being right.
//!
//! For each observable, matching finds the lightest correction in each of the
//! two logical classes; the gap is the difference of their weights (in units
//! of log-likelihood). The shot's prediction is right with a probability that
//! rises with the gap, ideally `sigmoid(gap)`. Real graphs are approximate, so
//! qecd fits `P(right | gap) = sigmoid(slope·gap + intercept)` by logistic
//! regression on held-out shots, and reports the product over observables.

use serde::{Deserialize, Serialize};

/// Seed of the held-out shots every qecd calibration is fitted on (never
/// used for data), so that `qecd predict`, the service and the Python
/// package fit the same calibration for the same DEM.
pub const CALIBRATION_SEED: u64 = 0x6361_6c69_6272_6174;

/// Held-out shots drawn from the DEM for a calibration fitted on demand
/// (`qecd predict`, the Python package). The service fits on fewer, once per
/// code, and says so.
pub const CALIBRATION_SHOTS: usize = 20_000;

/// A fitted map from gap to probability of a right prediction.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GapCalibration {
    /// Multiplies the gap.
    pub slope: f64,
    /// Added to the scaled gap.
    pub intercept: f64,
}

impl Default for GapCalibration {
    /// The ideal map, `sigmoid(gap)`.
    fn default() -> Self {
        Self { slope: 1.0, intercept: 0.0 }
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl GapCalibration {
    /// Probability that a prediction with these per-observable gaps is right.
    pub fn confidence(&self, gaps: &[f64]) -> f64 {
        gaps.iter().map(|&g| sigmoid(self.slope * g + self.intercept)).product()
    }

    /// Fits the map by maximum likelihood (Newton's method with a tiny ridge
    /// term, so that separable data still gives a finite answer).
    pub fn fit(gaps: &[f64], right: &[bool]) -> Self {
        assert_eq!(gaps.len(), right.len(), "one label per gap");
        let (mut a, mut b) = (1.0f64, 0.0f64);
        let ridge = 1e-6;
        for _ in 0..100 {
            let (mut ga, mut gb) = (-ridge * a, -ridge * b);
            let (mut haa, mut hab, mut hbb) = (ridge, 0.0, ridge);
            for (&g, &y) in gaps.iter().zip(right) {
                let p = sigmoid(a * g + b);
                let r = if y { 1.0 } else { 0.0 } - p;
                ga += r * g;
                gb += r;
                let w = p * (1.0 - p);
                haa += w * g * g;
                hab += w * g;
                hbb += w;
            }
            let det = haa * hbb - hab * hab;
            if det.abs() < 1e-300 {
                break;
            }
            let da = (hbb * ga - hab * gb) / det;
            let db = (haa * gb - hab * ga) / det;
            a += da;
            b += db;
            if da.abs() < 1e-10 && db.abs() < 1e-10 {
                break;
            }
        }
        Self { slope: a, intercept: b }
    }
}

/// `shots` shots sampled from `dem` with `seed`, to fit a calibration on:
/// their detection events and observable flips.
pub(crate) fn held_out(
    dem: &stim::DetectorErrorModel,
    shots: usize,
    seed: u64,
) -> Result<(crate::PackedShots, crate::PackedShots), crate::DecodeError> {
    let mut sampler = dem.compile_sampler_with_seed(seed);
    let (dets, obs, _) = sampler.sample_bit_packed(shots as u64);
    let dets = crate::PackedShots::from_bytes(dets, dem.num_detectors() as usize)?;
    let obs = crate::PackedShots::from_bytes(obs, dem.num_observables() as usize)?;
    Ok((dets, obs))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shots drawn from a known calibration are fitted back to it.
    #[test]
    fn fit_recovers_a_known_map() {
        let truth = GapCalibration { slope: 0.7, intercept: 0.4 };
        let mut state = 12345u64;
        let mut uniform = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let (mut gaps, mut right) = (Vec::new(), Vec::new());
        for _ in 0..100_000 {
            let g = 8.0 * uniform();
            gaps.push(g);
            right.push(uniform() < truth.confidence(&[g]));
        }
        let fit = GapCalibration::fit(&gaps, &right);
        assert!((fit.slope - 0.7).abs() < 0.05, "{fit:?}");
        assert!((fit.intercept - 0.4).abs() < 0.1, "{fit:?}");
    }

    #[test]
    fn confidence_multiplies_over_observables() {
        let c = GapCalibration::default();
        assert!((c.confidence(&[0.0]) - 0.5).abs() < 1e-12);
        assert!((c.confidence(&[0.0, 0.0]) - 0.25).abs() < 1e-12);
        assert!(c.confidence(&[10.0]) > 0.9999);
    }
}
