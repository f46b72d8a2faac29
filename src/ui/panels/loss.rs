//! Training loss: a sparkline of recent (smoothed) step losses, and charts
//! of the per-epoch training and validation loss and validation accuracy.
use super::{axis_labels, block, frame, line_at, Spans};
use crate::ui::app::App;
use crate::ui::fmt;
use crate::ui::theme::{Series, Theme};
use ratatui::{
    buffer::Buffer,
    layout::{Constraint, Layout, Rect},
    text::{Line, Span},
    widgets::{Axis, Chart, Dataset, GraphType, Sparkline, Widget},
};

/// `values` averaged into at most `n` buckets.
pub fn resample(values: &[f64], n: usize) -> Vec<f64> {
    if n == 0 || values.is_empty() {
        return Vec::new();
    }
    if values.len() <= n {
        return values.to_vec();
    }
    (0..n)
        .map(|i| {
            let (a, b) = (
                i * values.len() / n,
                ((i + 1) * values.len() / n).max(i * values.len() / n + 1),
            );
            values[a..b].iter().sum::<f64>() / (b - a) as f64
        })
        .collect()
}

/// The x-axis end: the run so far, in whole epochs (at least 1, at most the run).
fn x_end(app: &App) -> f64 {
    let Some(i) = &app.info else { return 1.0 };
    let now = app.global_step as f64 / i.steps_per_epoch.max(1) as f64;
    let done = app.epochs.last().map(|e| e.epoch as f64).unwrap_or(0.0);
    now.max(done).ceil().clamp(1.0, i.epochs.max(1) as f64)
}

fn caption<'a>(theme: &Theme, items: &[(&'a str, Series)]) -> Line<'a> {
    let mut spans = Vec::new();
    for (name, s) in items {
        spans.push(Span::styled(s.sample, s.style));
        spans.push(Span::styled(format!(" {name}  "), theme.dim()));
    }
    Line::from(spans)
}

fn dataset<'a>(name: &'a str, data: &'a [(f64, f64)], s: Series) -> Dataset<'a> {
    Dataset::default()
        .name(name)
        .data(data)
        .marker(s.marker)
        .graph_type(GraphType::Line)
        .style(s.style)
}

fn chart<'a>(
    datasets: Vec<Dataset<'a>>,
    x_end: f64,
    y: (f64, f64),
    yfmt: fn(f64) -> String,
    theme: &Theme,
) -> Chart<'a> {
    let x_labels = axis_labels(0.0, x_end, 3, |v| {
        if v.fract() == 0.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.1}")
        }
    });
    Chart::new(datasets)
        .x_axis(Axis::default().bounds([0.0, x_end]).labels(x_labels).style(theme.dim()))
        .y_axis(
            Axis::default()
                .bounds([y.0, y.1])
                .labels(axis_labels(y.0, y.1, 3, yfmt))
                .style(theme.dim()),
        )
        .legend_position(None)
}

fn loss_chart(app: &App, area: Rect, buf: &mut Buffer, theme: &Theme) {
    let steps = app.step_loss.points();
    let train: Vec<(f64, f64)> = app
        .epochs
        .iter()
        .filter(|e| e.train_loss.is_finite())
        .map(|e| (e.epoch as f64, e.train_loss))
        .collect();
    let val: Vec<(f64, f64)> = app
        .epochs
        .iter()
        .filter(|e| e.val_loss.is_finite())
        .map(|e| (e.epoch as f64, e.val_loss))
        .collect();
    let ymax = steps
        .iter()
        .chain(&train)
        .chain(&val)
        .map(|p| p.1)
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.05;
    captioned(
        caption(
            theme,
            &[
                ("train", theme.train_loss()),
                ("val loss/epoch", theme.val_loss()),
                ("steps", theme.steps()),
            ],
        ),
        chart(
            vec![
                dataset("steps", &steps, theme.steps()),
                dataset("train", &train, theme.train_loss()),
                dataset("val", &val, theme.val_loss()),
            ],
            x_end(app),
            (0.0, ymax),
            fmt::loss,
            theme,
        ),
        area,
        buf,
    );
}

fn accuracy_chart(app: &App, area: Rect, buf: &mut Buffer, theme: &Theme) {
    let top1: Vec<(f64, f64)> = app.epochs.iter().map(|e| (e.epoch as f64, 100.0 * e.top1)).collect();
    let top5: Vec<(f64, f64)> = app.epochs.iter().map(|e| (e.epoch as f64, 100.0 * e.top5)).collect();
    captioned(
        caption(theme, &[("val top-1 %", theme.top1()), ("top-5 %", theme.top5())]),
        chart(
            vec![
                dataset("top-1", &top1, theme.top1()),
                dataset("top-5", &top5, theme.top5()),
            ],
            x_end(app),
            (0.0, 100.0),
            |v| format!("{v:.0}"),
            theme,
        ),
        area,
        buf,
    );
}

