//! `qecd train-posterior`: train the posterior model (docs/posterior.md) on
//! simulated shots with per-edge labels. Needs the `train` feature (tch).
//!
//! It saves the model every evaluation and at the end, atomically, with a
//! CSV log beside it (`X.train.csv`); `--resume` continues from the saved
//! model's step with fresh shots (AdamW's moments restart at zero).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use models::posterior::{Geometry, PosteriorConfig, PosteriorModel, PosteriorProvenance};
use models::posterior_net::PosteriorTrainer;
use simulator_bridge::edges::EdgeSampler;
use simulator_bridge::{Basis, StabilizerLayout};

/// Arguments of `qecd train-posterior`.
#[derive(Args, Debug)]
pub struct TrainPosteriorArgs {
    /// Code distance of the training shots.
    #[arg(long, short = 'd', default_value_t = 5)]
    pub distance: usize,
    /// Rounds of the training shots.
    #[arg(long, short = 'r', default_value_t = 5)]
    pub rounds: usize,
    /// Memory basis: x or z.
    #[arg(long, default_value = "z")]
    pub basis: String,
    /// Noise model: si1000, si1000-varied:SEED, device:FILE (a TOML device
    /// description laid on SI1000; see docs/device-noise.md) or depolarizing.
    #[arg(long, default_value = "si1000")]
    pub noise: String,
    /// Physical error rate.
    #[arg(long, default_value_t = 0.003)]
    pub p: f64,
    /// Train until this many optimizer steps in total.
    #[arg(long, default_value_t = 3000)]
    pub steps: u64,
    /// Shots per step.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Peak learning rate (linear warm-up, then cosine decay to a tenth at --steps).
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// Warm-up steps.
    #[arg(long, default_value_t = 100)]
    pub warmup: u64,
    /// Stop (and save) after this many minutes, even before --steps.
    #[arg(long)]
    pub minutes: Option<f64>,
    /// Evaluate on the held-out shots and save every this many steps.
    #[arg(long, default_value_t = 250)]
    pub eval_every: u64,
    /// Held-out shots (seed 1,000,000 + --seed).
    #[arg(long, default_value_t = 2000)]
    pub held_out: usize,
    /// Where to save the model.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from the model at --out.
    #[arg(long)]
    pub resume: bool,
    /// Start from this model's weights (its edge classes must fit).
    #[arg(long, conflicts_with = "resume")]
    pub init: Option<PathBuf>,
    /// Training seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Worker threads for tch (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

fn log_path(out: &Path) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = name.strip_suffix(".safetensors").unwrap_or(&name);
    out.with_file_name(format!("{stem}.train.csv"))
}

