//! Dense per-round logical labels, from Stim's detector-error-model sampler.
//!
//! A shot's usual label is its final observable flip. The label of round `t`
//! is the flip that a noiseless measurement of the data qubits right after
//! round `t` would show. The circuit sampler cannot tell us that, but the DEM
//! sampler reports which error mechanisms fired, and each mechanism has a
//! round: the earliest round among the detectors it flips (0 if it flips
//! none). Then `label[t]` is the XOR of the observable flips of the fired
//! mechanisms whose round is at most `t`, and `label[T-1]` is the shot's
//! observable flip.
//!
//! The DEM is built from the circuit with loops flattened and errors not
//! decomposed, so error `k` of the sampler is the `k`-th `error(...)`
//! instruction of that same model. `docs/model.md` §"Dense labels" states the
//! definition.

use crate::code::Basis;
use crate::error::BridgeError;
use crate::layout::{DetectorId, Round, StabilizerLayout};
use crate::shots::PackedShots;

/// The observables one error mechanism flips: bit `o` set flips observable `o`.
pub type ObservableMask = u64;

/// Most observables a circuit may have, the width of [`ObservableMask`].
const MAX_OBSERVABLES: usize = ObservableMask::BITS as usize;

/// Shots with their per-round logical labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabeledShots {
    /// One row of `num_detectors` detection events per shot.
    pub detectors: PackedShots,
    /// One row of `O` observable flips per shot.
    pub observables: PackedShots,
    /// `T·O` bits per shot, round-major: bit `t·O + o` is observable `o`'s label after round `t`.
    pub round_labels: PackedShots,
}

impl LabeledShots {
    /// The label of `observable` after `round` in one shot.
    pub fn label(&self, shot: usize, round: Round, observable: usize) -> bool {
        self.round_labels.get(shot, round * self.observables.bits_per_shot() + observable)
    }
}

/// What one error mechanism does to the labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ErrorEffect {
    /// The earliest round among the detectors it flips; 0 if it flips none.
    round: Round,
    /// The observables it flips.
    observables: ObservableMask,
}

/// The effect of every error mechanism of a flattened DEM, indexed by its
/// position among the model's `error(...)` instructions.
#[derive(Clone, Debug)]
struct ErrorTable {
    /// Indexed by error mechanism.
    effects: Vec<ErrorEffect>,
    /// Rounds per shot, the final data-qubit round included.
    num_rounds: usize,
}

