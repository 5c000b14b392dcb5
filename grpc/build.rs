//! Build script of `qecd-grpc`:
//! compiles proto/qecd/v1/decoder.proto with protox (pure Rust, no protoc)
//! and generates the tonic server and client, plus the file descriptor set
//! that gRPC reflection serves.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=../proto");
    let fds = protox::compile(["qecd/v1/decoder.proto"], ["../proto"])?;
    std::fs::write(out.join("qecd_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;

    Ok(())
}
