//! The report's PNG charts, 1200x800, drawn with plotters into a buffer and written atomically.
//! Text uses the bundled DejaVu Sans (through ab_glyph), so no system font is needed.

use std::fmt::Write as _;
use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, Context, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{format_value, RunData};
use crate::io::write_atomically;
use crate::metric::{Direction, MetricKey};

/// Chart width in pixels.
pub const WIDTH: u32 = 1200;
/// Chart height in pixels.
pub const HEIGHT: u32 = 800;

const FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const FONT: &str = "sans-serif";
const HEADER: u32 = 96;
/// Most tick labels per axis.
const TICKS: usize = 10;

const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(230, 110, 0);
const GREY: RGBColor = RGBColor(90, 90, 90);
const LIGHT: RGBColor = RGBColor(225, 225, 225);
/// Series colours (colour-blind friendly order).
const PALETTE: [RGBColor; 8] = [
    BLUE,
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(214, 39, 40),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
    RGBColor(188, 189, 34),
];

/// A chart written into the report folder.
#[derive(Debug, Clone)]
pub struct Chart {
    /// File name inside the report folder.
    pub file: String,
    /// Its title, also its heading in `report.md`.
    pub title: String,
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Registers the bundled font with plotters (once); the report charts and the captioned sample
/// grids draw their text with it.
pub(crate) fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the bundled chart font could not be loaded"))
    }
}

/// The bundled font at `size` pixels.
pub(crate) fn font(size: u32) -> TextStyle<'static> {
    TextStyle::from((FONT, size).into_font())
}

/// Draws with `draw` on a white 1200x800 canvas and writes the PNG to `path` atomically.
fn render_png(path: &Path, draw: impl FnOnce(&Area) -> Result<()>) -> Result<()> {
    register_font()?;
    let mut buffer = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root).with_context(|| format!("cannot draw {}", path.display()))?;
        root.present()?;
    }
    let mut png_bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut png_bytes, WIDTH, HEIGHT);
        encoder.set_compression(png::Compression::Best);
        encoder.set_adaptive_filter(png::AdaptiveFilterType::Adaptive);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&buffer)?;
        writer.finish()?;
    }
    write_atomically(path, &png_bytes)?;
    Ok(())
}

/// Title and subtitle at the top; returns the area below them.
fn header<'a>(root: &Area<'a>, title: &str, subtitle: &str) -> Result<Area<'a>> {
    let (top, body) = root.split_vertically(HEADER);
    let centre = (WIDTH / 2) as i32;
    top.draw_text(
        title,
        &font(30).pos(Pos::new(HPos::Center, VPos::Top)),
        (centre, 18),
    )?;
    top.draw_text(
        subtitle,
        &font(18).color(&GREY).pos(Pos::new(HPos::Center, VPos::Top)),
        (centre, 60),
    )?;
    Ok(body)
}

/// Tick labels with as many decimals as the tick step needs. plotters steps are 1, 2 or 5 times
/// a power of ten, at most [`TICKS`] per axis.
fn tick_formatter(span: f64) -> impl Fn(&f64) -> String {
    let decimals = if span > 0.0 {
        let target = span / TICKS as f64;
        let base = 10f64.powf(target.log10().floor());
        let step = [1.0, 2.0, 5.0, 10.0]
            .iter()
            .map(|m| m * base)
            .find(|s| *s >= target * (1.0 - 1e-9))
            .unwrap_or(10.0 * base);
        (-step.log10().floor()).clamp(0.0, 8.0) as usize
    } else {
        2
    };
    move |v: &f64| {
        let v = if v.abs() < 1e-12 { 0.0 } else { *v };
        format!("{v:.decimals$}")
    }
}

/// A chart with numeric axes, as the report draws them.
type NumericChart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Builds a chart with numeric axes over `x` and `y` (`left` and `right` pixels of margin) and
/// draws its light grid, its axis titles and its tick labels (rounded to each axis' span).
fn numeric_chart<'a, 'b>(
    builder: &mut ChartBuilder<'a, '_, BitMapBackend<'b>>,
    (left, right): (u32, u32),
    x: Range<f64>,
    y: Range<f64>,
    x_desc: &str,
    y_desc: &str,
) -> Result<NumericChart<'a, 'b>> {
    let (x_span, y_span) = (x.end - x.start, y.end - y.start);
    let mut chart = builder
        .margin_left(left)
        .margin_right(right)
        .margin_bottom(10)
        .x_label_area_size(70)
        .y_label_area_size(100)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .light_line_style(LIGHT.mix(0.4))
        .bold_line_style(LIGHT)
        .max_light_lines(2)
        .x_desc(x_desc)
        .y_desc(y_desc)
        .axis_desc_style(font(20))
        .label_style(font(17))
        .x_label_formatter(&tick_formatter(x_span))
        .y_label_formatter(&tick_formatter(y_span))
        .draw()?;
    Ok(chart)
}

