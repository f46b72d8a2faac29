//! The TUI's state: what the engine reported (`update`) and what the user
//! asked for (`on_key`, which answers with the command to send). Drawing
//! lives in `panels`; nothing here touches the terminal.
use super::fmt;
use super::history::{Downsampled, Recent};
use crate::attach::{RunState, Snapshot};
use crate::control::{CheckpointReason, Command, EpochStats, EvalResult, Event, LrCause, RunInfo};
use crate::headless::{EXIT_FAILED, EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM};
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use std::{cell::Cell, collections::VecDeque, path::PathBuf};

/// Smoothed step losses kept for the sparkline.
pub const RECENT_STEPS: usize = 2048;
/// Points of the down-sampled whole-run step-loss history.
pub const HISTORY_POINTS: usize = 1024;
/// Event-log entries kept.
pub const LOG_ENTRIES: usize = 500;
/// Most confused pairs kept.
pub const CONFUSED_PAIRS: usize = 12;
/// Weight of a new step loss in the smoothed loss.
const LOSS_SMOOTHING: f64 = 0.2;
/// Weight of a new images/s value in the displayed one.
const IPS_SMOOTHING: f64 = 0.3;

/// What the engine last said about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineState {
    /// Loading data and building the model.
    Starting,
    Running,
    Paused,
    Finished,
    Failed,
    /// The event channel closed with neither Finished nor Failed.
    Ended,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialog {
    /// "Save a checkpoint before quitting?"
    Quit,
}

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClassOrder {
    /// The dataset's order.
    Index,
    /// Worst first.
    Accuracy,
}

/// One finished epoch, as the charts need it.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochPoint {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: f64,
    pub top1: f64,
    pub top5: f64,
    pub best_top1: f64,
    pub lr: f64,
    pub seconds: f64,
}

/// The lr from `x` (in epochs, fractional) on.
#[derive(Clone, Debug, PartialEq)]
pub struct LrPoint {
    pub x: f64,
    pub lr: f64,
    pub old: f64,
    /// None for the run's starting lr.
    pub cause: Option<LrCause>,
    /// The engine's epoch count when it changed (epochs finished).
    pub epoch: usize,
    pub global_step: u64,
}

impl LrPoint {
    /// "plateau after epoch 3", "manual in epoch 5".
    pub fn describe(&self) -> String {
        match self.cause {
            None => "start".into(),
            Some(LrCause::Plateau) => format!("plateau after ep {}", self.epoch),
            Some(LrCause::Manual) => format!("manual in ep {}", self.epoch + 1),
            Some(LrCause::Schedule) => format!("schedule after ep {}", self.epoch),
        }
    }

