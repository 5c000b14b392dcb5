//! `qecd train`: train the neural decoder on shots sampled on the fly.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use decoder::{DecoderKind, MatchingDecoder, decode_parallel};
use models::checkpoint::{Checkpoint, ModelLayout};
use models::train::{
    Engine, EvalCase, EvalReport, FusedEngine, SimulatedSource, TrainOptions, resume_optimizer, train,
};
use models::{Featurizer, ModelConfig, Positions};
use simulator_bridge::sample::{Sampler, derive_seed};
use simulator_bridge::{Basis, MemoryExperiment, NoiseModel, StabilizerLayout};

/// Arguments of `qecd train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Code distance.
    #[arg(long, short = 'd', default_value_t = 3)]
    pub distance: usize,
    /// Memory basis.
    #[arg(long, default_value = "z")]
    pub basis: Basis,
    /// Noise model: si1000, si1000-varied:SEED, device:FILE (a TOML device
    /// description laid on SI1000; see docs/device-noise.md) or depolarizing.
    #[arg(long, default_value = "si1000")]
    pub noise: String,
    /// Physical error rate.
    #[arg(long, default_value_t = 0.003)]
    pub p: f64,
    /// Denser noise first: train at this physical error rate for the first
    /// --first-steps steps, then at --p (held-out figures are always at --p).
    #[arg(long, requires = "first_steps")]
    pub first_p: Option<f64>,
    /// Steps at --first-p.
    #[arg(long, requires = "first_p")]
    pub first_steps: Option<u64>,
    /// Rounds to train on: a range `1-25` or a list `3,5,25`; each step draws one.
    #[arg(long, default_value = "1-25")]
    pub rounds: String,
    /// Model width D (default 64).
    #[arg(long)]
    pub width: Option<usize>,
    /// Attention heads H (default 4).
    #[arg(long)]
    pub heads: Option<usize>,
    /// Transformer layers L per round (default 2).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Feed-forward width F (default 2·D).
    #[arg(long)]
    pub ffn: Option<usize>,
    /// Total optimizer steps.
    #[arg(long, default_value_t = 20_000)]
    pub steps: u64,
    /// Shots per step.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Warm-up steps.
    #[arg(long, default_value_t = 500)]
    pub warmup: u64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f64,
    /// Gradient-norm clip.
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// Rounds of the held-out evaluation cases.
    #[arg(long, value_delimiter = ',', default_value = "3,25")]
    pub eval_rounds: Vec<usize>,
    /// Held-out shots per evaluation case.
    #[arg(long, default_value_t = 20_000)]
    pub eval_shots: usize,
    /// Evaluate (and checkpoint) every this many steps.
    #[arg(long, default_value_t = 500)]
    pub eval_every: u64,
    /// Seed of the training shots.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Seed of the held-out shots; must differ from --seed.
    #[arg(long, default_value_t = 1_000_003)]
    pub eval_seed: u64,
    /// Where to write the checkpoint.
    #[arg(long)]
    pub out: PathBuf,
    /// Training log (CSV); default: the checkpoint path with `.train.csv`.
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// Continue the checkpoint at --out.
    #[arg(long)]
    pub resume: bool,
    /// How stabilizer positions are encoded: `per-stabilizer` (weights for one
    /// distance) or `relative` (one set of weights for any distance).
    #[arg(long, default_value = "per-stabilizer")]
    pub positions: String,
    /// Start from this checkpoint's weights instead of random ones (its shapes
    /// replace --width/--heads/--layers/--ffn). A relative model from another
    /// distance is laid out for --distance; a per-stabilizer model of this
    /// distance is projected onto relative positions when --positions relative.
    #[arg(long, conflicts_with = "resume")]
    pub init: Option<PathBuf>,
    /// Stop (saving) after this many minutes.
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// Worker threads of the fused trainer, or torch's threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// The trainer: `fused` (the CPU kernels; no libtorch) or `tch` (libtorch,
    /// on CUDA when present; needs a build with `--features train`).
    #[arg(long, default_value = "fused")]
    pub engine: String,
    /// The optimizer of the fused trainer: `adamw` or `lion` (tch: adamw).
    #[arg(long, default_value = "adamw")]
    pub optimizer: String,
    /// Weight of the per-round readout loss on dense labels (docs/model.md
    /// §Dense labels); 0 trains on the final label only.
    #[arg(long, default_value_t = 0.0)]
    pub aux_weight: f32,
}

