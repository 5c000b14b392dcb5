//! Build script of the `decoder` crate: compiles the cxx bridges into
//! PyMatching (batch matching, `src/blossom.rs`; weight gaps, `src/gap.rs`;
//! per-shot edge weights, `src/reweight.rs`) and their C++ side,
//! `cxx/matching.cc`.
//!
//! `cxx/matching.cc` compiles PyMatching's own sources, which the
//! pymatching-cxx crate vendors, as one translation unit (see
//! `cxx/pymatching_core.h` for why), and includes Stim's headers, which
//! stim-cxx vendors; it links against the Stim library that stim-cxx
//! builds. Stim's directory comes from stim-cxx's exported build metadata.
//! pymatching-cxx (a dependency that Rust never calls, so that Cargo
//! fetches it) exports none, so its sources are looked for beside
//! stim-cxx's (the layout of both the crates.io cache and `cargo vendor`),
//! unless `QECD_PYMATCHING_CXX_DIR` names the crate's directory.

use std::env;
use std::path::{Path, PathBuf};

fn stim_cxx_dir() -> PathBuf {
    let crate_dir = env::var_os("DEP_STIMRS_CXX_CXXBRIDGE_DIR1").expect("stim-cxx exports its crate directory");
    let prefix = env::var_os("DEP_STIMRS_CXX_CXXBRIDGE_PREFIX").unwrap_or_else(|| "stim-cxx".into());
    let link = PathBuf::from(crate_dir).join(prefix);
    link.canonicalize().unwrap_or(link)
}

fn pymatching_cxx_dir(stim_cxx: &Path) -> PathBuf {
    if let Some(dir) = env::var_os("QECD_PYMATCHING_CXX_DIR") {
        return PathBuf::from(dir);
    }
    let parent = stim_cxx.parent().expect("stim-cxx's directory has a parent");
    for name in ["pymatching-cxx-0.1.0", "pymatching-cxx"] {
        let dir = parent.join(name);
        if dir.join("vendor/pymatching/src").is_dir() {
            return dir;
        }
    }
    panic!(
        "PyMatching's C++ sources were not found beside {}; set QECD_PYMATCHING_CXX_DIR to the pymatching-cxx 0.1.0 crate's directory",
        stim_cxx.display()
    );
}

fn main() {
    for path in [
        "src/blossom.rs",
        "src/gap.rs",
        "src/reweight.rs",
        "cxx/matching.cc",
        "cxx/matching.h",
        "cxx/pymatching_core.h",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }
    println!("cargo:rerun-if-env-changed=QECD_PYMATCHING_CXX_DIR");
    let stim_cxx = stim_cxx_dir();
    let pymatching_cxx = pymatching_cxx_dir(&stim_cxx);
    cxx_build::bridges(["src/blossom.rs", "src/gap.rs", "src/reweight.rs"])
        .file("cxx/matching.cc")
        .std("c++20")
        .warnings(false)
        .include(pymatching_cxx.join("vendor/pymatching/src"))
        .include(stim_cxx.join("vendor/stim/src"))
        .compile("qecd-matching");
}
