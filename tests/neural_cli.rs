//! The neural decoder's commands end to end: training (the fused trainer,
//! and tch where the build has it), resumption, divergence, fine-tuning,
//! calibration and neural prediction, each small enough for CI.

use std::path::{Path, PathBuf};

mod cli_support;
use cli_support::{p, qecd};

fn ok(args: &[&str]) -> String {
    ok_both(args).0
}

/// Stdout and stderr of a successful run.
fn ok_both(args: &[&str]) -> (String, String) {
    let o = qecd(args);
    assert!(o.status.success(), "qecd {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn fails(args: &[&str], needle: &str) {
    let o = qecd(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "qecd {args:?} should fail: {err}");
    assert!(err.contains(needle), "expected '{needle}' in: {err}");
}

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures")).join(rel)
}

/// A tiny d=3 model trained for `steps` steps.
fn tiny_model(dir: &Path, steps: &str) -> PathBuf {
    let out = dir.join("tiny.safetensors");
    ok(&[
        "train",
        "-d",
        "3",
        "--rounds",
        "1-4",
        "--width",
        "16",
        "--heads",
        "2",
        "--layers",
        "1",
        "--ffn",
        "32",
        "--steps",
        steps,
        "--batch",
        "64",
        "--warmup",
        "5",
        "--eval-rounds",
        "3",
        "--eval-shots",
        "500",
        "--eval-every",
        "10",
        "--threads",
        "1",
        "--out",
        p(&out),
    ]);
    out
}

#[test]
fn train_resume_and_divergence() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path(), "20");
    let log = std::fs::read_to_string(dir.path().join("tiny.train.csv")).unwrap();
    assert_eq!(log.lines().count(), 1 + 2, "header and two evaluations:\n{log}");
    // Without --resume an existing checkpoint is never overwritten.
    fails(&["train", "-d", "3", "--steps", "5", "--out", p(&model)], "pass --resume");
    // A requested shape that does not fit the checkpoint is refused, naming the tensor.
    fails(
        &["train", "-d", "3", "--width", "32", "--steps", "25", "--resume", "--out", p(&model)],
        "does not fit the requested model: tensor 'embed.w_in' is [16, 3] there, [32, 3] requested",
    );
    let (out, err) = ok_both(&[
        "train",
        "-d",
        "3",
        "--rounds",
        "1-4",
        "--steps",
        "30",
        "--batch",
        "64",
        "--eval-rounds",
        "3",
        "--eval-shots",
        "500",
        "--eval-every",
        "10",
        "--threads",
        "1",
        "--resume",
        "--out",
        p(&model),
    ]);
    assert!(out.contains(": 30 steps, 1920 samples"), "{out}");
    assert!(err.contains("resuming with the optimizer state in"), "{err}");
    assert_eq!(models::Checkpoint::load(&model).unwrap().meta.provenance.trainer, "fused");
    // A learning rate that blows up the weights: training stops on the
    // non-finite loss and the last good checkpoint stays as it was.
    let before = std::fs::read(&model).unwrap();
    fails(
        &[
            "train",
            "-d",
            "3",
            "--rounds",
            "1-4",
            "--steps",
            "60",
            "--batch",
            "64",
            "--lr",
            "1e30",
            "--warmup",
            "0",
            "--eval-rounds",
            "3",
            "--eval-shots",
            "500",
            "--eval-every",
            "1000",
            "--threads",
            "1",
            "--resume",
            "--out",
            p(&model),
        ],
        "the last good checkpoint",
    );
    assert_eq!(std::fs::read(&model).unwrap(), before);
    fails(
        &["train", "-d", "3", "--seed", "5", "--eval-seed", "5", "--out", p(&dir.path().join("x"))],
        "never share a seed",
    );
}

