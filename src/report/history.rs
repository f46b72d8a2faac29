//! A run's history as its metrics.jsonl tells it, resumes included: a
//! resume from an older checkpoint drops what the earlier process did
//! after it, as the run itself did.
use crate::control::{EpochStats, Event, LrCause};
use anyhow::{Context, Result};
use std::io::{BufRead, BufReader};
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
        let file = std::fs::File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
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
        // Read a line at a time (an epoch's line holds its confusion matrix:
        // megabytes at 1,000 classes). A live run may be writing its last line.
        for line in BufReader::new(file).split(b'\n') {
            let line = line.with_context(|| format!("cannot read {}", path.display()))?;
            if !line.ends_with(b"}") {
                continue;
            }
            if let Ok(e) = serde_json::from_slice::<Event>(&line) {
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
            Event::Epoch(s) => {
                // Only the newest epoch keeps its confusion matrix, as in the
                // run's own memory: the history stays small however long.
                if let Some(last) = self.epochs.last_mut() {
                    last.val.confusion = Vec::new();
                }
                self.epochs.push(s.clone())
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::EvalResult;

    fn epoch(n: usize, classes: usize) -> String {
        let val = EvalResult {
            loss: 1.0,
            top1: 0.1 * n as f64,
            top5: 0.5,
            per_class: vec![0.1; classes],
            confusion: vec![vec![n as u64; classes]; classes],
            images: 10,
            skipped: 0,
        };
        let e = Event::Epoch(EpochStats {
            epoch: n,
            train_loss: 1.0,
            train_acc: 0.2,
            val,
            best_top1: 0.1 * n as f64,
            lr: 0.01,
            seconds: 1.0,
            skipped_steps: 0,
            peak_gpu_bytes: None,
        });
        serde_json::to_string(&e).unwrap()
    }

    #[test]
    fn only_the_newest_epoch_keeps_its_matrix_and_a_cut_last_line_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut text: String = (1..=3).map(|n| epoch(n, 50) + "\n").collect();
        // A live run writing its fourth epoch's line.
        text.push_str(&epoch(4, 50)[..100]);
        std::fs::write(dir.path().join("metrics.jsonl"), text).unwrap();
        let h = History::read(dir.path()).unwrap();
        assert_eq!(h.epochs.len(), 3);
        let with: Vec<usize> = h
            .epochs
            .iter()
            .filter(|e| !e.val.confusion.is_empty())
            .map(|e| e.epoch)
            .collect();
        assert_eq!(with, [3]);
        assert_eq!(h.confusion().unwrap()[0][0], 3);
        assert_eq!(h.best().unwrap().epoch, 3);
    }
}
