//! The neural decoder's model: its config, its checkpoint format, and the
//! featurization of detection events that both training and inference use.
//!
//! The math is fixed by docs/model.md (the contract between training and the
//! inference kernels). This crate also holds the training and fine-tuning
//! loops over either engine ([`train::Engine`]): the fused CPU trainer
//! ([`fused`], always built) and, behind the `train` feature, the tch
//! implementation of the same math ([`net`]), the gradient reference and the
//! trainer for a CUDA device. It never serves requests.
#![deny(missing_docs)]

pub mod calibration;
pub mod checkpoint;
pub mod config;
pub mod features;
pub mod fused;
pub mod positions;
pub mod posterior;
pub mod posterior_cpu;
pub mod tensor_file;
pub mod train;
pub mod zoo;

#[cfg(feature = "train")]
pub mod net;
#[cfg(feature = "train")]
pub mod posterior_net;

pub use checkpoint::{Checkpoint, CheckpointMeta, ModelLayout};
pub use config::{ModelConfig, Positions};
pub use features::Featurizer;

/// What can go wrong with models and checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A checkpoint is unreadable or inconsistent.
    #[error("checkpoint {path}: {why}")]
    Checkpoint {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// A checkpoint does not fit the circuit it is asked to decode.
    #[error("model/circuit mismatch: {0}")]
    Mismatch(String),
    /// Invalid configuration or arguments.
    #[error("{0}")]
    Invalid(String),
    /// Training diverged or failed.
    #[error("training: {0}")]
    Training(String),
    /// An optimizer update made the weights non-finite (they were kept as before it).
    #[error("{0}")]
    Diverged(String),
    /// The syndrome source failed.
    #[error(transparent)]
    Bridge(#[from] simulator_bridge::BridgeError),
    /// tch reported an error.
    #[cfg(feature = "train")]
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
}
