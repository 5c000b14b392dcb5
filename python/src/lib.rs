//! The `qecd` Python package's native module, `qecd._qecd`: qecd's decoders
//! over numpy arrays.
//!
//! A `Decoder` (`PyDecoder`) resolves everything that can be refused (decoder name,
//! DEM, model and its fit to the DEM's detectors) in `from_dem`, then keeps
//! one decoder per decoding thread (`pool`; the calling thread is one of
//! them) for its whole life, so sinter's stream of small batches pays for
//! graph building once and for no hand-off between threads. Decoding
//! releases the GIL. Shapes and dtypes are checked before anything is decoded
//! (`arrays`). The sinter glue is Python (`qecd/_sinter.py`); this crate
//! must not import sinter, and it never links libtorch (no `train` feature).
#![deny(missing_docs)]

mod arrays;
mod pool;
mod spec;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use decoder::{DecodeError, DecoderKind};
use numpy::{PyArray1, PyArray2};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyString;
use qecd_sweep::case::{Case, CircuitTexts};
use qecd_sweep::inputs::CaseInputs;

use crate::pool::Pool;
use crate::spec::Spec;

/// Input errors become `ValueError`; anything else the decoder reports, `RuntimeError`.
fn to_py(e: DecodeError) -> PyErr {
    match e {
        DecodeError::Invalid(m) => PyValueError::new_err(m),
        other => PyRuntimeError::new_err(other.to_string()),
    }
}

/// Predictions and each shot's confidence, as numpy arrays.
type Confident<'py> = (Bound<'py, PyArray2<u8>>, Bound<'py, PyArray1<f64>>);

/// A qecd decoder for one detector error model.
#[pyclass(name = "Decoder", module = "qecd", frozen)]
struct PyDecoder {
    spec: Arc<Spec>,
    /// Workers that report no confidence.
    plain: Pool,
    /// Workers that do, started on the first `decode_batch_with_confidence`.
    confident: Mutex<Option<Arc<Pool>>>,
    /// Decoding threads per pool, the caller's included.
    threads: usize,
}

#[pymethods]
impl PyDecoder {
    /// Builds a decoder for `dem`: a `stim.DetectorErrorModel` or its text.
    #[staticmethod]
    #[pyo3(signature = (dem, decoder = "correlated", model = None, num_threads = 0))]
    fn from_dem(
        py: Python<'_>,
        dem: &Bound<'_, PyAny>,
        decoder: &str,
        model: Option<&Bound<'_, PyAny>>,
        num_threads: usize,
    ) -> PyResult<Self> {
        let text = match dem.cast::<PyString>() {
            Ok(s) => s.to_str()?.to_owned(),
            Err(_) => dem.str()?.to_str()?.to_owned(),
        };
        let model = model.map(|m| m.str().and_then(|s| s.to_str().map(str::to_owned))).transpose()?;
        let decoder = decoder.to_owned();
        let threads = simulator_bridge::sample::resolve_threads(num_threads);
        py.detach(move || {
            let spec = Arc::new(Spec::new(&text, &decoder, model.as_deref()).map_err(|e| match e {
                DecodeError::Invalid(m) => PyValueError::new_err(m),
                other => PyValueError::new_err(other.to_string()),
            })?);
            let plain = Pool::start(spec.make(None), threads).map_err(to_py)?;
            Ok(Self { spec, plain, confident: Mutex::new(None), threads })
        })
    }

