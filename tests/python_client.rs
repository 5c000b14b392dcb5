//! A client generated from proto/qecd/v1/decoder.proto by another language's
//! stock gRPC tooling (Python grpcio-tools) decodes through `qecd serve`:
//! examples/python_client.py. Skipped, and saying so, where the Python
//! packages are missing (scripts/torch-env installs them).

use std::process::Command;

mod common;

#[test]
fn the_python_example_client_decodes() {
    let python = match std::env::var("VIRTUAL_ENV") {
        Ok(venv) => format!("{venv}/bin/python"),
        Err(_) => "python3".into(),
    };
    let probe = Command::new(&python).args(["-c", "import grpc, grpc_tools, stim, numpy"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: {python} lacks grpcio, grpcio-tools, stim or numpy (`. scripts/torch-env` installs them)");
        return;
    }
    let server = common::Server::start(&[]);
    let out = Command::new(&python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python_client.py"))
        .args(["--addr", &server.grpc, "--shots", "500"])
        .output()
        .unwrap();
    drop(server);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("500 shots of d=3, 3 rounds") && stdout.contains("each answered once"), "{stdout}");
    assert!(stdout.contains("neural LER/shot"), "{stdout}");
}
