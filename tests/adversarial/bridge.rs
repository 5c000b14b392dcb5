//! The FPGA bridge: connection limit, handshake and idle timeouts, drain, TLS.
