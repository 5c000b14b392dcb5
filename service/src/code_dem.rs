//! Detector error models the operator gives for codes (`qecd serve
//! --code-dem CODE=FILE`): a code opened by a client is then decoded with
//! the file's DEM instead of its simulated circuit's. Its matching and
//! correlated matching, their confidence calibrations, the neural model's
//! fallback and shadow check, and neural-matching all come from that DEM; the
//! stabilizer layout and the round layout still come from the circuit.
//!
//! Only the operator names files, at start-up: a client names a code, never
//! a path (as with `device:` noise, [`CodeSpec::new`]). Each file is read
//! and checked against its code's circuit when the server starts
//! ([`load_all`]), so a server never starts with a DEM that cannot decode
//! its code's shots. With `--watch-code-dems` a changed file is read and
//! checked the same way ([`CodeDem::load`], from [`crate::watch`]) before
//! it replaces its code's DEM.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use simulator_bridge::{DemFile, DemShape, MemoryExperiment};

use crate::ServerOptions;
use crate::api::{CodeSpec, Fault};
use crate::codes::{CodeKey, key_of};

/// `CODE=FILE`, as `--code-dem` takes it: a code as [`CodeSpec`] reads it,
/// then `=` and the path of a DEM file.
#[derive(Clone, Debug)]
pub struct CodeDemSpec {
    /// The code.
    pub code: CodeSpec,
    /// The DEM file.
    pub path: PathBuf,
}

/// The code's keys and values hold no `=` and no `,`: the first pair with a
/// second `=` ends the code, and the path is the rest (commas and `=` included).
impl std::str::FromStr for CodeDemSpec {
    type Err = Fault;

    fn from_str(s: &str) -> Result<Self, Fault> {
        let usage = || {
            Fault::invalid(format!(
                "'{s}' is not CODE=FILE (e.g. d=3,rounds=10,p=0.003=learned.dem: a code as --prebuild takes it, \
                 then = and a DEM file)"
            ))
        };
        let mut start = 0;
        for pair in s.split(',') {
            let mut equals = pair.match_indices('=').map(|(i, _)| start + i);
            if let (Some(_), Some(second)) = (equals.next(), equals.next()) {
                let (code, path) = (&s[..second], &s[second + 1..]);
                if path.is_empty() {
                    return Err(usage());
                }
                return Ok(Self { code: code.parse()?, path: PathBuf::from(path) });
            }
            start += pair.len() + 1;
        }
        Err(usage())
    }
}

impl fmt::Display for CodeDemSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.code, self.path.display())
    }
}

/// A code and the DEM its decoders use, checked to fit its circuit.
#[derive(Debug)]
pub struct CodeDem {
    /// The code.
    pub code: CodeSpec,
    /// Its DEM.
    pub file: DemFile,
}

impl CodeDem {
    /// Reads the file of `spec` and checks that it decodes shots of its code's circuit.
    pub fn load(spec: &CodeDemSpec) -> Result<Self> {
        let code = &spec.code;
        let file = DemFile::read(&spec.path)?;
        let circuit = MemoryExperiment::new(code.distance, code.rounds, code.basis)?.noisy_circuit(&code.noise)?;
        if let Some(why) = file.misfit(&DemShape::of_circuit(&circuit)?) {
            bail!("{} does not fit the code's circuit: {why}", spec.path.display());
        }
        Ok(Self { code: code.clone(), file })
    }

    /// `learned.dem (sha256 3f2a9c0b1d2e)`, for logs.
    pub fn describe(&self) -> String {
        format!("{} (sha256 {})", self.file.path().display(), self.file.short_hash())
    }
}

