//! Learning a detector error model's probabilities from detection events
//! alone: the structure (which mechanisms exist) comes from a prior DEM, the
//! probabilities from the shots.
//!
//! # Method
//! Error mechanisms are independent, so a detector's event is the XOR of the
//! mechanisms that flip it. For a set `U` of detectors, write
//! `L(U) = −ln E[(−1)^(Σ_{i∈U} x_i)]` and `y_m = −ln(1 − 2 p_m)`; then
//! `L(U) = Σ y_m` over the mechanisms that flip an odd number of `U`'s
//! detectors. Inverting that over the subsets of a set `S` (Möbius inversion)
//! gives the total weight of the mechanisms that flip *all* of `S`:
//!
//! `C(S) = Σ_{m ⊇ S} y_m = 2^{1−|S|} Σ_{∅≠U⊆S} (−1)^{|U|+1} L(U)`.
//!
//! For a pair this is exactly the two-point formula of Google's surface-code
//! experiments (Nature 2021 supplement): `1 − 2 p_ij = e^{−C({i,j})}`
//! = `sqrt(1 − 4(⟨x_i x_j⟩ − ⟨x_i⟩⟨x_j⟩) / (1 − 2⟨x_i⟩ − 2⟨x_j⟩ + 4⟨x_i x_j⟩))`;
//! for one detector it is the boundary relation `1 − 2⟨x_i⟩ = Π_{m∋i} (1 − 2 p_m)`.
//!
//! **Hyperedges.** A mechanism is identified by the set `D` of detectors it
//! flips (the symmetric difference of its `^` components). Every set `D` of
//! the prior gets its own higher-order correlator `C(D)`, so a Y error
//! `D1 D2 ^ D3 D4` is measured by the 4-point correlator of {1, 2, 3, 4}, not
//! guessed from its pairs. The sets are then solved from the largest down:
//! `y_D = C(D) − Σ_{D' ⊋ D} y_{D'}`, which removes from an edge's pair
//! correlator the hyperedges that also flip both its detectors, and from a
//! boundary the edges and hyperedges through its detector. The system is
//! triangular and exact in expectation; no fit is involved.
//!
//! Mechanisms with the same detector set (the same symptom, perhaps another
//! decomposition or another observable) cannot be told apart by detection
//! events: their set's total is shared in the ratio of their prior weights.
//!
//! **What is kept from the prior.** A set keeps its prior total (and its
//! mechanisms their prior probabilities) when its detectors fired all together
//! in fewer than [`LearnOptions::min_coincidences`] shots, when it has more
//! than [`MAX_ORDER`] detectors or none, when a parity it needs is not below
//! 1/2 (a logarithm of zero or less), or when its estimate is not positive.
//! Larger sets are solved first, so a kept hyperedge enters its subsets'
//! equations with its prior weight.
//!
//! Counting is bit-parallel over shots ([`parity`]), for the subsets of the
//! prior's sets only.

mod mechanisms;
pub mod parity;

use std::collections::HashMap;
use std::fmt;

pub use mechanisms::{FlatDem, Mechanism};

use crate::error::BridgeError;
use crate::layout::DetectorId;
use crate::shots::PackedShots;

/// Largest detector set estimated from its own correlator (it needs the
/// parities of all `2^MAX_ORDER − 1` subsets).
pub const MAX_ORDER: usize = 6;

/// How the estimate is made.
#[derive(Clone, Debug)]
pub struct LearnOptions {
    /// Fewest shots in which all of a set's detectors fired for it to be
    /// estimated (below that the estimate is mostly noise).
    pub min_coincidences: u64,
    /// Counting threads (0: one per core).
    pub threads: usize,
}

/// Default of [`LearnOptions::min_coincidences`]: 20 coincidences bound a
/// Poisson count's relative error near 22%.
pub const MIN_COINCIDENCES: u64 = 20;

impl Default for LearnOptions {
    fn default() -> Self {
        Self { min_coincidences: MIN_COINCIDENCES, threads: 0 }
    }
}

