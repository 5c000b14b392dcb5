//! Legends: a box of labelled keys (a curve's line and marker, the
//! upper- and lower-limit arrows, a dashed line, or none), placed in the corner of the plotting
//! area where it covers the least of what is drawn there.

use anyhow::Result;
use plotters::prelude::*;

use super::{Shape, draw_dashed, draw_lower_limit, draw_marker, draw_upper_limit, font, plot_err, px};

/// Which corner of the plotting area a legend box goes in: (right, bottom).
pub(super) type Corner = (bool, bool);

/// What a legend row shows left of its label.
#[derive(Clone, Copy)]
pub(super) enum LegendKey {
    /// A curve: a line through a marker.
    Curve(Shape, RGBColor),
    /// The upper-limit arrow.
    UpperLimit,
    /// The lower-limit arrow.
    LowerLimit,
    /// Nothing: a note.
    Blank,
    /// A dashed line.
    Dashed(RGBColor),
}

/// A legend box, measured for its entries (sizes in canvas pixels).
pub(super) struct Legend {
    entries: Vec<(String, LegendKey)>,
    font: TextStyle<'static>,
    row_h: i32,
    pub(super) w: i32,
    pub(super) h: i32,
}

impl Legend {
    const PAD_X: f64 = 10.0;
    const PAD_Y: f64 = 8.0;
    const KEY_W: f64 = 30.0;
    const GAP: f64 = 8.0;
    const ROW_H: f64 = 22.0;

    /// Measures the legend; its rows shrink (to a point) when they would not
    /// fit in `room` canvas pixels of height.
    pub(super) fn new<DB: DrawingBackend>(
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
    pub(super) fn draw<DB: DrawingBackend>(
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
                LegendKey::LowerLimit => {
                    draw_lower_limit(area, kx + key_w / 2, cy + px(10.0), RGBColor(0x50, 0x50, 0x50))?
                }
                LegendKey::Blank => {}
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

/// Appends points every 4 output pixels along a polyline (canvas pixels) to `out`.
pub(super) fn trace(line: &[(i32, i32)], out: &mut Vec<(i32, i32)>) {
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
pub(super) fn legend_corner(
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
