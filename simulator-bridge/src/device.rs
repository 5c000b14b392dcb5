//! Device descriptions: structured departures from SI1000, read from TOML.
//!
//! A device file describes how a (simulated) device differs from SI1000(p):
//! scale factors per qubit and per kind of operation, correlated two-qubit
//! errors after two-qubit gates, dephasing of spectators during two-qubit
//! layers, asymmetric readout and a slow drift. [`crate::NoiseModel::Device`]
//! lays it on top of SI1000 when it noises a circuit; `docs/device-noise.md`
//! lists the keys.
//!
//! `NoiseModel` is `Copy`, so it holds a `&'static DeviceNoise`. Each
//! distinct (canonical path, contents) pair is parsed once per process and
//! leaked; loading the same file again returns the same reference, so a
//! server that builds codes from one device file repeatedly holds one copy.
//! At most [`MAX_DEVICES`] distinct descriptions are held.
//!
//! Readout asymmetry cannot be simulated exactly: Stim's channels are Pauli
//! channels, blind to the state they act on, so a flip that depends on the
//! measured value has no Stim form. The measurement flip becomes the
//! Pauli-twirled average `(p01 + p10) / 2`; the two values stay in the
//! description for tools that want them.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use serde::Deserialize;

use crate::error::BridgeError;

/// The most distinct device descriptions one process holds.
pub const MAX_DEVICES: usize = 256;

/// The largest device file read, in bytes.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// Factors on SI1000's rate for each kind of operation (1 leaves it as is).
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GateScales {
    /// One-qubit Cliffords' DEPOLARIZE1(p/10).
    pub one_qubit: f64,
    /// Two-qubit Cliffords' DEPOLARIZE2(p).
    pub two_qubit: f64,
    /// The reset flip, 2p.
    pub reset: f64,
    /// The measurement flip, 5p (or the readout section's average).
    pub measure: f64,
    /// DEPOLARIZE1(p/10) on qubits untouched in a moment.
    pub idle: f64,
    /// DEPOLARIZE1(2p) on qubits waiting through a measure or reset moment.
    pub measure_idle: f64,
}

impl Default for GateScales {
    fn default() -> Self {
        GateScales { one_qubit: 1.0, two_qubit: 1.0, reset: 1.0, measure: 1.0, idle: 1.0, measure_idle: 1.0 }
    }
}

/// Correlated Pauli errors after two-qubit gates: independent `E(p) Pa Pb` terms.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Crosstalk {
    /// Probability of X⊗X on the gate's pair.
    pub xx: f64,
    /// Probability of Y⊗Y on the gate's pair.
    pub yy: f64,
    /// Probability of Z⊗Z on the gate's pair.
    pub zz: f64,
    /// The pairs it applies to, in either order; every two-qubit gate when absent.
    pub pairs: Option<Vec<[u32; 2]>>,
}

/// Dephasing of qubits that sit out a moment holding two-qubit gates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Spectator {
    /// `Z_ERROR` probability on each such qubit.
    pub z: f64,
}

/// Asymmetric readout: the two conditional flip probabilities.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Readout {
    /// P(read 1 | state 0).
    pub p01: f64,
    /// P(read 0 | state 1).
    pub p10: f64,
}

impl Readout {
    /// The symmetric flip simulated in its place: the Pauli-twirled average.
    pub fn twirled(&self) -> f64 {
        (self.p01 + self.p10) / 2.0
    }
}

/// The file as written: qubit keys are still strings.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceFile {
    #[serde(default)]
    drift_per_round: f64,
    #[serde(default)]
    gates: GateScales,
    #[serde(default)]
    qubits: BTreeMap<String, f64>,
    #[serde(default)]
    crosstalk: Crosstalk,
    #[serde(default)]
    spectator: Spectator,
    readout: Option<Readout>,
}