/// Why a mechanism kept its prior probability.
#[derive(Clone, Debug, PartialEq)]
pub enum Kept {
    /// It flips no detector (only observables): detection events say nothing of it.
    NoDetectors,
    /// It flips more than [`MAX_ORDER`] detectors.
    TooManyDetectors(usize),
    /// Its detectors fired together in this many shots only.
    TooFewCoincidences(u64),
    /// A parity it needs was 1/2 or more, so the log-parity is undefined.
    ParityNotBelowHalf,
    /// The estimate came out at this probability, zero or negative.
    EstimateNotPositive(f64),
}

impl fmt::Display for Kept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kept::NoDetectors => write!(f, "flips no detector"),
            Kept::TooManyDetectors(n) => write!(f, "flips {n} detectors (at most {MAX_ORDER} are estimated)"),
            Kept::TooFewCoincidences(n) => write!(f, "its detectors fired together in {n} shots only"),
            Kept::ParityNotBelowHalf => write!(f, "a parity it needs is not below 1/2"),
            Kept::EstimateNotPositive(p) => write!(f, "estimate {p:.3e} is not positive"),
        }
    }
}

/// One mechanism of the learned DEM.
#[derive(Clone, Debug, PartialEq)]
pub struct LearnedMechanism {
    /// The mechanism as the prior has it.
    pub mechanism: Mechanism,
    /// Its probability in the learned DEM.
    pub learned: f64,
    /// Why it kept its prior probability; `None` when it was estimated.
    pub kept: Option<Kept>,
}

/// A DEM learned from shots.
#[derive(Clone, Debug)]
pub struct LearnedDem {
    /// Every mechanism of the prior, in its order.
    pub mechanisms: Vec<LearnedMechanism>,
    /// Shots learned from.
    pub num_shots: usize,
    /// The prior's text with the learned probabilities.
    text: String,
}

impl LearnedDem {
    /// The learned DEM in Stim's text format.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The learned DEM.
    pub fn dem(&self) -> Result<stim::DetectorErrorModel, BridgeError> {
        Ok(self.text.parse()?)
    }

    /// Mechanisms estimated from the shots.
    pub fn num_estimated(&self) -> usize {
        self.mechanisms.iter().filter(|m| m.kept.is_none()).count()
    }

    /// Mechanisms that kept their prior probability, and why.
    pub fn kept(&self) -> impl Iterator<Item = (&Mechanism, &Kept)> {
        self.mechanisms.iter().filter_map(|m| m.kept.as_ref().map(|k| (&m.mechanism, k)))
    }
}

/// Mechanisms sharing one detector set.
struct Group {
    /// The detectors, ascending.
    detectors: Vec<DetectorId>,
    /// Indices of its mechanisms in the prior.
    members: Vec<usize>,
    /// Indices (into the subset list) of its non-empty subsets, with their sizes.
    subsets: Vec<(usize, usize)>,
}

