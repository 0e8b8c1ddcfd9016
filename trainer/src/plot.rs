//! PNG figures of a training run: sample grids (faces side by side) and loss curves.
//!
//! Text is drawn with DejaVu Sans from Debian's `fonts-dejavu-core` (or the TTF named by the
//! `AVAE_TRAINER_FONT` environment variable), registered once with plotters' `ab_glyph` backend.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, ensure};
use plotters::prelude::*;
use plotters::style::{FontStyle, Palette, Palette99, register_font};
use tch::{Kind, Tensor};

/// Font file used when `AVAE_TRAINER_FONT` is not set.
const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Font family name under which the font is registered with plotters.
pub(crate) const FAMILY: &str = "sans-serif";

/// Registers the label font once per process; the error says which file is missing and how to
/// install it.
pub(crate) fn ensure_font() -> Result<()> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let path = std::env::var_os("AVAE_TRAINER_FONT")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_FONT));
            let bytes = std::fs::read(&path).map_err(|e| {
                format!(
                    "cannot read the plot font '{}' ({e}): install Debian's fonts-dejavu-core or \
                     point AVAE_TRAINER_FONT at a .ttf file",
                    path.display()
                )
            })?;
            register_font(
                FAMILY,
                FontStyle::Normal,
                Box::leak(bytes.into_boxed_slice()),
            )
            .map_err(|_| format!("'{}' is not a TrueType font", path.display()))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// Pixels between two faces of a grid.
const GAP: u32 = 2;
/// Extra pixels after each column listed in a grid's separators.
const SEPARATOR: u32 = 6;
/// Height of the header strip above a grid.
const HEADER: u32 = 18;

/// Writes a grid of faces to `path`: `columns[c]` is a float tensor `[R, 3, S, S]` in `[-1, 1]`
/// holding column `c` of all R rows; `labels` name column spans `(first column, text)` in a header,
/// and a wider gap follows every column index in `separators`.
pub fn face_grid(
    path: &Path,
    columns: &[Tensor],
    labels: &[(usize, &str)],
    separators: &[usize],
) -> Result<()> {
    let first = columns
        .first()
        .context("a face grid needs at least one column")?;
    let [rows, _, side, _] = first.size()[..] else {
        return Err(anyhow!(
            "grid columns must be [R, 3, S, S], got {:?}",
            first.size()
        ));
    };
    let (rows, side) = (rows as u32, side as u32);
    let mut x_of = Vec::with_capacity(columns.len());
    let mut x = GAP;
    for c in 0..columns.len() {
        x_of.push(x);
        x += side
            + GAP
            + if separators.contains(&c) {
                SEPARATOR
            } else {
                0
            };
    }
    let (width, height) = (x, HEADER + rows * (side + GAP) + GAP);
    let mut buf = vec![255u8; (width * height * 3) as usize];
    for (c, column) in columns.iter().enumerate() {
        ensure!(
            column.size() == [i64::from(rows), 3, i64::from(side), i64::from(side)],
            "grid column {c} is {:?}, expected [{rows}, 3, {side}, {side}]",
            column.size()
        );
        let bytes = to_rgb_bytes(column)?;
        let plane = (side * side) as usize;
        for r in 0..rows {
            let face = &bytes[r as usize * 3 * plane..(r as usize + 1) * 3 * plane];
            let y0 = HEADER + GAP + r * (side + GAP);
            for y in 0..side {
                for xx in 0..side {
                    let p = (y * side + xx) as usize;
                    let o = (((y0 + y) * width + x_of[c] + xx) * 3) as usize;
                    buf[o] = face[p];
                    buf[o + 1] = face[plane + p];
                    buf[o + 2] = face[2 * plane + p];
                }
            }
        }
    }
    ensure_font()?;
    {
        let area = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        let style = (FAMILY, 12).into_font().color(&BLACK);
        for &(c, text) in labels {
            let x = x_of.get(c).copied().unwrap_or(GAP);
            area.draw_text(text, &style, (x as i32, 3))
                .map_err(|e| anyhow!("cannot draw a grid label: {e}"))?;
        }
        area.present()
            .map_err(|e| anyhow!("cannot draw a grid label: {e}"))?;
    }
    save_rgb(path, width, height, buf)
}

/// Float `[R, 3, S, S]` in `[-1, 1]` to `u8` planes, row-major.
fn to_rgb_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let q = ((t.detach().to_device(tch::Device::Cpu).to_kind(Kind::Float) + 1.0) * 127.5)
        .round()
        .clamp(0.0, 255.0)
        .to_kind(Kind::Uint8)
        .contiguous()
        .view([-1]);
    Vec::<u8>::try_from(&q).context("cannot copy a face tensor to the CPU")
}

