//! The learning curve of training runs: each held-out case's errors divided by
//! correlated matching's on the same shots, against the training samples seen
//! (log scale), read from the CSV log `qecd train` writes beside its
//! checkpoint (`X.train.csv`). One curve per (log, case); a log that resumed
//! runs appended to stays one curve, its rows in file order.
//!
//! Below the dashed line at 1 the network beats correlated matching. The error
//! bars are ±1σ propagated from both binomial counts as if independent; the
//! two decoders share their shots, so the true spread of the ratio is smaller.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use plotters::prelude::*;

use super::axes::{LinearAxis, snap, y_ticks};
use super::legend::{Legend, LegendKey, legend_corner, trace};
use super::{
    TEXT, check_png_out, curve_style, draw_dashed, draw_error_bar, draw_marker, font, house_mesh, plot_err, px,
    write_png,
};

/// Output size in pixels.
const SIZE: (u32, u32) = (1000, 700);

/// The columns read from a log; the others are ignored.
const COLUMNS: [&str; 5] = ["samples", "case", "shots", "errors", "baseline_errors"];

/// One evaluation of one held-out case.
#[derive(Clone, Debug, PartialEq)]
struct Eval {
    /// Training samples seen when it was taken.
    samples: u64,
    /// Held-out shots, decoded by both decoders.
    shots: u64,
    /// The network's errors.
    errors: u64,
    /// Correlated matching's errors on the same shots (above 0).
    baseline: u64,
}

impl Eval {
    fn ratio(&self) -> f64 {
        self.errors as f64 / self.baseline as f64
    }

    /// ±1σ of the ratio, from both binomial counts taken as independent.
    fn sigma(&self) -> f64 {
        let var = |k: u64| k as f64 * (1.0 - k as f64 / self.shots as f64);
        (var(self.errors) + self.ratio().powi(2) * var(self.baseline)).sqrt() / self.baseline as f64
    }
}

/// One curve: a log's evaluations of one case, in file order.
#[derive(Debug)]
struct Curve {
    label: String,
    points: Vec<Eval>,
}

/// Plots the learning curves of training logs `logs` to `out`, one per (log,
/// case), keeping only `cases` unless it is empty. `labels` (one per log, or
/// none) name the logs in the legend, by default their file names without
/// `.train.csv`; a log with several cases gets the case appended. Returns the
/// number of curves. The file must end in `.png`; it is written to a
/// temporary file beside `out` and renamed, so a failure leaves no file.
pub fn plot_training(logs: &[PathBuf], labels: &[String], cases: &[String], out: &Path) -> Result<usize> {
    check_png_out(out)?;
    let curves = collect_curves(logs, labels, cases)?;
    write_png(out, SIZE, |canvas, size| {
        // The legend goes inside the plot unless it would cover data there.
        if draw_figure(&curves, canvas, size, false)? {
            canvas.fill(255);
            draw_figure(&curves, canvas, size, true)?;
        }
        Ok(())
    })?;
    Ok(curves.len())
}

/// Reads a log into (case, evaluation) rows in file order, skipping rows
/// without a baseline count (or with a count of 0: no ratio).
fn read_log(path: &Path) -> Result<Vec<(String, Eval)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = text.lines().enumerate();
    let header = lines.next().map_or("", |(_, l)| l);
    let names: Vec<&str> = header.split(',').map(str::trim).collect();
    let mut col = [0; COLUMNS.len()];
    for (c, name) in col.iter_mut().zip(COLUMNS) {
        *c = names.iter().position(|&n| n == name).with_context(|| {
            format!("{}:1: no '{name}' column in the header (is it a `qecd train` log?)", path.display())
        })?;
    }
    let mut rows = Vec::new();
    for (i, line) in lines.filter(|&(_, l)| !l.trim().is_empty() && l != header) {
        let at = || format!("{}:{}", path.display(), i + 1);
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != names.len() {
            bail!("{}: {} fields, but the header has {}", at(), fields.len(), names.len());
        }
        let [samples, case, shots, errors, baseline] = col.map(|c| fields[c]);
        if baseline.is_empty() {
            continue;
        }
        let count = |name: &str, v: &str| {
            v.parse::<u64>().map_err(|_| anyhow!("{}: '{name}' is not a whole number: '{v}'", at()))
        };
        let eval = Eval {
            samples: count("samples", samples)?,
            shots: count("shots", shots)?,
            errors: count("errors", errors)?,
            baseline: count("baseline_errors", baseline)?,
        };
        if eval.errors.max(eval.baseline) > eval.shots {
            bail!("{}: more errors than the {} shots", at(), eval.shots);
        }
        if eval.baseline > 0 {
            rows.push((case.to_string(), eval));
        }
    }
    Ok(rows)
}

