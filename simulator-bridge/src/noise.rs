//! Circuit-level noise models, applied moment by moment to a noiseless circuit.
//!
//! qecd applies its own noise rather than the `stim` crate's presets: that
//! crate's `Si1000` gives a qubit waiting through a measurement or reset moment
//! only the ordinary idle rate p/10, whereas SI1000 (Gidney, Newman, Fowler &
//! Broughton, arXiv:2108.10457) gives it an extra DEPOLARIZE1(2p), its
//! dominant error. The rules follow the paper's reference implementation:
//!
//! | operation | SI1000(p) | uniform depolarizing(p) |
//! |---|---|---|
//! | two-qubit Clifford | DEPOLARIZE2(p) after | DEPOLARIZE2(p) after |
//! | one-qubit Clifford | DEPOLARIZE1(p/10) after | DEPOLARIZE1(p) after |
//! | reset | X_ERROR(2p) after (Z_ERROR for RX) | flip p after |
//! | measurement | X_ERROR(5p) before (Z_ERROR for MX) | flip p before |
//! | qubit untouched in a moment | DEPOLARIZE1(p/10) | DEPOLARIZE1(p) |
//! | qubit not measured or reset in a moment that measures or resets | DEPOLARIZE1(2p), in addition | — |
//!
//! A moment is the span between two `TICK`s. A `REPEAT` block is noised as a
//! circuit of its own, so the structure (and the file size of a long
//! experiment) is preserved.
//!
//! A device model ([`NoiseModel::Device`], see [`crate::device`]) is SI1000
//! with a description laid on top: its scale factors multiply the channels
//! above; correlated `E` (CORRELATED_ERROR) terms follow two-qubit gates; a
//! `Z_ERROR` dephases the qubits that sit out a moment holding two-qubit
//! gates; readout asymmetry becomes its twirled average; and a drift scales
//! every rate by `1 + drift * r` in stabilizer round r, counted as the
//! measurement moments before it. A drifting device's `REPEAT` blocks are
//! unrolled, since no two rounds share their rates.

use std::collections::BTreeSet;
use std::fmt;

use crate::device::DeviceNoise;
use crate::error::BridgeError;

/// A circuit-level noise model with strength `p`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NoiseModel {
    /// Every operation and idle moment fails with probability p.
    UniformDepolarizing {
        /// Physical error rate.
        p: f64,
    },
    /// Superconducting-inspired SI1000(p).
    Si1000 {
        /// Physical error rate.
        p: f64,
    },
    /// SI1000(p) in which every channel on qubit q is scaled by a factor f_q
    /// drawn uniformly from [0.5, 2] with `seed` (two-qubit channels use the
    /// mean of their qubits' factors): a device unlike the one a model was
    /// pretrained on, for fine-tuning experiments. Named `si1000-varied:SEED`.
    Si1000Varied {
        /// Physical error rate before scaling.
        p: f64,
        /// Seed of the per-qubit factors.
        seed: u64,
    },
    /// SI1000(p) with a device description laid on top. Named `device:PATH`.
    Device {
        /// Physical error rate of the SI1000 beneath.
        p: f64,
        /// The description, parsed once per process ([`DeviceNoise::load`]).
        device: &'static DeviceNoise,
    },
}

/// The factor by which [`NoiseModel::Si1000Varied`] scales qubit `q`'s channels.
pub fn varied_factor(seed: u64, q: u32) -> f64 {
    let u = crate::sample::derive_seed(seed, q as u64) >> 11;
    0.5 + 1.5 * (u as f64 / (1u64 << 53) as f64)
}

/// Channel strengths derived from a model.
#[derive(Clone, Copy, Debug)]
struct Rates {
    clifford1: f64,
    clifford2: f64,
    reset_flip: f64,
    measure_flip: f64,
    idle: f64,
    measure_reset_idle: f64,
    /// Seed of per-qubit factors, for [`NoiseModel::Si1000Varied`].
    varied: Option<u64>,
    /// The description, for [`NoiseModel::Device`].
    device: Option<&'static DeviceNoise>,
}

impl Rates {
    /// The factor on every channel touching qubit `q`.
    fn qubit_factor(&self, q: u32) -> f64 {
        match (self.varied, self.device) {
            (Some(seed), _) => varied_factor(seed, q),
            (None, Some(device)) => device.qubit_factor(q),
            (None, None) => 1.0,
        }
    }

