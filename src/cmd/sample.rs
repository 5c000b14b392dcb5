//! `qecd sample`: detection events and observable flips from a circuit.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use simulator_bridge::experiment::{self, Experiment};
use simulator_bridge::formats::write_shots;
use simulator_bridge::fsutil::Staged;
use simulator_bridge::sample::Sampler;
use simulator_bridge::{Basis, BitLabels, ResultFormat};

/// Arguments of `qecd sample`; the flags follow `stim sample_dem` / `stim detect`.
#[derive(Args, Debug)]
pub struct SampleArgs {
    /// Code distance (odd, 3..25).
    #[arg(long, short = 'd', default_value_t = 3)]
    pub distance: usize,
    /// Rounds of stabilizer measurement.
    #[arg(long, short = 'r', default_value_t = 3)]
    pub rounds: usize,
    /// Memory basis: x or z.
    #[arg(long, default_value = "z")]
    pub basis: Basis,
    /// Noise model: si1000, si1000-varied:SEED, device:FILE (a TOML device
    /// description laid on SI1000; see docs/device-noise.md) or depolarizing.
    #[arg(long, default_value = "si1000")]
    pub noise: String,
    /// Physical error rate p.
    #[arg(long, default_value_t = 0.003, allow_negative_numbers = true)]
    pub p: f64,
    /// Use this noisy circuit instead of a generated one (its detectors need (x, y, t) coordinates).
    #[arg(long)]
    pub circuit: Option<PathBuf>,
    /// Number of shots.
    #[arg(long, default_value_t = 1000)]
    pub shots: usize,
    /// Seed; the same seed and shot count give the same shots on any number of threads.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Where to write detection events.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Format of --out: 01, b8, r8, ptb64, hits or dets.
    #[arg(long, alias = "out_format", default_value = "b8")]
    pub out_format: String,
    /// Where to write observable flips.
    #[arg(long, alias = "obs_out")]
    pub obs_out: Option<PathBuf>,
    /// Format of --obs-out.
    #[arg(long, alias = "obs_out_format", default_value = "01")]
    pub obs_out_format: String,
    /// Where to write the noisy circuit.
    #[arg(long, alias = "circuit_out")]
    pub circuit_out: Option<PathBuf>,
    /// Where to write the detector error model.
    #[arg(long, alias = "dem_out")]
    pub dem_out: Option<PathBuf>,
    /// Write an experiment directory (Google's layout) here.
    #[arg(long, alias = "out_dir")]
    pub out_dir: Option<PathBuf>,
}

/// Runs `qecd sample`.
pub fn run(args: &SampleArgs) -> Result<()> {
    let out_format: ResultFormat = args.out_format.parse()?;
    let obs_format: ResultFormat = args.obs_out_format.parse()?;
    if args.out.is_none() && args.out_dir.is_none() {
        bail!("nothing to write: give --out and/or --out-dir");
    }
    for (format, given) in [(out_format, args.out.is_some()), (obs_format, args.obs_out.is_some())] {
        if given && format == ResultFormat::Ptb64 && !args.shots.is_multiple_of(64) {
            bail!("ptb64 needs a multiple of 64 shots; {} is not", args.shots);
        }
    }
    if let Some(dir) = &args.out_dir {
        let nonempty = dir.exists() && std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(true);
        if nonempty {
            bail!("{} already exists and is not empty; refusing to overwrite it", dir.display());
        }
    }
    let (noisy, ideal, metadata) = match &args.circuit {
        Some(path) => {
            let circuit = super::read_circuit(path)?;
            super::check_layout(&circuit, args.basis, path)?;
            let meta = serde_json::json!({"source": path.display().to_string(), "basis": args.basis.to_string()});
            (circuit, None, meta)
        }
        None => {
            let (exp, noise) = super::experiment(args.distance, args.rounds, args.basis, &args.noise, args.p)?;
            let meta = serde_json::json!({
                "d": exp.distance, "r": exp.rounds, "basis": exp.basis.to_string(),
                "noise": noise.name(), "p": noise.p(),
            });
            (exp.noisy_circuit(&noise)?, Some(exp.ideal_circuit()?), meta)
        }
    };
    let mut stage = Staged::default();
    let out = stage.add_optional(args.out.as_deref())?;
    let obs_out = stage.add_optional(args.obs_out.as_deref())?;
    let circuit_out = stage.add_optional(args.circuit_out.as_deref())?;
    let dem_out = stage.add_optional(args.dem_out.as_deref())?;

    let seed = args.seed.unwrap_or_else(super::fresh_seed);
    let sampler = Sampler::new(&noisy);
    let bar = super::shot_bar(args.shots as u64, "sample");
    let shots = sampler.sample_with_progress(args.shots, seed, args.threads, &|n| bar.inc(n as u64))?;
    bar.finish_and_clear();

    let dets = BitLabels::detectors(sampler.num_detectors());
    let obs = BitLabels::observables(sampler.num_observables());
    if let Some(o) = out {
        write_shots(&mut stage.writer(o), &shots.detectors, out_format, dets)?;
    }
    if let Some(o) = obs_out {
        write_shots(&mut stage.writer(o), &shots.observables, obs_format, obs)?;
    }
    if let Some(o) = circuit_out {
        std::io::Write::write_all(&mut stage.writer(o), noisy.to_string().as_bytes())?;
    }
    let needs_dem = dem_out.is_some() || args.out_dir.is_some();
    let dem_text = if needs_dem { Some(super::decoding_dem(&noisy)?.to_string()) } else { None };
    if let (Some(o), Some(text)) = (dem_out, &dem_text) {
        std::io::Write::write_all(&mut stage.writer(o), text.as_bytes())?;
    }
    if let Some(dir) = &args.out_dir {
        let mut metadata = metadata;
        metadata["seed"] = seed.into();
        metadata["shots"] = args.shots.into();
        metadata["command"] = std::env::args().collect::<Vec<_>>().join(" ").into();
        Experiment {
            circuit_noisy: noisy.to_string(),
            circuit_ideal: ideal.map(|c| c.to_string()),
            dem: dem_text.map(|t| (experiment::DEM.to_string(), t)),
            detection_events: shots.detectors.clone(),
            obs_flips: shots.observables.clone(),
            metadata: Some(metadata),
        }
        .write(dir)
        .with_context(|| format!("cannot write experiment directory {}", dir.display()))?;
    }
    stage.commit()?;
    eprintln!(
        "sampled {} shots ({} detectors, {} observables) with seed {seed}",
        args.shots,
        sampler.num_detectors(),
        sampler.num_observables()
    );
    Ok(())
}
