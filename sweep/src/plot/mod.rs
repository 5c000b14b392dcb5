//! Plots of sweep, calibration and training statistics, written as PNG files:
//! the logical error rate per round against code distance ([`plot_ler`]) or
//! rounds ([`plot_ler_rounds`]) and the reliability diagram of a decoder's
//! confidence ([`plot_reliability`]), with sinter's error bars (rates within a
//! likelihood factor of 1000 of the best fit), and the learning curves of
//! training runs against correlated matching ([`plot_training`]). `qecd plot`
//! and `qecd plot-training` run [`run_plot`] and [`run_plot_training`].
//!
//! This module holds what the plots share: the style (palette, embedded font,
//! sizes in output pixels), the markers and error bars, and the PNG output.
//! Every figure is drawn at twice its size and averaged down, which
//! anti-aliases the lines and markers (the bitmap backend draws them aliased).
//! Text uses an embedded copy of DejaVu Sans (`assets/`, Bitstream Vera
//! licence), so no system font is needed. The PNG is encoded in memory and
//! written with [`simulator_bridge::fsutil::write_atomically`], so a failure
//! leaves no partial file.

mod axes;
mod command;
mod legend;
mod ler;
mod reliability;
mod rounds;
mod training;

pub use command::{PlotArgs, PlotTrainingArgs, PlotX, run_plot, run_plot_training};
pub use ler::plot_ler;
pub use reliability::plot_reliability;
pub use rounds::plot_ler_rounds;
pub use training::plot_training;

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, bail};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};
use simulator_bridge::BridgeError;
use simulator_bridge::fsutil::write_atomically;

/// Supersampling factor: the figure is drawn `SS` times larger, then averaged down.
const SS: u32 = 2;

/// DejaVu Sans; see `assets/DejaVuSans-LICENSE.txt`.
static FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
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

/// Checks that `out` names a PNG file (not a directory).
pub(crate) fn check_png_out(out: &Path) -> Result<()> {
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
/// RGB canvas `SS` times larger (passed with its size) and averaged down. A
/// failure leaves no partial file.
fn write_png(out: &Path, size: (u32, u32), draw: impl FnOnce(&mut [u8], (u32, u32)) -> Result<()>) -> Result<()> {
    let png = render(size, draw)?;
    write_atomically(out, |w| w.write_all(&png).map_err(|e| BridgeError::io(out, e)))
        .with_context(|| format!("cannot write {}", out.display()))
}

/// Draws the figure supersampled, averages it down and encodes it as a PNG.
fn render(size: (u32, u32), draw: impl FnOnce(&mut [u8], (u32, u32)) -> Result<()>) -> Result<Vec<u8>> {
    ensure_font()?;
    let (w, h) = (size.0 * SS, size.1 * SS);
    let mut canvas = vec![255u8; (w * h * 3) as usize];
    draw(&mut canvas, (w, h))?;
    let small = downsample(&canvas, (w, h), SS);
    let mut png = Vec::new();
    let mut encoder = png::Encoder::new(&mut png, size.0, size.1);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| anyhow!("encoding the PNG failed: {e}"))?;
    writer.write_image_data(&small).map_err(|e| anyhow!("encoding the PNG failed: {e}"))?;
    writer.finish().map_err(|e| anyhow!("encoding the PNG failed: {e}"))?;
    Ok(png)
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

/// The mesh every figure draws: grid lines, axes, tick marks and label fonts.
/// Callers add their formatters and axis descriptions, then draw.
fn house_mesh<'m, 'a, 'b, X: Ranged, Y: Ranged, DB: DrawingBackend>(
    mesh: &'m mut plotters::chart::MeshStyle<'a, 'b, X, Y, DB>,
) -> &'m mut plotters::chart::MeshStyle<'a, 'b, X, Y, DB> {
    mesh.bold_line_style(GRID_MAJOR.stroke_width(px(1.0) as u32))
        .light_line_style(GRID_MINOR.stroke_width(px(1.0) as u32))
        .axis_style(TEXT.stroke_width(px(1.2) as u32))
        .set_all_tick_mark_size(px(6.0))
        .label_style(font(17.0))
        .axis_desc_style(font(18.0))
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
    draw_limit(area, x, top, 1, color)
}

