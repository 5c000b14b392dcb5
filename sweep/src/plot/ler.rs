//! The logical-error-rate figure: LER per round with binomial error bars,
//! against code distance (one curve per decoder, noise model, p and basis),
//! or, through [`super::rounds`], against rounds.
//!
//! Every case is one point at its best fit with an error bar over its
//! interval, except: a case with no errors is an upper limit (a bar at the top
//! of its interval, an arrow pointing down), and a saturated case (its
//! per-shot interval reaches 0.5, so the shots bound the per-round rate from
//! below only; see `crate::rates`) is a lower limit (a bar at the bottom of
//! its interval, an arrow pointing up), or, when even that bound is 0, not
//! drawn, which the legend says. Lines join only the points with a best fit.

use std::path::Path;

use anyhow::{Result, bail};
use decoder::stats::{DEFAULT_LIKELIHOOD_FACTOR, Fit};
use plotters::coord::combinators::BindKeyPoints;
use plotters::prelude::*;

use super::axes::{LinearAxis, snap, y_tick_label, y_ticks};
use super::legend::{Corner, Legend, LegendKey, legend_corner, trace};
use super::{
    TEXT, check_png_out, curve_style, draw_error_bar, draw_lower_limit, draw_marker, draw_upper_limit, font,
    house_mesh, plot_err, px, write_png,
};
use crate::rates::Measured;
use crate::sinter_csv::StatsRow;

/// Output size in pixels.
pub(super) const WIDTH: u32 = 1000;
pub(super) const HEIGHT: u32 = 700;

/// Plots LER per round against distance, one series per (decoder, noise, p, basis), with binomial error bars.
///
/// `cases` are per-case totals (see `sinter_csv::aggregate`); each needs `d`
/// and `r` (rounds) in its metadata. The rate is fitted on the shots that were
/// not discarded. Zero-error and saturated cases are drawn as limits (see the
/// module doc). The file must end in `.png`; it is written to a temporary file
/// beside `out` and renamed, so a failure leaves no partial file.
pub fn plot_ler(cases: &[StatsRow], out: &Path) -> Result<()> {
    check_png_out(out)?;
    let series = collect_series(cases, Across::Distance)?;
    draw_png(&series, distance_axis, out)
}

/// Writes the figure of `series`, along the x axis that `axis` makes for
/// them, to `out`.
pub(super) fn draw_png(series: &[Series], axis: impl Fn(&[Series]) -> XAxis, out: &Path) -> Result<()> {
    if series.is_empty() {
        bail!("nothing to plot: no case has any shots that were not discarded");
    }
    let axis = axis(series);
    write_png(out, (WIDTH, HEIGHT), |canvas, size| {
        // The legend goes inside the plot unless it would cover data there.
        if draw_figure(series, &axis, canvas, size, LegendPlace::Inside)? {
            canvas.fill(255);
            draw_figure(series, &axis, canvas, size, LegendPlace::Outside)?;
        }
        Ok(())
    })
}

/// What the x axis shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Across {
    /// Code distance; a curve per (decoder, noise, p, basis).
    Distance,
    /// log10 of the rounds; a curve per (decoder, d, noise, p, basis).
    Rounds,
}

/// One plotted case.
#[derive(Clone, Debug)]
pub(super) struct Point {
    /// Position along the x axis (distance, or log10 of the rounds).
    pub(super) x: f64,
    pub(super) errors: u64,
    /// The per-shot interval reaches 0.5: only `fit.low` means anything.
    pub(super) saturated: bool,
    /// The per-round rate.
    pub(super) fit: Fit,
}

impl Point {
    /// Drawn at its best fit (joined by the curve's line).
    fn has_best(&self) -> bool {
        self.errors > 0 && !self.saturated
    }

    /// Drawn at all: a saturated case needs a positive lower bound.
    fn drawn(&self) -> bool {
        !self.saturated || self.fit.low > 0.0
    }
}

/// One curve.
#[derive(Clone, Debug)]
pub(super) struct Series {
    /// The decoder, with its DEM file if any ([`Measured::decoder_label`]).
    pub(super) decoder: String,
    /// The distance, when the curve runs along rounds.
    pub(super) d: Option<u32>,
    pub(super) noise: Option<String>,
    /// The value of `p` and how the metadata wrote it.
    pub(super) p: Option<(f64, String)>,
    pub(super) basis: Option<String>,
    pub(super) points: Vec<Point>,
}

