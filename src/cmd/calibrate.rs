//! `qecd calibrate`: fit the model's temperature τ on fresh held-out shots,
//! report the expected calibration error before and after, draw a
//! reliability diagram, and do the same for correlated matching's gap
//! confidence so that the two are comparable.
//!
//! Each rounds case is sampled with `--seed`, which must not be one of the
//! seeds the checkpoint was trained or evaluated with. Its shots are split in
//! two halves: τ (and the matching gap map) are fitted on the first and every
//! figure is measured on the second.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use decoder::{DecoderKind, MatchingDecoder};
use models::Featurizer;
use models::calibration::{ECE_BINS, confidence, ece, fit_temperature, postselect, reliability};
use models::checkpoint::Checkpoint;
use models::fused::FusedNet;
use simulator_bridge::sample::{Sampler, derive_seed};
use simulator_bridge::{MemoryExperiment, NoiseModel, StabilizerLayout};

/// Arguments of `qecd calibrate`.
#[derive(Args, Debug)]
pub struct CalibrateArgs {
    /// The checkpoint to calibrate.
    #[arg(long)]
    pub model: PathBuf,
    /// Where to write the calibrated checkpoint (default: replace --model, atomically).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Rounds of the calibration shots (default: the distance).
    #[arg(long, value_delimiter = ',')]
    pub rounds: Vec<usize>,
    /// Shots per rounds case (half fit, half measure).
    #[arg(long, default_value_t = 100_000)]
    pub shots: usize,
    /// Seed of the calibration shots; must be new to the checkpoint.
    #[arg(long, default_value_t = 2_000_003)]
    pub seed: u64,
    /// Noise of the calibration shots (default: the checkpoint's).
    #[arg(long)]
    pub noise: Option<String>,
    /// Reliability diagram (PNG).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// Runs `qecd calibrate`.
pub fn run(args: &CalibrateArgs) -> Result<()> {
    let mut ckpt = Checkpoint::load(&args.model)?;
    if let Some((name, _)) = ckpt.meta.provenance.seeds.iter().find(|(_, s)| **s == args.seed) {
        bail!("--seed {} is the checkpoint's {name} seed; calibration needs shots it never saw", args.seed);
    }
    let threads = simulator_bridge::sample::resolve_threads(args.threads);
    let noise_name = args.noise.clone().unwrap_or_else(|| ckpt.meta.provenance.noise.clone());
    let noise = NoiseModel::from_name(&noise_name, ckpt.meta.provenance.p)?;
    let d = ckpt.meta.layout.distance;
    let basis = ckpt.meta.layout.basis;
    let rounds = if args.rounds.is_empty() { vec![d] } else { args.rounds.clone() };
    // The logits come from the fused forward (the inference step), in blocks of 1024 shots.
    let mut net = FusedNet::from_checkpoint(&ckpt, threads, 1024, rounds.iter().max().copied().unwrap_or(d) + 1)?;
    let half = args.shots / 2;
    if half < 1000 {
        bail!("--shots {} is too few to calibrate on (need at least 2000)", args.shots);
    }
    // Fit and measurement halves, pooled over the rounds cases.
    let (mut fit_logits, mut fit_flips) = (Vec::new(), Vec::new());
    let (mut test_logits, mut test_flips) = (Vec::new(), Vec::new());
    let (mut gap_fit, mut gap_fit_right) = (Vec::new(), Vec::new());
    let (mut matching_gaps, mut matching_right) = (Vec::new(), Vec::new());
    let mut per_case = Vec::new();
    for &r in &rounds {
        let circuit = MemoryExperiment::new(d, r, basis)?.noisy_circuit(&noise)?;
        let featurizer = Featurizer::new(&ckpt.meta.layout, &StabilizerLayout::from_circuit(&circuit, basis)?)?;
        let shots = Sampler::new(&circuit).sample(2 * half, derive_seed(args.seed, r as u64), 0)?;
        let logits = net.logits(&featurizer, &shots.detectors)?;
        let flips: Vec<bool> = (0..2 * half).map(|s| shots.observables.get(s, 0)).collect();
        fit_logits.extend_from_slice(&logits[..half]);
        fit_flips.extend_from_slice(&flips[..half]);
        test_logits.extend_from_slice(&logits[half..]);
        test_flips.extend_from_slice(&flips[half..]);
        let dem = super::decoding_dem(&circuit)?;
        let matching = MatchingDecoder::from_dem(&dem, DecoderKind::Correlated)?;
        let (fit_predictions, fit_gaps) = matching.decode_with_gaps(&shots.detectors.slice(0, half))?;
        let (test_predictions, test_gaps) = matching.decode_with_gaps(&shots.detectors.slice(half, 2 * half))?;
        let mut case_matching_errors = 0;
        for s in 0..half {
            gap_fit.push(fit_gaps[s]);
            gap_fit_right.push(fit_predictions.get(s, 0) == flips[s]);
            let right = test_predictions.get(s, 0) == flips[half + s];
            case_matching_errors += usize::from(!right);
            matching_gaps.push(test_gaps[s]);
            matching_right.push(right);
        }
        let case_neural_errors = (half..2 * half).filter(|&s| (logits[s] > 0.0) != flips[s]).count();
        per_case.push((r, half, case_neural_errors, case_matching_errors));
    }
    // Matching's gap map goes through the same logistic fit as `qecd predict --confidence-out`.
    let gap_map = decoder::GapCalibration::fit(&gap_fit, &gap_fit_right);
    let matching_conf: Vec<f64> = matching_gaps.iter().map(|&g| gap_map.confidence(&[g])).collect();

    let tau = fit_temperature(&fit_logits, &fit_flips);
    let right: Vec<bool> = test_logits.iter().zip(&test_flips).map(|(&x, &y)| (x > 0.0) == y).collect();
    let raw: Vec<f64> = test_logits.iter().map(|&x| confidence(x, 1.0)).collect();
    let scaled: Vec<f64> = test_logits.iter().map(|&x| confidence(x, tau)).collect();
    let (ece_raw, ece_scaled) = (ece(&raw, &right, ECE_BINS), ece(&scaled, &right, ECE_BINS));
    let ece_matching = ece(&matching_conf, &matching_right, ECE_BINS);
    let errors = right.iter().filter(|r| !**r).count();
    let (kept, kept_errors) = postselect(&scaled, &right, 0.10);
    let (m_kept, m_kept_errors) = postselect(&matching_conf, &matching_right, 0.10);
    let m_errors = matching_right.iter().filter(|r| !**r).count();
    let ler = |e: usize, n: usize| e as f64 / n.max(1) as f64;
    let fall = |before: f64, after: f64| if after > 0.0 { format!("{:.1}x", before / after) } else { "inf".into() };

    println!(
        "calibration of {} on {} fresh shots per rounds case (seed {}; fit on half, measured on the other half)",
        args.model.display(),
        2 * half,
        args.seed
    );
    println!("{:>6} {:>8} {:>14} {:>16}", "rounds", "shots", "neural errors", "correlated errors");
    for (r, n, ne, me) in &per_case {
        println!("{r:>6} {n:>8} {ne:>14} {me:>16}");
    }
    println!("temperature τ = {tau:.4}");
    println!("neural ECE ({ECE_BINS} bins): {ece_raw:.5} at τ=1 → {ece_scaled:.5} at τ={tau:.3}");
    println!("correlated matching ECE (gap map fitted the same way): {ece_matching:.5}");
    println!(
        "postselection (reject the 10% least confident): neural LER {:.3e} → {:.3e} ({}), correlated {:.3e} → {:.3e} ({})",
        ler(errors, right.len()),
        ler(kept_errors, kept),
        fall(ler(errors, right.len()), ler(kept_errors, kept)),
        ler(m_errors, matching_right.len()),
        ler(m_kept_errors, m_kept),
        fall(ler(m_errors, matching_right.len()), ler(m_kept_errors, m_kept)),
    );

    if let Some(path) = &args.plot {
        let series = vec![
            (format!("neural, τ=1 (ECE {ece_raw:.4})"), reliability(&raw, &right, ECE_BINS)),
            (format!("neural, τ={tau:.3} (ECE {ece_scaled:.4})"), reliability(&scaled, &right, ECE_BINS)),
            (
                format!("correlated matching, gap (ECE {ece_matching:.4})"),
                reliability(&matching_conf, &matching_right, ECE_BINS),
            ),
        ];
        qecd_sweep::plot::plot_reliability(&format!("Reliability, d={d} memory-{basis}, {noise}"), &series, path)?;
        eprintln!("wrote {}", path.display());
    }
    ckpt.meta.temperature = tau;
    ckpt.meta.provenance.seeds.insert("calibration".into(), args.seed);
    ckpt.meta.provenance.commands.push(std::env::args().collect::<Vec<_>>().join(" "));
    let mut evaluation = match ckpt.meta.evaluation.take() {
        serde_json::Value::Object(m) => m,
        serde_json::Value::Null => serde_json::Map::new(),
        other => serde_json::Map::from_iter([("previous".to_string(), other)]),
    };
    evaluation.insert(
        "calibration".into(),
        serde_json::json!({
            "seed": args.seed, "rounds": rounds, "shots_per_half": half, "temperature": tau,
            "ece_bins": ECE_BINS, "ece_before": ece_raw, "ece_after": ece_scaled, "ece_correlated_matching": ece_matching,
            "postselect_10pct": {"neural_ler_before": ler(errors, right.len()), "neural_ler_after": ler(kept_errors, kept),
                                  "correlated_ler_before": ler(m_errors, matching_right.len()), "correlated_ler_after": ler(m_kept_errors, m_kept)},
        }),
    );
    ckpt.meta.evaluation = serde_json::Value::Object(evaluation);
    let out = args.out.clone().unwrap_or_else(|| args.model.clone());
    ckpt.save(&out)?;
    eprintln!("wrote τ into {}", out.display());
    Ok(())
}