    pub fn cause_name(&self) -> &'static str {
        match self.cause {
            None => "start",
            Some(LrCause::Plateau) => "plateau",
            Some(LrCause::Manual) => "manual",
            Some(LrCause::Schedule) => "schedule",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogKind {
    Info,
    Checkpoint,
    Lr,
    Warning,
    Error,
    Done,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LogEntry {
    pub time: String,
    pub kind: LogKind,
    pub text: String,
}

/// Images of class `truth` predicted as `predicted`.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfusedPair {
    pub truth: usize,
    pub predicted: usize,
    /// Of `truth`'s validation images.
    pub rate: f64,
    pub count: u64,
}

/// A row of the per-class table.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassRow {
    pub index: usize,
    pub name: String,
    pub acc: Option<f64>,
    pub delta: Option<f64>,
    pub worst: bool,
}

pub struct App {
    pub info: Option<RunInfo>,
    pub engine: EngineState,
    /// The pause state asked for and not yet confirmed by the engine.
    pub want_paused: Option<bool>,
    /// Stop was sent (with `save`).
    pub stopping: Option<bool>,
    /// When a signal asked for the stop.
    signals: crate::headless::Stopping,
    pub dialog: Option<Dialog>,
    pub show_help: bool,
    /// The results box of an ended run is hidden (Esc toggles it).
    pub results_hidden: bool,
    pub focus: Focus,
    pub class_order: ClassOrder,
    pub class_scroll: usize,
    pub confused_scroll: usize,
    /// Lines up from the newest entry.
    pub log_scroll: usize,
    /// The current epoch (1-based) and step in it.
    pub epoch: usize,
    pub step: usize,
    pub global_step: u64,
    pub lr: f64,
    pub decays_used: u32,
    /// Smoothed images/s (0 until known).
    pub images_per_sec: f64,
    /// The run's GPUs, newest sample (empty on the CPU or without NVML).
    pub gpus: Vec<crate::gpu::Sample>,
    pub loss: Option<f64>,
    pub smoothed_loss: Option<f64>,
    /// Smoothed step losses, newest last.
    pub recent_loss: Recent,
    /// (epochs, loss) over the whole run, down-sampled.
    pub step_loss: Downsampled,
    pub epochs: Vec<EpochPoint>,
    /// The latest validation pass.
    pub last_val: Option<EvalResult>,
    /// The one before it, for the change per class.
    pub prev_per_class: Option<Vec<f64>>,
    pub confused: Vec<ConfusedPair>,
    pub lr_points: Vec<LrPoint>,
    pub log: VecDeque<LogEntry>,
    /// Finished { reason, test }.
    pub finished: Option<(String, Option<EvalResult>)>,
    pub failure: Option<String>,
    pub last_checkpoint: Option<PathBuf>,
    pub no_color: bool,
    /// The exit code a signal asked for (130, 143).
    pub signal_code: Option<i32>,
    /// Attached over a run's socket: the pid of the process that trains.
    pub attached: Option<u32>,
    /// The user detached (the run goes on).
    detached: bool,
    /// The time the log gives new entries while a snapshot replays.
    log_time: Option<String>,
    quit: bool,
    force_armed: bool,
    force_quit: bool,
    /// Rows the scrolling panels showed at the last draw (for paging).
    pub(crate) class_rows_shown: Cell<usize>,
    pub(crate) confused_rows_shown: Cell<usize>,
    pub(crate) log_rows_shown: Cell<usize>,
}

impl Default for App {
    fn default() -> Self {
        App::new()
    }
}

fn ctrl_c(k: &KeyEvent) -> bool {
    k.modifiers.contains(KeyModifiers::CONTROL) && matches!(k.code, KeyCode::Char('c') | KeyCode::Char('C'))
}

impl App {
    pub fn new() -> App {
        App {
            info: None,
            engine: EngineState::Starting,
            want_paused: None,
            stopping: None,
            signals: Default::default(),
            dialog: None,
            show_help: false,
            results_hidden: false,
            focus: Focus::Classes,
            class_order: ClassOrder::Index,
            class_scroll: 0,
            confused_scroll: 0,
            log_scroll: 0,
            epoch: 0,
            step: 0,
            global_step: 0,
            lr: 0.0,
            decays_used: 0,
            images_per_sec: 0.0,
            gpus: Vec::new(),
            loss: None,
            smoothed_loss: None,
            recent_loss: Recent::new(RECENT_STEPS),
            step_loss: Downsampled::new(HISTORY_POINTS),
            epochs: Vec::new(),
            last_val: None,
            prev_per_class: None,
            confused: Vec::new(),
            lr_points: Vec::new(),
            log: VecDeque::new(),
            finished: None,
            failure: None,
            last_checkpoint: None,
            no_color: false,
            signal_code: None,
            attached: None,
            detached: false,
            log_time: None,
            quit: false,
            force_armed: false,
            force_quit: false,
            class_rows_shown: Cell::new(10),
            confused_rows_shown: Cell::new(3),
            log_rows_shown: Cell::new(4),
        }
    }

    pub fn with_no_color(mut self, no_color: bool) -> App {
        self.no_color = no_color;
        self
    }

    fn steps_per_epoch(&self) -> f64 {
        self.info
            .as_ref()
            .map(|i| i.steps_per_epoch.max(1) as f64)
            .unwrap_or(1.0)
    }

