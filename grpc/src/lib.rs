//! The gRPC front of the qecd service: the protobuf messages of
//! proto/qecd/v1/decoder.proto ([`proto`]), their translation to and from
//! the service's own types ([`convert`]), and the tonic server with health
//! checking and reflection, v1 and v1alpha ([`server`]).
//!
//! It is an adapter: every decision (sessions, budgets, fallback, limits)
//! is `qecd-service`'s. Clients (`qecd demo`, `qecd load`, the tests) use
//! the generated client in [`proto`].
#![deny(missing_docs)]

pub mod convert;
pub mod server;

pub use server::{LocalServer, bind, serve};

/// Code generated from proto/qecd/v1/decoder.proto.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("qecd.v1");
    /// The encoded file descriptor set, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/qecd_descriptor.bin"));
}
