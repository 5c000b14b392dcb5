//! The FPGA bridge (docs/fpga-bridge.md): the listener that serves the
//! service over binary frames ([`server`], with a thread per connection in
//! `connection` and its non-blocking sending half in `writer`), the client
//! an FPGA's side of the connection uses ([`client`]: `qecd replay`, the
//! benches, the tests), and TLS for both ([`tls`]).

pub mod client;
mod connection;
pub mod server;
pub mod tls;
mod writer;

pub use client::{FrameSink, FrameSource, connect, connect_tls};
pub use server::{Bridge, STALL_TIMEOUT, WRITE_TIMEOUT};
pub use tls::ClientTls;
