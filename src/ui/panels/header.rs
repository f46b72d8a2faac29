//! Run, configuration, dataset, device, state; epoch gauge, images/s, ETA,
//! lr and decays.
use super::line_at;
use crate::control::RunInfo;
use crate::ui::app::{App, EngineState};
use crate::ui::fmt;
use crate::ui::theme::Theme;
use ratatui::{
    buffer::Buffer,
    layout::Rect,
    style::Color,
    text::{Line, Span},
};

const SEP: &str = " · ";

fn badge_color(app: &App) -> Color {
    if app.stopping.is_some() && !app.is_ended() {
        return Color::Yellow;
    }
    match app.engine {
        EngineState::Finished => Color::Green,
        EngineState::Failed | EngineState::Ended => Color::Red,
        _ if app.shows_paused() => Color::Yellow,
        EngineState::Starting => Color::Blue,
        _ => Color::Cyan,
    }
}

/// `width` cells of a bar `ratio` full.
pub fn bar(ratio: f64, width: usize) -> (String, String) {
    let ratio = if ratio.is_finite() { ratio.clamp(0.0, 1.0) } else { 0.0 };
    let full = ((ratio * width as f64).round() as usize).min(width);
    ("█".repeat(full), "░".repeat(width - full))
}

pub fn render(app: &App, area: Rect, buf: &mut Buffer, theme: &Theme) {
    title_line(app, area, buf, theme);
    let Some(i) = &app.info else { return };
    progress_line(app, i, area, buf, theme);
    pace_line(app, i, area, buf, theme);
    // Line 4, when there is room: the model's size, the data, the run.
    if area.height >= 4 {
        let fourth = format!(
            "{:.2}M parameters{SEP}batch {}{SEP}{} train / {} val / {} test images{SEP}{}",
            i.parameters as f64 / 1e6,
            i.batch_size,
            i.train_images,
            i.val_images,
            i.test_images,
            i.run_dir.display()
        );
        line_at(buf, area, 3, &Line::styled(fourth, theme.dim()));
    }
}

/// Line 1: what runs where, and the state on the right.
fn title_line(app: &App, area: Rect, buf: &mut Buffer, theme: &Theme) {
    let w = area.width as usize;
    let badge = format!(" {} ", app.state_label());
    let badge_w = badge.chars().count();
    let title = if app.attached.is_some() {
        "vggtrain (attached)"
    } else {
        "vggtrain"
    };
    let mut first = vec![Span::styled(title, theme.title())];
    match &app.info {
        Some(i) => {
            let dataset = if w >= 140 {
                i.dataset.clone()
            } else {
                i.dataset.split(" (").next().unwrap_or(&i.dataset).to_owned()
            };
            first.push(Span::raw(SEP));
            first.push(Span::styled(i.name.clone(), theme.bold()));
            first.push(Span::raw(SEP));
            first.push(Span::styled(i.model.clone(), theme.accent()));
            let ranks = match i.world {
                1 => String::new(),
                w => format!(" × {w} ranks"),
            };
            first.push(Span::raw(format!("{SEP}{dataset}{SEP}{}{ranks}", i.device)));
        }
        None => first.push(Span::styled(" · loading the data and building the model…", theme.dim())),
    }
    let left = Rect {
        width: area.width.saturating_sub(badge_w as u16 + 1),
        ..area
    };
    line_at(buf, left, 0, &Line::from(first));
    let bx = area.x + area.width.saturating_sub(badge_w as u16);
    buf.set_string(bx, area.y, &badge, theme.badge(badge_color(app)));
}

/// Line 2: epoch e/E, a gauge of the epoch's steps, step s/S.
fn progress_line(app: &App, i: &RunInfo, area: Rect, buf: &mut Buffer, theme: &Theme) {
    let w = area.width as usize;
    let epoch_text = format!("epoch {}/{} ", app.epoch.max(1), i.epochs);
    let pct = format!(" {:>3.0}%", 100.0 * app.epoch_progress());
    let steps = format!("{SEP}step {}/{}", app.step, i.steps_per_epoch);
    let room = w.saturating_sub(epoch_text.chars().count() + pct.len() + steps.chars().count());
    let (full, empty) = bar(app.epoch_progress(), room.min(60));
    line_at(
        buf,
        area,
        1,
        &Line::from(vec![
            Span::styled(epoch_text, theme.bold()),
            Span::styled(full, theme.gauge()),
            Span::styled(empty, theme.dim()),
            Span::raw(pct),
            Span::styled(steps, theme.dim()),
        ]),
    );
}

/// Line 3: pace, ETA, lr, the best top-1 and the GPUs.
fn pace_line(app: &App, i: &RunInfo, area: Rect, buf: &mut Buffer, theme: &Theme) {
    let eta = if app.is_ended() {
        "done".to_owned()
    } else if app.shows_paused() {
        "paused".to_owned()
    } else {
        match (app.eta_epoch(), app.eta_run()) {
            (Some(e), Some(r)) => format!("epoch {} run {}", fmt::hms(e), fmt::hms(r)),
            _ => "…".to_owned(),
        }
    };
    let ips = match (app.images_per_sec > 0.0, i.world) {
        (true, 1) => format!("{:.0} img/s", app.images_per_sec),
        // The whole batch's: every rank's images.
        (true, w) => format!("{:.0} img/s ({w} ranks)", app.images_per_sec),
        (false, _) => "— img/s".to_owned(),
    };
    let mut third = vec![
        Span::raw(ips),
        Span::raw(SEP),
        Span::styled("ETA ", theme.dim()),
        Span::raw(eta),
        Span::raw(SEP),
        Span::styled("lr ", theme.dim()),
        Span::styled(fmt::lr(app.lr), theme.accent()),
        Span::raw(format!("{SEP}{}/{} decays", app.decays_used, i.max_decays)),
    ];
    if let Some(e) = app.epochs.last() {
        third.push(Span::raw(SEP));
        third.push(Span::styled("best ", theme.dim()));
        third.push(Span::styled(fmt::pct(e.best_top1), theme.good()));
    }
    for g in &app.gpus {
        third.push(Span::raw(SEP));
        third.push(Span::styled(g.describe(), theme.accent()));
    }
    line_at(buf, area, 2, &Line::from(third));
}
