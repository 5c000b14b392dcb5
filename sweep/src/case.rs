//! One case of a sweep: a decoder on a noisy circuit, and its identity in
//! sinter's CSV.
//!
//! Cases on the same circuit share its text and DEM ([`CircuitTexts`]),
//! which for long experiments take the most time and memory to build. A
//! case's strong id is sinter's: a SHA-256 over the circuit, the decoder, the
//! DEM and the metadata, so resumed sweeps find their earlier lines and
//! `sinter combine` merges what `qecd sweep` writes.
//!
//! A case may decode with a DEM from a file instead of its circuit's
//! ([`Case::with_decoder_dem`]; `qecd sweep --decoder-dem`). That DEM is the
//! one its strong id hashes, as sinter's `Task(detector_error_model=...)`
//! does, and its metadata names the file and its hash (`dem`,
//! `dem_sha256`): lines decoded with different DEMs never sum as one case.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use decoder::{DecoderKind, NeuralModel};
use models::posterior::PosteriorModel;
use sha2::{Digest, Sha256};
use simulator_bridge::{DemFile, MemoryExperiment, NoiseModel};

use crate::decoders::decoding_dem;

/// Hex digits of a model file's sha256 that a case's metadata keeps.
pub const MODEL_HASH_DIGITS: usize = 12;

/// The sha256 of a file's bytes, hex.
pub fn file_sha256(path: &std::path::Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

/// A noisy circuit and its decoding DEM, as text, shared by the cases that
/// sweep decoders over it.
pub struct CircuitTexts {
    /// The noisy circuit's text.
    pub circuit: String,
    /// The decoding DEM's text.
    pub dem: String,
    /// Detectors per shot.
    pub num_detectors: usize,
}

impl CircuitTexts {
    /// Builds the circuit of `experiment` under `noise`, and its DEM.
    pub fn build(experiment: MemoryExperiment, noise: NoiseModel) -> Result<Self> {
        let circuit = experiment.noisy_circuit(&noise)?;
        let dem = decoding_dem(&circuit)?;
        Ok(Self { circuit: circuit.to_string(), dem: dem.to_string(), num_detectors: circuit.num_detectors() as usize })
    }
}

/// sinter's identity of a case, serialized as `serde_json::json!` would (keys
/// sorted), straight into the hash: the DEM of a long experiment is hundreds
/// of megabytes, not worth copying twice to hash once.
#[derive(serde::Serialize)]
struct Identity<'a> {
    circuit: &'a str,
    decoder: &'a str,
    decoder_error_model: &'a str,
    json_metadata: &'a serde_json::Value,
    postselection_mask: (),
}

/// Feeds what is written into a SHA-256.
struct HashWriter(Sha256);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One case of a sweep, ready to run.
pub struct Case {
    /// Decoder under test.
    pub decoder: DecoderKind,
    /// The code and its rounds.
    pub experiment: MemoryExperiment,
    /// The noise.
    pub noise: NoiseModel,
    /// The noisy circuit and its DEM.
    pub texts: Arc<CircuitTexts>,
    /// The DEM its decoder uses instead of the circuit's, if any.
    pub decoder_dem: Option<Arc<DemFile>>,
    /// sinter's json_metadata.
    pub metadata: serde_json::Value,
    /// sha256 over circuit, decoder, decoding DEM and metadata, as sinter's strong id.
    pub strong_id: String,
    /// The model of a neural case.
    pub model: Option<Arc<NeuralModel>>,
    /// The posterior model of a neural-matching case.
    pub posterior: Option<Arc<PosteriorModel>>,
}

impl Case {
    /// A case on a circuit already built (`texts` must be `experiment` under `noise`).
    pub fn build(
        decoder: DecoderKind,
        experiment: MemoryExperiment,
        noise: NoiseModel,
        texts: Arc<CircuitTexts>,
        model: Option<(&Path, Arc<NeuralModel>)>,
        posterior: Option<(&str, Arc<PosteriorModel>)>,
    ) -> Result<Self> {
        let mut metadata = serde_json::json!({
            "basis": experiment.basis.to_string(),
            "d": experiment.distance,
            "decoder": decoder.name(),
            "noise": noise.name(),
            "p": noise.p(),
            "r": experiment.rounds,
        });
        if let Some((path, _)) = &model {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            metadata["model"] = name.into();
        }
        if let Some((name, _)) = &posterior {
            metadata["model"] = (*name).into();
        }
        let mut case = Self {
            decoder,
            experiment,
            noise,
            texts,
            decoder_dem: None,
            metadata,
            strong_id: String::new(),
            model: model.map(|m| m.1),
            posterior: posterior.map(|p| p.1),
        };
        case.strong_id = case.identity_hash()?;
        Ok(case)
    }

