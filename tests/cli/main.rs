//! The binary as a user runs it: info, models, headless training with its
//! run directory, signals, export, eval, runs, and bad input.
use std::{
    path::{Path, PathBuf},
    process::{Child, Output, Stdio},
};

mod bad_input;
#[path = "../common/mod.rs"]
mod common;
mod resume;
mod signals;
mod usage;

use common::{bin, have_data, snapshot, text, wait_until, FASHION};

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("vggtrain runs")
}

/// A tiny headless run's arguments.
fn tiny(runs: &Path, name: &str, epochs: &str) -> Vec<String> {
    [
        "train",
        "--no-tui",
        "--model",
        "A",
        "--width",
        "8",
        "--subset",
        "512",
        "--batch-size",
        "64",
        "--device",
        "cpu",
        "--epochs",
        epochs,
        "--name",
        name,
        "--set",
        "data.val-size=256",
        "--set",
        "data.test-subset=256",
        "--runs-dir",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([runs.display().to_string()])
    .collect()
}

/// The events of a run's metrics.jsonl (the complete lines: the run may be
/// writing the next one).
fn metrics(run: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .map(|l| serde_json::from_str(l).expect("each metrics line is JSON"))
        .collect()
}

fn checkpoints(run: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(run.join("checkpoints"))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn spawn_logged(args: Vec<String>, log: &Path) -> Child {
    bin()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn signal(child: &Child, sig: i32) {
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

/// A small MNIST-format dataset (raw IDX files) in `dir`: `train` and
/// `test` images of 28x28, labels 0..9 in turn.
fn write_mnist(dir: &Path, train: usize, test: usize) {
    use vggtrain::data::{idx, Images};
    std::fs::create_dir_all(dir).unwrap();
    let make = |n: usize, seed: usize| Images {
        c: 1,
        h: 28,
        w: 28,
        pixels: (0..n * 784).map(|i| ((i * 7 + seed * 13) % 251) as u8).collect(),
        labels: (0..n).map(|i| (i % 10) as i64).collect(),
    };
    for (stem, n, seed) in [("train", train, 1), ("t10k", test, 2)] {
        idx::write_pair(
            &make(n, seed),
            &dir.join(format!("{stem}-images-idx3-ubyte")),
            &dir.join(format!("{stem}-labels-idx1-ubyte")),
        )
        .unwrap();
    }
}

/// A headless run on `write_mnist`'s data (A at 1/8 width, batch 16).
fn mnist_run(runs: &Path, data: &Path, name: &str, epochs: usize) -> Vec<String> {
    let args = format!(
        "train --no-tui --dataset mnist --model A --width 8 --batch-size 16 --device cpu --epochs {epochs} \
         --set data.val-size=16 --name {name}"
    );
    args.split_whitespace()
        .map(str::to_owned)
        .chain(["--data-dir".into(), data.display().to_string()])
        .chain(["--runs-dir".into(), runs.display().to_string()])
        .collect()
}