    /// The factor on every rate in stabilizer round `round`.
    fn drift(&self, round: u64) -> f64 {
        self.device.map_or(1.0, |d| d.drift_factor(round))
    }

    /// Whether `REPEAT` blocks must be unrolled: their rounds differ.
    fn unroll(&self) -> bool {
        self.device.is_some_and(|d| d.drift_per_round != 0.0)
    }
}

impl NoiseModel {
    /// Builds a model by name: `si1000`, `si1000-varied:SEED`,
    /// `device:PATH` (a device file, see [`crate::device`]), or
    /// `depolarizing` / `uniform`.
    pub fn from_name(name: &str, p: f64) -> Result<Self, BridgeError> {
        if !(0.0..=0.5).contains(&p) {
            return Err(BridgeError::invalid("p", format!("{p} is outside [0, 0.5]")));
        }
        let lower = name.to_ascii_lowercase();
        let model = match lower.as_str() {
            "si1000" => NoiseModel::Si1000 { p },
            device if device.starts_with("device:") => {
                NoiseModel::Device { p, device: DeviceNoise::load(&name["device:".len()..])? }
            }
            varied if varied.starts_with("si1000-varied:") => {
                let seed = varied["si1000-varied:".len()..].parse().map_err(|_| {
                    BridgeError::invalid(
                        "noise",
                        format!("'{name}': expected si1000-varied:SEED with a whole-number seed"),
                    )
                })?;
                NoiseModel::Si1000Varied { p, seed }
            }
            "depolarizing" | "uniform" | "uniform_depolarizing" => NoiseModel::UniformDepolarizing { p },
            _ => {
                return Err(BridgeError::invalid(
                    "noise",
                    format!(
                        "unknown noise model '{name}' (expected si1000, si1000-varied:SEED, device:FILE or depolarizing)"
                    ),
                ));
            }
        };
        let r = model.rates();
        let most = if r.varied.is_some() { 2.0 } else { 1.0 };
        let worst = most * [r.reset_flip, r.measure_flip].into_iter().fold(0.0, f64::max);
        if worst > 0.5 || most * (r.idle + r.measure_reset_idle) > 0.75 {
            return Err(BridgeError::invalid(
                "p",
                format!("{p} is too large for {name}: its measurement flip would be {worst}"),
            ));
        }
        Ok(model)
    }

    /// The model's name as used on the command line and in sweep metadata.
    pub fn name(&self) -> String {
        match self {
            NoiseModel::UniformDepolarizing { .. } => "depolarizing".into(),
            NoiseModel::Si1000 { .. } => "si1000".into(),
            NoiseModel::Si1000Varied { seed, .. } => format!("si1000-varied:{seed}"),
            NoiseModel::Device { device, .. } => format!("device:{}", device.path),
        }
    }

    /// Physical error rate p.
    pub fn p(&self) -> f64 {
        match *self {
            NoiseModel::UniformDepolarizing { p }
            | NoiseModel::Si1000 { p }
            | NoiseModel::Si1000Varied { p, .. }
            | NoiseModel::Device { p, .. } => p,
        }
    }

    fn rates(&self) -> Rates {
        match *self {
            NoiseModel::UniformDepolarizing { p } => Rates {
                clifford1: p,
                clifford2: p,
                reset_flip: p,
                measure_flip: p,
                idle: p,
                measure_reset_idle: 0.0,
                varied: None,
                device: None,
            },
            NoiseModel::Si1000 { p } => Self::si1000_rates(p, None),
            NoiseModel::Si1000Varied { p, seed } => Self::si1000_rates(p, Some(seed)),
            NoiseModel::Device { p, device } => {
                let si = Self::si1000_rates(p, None);
                let g = device.gates;
                Rates {
                    clifford1: si.clifford1 * g.one_qubit,
                    clifford2: si.clifford2 * g.two_qubit,
                    reset_flip: si.reset_flip * g.reset,
                    measure_flip: device.readout.map_or(si.measure_flip, |r| r.twirled()) * g.measure,
                    idle: si.idle * g.idle,
                    measure_reset_idle: si.measure_reset_idle * g.measure_idle,
                    varied: None,
                    device: Some(device),
                }
            }
        }
    }