fn save_rgb(path: &Path, width: u32, height: u32, buf: Vec<u8>) -> Result<()> {
    let img = image::RgbImage::from_raw(width, height, buf)
        .context("internal error: image buffer of the wrong size")?;
    img.save(path)
        .with_context(|| format!("cannot write '{}'", path.display()))
}

/// One panel of a loss-curve figure: a named series of `(step, value)` points.
#[derive(Debug, Clone)]
pub struct Series {
    /// Panel title.
    pub title: String,
    /// Points in step order; non-finite values are left out.
    pub points: Vec<(f64, f64)>,
    /// Whether to draw a running mean over the raw points (for noisy per-step losses).
    pub smooth: bool,
}

/// Running mean over a centred window of about 1% of the points (at least 1).
fn running_mean(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let half = points.len() / 200;
    let mut prefix = vec![0.0; points.len() + 1];
    for (i, p) in points.iter().enumerate() {
        prefix[i + 1] = prefix[i] + p.1;
    }
    (0..points.len())
        .map(|i| {
            let (lo, hi) = (i.saturating_sub(half), (i + half + 1).min(points.len()));
            (points[i].0, (prefix[hi] - prefix[lo]) / (hi - lo) as f64)
        })
        .collect()
}

/// Value range covering the 1st to 99th percentile of `values`, widened by 5% (spikes clip).
fn robust_range(values: &mut [f64]) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    let pick = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    let (lo, hi) = (pick(0.01), pick(0.99));
    let pad = ((hi - lo) * 0.05).max(1e-6);
    (lo - pad, hi + pad)
}

/// Writes the loss curves to `path`, one panel per series, two panels per row.
pub fn loss_curves(path: &Path, panels: &[Series]) -> Result<()> {
    ensure!(!panels.is_empty(), "no series to plot");
    ensure_font()?;
    let rows = panels.len().div_ceil(2);
    let (width, height) = (1000u32, 280 * rows as u32);
    let mut buf = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        let draw_err = |e: &dyn std::fmt::Display| anyhow!("cannot draw '{}': {e}", path.display());
        for (panel, area) in panels.iter().zip(root.split_evenly((rows, 2))) {
            let points: Vec<(f64, f64)> = panel
                .points
                .iter()
                .copied()
                .filter(|p| p.0.is_finite() && p.1.is_finite())
                .collect();
            let title = (FAMILY, 15).into_font();
            if points.is_empty() {
                area.titled(&format!("{} (no data yet)", panel.title), title)
                    .map_err(|e| draw_err(&e))?;
                continue;
            }
            let (x0, x1) = (
                points[0].0,
                points[points.len() - 1].0.max(points[0].0 + 1.0),
            );
            let (y0, y1) = robust_range(&mut points.iter().map(|p| p.1).collect::<Vec<_>>());
            let mut chart = ChartBuilder::on(&area)
                .caption(&panel.title, title)
                .margin(8)
                .x_label_area_size(26)
                .y_label_area_size(60)
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(|e| draw_err(&e))?;
            chart
                .configure_mesh()
                .x_desc("step")
                .x_label_formatter(&|x| format!("{x:.0}"))
                .label_style((FAMILY, 11))
                .draw()
                .map_err(|e| draw_err(&e))?;
            let clipped = |p: &(f64, f64)| (p.0, p.1.clamp(y0, y1));
            if panel.smooth {
                chart
                    .draw_series(LineSeries::new(
                        points.iter().map(clipped),
                        RGBColor(160, 190, 230).stroke_width(1),
                    ))
                    .map_err(|e| draw_err(&e))?;
                chart
                    .draw_series(LineSeries::new(
                        running_mean(&points).iter().map(clipped),
                        BLUE.stroke_width(2),
                    ))
                    .map_err(|e| draw_err(&e))?;
            } else {
                chart
                    .draw_series(LineSeries::new(
                        points.iter().map(clipped),
                        BLUE.stroke_width(2),
                    ))
                    .map_err(|e| draw_err(&e))?;
                chart
                    .draw_series(
                        points
                            .iter()
                            .map(|p| Circle::new(clipped(p), 3, BLUE.filled())),
                    )
                    .map_err(|e| draw_err(&e))?;
            }
        }
        root.present().map_err(|e| draw_err(&e))?;
    }
    save_rgb(path, width, height, buf)
}

