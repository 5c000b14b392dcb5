//! Build script of the `qecd` package:
//! - compiles proto/qecd/v1/decoder.proto with protox (pure Rust, no protoc)
//!   and generates the tonic server and client, plus the file descriptor set
//!   that gRPC reflection serves;
//! - embeds every zoo checkpoint in fixtures/models, so that `qecd serve` and
//!   `qecd demo` need nothing beside the binary.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["qecd/v1/decoder.proto"], ["proto"])?;
    std::fs::write(out.join("qecd_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;

    println!("cargo:rerun-if-changed=fixtures/models");
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("fixtures/models");
    let mut zoo: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .map(|p| (p.file_stem().unwrap_or_default().to_string_lossy().into_owned(), p))
        .collect();
    zoo.sort();
    let mut code = String::from(
        "/// The zoo checkpoints embedded at build time: (name, safetensors bytes).\npub const ZOO: &[(&str, &[u8])] = &[\n",
    );
    for (name, path) in &zoo {
        println!("cargo:rerun-if-changed={}", path.display());
        code += &format!("    ({name:?}, include_bytes!({:?})),\n", path.display().to_string());
    }
    code += "];\n";
    std::fs::write(out.join("zoo.rs"), code)?;
    Ok(())
}