/// Dense labels train the per-round readouts; Lion runs; the other trainer
/// resumes a checkpoint and says why its optimizer starts afresh.
#[test]
fn per_round_loss_lion_and_cross_engine_resume() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("aux.safetensors");
    let common = [
        "train",
        "-d",
        "3",
        "--rounds",
        "2-6",
        "--width",
        "16",
        "--heads",
        "2",
        "--layers",
        "1",
        "--batch",
        "64",
        "--eval-rounds",
        "3",
        "--eval-shots",
        "500",
        "--eval-every",
        "10",
        "--threads",
        "2",
        "--warmup",
        "2",
    ];
    let run = |extra: &[&str]| {
        let mut args: Vec<&str> = common.to_vec();
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--out", p(&out)]);
        ok_both(&args)
    };
    let (stdout, _) = run(&["--steps", "10", "--aux-weight", "0.5", "--optimizer", "lion", "--lr", "3e-4"]);
    assert!(stdout.contains(": 10 steps, 640 samples"), "{stdout}");
    // The fused trainer resumes Lion's state; AdamW cannot take it, and says so.
    let (_, err) = run(&["--steps", "15", "--aux-weight", "0.5", "--resume"]);
    assert!(err.contains("holds lion moments and this run uses adamw"), "{err}");
    #[cfg(feature = "train")]
    {
        let (stdout, err) = run(&["--steps", "20", "--aux-weight", "0.5", "--engine", "tch", "--resume"]);
        assert!(
            err.contains("the optimizer's moments start from zero: the tch trainer keeps no optimizer state"),
            "{err}"
        );
        assert!(stdout.contains(": 20 steps, 1280 samples"), "{stdout}");
        assert_eq!(models::Checkpoint::load(&out).unwrap().meta.provenance.trainer, "tch");
        let (_, err) = run(&["--steps", "25", "--resume"]);
        assert!(err.contains("written by the tch trainer, which saves no optimizer state"), "{err}");
    }
    #[cfg(not(feature = "train"))]
    fails(
        &["train", "-d", "3", "--engine", "tch", "--steps", "1", "--out", p(&dir.path().join("t"))],
        "--features train",
    );
}

#[test]
fn finetune_calibrate_and_predict() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path(), "10");
    let tuned = dir.path().join("tuned.safetensors");
    let data = fixture("experiments/d3_r3_varied_tiny");
    let out = ok(&[
        "finetune",
        "--model",
        p(&model),
        "--data",
        p(&data),
        "--out",
        p(&tuned),
        "--finetune-shots",
        "300",
        "--val-shots",
        "100",
        "--steps",
        "20",
        "--batch",
        "32",
        "--eval-every",
        "10",
        "--threads",
        "1",
    ]);
    assert!(out.contains("test set: 200 shots"), "{out}");
    assert!(out.contains("fine-tuned neural") && out.contains("correlated matching"), "{out}");
    assert!(tuned.is_file());
    fails(&["finetune", "--model", p(&model), "--data", p(&data), "--out", p(&tuned)], "exists");
    // Extra shots drawn from the directory's DEM, which must fit its shots.
    let mixed = dir.path().join("mixed.safetensors");
    let small = ["--finetune-shots", "300", "--val-shots", "100", "--steps", "5", "--batch", "32", "--threads", "1"];
    let mut args = vec!["finetune", "--model", p(&model), "--data", p(&data), "--out", p(&mixed), "--dem-shots", "500"];
    ok(&[args.as_slice(), &small].concat());
    assert!(mixed.is_file());
    let other_dem = dir.path().join("other_dem");
    std::fs::create_dir(&other_dem).unwrap();
    for f in ["circuit_noisy.stim", "detection_events.b8", "obs_flips_actual.01"] {
        std::fs::copy(data.join(f), other_dem.join(f)).unwrap();
    }
    std::fs::write(other_dem.join("circuit_detector_error_model.dem"), "error(0.1) D0 D1 L0\n").unwrap();
    let never = dir.path().join("never.safetensors");
    args = vec!["finetune", "--model", p(&model), "--data", p(&other_dem), "--out", p(&never), "--dem-shots", "500"];
    fails(&[args.as_slice(), &small].concat(), "--dem-shots: the directory's DEM has 2 detectors and 1 observables");
    assert!(!never.exists());
    // An experiment directory with a missing file.
    let broken = dir.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    for f in ["circuit_noisy.stim", "detection_events.b8"] {
        std::fs::copy(data.join(f), broken.join(f)).unwrap();
    }
    fails(
        &["finetune", "--model", p(&model), "--data", p(&broken), "--out", p(&dir.path().join("y.safetensors"))],
        "missing required file obs_flips_actual.01",
    );

    let png = dir.path().join("rel.png");
    let calibrated = dir.path().join("cal.safetensors");
    let out = ok(&[
        "calibrate",
        "--model",
        p(&tuned),
        "--out",
        p(&calibrated),
        "--rounds",
        "3",
        "--shots",
        "4000",
        "--plot",
        p(&png),
        "--threads",
        "1",
    ]);
    assert!(out.contains("temperature τ = "), "{out}");
    assert_eq!(&std::fs::read(&png).unwrap()[..4], b"\x89PNG");

    let (dets, obs, pred) = (dir.path().join("d.b8"), dir.path().join("o.01"), dir.path().join("p.01"));
    let circuit = dir.path().join("c.stim");
    ok(&[
        "sample",
        "-d",
        "3",
        "-r",
        "3",
        "--shots",
        "300",
        "--seed",
        "8",
        "--out",
        p(&dets),
        "--obs-out",
        p(&obs),
        "--circuit-out",
        p(&circuit),
    ]);
    let out = ok(&[
        "predict",
        "--circuit",
        p(&circuit),
        "--in",
        p(&dets),
        "--out",
        p(&pred),
        "--decoder",
        "neural",
        "--model",
        p(&calibrated),
        "--obs-in",
        p(&obs),
        "--confidence-out",
        p(&dir.path().join("conf.txt")),
    ]);
    assert!(out.contains("of 300 shots decoded wrongly"), "{out}");
    assert_eq!(std::fs::read_to_string(&pred).unwrap().lines().count(), 300);
    // A model for d=3 refuses a d=5 circuit, naming the mismatch.
    let c5 = dir.path().join("c5.stim");
    let d5 = dir.path().join("d5.b8");
    ok(&["sample", "-d", "5", "-r", "3", "--shots", "10", "--out", p(&d5), "--circuit-out", p(&c5)]);
    fails(
        &[
            "predict",
            "--circuit",
            p(&c5),
            "--in",
            p(&d5),
            "--out",
            p(&pred),
            "--decoder",
            "neural",
            "--model",
            p(&calibrated),
        ],
        "model/circuit mismatch",
    );
}

