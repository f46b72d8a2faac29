//! Boxes drawn over the panels: the help, the quit dialog and the results
//! of a finished (or failed) run.
use super::{block, frame, line_at};
use crate::ui::app::App;
use crate::ui::fmt;
use crate::ui::theme::Theme;
use ratatui::{
    buffer::Buffer,
    layout::Rect,
    text::{Line, Span},
    widgets::{Clear, Widget},
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

fn boxed(title: &str, area: Rect, buf: &mut Buffer, theme: &Theme) -> Rect {
    Clear.render(area, buf);
    frame(block(title, true, theme), area, buf)
}

pub fn help(_app: &App, area: Rect, buf: &mut Buffer, theme: &Theme) {
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

pub fn quit_dialog(app: &App, area: Rect, buf: &mut Buffer, theme: &Theme) {
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

pub fn results(app: &App, area: Rect, buf: &mut Buffer, theme: &Theme) {
    let mut lines: Vec<Line> = Vec::new();
    let title;
    let width = area.width.saturating_sub(4).min(72);
    if let Some(msg) = &app.failure {
        title = " Failed ";
        for l in fmt::wrap(msg, width as usize - 3, 0) {
            lines.push(Line::styled(format!(" {l}"), theme.bad()));
        }
    } else if let Some((reason, test)) = &app.finished {
        title = " Finished ";
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
                fmt::fit(&format!(" last checkpoint: {}", app.short_path(p)), width as usize - 2),
                theme.dim(),
            ));
        }
    } else {
        return;
    }
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
