//! Writing files so that a failure never leaves a partial output behind.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::error::BridgeError;

/// Writes `path` through a temporary file in the same directory, renamed into
/// place only when `fill` succeeds. On any error the temporary file is removed
/// and an existing file at `path` is left untouched.
pub fn write_atomically<F>(path: &Path, fill: F) -> Result<(), BridgeError>
where
    F: FnOnce(&mut BufWriter<File>) -> Result<(), BridgeError>,
{
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".qecd-partial-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .tempfile_in(dir)
        .map_err(|e| BridgeError::io(path, e))?;
    let (file, tmp_path) = tmp.into_parts();
    let mut writer = BufWriter::new(file);
    fill(&mut writer)?;
    writer.flush().map_err(|e| BridgeError::io(path, e))?;
    drop(writer);
    tmp_path.persist(path).map_err(|e| BridgeError::io(path, e.error))?;
    Ok(())
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
}
