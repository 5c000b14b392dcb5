//! The safetensors files of both models: f32 tensors by name, and one JSON
//! metadata entry in the header under a model-specific key.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use crate::ModelError;

/// Name → (shape, row-major values).
pub type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// A deterministic stream of uniform values in [-1, 1) for initial weights
/// (a 64-bit LCG; its top 24 bits).
pub(crate) fn uniform(seed: u64) -> impl FnMut() -> f32 {
    let mut state = seed;
    move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// Serializes `tensors` with `meta` (JSON) under `key`.
pub(crate) fn encode(tensors: &Tensors, key: &str, meta: String) -> Result<Vec<u8>, ModelError> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, (shape, v))| (n.clone(), shape.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(n, shape, data)| (n.clone(), TensorView::new(Dtype::F32, shape.clone(), data).expect("sizes agree")))
        .collect();
    safetensors::serialize(views, Some(HashMap::from([(key.to_string(), meta)])))
        .map_err(|e| ModelError::Invalid(format!("cannot serialize the tensors: {e}")))
}

/// Parses safetensors bytes: the metadata JSON under `key` (`missing` says
/// what it means when there is none) and every tensor, which must be f32.
pub(crate) fn decode(bytes: &[u8], path: &str, key: &str, missing: &str) -> Result<(String, Tensors), ModelError> {
    let bad = |why: String| ModelError::Checkpoint { path: path.to_string(), why };
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let (_, header) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("unreadable header: {e}")))?;
    let meta = header.metadata().as_ref().and_then(|m| m.get(key)).ok_or_else(|| bad(missing.to_string()))?.clone();
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(bad(format!("tensor '{name}' is {:?}, expected F32", view.dtype())));
        }
        let values = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        tensors.insert(name, (view.shape().to_vec(), values));
    }
    Ok((meta, tensors))
}

/// Writes `bytes` to `path` atomically (an existing file is replaced only on success).
pub(crate) fn write(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    simulator_bridge::fsutil::write_atomically(path, |w| {
        std::io::Write::write_all(w, bytes).map_err(|e| simulator_bridge::BridgeError::io(path, e))
    })?;
    Ok(())
}
