//! A detector error model read from a file, for decoders to use in place of
//! a circuit's own DEM: a learned one (`qecd learn-noise`), say, given to
//! `qecd sweep --decoder-dem` or `qecd serve --code-dem`.
//!
//! It owns three facts those commands share: how such a file is read
//! (refused, naming the file, when Stim cannot parse it); what identifies it
//! (the SHA-256 of its bytes, as `sha256sum` prints it); and when it fits a
//! circuit ([`DemShape`]): the same numbers of detectors and observables,
//! and, for every detector the file gives coordinates, the circuit's
//! coordinates. Counts alone would take a d=5, 3-round DEM for a d=3,
//! 9-round circuit: both have 72 detectors.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::BridgeError;

/// Hex digits of the SHA-256 that name a DEM file in metadata and logs.
pub const SHORT_HASH: usize = 12;

/// Coordinates closer than this are the same (Stim prints them in decimal).
const COORDINATE_TOLERANCE: f64 = 1e-6;

/// What a DEM shares with the circuits whose shots it can decode.
#[derive(Clone, Debug, PartialEq)]
pub struct DemShape {
    /// Detectors per shot.
    pub num_detectors: usize,
    /// Observables per shot.
    pub num_observables: usize,
    /// Each detector's coordinates, indexed by detector; empty where none are given.
    pub coordinates: Vec<Vec<f64>>,
}

/// Coordinates indexed by detector, from Stim's map of them.
fn by_detector(map: std::collections::BTreeMap<u64, Vec<f64>>, n: usize) -> Vec<Vec<f64>> {
    let mut coordinates = vec![Vec::new(); n];
    for (d, c) in map {
        if let Some(slot) = coordinates.get_mut(d as usize) {
            *slot = c;
        }
    }
    coordinates
}

impl DemShape {
    /// The shape of `circuit`'s shots.
    pub fn of_circuit(circuit: &stim::Circuit) -> Result<Self, BridgeError> {
        let n = circuit.num_detectors() as usize;
        Ok(Self {
            num_detectors: n,
            num_observables: circuit.num_observables() as usize,
            coordinates: by_detector(circuit.get_detector_coordinates(None)?, n),
        })
    }

    /// The shape of the shots `dem` decodes.
    pub fn of_dem(dem: &stim::DetectorErrorModel) -> Result<Self, BridgeError> {
        let n = dem.num_detectors() as usize;
        Ok(Self {
            num_detectors: n,
            num_observables: dem.num_observables() as usize,
            coordinates: by_detector(dem.get_detector_coordinates(None)?, n),
        })
    }

    /// "24 detectors and 1 observable".
    pub fn counts(&self) -> String {
        let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        format!("{} and {}", plural(self.num_detectors, "detector"), plural(self.num_observables, "observable"))
    }

    /// Why a DEM of this shape cannot decode shots of `circuit`'s shape, or
    /// `None` when it can: the counts differ, or a detector this shape places
    /// is elsewhere in the circuit (detectors without coordinates on either
    /// side are not compared).
    pub fn misfit(&self, circuit: &DemShape) -> Option<String> {
        if (self.num_detectors, self.num_observables) != (circuit.num_detectors, circuit.num_observables) {
            return Some(format!("it has {}, the circuit {}", self.counts(), circuit.counts()));
        }
        let moved = self.coordinates.iter().zip(&circuit.coordinates).enumerate().find(|(_, (mine, theirs))| {
            !mine.is_empty()
                && !theirs.is_empty()
                && (mine.len() != theirs.len()
                    || mine.iter().zip(theirs.iter()).any(|(a, b)| (a - b).abs() > COORDINATE_TOLERANCE))
        });
        moved.map(|(d, (mine, theirs))| {
            format!(
                "both have {}, but detector D{d} is at {mine:?} in it and at {theirs:?} in the circuit",
                self.counts()
            )
        })
    }
}

/// A detector error model read from a file.
#[derive(Clone)]
pub struct DemFile {
    path: PathBuf,
    text: String,
    sha256: String,
    shape: DemShape,
}

impl std::fmt::Debug for DemFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemFile")
            .field("path", &self.path)
            .field("sha256", &self.short_hash())
            .field("shape", &self.shape.counts())
            .finish_non_exhaustive()
    }
}

