//! Output files that appear all together or not at all.
//!
//! Each output is opened as a temporary file beside its destination as soon
//! as it is declared, so a missing directory fails before any work is done.
//! Nothing reaches its final name until [`Staged::commit`]; dropping the
//! stage deletes every temporary file.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tempfile::NamedTempFile;

/// A set of output files being written.
#[derive(Default)]
pub struct Staged {
    files: Vec<(PathBuf, NamedTempFile)>,
}

/// Handle to one staged output.
#[derive(Clone, Copy, Debug)]
pub struct Output(usize);

impl Staged {
    /// Declares an output at `path`.
    pub fn add(&mut self, path: &Path) -> Result<Output> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if path.is_dir() {
            anyhow::bail!("{} is a directory, not a file", path.display());
        }
        let tmp = tempfile::Builder::new()
            .prefix(".qecd-partial-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .tempfile_in(dir)
            .with_context(|| format!("cannot create {}", path.display()))?;
        self.files.push((path.to_path_buf(), tmp));
        Ok(Output(self.files.len() - 1))
    }

    /// Declares an output if a path was given.
    pub fn add_optional(&mut self, path: Option<&Path>) -> Result<Option<Output>> {
        path.map(|p| self.add(p)).transpose()
    }

    /// A buffered writer into the staged file.
    pub fn writer(&mut self, output: Output) -> Result<BufWriter<&mut File>> {
        Ok(BufWriter::new(self.files[output.0].1.as_file_mut()))
    }

    /// Moves every staged file to its destination.
    pub fn commit(self) -> Result<()> {
        for (path, tmp) in self.files {
            tmp.as_file().sync_all().ok();
            tmp.persist(&path).with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn dropped_stage_leaves_nothing_and_commit_writes_all() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        {
            let mut stage = Staged::default();
            let out = stage.add(&a).unwrap();
            stage.writer(out).unwrap().write_all(b"x").unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut stage = Staged::default();
        let oa = stage.add(&a).unwrap();
        let ob = stage.add(&b).unwrap();
        stage.writer(oa).unwrap().write_all(b"1").unwrap();
        stage.writer(ob).unwrap().write_all(b"2").unwrap();
        assert!(stage.add(&dir.path().join("missing/c")).is_err());
        stage.commit().unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"1");
        assert_eq!(std::fs::read(&b).unwrap(), b"2");
    }
}
