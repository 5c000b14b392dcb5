//! Build script of `models`: embeds every zoo checkpoint in fixtures/models
//! and the posterior model in fixtures/posterior ([`crate::zoo`]), so that
//! `qecd serve` and `qecd demo` need nothing beside the binary.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../fixtures");
    let dir = root.join("models");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut zoo: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .map(|p| (p.file_stem().unwrap_or_default().to_string_lossy().into_owned(), p))
        .collect();
    zoo.sort();
    let mut code = String::from(
        "/// The zoo checkpoints embedded at build time: (name, safetensors bytes).\npub const CHECKPOINTS: &[(&str, &[u8])] = &[\n",
    );
    for (name, path) in &zoo {
        println!("cargo:rerun-if-changed={}", path.display());
        code += &format!("    ({name:?}, include_bytes!({:?})),\n", path.display().to_string());
    }
    code += "];\n";
    let posterior = root.join("posterior/posterior_z_si1000_p003.safetensors");
    println!("cargo:rerun-if-changed={}", posterior.display());
    code += &format!(
        "/// The posterior model's safetensors bytes.\nconst POSTERIOR_BYTES: &[u8] = include_bytes!({:?});\n",
        posterior.display().to_string()
    );
    std::fs::write(out.join("zoo.rs"), code)?;
    Ok(())
}