/// The curves of `logs`, in the order of the logs and, within one, of each
/// case's first row.
fn collect_curves(logs: &[PathBuf], labels: &[String], cases: &[String]) -> Result<Vec<Curve>> {
    if !labels.is_empty() && labels.len() != logs.len() {
        bail!("{} --label value(s) for {} --in file(s): give one per file, in order", labels.len(), logs.len());
    }
    let (mut curves, mut seen) = (Vec::new(), Vec::new());
    for (k, path) in logs.iter().enumerate() {
        let mut by_case: Vec<(String, Vec<Eval>)> = Vec::new();
        for (case, eval) in read_log(path)? {
            if !seen.contains(&case) {
                seen.push(case.clone());
            }
            if !cases.is_empty() && !cases.contains(&case) {
                continue;
            }
            match by_case.iter_mut().find(|(c, _)| *c == case) {
                Some((_, points)) => points.push(eval),
                None => by_case.push((case, vec![eval])),
            }
        }
        if by_case.is_empty() {
            let only = if cases.is_empty() { String::new() } else { format!(" of case {}", cases.join(", ")) };
            bail!("{}: no usable rows{only} (each needs a baseline_errors count above 0)", path.display());
        }
        let name = labels.get(k).cloned().unwrap_or_else(|| stem(path));
        let several = by_case.len() > 1;
        curves.extend(by_case.into_iter().map(|(case, points)| Curve {
            label: if several { format!("{name}, {case}") } else { name.clone() },
            points,
        }));
    }
    if let Some(case) = cases.iter().find(|&c| !seen.contains(c)) {
        bail!("no log has rows of case '{case}' (they have {})", seen.join(", "));
    }
    Ok(curves)
}

/// The file name without `.csv` and `.train`.
fn stem(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let name = name.strip_suffix(".csv").unwrap_or(&name);
    name.strip_suffix(".train").unwrap_or(name).to_string()
}

/// An axis over values or (`log`) their log10, in the units it is drawn in.
struct Scale {
    log: bool,
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
    minor: Vec<f64>,
    /// Decimals in a linear axis's labels (a log axis's use as few as they need).
    decimals: Option<usize>,
}

impl Scale {
    /// A log axis over `lo..hi`: powers of ten labelled, and 2× and 5× too
    /// while that makes fewer than four labels (every tick while fewer than two).
    fn log(lo: f64, hi: f64) -> Scale {
        let (mut ticks, mut minor) = y_ticks(lo, hi);
        let mantissa = |v: f64| (v / 10f64.powf((v.log10() + 1e-9).floor())).round();
        if ticks.len() < 4 {
            let (more, rest) = minor.iter().partition(|&&v| [2.0, 5.0].contains(&mantissa(v)));
            (ticks, minor) = (ticks.into_iter().chain(more).collect(), rest);
        }
        if ticks.len() < 2 {
            ticks.append(&mut minor);
        }
        ticks.sort_by(f64::total_cmp);
        let log10 = |v: Vec<f64>| v.into_iter().map(f64::log10).collect();
        Scale { log: true, lo: lo.log10(), hi: hi.log10(), ticks: log10(ticks), minor: log10(minor), decimals: None }
    }

    /// A linear axis over `lo..hi`, with ticks at 1, 2 or 5 times a power of ten.
    fn linear(lo: f64, hi: f64) -> Scale {
        let step = snap((hi - lo) / 7.0, true);
        let ticks = ((lo / step).ceil() as i64..=(hi / step).floor() as i64).map(|k| k as f64 * step).collect();
        let decimals = Some((-step.log10().floor()).max(0.0) as usize);
        Scale { log: false, lo, hi, ticks, minor: Vec::new(), decimals }
    }

