//! Writing files so that a failure never leaves a partial output behind:
//! one file at a time ([`write_atomically`]), or a set of outputs that appear
//! all together or not at all ([`Staged`]).
//!
//! Every output is written to a temporary file beside its destination
//! (`.qecd-partial-*`, so a missing directory fails before any work is done)
//! and renamed into place only once it is whole.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use crate::error::BridgeError;

/// A temporary file beside `path`, readable by all once renamed to it.
fn partial_beside(path: &Path) -> Result<NamedTempFile, BridgeError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    tempfile::Builder::new()
        .prefix(".qecd-partial-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .tempfile_in(dir)
        .map_err(|e| BridgeError::io(path, e))
}

/// Writes `path` through a temporary file in the same directory, renamed into
/// place only when `fill` succeeds. On any error the temporary file is removed
/// and an existing file at `path` is left untouched.
pub fn write_atomically<F>(path: &Path, fill: F) -> Result<(), BridgeError>
where
    F: FnOnce(&mut BufWriter<File>) -> Result<(), BridgeError>,
{
    let (file, tmp_path) = partial_beside(path)?.into_parts();
    let mut writer = BufWriter::new(file);
    fill(&mut writer)?;
    writer.flush().map_err(|e| BridgeError::io(path, e))?;
    drop(writer);
    tmp_path.persist(path).map_err(|e| BridgeError::io(path, e.error))?;
    Ok(())
}

/// A set of output files being written. Each is opened as a temporary file
/// as soon as it is declared; nothing reaches its final name until
/// [`Staged::commit`], and dropping the stage deletes every temporary file.
#[derive(Default)]
pub struct Staged {
    files: Vec<(PathBuf, NamedTempFile)>,
}

/// Handle to one staged output.
#[derive(Clone, Copy, Debug)]
pub struct Output(usize);

impl Staged {
    /// Declares an output at `path`.
    pub fn add(&mut self, path: &Path) -> Result<Output, BridgeError> {
        if path.is_dir() {
            let why = std::io::Error::new(std::io::ErrorKind::IsADirectory, "is a directory, not a file");
            return Err(BridgeError::io(path, why));
        }
        self.files.push((path.to_path_buf(), partial_beside(path)?));
        Ok(Output(self.files.len() - 1))
    }

    /// Declares an output if a path was given.
    pub fn add_optional(&mut self, path: Option<&Path>) -> Result<Option<Output>, BridgeError> {
        path.map(|p| self.add(p)).transpose()
    }

    /// A buffered writer into the staged file.
    pub fn writer(&mut self, output: Output) -> BufWriter<&mut File> {
        BufWriter::new(self.files[output.0].1.as_file_mut())
    }

    /// Moves every staged file to its destination.
    pub fn commit(self) -> Result<(), BridgeError> {
        for (path, tmp) in self.files {
            tmp.as_file().sync_all().ok();
            tmp.persist(&path).map_err(|e| BridgeError::io(&path, e.error))?;
        }
        Ok(())
    }
}

/// Reads a whole file, naming the path in the error.
pub fn read_file(path: &Path) -> Result<Vec<u8>, BridgeError> {
    std::fs::read(path).map_err(|e| BridgeError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_leaves_old_file_and_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        std::fs::write(&path, b"old").unwrap();
        let err = write_atomically(&path, |w| {
            w.write_all(b"half").unwrap();
            Err(BridgeError::Format("boom".into()))
        })
        .unwrap_err();
        assert!(err.to_string().contains("boom"));
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        write_atomically(&path, |w| w.write_all(b"new").map_err(|e| BridgeError::io("x", e))).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
    }

    #[test]
    fn dropped_stage_leaves_nothing_and_commit_writes_all() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        {
            let mut stage = Staged::default();
            let out = stage.add(&a).unwrap();
            stage.writer(out).write_all(b"x").unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut stage = Staged::default();
        let oa = stage.add(&a).unwrap();
        let ob = stage.add(&b).unwrap();
        stage.writer(oa).write_all(b"1").unwrap();
        stage.writer(ob).write_all(b"2").unwrap();
        assert!(stage.add(&dir.path().join("missing/c")).is_err());
        assert!(stage.add(dir.path()).unwrap_err().to_string().contains("is a directory"));
        stage.commit().unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"1");
        assert_eq!(std::fs::read(&b).unwrap(), b"2");
    }
}
