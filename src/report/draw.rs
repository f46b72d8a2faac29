//! The report's panels, each a function of the histories onto its area.
use super::History;
use crate::control::LrCause;
use anyhow::Result;
use plotters::coord::ranged1d::SegmentedCoord;
use plotters::coord::types::RangedCoordusize;
use plotters::coord::Shift;
use plotters::prelude::*;

/// Run colours, in order.
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];
/// Classes drawn as a matrix, at most (beyond: the most confused pairs).
const MATRIX_MAX: usize = 50;
const PAIRS: usize = 20;

/// An axis of `n` class segments (plotters' segmented ranges are inclusive).
fn classes(n: usize) -> SegmentedCoord<RangedCoordusize> {
    (0..n - 1).into_segmented()
}

fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn font(size: u32) -> TextStyle<'static> {
    ("sans-serif", size).into_font().into()
}

/// The last epoch any run reached (at least 1).
fn epochs(runs: &[History]) -> f64 {
    runs.iter()
        .flat_map(|h| {
            h.epochs
                .iter()
                .map(|e| e.epoch as f64)
                .chain(h.steps.iter().map(|s| s.0))
        })
        .fold(1.0, f64::max)
}

pub fn sheet<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, runs: &[History]) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let names: Vec<&str> = runs.iter().map(|h| h.name.as_str()).collect();
    let (title, body) = root.split_vertically(44);
    title.draw(&Text::new(
        format!("vggtrain report: {}", names.join(", ")),
        (16, 10),
        font(24),
    ))?;
    let (w, h) = body.dim_in_pixel();
    let (upper, lower) = body.split_vertically(h / 2);
    let top = upper.split_evenly((1, 3));
    loss(&top[0], runs)?;
    accuracy(&top[1], runs)?;
    lr(&top[2], runs)?;
    let (classes, matrix) = lower.split_horizontally(w * 2 / 3);
    per_class(&classes, &runs[0])?;
    confusion(&matrix, &runs[0])?;
    Ok(())
}

fn loss<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, runs: &[History]) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let top = runs
        .iter()
        .flat_map(|h| {
            h.steps
                .iter()
                .map(|s| s.1)
                .chain(h.epochs.iter().flat_map(|e| [e.train_loss, e.val.loss]))
        })
        .filter(|v| v.is_finite())
        .fold(0.1, f64::max);
    let mut c = ChartBuilder::on(area)
        .caption("loss (steps behind, train and validation per epoch)", font(18))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(52)
        .build_cartesian_2d(0.0..epochs(runs), 0.0..top * 1.05)?;
    c.configure_mesh().x_desc("epoch").label_style(font(14)).draw()?;
    for (i, h) in runs.iter().enumerate() {
        let col = colour(i);
        c.draw_series(LineSeries::new(h.steps.iter().copied(), col.mix(0.25)))?;
        let train = h.epochs.iter().map(|e| (e.epoch as f64, e.train_loss));
        c.draw_series(LineSeries::new(train, col.stroke_width(2)))?
            .label(format!("{} train", h.name))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], col.stroke_width(2)));
        let val: Vec<(f64, f64)> = h.epochs.iter().map(|e| (e.epoch as f64, e.val.loss)).collect();
        c.draw_series(LineSeries::new(val.iter().copied(), col.stroke_width(1)))?;
        c.draw_series(val.iter().map(|&p| Circle::new(p, 4, col.filled())))?
            .label(format!("{} validation", h.name))
            .legend(move |(x, y)| Circle::new((x + 10, y), 4, col.filled()));
    }
    legend(&mut c, SeriesLabelPosition::UpperRight)
}

fn legend<'a, DB: DrawingBackend + 'a, X: Ranged, Y: Ranged>(
    c: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    at: SeriesLabelPosition,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    c.configure_series_labels()
        .label_font(font(14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .position(at)
        .draw()?;
    Ok(())
}

fn accuracy<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, runs: &[History]) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let mut c = ChartBuilder::on(area)
        .caption("validation top-1 (line) and top-5 (thin), %", font(18))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(52)
        .build_cartesian_2d(0.0..epochs(runs), 0.0..100.0)?;
    c.configure_mesh().x_desc("epoch").label_style(font(14)).draw()?;
    for (i, h) in runs.iter().enumerate() {
        let col = colour(i);
        let top1: Vec<(f64, f64)> = h.epochs.iter().map(|e| (e.epoch as f64, 100.0 * e.val.top1)).collect();
        let top5 = h.epochs.iter().map(|e| (e.epoch as f64, 100.0 * e.val.top5));
        c.draw_series(LineSeries::new(top1.iter().copied(), col.stroke_width(2)))?
            .label(format!("{} top-1", h.name))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], col.stroke_width(2)));
        c.draw_series(top1.iter().map(|&p| Circle::new(p, 3, col.filled())))?;
        c.draw_series(LineSeries::new(top5, col.mix(0.6)))?
            .label(format!("{} top-5", h.name))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], col.mix(0.6)));
    }
    legend(&mut c, SeriesLabelPosition::LowerRight)
}