impl DemFile {
    /// Reads and parses the DEM at `path`; an error names the file.
    pub fn read(path: &Path) -> Result<Self, BridgeError> {
        let bytes = std::fs::read(path).map_err(|e| BridgeError::io(path, e))?;
        let not_a_dem = |why: String| BridgeError::DemFile { path: path.to_path_buf(), why };
        let source = std::str::from_utf8(&bytes).map_err(|e| not_a_dem(format!("not text: {e}")))?;
        let dem: stim::DetectorErrorModel = source.parse().map_err(|e| not_a_dem(format!("{e}")))?;
        if dem.num_detectors() == 0 {
            return Err(not_a_dem("it declares no detectors".into()));
        }
        let sha256 = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self { path: path.to_path_buf(), text: dem.to_string(), sha256, shape: DemShape::of_dem(&dem)? })
    }

    /// The path it was read from, as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's name without its directory (what sweep metadata records).
    pub fn file_name(&self) -> String {
        self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// The model as Stim writes it: what decoders parse, and what sinter's
    /// strong id hashes as the decoder's error model.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The SHA-256 of the file's bytes, hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Its first [`SHORT_HASH`] hex digits.
    pub fn short_hash(&self) -> &str {
        &self.sha256[..SHORT_HASH]
    }

    /// What it decodes.
    pub fn shape(&self) -> &DemShape {
        &self.shape
    }

    /// Why it cannot decode shots of a circuit of shape `circuit`, or `None`
    /// when it can ([`DemShape::misfit`]).
    pub fn misfit(&self, circuit: &DemShape) -> Option<String> {
        self.shape.misfit(circuit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Basis, MemoryExperiment, NoiseModel, decoding_dem};

    fn circuit(d: usize, rounds: usize) -> stim::Circuit {
        MemoryExperiment::new(d, rounds, Basis::Z).unwrap().noisy_circuit(&NoiseModel::Si1000 { p: 0.003 }).unwrap()
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A circuit's own DEM, written and read back, is its text again and fits it.
    #[test]
    fn a_circuits_own_dem_reads_back_and_fits() {
        let tmp = tempfile::tempdir().unwrap();
        let c = circuit(3, 3);
        let text = decoding_dem(&c).unwrap().to_string();
        let file = DemFile::read(&write(tmp.path(), "own.dem", &text)).unwrap();
        assert_eq!(file.text(), text);
        assert_eq!(file.shape().counts(), "24 detectors and 1 observable");
        assert_eq!(file.misfit(&DemShape::of_circuit(&c).unwrap()), None);
        let digest = Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(file.sha256(), digest);
        assert_eq!(file.short_hash(), &digest[..12]);
        assert_eq!(file.file_name(), "own.dem");
    }

    /// Equal counts do not make a fit when the detectors sit elsewhere; a
    /// DEM without coordinates is compared by its counts alone.
    #[test]
    fn counts_and_coordinates_decide_a_fit() {
        let tmp = tempfile::tempdir().unwrap();
        let (d3, d5) = (circuit(3, 9), circuit(5, 3));
        let d5_dem = DemFile::read(&write(tmp.path(), "d5.dem", &decoding_dem(&d5).unwrap().to_string())).unwrap();
        let d3_shape = DemShape::of_circuit(&d3).unwrap();
        assert_eq!(d3_shape.num_detectors, d5_dem.shape().num_detectors, "72 detectors each");
        let why = d5_dem.misfit(&d3_shape).unwrap();
        assert!(why.starts_with("both have 72 detectors and 1 observable, but detector D"), "{why}");
        assert_eq!(d5_dem.misfit(&DemShape::of_circuit(&d5).unwrap()), None);
        let bare = DemFile::read(&write(tmp.path(), "bare.dem", "error(0.1) D0 D71 L0\n")).unwrap();
        assert_eq!(bare.misfit(&d3_shape), None);
        let short = DemFile::read(&write(tmp.path(), "short.dem", "error(0.1) D0 D23 L0\n")).unwrap();
        assert_eq!(
            short.misfit(&d3_shape).unwrap(),
            "it has 24 detectors and 1 observable, the circuit 72 detectors and 1 observable"
        );
    }

    #[test]
    fn files_that_are_not_dems_are_refused_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        for (name, text) in [("junk.dem", "error(0.1 D0\n"), ("circuit.dem", "H 0\nM 0\n"), ("empty.dem", "")] {
            let path = write(tmp.path(), name, text);
            let e = DemFile::read(&path).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{}: not a detector error model", path.display())), "{e}");
        }
        let missing = tmp.path().join("missing.dem");
        assert!(DemFile::read(&missing).unwrap_err().to_string().starts_with(&missing.display().to_string()));
    }
}
