//! The stabilizer layout: which stabilizer and round each detector belongs
//! to ([`StabilizerLayout`]), and the per-round wire layout that streams,
//! the neural engine and the FPGA bridge share ([`RoundLayout`]).
//!
//! The layout is read from detector coordinates `(x, y, t)`, so Stim's
//! generated circuits, a user's `.stim` file and a hardware experiment are
//! handled alike. Stabilizers are identified by their `(x, y)` position and
//! rounds by `t`. The last round is the one built from the final data-qubit
//! measurements: only stabilizers of the memory basis appear in it, which is
//! how their type is told apart from the other basis.

use std::collections::BTreeMap;

use crate::code::Basis;
use crate::error::BridgeError;

/// Index of a detector in a circuit (Stim's `D<k>`).
pub type DetectorId = usize;
/// Index of a stabilizer in a [`StabilizerLayout`].
pub type StabilizerId = usize;
/// Index of a round: 0 is the first stabilizer round; the last is the final data-qubit round.
pub type Round = usize;

/// The Pauli type of a stabilizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum StabilizerType {
    /// A product of X on its data qubits.
    X,
    /// A product of Z on its data qubits.
    Z,
}

impl StabilizerType {
    /// The type a memory experiment in `basis` measures in its first and
    /// final rounds: its detectors exist from round 0.
    pub fn of_memory(basis: Basis) -> Self {
        match basis {
            Basis::X => StabilizerType::X,
            Basis::Z => StabilizerType::Z,
        }
    }

    /// The other type.
    pub fn other(self) -> Self {
        match self {
            StabilizerType::X => StabilizerType::Z,
            StabilizerType::Z => StabilizerType::X,
        }
    }
}

/// One stabilizer of the code.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stabilizer {
    /// x coordinate of its detectors.
    pub x: f64,
    /// y coordinate of its detectors.
    pub y: f64,
    /// Its Pauli type.
    pub kind: StabilizerType,
}

/// Where one detector sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DetectorSite {
    /// The stabilizer it compares.
    pub stabilizer: StabilizerId,
    /// The round it belongs to.
    pub round: Round,
}

/// Detector → (stabilizer, round), and the stabilizers themselves.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StabilizerLayout {
    /// Memory basis of the experiment.
    pub basis: Basis,
    /// Stabilizers sorted by (y, x).
    pub stabilizers: Vec<Stabilizer>,
    /// Indexed by [`DetectorId`].
    pub detectors: Vec<DetectorSite>,
    /// Number of rounds, the final data-qubit round included.
    pub num_rounds: usize,
}

impl StabilizerLayout {
    /// Reads the layout from a circuit's detector coordinates.
    pub fn from_circuit(circuit: &stim::Circuit, basis: Basis) -> Result<Self, BridgeError> {
        let coords = circuit.get_detector_coordinates(None)?;
        Self::from_coordinates(&coords, circuit.num_detectors() as usize, basis)
    }

