//! Experiment directories in the layout of Google's public surface-code data.
//!
//! | file | content |
//! |---|---|
//! | `circuit_noisy.stim` | the circuit the shots came from (required) |
//! | `detection_events.b8` | detection events, one row per shot (required) |
//! | `obs_flips_actual.01` | the observable flips that happened (required) |
//! | `circuit_ideal.stim` | the noiseless circuit (optional) |
//! | `*.dem` | detector error models for decoders (optional) |
//! | `metadata.json` | how the data was made (optional) |

use std::path::{Path, PathBuf};

use crate::error::BridgeError;
use crate::formats::{BitLabels, ResultFormat, read_shots_file, write_shots_file};
use crate::fsutil::write_atomically;
use crate::shots::PackedShots;

/// Required file: the noisy circuit.
pub const CIRCUIT_NOISY: &str = "circuit_noisy.stim";
/// Optional file: the noiseless circuit.
pub const CIRCUIT_IDEAL: &str = "circuit_ideal.stim";
/// Required file: detection events in `b8`.
pub const DETECTION_EVENTS: &str = "detection_events.b8";
/// Required file: observable flips in `01`.
pub const OBS_FLIPS: &str = "obs_flips_actual.01";
/// The detector error model qecd writes.
pub const DEM: &str = "circuit_detector_error_model.dem";
/// Optional metadata.
pub const METADATA: &str = "metadata.json";

/// The contents of an experiment directory.
#[derive(Clone, Debug)]
pub struct Experiment {
    /// Text of `circuit_noisy.stim`.
    pub circuit_noisy: String,
    /// Text of `circuit_ideal.stim`, if present.
    pub circuit_ideal: Option<String>,
    /// The detector error model found in the directory: its file name and text.
    pub dem: Option<(String, String)>,
    /// Detection events.
    pub detection_events: PackedShots,
    /// Observable flips of the same shots.
    pub obs_flips: PackedShots,
    /// Parsed `metadata.json`, if present.
    pub metadata: Option<serde_json::Value>,
}

impl Experiment {
    /// Reads and cross-checks an experiment directory.
    pub fn read(dir: &Path) -> Result<Self, BridgeError> {
        let bad = |why: String| BridgeError::Experiment { dir: dir.to_path_buf(), why };
        if !dir.is_dir() {
            return Err(bad("is not a directory".into()));
        }
        for required in [CIRCUIT_NOISY, DETECTION_EVENTS, OBS_FLIPS] {
            if !dir.join(required).is_file() {
                return Err(bad(format!("missing required file {required}")));
            }
        }
        let read_text = |name: &str| -> Result<String, BridgeError> {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|e| BridgeError::io(path, e))
        };
        let circuit_noisy = read_text(CIRCUIT_NOISY)?;
        let circuit: stim::Circuit =
            circuit_noisy.parse().map_err(|e: stim::StimError| bad(format!("{CIRCUIT_NOISY} does not parse: {e}")))?;
        let num_detectors = circuit.num_detectors() as usize;
        let num_observables = circuit.num_observables() as usize;
        let detection_events =
            read_shots_file(&dir.join(DETECTION_EVENTS), ResultFormat::B8, BitLabels::detectors(num_detectors))?;
        let obs_flips =
            read_shots_file(&dir.join(OBS_FLIPS), ResultFormat::Zero1, BitLabels::observables(num_observables))?;
        if detection_events.num_shots() != obs_flips.num_shots() {
            return Err(bad(format!(
                "{DETECTION_EVENTS} holds {} shots but {OBS_FLIPS} holds {}",
                detection_events.num_shots(),
                obs_flips.num_shots()
            )));
        }
        let circuit_ideal = dir.join(CIRCUIT_IDEAL).is_file().then(|| read_text(CIRCUIT_IDEAL)).transpose()?;
        let dem = match find_dem(dir)? {
            Some(name) => Some((name.clone(), read_text(&name)?)),
            None => None,
        };
        let metadata = if dir.join(METADATA).is_file() {
            Some(
                serde_json::from_str(&read_text(METADATA)?)
                    .map_err(|e| bad(format!("{METADATA} is not valid JSON: {e}")))?,
            )
        } else {
            None
        };
        Ok(Self { circuit_noisy, circuit_ideal, dem, detection_events, obs_flips, metadata })
    }

    /// Number of shots.
    pub fn num_shots(&self) -> usize {
        self.detection_events.num_shots()
    }

    /// Writes the experiment to `dir`, which must not exist yet or be empty.
    /// Files are written into a temporary sibling directory that is renamed
    /// into place at the end, so a failure leaves nothing behind.
    pub fn write(&self, dir: &Path) -> Result<(), BridgeError> {
        let bad = |why: String| BridgeError::Experiment { dir: dir.to_path_buf(), why };
        if self.detection_events.num_shots() != self.obs_flips.num_shots() {
            return Err(bad("detection events and observable flips hold different shot counts".into()));
        }
        if dir.exists() {
            let empty = dir.is_dir() && std::fs::read_dir(dir).map_err(|e| BridgeError::io(dir, e))?.next().is_none();
            if !empty {
                return Err(bad("already exists and is not empty; refusing to overwrite it".into()));
            }
        }
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let staging = tempfile::Builder::new()
            .prefix(".qecd-partial-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .tempdir_in(&parent)
            .map_err(|e| BridgeError::io(&parent, e))?;
        let text = |name: &str, content: &str| {
            let path = staging.path().join(name);
            write_atomically(&path, |w| {
                std::io::Write::write_all(w, content.as_bytes()).map_err(|e| BridgeError::io(&path, e))
            })
        };
        text(CIRCUIT_NOISY, &self.circuit_noisy)?;
        if let Some(ideal) = &self.circuit_ideal {
            text(CIRCUIT_IDEAL, ideal)?;
        }
        if let Some((name, dem)) = &self.dem {
            text(name, dem)?;
        }
        if let Some(meta) = &self.metadata {
            let pretty = serde_json::to_string_pretty(meta).expect("JSON values serialize");
            text(METADATA, &(pretty + "\n"))?;
        }
        let dets = &self.detection_events;
        write_shots_file(
            &staging.path().join(DETECTION_EVENTS),
            dets,
            ResultFormat::B8,
            BitLabels::detectors(dets.bits_per_shot()),
        )?;
        write_shots_file(
            &staging.path().join(OBS_FLIPS),
            &self.obs_flips,
            ResultFormat::Zero1,
            BitLabels::observables(self.obs_flips.bits_per_shot()),
        )?;
        if dir.exists() {
            std::fs::remove_dir(dir).map_err(|e| BridgeError::io(dir, e))?;
        }
        let staged = staging.keep();
        std::fs::rename(&staged, dir).map_err(|e| {
            let _ = std::fs::remove_dir_all(&staged);
            BridgeError::io(dir, e)
        })?;
        Ok(())
    }
}

