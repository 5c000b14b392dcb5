//! Criterion benches for qecd; see `benches/`.