    /// Builds the layout from `detector → coordinates`.
    pub fn from_coordinates(
        coords: &BTreeMap<u64, Vec<f64>>,
        num_detectors: usize,
        basis: Basis,
    ) -> Result<Self, BridgeError> {
        if num_detectors == 0 {
            return Err(BridgeError::Circuit("the circuit has no detectors".into()));
        }
        let mut points = Vec::with_capacity(num_detectors);
        for d in 0..num_detectors {
            let c = coords.get(&(d as u64)).map(Vec::as_slice).unwrap_or(&[]);
            if c.len() < 3 {
                return Err(BridgeError::Circuit(format!(
                    "detector D{d} has coordinates {c:?}; qecd needs (x, y, t) on every detector \
                     to build the stabilizer layout (add them with DETECTOR(x, y, t) ...)"
                )));
            }
            let t = c[2];
            if t < 0.0 || t.fract() != 0.0 {
                return Err(BridgeError::Circuit(format!(
                    "detector D{d} has time coordinate {t}; rounds must be whole numbers from 0"
                )));
            }
            points.push((c[0], c[1], t as usize));
        }
        let last_round = points.iter().map(|p| p.2).max().expect("at least one detector");
        let key = |x: f64, y: f64| (y.to_bits(), x.to_bits());
        let mut positions: BTreeMap<(u64, u64), (f64, f64, bool)> = BTreeMap::new();
        for &(x, y, t) in &points {
            let entry = positions.entry(key(x, y)).or_insert((x, y, false));
            entry.2 |= t == last_round;
        }
        let mut ordered: Vec<(f64, f64, bool)> = positions.values().copied().collect();
        ordered.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.total_cmp(&b.0)));
        let own = StabilizerType::of_memory(basis);
        let other = own.other();
        let stabilizers: Vec<Stabilizer> = ordered
            .iter()
            .map(|&(x, y, in_final)| Stabilizer { x, y, kind: if in_final { own } else { other } })
            .collect();
        let index: BTreeMap<(u64, u64), StabilizerId> =
            ordered.iter().enumerate().map(|(i, &(x, y, _))| (key(x, y), i)).collect();
        let mut seen = std::collections::HashSet::new();
        let mut detectors = Vec::with_capacity(num_detectors);
        for (d, &(x, y, t)) in points.iter().enumerate() {
            let stabilizer = index[&key(x, y)];
            if !seen.insert((stabilizer, t)) {
                return Err(BridgeError::Circuit(format!(
                    "detector D{d} repeats the coordinates ({x}, {y}, {t}) of an earlier detector"
                )));
            }
            detectors.push(DetectorSite { stabilizer, round: t });
        }
        Ok(Self { basis, stabilizers, detectors, num_rounds: last_round + 1 })
    }

    /// Number of stabilizers.
    pub fn num_stabilizers(&self) -> usize {
        self.stabilizers.len()
    }

    /// Number of detectors.
    pub fn num_detectors(&self) -> usize {
        self.detectors.len()
    }

    /// The detectors of one round, as (detector, stabilizer) pairs in detector order.
    pub fn round(&self, round: Round) -> impl Iterator<Item = (DetectorId, StabilizerId)> + '_ {
        self.detectors.iter().enumerate().filter(move |(_, s)| s.round == round).map(|(d, s)| (d, s.stabilizer))
    }

    /// The code distance implied by the stabilizer count of a rotated surface
    /// code: `S = d² − 1`, or `(d² − 1) / 2` when the circuit has detectors for
    /// one type only (a one-round memory experiment, where the other type is
    /// never compared with anything).
    pub fn distance(&self) -> Option<usize> {
        let one_type = self.stabilizers.windows(2).all(|w| w[0].kind == w[1].kind);
        let full = if one_type { 2 * self.stabilizers.len() } else { self.stabilizers.len() };
        let d = ((full + 1) as f64).sqrt().round() as usize;
        (d * d == full + 1).then_some(d)
    }
}

/// How a shot travels round by round: the one definition of the per-round
/// wire layout that the service's sessions, the FPGA bridge, the neural
/// engine's features and the clients all use.
///
/// Round `t`'s event bits are the detectors of round `t`, one per stabilizer
/// that has a detector in that round, in stabilizer order ((y, x), as
/// [`StabilizerLayout`] sorts them). So round 0 and the final round carry
/// the memory basis's stabilizers, and the rounds between carry all of them.
/// Bits are packed LSB-first when they travel.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundLayout {
    basis: Basis,
    stabilizers: Vec<Stabilizer>,
    /// `[round][bit]`: the circuit detector of each event bit.
    detectors: Vec<Vec<DetectorId>>,
    /// `[round][bit]`: the stabilizer of each event bit.
    owners: Vec<Vec<StabilizerId>>,
    num_detectors: usize,
}

