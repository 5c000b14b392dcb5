//! Compute only: the neural decoder's round step and readout on plain slices.
//!
//! Empty until the inference-engine issue lands: this crate exists so that the
//! workspace has the shape shared/DESIGN.md gives it. It must never touch
//! Stim, gRPC or files.
#![deny(missing_docs)]