    fn si1000_rates(p: f64, varied: Option<u64>) -> Rates {
        Rates {
            clifford1: p / 10.0,
            clifford2: p,
            reset_flip: 2.0 * p,
            measure_flip: 5.0 * p,
            idle: p / 10.0,
            measure_reset_idle: 2.0 * p,
            varied,
            device: None,
        }
    }

    /// Returns `ideal` with this model's noise inserted.
    pub fn apply(&self, ideal: &stim::Circuit) -> Result<stim::Circuit, BridgeError> {
        let text = self.apply_to_text(&ideal.to_string())?;
        Ok(text.parse::<stim::Circuit>()?)
    }

    /// Inserts noise into the text of a noiseless Stim circuit.
    pub fn apply_to_text(&self, ideal: &str) -> Result<String, BridgeError> {
        let lines: Vec<&str> = ideal.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let qubits = all_qubits(&lines)?;
        let mut out = Vec::new();
        let mut moment = Moment::default();
        noisy_lines(&lines, &mut moment, &qubits, self.rates(), &mut out)?;
        moment.flush(&qubits, self.rates(), &mut out)?;
        let mut text = out.join("\n");
        text.push('\n');
        Ok(text)
    }
}

impl fmt::Display for NoiseModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.p())
    }
}

/// How an instruction is treated by the noise model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Annotation,
    Clifford1,
    Clifford2,
    /// A reset; the flip channel is X_ERROR unless the reset is in the X basis.
    Reset {
        x_basis: bool,
    },
    Measure {
        x_basis: bool,
    },
    MeasureReset {
        x_basis: bool,
    },
}

fn classify(name: &str) -> Result<Kind, BridgeError> {
    const ANNOTATIONS: &[&str] = &["DETECTOR", "OBSERVABLE_INCLUDE", "SHIFT_COORDS", "QUBIT_COORDS", "MPAD"];
    const CLIFFORD1: &[&str] = &[
        "I",
        "X",
        "Y",
        "Z",
        "H",
        "H_XY",
        "H_XZ",
        "H_YZ",
        "S",
        "S_DAG",
        "SQRT_X",
        "SQRT_X_DAG",
        "SQRT_Y",
        "SQRT_Y_DAG",
        "SQRT_Z",
        "SQRT_Z_DAG",
        "C_XYZ",
        "C_ZYX",
    ];
    const CLIFFORD2: &[&str] = &[
        "CX",
        "CNOT",
        "CY",
        "CZ",
        "XCX",
        "XCY",
        "XCZ",
        "YCX",
        "YCY",
        "YCZ",
        "ZCX",
        "ZCY",
        "ZCZ",
        "SWAP",
        "ISWAP",
        "ISWAP_DAG",
        "CXSWAP",
        "SWAPCX",
        "CZSWAP",
        "SQRT_XX",
        "SQRT_XX_DAG",
        "SQRT_YY",
        "SQRT_YY_DAG",
        "SQRT_ZZ",
        "SQRT_ZZ_DAG",
    ];
    Ok(match name {
        n if ANNOTATIONS.contains(&n) => Kind::Annotation,
        n if CLIFFORD1.contains(&n) => Kind::Clifford1,
        n if CLIFFORD2.contains(&n) => Kind::Clifford2,
        "R" | "RZ" | "RY" => Kind::Reset { x_basis: false },
        "RX" => Kind::Reset { x_basis: true },
        "M" | "MZ" | "MY" => Kind::Measure { x_basis: false },
        "MX" => Kind::Measure { x_basis: true },
        "MR" | "MRZ" | "MRY" => Kind::MeasureReset { x_basis: false },
        "MRX" => Kind::MeasureReset { x_basis: true },
        _ => {
            return Err(BridgeError::Circuit(format!(
                "the noise models cannot place noise on '{name}': the circuit must be noiseless \
                 and use only one- and two-qubit Cliffords, resets and single-qubit measurements"
            )));
        }
    })
}

