//! The event log: checkpoints (with their path), lr changes, pauses,
//! warnings; newest at the bottom.
use super::{block, frame, line_at};
use crate::ui::app::{App, Focus, LogKind};
use crate::ui::fmt;
use crate::ui::theme::Theme;
use ratatui::{buffer::Buffer, layout::Rect, style::Style, text::Line};

fn style(kind: LogKind, theme: &Theme) -> Style {
    match kind {
        LogKind::Info => theme.plain(),
        LogKind::Checkpoint => theme.good(),
        LogKind::Lr => theme.accent(),
        LogKind::Warning => theme.warn(),
        LogKind::Error => theme.bad(),
        LogKind::Done => theme.good().patch(theme.bold()),
    }
}

pub fn render(app: &App, area: Rect, buf: &mut Buffer, theme: &Theme) {
    let focused = app.focus == Focus::Log;
    let scroll = app.log_scroll.min(app.log.len().saturating_sub(1));
    let title = if scroll > 0 {
        format!(" Events · {scroll} newer below ")
    } else {
        " Events ".to_owned()
    };
    let inner = frame(block(title, focused, theme), area, buf);
    if inner.height == 0 || inner.width < 12 {
        return;
    }
    app.log_rows_shown.set(inner.height as usize);
    let h = inner.height as usize;
    let w = inner.width as usize;
    // Wrap entries from the newest shown back until the panel is full.
    // Whole entries only, but at least the end of the newest one.
    let mut lines: Vec<(String, Style, bool)> = Vec::new();
    for e in app.log.iter().rev().skip(scroll) {
        let text = format!("{} {}", e.time, e.text);
        let wrapped = fmt::wrap(&text, w, e.time.len() + 1);
        if !lines.is_empty() && lines.len() + wrapped.len() > h {
            break;
        }
        for (k, l) in wrapped.into_iter().enumerate().rev() {
            lines.push((l, style(e.kind, theme), k == 0));
        }
        if lines.len() >= h {
            break;
        }
    }
    lines.truncate(h);
    lines.reverse();
    let top = h - lines.len();
    for (r, (text, st, first)) in lines.into_iter().enumerate() {
        let line = if first && text.len() > 9 {
            // The time dim, the message in its kind's style.
            let (time, rest) = text.split_at(9);
            Line::from(vec![
                ratatui::text::Span::styled(time.to_owned(), theme.dim()),
                ratatui::text::Span::styled(rest.to_owned(), st),
            ])
        } else {
            Line::styled(text, st)
        };
        line_at(buf, inner, (top + r) as u16, &line);
    }
}
