//! The only vocabulary between the engine and its faces (TUI, headless,
//! attached clients): plain values, never tensors.
use crossbeam_channel::Sender;
use serde::{Deserialize, Serialize};
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

/// What a face asks of the engine; applied at the next step boundary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Command {
    Pause,
    Resume,
    /// Divide the lr by the configured factor now.
    DecayLr,
    SetLr {
        lr: f64,
    },
    SaveCheckpoint,
    /// Finish the run, saving a checkpoint first when `save` (the default).
    Stop {
        #[serde(default = "yes")]
        save: bool,
    },
}

fn yes() -> bool {
    true
}

/// A face fed beside the one that holds the engine's handle (the attach
/// server): it sees every event as it happens and sends its commands
/// through the queue it was opened with. Publishing never blocks.
pub trait Observer: Send + Sync {
    fn publish(&self, event: &Event);
    /// The run is over: the last events reach the observer's own faces.
    fn close(&self);
    /// The process leaves at once, its engine still running: what the
    /// observer keeps in the run directory goes.
    fn abandon(&self);
}

/// Opens an observer once the run's directory exists, given that
/// directory, the run's configuration (TOML) and the queue for the
/// observer's commands. Returns it, or None (a run goes on without one),
/// and lines for the run's log.
pub type Observe = Box<dyn FnOnce(&Path, String, Sender<Command>) -> (Option<Arc<dyn Observer>>, Vec<String>) + Send>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LrCause {
    Plateau,
    Manual,
    Schedule,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckpointReason {
    Key,
    Epoch,
    Best,
    Stop,
    /// The run's last checkpoint, when training ends between periodic ones.
    End,
    /// Saved at once when a resume sets the lr (`--lr`), so that the change
    /// outlives a kill before the next checkpoint.
    Resume,
}

/// The run as it starts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub run_dir: PathBuf,
    pub name: String,
    /// "VGG D (16 layers)".
    pub model: String,
    pub parameters: i64,
    pub dataset: String,
    /// "cuda:0 NVIDIA H100" or "cpu x2".
    pub device: String,
    pub classes: Vec<String>,
    pub epochs: usize,
    pub steps_per_epoch: usize,
    pub batch_size: i64,
    pub train_images: usize,
    pub val_images: usize,
    pub test_images: usize,
    pub lr: f64,
    pub max_decays: u32,
    /// Where training starts (non-zero after a resume).
    pub start_epoch: usize,
    pub start_step: usize,
    pub resumed_from: Option<PathBuf>,
    /// Decays used before this start (non-zero after a resume).
    #[serde(default)]
    pub decays_used: u32,
    /// The epochs finished before this start (a resumed run's past); only
    /// the last keeps its confusion matrix.
    #[serde(default)]
    pub history: Vec<EpochStats>,
    /// The lr from the run's first step to this start: the initial lr,
    /// then every change.
    #[serde(default)]
    pub lr_history: Vec<LrMark>,
    /// The ranks of a data-parallel run (1: one process); `batch_size`
    /// and the images per second are the whole run's.
    #[serde(default = "one_rank")]
    pub world: usize,
}

/// Serde's default world size: runs from before data parallelism.
pub(crate) fn one_rank() -> usize {
    1
}

/// The lr as set at `global_step` (in epoch `epoch`, counting finished ones).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrMark {
    pub global_step: u64,
    pub epoch: usize,
    pub lr: f64,
    pub cause: LrCause,
}

/// One validation (or test) pass.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    #[serde(with = "finite")]
    pub loss: f64,
    pub top1: f64,
    pub top5: f64,
    pub per_class: Vec<f64>,
    /// confusion[true][predicted] counts.
    pub confusion: Vec<Vec<u64>>,
    /// Images evaluated (the denominators).
    pub images: usize,
    /// Undecodable images left out (`data.skip-bad-images`).
    #[serde(default)]
    pub skipped: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    /// 1-based number of the finished epoch.
    pub epoch: usize,
    #[serde(with = "finite")]
    pub train_loss: f64,
    pub train_acc: f64,
    pub val: EvalResult,
    pub best_top1: f64,
    pub lr: f64,
    pub seconds: f64,
    /// The run's steps skipped so far for an inf or NaN in the gradients
    /// (fp16's loss scaling).
    #[serde(default)]
    pub skipped_steps: u64,
    /// The CUDA allocator's peak of allocated bytes in this epoch (None off
    /// CUDA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_gpu_bytes: Option<u64>,
}

/// Past epochs as the run keeps them (in memory, in checkpoints, for the
/// faces): the confusion matrix of the newest epoch only and the per-class
/// accuracies of the newest two (the UI's deltas). At 1,000 classes each
/// matrix is a million counts: the rest stays a few hundred bytes an epoch.
pub fn compact_history(history: &mut [EpochStats]) {
    let n = history.len();
    for (i, e) in history.iter_mut().enumerate() {
        if i + 1 < n {
            e.val.confusion = Vec::new();
        }
        if i + 2 < n {
            e.val.per_class = Vec::new();
        }
    }
}

