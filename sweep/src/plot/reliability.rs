//! The reliability diagram: accuracy against mean confidence per bin, for one
//! or more decoders, above a histogram of the shots per bin.

use std::path::Path;

use anyhow::{Result, bail};
use decoder::stats::{DEFAULT_LIKELIHOOD_FACTOR, fit_binomial};
use models::calibration::Bin;
use plotters::coord::combinators::BindKeyPoints;
use plotters::prelude::*;

use super::axes::{LinearAxis, snap, y_tick_label, y_ticks};
use super::legend::{Legend, LegendKey, legend_corner, trace};
use super::{
    TEXT, check_png_out, curve_style, draw_dashed, draw_error_bar, draw_marker, font, house_mesh, plot_err, px,
    write_png,
};

/// Size of the reliability diagram in pixels.
const RELIABILITY_SIZE: (u32, u32) = (740, 900);

/// A reliability diagram: for each series, accuracy against mean confidence per bin, with the diagonal.
///
/// Each series is a legend label and its bins (`models::calibration::reliability`).
/// The main panel plots each non-empty bin's accuracy against its mean
/// confidence, with binomial error bars as in [`plot_ler`](super::plot_ler), and the dashed
/// diagonal of perfect calibration, on equal axes over [0.5, 1] (extended down
/// to cover any bin below 0.5). The panel below shows the shots per bin on a
/// log scale, and what share of each series' shots its top bin holds. The file
/// must end in `.png`; it is written to a temporary file beside `out` and
/// renamed, so a failure leaves no partial file.
pub fn plot_reliability(title: &str, series: &[(String, Vec<Bin>)], out: &Path) -> Result<()> {
    check_png_out(out)?;
    if series.is_empty() {
        bail!("nothing to plot: no series given");
    }
    for (name, bins) in series {
        for (k, b) in bins.iter().enumerate() {
            let unit = |v: f64| (0.0..=1.0).contains(&v);
            let finite = [b.low, b.high, b.confidence, b.accuracy].iter().all(|v| v.is_finite());
            if !finite || b.low > b.high || (b.count > 0 && !(unit(b.confidence) && unit(b.accuracy))) {
                bail!(
                    "series '{name}', bin {k}: {b:?} is not a valid bin \
                     (values must be finite, confidence and accuracy within [0, 1])"
                );
            }
        }
    }
    if series.iter().all(|(_, bins)| bins.iter().all(|b| b.count == 0)) {
        bail!("nothing to plot: every bin is empty");
    }
    write_png(out, RELIABILITY_SIZE, |canvas, size| draw_reliability(title, series, canvas, size))
}

