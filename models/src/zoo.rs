//! The models built into qecd: the neural zoo (fixtures/models) and the
//! posterior model of neural-matching (fixtures/posterior), embedded at
//! build time so that the binary needs no files beside it.

use std::path::Path;

use crate::ModelError;
use crate::posterior::PosteriorModel;

include!(concat!(env!("OUT_DIR"), "/zoo.rs"));

/// The name of the built-in posterior model (neural-matching's default).
pub const POSTERIOR_NAME: &str = "posterior_z_si1000_p003";

/// The built-in posterior model.
pub fn posterior() -> Result<PosteriorModel, ModelError> {
    PosteriorModel::from_bytes(POSTERIOR_BYTES, POSTERIOR_NAME)
}

/// The posterior model at `path`, or the built-in one; with its name (the
/// file name, or [`POSTERIOR_NAME`]).
pub fn posterior_at(path: Option<&Path>) -> Result<(String, PosteriorModel), ModelError> {
    Ok(match path {
        Some(p) => {
            (p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), PosteriorModel::load(p)?)
        }
        None => (POSTERIOR_NAME.to_string(), posterior()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_zoo_checkpoint_and_the_posterior_load() {
        assert!(CHECKPOINTS.len() >= 5, "fixtures/models holds the d=3..11 zoo");
        for (name, bytes) in CHECKPOINTS {
            crate::Checkpoint::from_bytes(bytes, name).unwrap();
        }
        assert_eq!(posterior_at(None).unwrap().0, POSTERIOR_NAME);
    }
}