/// A caption line over a chart.
fn captioned(caption: Line, chart: Chart, area: Rect, buf: &mut Buffer) {
    line_at(buf, area, 0, &caption);
    let rest = Rect {
        y: area.y + 1,
        height: area.height.saturating_sub(1),
        ..area
    };
    chart.render(rest, buf);
}

pub fn render(app: &App, area: Rect, buf: &mut Buffer, theme: &Theme) {
    let inner = frame(block(" Loss ", false, theme), area, buf);
    if inner.height < 3 || inner.width < 10 {
        return;
    }
    let spark_h = recent(app, inner, buf, theme);
    // Validation in words: the charts may not fit.
    let acc_row = 1 + spark_h;
    line_at(buf, inner, acc_row, &validation(app, inner.width, theme));
    let charts = Rect {
        y: inner.y + acc_row + 1,
        height: inner.height.saturating_sub(acc_row + 1),
        ..inner
    };
    if charts.height < 4 {
        return;
    }
    // The charts side by side when wide, one over the other when tall, else
    // the loss alone.
    if charts.width >= 90 {
        let [a, b] = Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(charts);
        loss_chart(app, a, buf, theme);
        let gap = 2;
        let b = Rect {
            x: b.x + gap,
            width: b.width.saturating_sub(gap),
            ..b
        };
        accuracy_chart(app, b, buf, theme);
    } else if charts.height >= 16 {
        let [a, b] = Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(charts);
        loss_chart(app, a, buf, theme);
        accuracy_chart(app, b, buf, theme);
    } else {
        loss_chart(app, charts, buf, theme);
    }
}

/// Recent step losses: a line of numbers over a sparkline at the top of
/// `inner`; the sparkline's height.
fn recent(app: &App, inner: Rect, buf: &mut Buffer, theme: &Theme) -> u16 {
    let recent: Vec<f64> = app.recent_loss.iter().collect();
    let (lo, hi) = recent
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let mut top = Spans::new(inner.width);
    match (app.loss, app.smoothed_loss) {
        (Some(l), Some(s)) => {
            top.push(vec![
                Span::styled("step loss ", theme.dim()),
                Span::styled(fmt::loss(l), theme.bold()),
            ]);
            top.push(vec![Span::styled(" · smoothed ", theme.dim()), Span::raw(fmt::loss(s))]);
            if hi > lo {
                top.push(vec![Span::styled(
                    format!(" · range {}–{}", fmt::loss(lo), fmt::loss(hi)),
                    theme.dim(),
                )]);
            }
        }
        _ => top.push(vec![Span::styled(
            "step loss: waiting for the first steps…",
            theme.dim(),
        )]),
    }
    line_at(buf, inner, 0, &top.line());
    let spark_h: u16 = if inner.height >= 20 { 3 } else { 2 };
    let spark = Rect {
        y: inner.y + 1,
        height: spark_h.min(inner.height.saturating_sub(1)),
        ..inner
    };
    let bars: Vec<u64> = resample(&recent, spark.width as usize)
        .into_iter()
        // The lowest value keeps a sliver of a bar.
        .map(|v| {
            if hi > lo {
                8 + ((v - lo) / (hi - lo) * 92.0).round() as u64
            } else {
                50
            }
        })
        .collect();
    Sparkline::default()
        .data(&bars)
        .max(100)
        .style(theme.sparkline())
        .render(spark, buf);
    spark_h
}

/// The last validation pass in words, `width` wide at most.
fn validation(app: &App, width: u16, theme: &Theme) -> Line<'static> {
    match app.epochs.last() {
        Some(e) => {
            let mut l = Spans::new(width);
            l.push(vec![
                Span::styled(format!("epoch {} val ", e.epoch), theme.dim()),
                Span::styled("top-1 ", theme.dim()),
                Span::styled(fmt::pct(e.top1), theme.good()),
                Span::styled(" top-5 ", theme.dim()),
                Span::raw(fmt::pct(e.top5)),
            ]);
            l.push(vec![
                Span::styled(" · loss ", theme.dim()),
                Span::raw(fmt::loss(e.val_loss)),
            ]);
            l.push(vec![
                Span::styled(" · train ", theme.dim()),
                Span::raw(fmt::loss(e.train_loss)),
            ]);
            l.line()
        }
        // The longest of these that fits: never a sentence cut off.
        None => {
            let say = [
                "no validation yet: the first comes after epoch 1",
                "validation after epoch 1",
                "val: epoch 1",
            ]
            .into_iter()
            .find(|s| s.len() <= width as usize)
            .unwrap_or("");
            Line::styled(say, theme.dim())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::resample;

    #[test]
    fn resample_averages_buckets() {
        assert_eq!(resample(&[1.0, 3.0, 5.0, 7.0], 2), vec![2.0, 6.0]);
        assert_eq!(resample(&[1.0, 2.0], 5), vec![1.0, 2.0]);
        assert_eq!(resample(&[1.0; 2048], 80).len(), 80);
        assert!(resample(&[], 3).is_empty());
    }
}
