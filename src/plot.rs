//! Plots of sweep statistics: logical error rate per round against code
//! distance, one curve per (decoder, noise model, p, basis), with sinter's
//! error bars (rates within a likelihood factor of 1000 of the best fit).
//!
//! The figure is drawn at twice its size and averaged down, which anti-aliases
//! the lines and markers (the bitmap backend draws them aliased). Text uses an
//! embedded copy of DejaVu Sans (`assets/`, Bitstream Vera licence), so no
//! system font is needed.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, anyhow, bail};
use decoder::stats::{DEFAULT_LIKELIHOOD_FACTOR, ErrorCount, Fit, fit_binomial};
use models::calibration::Bin;
use plotters::coord::combinators::BindKeyPoints;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};
use serde_json::Value;

use crate::sinter_csv::StatsRow;

/// Output size in pixels.
const WIDTH: u32 = 1000;
const HEIGHT: u32 = 700;
/// Supersampling factor: the figure is drawn `SS` times larger, then averaged down.
const SS: u32 = 2;

/// DejaVu Sans; see `assets/DejaVuSans-LICENSE.txt`.
static FONT_BYTES: &[u8] = include_bytes!("assets/DejaVuSans.ttf");
/// The family name the embedded font is registered under.
const FONT: &str = "sans-serif";

/// Colour-blind-friendly palette (matplotlib's tab10).
const PALETTE: [RGBColor; 10] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
];
const TEXT: RGBColor = RGBColor(0x20, 0x20, 0x20);
const GRID_MAJOR: RGBColor = RGBColor(0xd0, 0xd0, 0xd0);
const GRID_MINOR: RGBColor = RGBColor(0xee, 0xee, 0xee);

/// Plots LER per round against distance, one series per (decoder, noise, p, basis), with binomial error bars.
///
/// `cases` are per-case totals (see `sinter_csv::aggregate`); each needs `d`
/// and `r` (rounds) in its metadata. The rate is fitted on the shots that were
/// not discarded. A case with no errors is drawn as an upper limit (a bar at
/// the top of its interval with an arrow pointing down). The file must end in
/// `.png`; it is written to a temporary file beside `out` and renamed, so a
/// failure leaves no partial file.
pub fn plot_ler(cases: &[StatsRow], out: &Path) -> Result<()> {
    check_png_out(out)?;
    let series = collect_series(cases)?;
    if series.is_empty() {
        bail!("nothing to plot: no case has any shots that were not discarded");
    }
    write_png(out, (WIDTH, HEIGHT), |canvas, size| {
        // The legend goes inside the plot unless it would cover data there.
        if draw_figure(&series, canvas, size, LegendPlace::Inside)? {
            canvas.fill(255);
            draw_figure(&series, canvas, size, LegendPlace::Outside)?;
        }
        Ok(())
    })
}

/// Checks that `out` names a PNG file (not a directory).
fn check_png_out(out: &Path) -> Result<()> {
    let ext = out.extension().and_then(OsStr::to_str).unwrap_or("");
    if !ext.eq_ignore_ascii_case("png") {
        bail!("cannot plot to {}: only PNG output is supported (use a .png file name)", out.display());
    }
    if out.is_dir() {
        bail!("{} is a directory, not a file", out.display());
    }
    Ok(())
}

/// Writes a `size` (output pixels) PNG to `out`, drawn by `draw` onto a white
/// RGB canvas `SS` times larger (passed with its size) and averaged down. It
/// goes to a temporary file beside `out` that is then renamed, so a failure
/// leaves no partial file.
fn write_png(out: &Path, size: (u32, u32), draw: impl FnOnce(&mut [u8], (u32, u32)) -> Result<()>) -> Result<()> {
    let tmp = temp_path(out)?;
    let result = render(size, draw, &tmp)
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
            std::fs::rename(&tmp, out)?;
            Ok(())
        })
        .with_context(|| format!("cannot write {}", out.display()));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A hidden file beside `out`, still ending in `.png` (the encoder goes by the extension).
fn temp_path(out: &Path) -> Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = out.file_name().with_context(|| format!("{} is not a file name", out.display()))?;
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    Ok(dir.join(format!(".{}.{}-{n}.tmp.png", name.to_string_lossy(), std::process::id())))
}