/// One curve of an ROC figure: its legend and its `(false-positive rate, true-positive rate)`
/// points, from (0, 0) to (1, 1).
#[derive(Debug, Clone)]
pub struct RocCurve {
    /// Legend text.
    pub label: String,
    /// The curve's points in order.
    pub points: Vec<(f64, f64)>,
}

/// Writes one ROC panel with every curve of `curves` (plotters' 99-colour palette, the chance
/// diagonal in grey) to `path`; `axes` names the x and y axes.
pub fn roc_curves(path: &Path, title: &str, axes: (&str, &str), curves: &[RocCurve]) -> Result<()> {
    ensure!(
        !curves.is_empty(),
        "no ROC curve to plot in '{}'",
        path.display()
    );
    ensure_font()?;
    let (width, height) = (640u32, 560u32);
    let mut buf = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        let draw_err = |e: &dyn std::fmt::Display| anyhow!("cannot draw '{}': {e}", path.display());
        root.fill(&WHITE).map_err(|e| draw_err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FAMILY, 15))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(46)
            .build_cartesian_2d(0.0..1.0, 0.0..1.0)
            .map_err(|e| draw_err(&e))?;
        chart
            .configure_mesh()
            .x_desc(axes.0)
            .y_desc(axes.1)
            .label_style((FAMILY, 11))
            .draw()
            .map_err(|e| draw_err(&e))?;
        chart
            .draw_series(LineSeries::new(
                [(0.0, 0.0), (1.0, 1.0)],
                RGBColor(190, 190, 190).stroke_width(1),
            ))
            .map_err(|e| draw_err(&e))?;
        for (i, curve) in curves.iter().enumerate() {
            let colour = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    curve.points.iter().copied(),
                    colour.stroke_width(2),
                ))
                .map_err(|e| draw_err(&e))?
                .label(curve.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((FAMILY, 11))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| draw_err(&e))?;
        root.present().map_err(|e| draw_err(&e))?;
    }
    save_rgb(path, width, height, buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_mean_of_a_constant_is_the_constant() {
        let pts: Vec<(f64, f64)> = (0..1000).map(|i| (i as f64, 3.0)).collect();
        assert!(running_mean(&pts).iter().all(|p| (p.1 - 3.0).abs() < 1e-12));
        let ramp: Vec<(f64, f64)> = (0..1000).map(|i| (i as f64, i as f64)).collect();
        assert!((running_mean(&ramp)[500].1 - 500.0).abs() < 1e-9);
    }

    #[test]
    fn robust_range_ignores_a_single_spike() {
        let mut v: Vec<f64> = (0..1000).map(|i| f64::from(i % 10)).collect();
        v[3] = 1e9;
        let (lo, hi) = robust_range(&mut v);
        assert!(lo < 0.0 && hi < 10.0, "{lo}..{hi}");
    }

    #[test]
    fn grid_and_curves_are_written() {
        let dir = std::env::temp_dir().join(format!("avae-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let faces = Tensor::rand([2, 3, 8, 8], (Kind::Float, tch::Device::Cpu)) * 2.0 - 1.0;
        let grid = dir.join("grid.png");
        face_grid(&grid, &[faces.shallow_clone(), faces], &[(0, "in")], &[0]).unwrap();
        let img = image::open(&grid).unwrap();
        assert_eq!(
            (img.width(), img.height()),
            (
                GAP + 2 * (8 + GAP) + SEPARATOR,
                HEADER + 2 * (8 + GAP) + GAP
            )
        );
        let curves = dir.join("curves.png");
        let series = Series {
            title: "loss".into(),
            points: (0..50)
                .map(|i| (f64::from(i), f64::from(i).sin()))
                .collect(),
            smooth: true,
        };
        let empty = Series {
            title: "psnr".into(),
            points: vec![],
            smooth: false,
        };
        loss_curves(&curves, &[series, empty]).unwrap();
        assert_eq!(image::open(&curves).unwrap().width(), 1000);
        let roc = dir.join("roc.png");
        let curve = RocCurve {
            label: "attack".into(),
            points: vec![(0.0, 0.0), (0.1, 0.8), (1.0, 1.0)],
        };
        roc_curves(&roc, "ROC", ("false", "true"), &[curve]).unwrap();
        assert_eq!(image::open(&roc).unwrap().width(), 640);
        assert!(roc_curves(&roc, "ROC", ("false", "true"), &[]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
