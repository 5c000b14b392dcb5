//! Batch matching, plain or two-pass correlated, on PyMatching's sparse
//! blossom as this crate compiles it (`cxx/matching.cc`).
//!
//! The `pymatching` crate links a PyMatching compiled one source file at a
//! time, whose calls across files (and, in a shared library, within a file)
//! the compiler may not inline; PyMatching's Python wheel, optimised across
//! files, decoded the same shots about 10% faster. `cxx/pymatching_core.h`
//! compiles all of PyMatching as one translation unit with internal linkage
//! instead, and [`PackedMatching`] decodes through that copy (as
//! [`crate::gap::GapMatching`] does for weight gaps). It builds the graph and
//! runs the decoding loop as PyMatching's `decode_batch` does, so its
//! predictions are PyMatching's bit for bit.

use std::pin::Pin;

use crate::{DecodeError, PackedShots};

#[cxx::bridge(namespace = "qecd")]
mod ffi {
    unsafe extern "C++" {
        include!("decoder/cxx/matching.h");

        type PackedMatching;

        fn new_packed_matching(dem_text: &str, correlated: bool) -> Result<UniquePtr<PackedMatching>>;
        fn num_detectors(self: &PackedMatching) -> u64;
        fn num_observables(self: &PackedMatching) -> u64;
        fn decode_packed(
            self: Pin<&mut PackedMatching>,
            shots: &[u8],
            num_shots: usize,
            predictions: &mut [u8],
        ) -> Result<()>;
    }
}

// SAFETY: the C++ object owns all its state (the graph, its flooders and
// scratch buffers), has no thread affinity, and is only reached through
// `&mut` (or `&` for reads of fields fixed at construction).
unsafe impl Send for ffi::PackedMatching {}

/// PyMatching's matching graph of one detector error model, decoding
/// bit-packed shots.
pub struct PackedMatching {
    inner: cxx::UniquePtr<ffi::PackedMatching>,
    correlated: bool,
    num_detectors: usize,
    num_observables: usize,
}

impl PackedMatching {
    /// Builds the graph of `dem` (text), keeping the correlations between
    /// the halves of decomposed errors when `correlated`, as
    /// `pymatching.Matching.from_detector_error_model(dem, enable_correlations=correlated)` does.
    pub fn from_dem_text(dem_text: &str, correlated: bool) -> Result<Self, DecodeError> {
        let inner = ffi::new_packed_matching(dem_text, correlated).map_err(crate::matching_error)?;
        let num_detectors = inner.num_detectors() as usize;
        let num_observables = inner.num_observables() as usize;
        Ok(Self { inner, correlated, num_detectors, num_observables })
    }

    /// Whether decoding is two-pass correlated.
    pub fn correlated(&self) -> bool {
        self.correlated
    }

    /// Detectors of the model.
    pub fn num_detectors(&self) -> usize {
        self.num_detectors
    }

    /// Observables of the model.
    pub fn num_observables(&self) -> usize {
        self.num_observables
    }

    fn pinned(&mut self) -> Pin<&mut ffi::PackedMatching> {
        self.inner.pin_mut()
    }

    /// Predicted observable flips of every shot in `events`, which must be
    /// `num_detectors` bits wide.
    pub fn decode(&mut self, events: &PackedShots) -> Result<PackedShots, DecodeError> {
        crate::check_width(events, self.num_detectors)?;
        let n = events.num_shots();
        let mut predictions = vec![0u8; n * self.num_observables.div_ceil(8)];
        self.pinned().decode_packed(events.as_bytes(), n, &mut predictions).map_err(crate::matching_error)?;
        Ok(PackedShots::from_bytes(predictions, self.num_observables)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{circuit, dem};
    use simulator_bridge::sample::Sampler;

    /// The same predictions as the `pymatching` crate's own batch decoding
    /// of the same graph, shot for shot, plain and correlated.
    #[test]
    fn agrees_with_the_pymatching_crate() {
        for (d, p) in [(3, 0.01), (5, 0.003), (5, 0.01)] {
            let c = circuit(d, d, p);
            let model = dem(&c);
            let shots = Sampler::new(&c).sample(4_000, 11, 0).unwrap();
            let packed = shots.detectors.as_bytes();
            let view = ndarray::ArrayView2::from_shape((shots.detectors.num_shots(), shots.detectors.stride()), packed)
                .unwrap();
            for correlated in [false, true] {
                let reference = pymatching::Matching::from_detector_error_model_with_options(&model, correlated)
                    .unwrap()
                    .decode_batch_with_options(
                        view,
                        pymatching::DecodeOptions::new()
                            .with_enable_correlations(correlated)
                            .with_bit_packed_shots(true)
                            .with_bit_packed_predictions(true),
                    )
                    .unwrap()
                    .predictions;
                let mut ours = PackedMatching::from_dem_text(&model.to_string(), correlated).unwrap();
                let got = ours.decode(&shots.detectors).unwrap();
                assert_eq!(got.as_bytes(), reference.as_slice().unwrap(), "d={d} p={p} correlated={correlated}");
                assert!(got.as_bytes().iter().any(|&b| b != 0), "d={d} p={p}: no shot flips the observable");
            }
        }
    }

    #[test]
    fn wrong_width_is_an_error() {
        let c = circuit(3, 3, 0.003);
        let mut m = PackedMatching::from_dem_text(&dem(&c).to_string(), false).unwrap();
        let err = m.decode(&PackedShots::zeros(3, 10)).unwrap_err();
        assert!(err.to_string().contains("10 detection-event bits"), "{err}");
    }
}