    fn at(&self, v: f64) -> f64 {
        if self.log { v.log10() } else { v }
    }

    fn value(&self, t: f64) -> f64 {
        if self.log { 10f64.powf(t) } else { t }
    }

    /// A ratio tick's label: "0.05", "1", "20" on a log axis, "0.8", "1.0" on a linear one.
    fn ratio_label(&self, t: f64) -> String {
        match self.decimals {
            Some(d) => format!("{t:.d$}"),
            None => format!("{}", (self.value(t) * 1e6).round() / 1e6),
        }
    }

    fn axis(&self) -> LinearAxis {
        LinearAxis { lo: self.lo, hi: self.hi, ticks: self.ticks.clone(), minor: self.minor.clone() }
    }
}

/// "100k", "2.5M".
fn samples_label(v: f64) -> String {
    let (unit, name) =
        [(1e9, "G"), (1e6, "M"), (1e3, "k")].into_iter().find(|&(u, _)| v >= u * 0.9995).unwrap_or((1.0, ""));
    format!("{}{name}", (v / unit * 1000.0).round() / 1000.0)
}

/// The axes: samples on a log scale with a tenth of a decade of room (and a
/// factor of 4 at least); the ratios, their bars and 1, on a log scale when
/// the ratios span more than 5×.
fn axes(curves: &[Curve]) -> (Scale, Scale) {
    let points = || curves.iter().flat_map(|c| &c.points);
    let (smin, smax) =
        points().fold((f64::INFINITY, 0f64), |(a, b), p| (a.min(p.samples as f64), b.max(p.samples as f64)));
    let (lo, hi) = (smin.max(1.0) / 1.26, smax.max(1.0) * 1.26);
    // At least a factor of 4, so that some tick is labelled.
    let widen = (4.0 * lo / hi).max(1.0).sqrt();
    let x = Scale::log(lo / widen, hi * widen);
    let rmin = points().map(Eval::ratio).fold(1f64, f64::min);
    let lo = points().map(|p| p.ratio() - p.sigma()).fold(rmin, f64::min);
    let hi = points().map(|p| p.ratio() + p.sigma()).fold(1f64, f64::max);
    let y = if rmin > 0.0 && hi / rmin > 5.0 {
        let low = points().map(|p| p.ratio() - p.sigma()).filter(|&v| v > 0.0).fold(rmin, f64::min);
        Scale::log(low / 1.15, hi * 1.15)
    } else {
        let pad = ((hi - lo) * 0.06).max(0.02);
        Scale::linear((lo - pad).max(0.0), hi + pad)
    };
    (x, y)
}

