//! Deterministic random models and inputs, for the integration tests and the
//! GPU bench (`#[path]`-included by both): the crate's hidden `testutil`.
#![allow(unused_imports)]

pub use kernels::testutil::{Rng, config, cpu_logits, random_features, random_weights};