/// Re-estimates every mechanism of `prior` from `events` (one row of
/// `prior.num_detectors()` bits per shot). `progress(n)` is called as each
/// block of `n` shots has been counted.
pub fn learn_dem(
    prior: &stim::DetectorErrorModel,
    events: &PackedShots,
    options: &LearnOptions,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<LearnedDem, BridgeError> {
    let flat = FlatDem::new(prior)?;
    if events.bits_per_shot() != flat.num_detectors {
        return Err(BridgeError::Format(format!(
            "the shots have {} detectors but the prior DEM has {}",
            events.bits_per_shot(),
            flat.num_detectors
        )));
    }
    if events.num_shots() == 0 {
        return Err(BridgeError::Format("there are no shots to learn from".into()));
    }
    let (groups, subsets) = group_mechanisms(&flat.mechanisms);
    let counts = parity::count_subsets(events, &subsets, options.threads, progress);
    let n = events.num_shots() as f64;
    let log_parity: Vec<Option<f64>> = counts
        .odd
        .iter()
        .map(|&odd| {
            let parity = 1.0 - 2.0 * odd as f64 / n;
            (parity > 0.0).then(|| -parity.ln())
        })
        .collect();

    let prior_weight = |k: usize| weight(flat.mechanisms[k].probability);
    let mut by_detector: Vec<Vec<usize>> = vec![Vec::new(); flat.num_detectors];
    for (g, group) in groups.iter().enumerate() {
        for &d in &group.detectors {
            by_detector[d].push(g);
        }
    }
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.sort_by_key(|&g| std::cmp::Reverse(groups[g].detectors.len()));
    let mut total = vec![0.0; groups.len()];
    let mut kept: Vec<Option<Kept>> = vec![None; groups.len()];
    for g in order {
        let group = &groups[g];
        let size = group.detectors.len();
        let estimate = if size == 0 {
            Err(Kept::NoDetectors)
        } else if size > MAX_ORDER {
            Err(Kept::TooManyDetectors(size))
        } else {
            let (whole, _) = *group.subsets.last().expect("a set is its own last subset");
            let together = counts.all[whole];
            if together < options.min_coincidences {
                Err(Kept::TooFewCoincidences(together))
            } else {
                let mut c = 0.0;
                let mut defined = true;
                for &(k, len) in &group.subsets {
                    match log_parity[k] {
                        Some(l) => c += if len % 2 == 1 { l } else { -l },
                        None => defined = false,
                    }
                }
                let supersets: f64 = by_detector[group.detectors[0]]
                    .iter()
                    .filter(|&&h| groups[h].detectors.len() > size && is_subset(&group.detectors, &groups[h].detectors))
                    .map(|&h| total[h])
                    .sum();
                let y = c / f64::from(1u32 << (size - 1)) - supersets;
                if !defined {
                    Err(Kept::ParityNotBelowHalf)
                } else if y > 0.0 && y.is_finite() {
                    Ok(y)
                } else {
                    Err(Kept::EstimateNotPositive(probability(y)))
                }
            }
        };
        match estimate {
            Ok(y) => total[g] = y,
            Err(why) => {
                total[g] = group.members.iter().map(|&k| prior_weight(k)).sum();
                kept[g] = Some(why);
            }
        }
    }

    let mut learned = vec![0.0; flat.mechanisms.len()];
    let mut why_kept: Vec<Option<Kept>> = vec![None; flat.mechanisms.len()];
    for (g, group) in groups.iter().enumerate() {
        let prior_total: f64 = group.members.iter().map(|&k| prior_weight(k)).sum();
        for &k in &group.members {
            learned[k] = match &kept[g] {
                Some(_) => flat.mechanisms[k].probability,
                None if prior_total > 0.0 => probability(total[g] * prior_weight(k) / prior_total),
                None => probability(total[g] / group.members.len() as f64),
            };
            why_kept[k] = kept[g].clone();
        }
    }
    let text = flat.with_probabilities(&learned);
    let mechanisms = flat
        .mechanisms
        .into_iter()
        .zip(learned.into_iter().zip(why_kept))
        .map(|(mechanism, (learned, kept))| LearnedMechanism { mechanism, learned, kept })
        .collect();
    Ok(LearnedDem { mechanisms, num_shots: events.num_shots(), text })
}

/// Groups mechanisms by detector set, and lists the distinct non-empty
/// subsets of the sets of at most [`MAX_ORDER`] detectors. A group's subsets
/// end with the set itself.
fn group_mechanisms(mechanisms: &[Mechanism]) -> (Vec<Group>, Vec<Vec<DetectorId>>) {
    let mut groups: Vec<Group> = Vec::new();
    let mut group_of: HashMap<&[DetectorId], usize> = HashMap::new();
    for (k, m) in mechanisms.iter().enumerate() {
        let g = *group_of.entry(&m.detectors).or_insert_with(|| {
            groups.push(Group { detectors: m.detectors.clone(), members: Vec::new(), subsets: Vec::new() });
            groups.len() - 1
        });
        groups[g].members.push(k);
    }
    let mut subsets: Vec<Vec<DetectorId>> = Vec::new();
    let mut subset_of: HashMap<Vec<DetectorId>, usize> = HashMap::new();
    for group in groups.iter_mut().filter(|g| g.detectors.len() <= MAX_ORDER) {
        let size = group.detectors.len();
        for mask in 1..(1usize << size) {
            let subset: Vec<DetectorId> =
                group.detectors.iter().enumerate().filter(|(i, _)| mask >> i & 1 == 1).map(|(_, &d)| d).collect();
            let len = subset.len();
            let id = *subset_of.entry(subset.clone()).or_insert_with(|| {
                subsets.push(subset);
                subsets.len() - 1
            });
            group.subsets.push((id, len));
        }
    }
    (groups, subsets)
}

/// Whether ascending `small` is contained in ascending `big`.
fn is_subset(small: &[DetectorId], big: &[DetectorId]) -> bool {
    let mut it = big.iter();
    small.iter().all(|d| it.any(|b| b == d))
}

/// `y = −ln(1 − 2p)`: independent mechanisms' weights add.
fn weight(p: f64) -> f64 {
    -(-2.0 * p).ln_1p()
}

/// The probability of weight `y`, `(1 − e^{−y}) / 2`.
fn probability(y: f64) -> f64 {
    -0.5 * (-y).exp_m1()
}

/// One detector set's probability in two DEMs.
#[derive(Clone, Debug, PartialEq)]
pub struct ComparedSet {
    /// The detectors, ascending.
    pub detectors: Vec<DetectorId>,
    /// The combined probability of the reference's mechanisms with this set.
    pub reference: f64,
    /// The same in the candidate (0 when it has none).
    pub candidate: f64,
}

impl ComparedSet {
    /// `|candidate − reference| / reference`.
    pub fn relative_error(&self) -> f64 {
        (self.candidate - self.reference).abs() / self.reference
    }
}

/// A candidate DEM's probabilities against a reference's, set by set.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// The reference's detector sets of probability at least the threshold.
    pub sets: Vec<ComparedSet>,
}