/// Splits `NAME(args) targets...` into its parts (arguments may contain spaces).
fn split_instruction(line: &str) -> (&str, Option<&str>, Vec<&str>) {
    let name_end = line.find(|c: char| c == '(' || c.is_whitespace()).unwrap_or(line.len());
    let name = &line[..name_end];
    let rest = &line[name_end..];
    let (args, targets) = match rest.strip_prefix('(') {
        Some(inner) => match inner.find(')') {
            Some(close) => (Some(&rest[..close + 2]), &inner[close + 1..]),
            None => (Some(rest), ""),
        },
        None => (None, rest),
    };
    (name, args, targets.split_whitespace().collect())
}

fn qubit_targets(line: &str, targets: &[&str]) -> Result<Vec<u32>, BridgeError> {
    targets
        .iter()
        .map(|t| {
            t.parse::<u32>().map_err(|_| {
                BridgeError::Circuit(format!("unsupported target '{t}' in '{line}' (noise needs plain qubit targets)"))
            })
        })
        .collect()
}

/// Every qubit the circuit declares or touches.
fn all_qubits(lines: &[&str]) -> Result<BTreeSet<u32>, BridgeError> {
    let mut qubits = BTreeSet::new();
    for line in lines {
        if line.starts_with("REPEAT") || *line == "}" || *line == "TICK" {
            continue;
        }
        let (name, _, targets) = split_instruction(line);
        if name == "QUBIT_COORDS" || !matches!(classify(name)?, Kind::Annotation) {
            qubits.extend(qubit_targets(line, &targets)?);
        }
    }
    Ok(qubits)
}

/// The instructions of one moment, with the noise gathered for it.
#[derive(Default)]
struct Moment {
    /// Noise placed before the moment's operations (measurement flips).
    pre: Vec<String>,
    /// The moment's own instructions, unchanged.
    mid: Vec<String>,
    /// Noise placed after the moment's operations.
    post: Vec<String>,
    /// Qubits touched by any operation.
    used: BTreeSet<u32>,
    /// Qubits measured or reset.
    collapsed: BTreeSet<u32>,
    /// Qubits in two-qubit gates.
    paired: BTreeSet<u32>,
    /// Whether the moment measures: it closes a stabilizer round.
    measures: bool,
    /// Stabilizer rounds before this moment: the measuring moments flushed so far.
    round: u64,
}

impl Moment {
    fn flush(&mut self, qubits: &BTreeSet<u32>, rates: Rates, out: &mut Vec<String>) -> Result<(), BridgeError> {
        if self.used.is_empty() && self.mid.is_empty() {
            return Ok(());
        }
        let k = rates.drift(self.round);
        if !self.used.is_empty() {
            let idle: Vec<u32> = qubits.difference(&self.used).copied().collect();
            push_channel(&mut self.post, "DEPOLARIZE1", rates.idle * k, &idle, rates)?;
        }
        if let Some(device) = rates.device.filter(|_| !self.paired.is_empty()) {
            let spectators: Vec<u32> = qubits.difference(&self.paired).copied().collect();
            push_channel(&mut self.post, "Z_ERROR", device.spectator.z * k, &spectators, rates)?;
        }
        if !self.collapsed.is_empty() {
            let waiting: Vec<u32> = qubits.difference(&self.collapsed).copied().collect();
            push_channel(&mut self.post, "DEPOLARIZE1", rates.measure_reset_idle * k, &waiting, rates)?;
        }
        out.append(&mut self.pre);
        out.append(&mut self.mid);
        out.append(&mut self.post);
        self.round += u64::from(self.measures);
        self.measures = false;
        self.used.clear();
        self.collapsed.clear();
        self.paired.clear();
        Ok(())
    }
}

/// Pushes `channel(p)` on `qubits`, taken two at a time for `DEPOLARIZE2`;
/// each group's rate is `p` times the mean of its qubits' factors, and
/// neighbouring groups with equal rates share a line.
fn push_channel(
    into: &mut Vec<String>,
    channel: &str,
    p: f64,
    qubits: &[u32],
    rates: Rates,
) -> Result<(), BridgeError> {
    if p <= 0.0 || qubits.is_empty() {
        return Ok(());
    }
    let arity = if channel == "DEPOLARIZE2" { 2 } else { 1 };
    let mut lines: Vec<(f64, Vec<u32>)> = Vec::new();
    for group in qubits.chunks(arity) {
        let rate = scaled(p, group, rates, channel)?;
        match lines.last_mut() {
            _ if rate <= 0.0 => {}
            Some((last, targets)) if *last == rate => targets.extend_from_slice(group),
            _ => lines.push((rate, group.to_vec())),
        }
    }
    for (rate, targets) in lines {
        let targets: Vec<String> = targets.iter().map(u32::to_string).collect();
        into.push(format!("{channel}({}) {}", format_probability(rate), targets.join(" ")));
    }
    Ok(())
}