impl TrainArgs {
    /// The model shape asked for, the defaults filled in.
    fn requested(&self) -> (usize, usize, usize, usize) {
        let width = self.width.unwrap_or(64);
        (width, self.heads.unwrap_or(4), self.layers.unwrap_or(2), self.ffn.unwrap_or(2 * width))
    }

    /// Whether any shape flag was given.
    fn shape_given(&self) -> bool {
        self.width.is_some() || self.heads.is_some() || self.layers.is_some() || self.ffn.is_some()
    }
}

/// Builds the trainer named by `--engine` for `ckpt`.
pub fn build_engine(
    name: &str,
    ckpt: &Checkpoint,
    optimizer: &str,
    weight_decay: f64,
    threads: usize,
    max_shots: usize,
    max_rounds: usize,
) -> Result<Box<dyn Engine>> {
    match name {
        "fused" => Ok(Box::new(FusedEngine::new(ckpt, optimizer, weight_decay, threads, max_shots, max_rounds)?)),
        "tch" => tch_engine(ckpt, optimizer, weight_decay, threads),
        other => bail!("--engine takes fused or tch, not '{other}'"),
    }
}

#[cfg(feature = "train")]
fn tch_engine(ckpt: &Checkpoint, optimizer: &str, weight_decay: f64, threads: usize) -> Result<Box<dyn Engine>> {
    if optimizer != "adamw" {
        bail!("the tch trainer runs AdamW only (--optimizer adamw)");
    }
    tch::set_num_threads(threads as i32);
    Ok(Box::new(models::net::TchEngine::new(ckpt, crate::neural::device(), weight_decay)?))
}

#[cfg(not(feature = "train"))]
fn tch_engine(_: &Checkpoint, _: &str, _: f64, _: usize) -> Result<Box<dyn Engine>> {
    bail!("--engine tch needs libtorch: build with --features train (see scripts/torch-env)")
}

/// The first tensor whose shape differs between two configs, as a sentence.
fn shape_mismatch(have: &ModelConfig, want: &ModelConfig) -> Option<String> {
    let (a, b) = (have.tensor_shapes(), want.tensor_shapes());
    for (name, shape) in &b {
        match a.iter().find(|(n, _)| n == name) {
            None => return Some(format!("tensor '{name}' is not in it")),
            Some((_, s)) if s != shape => {
                return Some(format!("tensor '{name}' is {s:?} there, {shape:?} requested"));
            }
            _ => {}
        }
    }
    a.iter()
        .find(|(n, _)| !b.iter().any(|(m, _)| m == n))
        .map(|(n, _)| format!("it has tensor '{n}', which the requested model lacks"))
}

/// Parses `1-25` or `3,5,25`.
pub fn parse_rounds(text: &str) -> Result<Vec<usize>> {
    let rounds: Vec<usize> = if let Some((a, b)) = text.split_once('-') {
        let (a, b): (usize, usize) = (a.trim().parse()?, b.trim().parse()?);
        (a..=b).collect()
    } else {
        text.split(',').map(|r| r.trim().parse()).collect::<Result<_, _>>()?
    };
    if rounds.is_empty() || rounds.contains(&0) {
        bail!("--rounds '{text}' must name rounds >= 1");
    }
    Ok(rounds)
}

/// Parses `--positions`.
fn parse_positions(text: &str) -> Result<Positions> {
    match text {
        "per-stabilizer" => Ok(Positions::PerStabilizer),
        "relative" => Ok(Positions::RELATIVE),
        other => bail!("--positions takes per-stabilizer or relative, not '{other}'"),
    }
}

/// The starting point of `--init`: the checkpoint at `path`, laid out for
/// `distance` and with `positions`. Its step count starts again at 0 (the
/// learning-rate schedule is this run's); its samples, seconds and commands
/// carry over, so the card counts everything the weights have seen.
fn initial_checkpoint(path: &std::path::Path, distance: usize, positions: Positions) -> Result<Checkpoint> {
    let mut ckpt = Checkpoint::load(path)?;
    if positions != Positions::PerStabilizer && ckpt.meta.config.positions == Positions::PerStabilizer {
        if ckpt.meta.layout.distance != distance {
            bail!(
                "--init {}: a per-stabilizer d={} model can be projected onto relative positions only at its own \
                 distance; train the relative model at d={} first",
                path.display(),
                ckpt.meta.layout.distance,
                ckpt.meta.layout.distance
            );
        }
        ckpt = ckpt.to_relative(positions)?;
    }
    let mut ckpt = ckpt.retarget(distance).with_context(|| format!("--init {}", path.display()))?;
    ckpt.meta.provenance.steps = 0;
    let earlier = std::mem::take(&mut ckpt.meta.provenance.seeds);
    ckpt.meta.provenance.seeds = earlier.into_iter().map(|(k, v)| (format!("init.{k}"), v)).collect();
    ckpt.meta.temperature = 1.0;
    ckpt.meta.evaluation = serde_json::Value::Null;
    Ok(ckpt)
}