/// One plotted case.
#[derive(Clone, Debug)]
struct Point {
    d: u32,
    errors: u64,
    fit: Fit,
}

/// One curve.
#[derive(Clone, Debug)]
struct Series {
    decoder: String,
    noise: Option<String>,
    /// The value of `p` and how the metadata wrote it.
    p: Option<(f64, String)>,
    basis: Option<String>,
    points: Vec<Point>,
}

impl Series {
    fn label(&self) -> String {
        let mut label = self.decoder.clone();
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
            && self.noise == other.noise
            && self.p.as_ref().map(|p| &p.1) == other.p.as_ref().map(|p| &p.1)
            && self.basis == other.basis
    }
}

/// A metadata field as text (strings unquoted), if present and not null.
fn meta_text(meta: &Value, key: &str) -> Option<String> {
    match meta.get(key)? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        v => Some(v.to_string()),
    }
}

/// A metadata field that must be a positive number.
fn meta_number(row: &StatsRow, key: &str, what: &str) -> Result<f64> {
    let value = row.json_metadata.get(key).with_context(|| {
        format!("case {} has no '{key}' ({what}) in its metadata {}", row.strong_id, row.json_metadata)
    })?;
    let number = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    match number {
        Some(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => bail!("case {}: metadata '{key}' ({what}) is {value}, not a positive number", row.strong_id),
    }
}

/// Groups the cases into curves, sorted by decoder, noise, p and basis, each by distance.
fn collect_series(cases: &[StatsRow]) -> Result<Vec<Series>> {
    let mut series: Vec<Series> = Vec::new();
    for row in cases {
        let meta = &row.json_metadata;
        let d = meta_number(row, "d", "code distance")?;
        if d.fract() != 0.0 || d > u32::MAX as f64 {
            bail!("case {}: metadata 'd' (code distance) is {d}, not an integer", row.strong_id);
        }
        let rounds = meta_number(row, "r", "rounds")?;
        if row.errors > row.shots.saturating_sub(row.discards) {
            bail!(
                "case {}: {} errors in {} shots with {} discarded",
                row.strong_id,
                row.errors,
                row.shots,
                row.discards
            );
        }
        let count = ErrorCount { shots: row.shots - row.discards, errors: row.errors };
        if count.shots == 0 {
            continue; // no data: nothing to draw
        }
        let fit = count.fit_per_round(rounds, DEFAULT_LIKELIHOOD_FACTOR);
        let decoder = if row.decoder.trim().is_empty() {
            meta_text(meta, "decoder").unwrap_or_else(|| "?".to_string())
        } else {
            row.decoder.trim().to_string()
        };
        let p = meta_text(meta, "p").map(|text| (text.parse().unwrap_or(f64::NAN), text));
        let candidate =
            Series { decoder, noise: meta_text(meta, "noise"), p, basis: meta_text(meta, "basis"), points: Vec::new() };
        let point = Point { d: d as u32, errors: row.errors, fit };
        match series.iter_mut().find(|s| s.same_curve(&candidate)) {
            Some(s) => s.points.push(point),
            None => series.push(Series { points: vec![point], ..candidate }),
        }
    }
    series.sort_by(|a, b| {
        a.decoder
            .cmp(&b.decoder)
            .then_with(|| a.noise.cmp(&b.noise))
            .then_with(|| match (&a.p, &b.p) {
                (Some(x), Some(y)) => x.0.total_cmp(&y.0).then_with(|| x.1.cmp(&y.1)),
                (x, y) => x.is_some().cmp(&y.is_some()),
            })
            .then_with(|| a.basis.cmp(&b.basis))
    });
    for s in &mut series {
        s.points.sort_by(|a, b| a.d.cmp(&b.d).then(a.fit.best.total_cmp(&b.fit.best)));
    }
    Ok(series)
}

/// Registers the embedded font once.
fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok());
    if ok { Ok(()) } else { Err(anyhow!("the embedded font could not be loaded")) }
}

fn plot_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing the plot failed: {e}")
}

/// Scales a size in output pixels to the supersampled canvas.
fn px(v: f64) -> i32 {
    (v * SS as f64).round() as i32
}