    pub fn log(&mut self, kind: LogKind, text: impl Into<String>) {
        if self.log.len() == LOG_ENTRIES {
            self.log.pop_front();
        }
        self.log.push_back(LogEntry {
            time: self.log_time.clone().unwrap_or_else(fmt::clock),
            kind,
            text: text.into(),
        });
    }

    /// A path as the log shows it: relative to the run directory when in it.
    pub fn short_path(&self, p: &std::path::Path) -> String {
        self.info
            .as_ref()
            .and_then(|i| p.strip_prefix(&i.run_dir).ok())
            .map(|r| r.display().to_string())
            .unwrap_or_else(|| p.display().to_string())
    }

    /// Applies one engine event.
    pub fn update(&mut self, e: &Event) {
        match e {
            Event::Started(info) => {
                self.lr = info.lr;
                self.epoch = info.start_epoch + 1;
                self.step = info.start_step;
                self.global_step = (info.start_epoch * info.steps_per_epoch + info.start_step) as u64;
                self.decays_used = info.decays_used;
                let per_epoch = info.steps_per_epoch.max(1) as f64;
                self.lr_points = info
                    .lr_history
                    .iter()
                    .enumerate()
                    .map(|(i, m)| LrPoint {
                        x: m.global_step as f64 / per_epoch,
                        lr: m.lr,
                        old: info.lr_history[i.saturating_sub(1)].lr,
                        cause: (i > 0).then_some(m.cause),
                        epoch: m.epoch,
                        global_step: m.global_step,
                    })
                    .collect();
                if self.lr_points.is_empty() {
                    self.lr_points.push(LrPoint {
                        x: self.global_step as f64 / per_epoch,
                        lr: info.lr,
                        old: info.lr,
                        cause: None,
                        epoch: info.start_epoch,
                        global_step: self.global_step,
                    });
                }
                self.epochs.clear();
                self.last_val = None;
                for e in &info.history {
                    self.push_epoch(e);
                }
                if self.engine == EngineState::Starting {
                    self.engine = EngineState::Running;
                }
                let resumed = match &info.resumed_from {
                    Some(p) => format!(" (resumed from {})", p.display()),
                    None => String::new(),
                };
                self.info = Some(info.clone());
                self.log(LogKind::Info, format!("run {}{resumed}", info.run_dir.display()));
                self.log(
                    LogKind::Info,
                    format!(
                        "{} train / {} val / {} test images, {} classes, batch {}",
                        info.train_images,
                        info.val_images,
                        info.test_images,
                        info.classes.len(),
                        info.batch_size
                    ),
                );
            }
            Event::Step {
                epoch,
                step,
                global_step,
                loss,
                lr,
                images_per_sec,
            } => {
                self.epoch = *epoch;
                self.step = *step;
                self.global_step = *global_step;
                self.lr = *lr;
                if self.engine == EngineState::Starting {
                    self.engine = EngineState::Running;
                }
                if *images_per_sec > 0.0 && images_per_sec.is_finite() {
                    self.images_per_sec = if self.images_per_sec > 0.0 {
                        IPS_SMOOTHING * images_per_sec + (1.0 - IPS_SMOOTHING) * self.images_per_sec
                    } else {
                        *images_per_sec
                    };
                }
                if loss.is_finite() {
                    self.loss = Some(*loss);
                    let s = match self.smoothed_loss {
                        Some(s) => LOSS_SMOOTHING * loss + (1.0 - LOSS_SMOOTHING) * s,
                        None => *loss,
                    };
                    self.smoothed_loss = Some(s);
                    self.recent_loss.push(s);
                    let x = *global_step as f64 / self.steps_per_epoch();
                    self.step_loss.push(x, *loss);
                }
            }
            Event::Epoch(s) => {
                self.epoch = s.epoch;
                self.step = self.info.as_ref().map(|i| i.steps_per_epoch).unwrap_or(self.step);
                self.push_epoch(s);
            }
            Event::LrChanged {
                old,
                new,
                cause,
                epoch,
                global_step,
                decays_used,
            } => {
                self.lr = *new;
                self.decays_used = *decays_used;
                let p = LrPoint {
                    x: *global_step as f64 / self.steps_per_epoch(),
                    lr: *new,
                    old: *old,
                    cause: Some(*cause),
                    epoch: *epoch,
                    global_step: *global_step,
                };
                let max = self.info.as_ref().map(|i| i.max_decays).unwrap_or(0);
                self.log(
                    LogKind::Lr,
                    format!(
                        "lr {} → {} ({}, {}/{max} decays used)",
                        fmt::lr(*old),
                        fmt::lr(*new),
                        p.describe(),
                        decays_used
                    ),
                );
                self.lr_points.push(p);
            }
            Event::CheckpointSaved { path, reason } => {
                let why = match reason {
                    CheckpointReason::Key => "on request",
                    CheckpointReason::Epoch => "epoch",
                    CheckpointReason::Best => "best",
                    CheckpointReason::Stop => "stop",
                    CheckpointReason::End => "end of training",
                    CheckpointReason::Resume => "lr set on resume",
                };
                self.log(
                    LogKind::Checkpoint,
                    format!("checkpoint saved ({why}): {}", self.short_path(path)),
                );
                self.last_checkpoint = Some(path.clone());
            }
            Event::ConfigChanged { .. } => {
                self.log(LogKind::Info, e.summary().unwrap_or_default());
            }
            Event::Paused => {
                self.engine = EngineState::Paused;
                if self.want_paused == Some(true) {
                    self.want_paused = None;
                }
                self.log(LogKind::Info, "paused");
            }
            Event::Resumed => {
                if self.engine == EngineState::Paused {
                    self.engine = EngineState::Running;
                }
                if self.want_paused == Some(false) {
                    self.want_paused = None;
                }
                self.log(LogKind::Info, "resumed");
            }
            Event::Log { message } => {
                let kind = if message.to_lowercase().starts_with("warning") {
                    LogKind::Warning
                } else {
                    LogKind::Info
                };
                self.log(kind, message.clone());
            }
            Event::Finished { reason, test } => {
                self.engine = EngineState::Finished;
                self.want_paused = None;
                let line = match test {
                    Some(t) => format!(
                        "finished ({reason}): test top-1 {} top-5 {} on {} images",
                        fmt::pct(t.top1),
                        fmt::pct(t.top5),
                        t.images
                    ),
                    None => format!("finished ({reason})"),
                };
                self.log(LogKind::Done, line);
                self.finished = Some((reason.clone(), test.clone()));
            }
            Event::Failed { message } => {
                self.engine = EngineState::Failed;
                self.want_paused = None;
                self.log(LogKind::Error, format!("failed: {message}"));
                self.failure = Some(message.clone());
            }
        }
    }

