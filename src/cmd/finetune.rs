//! `qecd finetune`: adapt a pretrained model to an experiment directory.
//!
//! The directory's shots are shuffled with `--seed` and split, without
//! overlap, into fine-tuning, validation and test sets (as AlphaQubit did).
//! Training keeps the weights with the lowest validation loss and stops when
//! it has not improved for `--patience` evaluations. The test LER is reported
//! before and after, beside correlated matching's on the same test shots
//! (with the directory's DEM, or one derived from its circuit).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use decoder::{DecoderKind, MatchingDecoder, decode_parallel};
use models::Featurizer;
use models::checkpoint::Checkpoint;
use models::train::{EvalCase, FixedSource, TrainOptions, count_errors, train};
use simulator_bridge::experiment::Experiment;
use simulator_bridge::sample::derive_seed;
use simulator_bridge::{PackedShots, StabilizerLayout};

/// Arguments of `qecd finetune`.
#[derive(Args, Debug)]
pub struct FinetuneArgs {
    /// The pretrained checkpoint.
    #[arg(long)]
    pub model: PathBuf,
    /// Experiment directory (Google's layout).
    #[arg(long)]
    pub data: PathBuf,
    /// Where to write the fine-tuned checkpoint (must not exist).
    #[arg(long)]
    pub out: PathBuf,
    /// Shots to fine-tune on.
    #[arg(long, default_value_t = 20_000)]
    pub finetune_shots: usize,
    /// Validation shots (early stopping).
    #[arg(long, default_value_t = 5_000)]
    pub val_shots: usize,
    /// Seed of the split and the batch order.
    #[arg(long, default_value_t = 17)]
    pub seed: u64,
    /// Most optimizer steps.
    #[arg(long, default_value_t = 3_000)]
    pub steps: u64,
    /// Shots per step.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 3e-4)]
    pub lr: f64,
    /// Evaluate on the validation set every this many steps.
    #[arg(long, default_value_t = 100)]
    pub eval_every: u64,
    /// Stop after this many evaluations without improvement.
    #[arg(long, default_value_t = 5)]
    pub patience: u32,
    /// Worker threads of the fused trainer, or torch's threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// The trainer: `fused` (the CPU kernels) or `tch` (feature `train`).
    #[arg(long, default_value = "fused")]
    pub engine: String,
    /// The optimizer of the fused trainer: `adamw` or `lion`.
    #[arg(long, default_value = "adamw")]
    pub optimizer: String,
    /// Extra fine-tuning shots drawn from the directory's detector error
    /// model (its `*.dem`: say, one `qecd learn-noise` learned from the same
    /// shots), mixed with the directory's own. Validation and the test set
    /// stay the directory's shots.
    #[arg(long, default_value_t = 0)]
    pub dem_shots: usize,
}

fn subset(shots: &PackedShots, indices: &[usize]) -> PackedShots {
    let mut out = PackedShots::zeros(0, shots.bits_per_shot());
    for &i in indices {
        out.extend(&shots.slice(i, i + 1));
    }
    out
}

/// `shots` detection events and observable flips drawn from a detector
/// error model, which must have the experiment's detectors and observables.
fn sample_dem(dem_text: &str, shots: usize, seed: u64, exp: &Experiment) -> Result<(PackedShots, PackedShots)> {
    let dem: stim::DetectorErrorModel = dem_text.parse().map_err(|e| anyhow::anyhow!("the directory's DEM: {e}"))?;
    let (detectors, observables) = (exp.detection_events.bits_per_shot(), exp.obs_flips.bits_per_shot());
    if dem.num_detectors() as usize != detectors || dem.num_observables() as usize != observables {
        bail!(
            "--dem-shots: the directory's DEM has {} detectors and {} observables, its shots {detectors} and {observables}",
            dem.num_detectors(),
            dem.num_observables()
        );
    }
    let (events, obs, _) = dem.compile_sampler_with_seed(seed).sample_bit_packed(shots as u64);
    Ok((PackedShots::from_bytes(events, detectors)?, PackedShots::from_bytes(obs, observables)?))
}