/// `[lo, hi]` widened by `pad` of its span on each side (and to a non-zero span).
fn padded(lo: f64, hi: f64, pad: f64) -> (f64, f64) {
    let span = hi - lo;
    let span = if span > 0.0 {
        span
    } else if hi.abs() > 0.0 {
        hi.abs() * 0.2
    } else {
        1.0
    };
    (lo - pad * span, hi + pad * span)
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let keep: String = text.chars().take(max - 1).collect();
        format!("{keep}…")
    }
}

/// Writes every chart the runs allow; returns them in report order.
pub fn render_all(runs: &[RunData], out: &Path) -> Result<Vec<Chart>> {
    let mut charts = Vec::new();
    if let Some(chart) = cfg_chart(runs, out)? {
        charts.push(chart);
    }
    if let Some(chart) = precision_recall_chart(runs, out)? {
        charts.push(chart);
    }
    // Spreads get no chart of their own: they are the whiskers of their metric's bars.
    for metric in MetricKey::ALL {
        if metric.direction() != Direction::Informational
            && runs.iter().any(|r| r.metric(metric).is_some())
        {
            charts.push(bar_chart(runs, metric, out)?);
        }
    }
    Ok(charts)
}

/// FID and IS against CFG scale, one line per checkpoint, when the runs differ in CFG scale.
fn cfg_chart(runs: &[RunData], out: &Path) -> Result<Option<Chart>> {
    let with_cfg: Vec<&RunData> = runs
        .iter()
        .filter(|r| r.number("cfg_scale").is_some())
        .collect();
    let mut scales: Vec<f64> = with_cfg
        .iter()
        .filter_map(|r| r.number("cfg_scale"))
        .collect();
    scales.sort_by(f64::total_cmp);
    scales.dedup();
    if scales.len() < 2 {
        return Ok(None);
    }
    // The registry's axis labels mention whiskers, which these panels do not draw.
    let panels: Vec<(MetricKey, &str, &str)> = [
        (MetricKey::Fid, "FID (lower is better)", "FID (unitless)"),
        (
            MetricKey::InceptionScore,
            "Inception Score (higher is better)",
            "Inception Score (unitless)",
        ),
    ]
    .into_iter()
    .filter(|(m, _, _)| with_cfg.iter().any(|r| r.metric(*m).is_some()))
    .collect();
    if panels.is_empty() {
        return Ok(None);
    }
    // One series per checkpoint, in order of first appearance.
    let mut groups: Vec<(String, Vec<&RunData>)> = Vec::new();
    for run in &with_cfg {
        let key = run.checkpoint_short();
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, members)) => members.push(run),
            None => groups.push((key, vec![run])),
        }
    }
    let title = if panels.len() == 2 {
        "FID and Inception Score against CFG scale"
    } else if panels[0].0 == MetricKey::Fid {
        "FID against CFG scale"
    } else {
        "Inception Score against CFG scale"
    };
    let subtitle = if groups.len() == 1 {
        format!(
            "checkpoint {}; one point per run{}",
            if groups[0].0.is_empty() {
                "not recorded"
            } else {
                &groups[0].0
            },
            if runs.iter().any(|r| r.is_baseline) {
                "; ringed point: baseline"
            } else {
                ""
            }
        )
    } else {
        format!(
            "one line per checkpoint, one point per run{}",
            if runs.iter().any(|r| r.is_baseline) {
                "; ringed point: baseline"
            } else {
                ""
            }
        )
    };
    let file = "fid_is_vs_cfg.png".to_string();
    let (x_lo, x_hi) = padded(scales[0], scales[scales.len() - 1], 0.06);
    render_png(&out.join(&file), |root| {
        let body = header(root, title, &subtitle)?;
        let areas = body.split_evenly((1, panels.len()));
        for ((metric, caption, axis), area) in panels.iter().zip(&areas) {
            let values: Vec<f64> = with_cfg.iter().filter_map(|r| r.metric(*metric)).collect();
            let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            // Room at the top for the legend when there are several checkpoints.
            let (y_lo, mut y_hi) = padded(lo, hi, 0.1);
            let in_panel = groups
                .iter()
                .filter(|(_, members)| members.iter().any(|r| r.metric(*metric).is_some()))
                .count();
            if in_panel > 1 {
                y_hi += 0.08 * (y_hi - y_lo) * in_panel as f64;
            }
            let mut chart = numeric_chart(
                ChartBuilder::on(area).caption(*caption, font(24)),
                (10, 30),
                x_lo..x_hi,
                y_lo..y_hi,
                "CFG scale (classifier-free guidance weight)",
                axis,
            )?;
            for (i, (name, members)) in groups.iter().enumerate() {
                let colour = PALETTE[i % PALETTE.len()];
                let mut points: Vec<(f64, f64)> = members
                    .iter()
                    .filter_map(|r| Some((r.number("cfg_scale")?, r.metric(*metric)?)))
                    .collect();
                if points.is_empty() {
                    continue;
                }
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                let series = chart.draw_series(LineSeries::new(
                    points.iter().copied(),
                    colour.stroke_width(3),
                ))?;
                if in_panel > 1 {
                    let label = if name.is_empty() {
                        "(checkpoint not recorded)"
                    } else {
                        name
                    };
                    series.label(shorten(label, 40)).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(3))
                    });
                }
                chart.draw_series(points.iter().map(|&p| Circle::new(p, 6, colour.filled())))?;
            }
            chart.draw_series(with_cfg.iter().filter(|r| r.is_baseline).filter_map(|r| {
                Some(Circle::new(
                    (r.number("cfg_scale")?, r.metric(*metric)?),
                    12,
                    ORANGE.stroke_width(3),
                ))
            }))?;
            if in_panel > 1 {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperRight)
                    .background_style(WHITE.mix(0.9))
                    .border_style(GREY)
                    .label_font(font(16))
                    .draw()?;
            }
        }
        Ok(())
    })?;
    Ok(Some(Chart {
        file,
        title: title.to_string(),
    }))
}

