//! The bridge's error type.

use std::path::PathBuf;

/// Everything that can go wrong while building, sampling, reading or writing syndromes.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// A parameter is outside its allowed range.
    #[error("invalid {what}: {why}")]
    InvalidParameter {
        /// Which parameter.
        what: &'static str,
        /// Why it is invalid.
        why: String,
    },
    /// Shot data does not match its declared format or width.
    #[error("malformed shot data: {0}")]
    Format(String),
    /// A circuit is unusable for what was asked.
    #[error("circuit error: {0}")]
    Circuit(String),
    /// An experiment directory is incomplete or inconsistent.
    #[error("experiment directory {dir}: {why}")]
    Experiment {
        /// The directory.
        dir: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// A file meant to hold a detector error model does not.
    #[error("{}: not a detector error model: {why}", path.display())]
    DemFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// Stim rejected something.
    #[error("stim: {0}")]
    Stim(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl From<stim::StimError> for BridgeError {
    fn from(e: stim::StimError) -> Self {
        BridgeError::Stim(e.to_string())
    }
}

impl BridgeError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        BridgeError::Io { path: path.into(), source }
    }

    pub(crate) fn invalid(what: &'static str, why: impl Into<String>) -> Self {
        BridgeError::InvalidParameter { what, why: why.into() }
    }
}