impl Comparison {
    /// Compares, for each detector set whose combined probability in
    /// `reference` is at least `min_probability`, the combined probabilities.
    pub fn new(
        reference: &stim::DetectorErrorModel,
        candidate: &stim::DetectorErrorModel,
        min_probability: f64,
    ) -> Result<Self, BridgeError> {
        let totals = |dem: &stim::DetectorErrorModel| -> Result<HashMap<Vec<DetectorId>, f64>, BridgeError> {
            let mut t = HashMap::new();
            for m in FlatDem::new(dem)?.mechanisms {
                *t.entry(m.detectors).or_insert(0.0) += weight(m.probability);
            }
            Ok(t)
        };
        let (reference, candidate) = (totals(reference)?, totals(candidate)?);
        let mut sets: Vec<ComparedSet> = reference
            .iter()
            .map(|(d, &y)| ComparedSet {
                detectors: d.clone(),
                reference: probability(y),
                candidate: probability(candidate.get(d).copied().unwrap_or(0.0)),
            })
            .filter(|s| s.reference >= min_probability && !s.detectors.is_empty())
            .collect();
        sets.sort_by(|a, b| a.detectors.cmp(&b.detectors));
        Ok(Self { sets })
    }

    /// Keeps the sets with at most `n` detectors (2: the graph-like ones).
    pub fn with_at_most(mut self, n: usize) -> Self {
        self.sets.retain(|s| s.detectors.len() <= n);
        self
    }

    /// The median relative error (0 when there is no set).
    pub fn median_relative_error(&self) -> f64 {
        let mut e: Vec<f64> = self.sets.iter().map(ComparedSet::relative_error).collect();
        e.sort_by(f64::total_cmp);
        match e.len() {
            0 => 0.0,
            n if n % 2 == 1 => e[n / 2],
            n => (e[n / 2 - 1] + e[n / 2]) / 2.0,
        }
    }

