//! Recorders: faces that only listen. Each writes the run's events to a
//! file of the run directory, in its own format: metrics.jsonl (every event
//! as JSON), train.log (lines for people), summary.csv (a row an epoch) and
//! TensorBoard event files. `open` is the one place they are chosen; the
//! engine only hands each event to `Recorders::record`.
mod summary;
pub mod tensorboard;

use crate::config::Config;
use crate::control::Event;
use anyhow::{Context, Result};
use std::{
    fs::{File, OpenOptions},
    io::Write,
    path::Path,
};

/// A file that follows the run.
pub trait Recorder: Send {
    /// Records one event that happened at `time` (Unix seconds).
    fn record(&mut self, event: &Event, time: f64) -> std::io::Result<()>;
}

/// The recorders of a run directory.
pub struct Recorders(Vec<Box<dyn Recorder>>);

impl Recorders {
    /// Every recorder gets the event; the first error is returned (the
    /// others still record).
    pub fn record(&mut self, event: &Event, time: f64) -> std::io::Result<()> {
        let mut first = Ok(());
        for r in &mut self.0 {
            if let Err(e) = r.record(event, time) {
                first = first.and(Err(e));
            }
        }
        first
    }
}

/// Opens the run's recorders (appending to what an earlier process of the
/// run wrote).
pub fn open(run: &Path, cfg: &Config) -> Result<Recorders> {
    let mut all: Vec<Box<dyn Recorder>> = vec![
        Box::new(Jsonl(append(&run.join("metrics.jsonl"))?)),
        Box::new(Log(append(&run.join("train.log"))?)),
        Box::new(summary::Csv::new(run.join("summary.csv"))),
    ];
    if cfg.run.tensorboard {
        all.push(Box::new(tensorboard::Writer::create(&run.join("tensorboard"))?));
    }
    Ok(Recorders(all))
}

/// A follower rank's recorder: train.log's lines, in its own file.
pub fn rank_log(path: &Path) -> Result<Recorders> {
    Ok(Recorders(vec![Box::new(Log(append(path)?))]))
}

fn append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// metrics.jsonl: one JSON object per event, with its time.
struct Jsonl(File);

impl Recorder for Jsonl {
    fn record(&mut self, event: &Event, time: f64) -> std::io::Result<()> {
        let mut value = serde_json::to_value(event).map_err(std::io::Error::other)?;
        value["time"] = serde_json::json!(time);
        // One write a line: a reader never sees half of one.
        self.0.write_all(format!("{value}\n").as_bytes())
    }
}

/// train.log: the events' summaries with UTC times (step events have none).
struct Log(File);

impl Recorder for Log {
    fn record(&mut self, event: &Event, _time: f64) -> std::io::Result<()> {
        match event.summary() {
            Some(line) => self
                .0
                .write_all(format!("[{}] {line}\n", crate::engine::run_dir::timestamp()).as_bytes()),
            None => Ok(()),
        }
    }
}

/// Replays a run's metrics.jsonl into `recorder` (for a run recorded
/// before it existed, or with it off). Returns the events replayed.
pub fn replay(run: &Path, recorder: &mut dyn Recorder) -> Result<usize> {
    let path = run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut n = 0;
    for (i, line) in text.lines().enumerate() {
        let value: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            // A last line cut short by a kill.
            Err(_) if i + 1 == text.lines().count() => break,
            Err(e) => anyhow::bail!("{} line {}: {e}", path.display(), i + 1),
        };
        let time = value["time"].as_f64().unwrap_or(0.0);
        let event: Event =
            serde_json::from_value(value).with_context(|| format!("{} line {}", path.display(), i + 1))?;
        recorder.record(&event, time)?;
        n += 1;
    }
    Ok(n)
}
