//! A client generated from proto/qecd/v1/decoder.proto by another language's
//! stock gRPC tooling (Python grpcio-tools) decodes through `qecd serve`:
//! examples/python_client.py. Skipped, and saying so, where the Python
//! packages are missing (scripts/torch-env installs them).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

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
    let mut server = Command::new(env!("CARGO_BIN_EXE_qecd"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.split_whitespace().find(|w| w.starts_with("127.0.0.1:")).expect(&line).trim_end_matches(';');
    let out = Command::new(&python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python_client.py"))
        .args(["--addr", addr, "--shots", "500"])
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("500 shots of d=3, 3 rounds") && stdout.contains("each answered once"), "{stdout}");
    assert!(stdout.contains("neural LER/shot"), "{stdout}");
}
