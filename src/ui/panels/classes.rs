//! Per-class validation accuracy with the change since the previous epoch,
//! the worst classes marked ▼, and the most confused pairs.
use super::{block, frame, line_at};
use crate::ui::app::{App, ClassOrder, ClassRow, Focus};
use crate::ui::fmt;
use crate::ui::theme::Theme;
use ratatui::{
    buffer::Buffer,
    layout::Rect,
    text::{Line, Span},
};

pub fn render(app: &App, area: Rect, buf: &mut Buffer, theme: &Theme) {
    let focused = matches!(app.focus, Focus::Classes | Focus::Confused);
    let rows = app.class_rows();
    let n = rows.len();
    let title = match app.last_val {
        Some(_) => format!(
            " Classes · val epoch {} ",
            app.epochs.last().map(|e| e.epoch).unwrap_or(0)
        ),
        None => " Classes ".to_owned(),
    };
    let inner = frame(block(title, focused, theme), area, buf);
    if inner.height < 3 || inner.width < 16 {
        return;
    }
    // The table takes what it needs when it can, the confused pairs the
    // rest (at least a third of the room when both have more).
    let h = inner.height as usize;
    let want = app.confused.len().max(1);
    let conf_rows = if n + want + 2 <= h {
        want
    } else {
        want.min((h / 3).max(h.saturating_sub(n + 2))).max(1)
    };
    let table_h = h - conf_rows - 1;
    let visible = table_h.saturating_sub(1);
    app.class_rows_shown.set(visible.max(1));
    app.confused_rows_shown.set(conf_rows.max(1));
    table(app, &rows, visible, inner, buf, theme);
    confused(app, table_h as u16, conf_rows, inner, buf, theme);
}

/// "▸" before the heading of the part that has the focus.
fn marker(app: &App, f: Focus) -> &'static str {
    if app.focus == f {
        "▸"
    } else {
        " "
    }
}

/// The per-class table: a heading, then `visible` rows from the scroll
/// offset on.
fn table(app: &App, rows: &[ClassRow], visible: usize, inner: Rect, buf: &mut Buffer, theme: &Theme) {
    let n = rows.len();
    let w = inner.width as usize;
    let name_w = w.saturating_sub(2 + 8 + 7).clamp(4, 28);
    let class_head = match app.class_order {
        ClassOrder::Index => "class",
        ClassOrder::Accuracy if name_w >= 11 => "worst first",
        ClassOrder::Accuracy => "class ▲",
    };
    let offset = app.class_scroll.min(n.saturating_sub(visible));
    let position = if n > visible && visible > 0 {
        format!("  {}-{}/{n} ↑↓", offset + 1, (offset + visible).min(n))
    } else {
        String::new()
    };
    line_at(
        buf,
        inner,
        0,
        &Line::from(vec![
            Span::styled(marker(app, Focus::Classes), theme.key()),
            Span::styled(
                format!(" {class_head:<name_w$} {:>7} {:>6}", "top-1", "Δ"),
                theme.bold(),
            ),
            Span::styled(position, theme.dim()),
        ]),
    );
    for (r, row) in rows.iter().skip(offset).take(visible).enumerate() {
        let acc = row.acc.map(fmt::pct).unwrap_or_else(|| "—".into());
        let (delta, dstyle) = match row.delta {
            Some(d) if d > 0.0005 => (fmt::delta_pp(d), theme.good()),
            Some(d) if d < -0.0005 => (fmt::delta_pp(d), theme.bad()),
            Some(d) => (fmt::delta_pp(d), theme.dim()),
            None => ("".into(), theme.dim()),
        };
        let (mark, nstyle) = if row.worst {
            ("▼", theme.bad())
        } else {
            (" ", theme.plain())
        };
        line_at(
            buf,
            inner,
            1 + r as u16,
            &Line::from(vec![
                Span::styled(format!("{mark} "), nstyle),
                Span::styled(format!("{:<name_w$}", fmt::fit(&row.name, name_w)), nstyle),
                Span::raw(format!(" {acc:>7}")),
                Span::styled(format!(" {delta:>6}"), dstyle),
            ]),
        );
    }
}

/// The most confused pairs: a heading at row `top`, then `conf_rows` pairs
/// from the scroll offset on.
fn confused(app: &App, top: u16, conf_rows: usize, inner: Rect, buf: &mut Buffer, theme: &Theme) {
    let pairs = &app.confused;
    let w = inner.width as usize;
    let conf_offset = app.confused_scroll.min(pairs.len().saturating_sub(conf_rows));
    let conf_pos = if pairs.len() > conf_rows {
        format!(
            "  {}-{}/{}",
            conf_offset + 1,
            (conf_offset + conf_rows).min(pairs.len()),
            pairs.len()
        )
    } else {
        String::new()
    };
    line_at(
        buf,
        inner,
        top,
        &Line::from(vec![
            Span::styled(marker(app, Focus::Confused), theme.key()),
            Span::styled(" most confused", theme.bold()),
            Span::styled(format!(" (true → predicted){conf_pos}"), theme.dim()),
        ]),
    );
    if pairs.is_empty() {
        let text = if app.last_val.is_some() {
            "  none: every validation image right"
        } else {
            "  after the first validation"
        };
        line_at(buf, inner, top + 1, &Line::styled(text, theme.dim()));
        return;
    }
    for (r, p) in pairs.iter().skip(conf_offset).take(conf_rows).enumerate() {
        let text = format!("  {}", app.confused_label(p));
        let count = format!("  {} img", p.count);
        let mut spans = vec![Span::raw(fmt::fit(&text, w))];
        if text.chars().count() + count.len() <= w {
            spans.push(Span::styled(count, theme.dim()));
        }
        line_at(buf, inner, top + 1 + r as u16, &Line::from(spans));
    }
}
