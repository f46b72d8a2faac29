//! Applying the engine's events: `update`, one fn per kind of event, and
//! the App of a run attached to (`attached`) or whose engine went away
//! (`engine_gone`).
use super::classes::confused_pairs;
use super::{fmt, App, EngineState, LogKind, CONFUSED_PAIRS};
use crate::attach::{RunState, Snapshot};
use crate::control::{CheckpointReason, EpochStats, EvalResult, Event, LrCause, RunInfo};
use std::path::Path;

/// Weight of a new step loss in the smoothed loss.
const LOSS_SMOOTHING: f64 = 0.2;
/// Weight of a new images/s value in the displayed one.
const IPS_SMOOTHING: f64 = 0.3;

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

/// The lr changes a run started with: its history, or its starting lr.
fn lr_points(info: &RunInfo, global_step: u64) -> Vec<LrPoint> {
    let per_epoch = info.steps_per_epoch.max(1) as f64;
    let mut points: Vec<LrPoint> = info
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
    if points.is_empty() {
        points.push(LrPoint {
            x: global_step as f64 / per_epoch,
            lr: info.lr,
            old: info.lr,
            cause: None,
            epoch: info.start_epoch,
            global_step,
        });
    }
    points
}

impl App {
    /// Applies one engine event.
    pub fn update(&mut self, e: &Event) {
        match e {
            Event::Started(info) => self.on_started(info),
            &Event::Step {
                epoch,
                step,
                global_step,
                loss,
                lr,
                images_per_sec,
            } => self.on_step(epoch, step, global_step, loss, lr, images_per_sec),
            Event::Epoch(s) => self.on_epoch(s),
            &Event::LrChanged {
                old,
                new,
                cause,
                epoch,
                global_step,
                decays_used,
            } => self.on_lr_changed(old, new, cause, epoch, global_step, decays_used),
            Event::CheckpointSaved { path, reason } => self.on_checkpoint_saved(path, *reason),
            Event::ConfigChanged { .. } => self.log(LogKind::Info, e.summary().unwrap_or_default()),
            Event::Paused => self.on_paused(),
            Event::Resumed => self.on_resumed(),
            Event::Log { message } => self.on_log(message),
            Event::Finished { reason, test } => self.on_finished(reason, test.as_ref()),
            Event::Failed { message } => self.on_failed(message),
        }
    }

    /// The run started (or resumed): its configuration, position, lr
    /// history and the epochs already done.
    fn on_started(&mut self, info: &RunInfo) {
        self.lr = info.lr;
        self.epoch = info.start_epoch + 1;
        self.step = info.start_step;
        self.global_step = (info.start_epoch * info.steps_per_epoch + info.start_step) as u64;
        self.decays_used = info.decays_used;
        self.lr_points = lr_points(info, self.global_step);
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

    /// A training step: the position, the lr, the smoothed images/s and
    /// (when finite) the loss.
    fn on_step(&mut self, epoch: usize, step: usize, global_step: u64, loss: f64, lr: f64, images_per_sec: f64) {
        self.epoch = epoch;
        self.step = step;
        self.global_step = global_step;
        self.lr = lr;
        if self.engine == EngineState::Starting {
            self.engine = EngineState::Running;
        }
        if images_per_sec > 0.0 && images_per_sec.is_finite() {
            self.images_per_sec = if self.images_per_sec > 0.0 {
                IPS_SMOOTHING * images_per_sec + (1.0 - IPS_SMOOTHING) * self.images_per_sec
            } else {
                images_per_sec
            };
        }
        if loss.is_finite() {
            self.loss = Some(loss);
            let s = match self.smoothed_loss {
                Some(s) => LOSS_SMOOTHING * loss + (1.0 - LOSS_SMOOTHING) * s,
                None => loss,
            };
            self.smoothed_loss = Some(s);
            self.recent_loss.push(s);
            let x = global_step as f64 / self.steps_per_epoch();
            self.step_loss.push(x, loss);
        }
    }

    /// An epoch ended: its last step and its validation pass.
    fn on_epoch(&mut self, s: &EpochStats) {
        self.epoch = s.epoch;
        self.step = self.info.as_ref().map(|i| i.steps_per_epoch).unwrap_or(self.step);
        self.push_epoch(s);
    }

    /// The lr changed: a point on the lr chart and a line in the log.
    fn on_lr_changed(&mut self, old: f64, new: f64, cause: LrCause, epoch: usize, global_step: u64, decays_used: u32) {
        self.lr = new;
        self.decays_used = decays_used;
        let p = LrPoint {
            x: global_step as f64 / self.steps_per_epoch(),
            lr: new,
            old,
            cause: Some(cause),
            epoch,
            global_step,
        };
        let max = self.info.as_ref().map(|i| i.max_decays).unwrap_or(0);
        self.log(
            LogKind::Lr,
            format!(
                "lr {} → {} ({}, {}/{max} decays used)",
                fmt::lr(old),
                fmt::lr(new),
                p.describe(),
                decays_used
            ),
        );
        self.lr_points.push(p);
    }

    /// A checkpoint was saved: the log says why and where.
    fn on_checkpoint_saved(&mut self, path: &Path, reason: CheckpointReason) {
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
        self.last_checkpoint = Some(path.to_path_buf());
    }

    /// The engine paused: a pause asked for is confirmed.
    fn on_paused(&mut self) {
        self.engine = EngineState::Paused;
        if self.want_paused == Some(true) {
            self.want_paused = None;
        }
        self.log(LogKind::Info, "paused");
    }

    /// The engine resumed: a resume asked for is confirmed.
    fn on_resumed(&mut self) {
        if self.engine == EngineState::Paused {
            self.engine = EngineState::Running;
        }
        if self.want_paused == Some(false) {
            self.want_paused = None;
        }
        self.log(LogKind::Info, "resumed");
    }

    /// A message from the engine, a warning when it says so.
    fn on_log(&mut self, message: &str) {
        let kind = if message.to_lowercase().starts_with("warning") {
            LogKind::Warning
        } else {
            LogKind::Info
        };
        self.log(kind, message);
    }

    /// The run finished: the reason and the test pass, for the results box.
    fn on_finished(&mut self, reason: &str, test: Option<&EvalResult>) {
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
        self.finished = Some((reason.to_string(), test.cloned()));
    }

    /// The run failed: the message, for the results box.
    fn on_failed(&mut self, message: &str) {
        self.engine = EngineState::Failed;
        self.want_paused = None;
        self.log(LogKind::Error, format!("failed: {message}"));
        self.failure = Some(message.to_string());
    }

    /// A finished epoch: its point on the charts, its validation pass (the
    /// one before kept for the change per class) and its confused pairs.
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

    /// Steps per epoch (1 before the run started), for the x of the charts.
    fn steps_per_epoch(&self) -> f64 {
        self.info
            .as_ref()
            .map(|i| i.steps_per_epoch.max(1) as f64)
            .unwrap_or(1.0)
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
}
