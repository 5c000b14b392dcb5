//! The gRPC transport: reply queue bound, undecodable messages, timeouts, drain, TLS and tokens.
