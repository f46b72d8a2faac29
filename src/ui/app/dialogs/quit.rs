//! The quit question: save a checkpoint before stopping the run (Enter),
//! stop without saving (n) or go on training (Esc).
use super::{boxed, centered, Reply};
use crate::ui::app::App;
use crate::ui::fmt;
use crate::ui::panels::line_at;
use crate::ui::theme::Theme;
use crossterm::event::{KeyCode, KeyEvent};
use ratatui::{
    buffer::Buffer,
    layout::Rect,
    text::{Line, Span},
};

/// Enter (or y) saves and stops, n stops, Esc cancels; the other keys do
/// nothing while the question is open.
pub fn event(k: &KeyEvent) -> Reply {
    match k.code {
        KeyCode::Enter | KeyCode::Char('y') | KeyCode::Char('Y') => Reply::Stop { save: true },
        KeyCode::Char('n') | KeyCode::Char('N') => Reply::Stop { save: false },
        KeyCode::Esc => Reply::Closed,
        _ => Reply::Kept,
    }
}

/// The key help line while the question is open.
pub fn hints(app: &App) -> Vec<(&'static str, &'static str)> {
    if app.attached.is_some() {
        vec![
            ("Enter", "save & stop"),
            ("n", "stop without saving"),
            ("Esc", "cancel"),
        ]
    } else {
        vec![
            ("Enter", "save & quit"),
            ("n", "quit without saving"),
            ("Esc", "cancel"),
        ]
    }
}

/// The question, in the middle of `area`; attached, it stops the run
/// rather than quits.
pub fn draw(app: &App, area: Rect, buf: &mut Buffer, theme: &Theme) {
    let r = centered(area, 52, 7);
    let (title, verb) = if app.attached.is_some() {
        (" Stop the run ", "stop")
    } else {
        (" Quit ", "quit")
    };
    let inner = boxed(title, r, buf, theme);
    let last = app
        .last_checkpoint
        .as_ref()
        .map(|p| format!("last checkpoint: {}", app.short_path(p)))
        .unwrap_or_else(|| "no checkpoint saved yet".into());
    let lines = [
        Line::styled(" Stop training? Save a checkpoint first?", theme.bold()),
        Line::styled(format!(" {}", fmt::fit(&last, inner.width as usize - 2)), theme.dim()),
        Line::from(vec![
            Span::styled(" Enter", theme.key()),
            Span::raw(format!("  save a checkpoint, then {verb}")),
        ]),
        Line::from(vec![
            Span::styled(" n    ", theme.key()),
            Span::raw(format!("  {verb} without saving")),
        ]),
        Line::from(vec![
            Span::styled(" Esc  ", theme.key()),
            Span::raw("  cancel, keep training"),
        ]),
    ];
    for (i, l) in lines.iter().enumerate() {
        line_at(buf, inner, i as u16, l);
    }
}