/// Pushes the device's crosstalk after a two-qubit gate on `pairs`: one
/// independent `E(p) Pa Pb` for each pair and each nonzero `PP` term.
fn push_crosstalk(into: &mut Vec<String>, k: f64, pairs: &[u32], rates: Rates) -> Result<(), BridgeError> {
    let Some(device) = rates.device else { return Ok(()) };
    let c = &device.crosstalk;
    for pair in pairs.chunks(2).filter(|g| device.crosstalk_on(g[0], g[1])) {
        for (pauli, p) in [("X", c.xx), ("Y", c.yy), ("Z", c.zz)] {
            if p > 0.0 {
                let rate = scaled(p * k, pair, rates, "E")?;
                into.push(format!("E({}) {pauli}{} {pauli}{}", format_probability(rate), pair[0], pair[1]));
            }
        }
    }
    Ok(())
}

/// `p` times the mean factor of `group`'s qubits, refused above 0.5.
fn scaled(p: f64, group: &[u32], rates: Rates, channel: &str) -> Result<f64, BridgeError> {
    let f = group.iter().map(|&q| rates.qubit_factor(q)).sum::<f64>() / group.len() as f64;
    let rate = p * f;
    if rate > 0.5 {
        return Err(BridgeError::Circuit(format!(
            "the noise would give {channel} on qubits {group:?} probability {rate}, more than 0.5; \
             lower p or the device's factors"
        )));
    }
    Ok(rate)
}

/// Prints a probability without floating-point residue (`5 * 0.003` prints as 0.015).
pub fn format_probability(p: f64) -> String {
    let rounded: f64 = format!("{p:.12e}").parse().expect("a formatted float parses");
    format!("{rounded}")
}

