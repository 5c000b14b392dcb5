//! PyMatching decoders: uncorrelated, and two-pass correlated matching.
//!
//! Both hard decisions ([`crate::blossom`]) and weight gaps, for confidence
//! ([`crate::gap`]), go through this crate's own build of PyMatching.

use std::cell::{OnceCell, RefCell};

use crate::blossom::PackedMatching;
use crate::confidence::GapCalibration;
use crate::gap::GapMatching;
use crate::{Decisions, DecodeError, Decoder, DecoderKind, PackedShots};

/// Shots per call into the gap decoder.
const GAP_CHUNK: usize = 4096;

/// Detector-shots a stoppable calibration decodes between two looks at its
/// stop flag: about a quarter of a second of correlated matching (d=3 with
/// 1,000 rounds decodes about one detector-shot a microsecond).
pub const STOP_CHECK_EVENTS: usize = 1 << 18;

/// Matching or correlated matching over one detector error model.
pub struct MatchingDecoder {
    /// PyMatching's graph as this crate compiles it, for hard decisions.
    blossom: PackedMatching,
    /// The gap decoder's graphs of the same model, built on the first
    /// decoding that needs them. Decoding changes them, hence the `RefCell`
    /// (which, like the `OnceCell`, keeps `MatchingDecoder` from being `Sync`).
    gaps: OnceCell<RefCell<GapMatching>>,
    /// The model's text, which both graphs are built from.
    dem_text: String,
    kind: DecoderKind,
    num_detectors: usize,
    num_observables: usize,
    calibration: Option<GapCalibration>,
}

impl MatchingDecoder {
    /// Builds the matching graph of a detector error model.
    pub fn from_dem(dem: &stim::DetectorErrorModel, kind: DecoderKind) -> Result<Self, DecodeError> {
        Self::from_dem_text(&dem.to_string(), kind)
    }

    /// Builds the matching graph of a detector error model's text. The text
    /// is parsed once, by PyMatching's build of Stim (a text that is not a
    /// DEM is refused there, with Stim's message), not first into a
    /// `stim::DetectorErrorModel` and printed back, two more passes over it.
    pub fn from_dem_text(text: &str, kind: DecoderKind) -> Result<Self, DecodeError> {
        if !DecoderKind::MATCHING.contains(&kind) {
            return Err(DecodeError::Invalid(format!("{kind} is not a matching decoder")));
        }
        let blossom = PackedMatching::from_dem_text(text, kind == DecoderKind::Correlated)?;
        Ok(Self {
            num_detectors: blossom.num_detectors(),
            num_observables: blossom.num_observables(),
            blossom,
            gaps: OnceCell::new(),
            dem_text: text.to_owned(),
            kind,
            calibration: None,
        })
    }

    /// The gap decoder, built on first use.
    fn gap_matching(&self) -> Result<&RefCell<GapMatching>, DecodeError> {
        if let Some(m) = self.gaps.get() {
            return Ok(m);
        }
        let m = GapMatching::from_dem_text(&self.dem_text, self.kind == DecoderKind::Correlated)?;
        Ok(self.gaps.get_or_init(|| RefCell::new(m)))
    }

    /// Reports a confidence for every shot, mapped from the weight gap by `calibration`.
    pub fn with_confidence(mut self, calibration: GapCalibration) -> Self {
        self.calibration = Some(calibration);
        self
    }

    /// Fits the gap calibration on `shots` fresh shots sampled from `dem`
    /// with `seed` (which must not be the seed of the shots being decoded).
    pub fn fit_calibration(
        &self,
        dem: &stim::DetectorErrorModel,
        shots: usize,
        seed: u64,
    ) -> Result<GapCalibration, DecodeError> {
        let fitted = self.fit_calibration_until(dem, shots, seed, &|| false)?;
        Ok(fitted.expect("a fit that is never stopped ends"))
    }