/// Axis-aligned pixel rectangle `(x0, y0, x1, y1)`.
type Rect = (i32, i32, i32, i32);

fn overlaps(a: Rect, b: Rect) -> bool {
    a.0 < b.2 && b.0 < a.2 && a.1 < b.3 && b.1 < a.3
}

/// Precision against recall, one labelled point per run.
fn precision_recall_chart(runs: &[RunData], out: &Path) -> Result<Option<Chart>> {
    let points: Vec<(&RunData, f64, f64)> = runs
        .iter()
        .filter_map(|r| {
            Some((
                r,
                r.metric(MetricKey::Recall)?,
                r.metric(MetricKey::Precision)?,
            ))
        })
        .collect();
    if points.is_empty() {
        return Ok(None);
    }
    let range = |values: Vec<f64>| {
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mid = (lo + hi) / 2.0;
        let half = ((hi - lo) / 2.0 * 1.3).max(0.1);
        let (mut a, mut b) = (mid - half, mid + half);
        if a < 0.0 {
            b = (b - a).min(1.0);
            a = 0.0;
        }
        if b > 1.0 {
            a = (a - (b - 1.0)).max(0.0);
            b = 1.0;
        }
        (a.min(lo), b.max(hi))
    };
    let (x_lo, x_hi) = range(points.iter().map(|p| p.1).collect());
    let (y_lo, y_hi) = range(points.iter().map(|p| p.2).collect());
    let title = "Precision against recall";
    let subtitle = if runs.iter().any(|r| r.is_baseline) {
        "one point per run (orange: baseline); up and right is better"
    } else {
        "one point per run; up and right is better"
    };
    let file = "precision_recall.png".to_string();
    render_png(&out.join(&file), |root| {
        let body = header(root, title, subtitle)?;
        let mut chart = numeric_chart(
            &mut ChartBuilder::on(&body),
            (20, 40),
            x_lo..x_hi,
            y_lo..y_hi,
            "Recall (fraction of reference images covered, 0–1)",
            "Precision (fraction of samples on the reference manifold, 0–1)",
        )?;
        let colour = |r: &RunData| if r.is_baseline { ORANGE } else { BLUE };
        chart.draw_series(
            points
                .iter()
                .map(|(r, x, y)| Circle::new((*x, *y), 8, colour(r).filled())),
        )?;
        // Labels: the first free spot around each point, clear of other labels and points.
        let (px, py) = chart.plotting_area().get_pixel_range();
        let label_style = font(17);
        let centres: Vec<(i32, i32)> = points
            .iter()
            .map(|(_, x, y)| chart.backend_coord(&(*x, *y)))
            .collect();
        let mut taken: Vec<Rect> = centres
            .iter()
            .map(|&(x, y)| (x - 9, y - 9, x + 9, y + 9))
            .collect();
        for ((run, _, _), &(cx, cy)) in points.iter().zip(&centres) {
            let text = shorten(
                &format!(
                    "{}{}",
                    run.name,
                    if run.is_baseline { " (baseline)" } else { "" }
                ),
                36,
            );
            let (w, h) = root.estimate_text_size(&text, &label_style)?;
            let (w, h) = (w as i32, h as i32 + 4);
            let mut chosen = None;
            'search: for ring in 1..=6 {
                let d = 12 * ring;
                let candidates = [
                    (cx + d, cy - h / 2),
                    (cx - d - w, cy - h / 2),
                    (cx - w / 2, cy - d - h),
                    (cx - w / 2, cy + d),
                    (cx + d, cy - d - h),
                    (cx + d, cy + d),
                    (cx - d - w, cy - d - h),
                    (cx - d - w, cy + d),
                ];
                for (x, y) in candidates {
                    let rect = (x, y, x + w, y + h);
                    let inside = rect.0 >= px.start
                        && rect.2 <= px.end
                        && rect.1 >= py.start
                        && rect.3 <= py.end;
                    if inside && !taken.iter().any(|t| overlaps(*t, rect)) {
                        chosen = Some((rect, ring > 1 || (x, y) != candidates[0]));
                        break 'search;
                    }
                }
            }
            let (rect, leader) =
                chosen.unwrap_or(((cx + 12, cy - h / 2, cx + 12 + w, cy + h / 2), false));
            taken.push(rect);
            if leader {
                // From the marker's edge to the nearest point of the label.
                let target = (cx.clamp(rect.0, rect.2), cy.clamp(rect.1, rect.3));
                let (dx, dy) = (f64::from(target.0 - cx), f64::from(target.1 - cy));
                let length = dx.hypot(dy);
                if length > 12.0 {
                    let start = (
                        cx + (9.0 * dx / length).round() as i32,
                        cy + (9.0 * dy / length).round() as i32,
                    );
                    root.draw(&PathElement::new(vec![start, target], GREY.stroke_width(1)))?;
                }
            }
            root.draw_text(
                &text,
                &label_style
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Left, VPos::Top)),
                (rect.0, rect.1 + 2),
            )?;
        }
        Ok(())
    })?;
    Ok(Some(Chart {
        file,
        title: title.to_string(),
    }))
}

