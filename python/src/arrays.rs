//! numpy arrays to and from [`PackedShots`], checking shape and dtype first.
//!
//! Bit-packed rows are sinter's and Stim's `b8` layout: `ceil(bits / 8)`
//! bytes per shot, bit `k` in byte `k / 8` at position `k % 8` (numpy's
//! `packbits(..., bitorder="little")`), which is `PackedShots`'s own.

use numpy::ndarray::{Array2, ArrayView2};
use numpy::{PyArray1, PyArray2, PyArrayDescrMethods, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use simulator_bridge::PackedShots;
use simulator_bridge::shots::bytes_for;

/// Detection events as a numpy array: `(shots, num_detectors)` of 0/1
/// (uint8 or bool), or `(shots, ceil(num_detectors / 8))` uint8 when `bit_packed`.
pub fn shots_from_numpy(dets: &Bound<'_, PyAny>, num_detectors: usize, bit_packed: bool) -> PyResult<PackedShots> {
    let array = dets.cast::<PyUntypedArray>().map_err(|_| {
        PyValueError::new_err(format!(
            "dets must be a numpy array, got {}",
            dets.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "an unknown type".into())
        ))
    })?;
    if array.ndim() != 2 {
        return Err(PyValueError::new_err(format!(
            "dets must be 2-D (shots, {}), got a {}-D array of shape {:?}",
            if bit_packed { "bytes" } else { "detectors" },
            array.ndim(),
            array.shape()
        )));
    }
    let dtype = array.dtype();
    let is_u8 = dtype.is_equiv_to(&numpy::dtype::<u8>(dets.py()));
    let is_bool = dtype.is_equiv_to(&numpy::dtype::<bool>(dets.py()));
    let width = array.shape()[1];
    if bit_packed {
        if !is_u8 {
            return Err(PyValueError::new_err(format!("bit-packed dets must have dtype uint8, got {dtype}")));
        }
        let want = bytes_for(num_detectors);
        if width != want {
            return Err(PyValueError::new_err(format!(
                "bit-packed dets have {width} bytes per shot but the detector error model's {num_detectors} detectors take {want}"
            )));
        }
        let view = dets.cast::<PyArray2<u8>>()?.readonly();
        let mut bytes = Vec::with_capacity(view.len());
        for row in view.as_array().rows() {
            match row.as_slice() {
                Some(s) => bytes.extend_from_slice(s),
                None => bytes.extend(row.iter().copied()),
            }
        }
        return PackedShots::from_bytes(bytes, num_detectors).map_err(|e| PyValueError::new_err(e.to_string()));
    }
    if !is_u8 && !is_bool {
        return Err(PyValueError::new_err(format!("dets must have dtype uint8 or bool, got {dtype}")));
    }
    if width != num_detectors {
        return Err(PyValueError::new_err(format!(
            "dets have {width} detectors per shot but the detector error model has {num_detectors}"
        )));
    }
    Ok(if is_u8 {
        pack(dets.cast::<PyArray2<u8>>()?.readonly().as_array(), num_detectors, |&b| b != 0)
    } else {
        pack(dets.cast::<PyArray2<bool>>()?.readonly().as_array(), num_detectors, |&b| b)
    })
}

/// Packs a `(shots, bits)` array of truth values.
fn pack<T>(rows: ArrayView2<'_, T>, bits: usize, set: impl Fn(&T) -> bool) -> PackedShots {
    let mut shots = PackedShots::zeros(rows.nrows(), bits);
    for (s, row) in rows.rows().into_iter().enumerate() {
        let out = shots.row_mut(s);
        for (k, v) in row.iter().enumerate() {
            if set(v) {
                out[k / 8] |= 1 << (k % 8);
            }
        }
    }
    shots
}

/// Predictions as numpy: `(shots, observables)` uint8 0/1, or
/// `(shots, ceil(observables / 8))` bit-packed bytes.
pub fn predictions_to_numpy<'py>(
    py: Python<'py>,
    predictions: &PackedShots,
    bit_packed: bool,
) -> Bound<'py, PyArray2<u8>> {
    let (n, bits) = (predictions.num_shots(), predictions.bits_per_shot());
    let array = if bit_packed {
        Array2::from_shape_vec((n, bytes_for(bits)), predictions.as_bytes().to_vec())
            .expect("packed rows are whole shots")
    } else {
        Array2::from_shape_fn((n, bits), |(s, o)| u8::from(predictions.get(s, o)))
    };
    PyArray2::from_owned_array(py, array)
}

/// Per-shot confidences as a float64 array.
pub fn confidence_to_numpy<'py>(py: Python<'py>, confidence: Vec<f64>) -> Bound<'py, PyArray1<f64>> {
    PyArray1::from_vec(py, confidence)
}
