//! The gRPC front of the qecd service: the protobuf messages of
//! proto/qecd/v1/decoder.proto ([`proto`]), their translation to and from
//! the service's own types ([`convert`]), the tonic server with health
//! checking and reflection, v1 and v1alpha ([`server`]), and who may call
//! it: TLS and a bearer token ([`security`]).
//!
//! Every resource a client can make the server hold has a bound here: the
//! replies it leaves unread (`max_reply_bytes`), the time it takes to open
//! a session and between messages (`handshake_timeout`, `idle_timeout`),
//! and the time its streams get once the server shuts down (`drain_timeout`).
//!
//! It is an adapter: every decision (sessions, budgets, fallback, limits)
//! is `qecd-service`'s. Clients (`qecd demo`, `qecd load`, the tests) use
//! the generated client in [`proto`], with [`client`]'s credentials for
//! TLS and tokens.
#![deny(missing_docs)]

pub mod client;
pub mod convert;
mod replies;
pub mod security;
pub mod server;
mod stream;

pub use client::Credentials;
pub use security::Security;
pub use server::{LocalServer, bind, serve, serve_with};

/// Code generated from proto/qecd/v1/decoder.proto.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("qecd.v1");
    /// The encoded file descriptor set, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/qecd_descriptor.bin"));
}