    /// Decodes a batch of shots into predicted observable flips.
    #[pyo3(signature = (dets, *, bit_packed = false))]
    fn decode_batch<'py>(
        &self,
        py: Python<'py>,
        dets: &Bound<'py, PyAny>,
        bit_packed: bool,
    ) -> PyResult<Bound<'py, PyArray2<u8>>> {
        let shots = arrays::shots_from_numpy(dets, self.spec.num_detectors, bit_packed)?;
        let decisions = py.detach(|| self.plain.decode(shots)).map_err(to_py)?;
        Ok(arrays::predictions_to_numpy(py, &decisions.predictions, bit_packed))
    }

    /// Decodes a batch of shots into predictions and each shot's confidence.
    #[pyo3(signature = (dets, *, bit_packed = false))]
    fn decode_batch_with_confidence<'py>(
        &self,
        py: Python<'py>,
        dets: &Bound<'py, PyAny>,
        bit_packed: bool,
    ) -> PyResult<Confident<'py>> {
        let shots = arrays::shots_from_numpy(dets, self.spec.num_detectors, bit_packed)?;
        let decisions = py
            .detach(|| {
                let pool = self.confident_pool()?;
                pool.decode(shots)
            })
            .map_err(to_py)?;
        let confidence = decisions
            .confidence
            .ok_or_else(|| PyRuntimeError::new_err(format!("decoder '{}' gave no confidence", self.spec.kind)))?;
        Ok((
            arrays::predictions_to_numpy(py, &decisions.predictions, bit_packed),
            arrays::confidence_to_numpy(py, confidence),
        ))
    }

    /// The decoder's name, as the CLI spells it.
    #[getter]
    fn decoder(&self) -> &'static str {
        self.spec.kind.name()
    }

    /// Detection-event bits per shot.
    #[getter]
    fn num_detectors(&self) -> usize {
        self.spec.num_detectors
    }

    /// Observables predicted per shot.
    #[getter]
    fn num_observables(&self) -> usize {
        self.spec.num_observables
    }

    /// Threads decoding each batch, the calling thread included.
    #[getter]
    fn num_threads(&self) -> usize {
        self.plain.threads()
    }

    fn __repr__(&self) -> String {
        format!(
            "qecd.Decoder(decoder={:?}, num_detectors={}, num_observables={}, num_threads={})",
            self.spec.kind.name(),
            self.spec.num_detectors,
            self.spec.num_observables,
            self.plain.threads()
        )
    }
}

impl PyDecoder {
    /// The confidence-reporting workers, started (and calibrated) once.
    fn confident_pool(&self) -> Result<Arc<Pool>, DecodeError> {
        let mut slot = self.confident.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pool) = slot.as_ref() {
            return Ok(pool.clone());
        }
        let calibration = self.spec.calibration()?;
        let pool = Arc::new(Pool::start(self.spec.make(calibration), self.threads)?);
        *slot = Some(pool.clone());
        Ok(pool)
    }
}

/// The decoder names `Decoder.from_dem` takes.
#[pyfunction]
fn decoder_names() -> Vec<&'static str> {
    DecoderKind::ALL.iter().map(|k| k.name()).collect()
}

/// The text of qecd's memory-experiment circuit: a rotated surface code of
/// `distance`, `rounds` rounds, memory in `basis`, with `noise` at `p` (as
/// `qecd sample --circuit-out` writes it).
#[pyfunction]
#[pyo3(signature = (distance, rounds, basis = "z", noise = "si1000", p = 0.003))]
fn memory_circuit_text(distance: usize, rounds: usize, basis: &str, noise: &str, p: f64) -> PyResult<String> {
    let invalid = |e: simulator_bridge::BridgeError| PyValueError::new_err(e.to_string());
    let basis = basis.parse().map_err(invalid)?;
    let experiment = simulator_bridge::MemoryExperiment::new(distance, rounds, basis).map_err(invalid)?;
    let noise = simulator_bridge::NoiseModel::from_name(noise, p).map_err(invalid)?;
    Ok(experiment.noisy_circuit(&noise).map_err(invalid)?.to_string())
}

/// An error and its causes, each cause once: some errors print their source
/// in their own message too.
fn chain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}