    fn push_epoch(&mut self, s: &EpochStats) {
        self.prev_per_class = self.last_val.take().map(|v| v.per_class);
        if !s.val.confusion.is_empty() {
            self.confused = confused_pairs(&s.val.confusion, CONFUSED_PAIRS);
        }
        self.epochs.push(EpochPoint {
            epoch: s.epoch,
            train_loss: s.train_loss,
            train_acc: s.train_acc,
            val_loss: s.val.loss,
            top1: s.val.top1,
            top5: s.val.top5,
            best_top1: s.best_top1,
            lr: s.lr,
            seconds: s.seconds,
        });
        self.last_val = Some(s.val.clone());
    }

    /// An App attached to a run: the snapshot's events replayed, each logged
    /// at the time it happened.
    pub fn attached(snapshot: &Snapshot) -> App {
        let mut app = App::new();
        app.attached = Some(snapshot.pid);
        for s in &snapshot.events {
            app.log_time = Some(fmt::clock_at(s.time));
            app.update(&s.event);
        }
        app.log_time = None;
        // The state as the run says, should its events have been cut.
        match snapshot.state {
            RunState::Paused if app.engine == EngineState::Running => app.engine = EngineState::Paused,
            RunState::Running if app.engine == EngineState::Paused => app.engine = EngineState::Running,
            _ => {}
        }
        app.log(
            LogKind::Info,
            format!(
                "attached to process {}: q detaches (the run goes on), x stops the run",
                snapshot.pid
            ),
        );
        app
    }

