//! `qecd learn-noise` end to end: a learned DEM that `qecd predict` decodes
//! with, a directory too small to learn everything, and bad input refused
//! with exit status 2 and no output file.

use std::path::Path;

mod cli_support;
use cli_support::{ok, p, qecd};

/// Writes an experiment directory of d=3, 3 rounds, from `noise` at p=0.003,
/// whose circuit is then replaced by SI1000 at `prior_p` (the lab's prior).
fn experiment(dir: &Path, noise: &str, shots: usize, prior_p: &str) {
    let scratch = dir.with_extension("prior.stim");
    let shots = shots.to_string();
    let common = ["sample", "-d", "3", "-r", "3", "--p", "0.003", "--seed", "5"];
    ok(&[&common[..], &["--noise", noise, "--shots", &shots, "--out-dir", p(dir)]].concat());
    let junk = dir.with_extension("junk.b8");
    ok(&[
        "sample",
        "-d",
        "3",
        "-r",
        "3",
        "--p",
        prior_p,
        "--shots",
        "64",
        "--out",
        p(&junk),
        "--circuit-out",
        p(&scratch),
    ]);
    std::fs::copy(&scratch, dir.join("circuit_noisy.stim")).unwrap();
}

/// The number in "N of M shots decoded wrongly".
fn errors(predict_stdout: &str) -> usize {
    predict_stdout.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn a_learned_dem_decodes_like_the_true_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (exp, learned, pred) = (tmp.path().join("exp"), tmp.path().join("learned.dem"), tmp.path().join("pred.01"));
    experiment(&exp, "si1000", 200_000, "0.001");
    let out = ok(&["learn-noise", "--data", p(&exp), "--out", p(&learned)]);
    assert!(out.contains("of 286 mechanisms from 200000 shots"), "{out}");
    // The directory's own DEM is the data's: the learned one is close, the prior two thirds off.
    let line = |what: &str| {
        let mut compared = out.lines().filter(|l| l.contains("median relative error"));
        compared.find(|l| l.trim_start().starts_with(what)).unwrap().to_string()
    };
    let median = |l: String| -> f64 {
        l.split("error").nth(1).unwrap().trim().split('%').next().unwrap().trim().parse().unwrap()
    };
    let (mine, prior) = (median(line("learned")), median(line("prior")));
    assert!(mine < 5.0 && prior > 60.0, "learned {mine}%, prior {prior}%: {out}");

    let decode = |dem: &Path| {
        errors(&ok(&[
            "predict",
            "--dem",
            p(dem),
            "--in",
            p(&exp.join("detection_events.b8")),
            "--obs-in",
            p(&exp.join("obs_flips_actual.01")),
            "--decoder",
            "correlated",
            "--out",
            p(&pred),
        ]))
    };
    let (with_learned, with_truth) = (decode(&learned), decode(&exp.join("circuit_detector_error_model.dem")));
    assert!(with_truth > 1000, "{with_truth}");
    // Measured: 3810 with the learned DEM, 3740 with the true one (the shots it learned from).
    assert!((with_learned as f64) < 1.03 * with_truth as f64, "learned {with_learned}, true {with_truth}");
}

#[test]
fn a_small_directory_names_what_it_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let (exp, learned) = (tmp.path().join("exp"), tmp.path().join("learned.dem"));
    experiment(&exp, "si1000", 500, "0.003");
    let out = ok(&["learn-noise", "--data", p(&exp), "--out", p(&learned)]);
    assert!(out.contains("mechanisms kept their prior probability"), "{out}");
    assert!(out.contains("too few shots") && out.contains("fired together in"), "{out}");
    let text = std::fs::read_to_string(&learned).unwrap();
    assert_eq!(text.lines().filter(|l| l.starts_with("error")).count(), 286);
}

#[test]
fn bad_input_is_refused_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (exp, out) = (tmp.path().join("exp"), tmp.path().join("learned.dem"));
    experiment(&exp, "si1000", 300, "0.003");
    let fails = |args: &[&str], needle: &str| {
        let o = qecd(args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: expected '{needle}' in {stderr}");
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
        let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(!names.iter().any(|n| n.to_string_lossy().starts_with(".qecd-partial")), "{names:?}");
    };
    let args = ["learn-noise", "--data", p(&exp), "--out", p(&out)];
    fails(&["learn-noise", "--data", p(&tmp.path().join("nowhere")), "--out", p(&out)], "is not a directory");
    fails(&["learn-noise", "--data", p(&exp), "--out", p(&tmp.path().join("no/such/dir.dem"))], "no/such");

    // Shots of 24 detectors read against a circuit of 40: the widths disagree.
    let wider = tmp.path().join("wider.stim");
    ok(&[
        "sample",
        "-d",
        "3",
        "-r",
        "5",
        "--shots",
        "64",
        "--out",
        p(&tmp.path().join("w.b8")),
        "--circuit-out",
        p(&wider),
    ]);
    let prior = std::fs::read(exp.join("circuit_noisy.stim")).unwrap();
    std::fs::copy(&wider, exp.join("circuit_noisy.stim")).unwrap();
    fails(&args, "detection_events.b8 holds 180 shots but obs_flips_actual.01 holds 300");
    std::fs::write(exp.join("circuit_noisy.stim"), &prior).unwrap();

    std::fs::write(exp.join("circuit_noisy.stim"), "H 0\nNOT_A_GATE 1\n").unwrap();
    fails(&args, "circuit_noisy.stim does not parse");
    std::fs::write(exp.join("circuit_noisy.stim"), &prior).unwrap();

    std::fs::remove_file(exp.join("detection_events.b8")).unwrap();
    fails(&args, "missing required file detection_events.b8");
}
