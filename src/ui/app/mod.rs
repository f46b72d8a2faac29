//! The TUI's state: what the engine reported (`update`, in `events`) and
//! what the user asked for (`on_key` and `on_signal`, in `keys`, which
//! answer with the command to send). The dialogs over the panels
//! (`dialogs`) hold their own state, answer keys before the app does and
//! draw themselves; the panels are drawn in `panels`. Nothing here touches
//! the terminal.
mod classes;
pub mod dialogs;
mod events;
mod keys;

pub use classes::{confused_pairs, ClassOrder, ClassRow, ConfusedPair};
pub use dialogs::{Dialog, Results};
pub use events::{EpochPoint, LrPoint};
pub use keys::Focus;

use super::fmt;
use super::history::{Downsampled, Recent};
use crate::control::{EvalResult, RunInfo};
use crate::headless::{EXIT_FAILED, EXIT_OK, EXIT_SIGINT};
use std::{cell::Cell, collections::VecDeque, path::PathBuf};

/// Smoothed step losses kept for the sparkline.
pub const RECENT_STEPS: usize = 2048;
/// Points of the down-sampled whole-run step-loss history.
pub const HISTORY_POINTS: usize = 1024;
/// Event-log entries kept.
pub const LOG_ENTRIES: usize = 500;
/// Most confused pairs kept.
pub const CONFUSED_PAIRS: usize = 12;

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

/// Everything the screen shows, and the user's choices.
pub struct App {
    pub info: Option<RunInfo>,
    pub engine: EngineState,
    /// The pause state asked for and not yet confirmed by the engine.
    pub want_paused: Option<bool>,
    /// Stop was sent (with `save`).
    pub stopping: Option<bool>,
    /// When a signal asked for the stop.
    signals: crate::headless::Stopping,
    /// The dialog open over the panels (it gets the keys first).
    pub dialog: Option<Dialog>,
    /// The results box of an ended run.
    pub results: Results,
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

impl App {
    pub fn new() -> App {
        App {
            info: None,
            engine: EngineState::Starting,
            want_paused: None,
            stopping: None,
            signals: Default::default(),
            dialog: None,
            results: Results::default(),
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
}