/// One horizontal bar per run (first run on top), the baseline's bar in orange with a dashed
/// line at its value, value labels at the bar ends.
fn bar_chart(runs: &[RunData], metric: MetricKey, out: &Path) -> Result<Chart> {
    let with_metric: Vec<&RunData> = runs.iter().filter(|r| r.metric(metric).is_some()).collect();
    let left_out = runs.len() - with_metric.len();
    let n = with_metric.len() as i32;
    let rows: Vec<(String, f64, f64, bool)> = with_metric
        .iter()
        .map(|r| {
            let std = metric
                .std_companion()
                .and_then(|s| r.metric(s))
                .unwrap_or(0.0)
                .abs();
            let name = shorten(&r.name, 32);
            let name = if r.is_baseline {
                format!("{name} (baseline)")
            } else {
                name
            };
            (name, r.metric(metric).unwrap_or(0.0), std, r.is_baseline)
        })
        .collect();
    let lo = rows.iter().map(|(_, v, s, _)| v - s).fold(0f64, f64::min);
    let hi = rows.iter().map(|(_, v, s, _)| v + s).fold(0f64, f64::max);
    let span = if hi - lo > 0.0 { hi - lo } else { 1.0 };
    let (x_lo, x_hi) = (
        // Room for the value labels left of negative bars, as right of positive ones.
        if lo < 0.0 { lo - 0.2 * span } else { 0.0 },
        hi + 0.2 * span,
    );
    let title = format!(
        "{} per run ({} is better)",
        metric.short_label(),
        if metric.direction() == Direction::LowerIsBetter {
            "lower"
        } else {
            "higher"
        }
    );
    let baseline = rows.iter().find(|r| r.3).map(|r| r.1);
    let mut subtitle = match (baseline, runs.iter().find(|r| r.is_baseline)) {
        (Some(v), Some(b)) => format!(
            "orange bar and dashed line: baseline {} = {}",
            shorten(&b.name, 40),
            format_value(v)
        ),
        _ => "one bar per run, in the order given".to_string(),
    };
    if left_out > 0 {
        let _ = write!(
            subtitle,
            "; {left_out} run{} without {} left out",
            if left_out == 1 { "" } else { "s" },
            metric.short_label()
        );
    }
    let file = format!("metric_{}.png", metric.name());
    render_png(&out.join(&file), |root| {
        let body = header(root, &title, &subtitle)?;
        let label_style = font(17);
        let mut label_width = 0;
        for (name, ..) in &rows {
            label_width = label_width.max(root.estimate_text_size(name, &label_style)?.0);
        }
        // Rows at y = 0 (last run) .. n-1 (first run), each bar 0.6 high.
        let mut chart = ChartBuilder::on(&body)
            .margin_left(10)
            .margin_right(40)
            .margin_bottom(10)
            .x_label_area_size(70)
            .y_label_area_size(label_width.clamp(60, 460) + 50)
            .build_cartesian_2d(x_lo..x_hi, -0.5..f64::from(n) - 0.5)?;
        let names: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
        let row_label = |y: &f64| {
            let i = y.round();
            if (y - i).abs() < 1e-6 && i >= 0.0 && i < f64::from(n) {
                names[(f64::from(n) - 1.0 - i) as usize].clone()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .light_line_style(LIGHT.mix(0.4))
            .bold_line_style(LIGHT)
            .max_light_lines(2)
            .x_desc(metric.axis_label())
            .y_desc("run (folder name)")
            .axis_desc_style(font(20))
            .label_style(label_style.clone())
            .y_labels(rows.len() + 1)
            .y_label_formatter(&row_label)
            .x_label_formatter(&tick_formatter(x_hi - x_lo))
            .draw()?;
        if let Some(b) = baseline {
            chart.draw_series(std::iter::once(DashedPathElement::new(
                vec![(b, -0.5), (b, f64::from(n) - 0.5)],
                8,
                6,
                ORANGE.stroke_width(2),
            )))?;
        }
        let row_px = chart.plotting_area().dim_in_pixel().1 as f64 / f64::from(n.max(1));
        // Bars 60% of a row (76% when rows are thin), at most 64 pixels thick.
        let half: f64 = if row_px > 40.0 { 0.3 } else { 0.38 };
        let half = half.min(32.0 / row_px.max(1.0));
        for (i, (_, value, std, is_baseline)) in rows.iter().enumerate() {
            let y = f64::from(n - 1 - i as i32);
            let v = *value;
            let std = *std;
            let colour = if *is_baseline { ORANGE } else { BLUE };
            chart.draw_series(std::iter::once(Rectangle::new(
                [(0.0, y - half), (v, y + half)],
                colour.filled(),
            )))?;
            if std > 0.0 {
                let cap = ((row_px * 0.2) as i32).clamp(3, 12);
                chart.draw_series(std::iter::once(PathElement::new(
                    vec![(v - std, y), (v + std, y)],
                    BLACK.stroke_width(2),
                )))?;
                for end in [v - std, v + std] {
                    chart.draw_series(std::iter::once(
                        EmptyElement::at((end, y))
                            + PathElement::new(vec![(0, -cap), (0, cap)], BLACK.stroke_width(2)),
                    ))?;
                }
            }
            let shown = format_value(v);
            let label = if std > 0.0 {
                let decimals = shown.split_once('.').map_or(0, |(_, d)| d.len());
                if shown.contains('e') {
                    format!("{shown} ± {}", format_value(std))
                } else {
                    format!("{shown} ± {std:.decimals$}")
                }
            } else {
                shown
            };
            // Value label on a white patch beyond the bar's end (or its whisker): right of a
            // positive bar, left of a negative one.
            let (end, side, gap) = if v < 0.0 {
                (v - std, HPos::Right, -8)
            } else {
                (v + std, HPos::Left, 8)
            };
            let style = font(16).pos(Pos::new(side, VPos::Center));
            let (w, h) = root.estimate_text_size(&label, &style)?;
            let (x, y_px) = chart.backend_coord(&(end, y));
            let x = x + gap;
            let left = if v < 0.0 { x - w as i32 } else { x };
            root.draw(&Rectangle::new(
                [
                    (left - 3, y_px - h as i32 / 2 - 3),
                    (left + w as i32 + 3, y_px + h as i32 / 2 + 3),
                ],
                WHITE.mix(0.85).filled(),
            ))?;
            root.draw_text(&label, &style.color(&BLACK), (x, y_px))?;
        }
        Ok(())
    })?;
    Ok(Chart { file, title })
}