impl ErrorTable {
    /// Reads the effects from a flattened DEM, giving each detector its round from `layout`.
    fn from_dem(dem: &stim::DetectorErrorModel, layout: &StabilizerLayout) -> Result<Self, BridgeError> {
        let mut effects = Vec::new();
        let mut shift: u64 = 0;
        for item in dem {
            let instruction = match item {
                stim::DemItem::Instruction(instruction) => instruction,
                stim::DemItem::RepeatBlock(_) => {
                    return Err(BridgeError::Circuit("the detector error model still has a repeat block".into()));
                }
            };
            match instruction.r#type() {
                stim::DemInstructionType::Error => {
                    effects.push(Self::effect(&instruction, shift, layout)?);
                }
                stim::DemInstructionType::ShiftDetectors => {
                    for target in instruction.targets() {
                        if let stim::DemInstructionTarget::RelativeOffset(n) = target {
                            shift += n;
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(Self { effects, num_rounds: layout.num_rounds })
    }

    fn effect(
        instruction: &stim::DemInstruction,
        shift: u64,
        layout: &StabilizerLayout,
    ) -> Result<ErrorEffect, BridgeError> {
        let mut round: Option<Round> = None;
        let mut observables: ObservableMask = 0;
        for target in instruction.targets() {
            let stim::DemInstructionTarget::DemTarget(target) = *target else { continue };
            if target.is_relative_detector_id() {
                let detector = (target.raw_id() + shift) as DetectorId;
                let site = layout.detectors.get(detector).ok_or_else(|| {
                    BridgeError::Circuit(format!(
                        "the detector error model names D{detector}, but the circuit has {} detectors",
                        layout.num_detectors()
                    ))
                })?;
                round = Some(round.map_or(site.round, |r| r.min(site.round)));
            } else if target.is_logical_observable_id() {
                let o = target.raw_id() as usize;
                if o >= MAX_OBSERVABLES {
                    return Err(BridgeError::Circuit(format!(
                        "observable L{o}: dense labels support at most {MAX_OBSERVABLES} observables"
                    )));
                }
                // A target listed twice cancels, as in Stim.
                observables ^= 1 << o;
            }
        }
        Ok(ErrorEffect { round: round.unwrap_or(0), observables })
    }

    /// Writes into `labels[t]` (length T) the observables flipped by the
    /// errors of one packed error row that belong to rounds `0..=t`.
    fn labels_into(&self, errors: &[u8], labels: &mut [ObservableMask]) {
        debug_assert_eq!(labels.len(), self.num_rounds);
        labels.fill(0);
        let mut words = errors.chunks_exact(8);
        for (w, chunk) in words.by_ref().enumerate() {
            let word = u64::from_le_bytes(chunk.try_into().expect("chunks of 8 bytes"));
            self.accumulate(word, w * 64, labels);
        }
        let tail = words.remainder();
        let mut last = [0u8; 8];
        last[..tail.len()].copy_from_slice(tail);
        self.accumulate(u64::from_le_bytes(last), (errors.len() / 8) * 64, labels);
        for t in 1..labels.len() {
            labels[t] ^= labels[t - 1];
        }
    }

    /// XORs the observable masks of the errors set in `word` (errors `base..base + 64`) into their rounds.
    #[inline]
    fn accumulate(&self, mut word: u64, base: usize, labels: &mut [ObservableMask]) {
        while word != 0 {
            let effect = self.effects[base + word.trailing_zeros() as usize];
            labels[effect.round] ^= effect.observables;
            word &= word - 1;
        }
    }
}

/// Samples shots with per-round labels from one circuit. Built once per
/// circuit: it holds the per-error table and a compiled Stim DEM sampler.
pub struct LabeledSampler {
    /// The effect of each error mechanism the sampler reports.
    table: ErrorTable,
    /// Stim's sampler over the same flattened, undecomposed DEM.
    sampler: stim::DemSampler,
    /// Detection events per shot.
    num_detectors: usize,
    /// Observables per shot, O.
    num_observables: usize,
    /// Per-round scratch of one shot, `T` masks.
    scratch: Vec<ObservableMask>,
}

impl LabeledSampler {
    /// Builds the DEM of `circuit` (loops flattened, errors not decomposed),
    /// reads the round of every error mechanism from the detector coordinates,
    /// and compiles a sampler seeded with `seed`.
    pub fn new(circuit: &stim::Circuit, basis: Basis, seed: u64) -> Result<Self, BridgeError> {
        let layout = StabilizerLayout::from_circuit(circuit, basis)?;
        let dem = circuit.detector_error_model_with_options(false, true, false, 0.0, false, false)?;
        let table = ErrorTable::from_dem(&dem, &layout)?;
        let sampler = dem.compile_sampler_with_seed(seed);
        let num_detectors = sampler.num_detectors() as usize;
        let num_observables = circuit.num_observables() as usize;
        if num_detectors != layout.num_detectors() {
            return Err(BridgeError::Circuit(format!(
                "the detector error model has {num_detectors} detectors, the circuit {}",
                layout.num_detectors()
            )));
        }
        if sampler.num_errors() as usize != table.effects.len() {
            return Err(BridgeError::Circuit(format!(
                "the DEM sampler reports {} errors, the flattened model lists {}",
                sampler.num_errors(),
                table.effects.len()
            )));
        }
        if num_observables == 0 || num_observables > MAX_OBSERVABLES {
            return Err(BridgeError::Circuit(format!(
                "the circuit has {num_observables} observables; dense labels need 1 to {MAX_OBSERVABLES}"
            )));
        }
        if sampler.num_observables() as usize != num_observables {
            return Err(BridgeError::Circuit(format!(
                "the detector error model has {} observables, the circuit {num_observables}",
                sampler.num_observables()
            )));
        }
        let scratch = vec![0; table.num_rounds];
        Ok(Self { table, sampler, num_detectors, num_observables, scratch })
    }

    /// Rounds per shot, T, the final data-qubit round included.
    pub fn num_rounds(&self) -> usize {
        self.table.num_rounds
    }

    /// Observables per shot, O.
    pub fn num_observables(&self) -> usize {
        self.num_observables
    }

    /// Samples `shots` shots and labels every round of each.
    pub fn sample(&mut self, shots: usize) -> Result<LabeledShots, BridgeError> {
        let (dets, obs, errors) = self.sampler.sample_bit_packed(shots as u64);
        let detectors = PackedShots::from_bytes(dets, self.num_detectors)?;
        let observables = PackedShots::from_bytes(obs, self.num_observables)?;
        let errors = PackedShots::from_bytes(errors, self.table.effects.len())?;
        let o_count = self.num_observables;
        let mut round_labels = PackedShots::zeros(shots, self.table.num_rounds * o_count);
        for s in 0..shots {
            self.table.labels_into(errors.row(s), &mut self.scratch);
            for (t, &mask) in self.scratch.iter().enumerate() {
                let mut mask = mask;
                while mask != 0 {
                    round_labels.set(s, t * o_count + mask.trailing_zeros() as usize, true);
                    mask &= mask - 1;
                }
            }
        }
        Ok(LabeledShots { detectors, observables, round_labels })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::code::MemoryExperiment;
    use crate::noise::NoiseModel;
    use crate::sample::Sampler;

    fn si1000(d: usize, rounds: usize, p: f64) -> stim::Circuit {
        MemoryExperiment::new(d, rounds, Basis::Z).unwrap().noisy_circuit(&NoiseModel::Si1000 { p }).unwrap()
    }

    /// Per-bit means of two batches agree within 5 sigma of a pooled binomial.
    fn assert_rates_agree(a: &PackedShots, b: &PackedShots, what: &str) {
        let (na, nb) = (a.num_shots() as f64, b.num_shots() as f64);
        for k in 0..a.bits_per_shot() {
            let ca = (0..a.num_shots()).filter(|&s| a.get(s, k)).count() as f64;
            let cb = (0..b.num_shots()).filter(|&s| b.get(s, k)).count() as f64;
            let pooled = (ca + cb) / (na + nb);
            let sigma = (pooled * (1.0 - pooled) * (1.0 / na + 1.0 / nb)).sqrt();
            let diff = (ca / na - cb / nb).abs();
            assert!(
                diff <= 5.0 * sigma,
                "{what} {k}: DEM rate {} vs circuit rate {} ({sigma} sigma)",
                ca / na,
                cb / nb
            );
        }
    }

    /// The final round's label is the observable in every shot, and the DEM
    /// sampler's detection events and observable flips occur at the rates of
    /// the circuit's own sampler.
    #[test]
    fn final_label_is_the_observable_and_rates_match_the_circuit() {
        let shots = 2000;
        for (d, rounds) in [(3, 5), (5, 3)] {
            let circuit = si1000(d, rounds, 0.01);
            let mut sampler = LabeledSampler::new(&circuit, Basis::Z, 7).unwrap();
            assert_eq!(sampler.num_rounds(), rounds + 1);
            assert_eq!(sampler.num_observables(), 1);
            let got = sampler.sample(shots).unwrap();
            assert_eq!(got.round_labels.bits_per_shot(), rounds + 1);
            assert_eq!(got.detectors.num_shots(), shots);
            let last = rounds;
            let mismatches = (0..shots).filter(|&s| got.label(s, last, 0) != got.observables.get(s, 0)).count();
            assert_eq!(mismatches, 0, "d={d} r={rounds}");
            let flips = (0..shots).filter(|&s| got.observables.get(s, 0)).count();
            assert!(flips > 0, "d={d} r={rounds}: no observable flipped, the check above is vacuous");

            let reference = Sampler::new(&circuit).sample(shots, 11, 1).unwrap();
            assert_rates_agree(&got.detectors, &reference.detectors, "detector");
            assert_rates_agree(&got.observables, &reference.observables, "observable");
        }
    }

    /// The same seed gives the same shots and labels.
    #[test]
    fn labeled_sampling_is_seeded() {
        let circuit = si1000(3, 4, 0.01);
        let a = LabeledSampler::new(&circuit, Basis::Z, 3).unwrap().sample(300).unwrap();
        let b = LabeledSampler::new(&circuit, Basis::Z, 3).unwrap().sample(300).unwrap();
        let c = LabeledSampler::new(&circuit, Basis::Z, 4).unwrap().sample(300).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.detectors, c.detectors);
    }

    /// With loops flattened, the circuit's DEM still holds `shift_detectors`
    /// (from `SHIFT_COORDS`: coordinates only, 0 detectors); the table equals
    /// the one read from Stim's fully flattened model, which has none.
    #[test]
    fn table_matches_stims_flattening() {
        let circuit = si1000(3, 6, 0.01);
        let layout = StabilizerLayout::from_circuit(&circuit, Basis::Z).unwrap();
        let dem = circuit.detector_error_model_with_options(false, true, false, 0.0, false, false).unwrap();
        let flat = dem.flattened();
        let shifts = |m: &stim::DetectorErrorModel| {
            let is_shift = |item: &stim::DemItem| match item {
                stim::DemItem::Instruction(i) => i.r#type() == stim::DemInstructionType::ShiftDetectors,
                stim::DemItem::RepeatBlock(_) => false,
            };
            m.into_iter().filter(is_shift).count()
        };
        assert!(shifts(&dem) > 0);
        assert_eq!(shifts(&flat), 0);
        let table = ErrorTable::from_dem(&dem, &layout).unwrap();
        assert_eq!(table.effects, ErrorTable::from_dem(&flat, &layout).unwrap().effects);
        assert_eq!(table.effects.len(), dem.num_errors() as usize);
        // Every round has its errors, the last included.
        for t in 0..layout.num_rounds {
            assert!(table.effects.iter().any(|e| e.round == t), "no error in round {t}");
        }
    }

    /// Five detectors, one per round 0..4, all at the same stabilizer.
    fn one_detector_per_round() -> StabilizerLayout {
        let coords: BTreeMap<u64, Vec<f64>> = (0..5).map(|t| (t, vec![0.0, 0.0, t as f64])).collect();
        StabilizerLayout::from_coordinates(&coords, 5, Basis::Z).unwrap()
    }

    /// An error on detectors of rounds {2, 3} that flips L0 belongs to round 2
    /// and flips the labels of rounds 2 onward only.
    #[test]
    fn error_round_is_its_earliest_detector() {
        let dem: stim::DetectorErrorModel = "
            error(0.1) D3 D2 L0
            error(0.1) D0 D1
            error(0.1) L0
            error(0.1) D4 L0 L0
            shift_detectors 1
            error(0.1) D0 L0
        "
        .parse()
        .unwrap();
        let table = ErrorTable::from_dem(&dem, &one_detector_per_round()).unwrap();
        let effect = |round, observables| ErrorEffect { round, observables };
        assert_eq!(table.effects, vec![effect(2, 1), effect(0, 0), effect(0, 1), effect(4, 0), effect(1, 1)]);

        let mut labels = vec![0; 5];
        let fire = |errors: &[usize]| {
            let mut row = vec![0u8; 1];
            for &k in errors {
                row[k / 8] |= 1 << (k % 8);
            }
            row
        };
        table.labels_into(&fire(&[0]), &mut labels);
        assert_eq!(labels, vec![0, 0, 1, 1, 1]);
        table.labels_into(&fire(&[0, 1, 3]), &mut labels);
        assert_eq!(labels, vec![0, 0, 1, 1, 1]);
        // An error with no detector flips every round's label.
        table.labels_into(&fire(&[2]), &mut labels);
        assert_eq!(labels, vec![1, 1, 1, 1, 1]);
        // The shifted error sits at D1, round 1, and cancels error 0 from round 2.
        table.labels_into(&fire(&[0, 4]), &mut labels);
        assert_eq!(labels, vec![0, 1, 0, 0, 0]);
        table.labels_into(&fire(&[]), &mut labels);
        assert_eq!(labels, vec![0; 5]);
    }

    /// Error rows wider than a word: bits in the full words and in the tail are both read.
    #[test]
    fn labels_read_every_word_of_a_wide_error_row() {
        let layout = one_detector_per_round();
        let mut text = String::new();
        for k in 0..70 {
            let target = if k == 5 || k == 69 { format!("D{} L0", k % 5) } else { format!("D{}", k % 5) };
            text.push_str(&format!("error(0.1) {target}\n"));
        }
        let dem: stim::DetectorErrorModel = text.parse().unwrap();
        let table = ErrorTable::from_dem(&dem, &layout).unwrap();
        let mut row = vec![0u8; 9];
        let mut labels = vec![0; 5];
        row[69 / 8] |= 1 << (69 % 8);
        table.labels_into(&row, &mut labels);
        assert_eq!(labels, vec![0, 0, 0, 0, 1]);
        row[0] |= 1 << 5;
        table.labels_into(&row, &mut labels);
        assert_eq!(labels, vec![1, 1, 1, 1, 0]);
    }

    /// Intermediate labels carry information: in some shots an earlier
    /// round's label differs from the final one.
    #[test]
    fn intermediate_labels_differ_from_the_final_one() {
        let rounds = 10;
        let shots = 2000;
        let mut sampler = LabeledSampler::new(&si1000(3, rounds, 0.01), Basis::Z, 5).unwrap();
        let got = sampler.sample(shots).unwrap();
        let differing =
            (0..shots).filter(|&s| (0..rounds).any(|t| got.label(s, t, 0) != got.label(s, rounds, 0))).count();
        let first_round_ones = (0..shots).filter(|&s| got.label(s, 0, 0)).count();
        let final_ones = (0..shots).filter(|&s| got.label(s, rounds, 0)).count();
        assert!(
            differing > shots / 10,
            "only {differing} of {shots} shots have an intermediate label unlike the final"
        );
        // Flips accumulate over rounds, so the first round's label is set less often than the last's.
        assert!(first_round_ones < final_ones, "label_0 set in {first_round_ones} shots, label_T-1 in {final_ones}");
    }

    /// A noiseless circuit has an empty error table: nothing fires, every label is 0.
    #[test]
    fn noiseless_circuits_label_every_round_zero() {
        let circuit = MemoryExperiment::new(3, 3, Basis::Z).unwrap().ideal_circuit().unwrap();
        let mut sampler = LabeledSampler::new(&circuit, Basis::Z, 1).unwrap();
        assert!(sampler.table.effects.is_empty());
        let got = sampler.sample(50).unwrap();
        assert_eq!(got.round_labels, PackedShots::zeros(50, 4));
        assert_eq!(got.detectors.num_shots(), 50);
        assert_eq!(got.detectors.hits(7).count(), 0);
    }

    #[test]
    fn circuits_without_round_coordinates_are_rejected() {
        let circuit: stim::Circuit = "X_ERROR(0.1) 0\nM 0\nDETECTOR rec[-1]\n".parse().unwrap();
        let err = LabeledSampler::new(&circuit, Basis::Z, 0).err().expect("no coordinates");
        assert!(err.to_string().contains("needs (x, y, t)"), "{err}");
    }
}
