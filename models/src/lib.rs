//! The neural decoder's model config, checkpoint format and training.
//!
//! Empty until the neural-decoder issue lands: this crate exists so that the
//! workspace has the shape shared/DESIGN.md gives it. It will own the
//! safetensors + JSON checkpoint format and, behind the `train` feature, the
//! tch training loop. It must never serve requests.
#![deny(missing_docs)]
