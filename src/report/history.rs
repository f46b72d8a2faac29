//! A run's history as its metrics.jsonl tells it, resumes included: a
//! resume from an older checkpoint drops what the earlier process did
//! after it, as the run itself did.
use crate::control::{EpochStats, Event, LrCause};
use anyhow::{Context, Result};
use std::path::Path;

/// What a report draws of one run.
pub struct History {
    pub name: String,
    pub classes: Vec<String>,
    pub steps_per_epoch: f64,
    /// (epochs done, step loss) of the step events.
    pub steps: Vec<(f64, f64)>,
    pub epochs: Vec<EpochStats>,
    /// (epochs done, lr, the cause of the change: None for the first).
    pub lr: Vec<(f64, f64, Option<LrCause>)>,
}

impl History {
    pub fn read(run: &Path) -> Result<History> {
        let path = run.join("metrics.jsonl");
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut h = History {
            name: run
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            classes: Vec::new(),
            steps_per_epoch: 1.0,
            steps: Vec::new(),
            epochs: Vec::new(),
            lr: Vec::new(),
        };
        // A live run may be writing its last line.
        for line in text.lines().filter(|l| l.ends_with('}')) {
            if let Ok(e) = serde_json::from_str::<Event>(line) {
                h.apply(&e);
            }
        }
        if h.epochs.is_empty() && h.steps.is_empty() {
            anyhow::bail!("{}: no training recorded yet", path.display());
        }
        Ok(h)
    }

    fn at(&self, global_step: u64) -> f64 {
        global_step as f64 / self.steps_per_epoch
    }

    fn apply(&mut self, e: &Event) {
        match e {
            Event::Started(i) => {
                self.classes = i.classes.clone();
                self.steps_per_epoch = i.steps_per_epoch.max(1) as f64;
                let start = i.start_epoch as f64 + i.start_step as f64 / self.steps_per_epoch;
                self.steps.retain(|s| s.0 <= start);
                self.epochs.retain(|s| s.epoch <= i.start_epoch);
                self.lr = i
                    .lr_history
                    .iter()
                    .enumerate()
                    .map(|(n, m)| (self.at(m.global_step), m.lr, (n > 0).then_some(m.cause)))
                    .collect();
            }
            Event::Step { global_step, loss, .. } if loss.is_finite() => {
                self.steps.push((self.at(*global_step), *loss));
            }
            Event::Epoch(s) => self.epochs.push(s.clone()),
            Event::LrChanged {
                new,
                cause,
                global_step,
                ..
            } => self.lr.push((self.at(*global_step), *new, Some(*cause))),
            _ => {}
        }
    }

    /// The epoch with the best validation top-1 (the first of equals).
    pub fn best(&self) -> Option<&EpochStats> {
        self.epochs.iter().fold(None, |b: Option<&EpochStats>, e| match b {
            Some(b) if b.val.top1 >= e.val.top1 => Some(b),
            _ => Some(e),
        })
    }

    /// The newest epoch that has its confusion matrix.
    pub fn confusion(&self) -> Option<&Vec<Vec<u64>>> {
        self.epochs
            .iter()
            .rev()
            .map(|e| &e.val.confusion)
            .find(|c| !c.is_empty())
    }
}