/// Runs `qecd train-posterior`.
pub fn run(args: &TrainPosteriorArgs) -> Result<()> {
    if args.batch == 0 || args.steps == 0 {
        bail!("--batch and --steps must be positive");
    }
    if !(args.lr > 0.0 && args.lr.is_finite()) {
        bail!("--lr must be a positive number");
    }
    let basis: Basis = args.basis.parse()?;
    let (experiment, noise) = super::experiment(args.distance, args.rounds, basis, &args.noise, args.p)?;
    let circuit = experiment.noisy_circuit(&noise)?;
    let dem = super::decoding_dem(&circuit)?;
    let layout = StabilizerLayout::from_circuit(&circuit, basis)?;
    let threads = simulator_bridge::sample::resolve_threads(args.threads);
    tch::set_num_threads(threads as i32);

    let (model, start) = if args.resume {
        let m =
            PosteriorModel::load(&args.out).with_context(|| format!("--resume: cannot load {}", args.out.display()))?;
        let step = m.provenance.steps;
        (m, step)
    } else if let Some(init) = &args.init {
        (PosteriorModel::load(init).with_context(|| format!("--init: cannot load {}", init.display()))?, 0)
    } else {
        if args.out.exists() {
            bail!("{} exists; pass --resume to continue it or choose another --out", args.out.display());
        }
        let sampler = EdgeSampler::new(&dem, 0)?;
        let classes = Geometry::classes_of(&layout, &sampler.edges().edges)?;
        let mut model = PosteriorModel::random(PosteriorConfig::new(basis, classes), args.seed)?;
        start_at_priors(&mut model, &layout, &sampler)?;
        (model, 0)
    };
    if start >= args.steps {
        bail!("the model at {} is already at step {start}; ask for more --steps", args.out.display());
    }
    let sampler = EdgeSampler::new(&dem, simulator_bridge::sample::derive_seed(args.seed, start))?;
    let geometry = Geometry::new(&model.config, &layout, &sampler.edges().edges)?;
    let held_out = EdgeSampler::new(&dem, 1_000_000 + args.seed)?.sample(args.held_out)?;
    let mut provenance = PosteriorProvenance {
        distance: args.distance,
        rounds: args.rounds,
        noise: args.noise.clone(),
        p: args.p,
        steps: start,
        shots: if args.resume { model.provenance.shots } else { 0 },
        seed: args.seed,
        held_out_loss: model.provenance.held_out_loss,
    };
    let mut trainer = PosteriorTrainer::new(&model, geometry, sampler, args.lr, tch::Device::Cpu)?;
    let log = log_path(&args.out);
    let mut log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    if log_file.metadata()?.len() == 0 {
        writeln!(log_file, "step,shots,train_loss,held_out_loss,prior_loss,elapsed_s")?;
    }
    eprintln!(
        "training the posterior model: d={} r={} {} p={} from step {start} to {}, {} shots per step, {} threads",
        args.distance, args.rounds, args.noise, args.p, args.steps, args.batch, threads
    );
    let bar = super::shot_bar((args.steps - start) * args.batch as u64, "train-posterior");
    let began = Instant::now();
    let mut recent = Vec::new();
    let mut step = start;
    let deadline = args.minutes.map(|m| m * 60.0);
    loop {
        let lr = schedule(args, step);
        recent.push(trainer.step(args.batch, lr)?);
        step += 1;
        provenance.steps = step;
        provenance.shots += args.batch as u64;
        bar.inc(args.batch as u64);
        let out_of_time = deadline.is_some_and(|d| began.elapsed().as_secs_f64() >= d);
        let done = step >= args.steps || out_of_time;
        if step % args.eval_every == 0 || done {
            let (loss, prior) = trainer.evaluate(&held_out);
            let train = recent.iter().sum::<f64>() / recent.len().max(1) as f64;
            recent.clear();
            provenance.held_out_loss = Some(loss);
            writeln!(
                log_file,
                "{step},{},{train:.6e},{loss:.6e},{prior:.6e},{:.1}",
                provenance.shots,
                began.elapsed().as_secs_f64()
            )?;
            bar.set_message(format!("held-out {loss:.4e} nats/edge ({:.3}x the priors')", loss / prior));
            trainer.model(provenance.clone())?.save(&args.out)?;
        }
        if done {
            break;
        }
    }
    bar.finish();
    eprintln!("saved {} at step {step} ({} shots); log {}", args.out.display(), provenance.shots, log.display());
    Ok(())
}

/// Sets each class's output bias to the mean prior log-odds of its edges, so
/// that training starts from the detector error model's own probabilities
/// rather than from one half.
fn start_at_priors(model: &mut PosteriorModel, layout: &StabilizerLayout, sampler: &EdgeSampler) -> Result<()> {
    let edges = sampler.edges();
    let geometry = Geometry::new(&model.config, layout, &edges.edges)?;
    let prior = edges.edge_priors();
    let classes = model.config.classes.len();
    let (mut sum, mut count) = (vec![0.0; classes], vec![0usize; classes]);
    for (&(_, class), p) in geometry.edge_slots.iter().zip(&prior) {
        let p = p.clamp(1e-9, 0.5);
        sum[class as usize] += (p / (1.0 - p)).ln();
        count[class as usize] += 1;
    }
    let bias = &mut model.tensors.get_mut("head.b").expect("the model has a head").1;
    for c in 0..classes {
        bias[c] = (sum[c] / count[c].max(1) as f64) as f32;
    }
    Ok(())
}

/// Linear warm-up to --lr, then cosine decay to a tenth of it at --steps.
fn schedule(args: &TrainPosteriorArgs, step: u64) -> f64 {
    if step < args.warmup {
        return args.lr * (step + 1) as f64 / args.warmup as f64;
    }
    let span = args.steps.saturating_sub(args.warmup).max(1) as f64;
    let progress = ((step - args.warmup) as f64 / span).min(1.0);
    args.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()))
}