    /// The same case decoded with `dem` instead of its circuit's DEM (which
    /// must fit the circuit: the caller checks, with [`DemFile::misfit`]).
    /// Its metadata names the file and its hash, and its strong id hashes `dem`.
    pub fn with_decoder_dem(mut self, dem: Arc<DemFile>) -> Result<Self> {
        self.metadata["dem"] = dem.file_name().into();
        self.metadata["dem_sha256"] = dem.short_hash().into();
        self.decoder_dem = Some(dem);
        self.strong_id = self.identity_hash()?;
        Ok(self)
    }

    /// The same case with its model file's hash in its metadata
    /// (`model_sha256`, the first 12 hex digits of the file's sha256), so
    /// that a checkpoint of a user's is never counted as another of the same
    /// file name (the zoo's, say). Its strong id changes with it.
    pub fn with_model_hash(mut self, sha256: &str) -> Result<Self> {
        self.metadata["model_sha256"] = sha256[..MODEL_HASH_DIGITS.min(sha256.len())].into();
        self.strong_id = self.identity_hash()?;
        Ok(self)
    }

    /// The DEM its decoder is built from: the file's, else the circuit's.
    pub fn dem_text(&self) -> &str {
        self.decoder_dem.as_ref().map_or(&self.texts.dem, |d| d.text())
    }

    /// sinter's strong id of the case.
    fn identity_hash(&self) -> Result<String> {
        let identity = Identity {
            circuit: &self.texts.circuit,
            decoder: self.decoder.name(),
            decoder_error_model: self.dem_text(),
            json_metadata: &self.metadata,
            postselection_mask: (),
        };
        let mut hasher = HashWriter(Sha256::new());
        serde_json::to_writer(&mut hasher, &identity)?;
        Ok(format!("{:x}", hasher.0.finalize()))
    }

    /// A short label for progress messages.
    pub fn label(&self) -> String {
        format!("{} d={} r={} p={}", self.decoder, self.experiment.distance, self.experiment.rounds, self.noise.p())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use simulator_bridge::Basis;

    /// The strong id hashes sinter's identity JSON, written as `json!` writes it.
    #[test]
    fn strong_id_is_the_hash_of_the_identity_json() {
        let exp = MemoryExperiment::new(3, 3, Basis::Z).unwrap();
        let noise = NoiseModel::Si1000 { p: 0.003 };
        let texts = Arc::new(CircuitTexts::build(exp, noise).unwrap());
        let case = Case::build(DecoderKind::Correlated, exp, noise, texts, None, None).unwrap();
        let identity = serde_json::json!({
            "circuit": case.texts.circuit,
            "decoder": "correlated",
            "decoder_error_model": case.texts.dem,
            "postselection_mask": null,
            "json_metadata": case.metadata,
        });
        assert_eq!(case.strong_id, format!("{:x}", Sha256::digest(identity.to_string().as_bytes())));
        assert_eq!(case.texts.num_detectors, 8 * 3);
    }

    /// A case decoding with a DEM file hashes that DEM as sinter's
    /// `decoder_error_model` and names the file and its hash in its metadata.
    #[test]
    fn a_decoder_dem_enters_the_metadata_and_the_strong_id() {
        let exp = MemoryExperiment::new(3, 3, Basis::Z).unwrap();
        let noise = NoiseModel::Si1000 { p: 0.003 };
        let texts = Arc::new(CircuitTexts::build(exp, noise).unwrap());
        let plain = Case::build(DecoderKind::Correlated, exp, noise, texts.clone(), None, None).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        // The circuit's DEM at twice its p: the same graph, other weights.
        let other = CircuitTexts::build(exp, NoiseModel::Si1000 { p: 0.006 }).unwrap().dem;
        let path = tmp.path().join("other.dem");
        std::fs::write(&path, &other).unwrap();
        let file = Arc::new(DemFile::read(&path).unwrap());
        let case = Case::build(DecoderKind::Correlated, exp, noise, texts, None, None)
            .unwrap()
            .with_decoder_dem(file.clone())
            .unwrap();
        assert_eq!(case.dem_text(), other);
        assert_eq!(case.metadata["dem"], "other.dem");
        assert_eq!(case.metadata["dem_sha256"], format!("{:x}", Sha256::digest(other.as_bytes()))[..12]);
        let identity = serde_json::json!({
            "circuit": case.texts.circuit,
            "decoder": "correlated",
            "decoder_error_model": other,
            "postselection_mask": null,
            "json_metadata": case.metadata,
        });
        assert_eq!(case.strong_id, format!("{:x}", Sha256::digest(identity.to_string().as_bytes())));
        assert_ne!(case.strong_id, plain.strong_id);
        assert_eq!(plain.dem_text(), plain.texts.dem);
    }
}