    /// The set with the largest relative error.
    pub fn worst(&self) -> Option<&ComparedSet> {
        self.sets.iter().max_by(|a, b| a.relative_error().total_cmp(&b.relative_error()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Samples a DEM's own shots.
    fn dem_shots(dem: &stim::DetectorErrorModel, shots: usize, seed: u64) -> PackedShots {
        let mut sampler = dem.compile_sampler_with_seed(seed);
        let (dets, _, _) = sampler.sample_bit_packed(shots as u64);
        PackedShots::from_bytes(dets, dem.num_detectors() as usize).unwrap()
    }

    #[test]
    fn a_toy_model_with_a_hyperedge_is_recovered() {
        let truth: stim::DetectorErrorModel = "error(0.02) D0\nerror(0.03) D0 D1\nerror(0.01) D1 D2 ^ D3\n\
             error(0.015) D2 D3\nerror(0.04) D3\nerror(0.005) D1 ^ D3 L0\nerror(0.002) L0\n"
            .parse()
            .unwrap();
        let prior: stim::DetectorErrorModel = truth.to_string().replace("error(0.0", "error(0.00").parse().unwrap();
        let shots = dem_shots(&truth, 400_000, 5);
        let learned = learn_dem(&prior, &shots, &LearnOptions::default(), &|_| {}).unwrap();
        let got: Vec<f64> = learned.mechanisms.iter().map(|m| m.learned).collect();
        let want = [0.02, 0.03, 0.01, 0.015, 0.04, 0.005, 0.0002];
        for (k, (g, w)) in got.iter().zip(want).enumerate() {
            let tolerance = if k == 6 { 0.0 } else { 0.12 * w };
            assert!((g - w).abs() <= tolerance, "mechanism {k}: learned {g}, true {w}");
        }
        assert_eq!(learned.kept().map(|(_, why)| why.clone()).collect::<Vec<_>>(), vec![Kept::NoDetectors]);
        assert!(learned.text().contains("L0\nerror(0.0002) L0"), "{}", learned.text());
    }

    #[test]
    fn a_set_seen_too_rarely_keeps_its_prior() {
        let prior: stim::DetectorErrorModel = "error(0.05) D0 D1\nerror(0.001) D0 D1 D2\n".parse().unwrap();
        let shots = dem_shots(&prior, 2_000, 1);
        let learned = learn_dem(&prior, &shots, &LearnOptions::default(), &|_| {}).unwrap();
        assert!(matches!(learned.mechanisms[1].kept, Some(Kept::TooFewCoincidences(n)) if n < 20));
        assert_eq!(learned.mechanisms[1].learned, 0.001);
        assert!(learned.mechanisms[0].kept.is_none());
        assert!((learned.mechanisms[0].learned - 0.05).abs() < 0.015, "{:?}", learned.mechanisms[0]);
    }

    #[test]
    fn shots_of_the_wrong_width_are_refused() {
        let prior: stim::DetectorErrorModel = "error(0.05) D0 D1\n".parse().unwrap();
        let err = learn_dem(&prior, &PackedShots::zeros(10, 3), &LearnOptions::default(), &|_| {}).unwrap_err();
        assert!(err.to_string().contains("3 detectors but the prior DEM has 2"), "{err}");
        let err = learn_dem(&prior, &PackedShots::zeros(0, 2), &LearnOptions::default(), &|_| {}).unwrap_err();
        assert!(err.to_string().contains("no shots"), "{err}");
    }

    #[test]
    fn subsets_and_supersets() {
        assert!(is_subset(&[1, 3], &[0, 1, 2, 3]));
        assert!(!is_subset(&[1, 4], &[0, 1, 2, 3]));
        assert!((probability(weight(0.123)) - 0.123).abs() < 1e-15);
    }
}
