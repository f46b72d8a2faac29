//! The results of a finished (or failed) run, in a box the user can hide.
use super::{boxed, centered};
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

/// The results box of an ended run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Results {
    /// The user hid the box (Esc toggles it).
    pub hidden: bool,
}

impl Results {
    /// Esc and Enter hide or show the box (the app offers keys only once
    /// the run has ended); whether the key was taken.
    pub fn event(&mut self, k: &KeyEvent) -> bool {
        if matches!(k.code, KeyCode::Esc | KeyCode::Enter) {
            self.hidden = !self.hidden;
            true
        } else {
            false
        }
    }

    /// What Esc does, for the key help line.
    pub fn hint(&self) -> &'static str {
        if self.hidden {
            "show results"
        } else {
            "hide results"
        }
    }

    /// The box in the middle of `area`: the failure, or the reason, the
    /// test pass, the epochs and the last checkpoint of a finished run;
    /// nothing while the run goes on or the box is hidden.
    pub fn draw(&self, app: &App, area: Rect, buf: &mut Buffer, theme: &Theme) {
        if self.hidden {
            return;
        }
        let width = area.width.saturating_sub(4).min(72);
        let Some((title, mut lines)) = lines(app, width as usize, theme) else {
            return;
        };
        lines.push(Line::from(vec![
            Span::styled(" q", theme.key()),
            Span::raw(" quit  "),
            Span::styled("Esc", theme.key()),
            Span::raw(" hide this box"),
        ]));
        let r = centered(area, width, lines.len() as u16 + 2);
        let inner = boxed(title, r, buf, theme);
        for (i, l) in lines.iter().enumerate() {
            line_at(buf, inner, i as u16, l);
        }
    }
}

/// The box's title and lines, `width` wide at most (None before the end).
fn lines(app: &App, width: usize, theme: &Theme) -> Option<(&'static str, Vec<Line<'static>>)> {
    let mut lines: Vec<Line> = Vec::new();
    if let Some(msg) = &app.failure {
        for l in fmt::wrap(msg, width - 3, 0) {
            lines.push(Line::styled(format!(" {l}"), theme.bad()));
        }
        return Some((" Failed ", lines));
    }
    let (reason, test) = app.finished.as_ref()?;
    lines.push(Line::styled(format!(" {reason}"), theme.bold()));
    match test {
        Some(t) => lines.push(Line::from(vec![
            Span::raw(" test "),
            Span::styled("top-1 ", theme.dim()),
            Span::styled(fmt::pct(t.top1), theme.good()),
            Span::styled(" top-5 ", theme.dim()),
            Span::styled(fmt::pct(t.top5), theme.good()),
            Span::styled(format!(" on {} images", t.images), theme.dim()),
        ])),
        None => lines.push(Line::styled(" no test pass (stopped early)", theme.dim())),
    }
    if let Some(e) = app.epochs.last() {
        lines.push(Line::from(format!(
            " {} epochs · best val top-1 {} · last val top-1 {} top-5 {}",
            e.epoch,
            fmt::pct(e.best_top1),
            fmt::pct(e.top1),
            fmt::pct(e.top5)
        )));
    }
    if let Some(p) = &app.last_checkpoint {
        lines.push(Line::styled(
            fmt::fit(&format!(" last checkpoint: {}", app.short_path(p)), width - 2),
            theme.dim(),
        ));
    }
    Some((" Finished ", lines))
}