/// The DEM to use from a directory: `circuit_detector_error_model.dem` if
/// present, else the first `*.dem` by name.
fn find_dem(dir: &Path) -> Result<Option<String>, BridgeError> {
    if dir.join(DEM).is_file() {
        return Ok(Some(DEM.to_string()));
    }
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| BridgeError::io(dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".dem"))
        .collect();
    names.sort();
    Ok(names.into_iter().next())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::code::{Basis, MemoryExperiment};
    use crate::noise::NoiseModel;
    use crate::sample::Sampler;

    fn small() -> Experiment {
        let e = MemoryExperiment::new(3, 2, Basis::Z).unwrap();
        let noisy = e.noisy_circuit(&NoiseModel::Si1000 { p: 0.01 }).unwrap();
        let shots = Sampler::new(&noisy).sample(100, 3, 1).unwrap();
        Experiment {
            circuit_noisy: noisy.to_string(),
            circuit_ideal: Some(e.ideal_circuit().unwrap().to_string()),
            dem: Some((DEM.into(), noisy.detector_error_model().unwrap().to_string())),
            detection_events: shots.detectors,
            obs_flips: shots.observables,
            metadata: Some(serde_json::json!({"d": 3})),
        }
    }

    #[test]
    fn write_then_read_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("exp");
        let exp = small();
        exp.write(&dir).unwrap();
        let back = Experiment::read(&dir).unwrap();
        assert_eq!(back.detection_events, exp.detection_events);
        assert_eq!(back.obs_flips, exp.obs_flips);
        assert_eq!(back.circuit_noisy, exp.circuit_noisy);
        assert_eq!(back.dem.unwrap().0, DEM);
        assert_eq!(back.metadata.unwrap()["d"], 3);
        let err = exp.write(&dir).unwrap_err();
        assert!(err.to_string().contains("refusing to overwrite"), "{err}");
        // Only the experiment directory remains: no staging leftovers.
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn missing_file_and_shot_mismatch_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("exp");
        small().write(&dir).unwrap();
        let obs = std::fs::read_to_string(dir.join(OBS_FLIPS)).unwrap();
        std::fs::write(dir.join(OBS_FLIPS), &obs[..obs.len() - 2]).unwrap();
        let err = Experiment::read(&dir).unwrap_err().to_string();
        assert!(err.contains("100 shots") && err.contains("99"), "{err}");
        std::fs::remove_file(dir.join(DETECTION_EVENTS)).unwrap();
        let err = Experiment::read(&dir).unwrap_err().to_string();
        assert!(err.contains("missing required file detection_events.b8"), "{err}");
    }
}
