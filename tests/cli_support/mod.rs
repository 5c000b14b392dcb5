//! What the tests that run the `qecd` binary share: running it, running it
//! expecting success, and paths as arguments.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Runs the `qecd` built for these tests with `args`.
pub fn qecd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qecd")).args(args).output().expect("qecd runs")
}

/// Runs qecd expecting success; its stdout.
pub fn ok(args: &[&str]) -> String {
    let o = qecd(args);
    assert!(o.status.success(), "qecd {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A path as a command-line argument.
pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}