impl RoundLayout {
    /// The round layout of a circuit, from its detector coordinates.
    pub fn new(layout: &StabilizerLayout) -> Self {
        let mut cells: Vec<Vec<(StabilizerId, DetectorId)>> = vec![Vec::new(); layout.num_rounds];
        for (det, site) in layout.detectors.iter().enumerate() {
            cells[site.round].push((site.stabilizer, det));
        }
        cells.iter_mut().for_each(|round| round.sort_unstable());
        Self {
            basis: layout.basis,
            stabilizers: layout.stabilizers.clone(),
            detectors: cells.iter().map(|r| r.iter().map(|c| c.1).collect()).collect(),
            owners: cells.iter().map(|r| r.iter().map(|c| c.0).collect()).collect(),
            num_detectors: layout.num_detectors(),
        }
    }

    /// The memory basis.
    pub fn basis(&self) -> Basis {
        self.basis
    }

    /// The stabilizers, in the order of each round's bits.
    pub fn stabilizers(&self) -> &[Stabilizer] {
        &self.stabilizers
    }

    /// Rounds per shot, the final (data-qubit) round included.
    pub fn num_rounds(&self) -> usize {
        self.detectors.len()
    }

    /// Detectors per shot.
    pub fn num_detectors(&self) -> usize {
        self.num_detectors
    }

    /// Event bits of round `t`.
    pub fn events_in(&self, t: Round) -> usize {
        self.detectors[t].len()
    }

    /// The circuit detector of each event bit of round `t`.
    pub fn detectors(&self, t: Round) -> &[DetectorId] {
        &self.detectors[t]
    }

    /// The stabilizer of each event bit of round `t`.
    pub fn stabilizers_of(&self, t: Round) -> &[StabilizerId] {
        &self.owners[t]
    }

    /// A shot's events, round by round, as they travel (unpacked).
    pub fn split(&self, events: &crate::PackedShots, shot: usize) -> Vec<Vec<bool>> {
        self.detectors.iter().map(|round| round.iter().map(|&d| events.get(shot, d)).collect()).collect()
    }

    /// Sets, in a shot's b8 detection events (`out`, circuit order), the
    /// detectors whose bits are set in round `t`'s packed `bits`.
    pub fn scatter(&self, t: Round, bits: &[u8], out: &mut [u8]) {
        for det in self.fired(t, bits) {
            out[det / 8] |= 1 << (det % 8);
        }
    }

