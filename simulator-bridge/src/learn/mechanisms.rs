//! The error mechanisms of a flat detector error model, read from Stim's text
//! and written back with new probabilities, every other line untouched.

use crate::error::BridgeError;
use crate::layout::DetectorId;

/// One `error(p) ...` instruction of a flat DEM.
#[derive(Clone, Debug, PartialEq)]
pub struct Mechanism {
    /// Its probability in the DEM.
    pub probability: f64,
    /// Its targets as written after the probability, e.g. `D1 D2 ^ D3 L0`.
    pub targets: String,
    /// The detectors it flips, ascending: the symmetric difference of its
    /// `^`-separated components.
    pub detectors: Vec<DetectorId>,
}

/// A flat DEM's lines, with the error instructions picked out.
#[derive(Clone, Debug)]
pub struct FlatDem {
    /// Every line of the flattened text.
    lines: Vec<String>,
    /// For mechanism `k`: its line index, and the byte ranges of the line
    /// before and after the probability's parentheses.
    spans: Vec<(usize, usize, usize)>,
    /// The mechanisms, in the order of their lines.
    pub mechanisms: Vec<Mechanism>,
    /// The DEM's detector count.
    pub num_detectors: usize,
}

impl FlatDem {
    /// Flattens `dem` (loops unrolled, detector shifts applied) and reads its errors.
    pub fn new(dem: &stim::DetectorErrorModel) -> Result<Self, BridgeError> {
        let flat = dem.flattened();
        let num_detectors = flat.num_detectors() as usize;
        let lines: Vec<String> = flat.to_string().lines().map(str::to_string).collect();
        let mut spans = Vec::new();
        let mut mechanisms = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let trimmed = line.trim_start();
            let indent = line.len() - trimmed.len();
            let word = trimmed.split(|c: char| !c.is_ascii_alphanumeric() && c != '_').next().unwrap_or("");
            match word {
                "error" => {
                    let (open, close, mechanism) = parse_error(trimmed)
                        .ok_or_else(|| BridgeError::Format(format!("DEM line {}: cannot read '{line}'", i + 1)))?;
                    spans.push((i, indent + open, indent + close));
                    mechanisms.push(mechanism);
                }
                "repeat" | "shift_detectors" | "}" => {
                    return Err(BridgeError::Format(format!("DEM line {}: '{line}' left after flattening", i + 1)));
                }
                _ => {}
            }
        }
        Ok(Self { lines, spans, mechanisms, num_detectors })
    }

    /// The DEM's text with mechanism `k`'s probability replaced by `probabilities[k]`.
    pub fn with_probabilities(&self, probabilities: &[f64]) -> String {
        assert_eq!(probabilities.len(), self.mechanisms.len(), "one probability per mechanism");
        let mut lines = self.lines.clone();
        for (&(i, open, close), p) in self.spans.iter().zip(probabilities) {
            let line = &self.lines[i];
            lines[i] = format!("{}({p}){}", &line[..open], &line[close + 1..]);
        }
        let mut text = lines.join("\n");
        text.push('\n');
        text
    }
}

/// Reads `error[tag](p) targets`: the byte offsets of `(` and `)`, and the mechanism.
fn parse_error(line: &str) -> Option<(usize, usize, Mechanism)> {
    let word = "error".len();
    let tag_end = if line[word..].starts_with('[') { word + line[word..].find(']')? } else { word };
    let open = tag_end + line[tag_end..].find('(')?;
    let close = open + line[open..].find(')')?;
    let probability: f64 = line[open + 1..close].trim().parse().ok()?;
    let targets = line[close + 1..].trim().to_string();
    let mut detectors: Vec<DetectorId> = Vec::new();
    for token in targets.split_whitespace() {
        if let Some(id) = token.strip_prefix('D') {
            let id: DetectorId = id.parse().ok()?;
            match detectors.iter().position(|&d| d == id) {
                Some(k) => {
                    detectors.swap_remove(k);
                }
                None => detectors.push(id),
            }
        } else if token != "^" && !token.starts_with('L') {
            return None;
        }
    }
    detectors.sort_unstable();
    Some((open, close, Mechanism { probability, targets, detectors }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_read_and_rewritten_in_place() {
        let text = "error(0.1) D0 D1\nrepeat 2 {\n    error(0.01) D0 ^ D1 D2 L0\n    shift_detectors 3\n}\ndetector(1, 2, 0) D0\n";
        let dem: stim::DetectorErrorModel = text.parse().unwrap();
        let flat = FlatDem::new(&dem).unwrap();
        let dets: Vec<_> = flat.mechanisms.iter().map(|m| m.detectors.clone()).collect();
        assert_eq!(dets, vec![vec![0, 1], vec![0, 1, 2], vec![3, 4, 5]]);
        assert_eq!(flat.mechanisms[1].targets, "D0 ^ D1 D2 L0");
        // The detector line comes after two shifts of 3.
        assert_eq!(flat.num_detectors, 7);
        let out = flat.with_probabilities(&[0.2, 0.03, 0.04]);
        let back = FlatDem::new(&out.parse().unwrap()).unwrap();
        let ps: Vec<_> = back.mechanisms.iter().map(|m| m.probability).collect();
        assert_eq!(ps, vec![0.2, 0.03, 0.04]);
        assert!(out.contains("detector(1, 2, 0) D6"), "{out}");
    }

    #[test]
    fn repeated_detectors_cancel() {
        let (_, _, m) = parse_error("error(0.5) D3 D1 ^ D1 D2").unwrap();
        assert_eq!(m.detectors, vec![2, 3]);
        assert!(parse_error("error(x) D1").is_none());
        assert!(parse_error("error(0.1) Q1").is_none());
    }
}