/// The cases of `qecd sweep --decoders ... --distances ... --rounds ... --basis
/// ... --noise ... --p ... [--model ...] [--posterior ...] [--decoder-dem ...]`,
/// in its order, one JSON object each: the circuit's text, the decoding DEM's
/// text (a `--decoder-dem` file's where one fits), the decoder, sinter's
/// `json_metadata` and `strong_id`, and `model`, what `Decoder.from_dem`
/// takes as `model=` for the case (a zoo name or checkpoint path for neural,
/// the posterior path or null for neural-matching). The sweep's own code
/// makes every case (`qecd_sweep::inputs`), so `qecd.sweep` and `qecd sweep`
/// append to and resume from the same CSV rows. Also returns a warning for
/// each DEM file that no case took.
#[pyfunction]
#[pyo3(signature = (decoders, distances, rounds, basis, noise, ps, models, posterior, decoder_dems))]
#[allow(clippy::too_many_arguments)]
fn sweep_cases_json(
    py: Python<'_>,
    decoders: Vec<String>,
    distances: Vec<usize>,
    rounds: Vec<String>,
    basis: &str,
    noise: &str,
    ps: Vec<f64>,
    models: Vec<PathBuf>,
    posterior: Option<PathBuf>,
    decoder_dems: Vec<PathBuf>,
) -> PyResult<(Vec<String>, Vec<String>)> {
    let invalid = |e: anyhow::Error| PyValueError::new_err(chain(&e));
    let basis = basis.parse().map_err(|e: simulator_bridge::BridgeError| PyValueError::new_err(e.to_string()))?;
    let noise = noise.to_owned();
    py.detach(move || {
        let kinds: Vec<DecoderKind> =
            decoders.iter().map(|d| d.parse()).collect::<Result<_, DecodeError>>().map_err(to_py)?;
        let all = qecd_sweep::sweep::cases(&kinds, &distances, &rounds, basis, &noise, &ps).map_err(invalid)?;
        let mut inputs = CaseInputs::read(&models, posterior.as_deref(), &decoder_dems).map_err(invalid)?;
        let mut cases: Vec<(Case, Option<String>)> = Vec::with_capacity(all.len());
        for (kind, experiment, noise) in all {
            // `cases` lists the decoders of a circuit together.
            let circuit = match cases.last() {
                Some((last, _)) if last.experiment == experiment && last.noise == noise => last.texts.clone(),
                _ => Arc::new(CircuitTexts::build(experiment, noise).map_err(invalid)?),
            };
            let case = inputs.case(kind, experiment, noise, circuit).map_err(invalid)?;
            let model = match kind {
                DecoderKind::Neural => {
                    let (path, model) = inputs.checkpoint(&experiment).map_err(invalid)?;
                    let source = if inputs.zoo() { model.name().to_owned() } else { path.display().to_string() };
                    Some(source)
                }
                DecoderKind::NeuralMatching => posterior.as_ref().map(|p| p.display().to_string()),
                _ => None,
            };
            cases.push((case, model));
        }
        let json = cases
            .iter()
            .map(|(case, model)| {
                serde_json::json!({
                    "circuit": case.texts.circuit,
                    "dem": case.dem_text(),
                    "decoder": case.decoder.name(),
                    "json_metadata": case.metadata,
                    "strong_id": case.strong_id,
                    "model": model,
                })
                .to_string()
            })
            .collect();
        let unused = inputs
            .decoder_dems()
            .filter(|(_, used)| !used)
            .map(|(file, _)| {
                format!("decoder DEM {} ({}) fits no case of these tasks", file.path().display(), file.shape().counts())
            })
            .collect();
        Ok((json, unused))
    })
}

/// The built-in neural models' cards, one JSON object each (`qecd.zoo()` parses them).
#[pyfunction]
fn zoo_json() -> PyResult<Vec<String>> {
    models::zoo::CHECKPOINTS
        .iter()
        .map(|(name, bytes)| {
            let ckpt =
                models::Checkpoint::from_bytes(bytes, name).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
            let meta = &ckpt.meta;
            let card = serde_json::json!({
                "name": name,
                "distance": meta.layout.distance,
                "basis": meta.layout.basis.to_string(),
                "num_stabilizers": meta.layout.stabilizers.len(),
                "relative": meta.config.positions != models::Positions::PerStabilizer,
                "temperature": meta.temperature,
                "config": meta.config,
                "provenance": meta.provenance,
                "evaluation": meta.evaluation,
            });
            Ok(card.to_string())
        })
        .collect()
}

/// The native module.
#[pymodule]
fn _qecd(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyDecoder>()?;
    m.add_function(wrap_pyfunction!(decoder_names, m)?)?;
    m.add_function(wrap_pyfunction!(zoo_json, m)?)?;
    m.add_function(wrap_pyfunction!(memory_circuit_text, m)?)?;
    m.add_function(wrap_pyfunction!(sweep_cases_json, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