fn lr<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, runs: &[History]) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let values = runs.iter().flat_map(|h| h.lr.iter().map(|m| m.1)).filter(|v| *v > 0.0);
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo > hi { (1e-4, 1e-1) } else { (lo / 3.0, hi * 3.0) };
    let end = epochs(runs);
    let mut c = ChartBuilder::on(area)
        .caption("learning rate (● plateau decay, ▲ manual change)", font(18))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..end, (lo..hi).log_scale())?;
    c.configure_mesh()
        .x_desc("epoch")
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .label_style(font(14))
        .draw()?;
    for (i, h) in runs.iter().enumerate() {
        let col = colour(i);
        // A step function: each lr holds until the next change.
        let mut points = Vec::new();
        for (n, m) in h.lr.iter().enumerate() {
            if n > 0 {
                points.push((m.0, h.lr[n - 1].1));
            }
            points.push((m.0, m.1));
        }
        let last = h
            .steps
            .last()
            .map(|s| s.0)
            .unwrap_or(end)
            .max(h.lr.last().map(|m| m.0).unwrap_or(0.0));
        if let Some(m) = h.lr.last() {
            points.push((last, m.1));
        }
        c.draw_series(LineSeries::new(points, col.stroke_width(2)))?
            .label(h.name.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], col.stroke_width(2)));
        for &(x, v, cause) in &h.lr {
            match cause {
                Some(LrCause::Plateau) => {
                    c.draw_series(std::iter::once(Circle::new((x, v), 6, col.filled())))?;
                }
                Some(LrCause::Manual) => {
                    c.draw_series(std::iter::once(TriangleMarker::new((x, v), 7, col.filled())))?;
                }
                _ => {}
            }
        }
    }
    legend(&mut c, SeriesLabelPosition::UpperRight)
}

fn per_class<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, h: &History) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let Some(best) = h.best() else {
        return Ok(());
    };
    let n = best.val.per_class.len();
    // Names under the bars while they fit.
    let named = n <= 40;
    let mut c = ChartBuilder::on(area)
        .caption(
            format!("{}: top-1 per class at the best epoch ({}), %", h.name, best.epoch),
            font(18),
        )
        .margin(12)
        .x_label_area_size(if named { 40 } else { 24 })
        .y_label_area_size(52)
        .build_cartesian_2d(classes(n), 0.0..100.0)?;
    let name = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(i) if named => h.classes.get(*i).cloned().unwrap_or_default(),
        _ => String::new(),
    };
    c.configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&name)
        .label_style(font(13))
        .draw()?;
    let col = colour(0);
    c.draw_series(best.val.per_class.iter().enumerate().map(|(i, a)| {
        let mut bar = Rectangle::new(
            [(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), 100.0 * a)],
            col.filled(),
        );
        bar.set_margin(0, 0, 3, 3);
        bar
    }))?;
    Ok(())
}

fn confusion<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, h: &History) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let Some(m) = h.confusion() else {
        return Ok(());
    };
    let n = m.len();
    let rows: Vec<Vec<f64>> = m
        .iter()
        .map(|r| {
            let total: u64 = r.iter().sum();
            r.iter().map(|&c| c as f64 / total.max(1) as f64).collect()
        })
        .collect();
    if n <= MATRIX_MAX {
        let mut c = ChartBuilder::on(area)
            .caption("confusion, newest epoch (rows: true class, share)", font(18))
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(40)
            .build_cartesian_2d(classes(n), classes(n))?;
        // Row 0 (the first true class) on top.
        let index = |v: &SegmentValue<usize>, flip: bool| match v {
            SegmentValue::CenterOf(i) if *i < n => (if flip { n - 1 - i } else { *i }).to_string(),
            _ => String::new(),
        };
        c.configure_mesh()
            .disable_mesh()
            .x_labels(n)
            .y_labels(n)
            .x_label_formatter(&|v| index(v, false))
            .y_label_formatter(&|v| index(v, true))
            .x_desc("predicted")
            .y_desc("true")
            .label_style(font(13))
            .draw()?;
        c.draw_series(rows.iter().enumerate().flat_map(|(t, r)| {
            r.iter().enumerate().map(move |(p, &v)| {
                let shade = (255.0 * (1.0 - v)) as u8;
                let (x, y) = (SegmentValue::Exact(p), SegmentValue::Exact(n - 1 - t));
                let (x1, y1) = (SegmentValue::Exact(p + 1), SegmentValue::Exact(n - t));
                Rectangle::new([(x, y), (x1, y1)], RGBColor(shade, shade, 255).filled())
            })
        }))?;
        return Ok(());
    }
    // Too many classes for a matrix: the largest off-diagonal shares.
    let mut pairs: Vec<(f64, usize, usize)> = rows
        .iter()
        .enumerate()
        .flat_map(|(t, r)| {
            r.iter()
                .enumerate()
                .filter(move |(p, _)| *p != t)
                .map(move |(p, &v)| (v, t, p))
        })
        .filter(|p| p.0 > 0.0)
        .collect();
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
    pairs.truncate(PAIRS);
    let top = pairs.first().map(|p| 100.0 * p.0).unwrap_or(1.0).max(1.0);
    let mut c = ChartBuilder::on(area)
        .caption(
            "most confused pairs, newest epoch (share of the true class, %)",
            font(18),
        )
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(10)
        .build_cartesian_2d(0.0..top * 1.05, 0.0..PAIRS as f64)?;
    c.configure_mesh().disable_y_axis().label_style(font(13)).draw()?;
    let col = colour(0);
    for (k, &(v, t, p)) in pairs.iter().enumerate() {
        let y = (PAIRS - 1 - k) as f64;
        c.draw_series(std::iter::once(Rectangle::new(
            [(0.0, y + 0.15), (100.0 * v, y + 0.85)],
            col.mix(0.5).filled(),
        )))?;
        let label = format!(
            "{} → {}",
            h.classes.get(t).cloned().unwrap_or_default(),
            h.classes.get(p).cloned().unwrap_or_default()
        );
        c.draw_series(std::iter::once(Text::new(label, (0.5, y + 0.7), font(13))))?;
    }
    Ok(())
}
