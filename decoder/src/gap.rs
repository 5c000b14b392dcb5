//! Weight gaps of matching, on PyMatching as this crate compiles it
//! (`cxx/matching.cc`).
//!
//! A shot's gap for observable k is how much heavier the best solution is
//! whose prediction for k is the complement of the hard decision's:
//! the larger it is, the surer matching is of that observable. When k is a
//! cut of the matching graph, a solution's class is fixed by which side of
//! the cut its boundary edges reach, so [`GapMatching`] keeps, beside the
//! model's own graph, one graph per observable whose boundary is split into
//! a virtual detector for each side; events placed on those detectors force
//! the class (`cxx/matching.cc` has the details). This is the method of the
//! `pymatching` crate's gap decoder, whose predictions and gaps the tests
//! check ours against bit for bit; computing them here, on this crate's
//! build of PyMatching, leaves the binary one copy of PyMatching. Weights
//! are PyMatching's normalised ones, and hard decisions are PyMatching's
//! `decode_batch`'s.

use std::pin::Pin;

use crate::{DecodeError, PackedShots};

#[cxx::bridge(namespace = "qecd")]
mod ffi {
    unsafe extern "C++" {
        include!("decoder/cxx/matching.h");

        type GapMatching;

        fn new_gap_matching(dem_text: &str, correlated: bool) -> Result<UniquePtr<GapMatching>>;
        fn num_detectors(self: &GapMatching) -> u64;
        fn num_observables(self: &GapMatching) -> u64;
        fn decode_packed(
            self: Pin<&mut GapMatching>,
            shots: &[u8],
            num_shots: usize,
            predictions: &mut [u8],
            gaps: &mut [f64],
        ) -> Result<()>;
    }
}

// SAFETY: the C++ object owns all its state (its graphs, their flooders and
// scratch buffers), has no thread affinity, and is only reached through
// `&mut` (or `&` for reads of fields fixed at construction).
unsafe impl Send for ffi::GapMatching {}

/// PyMatching's graphs of one detector error model for weight gaps.
pub struct GapMatching {
    inner: cxx::UniquePtr<ffi::GapMatching>,
    num_detectors: usize,
    num_observables: usize,
}

impl GapMatching {
    /// Builds the graphs of `dem` (text), decoding two-pass correlated when
    /// `correlated`. Fails when an observable is not a cut of the graph
    /// (for instance, a model that is not graphlike).
    pub fn from_dem_text(dem_text: &str, correlated: bool) -> Result<Self, DecodeError> {
        let inner = ffi::new_gap_matching(dem_text, correlated).map_err(crate::matching_error)?;
        let num_detectors = inner.num_detectors() as usize;
        let num_observables = inner.num_observables() as usize;
        Ok(Self { inner, num_detectors, num_observables })
    }

    /// Detectors of the model.
    pub fn num_detectors(&self) -> usize {
        self.num_detectors
    }

    /// Observables of the model.
    pub fn num_observables(&self) -> usize {
        self.num_observables
    }

    /// Predicted observable flips of every shot in `events` (which must be
    /// `num_detectors` bits wide) and their gaps, `num_shots ×
    /// num_observables`, row-major.
    pub fn decode(&mut self, events: &PackedShots) -> Result<(PackedShots, Vec<f64>), DecodeError> {
        crate::check_width(events, self.num_detectors)?;
        let n = events.num_shots();
        let mut predictions = vec![0u8; n * self.num_observables.div_ceil(8)];
        let mut gaps = vec![0.0; n * self.num_observables];
        self.pinned()
            .decode_packed(events.as_bytes(), n, &mut predictions, &mut gaps)
            .map_err(crate::matching_error)?;
        Ok((PackedShots::from_bytes(predictions, self.num_observables)?, gaps))
    }