/// Noises `lines` into `out`, continuing `moment`.
///
/// A `REPEAT n` block becomes `REPEAT n-1` (noised on its own, since its body
/// starts a fresh moment each iteration) followed by one inlined copy of the
/// body. The inlined copy's last moment then merges with whatever follows
/// the block without a `TICK`, as the circuit says it should: in Stim's
/// memory circuits the final data measurement shares its moment with the
/// last ancilla measurement, whatever the number of rounds. When the rates
/// drift, the n-1 copies are written out one by one instead.
fn noisy_lines(
    lines: &[&str],
    moment: &mut Moment,
    qubits: &BTreeSet<u32>,
    rates: Rates,
    out: &mut Vec<String>,
) -> Result<(), BridgeError> {
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        if line == "}" {
            return Err(BridgeError::Circuit("unbalanced '}' in circuit".to_string()));
        }
        if let Some(rest) = line.strip_prefix("REPEAT") {
            let count: u64 = rest
                .trim()
                .trim_end_matches('{')
                .trim()
                .parse()
                .map_err(|_| BridgeError::Circuit(format!("cannot read repeat count in '{line}'")))?;
            let close = matching_brace(lines, i)?;
            let body = &lines[i..close];
            i = close + 1;
            if count == 0 {
                continue;
            }
            moment.flush(qubits, rates, out)?;
            if rates.unroll() {
                for _ in 1..count {
                    noisy_lines(body, moment, qubits, rates, out)?;
                    moment.flush(qubits, rates, out)?;
                }
            } else if count > 1 {
                let mut inner = Moment::default();
                let mut noisy_body = Vec::new();
                noisy_lines(body, &mut inner, qubits, rates, &mut noisy_body)?;
                inner.flush(qubits, rates, &mut noisy_body)?;
                out.push(format!("REPEAT {} {{", count - 1));
                out.extend(noisy_body.into_iter().map(|l| format!("    {l}")));
                out.push("}".to_string());
            }
            noisy_lines(body, moment, qubits, rates, out)?;
            continue;
        }
        if line == "TICK" {
            moment.flush(qubits, rates, out)?;
            out.push("TICK".to_string());
            continue;
        }
        let (name, args, targets) = split_instruction(line);
        let kind = classify(name)?;
        if kind == Kind::Annotation {
            moment.mid.push(line.to_string());
            continue;
        }
        if args.is_some() {
            return Err(BridgeError::Circuit(format!(
                "'{line}' already carries noise; apply a noise model to a noiseless circuit"
            )));
        }
        let touched = qubit_targets(line, &targets)?;
        if let Some(q) = touched.iter().find(|q| moment.used.contains(q)) {
            return Err(BridgeError::Circuit(format!(
                "qubit {q} is used twice in one moment (at '{line}'); insert a TICK"
            )));
        }
        moment.used.extend(touched.iter().copied());
        let flip = |x_basis: bool| if x_basis { "Z_ERROR" } else { "X_ERROR" };
        let k = rates.drift(moment.round);
        match kind {
            Kind::Annotation => unreachable!("handled above"),
            Kind::Clifford1 => push_channel(&mut moment.post, "DEPOLARIZE1", rates.clifford1 * k, &touched, rates)?,
            Kind::Clifford2 => {
                if touched.len() % 2 != 0 {
                    return Err(BridgeError::Circuit(format!("odd number of targets in '{line}'")));
                }
                push_channel(&mut moment.post, "DEPOLARIZE2", rates.clifford2 * k, &touched, rates)?;
                push_crosstalk(&mut moment.post, k, &touched, rates)?;
                moment.paired.extend(touched.iter().copied());
            }
            Kind::Reset { x_basis } => {
                moment.collapsed.extend(touched.iter().copied());
                push_channel(&mut moment.post, flip(x_basis), rates.reset_flip * k, &touched, rates)?;
            }
            Kind::Measure { x_basis } => {
                moment.collapsed.extend(touched.iter().copied());
                moment.measures = true;
                push_channel(&mut moment.pre, flip(x_basis), rates.measure_flip * k, &touched, rates)?;
            }
            Kind::MeasureReset { x_basis } => {
                moment.collapsed.extend(touched.iter().copied());
                moment.measures = true;
                push_channel(&mut moment.pre, flip(x_basis), rates.measure_flip * k, &touched, rates)?;
                push_channel(&mut moment.post, flip(x_basis), rates.reset_flip * k, &touched, rates)?;
            }
        }
        moment.mid.push(line.to_string());
    }
    Ok(())
}

