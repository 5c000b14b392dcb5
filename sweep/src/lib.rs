//! Logical-error-rate sweeps for qecd, and what is made of their results.
//!
//! This crate owns the offline half of qecd: running sweeps over decoders,
//! distances, rounds and noise strengths ([`sweep`], each case in [`case`]),
//! their statistics in sinter's CSV format ([`sinter_csv`]), the per-case
//! rates read back from it ([`rates`]), the Markdown report ([`report`]) and
//! the PNG plots of sweeps, calibration and training ([`plot`]). The `qecd`
//! binary's `sweep`, `report`, `plot` and `plot-training` subcommands are the
//! argument structs here, run by the functions beside them.
//!
//! A sweep reads its models and DEM files once ([`inputs`]) and builds every
//! decoder from files and DEMs ([`decoders`]); the binary's other subcommands
//! build theirs the same way, through the same functions.
//!
//! It never serves requests: it knows nothing of gRPC, tokio or the FPGA
//! bridge, and the service never links it (nor plotters, through it).
#![deny(missing_docs)]

pub mod case;
pub mod decoders;
pub mod inputs;
pub mod plot;
pub mod progress;
pub mod rates;
pub mod report;
pub mod sinter_csv;
pub mod sweep;
