//! What the user asks for: keys (`on_key`, offered to the open dialog
//! first), signals (`on_signal`) and the scrolling of the focused panel.
use super::dialogs::{Dialog, Reply};
use super::{App, ClassOrder, LogKind};
use crate::control::Command;
use crate::headless::{EXIT_SIGINT, EXIT_SIGTERM};
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

/// The panels that scroll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Focus {
    Classes,
    Confused,
    Log,
}

impl Focus {
    const ALL: [Focus; 3] = [Focus::Classes, Focus::Confused, Focus::Log];

    fn shift(self, by: isize) -> Focus {
        let i = Focus::ALL.iter().position(|&f| f == self).unwrap_or(0) as isize;
        let n = Focus::ALL.len() as isize;
        Focus::ALL[(i + by).rem_euclid(n) as usize]
    }
}

/// Ctrl-C, which quits as q does (even from the help).
pub(super) fn ctrl_c(k: &KeyEvent) -> bool {
    k.modifiers.contains(KeyModifiers::CONTROL) && matches!(k.code, KeyCode::Char('c') | KeyCode::Char('C'))
}

impl App {
    /// Handles a key; returns the command to send to the engine, if any.
    /// The open dialog answers it first, then the results box of an ended
    /// run (Esc, Enter), then the app.
    pub fn on_key(&mut self, k: KeyEvent) -> Option<Command> {
        if k.kind == KeyEventKind::Release {
            return None;
        }
        if let Some(dialog) = self.dialog {
            match dialog.event(&k) {
                Reply::Kept => return None,
                Reply::Closed => {
                    self.dialog = None;
                    return None;
                }
                Reply::Stop { save } => {
                    self.dialog = None;
                    return self.stop(save);
                }
                Reply::Passed => self.dialog = None,
            }
        }
        if ctrl_c(&k) || matches!(k.code, KeyCode::Char('q') | KeyCode::Char('Q')) {
            self.on_quit_key();
            return None;
        }
        if self.is_ended() && self.results.event(&k) {
            return None;
        }
        if self.on_view_key(k.code) {
            return None;
        }
        let live = !self.is_ended() && self.stopping.is_none();
        if live {
            self.on_run_key(k.code)
        } else {
            None
        }
    }

    /// q or Ctrl-C: detaches from an attached run, quits after an ended
    /// one, asks before stopping a live one and, pressed twice while
    /// stopping, quits at once.
    fn on_quit_key(&mut self) {
        if self.attached.is_some() {
            self.detached = !self.is_ended();
            self.quit = true;
        } else if self.is_ended() {
            self.quit = true;
        } else if self.stopping.is_some() {
            if self.force_armed {
                self.force_quit = true;
            } else {
                self.force_armed = true;
                self.log(
                    LogKind::Warning,
                    "stopping: waiting for the engine to finish; press q again to quit at once without waiting",
                );
            }
        } else {
            self.dialog = Some(Dialog::Quit);
        }
    }

    /// The keys that change only the view: the help, the class order, the
    /// focus and scrolling; whether `code` was one of them.
    fn on_view_key(&mut self, code: KeyCode) -> bool {
        match code {
            KeyCode::Char('?') | KeyCode::F(1) => self.dialog = Some(Dialog::Help),
            KeyCode::Char('o') | KeyCode::Char('O') => {
                self.class_order = match self.class_order {
                    ClassOrder::Index => ClassOrder::Accuracy,
                    ClassOrder::Accuracy => ClassOrder::Index,
                };
                self.class_scroll = 0;
            }
            KeyCode::Tab | KeyCode::Right => self.focus = self.focus.shift(1),
            KeyCode::BackTab | KeyCode::Left => self.focus = self.focus.shift(-1),
            KeyCode::Up | KeyCode::Char('k') => self.scroll(-1),
            KeyCode::Down | KeyCode::Char('j') => self.scroll(1),
            KeyCode::PageUp => self.scroll(-(self.page() as isize)),
            KeyCode::PageDown => self.scroll(self.page() as isize),
            KeyCode::Home => self.scroll(isize::MIN / 2),
            KeyCode::End => self.scroll(isize::MAX / 2),
            _ => return false,
        }
        true
    }

    /// The keys that steer a live run: pause / resume, decay the lr, stop
    /// (the quit question) and save a checkpoint.
    fn on_run_key(&mut self, code: KeyCode) -> Option<Command> {
        match code {
            KeyCode::Char('p') | KeyCode::Char('P') | KeyCode::Char(' ') => {
                if self.shows_paused() {
                    self.want_paused = Some(false);
                    Some(Command::Resume)
                } else {
                    self.want_paused = Some(true);
                    Some(Command::Pause)
                }
            }
            KeyCode::Char('d') | KeyCode::Char('D') => Some(Command::DecayLr),
            KeyCode::Char('x') | KeyCode::Char('X') => {
                self.dialog = Some(Dialog::Quit);
                None
            }
            KeyCode::Char('s') | KeyCode::Char('S') => {
                self.log(LogKind::Checkpoint, "saving a checkpoint…");
                Some(Command::SaveCheckpoint)
            }
            _ => None,
        }
    }

