//! The key help line at the bottom; it shows what the keys do now.
use crate::ui::app::App;
use crate::ui::theme::Theme;
use ratatui::{
    buffer::Buffer,
    layout::Rect,
    text::{Line, Span},
};

/// (key, what it does) pairs for the current state.
pub fn hints(app: &App) -> Vec<(&'static str, &'static str)> {
    if let Some(dialog) = app.dialog {
        return dialog.hints(app);
    }
    let attached = app.attached.is_some();
    if app.is_ended() {
        return vec![
            ("q", "quit"),
            ("Esc", app.results.hint()),
            ("?", "help"),
            ("tab", "focus"),
            ("↑↓", "scroll"),
        ];
    }
    if app.stopping.is_some() {
        return vec![
            if attached {
                ("q", "detach")
            } else {
                ("q", "quit at once (twice)")
            },
            ("?", "help"),
            ("tab", "focus"),
            ("↑↓", "scroll"),
        ];
    }
    let pause = if app.shows_paused() { "resume" } else { "pause" };
    let mut hints = vec![("p", pause), ("d", "decay lr"), ("s", "save")];
    if attached {
        hints.extend([("x", "stop"), ("q", "detach")]);
    } else {
        hints.push(("q", "quit"));
    }
    hints.extend([("?", "help"), ("tab", "focus"), ("↑↓", "scroll"), ("o", "order")]);
    hints
}

pub fn render(app: &App, area: Rect, buf: &mut Buffer, theme: &Theme) {
    let mut spans = Vec::new();
    for (k, (key, what)) in hints(app).into_iter().enumerate() {
        if k > 0 {
            spans.push(Span::styled("  ", theme.dim()));
        }
        spans.push(Span::styled(key, theme.key()));
        spans.push(Span::raw(" "));
        spans.push(Span::styled(what, theme.dim()));
    }
    buf.set_line(area.x, area.y, &Line::from(spans), area.width);
}
