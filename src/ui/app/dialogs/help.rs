//! The help: every key and what it does; any key closes it.
use super::{boxed, centered, Reply};
use crate::ui::app::keys::ctrl_c;
use crate::ui::panels::line_at;
use crate::ui::theme::Theme;
use crossterm::event::KeyEvent;
use ratatui::{
    buffer::Buffer,
    layout::Rect,
    text::{Line, Span},
};

/// Every key, for the help box.
pub const KEYS: &[(&str, &str)] = &[
    ("p, space", "pause / resume training"),
    ("d", "decay the learning rate now (÷ the decay factor)"),
    ("s", "save a checkpoint now"),
    ("q, Ctrl-C", "quit: asks whether to save a checkpoint first"),
    ("  Enter", "  save a checkpoint, then quit (default)"),
    ("  n", "  quit without saving"),
    ("  Esc", "  cancel"),
    ("q q", "while stopping: quit at once, without waiting"),
    ("x", "stop the run (the same question as q)"),
    ("q (attached)", "detach: the run goes on; x stops it"),
    ("tab, →", "focus the next panel (classes, confused pairs, events)"),
    ("shift-tab, ←", "focus the previous panel"),
    ("↑ ↓, j k", "scroll the focused panel"),
    ("PgUp PgDn", "scroll a page"),
    ("Home End", "scroll to the top / bottom"),
    ("o", "order classes by index / worst first"),
    ("Esc", "after the run: hide / show the results box"),
    ("?, F1", "this help (any key closes it)"),
];

/// Any key closes the help without acting, but Ctrl-C, which goes on to
/// quit.
pub fn event(k: &KeyEvent) -> Reply {
    if ctrl_c(k) {
        Reply::Passed
    } else {
        Reply::Closed
    }
}

/// The key help line while the help is open.
pub fn hints() -> Vec<(&'static str, &'static str)> {
    vec![("any key", "close help")]
}

/// The box of keys, in the middle of `area`.
pub fn draw(area: Rect, buf: &mut Buffer, theme: &Theme) {
    let key_w = KEYS.iter().map(|k| k.0.chars().count()).max().unwrap_or(0);
    let text_w = KEYS.iter().map(|k| k.1.chars().count()).max().unwrap_or(0);
    let r = centered(area, (key_w + text_w + 6) as u16, KEYS.len() as u16 + 2);
    let inner = boxed(" Keys ", r, buf, theme);
    for (i, (k, what)) in KEYS.iter().enumerate() {
        line_at(
            buf,
            inner,
            i as u16,
            &Line::from(vec![
                Span::styled(format!(" {k:<key_w$}  "), theme.key()),
                Span::raw(*what),
            ]),
        );
    }
}