    /// The engine's event channel closed.
    pub fn engine_gone(&mut self) {
        if !self.is_ended() {
            self.engine = EngineState::Ended;
            self.want_paused = None;
            let why = if self.attached.is_some() {
                "the connection to the run closed without a result"
            } else {
                "the engine ended without a result"
            };
            self.log(LogKind::Error, why);
        }
    }

    /// Finished, failed or gone: no command can reach the engine any more.
    pub fn is_ended(&self) -> bool {
        matches!(
            self.engine,
            EngineState::Finished | EngineState::Failed | EngineState::Ended
        )
    }

    /// What the header shows as paused: the user's wish at once, the
    /// engine's word otherwise.
    pub fn shows_paused(&self) -> bool {
        !self.is_ended() && self.want_paused.unwrap_or(self.engine == EngineState::Paused)
    }

    /// "running", "paused", "finished", ...; a state asked for and not yet
    /// confirmed is marked.
    pub fn state_label(&self) -> String {
        match self.engine {
            EngineState::Finished => return "finished".into(),
            EngineState::Failed => return "failed".into(),
            EngineState::Ended => return "ended".into(),
            _ => {}
        }
        if let Some(save) = self.stopping {
            return if save { "saving & stopping…" } else { "stopping…" }.into();
        }
        match (self.want_paused, self.engine) {
            (Some(true), EngineState::Paused) | (None, EngineState::Paused) => "paused".into(),
            (Some(true), _) => "paused (pausing…)".into(),
            (Some(false), EngineState::Paused) => "running (resuming…)".into(),
            (_, EngineState::Starting) => "starting".into(),
            _ => "running".into(),
        }
    }

    /// Handles a key; returns the command to send to the engine, if any.
    pub fn on_key(&mut self, k: KeyEvent) -> Option<Command> {
        if k.kind == KeyEventKind::Release {
            return None;
        }
        let ctrl_c = ctrl_c(&k);
        if self.show_help {
            self.show_help = false;
            if !ctrl_c {
                return None;
            }
        }
        if self.dialog == Some(Dialog::Quit) {
            return match k.code {
                KeyCode::Enter | KeyCode::Char('y') | KeyCode::Char('Y') => {
                    self.dialog = None;
                    self.stop(true)
                }
                KeyCode::Char('n') | KeyCode::Char('N') => {
                    self.dialog = None;
                    self.stop(false)
                }
                KeyCode::Esc => {
                    self.dialog = None;
                    None
                }
                _ => None,
            };
        }
        let quit_key = ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Char('Q'));
        if quit_key && self.attached.is_some() {
            self.detached = !self.is_ended();
            self.quit = true;
            return None;
        }
        if quit_key {
            if self.is_ended() {
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
            return None;
        }
        let live = !self.is_ended() && self.stopping.is_none();
        match k.code {
            KeyCode::Esc | KeyCode::Enter if self.is_ended() => {
                self.results_hidden = !self.results_hidden;
                None
            }
            KeyCode::Char('p') | KeyCode::Char('P') | KeyCode::Char(' ') if live => {
                if self.shows_paused() {
                    self.want_paused = Some(false);
                    Some(Command::Resume)
                } else {
                    self.want_paused = Some(true);
                    Some(Command::Pause)
                }
            }
            KeyCode::Char('d') | KeyCode::Char('D') if live => Some(Command::DecayLr),
            KeyCode::Char('x') | KeyCode::Char('X') if live => {
                self.dialog = Some(Dialog::Quit);
                None
            }
            KeyCode::Char('s') | KeyCode::Char('S') if live => {
                self.log(LogKind::Checkpoint, "saving a checkpoint…");
                Some(Command::SaveCheckpoint)
            }
            KeyCode::Char('?') | KeyCode::F(1) => {
                self.show_help = true;
                None
            }
            KeyCode::Char('o') | KeyCode::Char('O') => {
                self.class_order = match self.class_order {
                    ClassOrder::Index => ClassOrder::Accuracy,
                    ClassOrder::Accuracy => ClassOrder::Index,
                };
                self.class_scroll = 0;
                None
            }
            KeyCode::Tab | KeyCode::Right => {
                self.focus = self.focus.shift(1);
                None
            }
            KeyCode::BackTab | KeyCode::Left => {
                self.focus = self.focus.shift(-1);
                None
            }
            KeyCode::Up | KeyCode::Char('k') => {
                self.scroll(-1);
                None
            }
            KeyCode::Down | KeyCode::Char('j') => {
                self.scroll(1);
                None
            }
            KeyCode::PageUp => {
                self.scroll(-(self.page() as isize));
                None
            }
            KeyCode::PageDown => {
                self.scroll(self.page() as isize);
                None
            }
            KeyCode::Home => {
                self.scroll(isize::MIN / 2);
                None
            }
            KeyCode::End => {
                self.scroll(isize::MAX / 2);
                None
            }
            _ => None,
        }
    }

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
        self.dialog = None;
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