/// `train --init` climbs the distance ladder with one set of relative
/// weights: a per-stabilizer d=3 model is projected onto relative positions,
/// trained, then laid out at d=5 and trained further; the d=5 model counts
/// every sample its weights have seen, decodes a d=5 file, and so does the
/// d=3 relative model laid out for d=5 by `predict`.
#[test]
fn relative_models_climb_the_distance_ladder() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = tiny_model(dir.path(), "10");
    let step = |d: &str, init: &Path, out: &Path, extra: &[&str]| {
        let mut args = vec![
            "train",
            "-d",
            d,
            "--rounds",
            "1-3",
            "--steps",
            "4",
            "--batch",
            "32",
            "--warmup",
            "1",
            "--eval-rounds",
            "2",
            "--eval-shots",
            "200",
            "--eval-every",
            "4",
            "--threads",
            "1",
            "--init",
            p(init),
            "--out",
            p(out),
        ];
        args.extend_from_slice(extra);
        qecd(&args)
    };
    let rel3 = dir.path().join("rel3.safetensors");
    let o = step("3", &tiny, &rel3, &["--positions", "relative"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rel5 = dir.path().join("rel5.safetensors");
    let o = step("5", &rel3, &rel5, &["--positions", "relative"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    // 10 steps of 64 (tiny), 4 of 32 at d=3, 4 of 32 at d=5.
    assert!(out.contains(": 4 steps, 896 samples"), "{out}");
    let meta = models::Checkpoint::load(&rel5).unwrap().meta;
    assert_eq!((meta.layout.distance, meta.config.num_stabilizers), (5, 24));
    assert_eq!(meta.provenance.commands.len(), 3, "{:?}", meta.provenance.commands);
    assert!(meta.provenance.seeds.contains_key("init.init.train"), "{:?}", meta.provenance.seeds);

    // Bad starts are refused with the reason, and write nothing.
    let o = step("5", &tiny, &dir.path().join("x.safetensors"), &["--positions", "relative"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("only at its own distance"));
    let o = step("5", &tiny, &dir.path().join("x.safetensors"), &[]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("only a relative model runs at any distance"));
    assert!(!dir.path().join("x.safetensors").exists());

    let (c5, d5, o5, pred) =
        (dir.path().join("c5.stim"), dir.path().join("d5.b8"), dir.path().join("o5.01"), dir.path().join("p.01"));
    ok(&[
        "sample",
        "-d",
        "5",
        "-r",
        "3",
        "--shots",
        "100",
        "--seed",
        "4",
        "--out",
        p(&d5),
        "--obs-out",
        p(&o5),
        "--circuit-out",
        p(&c5),
    ]);
    for model in [&rel5, &rel3] {
        let out = ok(&[
            "predict",
            "--circuit",
            p(&c5),
            "--in",
            p(&d5),
            "--obs-in",
            p(&o5),
            "--out",
            p(&pred),
            "--decoder",
            "neural",
            "--model",
            p(model),
        ]);
        assert!(out.contains("of 100 shots decoded wrongly"), "{out}");
    }
}
