//! The learning rate against the epoch on a log scale, each decay marked,
//! and the decays listed with their cause and epoch.
use super::{block, frame, line_at};
use crate::control::RunInfo;
use crate::ui::app::App;
use crate::ui::fmt;
use crate::ui::theme::Theme;
use ratatui::{
    buffer::Buffer,
    layout::Rect,
    text::{Line, Span},
    widgets::{Axis, Chart, Dataset, GraphType, Widget},
};

/// The lr as a step function: (epoch, log10 lr) points.
pub fn steps(app: &App) -> Vec<(f64, f64)> {
    let spe = app.info.as_ref().map(|i| i.steps_per_epoch.max(1)).unwrap_or(1) as f64;
    let now = app.global_step as f64 / spe;
    let pts = &app.lr_points;
    let mut out = Vec::with_capacity(pts.len() * 2);
    for (i, p) in pts.iter().enumerate() {
        let next = pts.get(i + 1).map(|q| q.x).unwrap_or(now).max(p.x);
        let y = p.lr.log10();
        out.push((p.x, y));
        out.push((next, y));
    }
    out
}

pub fn render(app: &App, area: Rect, buf: &mut Buffer, theme: &Theme) {
    let inner = frame(block(" Learning rate ", false, theme), area, buf);
    let Some(info) = &app.info else { return };
    if inner.height < 2 || inner.width < 16 {
        return;
    }
    line_at(
        buf,
        inner,
        0,
        &Line::from(vec![
            Span::styled("now ", theme.dim()),
            Span::styled(fmt::lr(app.lr), theme.accent()),
            Span::raw(format!(" · {}/{} decays used", app.decays_used, info.max_decays)),
        ]),
    );
    let body = Rect {
        y: inner.y + 1,
        height: inner.height - 1,
        ..inner
    };
    let list_w = decays(app, body, buf, theme);
    if list_w == body.width || body.height < 3 {
        return;
    }
    // The chart on the left.
    let chart_area = Rect {
        width: body.width - list_w - 1,
        ..body
    };
    chart(app, info, chart_area, buf, theme);
}

/// The decays, newest first, on the right of `body` (or alone when
/// narrow); the list's width.
fn decays(app: &App, body: Rect, buf: &mut Buffer, theme: &Theme) -> u16 {
    let decays: Vec<_> = app.lr_points.iter().filter(|p| p.cause.is_some()).rev().collect();
    // The list is as wide as its longest entry; the chart needs 20 columns.
    let longest = decays
        .iter()
        .map(|p| 3 + fmt::lr(p.lr).len() + p.describe().chars().count())
        .max()
        .unwrap_or(13)
        .max(13) as u16;
    let list_w = if body.width >= longest + 21 {
        longest.min(body.width / 2)
    } else {
        body.width
    };
    let list = Rect {
        x: body.x + body.width - list_w,
        width: list_w,
        ..body
    };
    let mut lines: Vec<Line> = Vec::new();
    if decays.is_empty() {
        lines.push(Line::styled("no decays yet", theme.dim()));
    }
    let room = list.height as usize;
    for (k, p) in decays.iter().enumerate() {
        if k + 1 == room && decays.len() > room {
            lines.push(Line::styled(format!("… {} earlier", decays.len() - k), theme.dim()));
            break;
        }
        lines.push(Line::from(vec![
            Span::styled("↓ ", theme.warn()),
            Span::styled(fmt::lr(p.lr), theme.accent()),
            Span::raw(" "),
            Span::raw(p.describe()),
        ]));
    }
    for (r, l) in lines.iter().enumerate() {
        line_at(buf, list, r as u16, l);
    }
    list_w
}

/// The lr against the epoch, log scale, decays marked.
fn chart(app: &App, info: &RunInfo, chart_area: Rect, buf: &mut Buffer, theme: &Theme) {
    let line = steps(app);
    let marks: Vec<(f64, f64)> = app
        .lr_points
        .iter()
        .filter(|p| p.cause.is_some())
        .map(|p| (p.x, p.lr.log10()))
        .collect();
    let (lmin, lmax) = line
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
    if !lmin.is_finite() || !lmax.is_finite() {
        return;
    }
    let lo = (lmin - 0.5).floor();
    let hi = (lmax + 0.5).ceil();
    let decades = (hi - lo) as usize + 1;
    // Rows of the plot: less the x axis and its labels.
    let plot_rows = chart_area.height.saturating_sub(2) as usize;
    let n_labels = if decades <= plot_rows { decades } else { 2 };
    let y_labels: Vec<Line> = (0..n_labels)
        .map(|i| {
            let v = lo + (hi - lo) * i as f64 / (n_labels - 1) as f64;
            Line::from(format!("{:.0e}", 10f64.powf(v)))
        })
        .collect();
    let spe = info.steps_per_epoch.max(1) as f64;
    let now = (app.global_step as f64 / spe).max(line.last().map(|p| p.0).unwrap_or(0.0));
    let x_end = now.ceil().clamp(1.0, info.epochs.max(1) as f64).max(now);
    let series = theme.lr_line();
    let mark = theme.decay_mark();
    Chart::new(vec![
        Dataset::default()
            .name("lr")
            .data(&line)
            .marker(series.marker)
            .graph_type(GraphType::Line)
            .style(series.style),
        Dataset::default()
            .name("decay")
            .data(&marks)
            .marker(mark.marker)
            .graph_type(GraphType::Scatter)
            .style(mark.style),
    ])
    .x_axis(
        Axis::default()
            .bounds([0.0, x_end])
            .labels(vec![Line::from("ep 0"), Line::from(format!("{x_end:.0}"))])
            .style(theme.dim()),
    )
    .y_axis(Axis::default().bounds([lo, hi]).labels(y_labels).style(theme.dim()))
    .legend_position(None)
    .render(chart_area, buf);
}