/// Runs `qecd finetune`.
pub fn run(args: &FinetuneArgs) -> Result<()> {
    if args.out.exists() {
        bail!("{} exists; choose another --out (nothing was overwritten)", args.out.display());
    }
    let ckpt = Checkpoint::load(&args.model)?;
    let exp = Experiment::read(&args.data)?;
    let circuit: stim::Circuit = exp.circuit_noisy.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let basis = ckpt.meta.layout.basis;
    let layout = StabilizerLayout::from_circuit(&circuit, basis).context("circuit_noisy.stim")?;
    let featurizer = Featurizer::new(&ckpt.meta.layout, &layout)
        .with_context(|| format!("{} does not fit {}", args.model.display(), args.data.display()))?;
    let n = exp.num_shots();
    if args.finetune_shots + args.val_shots >= n {
        bail!(
            "{} holds {n} shots, not enough for {} fine-tuning + {} validation shots and a test set",
            args.data.display(),
            args.finetune_shots,
            args.val_shots
        );
    }
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, (derive_seed(args.seed, i as u64) % (i as u64 + 1)) as usize);
    }
    let (tune, rest) = order.split_at(args.finetune_shots);
    let (val, test) = rest.split_at(args.val_shots);
    let pick = |idx: &[usize]| (subset(&exp.detection_events, idx), subset(&exp.obs_flips, idx));
    let (mut tune_events, mut tune_obs) = pick(tune);
    let (val_events, val_obs) = pick(val);
    let (test_events, test_obs) = pick(test);

    let dem_text = match &exp.dem {
        Some((_, text)) => text.clone(),
        None => super::decoding_dem(&circuit)?.to_string(),
    };
    if args.dem_shots > 0 {
        let (events, obs) = sample_dem(&dem_text, args.dem_shots, derive_seed(args.seed, 0x64656d), &exp)?;
        tune_events.extend(&events);
        tune_obs.extend(&obs);
    }
    let correlated = |events: &PackedShots, obs: &PackedShots| -> Result<u64> {
        let make = || MatchingDecoder::from_dem_text(&dem_text, DecoderKind::Correlated);
        Ok(decoder::count_errors(&decode_parallel(make, events, 0)?.predictions, obs) as u64)
    };
    let threads = simulator_bridge::sample::resolve_threads(args.threads);
    let mut engine = super::train::build_engine(
        &args.engine,
        &ckpt,
        &args.optimizer,
        1e-4,
        threads,
        args.batch,
        featurizer.num_rounds(),
    )?;
    let before = count_errors(&engine.logits(&featurizer, &test_events)?, &test_obs);
    let matching_test = correlated(&test_events, &test_obs)?;
    let val_case = EvalCase::new(
        "validation".into(),
        featurizer.clone(),
        val_events.clone(),
        val_obs.clone(),
        Some(correlated(&val_events, &val_obs)?),
    );
    let mut meta = ckpt.meta.clone();
    let start_steps = meta.provenance.steps;
    meta.provenance.commands.push(std::env::args().collect::<Vec<_>>().join(" "));
    meta.provenance.seeds.insert("finetune_split".into(), args.seed);
    let opts = TrainOptions {
        lr: args.lr,
        warmup: (args.steps / 20).max(1),
        steps: start_steps + args.steps,
        first_step: start_steps,
        batch: args.batch,
        clip: 1.0,
        aux_weight: 0.0,
        eval_every: args.eval_every,
        early_stop_patience: Some(args.patience),
        max_seconds: None,
        out: args.out.clone(),
        log: Some(args.out.with_extension("finetune.csv")),
    };
    let mut source = FixedSource::new(featurizer.clone(), tune_events, tune_obs, args.seed);
    let bar = super::shot_bar(args.steps, "finetune");
    let _ = train(
        engine.as_mut(),
        &mut meta,
        &mut source,
        std::slice::from_ref(&val_case),
        &opts,
        &mut |s| bar.set_position(s.step - start_steps),
        &mut |e| bar.println(format!("step {}: {}", e.step - start_steps, super::train::describe(e))),
    )?;
    bar.finish_and_clear();
    let after = count_errors(&engine.logits(&featurizer, &test_events)?, &test_obs);
    let t = test_events.num_shots() as f64;
    meta.evaluation = serde_json::json!({
        "finetune": {
            "data": args.data.display().to_string(),
            "finetune_shots": args.finetune_shots, "validation_shots": args.val_shots, "test_shots": test_events.num_shots(),
            "test_errors_before": before, "test_errors_after": after, "test_errors_correlated": matching_test,
        },
        "pretrained": ckpt.meta.evaluation,
    });
    engine.to_checkpoint(meta)?.save(&args.out)?;
    println!(
        "test set: {} shots (disjoint from the {} fine-tuning and {} validation shots)",
        test_events.num_shots(),
        args.finetune_shots,
        args.val_shots
    );
    println!("{:<28} {:>8} {:>10}", "decoder", "errors", "LER/shot");
    for (name, e) in
        [("pretrained neural", before), ("fine-tuned neural", after), ("correlated matching", matching_test)]
    {
        println!("{name:<28} {e:>8} {:>10.4e}", e as f64 / t);
    }
    if before > 0 {
        println!("fine-tuning changed the test LER by {:+.1}%", 100.0 * (after as f64 - before as f64) / before as f64);
    }
    println!("wrote {}", args.out.display());
    Ok(())
}