    fn page(&self) -> usize {
        match self.focus {
            Focus::Classes => self.class_rows_shown.get(),
            Focus::Confused => self.confused_rows_shown.get(),
            Focus::Log => self.log_rows_shown.get(),
        }
        .max(1)
    }

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

    /// The exit code once the UI should end: the user quit after the run
    /// ended, or the run ended after the user asked it to stop.
    pub fn exit_code(&self) -> Option<i32> {
        if self.detached {
            return Some(EXIT_OK);
        }
        let failed = matches!(self.engine, EngineState::Failed | EngineState::Ended);
        let code = || {
            if failed {
                EXIT_FAILED
            } else {
                self.signal_code.unwrap_or(EXIT_OK)
            }
        };
        if self.force_quit {
            return Some(self.signal_code.unwrap_or(EXIT_SIGINT));
        }
        (self.is_ended() && (self.quit || self.stopping.is_some() || self.signal_code.is_some())).then(code)
    }

    /// The user detached from an attached run (which goes on).
    pub fn detached(&self) -> bool {
        self.detached
    }

    /// Whether the exit is a forced one (the engine is not waited for).
    pub fn forced(&self) -> bool {
        self.force_quit
    }

    /// Seconds left in this epoch (the training steps).
    pub fn eta_epoch(&self) -> Option<f64> {
        let i = self.info.as_ref()?;
        if self.images_per_sec <= 0.0 {
            return None;
        }
        let left = i.steps_per_epoch.saturating_sub(self.step) as f64 * i.batch_size as f64;
        Some(left / self.images_per_sec)
    }

    /// Seconds left in the run: this epoch, then the others at the last
    /// epoch's pace (validation included) or the current images/s.
    pub fn eta_run(&self) -> Option<f64> {
        let i = self.info.as_ref()?;
        let this = self.eta_epoch()?;
        let per_epoch = match self.epochs.last() {
            // Epoch 1's time holds the warm-up (cuDNN's autotuning).
            Some(e) if e.seconds > 0.0 && e.epoch > 1 => e.seconds,
            _ => i.steps_per_epoch as f64 * i.batch_size as f64 / self.images_per_sec,
        };
        let after = i.epochs.saturating_sub(self.epoch.max(1)) as f64;
        Some(this + after * per_epoch)
    }

    /// The share of this epoch's steps done.
    pub fn epoch_progress(&self) -> f64 {
        match &self.info {
            Some(i) if i.steps_per_epoch > 0 => (self.step as f64 / i.steps_per_epoch as f64).clamp(0.0, 1.0),
            _ => 0.0,
        }
    }

    /// Worst classes marked: 3, or a tenth of them when there are more than 30.
    pub fn worst_count(classes: usize) -> usize {
        (classes / 10).max(3).min(classes)
    }