/// A validated device description.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceNoise {
    /// The file's path as it was first named: `device:{path}` is the noise model's name.
    pub path: String,
    /// Every rate is multiplied by `1 + drift_per_round * r` in stabilizer round r (from 0).
    pub drift_per_round: f64,
    /// Factors per kind of operation.
    pub gates: GateScales,
    /// Factor on every channel touching a qubit, by the circuit's qubit index;
    /// a two-qubit channel takes the mean of its qubits' factors.
    pub qubits: BTreeMap<u32, f64>,
    /// Correlated errors after two-qubit gates.
    pub crosstalk: Crosstalk,
    /// Spectator dephasing during two-qubit layers.
    pub spectator: Spectator,
    /// Asymmetric readout; SI1000's 5p when absent.
    pub readout: Option<Readout>,
}

type Interned = HashMap<(PathBuf, String), &'static DeviceNoise>;

impl DeviceNoise {
    /// Reads, validates and interns the device file at `path`.
    pub fn load(path: &str) -> Result<&'static DeviceNoise, BridgeError> {
        let refuse = |why: String| BridgeError::invalid("noise", format!("device file '{path}': {why}"));
        let canonical = std::fs::canonicalize(path).map_err(|e| refuse(e.to_string()))?;
        let size = std::fs::metadata(&canonical).map_err(|e| refuse(e.to_string()))?.len();
        if size > MAX_FILE_BYTES {
            return Err(refuse(format!("{size} bytes is more than the {MAX_FILE_BYTES} a device file may hold")));
        }
        let text = std::fs::read_to_string(&canonical).map_err(|e| refuse(e.to_string()))?;
        static LOADED: OnceLock<Mutex<Interned>> = OnceLock::new();
        let mut loaded = LOADED.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        let key = (canonical, text);
        if let Some(&device) = loaded.get(&key) {
            return Ok(device);
        }
        if loaded.len() >= MAX_DEVICES {
            return Err(refuse(format!("this process already holds {MAX_DEVICES} device descriptions")));
        }
        let device: &'static DeviceNoise = Box::leak(Box::new(DeviceNoise::parse(&key.1, path)?));
        loaded.insert(key, device);
        Ok(device)
    }

    /// Parses and validates a description; `path` names it in errors and in the model's name.
    pub fn parse(text: &str, path: &str) -> Result<DeviceNoise, BridgeError> {
        let refuse = |why: String| BridgeError::invalid("noise", format!("device file '{path}': {why}"));
        // The message without toml's quoted source line: the file may not be a device file at all.
        let file: DeviceFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start].matches('\n').count() + 1);
            refuse(match line {
                Some(line) => format!("line {line}: {}", e.message().trim()),
                None => e.message().trim().to_string(),
            })
        })?;
        let probability = |key: &str, p: f64| {
            if (0.0..=0.5).contains(&p) { Ok(()) } else { Err(refuse(format!("{key} = {p} is outside [0, 0.5]"))) }
        };
        let factor = |key: &str, f: f64| {
            if f.is_finite() && f >= 0.0 {
                Ok(())
            } else {
                Err(refuse(format!("{key} = {f} is not a factor (a finite number >= 0)")))
            }
        };
        let g = file.gates;
        for (key, f) in [
            ("gates.one_qubit", g.one_qubit),
            ("gates.two_qubit", g.two_qubit),
            ("gates.reset", g.reset),
            ("gates.measure", g.measure),
            ("gates.idle", g.idle),
            ("gates.measure_idle", g.measure_idle),
            ("drift_per_round", file.drift_per_round),
        ] {
            factor(key, f)?;
        }
        let c = &file.crosstalk;
        for (key, p) in [("crosstalk.xx", c.xx), ("crosstalk.yy", c.yy), ("crosstalk.zz", c.zz)] {
            probability(key, p)?;
        }
        if let Some(pair) = c.pairs.iter().flatten().find(|[a, b]| a == b) {
            return Err(refuse(format!(
                "crosstalk.pairs holds [{}, {}], a qubit paired with itself",
                pair[0], pair[1]
            )));
        }
        probability("spectator.z", file.spectator.z)?;
        if let Some(r) = file.readout {
            probability("readout.p01", r.p01)?;
            probability("readout.p10", r.p10)?;
        }
        let mut qubits = BTreeMap::new();
        for (key, f) in file.qubits {
            let q: u32 =
                key.parse().map_err(|_| refuse(format!("qubits.{key}: a qubit key is a qubit index, like 4 = 3.0")))?;
            factor(&format!("qubits.{key}"), f)?;
            qubits.insert(q, f);
        }
        Ok(DeviceNoise {
            path: path.to_string(),
            drift_per_round: file.drift_per_round,
            gates: file.gates,
            qubits,
            crosstalk: file.crosstalk,
            spectator: file.spectator,
            readout: file.readout,
        })
    }

    /// The factor on every channel touching qubit `q`.
    pub fn qubit_factor(&self, q: u32) -> f64 {
        self.qubits.get(&q).copied().unwrap_or(1.0)
    }

    /// The factor on every rate in stabilizer round `round` (from 0).
    pub fn drift_factor(&self, round: u64) -> f64 {
        1.0 + self.drift_per_round * round as f64
    }

    /// Whether the crosstalk channel follows a two-qubit gate on `a` and `b`.
    pub fn crosstalk_on(&self, a: u32, b: u32) -> bool {
        match &self.crosstalk.pairs {
            None => true,
            Some(pairs) => pairs.iter().any(|&[x, y]| (x, y) == (a, b) || (x, y) == (b, a)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::NoiseModel;
    use crate::code::{Basis, MemoryExperiment};

    const P: f64 = 0.001;

    fn fixture(name: &str) -> String {
        format!("{}/../fixtures/devices/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    fn device(text: &str) -> NoiseModel {
        let device = Box::leak(Box::new(DeviceNoise::parse(text, "test.toml").unwrap()));
        NoiseModel::Device { p: P, device }
    }

    fn refusal(text: &str) -> String {
        DeviceNoise::parse(text, "bad.toml").unwrap_err().to_string()
    }

    /// The noisy d=3 memory-Z circuit with `rounds` rounds, flattened, one trimmed line each.
    fn noisy(model: &NoiseModel, rounds: usize) -> Vec<String> {
        let ideal = MemoryExperiment::new(3, rounds, Basis::Z).unwrap().ideal_circuit().unwrap();
        let circuit = model.apply(&ideal).unwrap().flattened().to_string();
        circuit.lines().map(|l| l.trim().to_string()).collect()
    }

    fn count(lines: &[String], prefix: &str) -> usize {
        lines.iter().filter(|l| l.starts_with(prefix)).count()
    }

    fn targets(line: &str) -> Vec<u32> {
        let after_args = line.find(' ').unwrap();
        line[after_args..].split_whitespace().map(|t| t.trim_start_matches(['X', 'Y', 'Z']).parse().unwrap()).collect()
    }

    #[test]
    fn the_fixtures_parse() {
        let d = DeviceNoise::load(&fixture("crosstalk.toml")).unwrap();
        assert_eq!(d.qubits, BTreeMap::from([(12, 3.0), (14, 3.0), (18, 3.0)]));
        assert_eq!((d.crosstalk.zz, d.crosstalk.xx, d.crosstalk.yy), (0.002, 0.001, 0.0));
        assert_eq!(d.crosstalk.pairs, None);
        assert_eq!(d.readout, Some(Readout { p01: 0.01, p10: 0.04 }));
        assert_eq!(d.readout.unwrap().twirled(), 0.025);
        assert_eq!((d.gates, d.drift_per_round, d.spectator.z), (GateScales::default(), 0.0, 0.0));
        let d = DeviceNoise::load(&fixture("drifting.toml")).unwrap();
        assert_eq!((d.drift_per_round, d.spectator.z, d.readout), (0.05, 0.001, None));
        assert_eq!(d.drift_factor(10), 1.5);
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        assert!(refusal("[gates]\ncz = 1.5\n").contains("unknown field `cz`"), "{}", refusal("[gates]\ncz = 1.5\n"));
        assert!(refusal("drift = 0.1\n").contains("unknown field `drift`"));
        assert!(refusal("[crosstalk]\nzy = 0.001\n").contains("unknown field `zy`"));
        assert!(refusal("[readout]\np01 = 0.01\n").contains("missing field `p10`"));
        assert!(refusal("[qubits]\nfour = 2.0\n").contains("qubits.four"));
        let duplicate = refusal("[qubits]\n4 = 2.0\n5 = 3.0\n[qubits]\n");
        assert!(duplicate.contains("line 4"), "{duplicate}");
    }

    #[test]
    fn probabilities_outside_the_range_are_refused_by_key() {
        for (text, key) in [
            ("[crosstalk]\nzz = 0.7\n", "crosstalk.zz = 0.7"),
            ("[spectator]\nz = 0.7\n", "spectator.z = 0.7"),
            ("[readout]\np01 = 0.01\np10 = 0.7\n", "readout.p10 = 0.7"),
            ("[readout]\np01 = -0.1\np10 = 0.01\n", "readout.p01 = -0.1"),
        ] {
            let why = refusal(text);
            assert!(why.contains(key) && why.contains("outside [0, 0.5]") && why.contains("bad.toml"), "{why}");
        }
        assert!(refusal("[gates]\ntwo_qubit = -1.0\n").contains("gates.two_qubit = -1"));
        assert!(refusal("[qubits]\n4 = -3.0\n").contains("qubits.4 = -3"));
        assert!(refusal("drift_per_round = nan\n").contains("drift_per_round"));
        assert!(refusal("[crosstalk]\npairs = [[2, 2]]\n").contains("[2, 2]"));
    }

    #[test]
    fn a_missing_file_is_named() {
        let why = DeviceNoise::load("/nonexistent/devices/hot.toml").unwrap_err().to_string();
        assert!(why.contains("/nonexistent/devices/hot.toml"), "{why}");
        let why = NoiseModel::from_name("device:/nonexistent/devices/hot.toml", 0.003).unwrap_err().to_string();
        assert!(why.contains("/nonexistent/devices/hot.toml"), "{why}");
    }

    /// The name round-trips, and one file is parsed (and held) once.
    #[test]
    fn names_round_trip_and_files_are_interned() {
        let path = fixture("crosstalk.toml");
        let model = NoiseModel::from_name(&format!("device:{path}"), 0.003).unwrap();
        assert_eq!(model.name(), format!("device:{path}"));
        assert_eq!(NoiseModel::from_name(&model.name(), 0.003).unwrap(), model);
        assert_ne!(NoiseModel::from_name(&model.name(), 0.002).unwrap(), model);
        let (NoiseModel::Device { device: a, .. }, NoiseModel::Device { device: b, .. }) =
            (model, NoiseModel::from_name(&model.name(), 0.001).unwrap())
        else {
            panic!("a device name gives a device model");
        };
        assert!(std::ptr::eq(a, b));
        // A different spelling of the same file is the same description.
        let dotted = format!("{}/../fixtures/./devices/crosstalk.toml", env!("CARGO_MANIFEST_DIR"));
        assert!(std::ptr::eq(DeviceNoise::load(&dotted).unwrap(), a));
        // Changed contents are a new description.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dev.toml");
        std::fs::write(&file, "[spectator]\nz = 0.001\n").unwrap();
        let first = DeviceNoise::load(file.to_str().unwrap()).unwrap();
        std::fs::write(&file, "[spectator]\nz = 0.002\n").unwrap();
        let second = DeviceNoise::load(file.to_str().unwrap()).unwrap();
        assert_eq!((first.spectator.z, second.spectator.z), (0.001, 0.002));
    }

    /// With every feature off, the device is SI1000 to the byte.
    #[test]
    fn a_device_with_everything_off_is_si1000() {
        let ideal = MemoryExperiment::new(5, 10, Basis::X).unwrap().ideal_circuit().unwrap().to_string();
        let si1000 = NoiseModel::Si1000 { p: P }.apply_to_text(&ideal).unwrap();
        let explicit = "drift_per_round = 0.0\n[gates]\ntwo_qubit = 1.0\nmeasure = 1.0\n[qubits]\n9 = 1.0\n\
                        [crosstalk]\nzz = 0.0\n[spectator]\nz = 0.0\n";
        for text in ["", explicit] {
            assert_eq!(device(text).apply_to_text(&ideal).unwrap(), si1000);
        }
        // A drift too small to change a rate unrolls the REPEAT block, and
        // the unrolled circuit is SI1000's, flattened.
        let unrolled = device("drift_per_round = 1e-20\n").apply_to_text(&ideal).unwrap();
        assert!(!unrolled.contains("REPEAT"));
        let flat = |t: &str| t.parse::<stim::Circuit>().unwrap().flattened().to_string();
        assert_eq!(flat(&unrolled), flat(&si1000));
    }

    #[test]
    fn crosstalk_follows_every_two_qubit_gate_or_the_listed_pairs() {
        let lines = noisy(&device("[crosstalk]\nzz = 0.002\nxx = 0.001\n"), 3);
        assert_eq!(count(&lines, "CX "), 12);
        assert_eq!(count(&lines, "E("), 12 * 6 * 2);
        for (k, line) in lines.iter().enumerate().filter(|(_, l)| l.starts_with("CX ")) {
            assert!(lines[k + 1].starts_with("DEPOLARIZE2(0.001) "));
            let expected: Vec<String> = targets(line)
                .chunks(2)
                .flat_map(|g| [format!("E(0.001) X{} X{}", g[0], g[1]), format!("E(0.002) Z{} Z{}", g[0], g[1])])
                .collect();
            assert_eq!(lines[k + 2..k + 2 + 12], expected[..]);
        }
        let lines = noisy(&device("[crosstalk]\nzz = 0.002\npairs = [[3, 2], [9, 10]]\n"), 3);
        let crosstalk: Vec<Vec<u32>> = lines.iter().filter(|l| l.starts_with("E(")).map(|l| targets(l)).collect();
        // CX 2 3 and CX 10 9 come in the first layer of each of the 3 rounds.
        assert_eq!(crosstalk, [[2, 3], [10, 9]].repeat(3));
        // The channel reaches the detector error model.
        let ideal = MemoryExperiment::new(3, 3, Basis::Z).unwrap().ideal_circuit().unwrap();
        let plain = NoiseModel::Si1000 { p: P }.apply(&ideal).unwrap().detector_error_model().unwrap();
        let noisy = device("[crosstalk]\nzz = 0.002\n").apply(&ideal).unwrap().detector_error_model().unwrap();
        assert_ne!(plain.to_string(), noisy.to_string());
    }

    #[test]
    fn spectators_dephase_during_two_qubit_layers_only() {
        let lines = noisy(&device("[spectator]\nz = 0.0005\n"), 3);
        let all: BTreeSet<u32> = [1, 2, 3, 5, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 25].into();
        assert_eq!(count(&lines, "Z_ERROR("), 12);
        for (k, line) in lines.iter().enumerate().filter(|(_, l)| l.starts_with("CX ")) {
            let spectators = lines[k + 1..].iter().find(|l| l.starts_with("Z_ERROR(0.0005) ")).unwrap();
            let paired: BTreeSet<u32> = targets(line).into_iter().collect();
            let expected: Vec<u32> = all.difference(&paired).copied().collect();
            assert_eq!(targets(spectators), expected);
            assert_eq!(expected.len(), 5);
        }
    }

    #[test]
    fn readout_asymmetry_is_simulated_as_its_average() {
        let lines = noisy(&device("[readout]\np01 = 0.01\np10 = 0.03\n[gates]\nmeasure = 2.0\n"), 3);
        let mr = lines.iter().position(|l| l.starts_with("MR ")).unwrap();
        assert_eq!(lines[mr - 1], "X_ERROR(0.04) 2 9 11 13 14 16 18 25");
        // Three ancilla measurements; Stim fuses the last one's flip with the data qubits'.
        assert_eq!(count(&lines, "X_ERROR(0.04) "), 3);
        let last = lines.iter().rposition(|l| l.starts_with("X_ERROR(0.04) ")).unwrap();
        assert_eq!(lines[last], "X_ERROR(0.04) 2 9 11 13 14 16 18 25 1 3 5 8 10 12 15 17 19");
    }

    #[test]
    fn scale_factors_scale() {
        let lines = noisy(&device("[gates]\ntwo_qubit = 2.0\nreset = 0.0\nidle = 3.0\n[qubits]\n9 = 3.0\n"), 2);
        // CX 10 9 takes the mean of 1 and 3; the other pairs are 2 x p.
        let cx = lines.iter().position(|l| l.starts_with("CX 2 3 ")).unwrap();
        assert_eq!(lines[cx + 1], "DEPOLARIZE2(0.002) 2 3 16 17 11 12 15 14");
        assert_eq!(lines[cx + 2], "DEPOLARIZE2(0.004) 10 9");
        assert_eq!(lines[cx + 3], "DEPOLARIZE2(0.002) 19 18");
        // Resets are silent; qubit 9's measurement flip is 3 x 5p.
        assert_eq!(count(&lines, "X_ERROR(0.002) "), 0);
        let mr = lines.iter().position(|l| l.starts_with("MR ")).unwrap();
        assert_eq!(lines[mr - 3..mr], ["X_ERROR(0.005) 2", "X_ERROR(0.015) 9", "X_ERROR(0.005) 11 13 14 16 18 25"]);
        // Idles are 3 x p/10; qubit 9 idles at 9 x p/10.
        let h = lines.iter().position(|l| l.starts_with("H ")).unwrap();
        assert_eq!(
            lines[h + 2..h + 5],
            ["DEPOLARIZE1(0.0003) 1 3 5 8", "DEPOLARIZE1(0.0009) 9", "DEPOLARIZE1(0.0003) 10 12 13 14 15 17 18 19"]
        );
        // A factor that pushes a channel past 0.5 is refused, naming the channel.
        let ideal = MemoryExperiment::new(3, 2, Basis::Z).unwrap().ideal_circuit().unwrap();
        let why = device("[qubits]\n9 = 200.0\n").apply(&ideal).unwrap_err().to_string();
        assert!(why.contains("X_ERROR") && why.contains("[9]") && why.contains("more than 0.5"), "{why}");
    }

    /// Round r's rates are (1 + drift r) x SI1000's, so the REPEAT block is unrolled.
    #[test]
    fn drift_grows_every_round() {
        let model = device("drift_per_round = 0.5\n");
        let ideal = MemoryExperiment::new(3, 4, Basis::Z).unwrap().ideal_circuit().unwrap();
        let text = model.apply_to_text(&ideal.to_string()).unwrap();
        assert!(!text.contains("REPEAT"));
        let lines: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
        let flips: Vec<&str> = lines
            .iter()
            .enumerate()
            .filter(|(k, _)| lines.get(k + 1).is_some_and(|n| n.starts_with("MR ")))
            .map(|(_, l)| l.split(' ').next().unwrap())
            .collect();
        assert_eq!(flips, ["X_ERROR(0.005)", "X_ERROR(0.0075)", "X_ERROR(0.01)", "X_ERROR(0.0125)"]);
        // The first CX layer of round 2 is at 2 x p.
        let third = lines.iter().enumerate().filter(|(_, l)| l.starts_with("CX 2 3 ")).nth(2).unwrap().0;
        assert!(lines[third + 1].starts_with("DEPOLARIZE2(0.002) "), "{}", lines[third + 1]);
        let circuit: stim::Circuit = text.parse().unwrap();
        assert_eq!(circuit.num_detectors(), ideal.num_detectors());
        assert!(circuit.detector_error_model().is_ok());
    }
}