    /// The circuit detectors of round `t` whose bits are set in its packed `bits`.
    pub fn fired<'a>(&'a self, t: Round, bits: &'a [u8]) -> impl Iterator<Item = DetectorId> + 'a {
        self.detectors[t].iter().enumerate().filter(|&(k, _)| crate::shots::packed_bit(bits, k)).map(|(_, &d)| d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::code::MemoryExperiment;

    /// A one-round memory experiment has detectors for one type only; its
    /// distance is still read right (at d=7 its 24 stabilizers are d=5's count).
    #[test]
    fn one_round_circuits_know_their_distance() {
        for d in [3, 5, 7, 9] {
            let circuit = MemoryExperiment::new(d, 1, Basis::Z).unwrap().ideal_circuit().unwrap();
            let layout = StabilizerLayout::from_circuit(&circuit, Basis::Z).unwrap();
            assert_eq!(layout.num_stabilizers(), (d * d - 1) / 2);
            assert_eq!(layout.distance(), Some(d));
        }
    }

    #[test]
    fn generated_circuit_layout() {
        for (d, r, basis) in [(3, 2, Basis::Z), (5, 4, Basis::X), (7, 7, Basis::Z)] {
            let circuit = MemoryExperiment::new(d, r, basis).unwrap().ideal_circuit().unwrap();
            let layout = StabilizerLayout::from_circuit(&circuit, basis).unwrap();
            assert_eq!(layout.num_stabilizers(), d * d - 1);
            assert_eq!(layout.distance(), Some(d));
            assert_eq!(layout.num_rounds, r + 1);
            let half = (d * d - 1) / 2;
            let own = layout
                .stabilizers
                .iter()
                .filter(|s| s.kind == if basis == Basis::Z { StabilizerType::Z } else { StabilizerType::X })
                .count();
            assert_eq!(own, half);
            // First and final rounds hold only the memory-basis stabilizers; the middle ones hold all.
            assert_eq!(layout.round(0).count(), half);
            assert_eq!(layout.round(r).count(), half);
            for t in 1..r {
                assert_eq!(layout.round(t).count(), d * d - 1);
            }
            for (_, s) in layout.round(r) {
                assert_eq!(layout.stabilizers[s].kind == StabilizerType::Z, basis == Basis::Z);
            }
        }
    }

    /// With a single round, the other basis's stabilizers never have a
    /// detector, so the layout holds only the memory-basis half.
    #[test]
    fn single_round_layout_holds_the_memory_basis_half() {
        let circuit = MemoryExperiment::new(3, 1, Basis::Z).unwrap().ideal_circuit().unwrap();
        let layout = StabilizerLayout::from_circuit(&circuit, Basis::Z).unwrap();
        assert_eq!(layout.num_stabilizers(), 4);
        assert!(layout.stabilizers.iter().all(|s| s.kind == StabilizerType::Z));
        assert_eq!(layout.num_rounds, 2);
    }

    #[test]
    fn round_layout_splits_and_scatters_shots_in_stabilizer_order() {
        let (d, r) = (3, 3);
        let circuit = MemoryExperiment::new(d, r, Basis::Z).unwrap().ideal_circuit().unwrap();
        let layout = StabilizerLayout::from_circuit(&circuit, Basis::Z).unwrap();
        let rounds = RoundLayout::new(&layout);
        assert_eq!((rounds.num_rounds(), rounds.num_detectors()), (r + 1, layout.num_detectors()));
        let half = (d * d - 1) / 2;
        let counts: Vec<usize> = (0..=r).map(|t| rounds.events_in(t)).collect();
        assert_eq!(counts, vec![half, d * d - 1, d * d - 1, half]);
        for t in 0..=r {
            let owners = rounds.stabilizers_of(t);
            assert!(owners.windows(2).all(|w| w[0] < w[1]), "round {t} is in stabilizer order");
            for (&det, &s) in rounds.detectors(t).iter().zip(owners) {
                assert_eq!(layout.detectors[det], DetectorSite { stabilizer: s, round: t });
            }
        }
        // Every detector travels exactly once, and scatter inverts split.
        let mut shots = crate::PackedShots::zeros(1, layout.num_detectors());
        for det in [0, 5, 11, layout.num_detectors() - 1] {
            shots.set(0, det, true);
        }
        let mut back = vec![0u8; layout.num_detectors().div_ceil(8)];
        for (t, bits) in rounds.split(&shots, 0).iter().enumerate() {
            rounds.scatter(t, &crate::shots::pack_bits(bits), &mut back);
        }
        assert_eq!(back, shots.row(0));
    }

    #[test]
    fn circuit_without_coordinates_is_rejected() {
        let circuit: stim::Circuit = "X_ERROR(0.1) 0\nM 0\nDETECTOR rec[-1]\n".parse().unwrap();
        let err = StabilizerLayout::from_circuit(&circuit, Basis::Z).unwrap_err();
        assert!(err.to_string().contains("needs (x, y, t)"), "{err}");
        let circuit: stim::Circuit = "M 0\nDETECTOR(1, 2) rec[-1]\n".parse().unwrap();
        assert!(StabilizerLayout::from_circuit(&circuit, Basis::Z).is_err());
        let circuit: stim::Circuit = "M 0 1\nDETECTOR(1, 2, 0) rec[-1]\nDETECTOR(1, 2, 0) rec[-2]\n".parse().unwrap();
        let err = StabilizerLayout::from_circuit(&circuit, Basis::Z).unwrap_err();
        assert!(err.to_string().contains("repeats the coordinates"), "{err}");
    }
}