impl Series {
    pub(super) fn label(&self) -> String {
        let mut label = self.decoder.clone();
        if let Some(d) = self.d {
            label += &format!(" d={d}");
        }
        let mut noise = Vec::new();
        if let Some(n) = &self.noise {
            noise.push(n.clone());
        }
        if let Some((_, p)) = &self.p {
            noise.push(format!("p={p}"));
        }
        if !noise.is_empty() {
            label += &format!(", {}", noise.join(" "));
        }
        if let Some(b) = &self.basis {
            label += &format!(", memory-{b}");
        }
        label
    }

    fn same_curve(&self, other: &Series) -> bool {
        self.decoder == other.decoder
            && self.d == other.d
            && self.noise == other.noise
            && self.p.as_ref().map(|p| &p.1) == other.p.as_ref().map(|p| &p.1)
            && self.basis == other.basis
    }
}

/// Groups the cases into curves, sorted by decoder, distance (along rounds),
/// noise, p and basis, each along x.
pub(super) fn collect_series(cases: &[StatsRow], across: Across) -> Result<Vec<Series>> {
    let mut series: Vec<Series> = Vec::new();
    for row in cases {
        let m = Measured::from_row(row)?;
        if m.count.shots == 0 {
            continue; // no data: nothing to draw
        }
        let (x, d) = match across {
            Across::Distance => (m.d as f64, None),
            Across::Rounds => (m.rounds.log10(), Some(m.d)),
        };
        let point = Point { x, errors: m.count.errors, saturated: m.saturated(), fit: m.per_round() };
        let candidate =
            Series { decoder: m.decoder_label(), d, noise: m.noise, p: m.p, basis: m.basis, points: Vec::new() };
        match series.iter_mut().find(|s| s.same_curve(&candidate)) {
            Some(s) => s.points.push(point),
            None => series.push(Series { points: vec![point], ..candidate }),
        }
    }
    series.sort_by(|a, b| {
        a.decoder
            .cmp(&b.decoder)
            .then_with(|| a.d.cmp(&b.d))
            .then_with(|| a.noise.cmp(&b.noise))
            .then_with(|| match (&a.p, &b.p) {
                (Some(x), Some(y)) => x.0.total_cmp(&y.0).then_with(|| x.1.cmp(&y.1)),
                (x, y) => x.is_some().cmp(&y.is_some()),
            })
            .then_with(|| a.basis.cmp(&b.basis))
    });
    for s in &mut series {
        s.points.sort_by(|a, b| a.x.total_cmp(&b.x).then(a.fit.best.total_cmp(&b.fit.best)));
    }
    Ok(series)
}

/// A linear x axis with ticks exactly at the data's x values.
pub(super) struct XAxis {
    pub(super) lo: f64,
    pub(super) hi: f64,
    pub(super) ticks: Vec<f64>,
    /// A tick's label.
    pub(super) label: fn(f64) -> String,
    /// The axis title.
    pub(super) desc: &'static str,
    /// Output pixels between neighbouring curves' points at one x (0: none),
    /// so that their bars do not hide each other; the spread is capped at 48.
    pub(super) dodge: f64,
}

impl XAxis {
    /// Ticks at the distinct x values of `series`, with `pad` (at least
    /// `min_pad`, else a tenth of the span) beyond the outer ones.
    pub(super) fn over(
        series: &[Series],
        min_pad: f64,
        label: fn(f64) -> String,
        desc: &'static str,
        dodge: f64,
    ) -> XAxis {
        let mut ticks: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|p| p.x)).collect();
        ticks.sort_by(f64::total_cmp);
        ticks.dedup();
        let (lo, hi) = (ticks[0], *ticks.last().expect("a point"));
        let pad = ((hi - lo) * 0.1).max(min_pad);
        XAxis { lo: lo - pad, hi: hi + pad, ticks, label, desc, dodge }
    }
}

/// The distances, one unit of room either side.
fn distance_axis(series: &[Series]) -> XAxis {
    XAxis::over(series, 1.0, |d| format!("{}", d.round() as i64), "Code distance d", 0.0)
}

/// The y range: covers every drawn value (bars and limit arrows included)
/// with a little room, its ends snapped outward to 1, 2 or 5 times a power of
/// ten.
pub(super) fn y_range(series: &[Series]) -> (f64, f64) {
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for p in series.iter().flat_map(|s| &s.points) {
        if p.saturated {
            if p.fit.low > 0.0 {
                // Room above a lower limit for its arrow.
                lo = lo.min(p.fit.low);
                hi = hi.max(p.fit.low * 2.0);
            }
            continue;
        }
        for v in [p.fit.low, p.fit.best, p.fit.high] {
            if v > 0.0 {
                lo = lo.min(v);
                hi = hi.max(v);
            }
        }
        if p.errors == 0 {
            // Room below an upper limit for its arrow.
            lo = lo.min(p.fit.high / 2.0);
        }
    }
    if !lo.is_finite() {
        return (1e-6, 1.0);
    }
    let lo = snap(lo / 1.3, false);
    let mut hi = snap(hi * 1.3, true).min(1.0);
    if hi <= lo {
        hi = snap(lo * 1.01, true);
    }
    (lo, hi)
}