    /// [`MatchingDecoder::fit_calibration`] that asks `stop` between slices
    /// of about [`STOP_CHECK_EVENTS`] detector-shots and gives up (`None`)
    /// once it says so. The fit is the same shot for shot: the shots are
    /// sampled at once with `seed`, only their decoding is sliced.
    pub fn fit_calibration_until(
        &self,
        dem: &stim::DetectorErrorModel,
        shots: usize,
        seed: u64,
        stop: &dyn Fn() -> bool,
    ) -> Result<Option<GapCalibration>, DecodeError> {
        let (dets, obs) = crate::confidence::held_out(dem, shots, seed)?;
        let slice = (STOP_CHECK_EVENTS / self.num_detectors.max(1)).clamp(1, GAP_CHUNK);
        let Some((predictions, gaps)) = self.gaps_in_slices(&dets, slice, stop)? else {
            return Ok(None);
        };
        let mut flat_gaps = Vec::with_capacity(shots * self.num_observables);
        let mut right = Vec::with_capacity(shots * self.num_observables);
        for s in 0..shots {
            for o in 0..self.num_observables {
                flat_gaps.push(gaps[s * self.num_observables + o]);
                right.push(predictions.get(s, o) == obs.get(s, o));
            }
        }
        Ok(Some(GapCalibration::fit(&flat_gaps, &right)))
    }

    fn check_width(&self, events: &PackedShots) -> Result<(), DecodeError> {
        crate::check_width(events, self.num_detectors)
    }

    /// Predictions and the per-observable weight gaps (`num_shots × num_observables`, row-major).
    pub fn decode_with_gaps(&self, events: &PackedShots) -> Result<(PackedShots, Vec<f64>), DecodeError> {
        let decoded = self.gaps_in_slices(events, GAP_CHUNK, &|| false)?;
        Ok(decoded.expect("decoding that is never stopped ends"))
    }

    /// [`MatchingDecoder::decode_with_gaps`], `slice` shots per call into
    /// the gap decoder, asking `stop` before each; `None` once it said stop.
    fn gaps_in_slices(
        &self,
        events: &PackedShots,
        slice: usize,
        stop: &dyn Fn() -> bool,
    ) -> Result<Option<(PackedShots, Vec<f64>)>, DecodeError> {
        self.check_width(events)?;
        let mut matching = self.gap_matching()?.borrow_mut();
        let n = events.num_shots();
        let mut predictions = PackedShots::zeros(0, self.num_observables);
        let mut gaps = Vec::with_capacity(n * self.num_observables);
        for start in (0..n).step_by(slice) {
            if stop() {
                return Ok(None);
            }
            let (slice_predictions, slice_gaps) = matching.decode(&events.slice(start, (start + slice).min(n)))?;
            predictions.extend(&slice_predictions);
            gaps.extend_from_slice(&slice_gaps);
        }
        Ok(Some((predictions, gaps)))
    }
}

impl Decoder for MatchingDecoder {
    fn name(&self) -> &str {
        self.kind.name()
    }

    fn num_detectors(&self) -> usize {
        self.num_detectors
    }

    fn num_observables(&self) -> usize {
        self.num_observables
    }