fn font(size: f64) -> TextStyle<'static> {
    (FONT, size * SS as f64).into_font().color(&TEXT)
}

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
struct LinearAxis {
    lo: f64,
    hi: f64,
    /// Labelled ticks.
    ticks: Vec<f64>,
    /// Unlabelled ticks, with light grid lines.
    minor: Vec<f64>,
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

/// Marker shapes, cycled through the curves.
#[derive(Clone, Copy)]
enum Shape {
    Circle,
    Square,
    Triangle,
    Diamond,
}

const SHAPES: [Shape; 4] = [Shape::Circle, Shape::Square, Shape::Triangle, Shape::Diamond];

/// The marker and colour of the `i`th curve (no two curves alike while fewer than 40).
fn curve_style(i: usize) -> (Shape, RGBColor) {
    (SHAPES[(i + i / PALETTE.len()) % SHAPES.len()], PALETTE[i % PALETTE.len()])
}

/// Draws one marker centred at `c` (canvas pixels).
fn draw_marker<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    c: (i32, i32),
    shape: Shape,
    color: RGBColor,
) -> Result<()> {
    let fill = color.filled();
    let edge = WHITE.stroke_width(px(0.8) as u32);
    let r = px(5.0);
    let poly = |pts: Vec<(i32, i32)>| -> Result<()> {
        let pts: Vec<(i32, i32)> = pts.into_iter().map(|(x, y)| (c.0 + x, c.1 + y)).collect();
        area.draw(&Polygon::new(pts.clone(), fill)).map_err(plot_err)?;
        let mut closed = pts.clone();
        closed.push(pts[0]);
        area.draw(&PathElement::new(closed, edge)).map_err(plot_err)
    };
    match shape {
        Shape::Circle => {
            area.draw(&Circle::new(c, r, fill)).map_err(plot_err)?;
            area.draw(&Circle::new(c, r, edge)).map_err(plot_err)
        }
        Shape::Square => {
            let s = (r as f64 * 0.88) as i32;
            poly(vec![(-s, -s), (s, -s), (s, s), (-s, s)])
        }
        Shape::Triangle => {
            let s = (r as f64 * 1.25) as i32;
            poly(vec![(0, -s), (s, s * 3 / 4), (-s, s * 3 / 4)])
        }
        Shape::Diamond => {
            let s = (r as f64 * 1.25) as i32;
            poly(vec![(0, -s), (s, 0), (0, s), (-s, 0)])
        }
    }
}

/// A vertical error bar between canvas pixels `top` and `bottom` at `x`,
/// with caps at the ends flagged in `caps` (top, bottom): an end cut off by the
/// axis gets none.
fn draw_error_bar<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    x: i32,
    (top, bottom): (i32, i32),
    caps: (bool, bool),
    color: RGBColor,
) -> Result<()> {
    let style = color.stroke_width(px(1.4) as u32);
    let cap = px(4.0);
    area.draw(&PathElement::new(vec![(x, top), (x, bottom)], style)).map_err(plot_err)?;
    let ends = [(top, caps.0), (bottom, caps.1)];
    for y in ends.into_iter().filter(|&(_, capped)| capped).map(|(y, _)| y) {
        area.draw(&PathElement::new(vec![(x - cap, y), (x + cap, y)], style)).map_err(plot_err)?;
    }
    Ok(())
}

/// An upper limit: a cap at `top` with an arrow pointing down.
fn draw_upper_limit<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    x: i32,
    top: i32,
    color: RGBColor,
) -> Result<()> {
    let style = color.stroke_width(px(1.6) as u32);
    let cap = px(5.5);
    let len = px(20.0);
    let head = px(4.5);
    area.draw(&PathElement::new(vec![(x - cap, top), (x + cap, top)], style)).map_err(plot_err)?;
    area.draw(&PathElement::new(vec![(x, top), (x, top + len - head)], style)).map_err(plot_err)?;
    area.draw(&Polygon::new(
        vec![(x - head, top + len - head * 3 / 2), (x + head, top + len - head * 3 / 2), (x, top + len)],
        color.filled(),
    ))
    .map_err(plot_err)
}