    /// The per-class table in the chosen order.
    pub fn class_rows(&self) -> Vec<ClassRow> {
        let names: Vec<String> = self.info.as_ref().map(|i| i.classes.clone()).unwrap_or_default();
        let acc = self.last_val.as_ref().map(|v| &v.per_class);
        let mut rows: Vec<ClassRow> = names
            .into_iter()
            .enumerate()
            .map(|(i, name)| {
                let a = acc.and_then(|a| a.get(i).copied());
                let d = match (a, self.prev_per_class.as_ref().and_then(|p| p.get(i))) {
                    (Some(a), Some(p)) => Some(a - p),
                    _ => None,
                };
                ClassRow {
                    index: i,
                    name,
                    acc: a,
                    delta: d,
                    worst: false,
                }
            })
            .collect();
        let mut by_acc: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].acc.is_some()).collect();
        by_acc.sort_by(|&a, &b| {
            rows[a]
                .acc
                .partial_cmp(&rows[b].acc)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.cmp(&b))
        });
        if !by_acc.is_empty() {
            for &i in by_acc.iter().take(App::worst_count(rows.len())) {
                rows[i].worst = true;
            }
        }
        if self.class_order == ClassOrder::Accuracy && !by_acc.is_empty() {
            let mut sorted: Vec<ClassRow> = by_acc.iter().map(|&i| rows[i].clone()).collect();
            sorted.extend(rows.iter().filter(|r| r.acc.is_none()).cloned());
            rows = sorted;
        }
        rows
    }

    /// The class name of `i` ("class 7" when unknown).
    pub fn class_name(&self, i: usize) -> String {
        self.info
            .as_ref()
            .and_then(|info| info.classes.get(i).cloned())
            .unwrap_or_else(|| format!("class {i}"))
    }

    /// "cat → dog 14%".
    pub fn confused_label(&self, p: &ConfusedPair) -> String {
        format!(
            "{} → {} {:.0}%",
            self.class_name(p.truth),
            self.class_name(p.predicted),
            100.0 * p.rate
        )
    }
}

/// The `n` largest off-diagonal shares of a confusion matrix's rows
/// (confusion[true][predicted]), largest first.
pub fn confused_pairs(confusion: &[Vec<u64>], n: usize) -> Vec<ConfusedPair> {
    let mut pairs = Vec::new();
    for (t, row) in confusion.iter().enumerate() {
        let total: u64 = row.iter().sum();
        if total == 0 {
            continue;
        }
        for (p, &count) in row.iter().enumerate() {
            if p != t && count > 0 {
                pairs.push(ConfusedPair {
                    truth: t,
                    predicted: p,
                    rate: count as f64 / total as f64,
                    count,
                });
            }
        }
    }
    pairs.sort_by(|a, b| {
        b.rate
            .partial_cmp(&a.rate)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(b.count.cmp(&a.count))
            .then((a.truth, a.predicted).cmp(&(b.truth, b.predicted)))
    });
    pairs.truncate(n);
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confused_pairs_rank_by_share_of_the_true_class() {
        // Class 1 has few images but half go to 2; class 0 loses 30 of 100 to 1.
        let m = vec![vec![70, 30, 0], vec![0, 2, 2], vec![1, 0, 99]];
        let p = confused_pairs(&m, 10);
        assert_eq!((p[0].truth, p[0].predicted), (1, 2));
        assert!((p[0].rate - 0.5).abs() < 1e-9);
        assert_eq!((p[1].truth, p[1].predicted, p[1].count), (0, 1, 30));
        assert_eq!(p.len(), 3);
        assert_eq!(confused_pairs(&m, 1).len(), 1);
        assert!(confused_pairs(&[vec![5, 0], vec![0, 5]], 3).is_empty());
    }

    #[test]
    fn worst_count_scales_with_the_classes() {
        assert_eq!(App::worst_count(2), 2);
        assert_eq!(App::worst_count(10), 3);
        assert_eq!(App::worst_count(100), 10);
        assert_eq!(App::worst_count(1000), 100);
    }

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