/// Draws the figure onto `canvas`, the legend right of the plot if `outside`;
/// returns whether an inside legend covers data.
fn draw_figure(curves: &[Curve], canvas: &mut [u8], size: (u32, u32), outside: bool) -> Result<bool> {
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    let root = BitMapBackend::with_buffer(canvas, size).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let reference = RGBColor(0x60, 0x60, 0x60);
    let mut entries: Vec<(String, LegendKey)> = curves
        .iter()
        .enumerate()
        .map(|(i, c)| (c.label.clone(), LegendKey::Curve(curve_style(i).0, curve_style(i).1)))
        .collect();
    entries.push(("correlated matching".to_string(), LegendKey::Dashed(reference)));
    let inset = px(10.0);
    let legend = Legend::new(&root, entries, size.1 as i32 - px(14.0 + 12.0 + 58.0 + 40.0) - 2 * inset)?;

    let (x, y) = axes(curves);
    let x_label = |t: &f64| samples_label(x.value(*t));
    let y_label = |t: &f64| y.ratio_label(*t);
    let mut chart = ChartBuilder::on(&root)
        .caption("Held-out LER ÷ correlated matching", font(22.0))
        .margin_top(px(14.0))
        .margin_left(px(18.0))
        .margin_right(px(28.0) + if outside { legend.w } else { 0 })
        .margin_bottom(px(12.0))
        .x_label_area_size(px(58.0))
        .y_label_area_size(px(86.0))
        .build_cartesian_2d(x.axis(), y.axis())
        .map_err(plot_err)?;
    house_mesh(&mut chart.configure_mesh())
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .x_desc("Training samples seen (log scale)")
        .y_desc(if y.log { "Errors ÷ correlated matching's (log scale)" } else { "Errors ÷ correlated matching's" })
        .draw()
        .map_err(plot_err)?;
    let (xr, yr) = chart.plotting_area().get_pixel_range();
    root.draw(&Rectangle::new([(xr.start, yr.start), (xr.end - 1, yr.end - 1)], TEXT.stroke_width(px(1.2) as u32)))
        .map_err(plot_err)?;

    // In canvas pixels: the reference, bars, lines, then markers on top.
    // `occupied` collects drawn pixels, to keep the legend off them.
    let to_px = |p: &Eval, t: f64| chart.backend_coord(&(x.at(p.samples as f64), t));
    let mut occupied = Vec::new();
    let one = [chart.backend_coord(&(x.lo, y.at(1.0))), chart.backend_coord(&(x.hi, y.at(1.0)))];
    draw_dashed(&root, &one, reference)?;
    trace(&one, &mut occupied);
    for (i, c) in curves.iter().enumerate() {
        for p in c.points.iter().filter(|p| p.sigma() > 0.0) {
            let (r, s) = (p.ratio(), p.sigma());
            let low = if r - s > 0.0 || !y.log { y.at(r - s) } else { f64::NEG_INFINITY };
            let ((bx, top), (_, bottom)) = (to_px(p, y.at(r + s)), to_px(p, low.max(y.lo)));
            draw_error_bar(&root, bx, (top, bottom), (true, low >= y.lo), curve_style(i).1)?;
            trace(&[(bx, top), (bx, bottom)], &mut occupied);
        }
    }
    for (i, c) in curves.iter().enumerate() {
        let line: Vec<(i32, i32)> = c.points.iter().map(|p| to_px(p, y.at(p.ratio()))).collect();
        trace(&line, &mut occupied);
        root.draw(&PathElement::new(line, curve_style(i).1.stroke_width(px(2.0) as u32))).map_err(plot_err)?;
    }
    for (i, c) in curves.iter().enumerate() {
        for p in &c.points {
            draw_marker(&root, to_px(p, y.at(p.ratio())), curve_style(i).0, curve_style(i).1)?;
        }
    }

    let corners = [(true, false), (false, false), (true, true), (false, true)];
    let (corner, covered) = if outside {
        ((xr.end + px(12.0), yr.start), 0)
    } else {
        legend_corner(&xr, &yr, (legend.w, legend.h), inset, &occupied, &corners)
    };
    legend.draw(&root, corner)?;
    let (w, h) = root.dim_in_pixel();
    root.draw(&Text::new(
        "error bars: ±1σ, binomial, from both decoders' counts",
        (w as i32 - px(12.0), h as i32 - px(8.0)),
        font(12.0).color(&RGBColor(0x70, 0x70, 0x70)).pos(Pos::new(HPos::Right, VPos::Bottom)),
    ))
    .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(covered > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::tests::Image;

    const HEADER: &str = "step,samples,seconds,lr,train_loss,case,shots,eval_loss,errors,baseline_errors\n";

    /// Writes `HEADER` and `rows` to `name` in `dir`.
    fn log(dir: &Path, name: &str, rows: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("{HEADER}{rows}")).unwrap();
        path
    }

    /// Two evaluations of two cases, then a resumed run's (its steps counted
    /// afresh, its samples not) after a repeated header, with a row without a
    /// baseline.
    const RESUMED: &str = "\
500,128000,20.3,2.000e-3,0.28767,r=3,20000,0.32919,740,370
500,128000,20.3,2.000e-3,0.28767,r=25,20000,0.67060,4478,2239
1000,256000,44.0,1.960e-3,0.52461,r=3,20000,0.21928,555,370
1000,256000,44.0,1.960e-3,0.52461,r=25,20000,0.63663,2239,2239
step,samples,seconds,lr,train_loss,case,shots,eval_loss,errors,baseline_errors
500,384000,60.1,1.842e-3,0.41000,r=7,20000,0.30000,900,
500,384000,60.1,1.842e-3,0.41000,r=3,20000,0.20000,370,370
";

    #[test]
    fn reads_resumed_log_in_file_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = log(dir.path(), "d3_aux05.train.csv", RESUMED);
        let rows = read_log(&path).unwrap();
        let cases: Vec<&str> = rows.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(cases, ["r=3", "r=25", "r=3", "r=25", "r=3"]);
        assert_eq!(rows[4].1, Eval { samples: 384_000, shots: 20_000, errors: 370, baseline: 370 });
        let ratios: Vec<f64> = rows.iter().map(|(_, e)| e.ratio()).collect();
        assert_eq!(ratios, [2.0, 2.0, 1.5, 1.0, 1.0]);
        // σ² = (k₁(1 − k₁/n) + R²·k₂(1 − k₂/n)) / k₂², here k₁ = k₂ = 370, R = 1.
        let k: f64 = 370.0 * (1.0 - 370.0 / 20_000.0);
        assert!((rows[4].1.sigma() - (2.0 * k).sqrt() / 370.0).abs() < 1e-12);
    }

    #[test]
    fn curves_are_filtered_and_labelled() {
        let dir = tempfile::tempdir().unwrap();
        let a = log(dir.path(), "d3_aux05.train.csv", RESUMED);
        let b = log(dir.path(), "zoo.csv", "2500,640000,653.6,1.9e-3,0.25,r=25,20000,0.37,3475,2239\n");
        let curves = collect_curves(&[a.clone(), b.clone()], &[], &[]).unwrap();
        let labels: Vec<&str> = curves.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(labels, ["d3_aux05, r=3", "d3_aux05, r=25", "zoo"]);
        let samples: Vec<u64> = curves[0].points.iter().map(|p| p.samples).collect();
        assert_eq!(samples, [128_000, 256_000, 384_000]);
        let only = collect_curves(&[a, b], &["fused aux 0.5".into(), "tch (zoo)".into()], &["r=25".into()]).unwrap();
        let labels: Vec<(&str, usize)> = only.iter().map(|c| (c.label.as_str(), c.points.len())).collect();
        assert_eq!(labels, [("fused aux 0.5", 2), ("tch (zoo)", 1)]);
        assert_eq!(only[1].points[0].ratio(), 3475.0 / 2239.0);
        assert_eq!(stem(Path::new("runs/x.y.train.csv")), "x.y");
    }

    #[test]
    fn axes_and_tick_labels() {
        assert_eq!(
            [1e5, 2e5, 1e6, 2.5e6, 1e7, 999.0].map(samples_label),
            ["100k", "200k", "1M", "2.5M", "10M", "999"].map(String::from)
        );
        let curve = |errors: &[u64]| Curve {
            label: String::new(),
            points: errors
                .iter()
                .enumerate()
                .map(|(k, &e)| Eval { samples: 10u64.pow(k as u32 + 5), shots: 20_000, errors: e, baseline: 400 })
                .collect(),
        };
        let (x, y) = axes(&[curve(&[600, 440, 380])]);
        let labels: Vec<String> = x.ticks.iter().map(|&t| samples_label(x.value(t))).collect();
        assert_eq!(labels, ["100k", "200k", "500k", "1M", "2M", "5M", "10M"]);
        assert!(!y.log && y.lo < 0.95 && y.hi > 1.5, "{:?}", (y.lo, y.hi));
        let labels: Vec<String> = y.ticks.iter().map(|&t| y.ratio_label(t)).collect();
        assert_eq!(labels, ["1.0", "1.2", "1.4", "1.6"]);
        // One evaluation: still a few labelled ticks around it.
        let (x, _) = axes(&[curve(&[900])]);
        let labels: Vec<String> = x.ticks.iter().map(|&t| samples_label(x.value(t))).collect();
        assert_eq!(labels, ["50k", "100k", "200k"]);
        let (_, y) = axes(&[curve(&[8000, 400, 20])]);
        assert!(y.log && y.value(y.lo) < 0.05 && y.value(y.hi) > 20.0);
        let labels: Vec<String> = y.ticks.iter().map(|&t| y.ratio_label(t)).collect();
        assert_eq!(labels, ["0.05", "0.1", "0.2", "0.5", "1", "2", "5", "10", "20"]);
    }

    #[test]
    fn writes_png_of_the_figure_size() {
        let dir = tempfile::tempdir().unwrap();
        let a = log(dir.path(), "a.train.csv", RESUMED);
        let b = log(dir.path(), "b.train.csv", "4000,1024000,253.5,5.8e-4,0.17,r=3,20000,0.08,606,370\n");
        let out = dir.path().join("curve.png");
        assert_eq!(plot_training(&[a, b], &[], &[], &out).unwrap(), 3);
        Image::read(&out).assert_drawn(SIZE, 3, 100);
        let mut names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, ["a.train.csv", "b.train.csv", "curve.png"]);
    }

    #[test]
    fn bad_input_names_file_and_line_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let good = log(dir.path(), "good.train.csv", RESUMED);
        let no_column = dir.path().join("old.csv");
        std::fs::write(&no_column, "step,samples,case,shots,errors\n1,2,r=3,10,1\n").unwrap();
        let bad_number = log(dir.path(), "bad.train.csv", &RESUMED.replace("256000", "2.5e5"));
        let short = log(dir.path(), "short.train.csv", "500,128000,20.3\n");
        let too_many = log(dir.path(), "many.train.csv", "500,1,1,1,1,r=3,100,0.1,101,3\n");
        let empty = log(dir.path(), "empty.train.csv", "500,1,1,1,1,r=3,100,0.1,10,\n");
        let out = dir.path().join("curve.png");
        let err = |logs: &[PathBuf], labels: &[&str], cases: &[&str]| {
            let labels: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
            let cases: Vec<String> = cases.iter().map(|s| s.to_string()).collect();
            format!("{:#}", plot_training(logs, &labels, &cases, &out).unwrap_err())
        };
        let at = |p: &Path, line: &str| format!("{}:{line}: ", p.display());
        let e = err(&[good.clone(), no_column.clone()], &[], &[]);
        assert!(e.starts_with(&at(&no_column, "1")) && e.contains("'baseline_errors'"), "{e}");
        let e = err(std::slice::from_ref(&bad_number), &[], &[]);
        assert!(e.starts_with(&at(&bad_number, "4")) && e.contains("'samples'") && e.contains("2.5e5"), "{e}");
        let e = err(std::slice::from_ref(&short), &[], &[]);
        assert!(e.starts_with(&at(&short, "2")) && e.contains("3 fields"), "{e}");
        let e = err(std::slice::from_ref(&too_many), &[], &[]);
        assert!(e.starts_with(&at(&too_many, "2")) && e.contains("more errors"), "{e}");
        let e = err(std::slice::from_ref(&empty), &[], &[]);
        assert!(e.contains("empty.train.csv: no usable rows"), "{e}");
        let e = err(std::slice::from_ref(&good), &[], &["r=99"]);
        assert!(e.contains("good.train.csv: no usable rows of case r=99"), "{e}");
        let e = err(&[good.clone(), empty.clone()], &[], &["r=3", "r=9"]);
        assert!(e.contains("empty.train.csv: no usable rows of case r=3, r=9"), "{e}");
        let e = err(std::slice::from_ref(&good), &[], &["r=3", "r=9"]);
        assert!(e.contains("no log has rows of case 'r=9' (they have r=3, r=25)"), "{e}");
        let e = err(std::slice::from_ref(&good), &["one", "two"], &[]);
        assert!(e.contains("2 --label value(s) for 1 --in file(s)"), "{e}");
        let e = err(&[dir.path().join("absent.train.csv")], &[], &[]);
        assert!(e.contains("cannot read") && e.contains("absent.train.csv"), "{e}");
        let e = format!("{:#}", plot_training(&[good], &[], &[], &dir.path().join("curve.svg")).unwrap_err());
        assert!(e.contains("PNG"), "{e}");
        assert!(std::fs::read_dir(dir.path()).unwrap().all(|e| !e.unwrap().path().to_string_lossy().contains("png")));
    }
}