/// Index of the `}` closing a block whose body starts at `start`.
fn matching_brace(lines: &[&str], start: usize) -> Result<usize, BridgeError> {
    let mut depth = 0usize;
    for (k, line) in lines.iter().enumerate().skip(start) {
        if line.starts_with("REPEAT") {
            depth += 1;
        } else if *line == "}" {
            if depth == 0 {
                return Ok(k);
            }
            depth -= 1;
        }
    }
    Err(BridgeError::Circuit("REPEAT block without its closing '}'".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::code::{Basis, MemoryExperiment};

    const P: f64 = 0.001;

    fn si1000_d3() -> Vec<String> {
        let ideal = MemoryExperiment::new(3, 3, Basis::Z).unwrap().ideal_circuit().unwrap();
        let noisy = NoiseModel::Si1000 { p: P }.apply_to_text(&ideal.to_string()).unwrap();
        noisy.lines().map(|l| l.trim().to_string()).collect()
    }

    /// The first round of a d=3 memory-Z circuit, line by line: every
    /// operation, its channel and its strength.
    #[test]
    fn si1000_first_round_line_by_line() {
        let lines = si1000_d3();
        let data = "1 3 5 8 10 12 15 17 19";
        let expected = [
            "R 1 3 5 8 10 12 15 17 19 2 9 11 13 14 16 18 25",
            "X_ERROR(0.002) 1 3 5 8 10 12 15 17 19 2 9 11 13 14 16 18 25",
            "TICK",
            "H 2 11 16 25",
            "DEPOLARIZE1(0.0001) 2 11 16 25",
            "DEPOLARIZE1(0.0001) 1 3 5 8 9 10 12 13 14 15 17 18 19",
            "TICK",
            "CX 2 3 16 17 11 12 15 14 10 9 19 18",
            "DEPOLARIZE2(0.001) 2 3 16 17 11 12 15 14 10 9 19 18",
            "DEPOLARIZE1(0.0001) 1 5 8 13 25",
            "TICK",
            "CX 2 1 16 15 11 10 8 14 3 9 12 18",
            "DEPOLARIZE2(0.001) 2 1 16 15 11 10 8 14 3 9 12 18",
            "DEPOLARIZE1(0.0001) 5 13 17 19 25",
            "TICK",
            "CX 16 10 11 5 25 19 8 9 17 18 12 13",
            "DEPOLARIZE2(0.001) 16 10 11 5 25 19 8 9 17 18 12 13",
            "DEPOLARIZE1(0.0001) 1 2 3 14 15",
            "TICK",
            "CX 16 8 11 3 25 17 1 9 10 18 5 13",
            "DEPOLARIZE2(0.001) 16 8 11 3 25 17 1 9 10 18 5 13",
            "DEPOLARIZE1(0.0001) 2 12 14 15 19",
            "TICK",
            "H 2 11 16 25",
            "DEPOLARIZE1(0.0001) 2 11 16 25",
            "DEPOLARIZE1(0.0001) 1 3 5 8 9 10 12 13 14 15 17 18 19",
            "TICK",
            "X_ERROR(0.005) 2 9 11 13 14 16 18 25",
            "MR 2 9 11 13 14 16 18 25",
        ];
        let start = lines.iter().position(|l| l.starts_with("R ")).unwrap();
        assert_eq!(&lines[start..start + expected.len()], &expected[..]);
        // The measure/reset moment: detectors, then the reset flip, the idle
        // term and the 2p term on the waiting data qubits.
        let after: Vec<&String> =
            lines[start + expected.len()..].iter().skip_while(|l| l.starts_with("DETECTOR")).take(3).collect();
        assert_eq!(after[0], "X_ERROR(0.002) 2 9 11 13 14 16 18 25");
        assert_eq!(after[1], &format!("DEPOLARIZE1(0.0001) {data}"));
        assert_eq!(after[2], &format!("DEPOLARIZE1(0.002) {data}"));
    }

    /// Every measure/reset moment, including the one inside the REPEAT
    /// block, gives the waiting data qubits the 2p term. In the last round
    /// the data qubits are measured in the same moment as the ancillas, so
    /// nobody waits there.
    #[test]
    fn si1000_gives_waiting_qubits_2p_in_every_measure_moment() {
        let lines = si1000_d3();
        assert!(lines.iter().any(|l| l == "REPEAT 1 {"));
        let mr_moments = lines.iter().filter(|l| l.starts_with("MR ")).count();
        let waiting_terms = lines.iter().filter(|l| l.starts_with("DEPOLARIZE1(0.002) ")).count();
        assert_eq!(mr_moments, 3);
        assert_eq!(waiting_terms, 2);
        let final_m = lines.iter().position(|l| l.starts_with("M 1 3 5")).unwrap();
        let last_tick = lines[..final_m].iter().rposition(|l| l == "TICK").unwrap();
        let last_moment = &lines[last_tick + 1..final_m];
        assert_eq!(last_moment[0], "X_ERROR(0.005) 2 9 11 13 14 16 18 25");
        assert_eq!(last_moment[1], "X_ERROR(0.005) 1 3 5 8 10 12 15 17 19");
        assert_eq!(last_moment[2], "MR 2 9 11 13 14 16 18 25");
    }

    /// Two rounds (which Stim writes without a REPEAT) and three rounds (with
    /// one) give the same noise per round.
    #[test]
    fn repeat_blocks_do_not_change_the_noise() {
        let model = NoiseModel::Si1000 { p: P };
        let dem = |r: usize| {
            let ideal = MemoryExperiment::new(3, r, Basis::Z).unwrap().ideal_circuit().unwrap();
            model.apply(&ideal).unwrap().flattened().to_string()
        };
        let unrolled = |text: String| text.lines().filter(|l| l.contains("DEPOLARIZE1(0.002)")).count();
        assert_eq!(unrolled(dem(2)), 1);
        assert_eq!(unrolled(dem(3)), 2);
        assert_eq!(unrolled(dem(9)), 8);
    }

    /// The stim crate's preset gives the waiting data qubits only p/10: the
    /// reason qecd carries its own model.
    #[test]
    fn stim_crate_si1000_preset_lacks_the_2p_waiting_term() {
        let ideal = MemoryExperiment::new(3, 2, Basis::Z).unwrap().ideal_circuit().unwrap();
        let preset = ideal.with_noise(stim::noise::Si1000::new(P).unwrap()).unwrap().flattened().to_string();
        let ours = NoiseModel::Si1000 { p: P }.apply(&ideal).unwrap().flattened().to_string();
        let has_data_2p = |text: &str| {
            text.lines().any(|l| l.trim().starts_with("DEPOLARIZE1(0.002)") && l.contains(" 1 3 5 8 10 12 15 17 19"))
        };
        assert!(has_data_2p(&ours));
        assert!(!has_data_2p(&preset), "the stim crate's preset now includes the 2p term:\n{preset}");
        // And the difference matters: ours has a strictly larger detector error model.
        let dem = |t: &str| t.parse::<stim::Circuit>().unwrap().detector_error_model().unwrap().to_string();
        assert_ne!(dem(&ours), dem(&preset));
    }

    #[test]
    fn noise_keeps_detectors_and_structure() {
        let ideal = MemoryExperiment::new(5, 10, Basis::X).unwrap().ideal_circuit().unwrap();
        for model in [NoiseModel::Si1000 { p: 0.003 }, NoiseModel::UniformDepolarizing { p: 0.003 }] {
            let noisy = model.apply(&ideal).unwrap();
            assert_eq!(noisy.num_detectors(), ideal.num_detectors());
            assert_eq!(noisy.num_measurements(), ideal.num_measurements());
            assert!(noisy.to_string().contains("REPEAT 8 {"));
            // A noiseless reference sample still satisfies every detector.
            assert!(noisy.detector_error_model().is_ok());
        }
    }

    /// The varied model scales each qubit's channels by its own factor in [0.5, 2].
    #[test]
    fn varied_si1000_scales_per_qubit() {
        let ideal = MemoryExperiment::new(3, 3, Basis::Z).unwrap().ideal_circuit().unwrap();
        let model = NoiseModel::from_name("si1000-varied:7", 0.001).unwrap();
        assert_eq!(model.name(), "si1000-varied:7");
        let text = model.apply_to_text(&ideal.to_string()).unwrap();
        let line = text.lines().find(|l| l.trim().starts_with("X_ERROR") && l.trim().ends_with(" 2")).unwrap();
        let rate: f64 = line.trim()["X_ERROR(".len()..line.trim().find(')').unwrap()].parse().unwrap();
        assert!((rate - 0.002 * varied_factor(7, 2)).abs() < 1e-12, "{line}");
        let factors: Vec<f64> = (0..30).map(|q| varied_factor(7, q)).collect();
        assert!(factors.iter().all(|f| (0.5..=2.0).contains(f)));
        assert!(factors.iter().any(|&f| f < 0.9) && factors.iter().any(|&f| f > 1.5));
        let plain = NoiseModel::Si1000 { p: 0.001 }.apply(&ideal).unwrap().detector_error_model().unwrap();
        let varied = model.apply(&ideal).unwrap().detector_error_model().unwrap();
        assert_eq!(plain.num_detectors(), varied.num_detectors());
        assert_ne!(plain.to_string(), varied.to_string());
        assert!(NoiseModel::from_name("si1000-varied:x", 0.001).is_err());
    }

    #[test]
    fn bad_inputs_are_rejected() {
        assert!(NoiseModel::from_name("si1000", 0.6).unwrap_err().to_string().contains("outside [0, 0.5]"));
        assert!(NoiseModel::from_name("si1000", -0.1).is_err());
        assert!(NoiseModel::from_name("si1000", 0.2).unwrap_err().to_string().contains("too large"));
        assert!(NoiseModel::from_name("foo", 0.1).unwrap_err().to_string().contains("unknown noise model"));
        let err = NoiseModel::Si1000 { p: P }.apply_to_text("H 0\nX_ERROR(0.1) 0\nM 0\n").unwrap_err();
        assert!(err.to_string().contains("X_ERROR"), "{err}");
        let err = NoiseModel::Si1000 { p: P }.apply_to_text("H 0\nM(0.1) 0\n").unwrap_err();
        assert!(err.to_string().contains("already carries noise"), "{err}");
        assert_eq!(format_probability(5.0 * 0.003), "0.015");
    }
}
