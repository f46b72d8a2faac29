//! The boxes drawn over the panels, each with its state, its keys and its
//! drawing: the help and the quit question (`Dialog`, which takes every key
//! while open) and the results of a finished (or failed) run (`Results`,
//! which takes only the keys that hide and show it).
pub mod help;
pub mod quit;
pub mod results;

pub use results::Results;

use super::App;
use crate::ui::panels::{block, frame};
use crate::ui::theme::Theme;
use crossterm::event::KeyEvent;
use ratatui::{
    buffer::Buffer,
    layout::Rect,
    widgets::{Clear, Widget},
};

/// The dialog open over the panels: it answers the keys before the app.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialog {
    /// Every key and what it does.
    Help,
    /// "Save a checkpoint before quitting?"
    Quit,
}

/// What a dialog did with a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The key was the dialog's; it stays open.
    Kept,
    /// The key was the dialog's; it closes.
    Closed,
    /// The dialog closes and the app handles the key as well.
    Passed,
    /// The dialog closes and the run stops, saving a checkpoint first when
    /// `save`.
    Stop { save: bool },
}

impl Dialog {
    /// Answers a key (pressed or repeated, never released).
    pub fn event(self, k: &KeyEvent) -> Reply {
        match self {
            Dialog::Help => help::event(k),
            Dialog::Quit => quit::event(k),
        }
    }

    /// Draws the dialog in the middle of `area`.
    pub fn draw(self, app: &App, area: Rect, buf: &mut Buffer, theme: &Theme) {
        match self {
            Dialog::Help => help::draw(area, buf, theme),
            Dialog::Quit => quit::draw(app, area, buf, theme),
        }
    }

    /// (key, what it does) pairs for the key help line while it is open.
    pub fn hints(self, app: &App) -> Vec<(&'static str, &'static str)> {
        match self {
            Dialog::Help => help::hints(),
            Dialog::Quit => quit::hints(app),
        }
    }
}

/// A `w` x `h` box in the middle of `area`.
pub fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

/// Clears `area`, frames it with `title` and returns the inside.
fn boxed(title: &str, area: Rect, buf: &mut Buffer, theme: &Theme) -> Rect {
    Clear.render(area, buf);
    frame(block(title, true, theme), area, buf)
}
