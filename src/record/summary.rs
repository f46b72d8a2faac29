//! summary.csv: one row an epoch, as timm writes. A (re)start rewrites it
//! from the run's history, so a resume from an earlier checkpoint leaves no
//! rows of the epochs it redoes.
use super::Recorder;
use crate::control::{EpochStats, Event};
use std::{fs::OpenOptions, io::Write, path::PathBuf};

pub const HEADER: &str = "epoch,train_loss,train_acc,val_loss,val_top1,val_top5,lr,seconds\n";

pub struct Csv {
    path: PathBuf,
}

impl Csv {
    pub fn new(path: PathBuf) -> Csv {
        Csv { path }
    }
}

fn row(e: &EpochStats) -> String {
    format!(
        "{},{},{},{},{},{},{},{}\n",
        e.epoch, e.train_loss, e.train_acc, e.val.loss, e.val.top1, e.val.top5, e.lr, e.seconds
    )
}

impl Recorder for Csv {
    fn record(&mut self, event: &Event, _time: f64) -> std::io::Result<()> {
        match event {
            Event::Started(info) => {
                let text: String = std::iter::once(HEADER.to_owned())
                    .chain(info.history.iter().map(row))
                    .collect();
                crate::engine::checkpoint::write_atomic(&self.path, text.as_bytes()).map_err(std::io::Error::other)
            }
            Event::Epoch(e) => OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?
                .write_all(row(e).as_bytes()),
            _ => Ok(()),
        }
    }
}