    /// Stops the run, saving a checkpoint first when `save` (after an
    /// ended run: quits).
    fn stop(&mut self, save: bool) -> Option<Command> {
        if self.is_ended() {
            self.quit = true;
            return None;
        }
        self.stopping = Some(save);
        self.log(
            LogKind::Info,
            if save {
                "stopping: saving a checkpoint, then finishing"
            } else {
                "stopping without saving"
            },
        );
        Some(Command::Stop { save })
    }

    /// SIGUSR1: save a checkpoint, as headless. SIGINT / SIGTERM: save and
    /// stop (no dialog), then exit 130 / 143.
    pub fn on_signal(&mut self, sig: i32) -> Option<Command> {
        if self.attached.is_some() {
            // Signals end this viewer, never the run.
            if matches!(sig, libc::SIGINT | libc::SIGTERM) {
                self.detached = !self.is_ended();
                self.quit = true;
            }
            return None;
        }
        if sig == libc::SIGUSR1 {
            return (!self.is_ended()).then_some(Command::SaveCheckpoint);
        }
        let code = match sig {
            libc::SIGINT => EXIT_SIGINT,
            libc::SIGTERM => EXIT_SIGTERM,
            _ => return None,
        };
        self.signal_code = Some(code);
        // The signal answers the quit question (the help stays open).
        if self.dialog == Some(Dialog::Quit) {
            self.dialog = None;
        }
        if self.is_ended() {
            self.quit = true;
            return None;
        }
        let asked = self.signals.signal();
        if self.stopping.is_some() {
            // A second signal while stopping (by a key, or a signal): quit
            // at once, as headless, but for the echo of the signal that
            // stopped it, passed on by a launcher.
            self.force_quit |= asked != crate::headless::Asked::Echo;
            return None;
        }
        self.log(
            LogKind::Warning,
            format!("signal {sig} received: saving a checkpoint, then stopping (again to quit at once)"),
        );
        self.stop(true)
    }

    /// Rows in a page of the focused panel.
    fn page(&self) -> usize {
        match self.focus {
            Focus::Classes => self.class_rows_shown.get(),
            Focus::Confused => self.confused_rows_shown.get(),
            Focus::Log => self.log_rows_shown.get(),
        }
        .max(1)
    }

    /// Scrolls the focused panel `by` rows, within its rows.
    fn scroll(&mut self, by: isize) {
        let apply = |v: usize, max: usize| (v as isize).saturating_add(by).clamp(0, max as isize) as usize;
        match self.focus {
            Focus::Classes => {
                let n = self.info.as_ref().map(|i| i.classes.len()).unwrap_or(0);
                let max = n.saturating_sub(self.class_rows_shown.get());
                self.class_scroll = apply(self.class_scroll.min(max), max);
            }
            Focus::Confused => {
                let max = self.confused.len().saturating_sub(self.confused_rows_shown.get());
                self.confused_scroll = apply(self.confused_scroll.min(max), max);
            }
            // The log counts from the bottom: up is older.
            Focus::Log => {
                let by = -by;
                let max = self.log.len().saturating_sub(1);
                self.log_scroll = (self.log_scroll as isize).saturating_add(by).clamp(0, max as isize) as usize;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Event;

    #[test]
    fn a_quick_double_toggle_ends_running() {
        let mut app = App::new();
        assert_eq!(
            app.on_key(KeyEvent::new(KeyCode::Char('p'), KeyModifiers::NONE)),
            Some(Command::Pause)
        );
        assert_eq!(
            app.on_key(KeyEvent::new(KeyCode::Char('p'), KeyModifiers::NONE)),
            Some(Command::Resume)
        );
        // The engine applies both in order.
        app.update(&Event::Paused);
        assert!(!app.shows_paused());
        app.update(&Event::Resumed);
        assert_eq!(app.want_paused, None);
        assert_eq!(app.state_label(), "running");
    }

    #[test]
    fn a_second_quit_while_stopping_forces() {
        let mut app = App::new();
        let q = KeyEvent::new(KeyCode::Char('q'), KeyModifiers::NONE);
        app.on_key(q);
        assert_eq!(
            app.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE)),
            Some(Command::Stop { save: true })
        );
        app.on_key(q);
        assert_eq!(app.exit_code(), None);
        app.on_key(q);
        assert!(app.forced());
        assert_eq!(app.exit_code(), Some(EXIT_SIGINT));
    }

    #[test]
    fn a_second_signal_while_stopping_forces_but_not_its_echo() {
        let mut app = App::new();
        assert_eq!(app.on_signal(libc::SIGTERM), Some(Command::Stop { save: true }));
        assert!(!app.forced());
        assert_eq!(app.exit_code(), None, "waits for the engine to save and stop");
        // The same signal passed on by a launcher: the same stop.
        assert_eq!(app.on_signal(libc::SIGTERM), None);
        assert!(!app.forced(), "an echo is not a second signal");
        app.signals = crate::headless::Stopping(Some(std::time::Instant::now() - crate::headless::ECHO));
        assert_eq!(app.on_signal(libc::SIGINT), None);
        assert!(app.forced());
        assert_eq!(app.exit_code(), Some(EXIT_SIGINT));
    }
}