/// Where the legend goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LegendPlace {
    /// Inside the plotting area, in the corner holding the least data.
    Inside,
    /// To the right of the plotting area.
    Outside,
}

/// The LER plot's legend corners, in order of preference.
const LER_CORNERS: [Corner; 4] = [(true, false), (false, false), (true, true), (false, true)];

/// Draws the figure onto `canvas`; returns whether an inside legend covers data.
fn draw_figure(
    series: &[Series],
    axis: &XAxis,
    canvas: &mut [u8],
    size: (u32, u32),
    place: LegendPlace,
) -> Result<bool> {
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    let root = BitMapBackend::with_buffer(canvas, size).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let shape_of = |i: usize| curve_style(i).0;
    let color_of = |i: usize| curve_style(i).1;
    let points = || series.iter().flat_map(|s| &s.points);

    // Legend contents and size, needed before the layout.
    let mut entries: Vec<(String, LegendKey)> =
        series.iter().enumerate().map(|(i, s)| (s.label(), LegendKey::Curve(shape_of(i), color_of(i)))).collect();
    if points().any(|p| p.errors == 0 && !p.saturated) {
        entries.push(("upper limit (no errors seen)".to_string(), LegendKey::UpperLimit));
    }
    if points().any(|p| p.saturated && p.drawn()) {
        entries.push(("lower limit (saturated: LER/shot consistent with 0.5)".to_string(), LegendKey::LowerLimit));
    }
    let hidden = points().filter(|p| !p.drawn()).count();
    if hidden > 0 {
        entries.push((format!("{hidden} saturated case(s) with no lower bound: not drawn"), LegendKey::Blank));
    }
    let (margin_top, margin_bottom, margin_left, margin_right) = (px(14.0), px(12.0), px(18.0), px(28.0));
    let (x_area, y_area, caption_h) = (px(58.0), px(86.0), px(40.0));
    let inset = px(10.0);
    let plot_h = size.1 as i32 - margin_top - margin_bottom - x_area - caption_h;
    let legend = Legend::new(&root, entries, plot_h - 2 * inset)?;
    let (box_w, box_h) = (legend.w, legend.h);

    // Axes.
    let (ylo, yhi) = y_range(series);
    let (major, minor) = y_ticks(ylo, yhi);
    let x_label = |x: &f64| (axis.label)(*x);
    let y_label = |v: &f64| y_tick_label(*v);
    let right = match place {
        LegendPlace::Inside => margin_right,
        LegendPlace::Outside => margin_right + box_w,
    };
    let mut chart = ChartBuilder::on(&root)
        .caption("Logical error rate per round", font(22.0))
        .margin_top(margin_top)
        .margin_left(margin_left)
        .margin_right(right)
        .margin_bottom(margin_bottom)
        .x_label_area_size(x_area)
        .y_label_area_size(y_area)
        .build_cartesian_2d(
            LinearAxis { lo: axis.lo, hi: axis.hi, ticks: axis.ticks.clone(), minor: Vec::new() },
            (ylo..yhi).log_scale().with_key_points(major).with_light_points(minor),
        )
        .map_err(plot_err)?;
    house_mesh(&mut chart.configure_mesh())
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .x_desc(axis.desc)
        .y_desc("Logical error rate per round")
        .draw()
        .map_err(plot_err)?;
    // A full frame around the plotting area.
    let (xr, yr) = chart.plotting_area().get_pixel_range();
    root.draw(&Rectangle::new([(xr.start, yr.start), (xr.end - 1, yr.end - 1)], TEXT.stroke_width(px(1.2) as u32)))
        .map_err(plot_err)?;

    // Data, in canvas pixels: bars first, then lines, then markers on top.
    // `occupied` collects drawn pixels, to keep the legend off them.
    let spread = (series.len() as f64 - 1.0).max(1.0);
    let step = axis.dodge.min(48.0 / spread);
    let to_px = |i: usize, x: f64, v: f64| {
        let (x, y) = chart.backend_coord(&(x, v));
        (x + px(step * (i as f64 - (series.len() as f64 - 1.0) / 2.0)), y)
    };
    let mut occupied: Vec<(i32, i32)> = Vec::new();
    for (i, s) in series.iter().enumerate() {
        let to_px = |x, v| to_px(i, x, v);
        for p in s.points.iter().filter(|p| p.drawn()) {
            let (x, top, bottom) = if p.saturated {
                let (x, bottom) = to_px(p.x, p.fit.low);
                draw_lower_limit(&root, x, bottom, color_of(i))?;
                (x, bottom - px(20.0), bottom)
            } else if p.errors == 0 {
                let (x, top) = to_px(p.x, p.fit.high);
                draw_upper_limit(&root, x, top, color_of(i))?;
                (x, top, top + px(20.0))
            } else {
                let (x, top) = to_px(p.x, p.fit.high);
                let (_, bottom) = to_px(p.x, p.fit.low.max(ylo));
                draw_error_bar(&root, x, (top, bottom), (true, true), color_of(i))?;
                (x, top, bottom)
            };
            trace(&[(x, top), (x, bottom)], &mut occupied);
        }
    }
    for (i, s) in series.iter().enumerate() {
        let line: Vec<(i32, i32)> =
            s.points.iter().filter(|p| p.has_best()).map(|p| to_px(i, p.x, p.fit.best)).collect();
        if line.len() > 1 {
            trace(&line, &mut occupied);
            root.draw(&PathElement::new(line, color_of(i).stroke_width(px(2.0) as u32))).map_err(plot_err)?;
        }
    }
    for (i, s) in series.iter().enumerate() {
        for p in s.points.iter().filter(|p| p.has_best()) {
            draw_marker(&root, to_px(i, p.x, p.fit.best), shape_of(i), color_of(i))?;
        }
    }

    // Legend.
    let ((bx, by), overlap) = match place {
        LegendPlace::Inside => {
            let (corner, covered) = legend_corner(&xr, &yr, (box_w, box_h), inset, &occupied, &LER_CORNERS);
            (corner, covered > 0)
        }
        LegendPlace::Outside => ((xr.end + px(12.0), yr.start), false),
    };
    legend.draw(&root, (bx, by))?;

    // Footnote on what the bars mean.
    // Bottom right: clear of the x-axis label, which is centred under the plot.
    let (w, h) = root.dim_in_pixel();
    root.draw(&Text::new(
        format!("error bars: rates within a likelihood factor of {DEFAULT_LIKELIHOOD_FACTOR} of the best fit"),
        (w as i32 - px(12.0), h as i32 - px(8.0)),
        font(12.0).color(&RGBColor(0x70, 0x70, 0x70)).pos(Pos::new(HPos::Right, VPos::Bottom)),
    ))
    .map_err(plot_err)?;

    root.present().map_err(plot_err)?;
    Ok(overlap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::tests::Image;
    use serde_json::json;

    fn row(decoder: &str, d: u32, shots: u64, errors: u64) -> StatsRow {
        StatsRow::for_test(decoder, d, d, 0.003, shots, errors)
    }

    fn sample() -> Vec<StatsRow> {
        vec![
            row("pymatching", 3, 100_000, 2_500),
            row("pymatching", 5, 100_000, 640),
            row("pymatching", 7, 200_000, 310),
            row("correlated", 3, 100_000, 1_900),
            row("correlated", 5, 100_000, 310),
            row("correlated", 7, 100_000, 0),
        ]
    }

    /// Many curves (more than colours), several noise strengths, both bases.
    fn sweep() -> Vec<StatsRow> {
        let mut rows = Vec::new();
        for (decoder, gain) in [("correlated", 0.8), ("pymatching", 1.0), ("unionfind", 1.4)] {
            for p in [0.001, 0.002, 0.003, 0.004] {
                for (basis, bias) in [("X", 1.15), ("Z", 1.0)] {
                    for d in [3u32, 5, 7, 9, 11] {
                        let per_round: f64 = bias * gain * 0.1 * (p / 0.007f64).powf((d as f64 + 1.0) / 2.0);
                        let shots = 1_000_000u64;
                        let per_shot = 0.5 - 0.5 * (1.0 - 2.0 * per_round).powi(d as i32);
                        let errors = (per_shot * shots as f64).round() as u64;
                        rows.push(StatsRow {
                            shots,
                            errors,
                            discards: 0,
                            seconds: 1.0,
                            decoder: decoder.to_string(),
                            strong_id: format!("{decoder}-{p}-{basis}-{d}"),
                            json_metadata: json!({"basis": basis, "d": d, "decoder": decoder, "noise": "si1000", "p": p, "r": d}),
                        });
                    }
                }
            }
        }
        rows
    }

    #[test]
    fn plots_many_curves_and_single_distance() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("many.png");
        plot_ler(&sweep(), &out).unwrap();
        // 24 curves: every colour of the palette is drawn.
        Image::read(&out).assert_drawn((WIDTH, HEIGHT), 10, 100);
        if let Ok(sample_out) = std::env::var("QECD_PLOT_SAMPLE_MANY") {
            std::fs::copy(&out, sample_out).unwrap();
        }
        let single: Vec<StatsRow> = sample().into_iter().filter(|r| r.json_metadata["d"] == 5).collect();
        plot_ler(&single, &out).unwrap();
        Image::read(&out).assert_drawn((WIDTH, HEIGHT), 2, 50);
    }

    #[test]
    fn plot_writes_png() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ler.png");
        plot_ler(&sample(), &out).unwrap();
        Image::read(&out).assert_drawn((WIDTH, HEIGHT), 2, 100);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o644);
        // Only the plot is left: the temporary file was renamed.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("ler.png")]);
        if let Ok(sample_out) = std::env::var("QECD_PLOT_SAMPLE") {
            std::fs::copy(&out, sample_out).unwrap();
        }
    }

    #[test]
    fn unsupported_extension_errors_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["ler.svg", "ler.jpg", "ler"] {
            let out = dir.path().join(name);
            let err = plot_ler(&sample(), &out).unwrap_err().to_string();
            assert!(err.contains("PNG"), "{err}");
            assert!(!out.exists());
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn missing_directory_errors() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("absent").join("ler.png");
        let err = format!("{:#}", plot_ler(&sample(), &out).unwrap_err());
        assert!(err.contains("cannot write") && err.contains("absent"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let err = plot_ler(&sample(), dir.path()).unwrap_err().to_string();
        assert!(err.contains("PNG") || err.contains("directory"), "{err}");
    }

    #[test]
    fn missing_metadata_names_the_case() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ler.png");
        for key in ["d", "r"] {
            let mut rows = sample();
            rows[2].json_metadata.as_object_mut().unwrap().remove(key);
            let err = plot_ler(&rows, &out).unwrap_err().to_string();
            assert!(err.contains("pymatching-d7") && err.contains(&format!("'{key}'")), "{err}");
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn series_are_grouped_and_labelled() {
        let series = collect_series(&sample(), Across::Distance).unwrap();
        let labels: Vec<String> = series.iter().map(Series::label).collect();
        assert_eq!(labels, ["correlated, si1000 p=0.003, memory-Z", "pymatching, si1000 p=0.003, memory-Z"]);
        assert!(series.iter().all(|s| s.points.iter().map(|p| p.x).eq([3.0, 5.0, 7.0])));
        // The zero-error case has an upper limit but no lower one.
        let zero = &series[0].points[2];
        assert_eq!((zero.errors, zero.fit.low, zero.fit.best), (0, 0.0, 0.0));
        assert!(zero.fit.high > 0.0);
        // The y range covers every bar, in whole decades.
        let (lo, hi) = y_range(&series);
        for p in series.iter().flat_map(|s| &s.points) {
            assert!(p.fit.high <= hi && (p.errors == 0 || p.fit.low >= lo));
        }
        assert!(lo < hi);
    }

    /// A decoder with a DEM file is a curve of its own, labelled with the file.
    #[test]
    fn a_decoder_dem_is_a_curve_of_its_own() {
        let mut cases = sample();
        for d in [3, 5] {
            let mut learned = row("correlated", d, 100_000, 100);
            learned.json_metadata["dem"] = serde_json::json!("learned.dem");
            learned.json_metadata["dem_sha256"] = serde_json::json!("3f2a9c0b1d2e");
            learned.strong_id += "-learned";
            cases.push(learned);
        }
        let series = collect_series(&cases, Across::Distance).unwrap();
        let labels: Vec<String> = series.iter().map(Series::label).collect();
        assert_eq!(
            labels,
            [
                "correlated, si1000 p=0.003, memory-Z",
                "correlated [learned.dem 3f2a9c0b1d2e], si1000 p=0.003, memory-Z",
                "pymatching, si1000 p=0.003, memory-Z"
            ]
        );
        assert_eq!(series[1].points.iter().map(|p| p.errors).collect::<Vec<_>>(), [100, 100]);
        assert_eq!(series[0].points.iter().map(|p| p.errors).collect::<Vec<_>>(), [1_900, 310, 0]);
    }
}
