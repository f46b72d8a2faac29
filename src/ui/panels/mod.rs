//! The screen: one file per panel, drawing only (state is `App`'s); the
//! boxes over the panels draw themselves (`app::dialogs`).
//!
//! ```text
//! header: run, configuration, dataset, device, state, epoch gauge, img/s, ETA, lr
//! ┌ Loss ───────────────────────┐┌ Classes ─────────────────────┐
//! │ sparkline of step loss      ││ class   top-1    Δ            │
//! │ per-epoch loss / accuracy   ││ most confused pairs           │
//! └─────────────────────────────┘└───────────────────────────────┘
//! ┌ Learning rate ──────────────┐┌ Events ──────────────────────┐
//! └─────────────────────────────┘└───────────────────────────────┘
//! key help
//! ```
pub mod classes;
pub mod header;
pub mod keys;
pub mod log;
pub mod loss;
pub mod lr;

use super::app::App;
use super::theme::Theme;
use ratatui::{
    buffer::Buffer,
    layout::{Constraint, Layout, Rect},
    text::{Line, Span},
    widgets::{Block, BorderType, Widget},
};

/// Below this the screen shows a one-line summary and asks for more room.
pub const MIN_WIDTH: u16 = 60;
pub const MIN_HEIGHT: u16 = 16;

/// Where each panel goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Areas {
    pub header: Rect,
    pub loss: Rect,
    pub classes: Rect,
    pub lr: Rect,
    pub log: Rect,
    pub keys: Rect,
}

pub fn layout(area: Rect) -> Areas {
    let header_h = if area.height >= 40 { 4 } else { 3 };
    let rest = area.height.saturating_sub(header_h + 1);
    let bottom_h = (rest * 3 / 10).clamp(6, 16);
    let [header, main, bottom, keys] = Layout::vertical([
        Constraint::Length(header_h),
        Constraint::Fill(1),
        Constraint::Length(bottom_h),
        Constraint::Length(1),
    ])
    .areas(area);
    // The class table needs less room than the charts on wide screens.
    let left = if area.width >= 140 { 58 } else { 54 };
    let [loss, classes] =
        Layout::horizontal([Constraint::Percentage(left), Constraint::Percentage(100 - left)]).areas(main);
    let [lr, log] = Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(bottom);
    Areas {
        header,
        loss,
        classes,
        lr,
        log,
        keys,
    }
}

/// Draws the whole screen.
pub fn render(app: &App, area: Rect, buf: &mut Buffer) {
    let theme = Theme::new(app.no_color);
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        too_small(app, area, buf, &theme);
        return;
    }
    let a = layout(area);
    header::render(app, a.header, buf, &theme);
    loss::render(app, a.loss, buf, &theme);
    classes::render(app, a.classes, buf, &theme);
    lr::render(app, a.lr, buf, &theme);
    log::render(app, a.log, buf, &theme);
    keys::render(app, a.keys, buf, &theme);
    app.results.draw(app, area, buf, &theme);
    if let Some(dialog) = app.dialog {
        dialog.draw(app, area, buf, &theme);
    }
}

fn too_small(app: &App, area: Rect, buf: &mut Buffer, theme: &Theme) {
    let epochs = app.info.as_ref().map(|i| i.epochs).unwrap_or(0);
    let lines = [
        Line::from(vec![
            Span::styled("vggtrain ", theme.title()),
            Span::raw(format!("{} · epoch {}/{epochs}", app.state_label(), app.epoch)),
        ]),
        Line::from(format!("lr {}", super::fmt::lr(app.lr))),
        Line::styled(
            format!("enlarge the terminal to at least {MIN_WIDTH}x{MIN_HEIGHT}"),
            theme.warn(),
        ),
        Line::styled("q quit", theme.dim()),
    ];
    for (i, l) in lines.iter().enumerate() {
        if (i as u16) < area.height {
            buf.set_line(area.x, area.y + i as u16, l, area.width);
        }
    }
}

/// A panel's frame; the focused one is thick (visible without colour).
pub fn block<'a>(title: impl Into<Line<'a>>, focused: bool, theme: &Theme) -> Block<'a> {
    let b = Block::bordered().title(title.into().style(theme.title()));
    if focused {
        b.border_type(BorderType::Thick).border_style(theme.focus_border())
    } else {
        b.border_style(theme.border())
    }
}

/// Draws the frame and returns the inside.
pub fn frame(block: Block<'_>, area: Rect, buf: &mut Buffer) -> Rect {
    let inner = block.inner(area);
    block.render(area, buf);
    inner
}

/// One line at row `row` of `area` (nothing when outside).
pub fn line_at(buf: &mut Buffer, area: Rect, row: u16, line: &Line<'_>) {
    if row < area.height {
        buf.set_line(area.x, area.y + row, line, area.width);
    }
}

/// Evenly spaced axis labels for [lo, hi].
pub fn axis_labels(lo: f64, hi: f64, n: usize, f: impl Fn(f64) -> String) -> Vec<Line<'static>> {
    let n = n.max(2);
    (0..n)
        .map(|i| Line::from(f(lo + (hi - lo) * i as f64 / (n - 1) as f64)))
        .collect()
}

/// A line built from groups of spans, each kept only when it fits whole.
pub struct Spans<'a> {
    room: usize,
    spans: Vec<Span<'a>>,
    full: bool,
}

impl<'a> Spans<'a> {
    pub fn new(width: u16) -> Spans<'a> {
        Spans {
            room: width as usize,
            spans: Vec::new(),
            full: false,
        }
    }

    /// Adds `group` when it fits; once one does not, nothing more is added.
    pub fn push(&mut self, group: Vec<Span<'a>>) {
        let w: usize = group.iter().map(|s| s.width()).sum();
        if self.full || w > self.room {
            self.full = true;
            return;
        }
        self.room -= w;
        self.spans.extend(group);
    }

    pub fn line(self) -> Line<'a> {
        Line::from(self.spans)
    }
}