/// A lower limit: a cap at `bottom` with an arrow pointing up.
fn draw_lower_limit<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    x: i32,
    bottom: i32,
    color: RGBColor,
) -> Result<()> {
    draw_limit(area, x, bottom, -1, color)
}

/// A cap at `y` with an arrow 20 pixels long pointing down (`dir` 1) or up (-1).
fn draw_limit<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    x: i32,
    y: i32,
    dir: i32,
    color: RGBColor,
) -> Result<()> {
    let style = color.stroke_width(px(1.6) as u32);
    let cap = px(5.5);
    let len = px(20.0);
    let head = px(4.5);
    area.draw(&PathElement::new(vec![(x - cap, y), (x + cap, y)], style)).map_err(plot_err)?;
    area.draw(&PathElement::new(vec![(x, y), (x, y + dir * (len - head))], style)).map_err(plot_err)?;
    let base = y + dir * (len - head * 3 / 2);
    area.draw(&Polygon::new(vec![(x - head, base), (x + head, base), (x, y + dir * len)], color.filled()))
        .map_err(plot_err)
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

#[cfg(test)]
pub(crate) mod tests {
    //! Helpers for the plots' tests.

    use super::PALETTE;

    /// A decoded PNG: its size and its RGB pixels, row by row.
    pub(crate) struct Image {
        pub(crate) size: (u32, u32),
        pixels: Vec<[u8; 3]>,
    }

    impl Image {
        /// Decodes an 8-bit RGB PNG file, as the plots write them.
        pub(crate) fn read(path: &std::path::Path) -> Image {
            let bytes = std::fs::read(path).unwrap();
            let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
            let mut data = vec![0; reader.output_buffer_size()];
            let info = reader.next_frame(&mut data).unwrap();
            assert_eq!((info.color_type, info.bit_depth), (png::ColorType::Rgb, png::BitDepth::Eight));
            let pixels = data[..info.buffer_size()].chunks_exact(3).map(|p| [p[0], p[1], p[2]]).collect();
            Image { size: (info.width, info.height), pixels }
        }

        /// Pixels that are not white.
        pub(crate) fn inked(&self) -> usize {
            self.pixels.iter().filter(|&&p| p != [255; 3]).count()
        }

        /// Pixels of exactly the `i`th palette colour (the curves' centres, unblended).
        pub(crate) fn of_curve(&self, i: usize) -> usize {
            let c = PALETTE[i % PALETTE.len()];
            self.pixels.iter().filter(|&&p| p == [c.0, c.1, c.2]).count()
        }

        /// Asserts the image is `size`, has ink on at least 3% of it (axes,
        /// labels, data), and has at least `min` pixels of each of the first
        /// `curves` palette colours.
        pub(crate) fn assert_drawn(&self, size: (u32, u32), curves: usize, min: usize) {
            assert_eq!(self.size, size);
            let area = (size.0 * size.1) as usize;
            assert!(self.inked() * 100 >= 3 * area, "only {} of {area} pixels drawn", self.inked());
            for i in 0..curves {
                assert!(self.of_curve(i) >= min, "curve {i}: {} pixels of its colour", self.of_curve(i));
            }
        }
    }

    /// A blank figure fails the checks.
    #[test]
    fn blank_image_fails() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("blank.png");
        super::write_png(&out, (200, 100), |_, _| Ok(())).unwrap();
        let image = Image::read(&out);
        assert_eq!((image.size, image.inked(), image.of_curve(0)), ((200, 100), 0, 0));
        assert!(std::panic::catch_unwind(|| image.assert_drawn((200, 100), 1, 1)).is_err());
    }
}