    fn pinned(&mut self) -> Pin<&mut ffi::GapMatching> {
        self.inner.pin_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use simulator_bridge::sample::Sampler;
    use simulator_bridge::{Basis, MemoryExperiment, NoiseModel};

    /// The `pymatching` crate's predictions and gaps of `events`.
    fn reference(model: &stim::DetectorErrorModel, correlated: bool, events: &PackedShots) -> (Vec<u8>, Vec<f64>) {
        let matching = pymatching::Matching::from_detector_error_model_with_options(model, correlated).unwrap();
        let mut rows = ndarray::Array2::<u8>::zeros((events.num_shots(), events.bits_per_shot()));
        for s in 0..events.num_shots() {
            for k in events.hits(s) {
                rows[[s, k]] = 1;
            }
        }
        let result = matching.decode_gap_batch(rows.view()).unwrap();
        (result.predictions.iter().copied().collect(), result.gaps.iter().copied().collect())
    }

    /// Predictions and gaps are the `pymatching` crate's, shot for shot and
    /// bit for bit (f64 equality), plain and correlated, on memory Z and X
    /// circuits of distance 3, 5 and 7 under SI1000 and uniform
    /// depolarizing noise, shots with no events included.
    #[test]
    fn agrees_with_the_pymatching_crate() {
        for d in [3, 5, 7] {
            for basis in [Basis::Z, Basis::X] {
                for noise in [NoiseModel::Si1000 { p: 0.003 }, NoiseModel::UniformDepolarizing { p: 0.004 }] {
                    let c = MemoryExperiment::new(d, d, basis).unwrap().noisy_circuit(&noise).unwrap();
                    let model = simulator_bridge::decoding_dem(&c).unwrap();
                    let shots = Sampler::new(&c).sample(3_000, 17 + d as u64, 0).unwrap();
                    // Shots without events, first (before any other) and last, besides the sampled ones.
                    let quiet = PackedShots::zeros(2, shots.detectors.bits_per_shot());
                    let events =
                        &PackedShots::concat(&[quiet.clone(), shots.detectors, quiet], model.num_detectors() as usize);
                    for correlated in [false, true] {
                        let case = format!("d={d} {basis:?} {noise:?} correlated={correlated}");
                        let (expected_predictions, expected_gaps) = reference(&model, correlated, events);
                        let mut ours = GapMatching::from_dem_text(&model.to_string(), correlated).unwrap();
                        let (predictions, gaps) = ours.decode(events).unwrap();
                        let flat: Vec<u8> = (0..events.num_shots())
                            .flat_map(|s| (0..ours.num_observables()).map(move |o| (s, o)))
                            .map(|(s, o)| predictions.get(s, o) as u8)
                            .collect();
                        assert_eq!(flat, expected_predictions, "{case}: predictions");
                        assert_eq!(gaps.len(), expected_gaps.len(), "{case}");
                        for (s, (a, b)) in gaps.iter().zip(&expected_gaps).enumerate() {
                            assert!(a.to_bits() == b.to_bits(), "{case}: shot {s} gap {a} against {b}");
                        }
                        assert!(flat.iter().any(|&p| p != 0), "{case}: no shot flips the observable");
                        assert!(gaps.iter().any(|&g| g > 0.0), "{case}: every gap is zero");
                    }
                }
            }
        }
    }

    #[test]
    fn wrong_width_is_an_error() {
        let c = crate::testutil::circuit(3, 3, 0.003);
        let mut m = GapMatching::from_dem_text(&crate::testutil::dem(&c).to_string(), false).unwrap();
        let err = m.decode(&PackedShots::zeros(3, 10)).unwrap_err();
        assert!(err.to_string().contains("10 detection-event bits"), "{err}");
    }

    /// An observable that no error flips is no cut: refused with a message, not a panic.
    #[test]
    fn an_observable_without_a_cut_is_refused() {
        let text = "error(0.1) D0\nerror(0.1) D0 D1\nerror(0.1) D1 L0\nlogical_observable L1\n";
        let err = GapMatching::from_dem_text(text, false).err().expect("refused");
        assert!(matches!(err, DecodeError::Matching(_)), "{err}");
        assert!(err.to_string().contains("L1"), "{err}");
        assert!(GapMatching::from_dem_text(&text.replace("logical_observable L1\n", ""), false).is_ok());
    }
}