/// The epoch line's tail: fp16's skipped steps, the GPU's peak memory.
fn epoch_extras(e: &EpochStats) -> String {
    let mut s = String::new();
    if e.skipped_steps > 0 {
        s += &format!(" | {} steps skipped (inf/NaN gradients)", e.skipped_steps);
    }
    if let Some(b) = e.peak_gpu_bytes {
        s += &format!(" | peak GPU memory {:.2} GB", b as f64 / 1e9);
    }
    s
}

/// One configuration key changed on resume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigChange {
    /// "train.epochs"
    pub key: String,
    /// The values as TOML ("unset" when absent).
    pub old: String,
    pub new: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    Started(RunInfo),
    /// Throttled: at most `train.step-events-per-sec`.
    Step {
        epoch: usize,
        step: usize,
        global_step: u64,
        #[serde(with = "finite")]
        loss: f64,
        lr: f64,
        images_per_sec: f64,
    },
    Epoch(EpochStats),
    LrChanged {
        old: f64,
        new: f64,
        cause: LrCause,
        epoch: usize,
        global_step: u64,
        decays_used: u32,
    },
    CheckpointSaved {
        path: PathBuf,
        reason: CheckpointReason,
    },
    /// Keys changed on resume, applied and written to the run's config.toml.
    ConfigChanged {
        changes: Vec<ConfigChange>,
    },
    Paused,
    Resumed,
    /// Something worth showing: warm-start layers, skipped images, ...
    Log {
        message: String,
    },
    Finished {
        reason: String,
        test: Option<EvalResult>,
    },
    Failed {
        message: String,
    },
}

/// " (N undecodable images skipped)" when N > 0.
fn skipped_note(n: usize) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} undecodable images skipped)")
    }
}

/// Non-finite numbers as the strings "NaN", "inf", "-inf" (JSON has none).
mod finite {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_str(&v.to_string())
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Num {
            F(f64),
            S(String),
        }
        match Num::deserialize(d)? {
            Num::F(f) => Ok(f),
            Num::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Event {
    /// One line for people (train.log, headless stderr); None for step
    /// events, which are too frequent for a log.
    pub fn summary(&self) -> Option<String> {
        Some(match self {
            Event::Started(i) => format!(
                "run {} | {} ({:.1}M parameters) | {} ({} train, {} val, {} test, {} classes) | {}{} | batch {} | lr {:.1e}{}",
                i.run_dir.display(),
                i.model,
                i.parameters as f64 / 1e6,
                i.dataset,
                i.train_images,
                i.val_images,
                i.test_images,
                i.classes.len(),
                i.device,
                match i.world {
                    1 => String::new(),
                    w => format!(" | {w} ranks"),
                },
                i.batch_size,
                i.lr,
                match &i.resumed_from {
                    Some(p) => format!(" | resumed from {} at epoch {} step {}", p.display(), i.start_epoch + 1, i.start_step),
                    None => String::new(),
                }
            ),
            Event::Step { .. } => return None,
            Event::Epoch(e) => format!(
                "epoch {} | train loss {:.4} acc {:.2}% | val loss {:.4} top-1 {:.2}% top-5 {:.2}%{} | best {:.2}% | lr {:.1e} | {:.1}s",
                e.epoch,
                e.train_loss,
                100.0 * e.train_acc,
                e.val.loss,
                100.0 * e.val.top1,
                100.0 * e.val.top5,
                skipped_note(e.val.skipped),
                100.0 * e.best_top1,
                e.lr,
                e.seconds
            ) + &epoch_extras(e),
            Event::LrChanged { old, new, cause, epoch, decays_used, .. } => format!(
                "lr {old:.1e} -> {new:.1e} ({cause:?}, epoch {epoch}, {decays_used} decays used)"
            )
            .to_lowercase(),
            Event::CheckpointSaved { path, reason } => {
                format!("checkpoint saved ({}): {}", format!("{reason:?}").to_lowercase(), path.display())
            }
            Event::ConfigChanged { changes } => format!(
                "config changed on resume: {}",
                changes
                    .iter()
                    .map(|c| format!("{} {} -> {}", c.key, c.old, c.new))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Event::Paused => "paused".into(),
            Event::Resumed => "resumed".into(),
            Event::Log { message } => message.clone(),
            Event::Finished { reason, test } => match test {
                Some(t) => format!(
                    "finished ({reason}) | test top-1 {:.2}% top-5 {:.2}% on {} images{}",
                    100.0 * t.top1,
                    100.0 * t.top5,
                    t.images,
                    skipped_note(t.skipped)
                ),
                None => format!("finished ({reason})"),
            },
            Event::Failed { message } => format!("failed: {message}"),
        })
    }
}
