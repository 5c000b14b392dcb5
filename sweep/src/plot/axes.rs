//! Axis helpers shared by the plots: a linear axis with ticks exactly where
//! given, and the ticks and labels of a log axis (1, 2 and 5 times powers of
//! ten, labelled with superscript exponents).

use plotters::prelude::*;

/// "10⁻³".
fn power_of_ten(exponent: i32) -> String {
    const SUP: [char; 10] = ['⁰', '¹', '²', '³', '⁴', '⁵', '⁶', '⁷', '⁸', '⁹'];
    let mut s = String::from("10");
    if exponent < 0 {
        s.push('⁻');
    }
    for c in exponent.unsigned_abs().to_string().chars() {
        s.push(SUP[c.to_digit(10).unwrap() as usize]);
    }
    s
}

/// A linear axis with ticks (and grid lines) exactly where given: the LER
/// plot's distances, the reliability diagram's tenths.
pub(super) struct LinearAxis {
    pub(super) lo: f64,
    pub(super) hi: f64,
    /// Labelled ticks.
    pub(super) ticks: Vec<f64>,
    /// Unlabelled ticks, with light grid lines.
    pub(super) minor: Vec<f64>,
}

impl Ranged for LinearAxis {
    type FormatOption = plotters::coord::ranged1d::DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let t = (value - self.lo) / (self.hi - self.lo);
        limit.0 + (t * (limit.1 - limit.0) as f64).round() as i32
    }

    fn key_points<Hint: plotters::coord::ranged1d::KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() { self.minor.clone() } else { self.ticks.clone() }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

/// 1, 2 or 5 times a power of ten, at or below `v` (at or above with `up`).
pub(super) fn snap(v: f64, up: bool) -> f64 {
    let e = v.log10().floor();
    let candidates = [-1.0, 0.0, 1.0].into_iter().flat_map(|k| [1.0, 2.0, 5.0].map(|m| m * 10f64.powf(e + k)));
    let tolerance = 1e-9;
    if up {
        candidates.filter(|&c| c >= v * (1.0 - tolerance)).fold(f64::INFINITY, f64::min)
    } else {
        candidates.filter(|&c| c <= v * (1.0 + tolerance)).fold(f64::NEG_INFINITY, f64::max)
    }
}

/// Ticks of a log axis over `lo..hi`: labelled ones (the powers of ten, plus 2×
/// and 5× when fewer than two powers of ten are in range) and unlabelled ones
/// (the other integer multiples).
pub(super) fn y_ticks(lo: f64, hi: f64) -> (Vec<f64>, Vec<f64>) {
    let inside = |v: f64| v >= lo * (1.0 - 1e-9) && v <= hi * (1.0 + 1e-9);
    let candidates: Vec<(u32, f64)> = ((lo.log10().floor() as i32)..=(hi.log10().ceil() as i32))
        .flat_map(|e| (1..=9).map(move |m| (m, m as f64 * 10f64.powi(e))))
        .filter(|&(_, v)| inside(v))
        .collect();
    let decades = candidates.iter().filter(|&&(m, _)| m == 1).count();
    let labelled = |m: u32| m == 1 || (decades < 2 && (m == 2 || m == 5));
    let major = candidates.iter().filter(|&&(m, _)| labelled(m)).map(|&(_, v)| v).collect();
    let minor = candidates.iter().filter(|&&(m, _)| !labelled(m)).map(|&(_, v)| v).collect();
    (major, minor)
}

/// "10⁻³", or "2×10⁻³" off the powers of ten.
pub(super) fn y_tick_label(v: f64) -> String {
    let e = (v.log10() + 1e-9).floor() as i32;
    let m = (v / 10f64.powi(e)).round() as i64;
    if m == 1 { power_of_ten(e) } else { format!("{m}×{}", power_of_ten(e)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ticks() {
        assert_eq!(snap(3.3e-6, false), 2e-6);
        assert_eq!(snap(1.2e-2, true), 2e-2);
        assert_eq!(snap(0.7, true), 1.0);
        let (major, minor) = y_ticks(2e-6, 2e-2);
        assert_eq!(major.iter().map(|&v| y_tick_label(v)).collect::<Vec<_>>(), ["10⁻⁵", "10⁻⁴", "10⁻³", "10⁻²"]);
        assert_eq!(minor.len(), 8 + 3 * 8 + 1);
        // Less than two decades in range: 2× and 5× are labelled too.
        let (major, _) = y_ticks(2e-4, 5e-3);
        assert_eq!(
            major.iter().map(|&v| y_tick_label(v)).collect::<Vec<_>>(),
            ["2×10⁻⁴", "5×10⁻⁴", "10⁻³", "2×10⁻³", "5×10⁻³"]
        );
    }

    #[test]
    fn superscript_exponents() {
        assert_eq!(power_of_ten(-3), "10⁻³");
        assert_eq!(power_of_ten(0), "10⁰");
        assert_eq!(power_of_ten(12), "10¹²");
    }
}
