//! Syndrome sources for qecd.
//!
//! This crate owns everything between a physical (or simulated) experiment and
//! a decoder: rotated surface-code memory circuits from Stim, the noise models
//! applied to them (uniform depolarizing and true SI1000), seeded
//! multi-threaded sampling of bit-packed detection events, the stabilizer
//! layout derived from detector coordinates, Stim's result formats,
//! experiment directories in the layout of Google's public surface-code data,
//! detector error models read from files and whether they fit a circuit
//! ([`dem_file`]), and the one way qecd writes output files: whole or not at all ([`fsutil`]).
//!
//! It never decodes, and it knows nothing of tch, CUDA, gRPC or the FPGA
//! bridge's wire format (the `frame-codec` crate owns that).
#![deny(missing_docs)]

pub mod code;
pub mod dem_file;
pub mod device;
pub mod edges;
pub mod error;
pub mod experiment;
pub mod formats;
pub mod fsutil;
pub mod labels;
pub mod layout;
pub mod learn;
pub mod noise;
pub mod pacing;
pub mod sample;
pub mod shots;

pub use code::{Basis, MemoryExperiment, decoding_dem};
pub use dem_file::{DemFile, DemShape};
pub use error::BridgeError;
pub use formats::{BitLabels, ResultFormat};
pub use labels::{LabeledSampler, LabeledShots};
pub use layout::{RoundLayout, StabilizerLayout};
pub use noise::NoiseModel;
pub use shots::{PackedShots, ShotId};
