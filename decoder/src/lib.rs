//! qecd decoders.
#![deny(missing_docs)]