/// The y range: covers every drawn value (bars and upper-limit arrows
/// included) with a little room, its ends snapped outward to 1, 2 or 5 times
/// a power of ten.
fn y_range(series: &[Series]) -> (f64, f64) {
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for p in series.iter().flat_map(|s| &s.points) {
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

/// 1, 2 or 5 times a power of ten, at or below `v` (at or above with `up`).
fn snap(v: f64, up: bool) -> f64 {
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
fn y_ticks(lo: f64, hi: f64) -> (Vec<f64>, Vec<f64>) {
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
fn y_tick_label(v: f64) -> String {
    let e = (v.log10() + 1e-9).floor() as i32;
    let m = (v / 10f64.powi(e)).round() as i64;
    if m == 1 { power_of_ten(e) } else { format!("{m}×{}", power_of_ten(e)) }
}

/// Draws the figure supersampled, averages it down and saves it to `path`.
fn render(size: (u32, u32), draw: impl FnOnce(&mut [u8], (u32, u32)) -> Result<()>, path: &Path) -> Result<()> {
    ensure_font()?;
    let (w, h) = (size.0 * SS, size.1 * SS);
    let mut canvas = vec![255u8; (w * h * 3) as usize];
    draw(&mut canvas, (w, h))?;
    let small = downsample(&canvas, (w, h), SS);
    let mut backend = BitMapBackend::new(path, size);
    backend.blit_bitmap((0, 0), size, &small).map_err(plot_err)?;
    backend.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// Box-filters an RGB image by `factor` in each direction.
fn downsample(src: &[u8], (w, h): (u32, u32), factor: u32) -> Vec<u8> {
    let (ow, oh) = (w / factor, h / factor);
    let mut out = vec![0u8; (ow * oh * 3) as usize];
    let n = factor * factor;
    for y in 0..oh {
        for x in 0..ow {
            for ch in 0..3 {
                let mut sum = 0u32;
                for dy in 0..factor {
                    for dx in 0..factor {
                        let (sx, sy) = (x * factor + dx, y * factor + dy);
                        sum += src[((sy * w + sx) * 3 + ch) as usize] as u32;
                    }
                }
                out[((y * ow + x) * 3 + ch) as usize] = ((sum + n / 2) / n) as u8;
            }
        }
    }
    out
}

/// Where the legend goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LegendPlace {
    /// Inside the plotting area, in the corner holding the least data.
    Inside,
    /// To the right of the plotting area.
    Outside,
}

/// Which corner of the plotting area a legend box goes in: (right, bottom).
type Corner = (bool, bool);

/// The LER plot's legend corners, in order of preference.
const LER_CORNERS: [Corner; 4] = [(true, false), (false, false), (true, true), (false, true)];

/// What a legend row shows left of its label.
#[derive(Clone, Copy)]
enum LegendKey {
    /// A curve: a line through a marker.
    Curve(Shape, RGBColor),
    /// The upper-limit arrow.
    UpperLimit,
    /// A dashed line.
    Dashed(RGBColor),
}

/// A legend box, measured for its entries (sizes in canvas pixels).
struct Legend {
    entries: Vec<(String, LegendKey)>,
    font: TextStyle<'static>,
    row_h: i32,
    w: i32,
    h: i32,
}

impl Legend {
    const PAD_X: f64 = 10.0;
    const PAD_Y: f64 = 8.0;
    const KEY_W: f64 = 30.0;
    const GAP: f64 = 8.0;
    const ROW_H: f64 = 22.0;

    /// Measures the legend; its rows shrink (to a point) when they would not
    /// fit in `room` canvas pixels of height.
    fn new<DB: DrawingBackend>(
        area: &DrawingArea<DB, plotters::coord::Shift>,
        entries: Vec<(String, LegendKey)>,
        room: i32,
    ) -> Result<Legend> {
        let rows_room = (room - 2 * px(Self::PAD_Y)) as f64;
        let shrink = (rows_room / (entries.len() as f64 * px(Self::ROW_H) as f64)).clamp(0.6, 1.0);
        let font = font(14.0 * shrink.max(0.75));
        let mut text_w = 0;
        for (label, _) in &entries {
            let (tw, _) = area.estimate_text_size(label, &font).map_err(plot_err)?;
            text_w = text_w.max(tw as i32);
        }
        let row_h = px(Self::ROW_H * shrink);
        let w = px(Self::PAD_X) * 2 + px(Self::KEY_W) + px(Self::GAP) + text_w;
        let h = px(Self::PAD_Y) * 2 + row_h * entries.len() as i32;
        Ok(Legend { entries, font, row_h, w, h })
    }

    /// Draws the legend with its top left corner at `(bx, by)`.
    fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, plotters::coord::Shift>,
        (bx, by): (i32, i32),
    ) -> Result<()> {
        use plotters::style::text_anchor::{HPos, Pos, VPos};
        let (w, h) = (self.w, self.h);
        area.draw(&Rectangle::new([(bx, by), (bx + w, by + h)], WHITE.mix(0.92).filled())).map_err(plot_err)?;
        area.draw(&Rectangle::new(
            [(bx, by), (bx + w, by + h)],
            RGBColor(0xb0, 0xb0, 0xb0).stroke_width(px(1.0) as u32),
        ))
        .map_err(plot_err)?;
        let key_w = px(Self::KEY_W);
        for (k, (label, key)) in self.entries.iter().enumerate() {
            let cy = by + px(Self::PAD_Y) + self.row_h * k as i32 + self.row_h / 2;
            let kx = bx + px(Self::PAD_X);
            match *key {
                LegendKey::Curve(shape, color) => {
                    area.draw(&PathElement::new(vec![(kx, cy), (kx + key_w, cy)], color.stroke_width(px(2.0) as u32)))
                        .map_err(plot_err)?;
                    draw_marker(area, (kx + key_w / 2, cy), shape, color)?;
                }
                LegendKey::UpperLimit => {
                    draw_upper_limit(area, kx + key_w / 2, cy - px(10.0), RGBColor(0x50, 0x50, 0x50))?
                }
                LegendKey::Dashed(color) => draw_dashed(area, &[(kx, cy), (kx + key_w, cy)], color)?,
            }
            area.draw(&Text::new(
                label.clone(),
                (kx + key_w + px(Self::GAP), cy),
                self.font.clone().pos(Pos::new(HPos::Left, VPos::Center)),
            ))
            .map_err(plot_err)?;
        }
        Ok(())
    }
}

/// A dashed line through `points` (canvas pixels).
fn draw_dashed<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    points: &[(i32, i32)],
    color: RGBColor,
) -> Result<()> {
    let style = color.stroke_width(px(1.5) as u32);
    area.draw(&plotters::element::DashedPathElement::new(points.iter().copied(), px(7.0), px(5.0), style))
        .map_err(plot_err)
}

/// Appends points every 4 output pixels along a polyline (canvas pixels) to `out`.
fn trace(line: &[(i32, i32)], out: &mut Vec<(i32, i32)>) {
    out.extend(line.first());
    for pair in line.windows(2) {
        let ((x0, y0), (x1, y1)) = (pair[0], pair[1]);
        let steps = ((x1 - x0).abs().max((y1 - y0).abs()) / px(4.0)).max(1);
        out.extend((1..=steps).map(|k| (x0 + (x1 - x0) * k / steps, y0 + (y1 - y0) * k / steps)));
    }
}

/// The top left of a `w`×`h` legend box (canvas pixels) placed `inset` inside
/// the plotting area `xr` × `yr`, in the first of `corners` where it covers the
/// fewest of the `occupied` pixels (with a small margin), and how many it covers.
fn legend_corner(
    xr: &std::ops::Range<i32>,
    yr: &std::ops::Range<i32>,
    (w, h): (i32, i32),
    inset: i32,
    occupied: &[(i32, i32)],
    corners: &[Corner],
) -> ((i32, i32), usize) {
    let covered = |(cx, cy): (i32, i32)| {
        let m = px(6.0);
        occupied.iter().filter(|&&(x, y)| x >= cx - m && x <= cx + w + m && y >= cy - m && y <= cy + h + m).count()
    };
    corners
        .iter()
        .map(|&(right, bottom)| {
            let x = if right { xr.end - inset - w } else { xr.start + inset };
            let y = if bottom { yr.end - inset - h } else { yr.start + inset };
            ((x, y), covered((x, y)))
        })
        .min_by_key(|&(_, n)| n)
        .expect("at least one corner")
}

/// Draws the figure onto `canvas`; returns whether an inside legend covers data.
fn draw_figure(series: &[Series], canvas: &mut [u8], size: (u32, u32), place: LegendPlace) -> Result<bool> {
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    let root = BitMapBackend::with_buffer(canvas, size).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let shape_of = |i: usize| curve_style(i).0;
    let color_of = |i: usize| curve_style(i).1;

    // Legend contents and size, needed before the layout.
    let mut entries: Vec<(String, LegendKey)> =
        series.iter().enumerate().map(|(i, s)| (s.label(), LegendKey::Curve(shape_of(i), color_of(i)))).collect();
    if series.iter().flat_map(|s| &s.points).any(|p| p.errors == 0) {
        entries.push(("upper limit (no errors seen)".to_string(), LegendKey::UpperLimit));
    }
    let (margin_top, margin_bottom, margin_left, margin_right) = (px(14.0), px(12.0), px(18.0), px(28.0));
    let (x_area, y_area, caption_h) = (px(58.0), px(86.0), px(40.0));
    let inset = px(10.0);
    let plot_h = size.1 as i32 - margin_top - margin_bottom - x_area - caption_h;
    let legend = Legend::new(&root, entries, plot_h - 2 * inset)?;
    let (box_w, box_h) = (legend.w, legend.h);

    // Axes.
    let mut distances: Vec<u32> = series.iter().flat_map(|s| s.points.iter().map(|p| p.d)).collect();
    distances.sort_unstable();
    distances.dedup();
    let (dmin, dmax) = (distances[0] as f64, *distances.last().unwrap() as f64);
    let pad = ((dmax - dmin) * 0.1).max(1.0);
    let (ylo, yhi) = y_range(series);
    let (major, minor) = y_ticks(ylo, yhi);
    let x_label = |d: &f64| format!("{}", d.round() as i64);
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
            LinearAxis {
                lo: dmin - pad,
                hi: dmax + pad,
                ticks: distances.iter().map(|&d| d as f64).collect(),
                minor: Vec::new(),
            },
            (ylo..yhi).log_scale().with_key_points(major).with_light_points(minor),
        )
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .bold_line_style(GRID_MAJOR.stroke_width(px(1.0) as u32))
        .light_line_style(GRID_MINOR.stroke_width(px(1.0) as u32))
        .axis_style(TEXT.stroke_width(px(1.2) as u32))
        .set_all_tick_mark_size(px(6.0))
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .label_style(font(17.0))
        .axis_desc_style(font(18.0))
        .x_desc("Code distance d")
        .y_desc("Logical error rate per round")
        .draw()
        .map_err(plot_err)?;
    // A full frame around the plotting area.
    let (xr, yr) = chart.plotting_area().get_pixel_range();
    root.draw(&Rectangle::new([(xr.start, yr.start), (xr.end - 1, yr.end - 1)], TEXT.stroke_width(px(1.2) as u32)))
        .map_err(plot_err)?;

    // Data, in canvas pixels: bars first, then lines, then markers on top.
    // `occupied` collects drawn pixels, to keep the legend off them.
    let to_px = |d: u32, v: f64| chart.backend_coord(&(d as f64, v));
    let mut occupied: Vec<(i32, i32)> = Vec::new();
    for (i, s) in series.iter().enumerate() {
        for p in &s.points {
            let (x, top) = to_px(p.d, p.fit.high);
            let bottom = if p.errors == 0 {
                draw_upper_limit(&root, x, top, color_of(i))?;
                top + px(20.0)
            } else {
                let (_, bottom) = to_px(p.d, p.fit.low.max(ylo));
                draw_error_bar(&root, x, (top, bottom), (true, true), color_of(i))?;
                bottom
            };
            trace(&[(x, top), (x, bottom)], &mut occupied);
        }
    }
    for (i, s) in series.iter().enumerate() {
        let line: Vec<(i32, i32)> = s.points.iter().filter(|p| p.errors > 0).map(|p| to_px(p.d, p.fit.best)).collect();
        if line.len() > 1 {
            trace(&line, &mut occupied);
            root.draw(&PathElement::new(line, color_of(i).stroke_width(px(2.0) as u32))).map_err(plot_err)?;
        }
    }
    for (i, s) in series.iter().enumerate() {
        for p in s.points.iter().filter(|p| p.errors > 0) {
            draw_marker(&root, to_px(p.d, p.fit.best), shape_of(i), color_of(i))?;
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

/// Size of the reliability diagram in pixels.
const RELIABILITY_SIZE: (u32, u32) = (740, 900);

/// A reliability diagram: for each series, accuracy against mean confidence per bin, with the diagonal.
///
/// Each series is a legend label and its bins (`models::calibration::reliability`).
/// The main panel plots each non-empty bin's accuracy against its mean
/// confidence, with binomial error bars as in [`plot_ler`], and the dashed
/// diagonal of perfect calibration, on equal axes over [0.5, 1] (extended down
/// to cover any bin below 0.5). The panel below shows the shots per bin on a
/// log scale, and what share of each series' shots its top bin holds. The file
/// must end in `.png`; it is written to a temporary file beside `out` and
/// renamed, so a failure leaves no partial file.
#[cfg_attr(not(feature = "train"), allow(dead_code))]
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
    main.configure_mesh()
        .bold_line_style(GRID_MAJOR.stroke_width(px(1.0) as u32))
        .light_line_style(GRID_MINOR.stroke_width(px(1.0) as u32))
        .axis_style(TEXT.stroke_width(px(1.2) as u32))
        .set_all_tick_mark_size(px(6.0))
        .y_label_formatter(&decimal)
        .label_style(font(17.0))
        .axis_desc_style(font(18.0))
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
    hist.configure_mesh()
        .bold_line_style(GRID_MAJOR.stroke_width(px(1.0) as u32))
        .light_line_style(GRID_MINOR.stroke_width(px(1.0) as u32))
        .axis_style(TEXT.stroke_width(px(1.2) as u32))
        .set_all_tick_mark_size(px(6.0))
        .x_label_formatter(&decimal)
        .y_label_formatter(&count_label)
        .label_style(font(17.0))
        .axis_desc_style(font(18.0))
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
    use serde_json::json;

    fn row(decoder: &str, d: u32, shots: u64, errors: u64) -> StatsRow {
        StatsRow {
            shots,
            errors,
            discards: 0,
            seconds: 1.0,
            decoder: decoder.to_string(),
            strong_id: format!("{decoder}-d{d}"),
            json_metadata: json!({"basis": "Z", "d": d, "decoder": decoder, "noise": "si1000", "p": 0.003, "r": d}),
        }
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
        assert_eq!(png_size(&std::fs::read(&out).unwrap()), (WIDTH, HEIGHT));
        if let Ok(sample_out) = std::env::var("QECD_PLOT_SAMPLE_MANY") {
            std::fs::copy(&out, sample_out).unwrap();
        }
        let single: Vec<StatsRow> = sample().into_iter().filter(|r| r.json_metadata["d"] == 5).collect();
        plot_ler(&single, &out).unwrap();
        assert_eq!(png_size(&std::fs::read(&out).unwrap()), (WIDTH, HEIGHT));
    }

    /// Width and height from the IHDR chunk.
    fn png_size(bytes: &[u8]) -> (u32, u32) {
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
        assert_eq!(&bytes[12..16], b"IHDR");
        let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
        (be(16), be(20))
    }

    #[test]
    fn plot_writes_png() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ler.png");
        plot_ler(&sample(), &out).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(png_size(&bytes), (WIDTH, HEIGHT));
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
        let series = collect_series(&sample()).unwrap();
        let labels: Vec<String> = series.iter().map(Series::label).collect();
        assert_eq!(labels, ["correlated, si1000 p=0.003, memory-Z", "pymatching, si1000 p=0.003, memory-Z"]);
        assert!(series.iter().all(|s| s.points.iter().map(|p| p.d).eq([3, 5, 7])));
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
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(png_size(&bytes), RELIABILITY_SIZE);
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
            assert_eq!(png_size(&std::fs::read(&out).unwrap()), RELIABILITY_SIZE);
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

    #[test]
    fn superscript_exponents() {
        assert_eq!(power_of_ten(-3), "10⁻³");
        assert_eq!(power_of_ten(0), "10⁰");
        assert_eq!(power_of_ten(12), "10¹²");
    }
}