/// Loads every `--code-dem` of a server with `options`; an error names the
/// flag, the code and the path: a file that does not parse or does not fit
/// its code, a code past the server's size limits (no client could open
/// it), or a code given twice.
pub fn load_all(specs: &[CodeDemSpec], options: &ServerOptions) -> Result<Vec<Arc<CodeDem>>> {
    let mut seen: HashMap<CodeKey, &CodeDemSpec> = HashMap::new();
    let mut loaded = Vec::new();
    for spec in specs {
        let flag = || format!("--code-dem {spec}");
        let code = &spec.code;
        if code.distance > options.max_distance || code.rounds > options.max_rounds {
            bail!(
                "{}: no client can open this code: d={} and {} rounds, and this server takes up to d={} \
                 (--max-distance) and {} rounds (--max-rounds)",
                flag(),
                code.distance,
                code.rounds,
                options.max_distance,
                options.max_rounds
            );
        }
        if let Some(earlier) = seen.insert(key_of(code), spec) {
            bail!("{}: the code already has a DEM (--code-dem {earlier}); give one file per code", flag());
        }
        loaded.push(Arc::new(CodeDem::load(spec).with_context(flag)?));
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use simulator_bridge::{Basis, NoiseModel};

    fn spec(s: &str) -> CodeDemSpec {
        s.parse().unwrap()
    }

    #[test]
    fn code_then_file() {
        let s = spec("d=3,rounds=10,basis=Z,noise=si1000,p=0.003=/tmp/learned.dem");
        assert_eq!((s.code.distance, s.code.rounds, s.code.basis), (3, 10, Basis::Z));
        assert_eq!(s.path, PathBuf::from("/tmp/learned.dem"));
        assert_eq!(s.to_string(), "d=3,rounds=10,basis=Z,noise=si1000,p=0.003=/tmp/learned.dem");
        // Defaults, and a path with its own `=` and commas.
        let s = spec("d=5,rounds=5=dems/a=b,c.dem");
        assert_eq!((s.code.distance, s.code.noise.p()), (5, 0.003));
        assert_eq!(s.path, PathBuf::from("dems/a=b,c.dem"));
        for bad in ["d=3,rounds=3", "learned.dem", "d=3,rounds=3=", ""] {
            let e = bad.parse::<CodeDemSpec>().unwrap_err();
            assert!(e.message.contains("is not CODE=FILE"), "{bad}: {}", e.message);
        }
        let e = "d=3=a.dem".parse::<CodeDemSpec>().unwrap_err();
        assert!(e.message.contains("has no rounds="), "{}", e.message);
        // A client's rule holds here too: no device files through a code.
        let e = "d=3,rounds=3,noise=device:x.toml=a.dem".parse::<CodeDemSpec>().unwrap_err();
        assert!(e.message.contains("device noise files"), "{}", e.message);
    }

    fn dem_of(dir: &std::path::Path, name: &str, d: usize, rounds: usize, p: f64) -> PathBuf {
        let circuit =
            MemoryExperiment::new(d, rounds, Basis::Z).unwrap().noisy_circuit(&NoiseModel::Si1000 { p }).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, simulator_bridge::decoding_dem(&circuit).unwrap().to_string()).unwrap();
        path
    }

    #[test]
    fn start_up_checks_name_the_flag_the_code_and_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let good = dem_of(tmp.path(), "d3r3.dem", 3, 3, 0.006);
        let d5 = dem_of(tmp.path(), "d5r5.dem", 5, 5, 0.003);
        let junk = tmp.path().join("junk.dem");
        std::fs::write(&junk, "error(0.1) D0 Q\n").unwrap();
        let options = ServerOptions::default();
        let with = |file: &std::path::Path| spec(&format!("d=3,rounds=3={}", file.display()));
        let loaded = load_all(&[with(&good)], &options).unwrap();
        assert_eq!(loaded[0].file.shape().num_detectors, 24);
        assert!(loaded[0].describe().starts_with(&format!("{} (sha256 ", good.display())));
        let error = |specs: &[CodeDemSpec]| format!("{:#}", load_all(specs, &options).unwrap_err());
        let flag =
            |file: &std::path::Path| format!("--code-dem d=3,rounds=3,basis=Z,noise=si1000,p=0.003={}", file.display());
        let e = error(&[with(&d5)]);
        assert!(e.starts_with(&flag(&d5)), "{e}");
        assert!(
            e.contains("does not fit the code's circuit: it has 120 detectors and 1 observable, the circuit 24"),
            "{e}"
        );
        let e = error(&[with(&junk)]);
        assert!(e.starts_with(&flag(&junk)) && e.contains("junk.dem: not a detector error model"), "{e}");
        let missing = tmp.path().join("missing.dem");
        assert!(error(&[with(&missing)]).starts_with(&flag(&missing)));
        let e = error(&[with(&good), with(&good)]);
        assert!(e.contains("the code already has a DEM"), "{e}");
        let e = error(&[spec(&format!("d=3,rounds=101={}", good.display()))]);
        assert!(e.contains("no client can open this code") && e.contains("(--max-rounds)"), "{e}");
    }
}