    fn decode_batch(&mut self, events: &PackedShots) -> Result<Decisions, DecodeError> {
        self.check_width(events)?;
        match self.calibration {
            None => Ok(Decisions { predictions: self.blossom.decode(events)?, confidence: None }),
            Some(calibration) => {
                let (predictions, gaps) = self.decode_with_gaps(events)?;
                let confidence = gaps.chunks(self.num_observables.max(1)).map(|g| calibration.confidence(g)).collect();
                Ok(Decisions { predictions, confidence: Some(confidence) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::count_errors;
    use crate::stats::mcnemar_z;
    use simulator_bridge::sample::Sampler;

    use crate::testutil::dem;

    fn circuit(d: usize, p: f64) -> stim::Circuit {
        crate::testutil::circuit(d, d, p)
    }

    /// Every single error mechanism of the model, alone, decodes to its own
    /// observable flip.
    #[test]
    fn single_faults_decode_to_their_observable() {
        for kind in DecoderKind::MATCHING {
            let c = circuit(5, 0.001);
            let model = dem(&c);
            let mut decoder = MatchingDecoder::from_dem(&model, kind).unwrap();
            let nd = model.num_detectors() as usize;
            let mut syndromes = Vec::new();
            let mut expected = Vec::new();
            for line in model.flattened().to_string().lines().filter(|l| l.starts_with("error(")) {
                let mut dets = vec![false; nd];
                let mut obs = vec![false; 1];
                for token in line.split_whitespace().skip(1) {
                    if let Some(d) = token.strip_prefix('D') {
                        let d: usize = d.parse().unwrap();
                        dets[d] ^= true;
                    } else if let Some(o) = token.strip_prefix('L') {
                        obs[o.parse::<usize>().unwrap()] ^= true;
                    }
                }
                syndromes.push(dets);
                expected.push(obs);
            }
            assert!(syndromes.len() > 500, "{} faults", syndromes.len());
            let events = PackedShots::from_rows(&syndromes, nd);
            let expected = PackedShots::from_rows(&expected, 1);
            let got = decoder.decode_batch(&events).unwrap().predictions;
            assert_eq!(count_errors(&got, &expected), 0, "{kind}: a single fault was decoded wrongly");
            assert!((0..expected.num_shots()).any(|s| expected.get(s, 0)), "some faults flip the observable");
        }
    }

    /// The hypothesis that correlated matching is no better than matching is
    /// rejected at d=5, SI1000 p=0.003, on the same shots.
    #[test]
    fn correlated_beats_uncorrelated_at_d5() {
        let c = circuit(5, 0.003);
        let model = dem(&c);
        let shots = Sampler::new(&c).sample(60_000, 2024, 0).unwrap();
        let mut plain = MatchingDecoder::from_dem(&model, DecoderKind::Matching).unwrap();
        let mut corr = MatchingDecoder::from_dem(&model, DecoderKind::Correlated).unwrap();
        let a = plain.decode_batch(&shots.detectors).unwrap().predictions;
        let b = corr.decode_batch(&shots.detectors).unwrap().predictions;
        let (mut only_plain, mut only_corr) = (0, 0);
        for s in 0..shots.detectors.num_shots() {
            let truth = shots.observables.get(s, 0);
            match (a.get(s, 0) != truth, b.get(s, 0) != truth) {
                (true, false) => only_plain += 1,
                (false, true) => only_corr += 1,
                _ => {}
            }
        }
        let z = mcnemar_z(only_plain, only_corr);
        assert!(z > 3.0, "only matching wrong {only_plain}, only correlated wrong {only_corr}, z = {z:.2}");
    }

    /// Below threshold the logical error rate falls with distance.
    #[test]
    fn ler_falls_with_distance() {
        let mut rates = Vec::new();
        for d in [3, 5, 7] {
            let c = circuit(d, 0.002);
            let shots = Sampler::new(&c).sample(40_000, 99, 0).unwrap();
            let mut decoder = MatchingDecoder::from_dem(&dem(&c), DecoderKind::Correlated).unwrap();
            let predictions = decoder.decode_batch(&shots.detectors).unwrap().predictions;
            rates.push(count_errors(&predictions, &shots.observables) as f64 / 40_000.0);
        }
        assert!(rates[0] > 1.5 * rates[1] && rates[1] > 1.5 * rates[2], "LER by distance: {rates:?}");
    }

    /// Gap confidence: calibrated on one seed, it predicts the error rate of
    /// fresh shots, and its least confident shots hold most of the errors.
    #[test]
    fn gap_confidence_is_calibrated() {
        let c = circuit(3, 0.003);
        let model = dem(&c);
        let decoder = MatchingDecoder::from_dem(&model, DecoderKind::Correlated).unwrap();
        let calibration = decoder.fit_calibration(&model, 50_000, 1).unwrap();
        let mut decoder = decoder.with_confidence(calibration);
        let shots = Sampler::new(&c).sample(50_000, 2, 0).unwrap();
        let decisions = decoder.decode_batch(&shots.detectors).unwrap();
        let confidence = decisions.confidence.unwrap();
        let errors = count_errors(&decisions.predictions, &shots.observables) as f64;
        let expected: f64 = confidence.iter().map(|c| 1.0 - c).sum();
        assert!((expected - errors).abs() < 0.15 * errors, "predicted {expected:.0} errors, saw {errors}");
        // Plain decoding gives the same predictions as gap decoding.
        let mut plain = MatchingDecoder::from_dem(&model, DecoderKind::Correlated).unwrap();
        assert_eq!(plain.decode_batch(&shots.detectors).unwrap().predictions, decisions.predictions);
    }

    #[test]
    fn wrong_width_is_an_error() {
        let c = circuit(3, 0.003);
        let mut decoder = MatchingDecoder::from_dem(&dem(&c), DecoderKind::Matching).unwrap();
        let err = decoder.decode_batch(&PackedShots::zeros(3, 10)).unwrap_err();
        assert!(err.to_string().contains("10 detection-event bits"), "{err}");
    }

    /// Text is parsed once, by PyMatching's Stim: counts come from it, and
    /// what is not a DEM is an error, not a panic.
    #[test]
    fn text_is_counted_and_checked_where_it_is_parsed() {
        let c = circuit(3, 0.003);
        let text = dem(&c).to_string();
        let decoder = MatchingDecoder::from_dem_text(&text, DecoderKind::Correlated).unwrap();
        assert_eq!((decoder.num_detectors, decoder.num_observables), (dem(&c).num_detectors() as usize, 1));
        for (junk, why) in [("error(0.1) D0 Q7", "target prefix 'Q'"), ("detector D0\nerror(2) D0", "probability")] {
            let err = MatchingDecoder::from_dem_text(junk, DecoderKind::Matching).err().expect("refused");
            assert!(err.to_string().contains(why), "{junk:?}: {err}");
        }
        let err = MatchingDecoder::from_dem_text(&text, DecoderKind::Belief).err().expect("refused");
        assert!(err.to_string().contains("not a matching decoder"), "{err}");
    }

    /// Slicing the decoding changes no shot's gap, and a stop is obeyed
    /// between slices.
    #[test]
    fn a_stoppable_fit_is_the_plain_fit_until_stopped() {
        let c = circuit(3, 0.003);
        let model = dem(&c);
        let decoder = MatchingDecoder::from_dem(&model, DecoderKind::Correlated).unwrap();
        let plain = decoder.fit_calibration(&model, 2_000, 7).unwrap();
        let asked = std::cell::Cell::new(0);
        let never = || {
            asked.set(asked.get() + 1);
            false
        };
        assert_eq!(decoder.fit_calibration_until(&model, 2_000, 7, &never).unwrap(), Some(plain));
        assert!(asked.get() >= 1);
        let (dets, _) = crate::confidence::held_out(&model, 2_000, 7).unwrap();
        let whole = decoder.decode_with_gaps(&dets).unwrap();
        let sliced = decoder.gaps_in_slices(&dets, 64, &|| false).unwrap().unwrap();
        assert_eq!(whole.1, sliced.1);
        assert_eq!(whole.0.as_bytes(), sliced.0.as_bytes());
        let calls = std::cell::Cell::new(0);
        let third = || {
            calls.set(calls.get() + 1);
            calls.get() == 3
        };
        assert!(decoder.gaps_in_slices(&dets, 64, &third).unwrap().is_none());
        assert_eq!(calls.get(), 3);
    }
}
