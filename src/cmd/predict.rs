//! `qecd predict`: decode detection events into observable-flip predictions.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{ArgGroup, Args};
use decoder::{
    BeliefMatching, BpOptions, BpStats, DecoderKind, MatchingDecoder, NeuralDecoder, NeuralMatching, decode_parallel,
    decode_parallel_with,
};
use simulator_bridge::formats::{read_shots_file, write_shots};
use simulator_bridge::fsutil::Staged;
use simulator_bridge::{BitLabels, ResultFormat, StabilizerLayout};

use decoder::confidence::{CALIBRATION_SEED, CALIBRATION_SHOTS};

/// Arguments of `qecd predict`; the flags follow `pymatching predict`.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("error_model").required(true).args(["dem", "circuit"])))]
pub struct PredictArgs {
    /// Detector error model to decode with.
    #[arg(long)]
    pub dem: Option<PathBuf>,
    /// Circuit whose detector error model to decode with.
    #[arg(long)]
    pub circuit: Option<PathBuf>,
    /// Detection events to decode.
    #[arg(long = "in", alias = "in_file")]
    pub input: PathBuf,
    /// Format of --in: 01, b8, r8, ptb64, hits or dets.
    #[arg(long, alias = "in_format", default_value = "b8")]
    pub in_format: String,
    /// Where to write predicted observable flips.
    #[arg(long)]
    pub out: PathBuf,
    /// Format of --out.
    #[arg(long, alias = "out_format", default_value = "01")]
    pub out_format: String,
    /// matching, correlated, belief, neural (with --model) or neural-matching.
    #[arg(long, default_value = "correlated")]
    pub decoder: String,
    /// Neural-decoder checkpoint (--decoder neural), or posterior model
    /// (--decoder neural-matching; default: the one built into qecd).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Also write each shot's calibrated confidence, one number per line.
    #[arg(long, alias = "confidence_out")]
    pub confidence_out: Option<PathBuf>,
    /// Actual observable flips, to count mistakes.
    #[arg(long, alias = "obs_in")]
    pub obs_in: Option<PathBuf>,
    /// Format of --obs-in.
    #[arg(long, alias = "obs_in_format", default_value = "01")]
    pub obs_in_format: String,
    /// Belief-matching: BP's iteration cap.
    #[arg(long, default_value_t = BpOptions::default().max_iterations)]
    pub bp_iters: usize,
    /// Belief-matching: weight of the previous message in each BP update (0: undamped).
    #[arg(long, default_value_t = BpOptions::default().damping)]
    pub bp_damping: f64,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// Runs `qecd predict`.
pub fn run(args: &PredictArgs) -> Result<()> {
    let in_format: ResultFormat = args.in_format.parse()?;
    let out_format: ResultFormat = args.out_format.parse()?;
    let obs_format: ResultFormat = args.obs_in_format.parse()?;
    let kind: DecoderKind = args.decoder.parse()?;
    let model =
        args.model.as_ref().filter(|_| kind == DecoderKind::Neural).map(|p| super::load_model(p)).transpose()?;
    if kind == DecoderKind::Neural && model.is_none() {
        bail!("--decoder neural needs --model");
    }
    if args.model.is_some() && !matches!(kind, DecoderKind::Neural | DecoderKind::NeuralMatching) {
        bail!("--model goes with --decoder neural or neural-matching");
    }
    let circuit = args.circuit.as_ref().map(|p| super::read_circuit(p)).transpose()?;
    let dem = match (&args.dem, &circuit) {
        (Some(path), _) => {
            let file = simulator_bridge::DemFile::read(path)?;
            file.text().parse::<stim::DetectorErrorModel>().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        (None, Some(circuit)) => super::decoding_dem(circuit)?,
        (None, None) => unreachable!("clap requires --dem or --circuit"),
    };
    let num_detectors = dem.num_detectors() as usize;
    let num_observables = dem.num_observables() as usize;
    let events = read_shots_file(&args.input, in_format, BitLabels::detectors(num_detectors))
        .with_context(|| format!("reading detection events for a model with {num_detectors} detectors"))?;
    let actual = args
        .obs_in
        .as_ref()
        .map(|p| read_shots_file(p, obs_format, BitLabels::observables(num_observables)))
        .transpose()?;
    if let Some(actual) = actual.as_ref().filter(|a| a.num_shots() != events.num_shots()) {
        bail!("--in holds {} shots but --obs-in holds {}", events.num_shots(), actual.num_shots());
    }
    if out_format == ResultFormat::Ptb64 && events.num_shots() % 64 != 0 {
        bail!("ptb64 output needs a multiple of 64 shots; the input has {}", events.num_shots());
    }
    let mut stage = Staged::default();
    let out = stage.add(&args.out)?;
    let confidence_out = stage.add_optional(args.confidence_out.as_deref())?;

    if kind == DecoderKind::Belief && confidence_out.is_some() {
        bail!("belief reports no confidence yet; --confidence-out works with the other decoders");
    }
    let calibration = match confidence_out {
        Some(_) if DecoderKind::MATCHING.contains(&kind) => {
            let probe = MatchingDecoder::from_dem(&dem, kind)?;
            let fit = probe.fit_calibration(&dem, CALIBRATION_SHOTS, CALIBRATION_SEED)?;
            eprintln!(
                "confidence: P(right) = sigmoid({:.4} * gap + {:.4}), fitted on {CALIBRATION_SHOTS} held-out shots from the DEM",
                fit.slope, fit.intercept
            );
            Some(fit)
        }
        _ => None,
    };
    let dem_text = dem.to_string();
    let make = || {
        let d = MatchingDecoder::from_dem_text(&dem_text, kind)?;
        Ok(match calibration {
            Some(c) => d.with_confidence(c),
            None => d,
        })
    };
    let decisions = if let Some(model) = &model {
        let layout = match &circuit {
            Some(c) => StabilizerLayout::from_circuit(c, model.basis())?,
            None => super::dem_layout(&dem, model.basis())?,
        };
        // A relative model runs at any distance: lay it out for the circuit's.
        let model = match layout.distance() {
            Some(d) if d != model.distance() && model.is_relative() => {
                let path = args.model.as_deref().expect("a neural model came from --model");
                super::load_model_at(path, d)?
            }
            _ => model.clone(),
        };
        decode_parallel(|| NeuralDecoder::new(model.clone(), &layout), &events, args.threads)?
    } else if kind == DecoderKind::NeuralMatching {
        let (name, posterior) = super::load_posterior(args.model.as_deref())?;
        let basis = posterior.config.basis.parse()?;
        let layout = match &circuit {
            Some(c) => StabilizerLayout::from_circuit(c, basis)?,
            None => super::dem_layout(&dem, basis)?,
        };
        let calibration = match confidence_out {
            Some(_) => {
                let mut probe = NeuralMatching::new(posterior.clone(), &dem, &layout)?;
                let fit = probe.fit_calibration(&dem, CALIBRATION_SHOTS, CALIBRATION_SEED)?;
                eprintln!(
                    "confidence: P(right) = sigmoid({:.4} * matching weight + {:.4}), fitted on {CALIBRATION_SHOTS} held-out shots from the DEM",
                    fit.slope, fit.intercept
                );
                Some(fit)
            }
            None => None,
        };
        let make = || {
            let d = NeuralMatching::new(posterior.clone(), &dem_text.parse()?, &layout)?;
            Ok(match calibration {
                Some(c) => d.with_confidence(c),
                None => d,
            })
        };
        eprintln!("neural-matching with the posterior model {name}");
        decode_parallel(make, &events, args.threads)?
    } else if kind == DecoderKind::Belief {
        let options = BpOptions { max_iterations: args.bp_iters, damping: args.bp_damping };
        let make = || BeliefMatching::from_dem_text(&dem_text, options);
        let (decisions, workers) = decode_parallel_with(make, &events, args.threads, BeliefMatching::stats)?;
        let mut stats = BpStats::default();
        workers.iter().for_each(|w| stats.add(w));
        eprintln!("{}", stats.summary());
        decisions
    } else {
        decode_parallel(make, &events, args.threads)?
    };
    write_shots(&mut stage.writer(out), &decisions.predictions, out_format, BitLabels::observables(num_observables))?;
    if let (Some(o), Some(confidence)) = (confidence_out, &decisions.confidence) {
        let mut w = stage.writer(o);
        for c in confidence {
            writeln!(w, "{c:.6}")?;
        }
        w.flush()?;
    }
    stage.commit()?;
    match &actual {
        Some(actual) => {
            let errors = decoder::count_errors(&decisions.predictions, actual);
            println!(
                "{errors} of {} shots decoded wrongly ({:.4}%)",
                events.num_shots(),
                100.0 * errors as f64 / events.num_shots().max(1) as f64
            );
        }
        None => eprintln!("decoded {} shots with {kind}", events.num_shots()),
    }
    Ok(())
}
