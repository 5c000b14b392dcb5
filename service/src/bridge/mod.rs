//! The FPGA bridge (docs/fpga-bridge.md): the listener that serves the
//! service over binary frames ([`server`]) and the client an FPGA's side
//! of the connection uses ([`client`]: `qecd replay`, the benches, the tests).

pub mod client;
pub mod server;

pub use client::{FrameSink, FrameSource, connect};
pub use server::{Bridge, STALL_TIMEOUT, WRITE_TIMEOUT};
