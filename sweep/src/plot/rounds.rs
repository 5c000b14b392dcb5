//! The logical error rate per round against rounds, for long memory
//! experiments: one curve per (decoder, distance, noise, p, basis), rounds on
//! a log axis with a tick at every number of rounds measured.
//!
//! A decoder that keeps up holds its per-round rate flat as the rounds grow;
//! one that drifts (a neural decoder trained on short experiments, say)
//! shows a rising curve. Over enough rounds every shot's logical error rate
//! approaches 0.5: such a saturated case bounds the per-round rate from below
//! only, and is drawn as a lower limit, a bar at the bottom of its interval
//! with an arrow pointing up, off the curve's line. That bound depends mostly
//! on the number of shots, not on the decoder. One whose lower bound is 0 too
//! (very few shots) is left out, and the legend counts it.
//!
//! The curves' points at one number of rounds are spread a few pixels
//! sideways around its tick, so that their bars do not hide each other.

use std::path::Path;

use anyhow::Result;

use super::check_png_out;
use super::ler::{Across, XAxis, collect_series, draw_png};
use crate::sinter_csv::StatsRow;

/// Output pixels between neighbouring curves at one number of rounds: the
/// decoders and distances of a sweep share every tick.
const DODGE: f64 = 8.0;

/// Plots LER per round against rounds (log scale), one series per (decoder, d,
/// noise, p, basis), with binomial error bars.
///
/// `cases` are per-case totals (see `sinter_csv::aggregate`); each needs `d`
/// and `r` in its metadata. The file must end in `.png`; it is written to a
/// temporary file beside `out` and renamed, so a failure leaves no partial
/// file.
pub fn plot_ler_rounds(cases: &[StatsRow], out: &Path) -> Result<()> {
    check_png_out(out)?;
    let series = collect_series(cases, Across::Rounds)?;
    // Points sit at log10(rounds); a fifth of a decade of room at the ends.
    draw_png(&series, |s| XAxis::over(s, 0.2, rounds_label, "Rounds (log scale)", DODGE), out)
}

/// The rounds at `x` = log10(rounds).
fn rounds_label(x: f64) -> String {
    format!("{}", 10f64.powf(x).round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::ler::{HEIGHT, WIDTH};
    use crate::plot::tests::Image;

    /// A case of `decoder` at d=3 whose per-round rate is `per_round`.
    fn row(decoder: &str, d: u32, r: u32, shots: u64, per_round: f64) -> StatsRow {
        let per_shot = 0.5 - 0.5 * (1.0 - 2.0 * per_round).powi(r as i32);
        StatsRow::for_test(decoder, d, r, 0.001, shots, (per_shot * shots as f64).round() as u64)
    }

    /// Correlated flat; neural drifting up and saturating at 10,000 rounds
    /// (d=3), and a d=5 correlated case with no errors at 25 rounds.
    fn sample() -> Vec<StatsRow> {
        let mut rows = Vec::new();
        for r in [25, 100, 1000, 10_000] {
            rows.push(row("correlated", 3, r, 20_000, 6e-4));
            rows.push(row("neural", 3, r, 20_000, 5e-4 * (r as f64 / 25.0).powf(0.2)));
            rows.push(row("correlated", 5, r, 2_000, if r == 25 { 0.0 } else { 8e-5 }));
        }
        rows
    }

    #[test]
    fn rounds_plot_writes_png_with_limits() {
        let rows = sample();
        let series = collect_series(&rows, Across::Rounds).unwrap();
        let labels: Vec<String> = series.iter().map(|s| s.label()).collect();
        assert_eq!(
            labels,
            [
                "correlated d=3, si1000 p=0.001, memory-Z",
                "correlated d=5, si1000 p=0.001, memory-Z",
                "neural d=3, si1000 p=0.001, memory-Z"
            ]
        );
        let xs: Vec<String> = series[0].points.iter().map(|p| rounds_label(p.x)).collect();
        assert_eq!(xs, ["25", "100", "1000", "10000"]);
        // Neural at 10,000 rounds: 0.5 − 0.5·(1 − 2·0.0025)^10000 ≈ 0.5 per shot, saturated.
        let neural = &series[2].points;
        assert_eq!(neural.iter().map(|p| p.saturated).collect::<Vec<_>>(), [false, false, false, true]);
        assert!(neural[3].fit.low > 1e-4 && neural[3].fit.low < 2.5e-3, "{:?}", neural[3].fit);
        assert_eq!((series[1].points[0].errors, series[1].points[0].saturated), (0, false));

        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("rounds.png");
        plot_ler_rounds(&rows, &out).unwrap();
        Image::read(&out).assert_drawn((WIDTH, HEIGHT), 3, 100);
        if let Ok(sample_out) = std::env::var("QECD_PLOT_SAMPLE_ROUNDS") {
            std::fs::copy(&out, sample_out).unwrap();
        }
        // One number of rounds only, and a case too small to bound anything.
        let mut single: Vec<StatsRow> = rows.into_iter().filter(|r| r.json_metadata["r"] == 1000).collect();
        single.push(StatsRow { shots: 1, errors: 0, strong_id: "tiny".into(), ..single[0].clone() });
        plot_ler_rounds(&single, &out).unwrap();
        assert!(plot_ler_rounds(&single, &dir.path().join("rounds.svg")).unwrap_err().to_string().contains("PNG"));
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("rounds.png")]);
    }
}