/// Draws the reliability diagram onto `canvas`.
fn draw_reliability(title: &str, series: &[(String, Vec<Bin>)], canvas: &mut [u8], size: (u32, u32)) -> Result<()> {
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    let root = BitMapBackend::with_buffer(canvas, size).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let populated = || series.iter().flat_map(|(_, bins)| bins.iter().filter(|b| b.count > 0));

    // Layout: the title, a square main panel, the histogram below it sharing its x axis.
    let (w, h) = (size.0 as i32, size.1 as i32);
    // The bottom margin holds the footnote; the gap, the tick labels at the panels' facing edges.
    let (margin_top, margin_bottom, margin_left) = (px(14.0), px(26.0), px(18.0));
    let (title_h, x_area, y_area, gap, hist_h) = (px(40.0), px(58.0), px(86.0), px(26.0), px(150.0));
    let side =
        (h - margin_top - title_h - gap - hist_h - x_area - margin_bottom).min(w - margin_left - y_area - px(20.0));
    let margin_right = w - margin_left - y_area - side;
    let (upper, lower) = root.split_vertically(margin_top + title_h + side);
    root.draw(&Text::new(
        title.to_string(),
        (margin_left + y_area + side / 2, margin_top + title_h / 2),
        font(22.0).pos(Pos::new(HPos::Center, VPos::Center)),
    ))
    .map_err(plot_err)?;

    // Both axes of the main panel, and the histogram's x axis: [lo, 1].
    let lowest = populated().map(|b| b.confidence.min(b.accuracy)).fold(0.5, f64::min);
    let lo = ((lowest * 10.0 + 1e-9).floor() / 10.0).max(0.0);
    let first = (lo * 10.0).round() as i32;
    let major: Vec<f64> = (first..=10).map(|k| k as f64 / 10.0).collect();
    let minor: Vec<f64> = (first..10).map(|k| (k as f64 + 0.5) / 10.0).collect();
    let axis = || LinearAxis { lo, hi: 1.0, ticks: major.clone(), minor: minor.clone() };
    let decimal = |v: &f64| format!("{v:.1}");
    let frame = |xr: &std::ops::Range<i32>, yr: &std::ops::Range<i32>| {
        root.draw(&Rectangle::new([(xr.start, yr.start), (xr.end - 1, yr.end - 1)], TEXT.stroke_width(px(1.2) as u32)))
            .map_err(plot_err)
    };

    let mut main = ChartBuilder::on(&upper)
        .margin_top(margin_top + title_h)
        .margin_left(margin_left)
        .margin_right(margin_right)
        .x_label_area_size(0)
        .y_label_area_size(y_area)
        .build_cartesian_2d(axis(), axis())
        .map_err(plot_err)?;
    house_mesh(&mut main.configure_mesh())
        .y_label_formatter(&decimal)
        .y_desc("Accuracy (fraction right)")
        .draw()
        .map_err(plot_err)?;
    let (xr, yr) = main.plotting_area().get_pixel_range();
    frame(&xr, &yr)?;

    // The main panel, in canvas pixels: the diagonal, error bars, lines, then
    // markers on top. `occupied` collects drawn pixels, to keep the legend off them.
    let to_px = |x: f64, y: f64| main.backend_coord(&(x, y));
    let mut occupied = Vec::new();
    let diagonal = [to_px(lo, lo), to_px(1.0, 1.0)];
    let diagonal_color = RGBColor(0x60, 0x60, 0x60);
    draw_dashed(&root, &diagonal, diagonal_color)?;
    trace(&diagonal, &mut occupied);
    for (i, (_, bins)) in series.iter().enumerate() {
        for b in bins.iter().filter(|b| b.count > 0) {
            let right = ((b.accuracy * b.count as f64).round() as u64).min(b.count as u64);
            let fit = fit_binomial(b.count as u64, right, DEFAULT_LIKELIHOOD_FACTOR);
            let (x, top) = to_px(b.confidence, fit.high.min(1.0));
            let (_, bottom) = to_px(b.confidence, fit.low.max(lo));
            draw_error_bar(&root, x, (top, bottom), (true, fit.low >= lo), curve_style(i).1)?;
            trace(&[(x, top), (x, bottom)], &mut occupied);
        }
    }
    for (i, (_, bins)) in series.iter().enumerate() {
        let line: Vec<(i32, i32)> =
            bins.iter().filter(|b| b.count > 0).map(|b| to_px(b.confidence, b.accuracy)).collect();
        if line.len() > 1 {
            trace(&line, &mut occupied);
            root.draw(&PathElement::new(line, curve_style(i).1.stroke_width(px(2.0) as u32))).map_err(plot_err)?;
        }
    }
    for (i, (_, bins)) in series.iter().enumerate() {
        let (shape, color) = curve_style(i);
        for b in bins.iter().filter(|b| b.count > 0) {
            draw_marker(&root, to_px(b.confidence, b.accuracy), shape, color)?;
        }
    }

    // Legend, in the emptiest corner (upper left preferred).
    let inset = px(10.0);
    let mut entries: Vec<(String, LegendKey)> = series
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let (shape, color) = curve_style(i);
            (name.clone(), LegendKey::Curve(shape, color))
        })
        .collect();
    entries.push(("perfect calibration".to_string(), LegendKey::Dashed(diagonal_color)));
    let legend = Legend::new(&root, entries, side - 2 * inset)?;
    let corners = [(false, false), (true, true), (true, false), (false, true)];
    let (corner, _) = legend_corner(&xr, &yr, (legend.w, legend.h), inset, &occupied, &corners);
    legend.draw(&root, corner)?;

    // The histogram: shots per bin, the series side by side within each bin.
    let cmax = populated().map(|b| b.count).max().unwrap_or(1) as f64;
    let cmin = populated().map(|b| b.count).min().unwrap_or(1) as f64;
    let (clo, chi) = (snap(cmin / 1.5, false), snap(cmax * 4.0, true));
    let (ticks, mut count_minor) = y_ticks(clo, chi);
    // At most four labels in the short panel, counted from the top; the rest become minor ticks.
    let stride = ticks.len().div_ceil(4).max(1);
    let mut count_major = Vec::new();
    for (k, v) in ticks.iter().rev().enumerate() {
        if k % stride == 0 { count_major.push(*v) } else { count_minor.push(*v) }
    }
    // Plain numbers on a short axis, powers of ten on a long one.
    let count_label = |v: &f64| if chi <= 1e4 { format!("{}", (v * 1e6).round() / 1e6) } else { y_tick_label(*v) };
    let mut hist = ChartBuilder::on(&lower)
        .margin_top(gap)
        .margin_bottom(margin_bottom)
        .margin_left(margin_left)
        .margin_right(margin_right)
        .x_label_area_size(x_area)
        .y_label_area_size(y_area)
        .build_cartesian_2d(axis(), (clo..chi).log_scale().with_key_points(count_major).with_light_points(count_minor))
        .map_err(plot_err)?;
    house_mesh(&mut hist.configure_mesh())
        .x_label_formatter(&decimal)
        .y_label_formatter(&count_label)
        .x_desc("Confidence (markers at each bin's mean)")
        .y_desc("Shots per bin")
        .draw()
        .map_err(plot_err)?;
    let (hxr, hyr) = hist.plotting_area().get_pixel_range();
    let base = hyr.end - 1;
    for (i, (_, bins)) in series.iter().enumerate() {
        let color = curve_style(i).1;
        for b in bins.iter().filter(|b| b.count > 0) {
            let (a, z) = (b.low.max(lo), b.high.min(1.0));
            if z <= a {
                continue;
            }
            let (xa, top) = hist.backend_coord(&(a, b.count as f64));
            let (xz, _) = hist.backend_coord(&(z, b.count as f64));
            let pad = (xz - xa) / 12;
            let slot = (xz - xa - 2 * pad) as f64 / series.len() as f64;
            let x0 = xa + pad + (slot * i as f64).round() as i32;
            let x1 = xa + pad + (slot * (i + 1) as f64).round() as i32 - px(1.0);
            root.draw(&Rectangle::new([(x0, top), (x1.max(x0), base)], color.mix(0.8).filled())).map_err(plot_err)?;
            root.draw(&Rectangle::new([(x0, top), (x1.max(x0), base)], color.stroke_width(px(1.0) as u32)))
                .map_err(plot_err)?;
        }
    }
    frame(&hxr, &hyr)?;

    // The share of each series' shots in its top bin, top left of the histogram.
    let note_font = font(13.0);
    let top_bin = |bins: &[Bin]| bins.iter().filter(|b| b.count > 0).max_by(|a, b| a.low.total_cmp(&b.low)).copied();
    let edges: Vec<f64> = series.iter().filter_map(|(_, bins)| top_bin(bins)).map(|b| b.low).collect();
    let head = if edges.iter().all(|&e| e == edges[0]) {
        format!("shots with confidence ≥ {:.3}:", edges[0])
    } else {
        "shots in the top bin:".to_string()
    };
    let mut pieces: Vec<(String, RGBColor)> = vec![(head, TEXT)];
    for (i, (_, bins)) in series.iter().enumerate() {
        let total: usize = bins.iter().map(|b| b.count).sum();
        if let Some(b) = top_bin(bins) {
            let share = 100.0 * b.count as f64 / total as f64;
            let text = if !(0.05..99.95).contains(&share) { format!("{share:.0}%") } else { format!("{share:.1}%") };
            pieces.push((text, curve_style(i).1));
        }
    }
    let space = px(8.0);
    let mut widths = Vec::new();
    for (text, _) in &pieces {
        widths.push(root.estimate_text_size(text, &note_font).map_err(plot_err)?.0 as i32);
    }
    let (nx, ny) = (hxr.start + px(8.0), hyr.start + px(6.0));
    let note_w = widths.iter().sum::<i32>() + space * (pieces.len() as i32 - 1);
    root.draw(&Rectangle::new(
        [(nx - px(4.0), ny - px(3.0)), (nx + note_w + px(4.0), ny + px(18.0))],
        WHITE.mix(0.85).filled(),
    ))
    .map_err(plot_err)?;
    let mut x = nx;
    for ((text, color), tw) in pieces.into_iter().zip(widths) {
        root.draw(&Text::new(text, (x, ny), note_font.clone().color(&color).pos(Pos::new(HPos::Left, VPos::Top))))
            .map_err(plot_err)?;
        x += tw + space;
    }

    // Footnote on what the bars mean, below the x axis title.
    root.draw(&Text::new(
        format!("error bars: accuracies within a likelihood factor of {DEFAULT_LIKELIHOOD_FACTOR} of the best fit"),
        (w - px(12.0), h - px(6.0)),
        font(12.0).color(&RGBColor(0x70, 0x70, 0x70)).pos(Pos::new(HPos::Right, VPos::Bottom)),
    ))
    .map_err(plot_err)?;

    root.present().map_err(plot_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::tests::Image;

    /// Bins for three decoders on 200 000 synthetic shots whose flips follow
    /// `sigmoid(logit / 1.31)`: the neural net read at τ = 1 (overconfident),
    /// at τ = 1.31 (calibrated), and a cruder decoder that is underconfident.
    fn reliability_sample() -> Vec<(String, Vec<Bin>)> {
        use models::calibration::{ECE_BINS, confidence, ece, reliability};
        let mut state = 7u64;
        let mut uniform = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let (mut logits, mut right) = (Vec::new(), Vec::new());
        for _ in 0..200_000 {
            // Mostly confident: |logit| exponential with mean 16.
            let x = -16.0 * (1.0 - uniform()).ln();
            logits.push(x as f32);
            right.push(uniform() < confidence(x as f32, 1.31));
        }
        let mut out = Vec::new();
        for (name, tau) in [("neural, τ=1", 1.0), ("neural, τ=1.31", 1.31), ("correlated matching", 2.0)] {
            let conf: Vec<f64> = logits.iter().map(|&x| confidence(x, tau)).collect();
            let e = ece(&conf, &right, ECE_BINS);
            out.push((format!("{name} (ECE {e:.4})"), reliability(&conf, &right, ECE_BINS)));
        }
        out
    }

    #[test]
    fn reliability_writes_png() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("reliability.png");
        let series = reliability_sample();
        plot_reliability("Calibration, d=5 si1000 p=0.003", &series[..2], &out).unwrap();
        plot_reliability("Calibration, d=5 si1000 p=0.003", &series, &out).unwrap();
        Image::read(&out).assert_drawn(RELIABILITY_SIZE, 3, 100);
        assert_eq!(RELIABILITY_SIZE, (740, 900));
        // Only the plot is left: the temporary file was renamed.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("reliability.png")]);
        if let Ok(sample_out) = std::env::var("QECD_RELIABILITY_SAMPLE") {
            std::fs::copy(&out, sample_out).unwrap();
        }
    }

    #[test]
    fn reliability_edge_cases() {
        use models::calibration::reliability;
        let dir = tempfile::tempdir().unwrap();
        // A single populated bin; confidences over all of [0, 1]; many small series.
        let single =
            vec![("all in the top bin".to_string(), reliability(&[0.99, 0.98, 0.999], &[true, true, false], 15))];
        let conf: Vec<f64> = (0..300).map(|k| k as f64 / 300.0).collect();
        let right: Vec<bool> = (0..300).map(|k| k % 3 != 0).collect();
        let wide = vec![("confidence p, not max(p, 1 − p)".to_string(), reliability(&conf, &right, 15))];
        let many: Vec<(String, Vec<Bin>)> = (0..7)
            .map(|s| {
                let conf: Vec<f64> = (0..40).map(|k| 0.5 + 0.5 * ((k * 7 + s) % 40) as f64 / 40.0).collect();
                let right: Vec<bool> = (0..40).map(|k| (k + s) % 4 != 0).collect();
                (format!("decoder number {s} with a long name (ECE 0.0{s}00)"), reliability(&conf, &right, 15))
            })
            .collect();
        for (name, series) in [("single", single), ("wide", wide), ("many", many)] {
            let out = dir.path().join(format!("{name}.png"));
            plot_reliability(&format!("Reliability: {name}"), &series, &out).unwrap();
            Image::read(&out).assert_drawn(RELIABILITY_SIZE, series.len(), 20);
            if let Ok(prefix) = std::env::var("QECD_RELIABILITY_EDGE_SAMPLES") {
                std::fs::copy(&out, format!("{prefix}{name}.png")).unwrap();
            }
        }
    }

    #[test]
    fn reliability_rejects_bad_input_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("reliability.png");
        let err = plot_reliability("t", &[], &out).unwrap_err().to_string();
        assert!(err.contains("nothing to plot"), "{err}");
        let empty = vec![("empty".to_string(), models::calibration::reliability(&[], &[], 15))];
        let err = plot_reliability("t", &empty, &out).unwrap_err().to_string();
        assert!(err.contains("every bin is empty"), "{err}");
        let mut bad = reliability_sample();
        bad[1].1[14].accuracy = f64::NAN;
        let err = plot_reliability("t", &bad, &out).unwrap_err().to_string();
        assert!(err.contains("neural, τ=1.31") && err.contains("bin 14"), "{err}");
        let err = plot_reliability("t", &reliability_sample(), &dir.path().join("r.svg")).unwrap_err().to_string();
        assert!(err.contains("PNG"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