/// Held-out cases with correlated matching's error counts on them.
pub fn eval_cases(
    layout: &ModelLayout,
    distance: usize,
    noise: &NoiseModel,
    rounds: &[usize],
    shots: usize,
    seed: u64,
) -> Result<Vec<EvalCase>> {
    let mut cases = Vec::new();
    for &r in rounds {
        let circuit = MemoryExperiment::new(distance, r, layout.basis)?.noisy_circuit(noise)?;
        let featurizer = Featurizer::new(layout, &StabilizerLayout::from_circuit(&circuit, layout.basis)?)?;
        let sampled = Sampler::new(&circuit).sample(shots, derive_seed(seed, r as u64), 0)?;
        let dem = super::decoding_dem(&circuit)?.to_string();
        let make = || MatchingDecoder::from_dem_text(&dem, DecoderKind::Correlated);
        let baseline = decode_parallel(make, &sampled.detectors, 0)?;
        let errors = decoder::count_errors(&baseline.predictions, &sampled.observables) as u64;
        cases.push(EvalCase::new(format!("r={r}"), featurizer, sampled.detectors, sampled.observables, Some(errors)));
    }
    Ok(cases)
}

/// A one-line summary of an evaluation.
pub fn describe(report: &EvalReport) -> String {
    report
        .cases
        .iter()
        .map(|(label, _, _, errors, baseline)| match baseline {
            Some(b) if *b > 0 => format!("{label}: {errors} vs {b} ({:.3}x)", *errors as f64 / *b as f64),
            _ => format!("{label}: {errors} errors"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs `qecd train`.
pub fn run(args: &TrainArgs) -> Result<()> {
    if args.seed == args.eval_seed {
        bail!("--seed and --eval-seed are both {}; training and evaluation shots must never share a seed", args.seed);
    }
    let rounds = parse_rounds(&args.rounds)?;
    let (_, noise) = super::experiment(args.distance, 1, args.basis, &args.noise, args.p)?;
    let layout = ModelLayout::for_code(args.distance, args.basis)?;
    if args.out.exists() && !args.resume {
        bail!("{} exists; pass --resume to continue it, or choose another --out", args.out.display());
    }
    let threads = simulator_bridge::sample::resolve_threads(args.threads);
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let (width, heads, layers, ffn) = args.requested();
    let resuming = args.resume && args.out.exists();
    let mut ckpt = if resuming {
        let ckpt = Checkpoint::load(&args.out)?;
        if ckpt.meta.layout != layout {
            bail!(
                "{} was trained for d={} memory-{}, not d={} memory-{}",
                args.out.display(),
                ckpt.meta.layout.distance,
                ckpt.meta.layout.basis,
                args.distance,
                args.basis
            );
        }
        if args.shape_given() {
            let want = ModelConfig::for_distance(args.distance, width, heads, layers, ffn)
                .with_positions(ckpt.meta.config.positions);
            if let Some(why) = shape_mismatch(&ckpt.meta.config, &want) {
                bail!("--resume: {} does not fit the requested model: {why}", args.out.display());
            }
        }
        ckpt
    } else {
        let positions = parse_positions(&args.positions)?;
        let mut c = match &args.init {
            Some(path) => initial_checkpoint(path, args.distance, positions)?,
            None => {
                let config =
                    ModelConfig::for_distance(args.distance, width, heads, layers, ffn).with_positions(positions);
                config.validate()?;
                Checkpoint::random(config, layout.clone(), derive_seed(args.seed, 0x1417))
            }
        };
        if c.meta.layout != layout {
            bail!("the initial model is laid out for d={}, not d={}", c.meta.layout.distance, args.distance);
        }
        c.meta.provenance.noise = noise.name().to_string();
        c.meta.provenance.p = noise.p();
        c.meta.provenance.rounds = args.rounds.clone();
        c.meta.provenance.seeds.insert("train".into(), args.seed);
        c.meta.provenance.seeds.insert("eval".into(), args.eval_seed);
        c
    };
    ckpt.meta.provenance.commands.push(command);

    eprintln!(
        "building held-out sets ({} shots each, rounds {:?}) and correlated-matching baselines...",
        args.eval_shots, args.eval_rounds
    );
    let eval = eval_cases(&layout, args.distance, &noise, &args.eval_rounds, args.eval_shots, args.eval_seed)?;
    let cases = |noise: &NoiseModel| -> Result<Vec<(Featurizer, stim::Circuit)>> {
        let mut out = Vec::new();
        for &r in &rounds {
            let circuit = MemoryExperiment::new(args.distance, r, args.basis)?.noisy_circuit(noise)?;
            let featurizer = Featurizer::new(&layout, &StabilizerLayout::from_circuit(&circuit, args.basis)?)?;
            out.push((featurizer, circuit));
        }
        Ok(out)
    };
    let dense = args.aux_weight > 0.0;
    let resume_step = ckpt.meta.provenance.steps;
    let mut source = SimulatedSource::new(cases(&noise)?, args.basis, args.seed, resume_step, dense)?;
    if let (Some(p), Some(steps)) = (args.first_p, args.first_steps) {
        let first_noise = NoiseModel::from_name(&args.noise, p)?;
        let first = SimulatedSource::new(cases(&first_noise)?, args.basis, args.seed ^ 0xF157, resume_step, dense)?;
        source = source.after(first, steps);
    }
    let max_rounds = rounds.iter().chain(&args.eval_rounds).max().copied().unwrap_or(1) + 1;
    let mut engine =
        build_engine(&args.engine, &ckpt, &args.optimizer, args.weight_decay, threads, args.batch, max_rounds)?;
    if resuming {
        let prov = &ckpt.meta.provenance;
        eprintln!("{}", resume_optimizer(engine.as_mut(), &args.out, prov.steps, &prov.trainer));
    }
    let opts = TrainOptions {
        lr: args.lr,
        warmup: args.warmup,
        steps: args.steps,
        first_step: 0,
        batch: args.batch,
        clip: args.clip,
        aux_weight: args.aux_weight,
        eval_every: args.eval_every,
        early_stop_patience: None,
        max_seconds: args.max_minutes.map(|m| m * 60.0),
        out: args.out.clone(),
        log: Some(args.log.clone().unwrap_or_else(|| args.out.with_extension("train.csv"))),
    };
    let bar = indicatif::ProgressBar::new(args.steps);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "train [{elapsed_precise}] {wide_bar} {pos}/{len} steps (eta {eta}) {msg}",
        )
        .expect("valid template"),
    );
    bar.set_position(ckpt.meta.provenance.steps);
    let mut meta = ckpt.meta.clone();
    let last = train(
        engine.as_mut(),
        &mut meta,
        &mut source,
        &eval,
        &opts,
        &mut |s| {
            bar.set_position(s.step);
            if s.step % 20 == 0 {
                bar.set_message(format!("loss {:.4}", s.loss.final_bce));
            }
        },
        &mut |e| bar.println(format!("step {}: {}", e.step, describe(e))),
    )
    .with_context(|| format!("training {}", args.out.display()))?;
    bar.finish_and_clear();
    if let Some(report) = last {
        meta.evaluation = serde_json::json!({
            "held_out": report.cases.iter().map(|(label, shots, loss, errors, baseline)| serde_json::json!({
                "case": label, "shots": shots, "loss": loss, "neural_errors": errors, "correlated_errors": baseline,
            })).collect::<Vec<_>>(),
            "eval_seed": args.eval_seed,
        });
        engine.to_checkpoint(meta.clone())?.save(&args.out)?;
        println!("step {}: {}", report.step, describe(&report));
    }
    println!(
        "{}: {} steps, {} samples, {:.0} s on {} ({:.0} samples/s)",
        args.out.display(),
        meta.provenance.steps,
        meta.provenance.samples_seen,
        meta.provenance.seconds,
        meta.provenance.device,
        meta.provenance.samples_seen as f64 / meta.provenance.seconds.max(1e-9)
    );
    Ok(())
}
