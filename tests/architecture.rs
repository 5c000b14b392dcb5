//! The layering docs/architecture.md states, checked on the workspace's
//! manifests (`cargo metadata`): which crates each may depend on, that each
//! library says what it owns, and that the doc's table names every crate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// Each workspace package's normal (non-dev, non-build) dependencies, by name.
fn dependencies() -> BTreeMap<String, (BTreeSet<String>, String)> {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--no-deps", "--format-version", "1", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].is_null())
                .map(|d| d["name"].as_str().unwrap().to_string())
                .collect();
            (p["name"].as_str().unwrap().to_string(), (deps, p["manifest_path"].as_str().unwrap().to_string()))
        })
        .collect()
}

const OURS: &[&str] = &[
    "qecd",
    "qecd-service",
    "qecd-grpc",
    "qecd-sweep",
    "qecd-benches",
    "frame-codec",
    "kernels",
    "simulator-bridge",
    "models",
    "decoder",
];

#[test]
fn crates_depend_only_on_what_the_layering_allows() {
    let deps = dependencies();
    let ours = |name: &str| -> BTreeSet<String> {
        deps[name].0.iter().filter(|d| OURS.contains(&d.as_str())).cloned().collect()
    };
    let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    for leaf in ["frame-codec", "kernels", "simulator-bridge"] {
        assert!(ours(leaf).is_empty(), "{leaf} depends on {:?}", ours(leaf));
    }
    assert_eq!(ours("models"), set(&["simulator-bridge", "kernels"]));
    assert_eq!(ours("decoder"), set(&["simulator-bridge", "models", "kernels"]));
    assert!(ours("qecd-sweep").is_subset(&set(&["simulator-bridge", "models", "decoder"])), "{:?}", ours("qecd-sweep"));
    assert!(
        ours("qecd-service").is_subset(&set(&["simulator-bridge", "models", "decoder", "frame-codec"])),
        "{:?}",
        ours("qecd-service")
    );
    assert!(ours("qecd-grpc").contains("qecd-service") && !ours("qecd-grpc").contains("qecd-sweep"));
    let forbidden: &[(&str, &[&str])] = &[
        ("qecd-service", &["tonic", "prost", "tokio", "plotters", "tonic-reflection", "tonic-health"]),
        ("qecd-sweep", &["tonic", "prost", "tokio", "qecd-service", "qecd-grpc"]),
        ("qecd-grpc", &["plotters", "qecd-sweep"]),
        ("decoder", &["tonic", "tch", "plotters"]),
    ];
    for (name, banned) in forbidden {
        for b in *banned {
            assert!(!deps[*name].0.contains(*b), "{name} must not depend on {b}");
        }
    }
}

#[test]
fn every_library_says_what_it_owns_and_the_architecture_doc_names_it() {
    let deps = dependencies();
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/architecture.md")).unwrap();
    for name in OURS {
        let (_, manifest) = &deps[*name];
        assert!(doc.contains(&format!("`{name}`")), "docs/architecture.md does not name `{name}`");
        let lib = Path::new(manifest).parent().unwrap().join("src/lib.rs");
        if *name == "qecd" {
            continue; // a binary: src/main.rs
        }
        let text = std::fs::read_to_string(&lib).unwrap_or_else(|e| panic!("{}: {e}", lib.display()));
        let opening: Vec<&str> = text.lines().take_while(|l| l.starts_with("//!")).collect();
        assert!(opening.len() >= 3, "{} opens with no crate doc saying what it owns", lib.display());
    }
}
