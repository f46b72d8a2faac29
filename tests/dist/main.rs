//! Data-parallel training over PyTorch's c10d (Gloo over loopback, 2 ranks
//! on this machine's CPU), through the real binary:
//!
//! - `group`: the process group itself: collectives, store, timeouts, the
//!   launchers' environments;
//! - `training`: 2 ranks compute what one process does (`--nproc-per-node`
//!   and torchrun); rank 0's commands reach rank 1 at the same step;
//! - `faults`: a rank killed or hung ends the others within the timeout,
//!   and the run resumes (by hand, and by torchrun's elastic restart);
//! - `hosts`: two hosts made of network namespaces: both launchers, a cut
//!   link, the launcher's bad flags.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
};
use tch::Tensor;
use vggtrain::engine::checkpoint;

#[path = "../common/mod.rs"]
mod common;
mod faults;
mod group;
mod hosts;
mod training;

pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct free ports: each is held until all are chosen.
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// A small headless run on Fashion-MNIST: VGG A at 1/8 width, global batch
/// `batch`, without randomness that differs between ranks (no dropout, no
/// augmentation).
fn tiny(runs: &Path, name: &str, batch: usize, epochs: usize, subset: usize) -> Vec<String> {
    let mut a: Vec<String> = [
        "train",
        "--no-tui",
        "--progress",
        "lines",
        "--model",
        "A",
        "--width",
        "8",
        "--device",
        "cpu",
        "--name",
        name,
        "--runs-dir",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(runs.display().to_string());
    for (k, v) in [
        ("train.batch-size", batch.to_string()),
        ("train.epochs", epochs.to_string()),
        ("data.subset", subset.to_string()),
        ("data.val-size", "16".into()),
        ("data.test-subset", "32".into()),
        ("model.dropout", "0".into()),
        ("data.pad", "0".into()),
        ("data.flip", "false".into()),
        ("data.pca-lighting", "0".into()),
        ("train.threads", "1".into()),
    ] {
        a.push("--set".into());
        a.push(format!("{k}={v}"));
    }
    a
}

/// The weights of a run's newest periodic checkpoint.
fn newest_weights(run: &Path) -> (PathBuf, HashMap<String, Tensor>) {
    let mut all: Vec<PathBuf> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("ckpt-"))
        .collect();
    all.sort();
    let path = all
        .pop()
        .unwrap_or_else(|| panic!("no checkpoint in {}", run.display()));
    let loaded = checkpoint::load(&path).unwrap();
    (path, loaded.weights)
}

/// The largest difference between two sets of weights (the same names).
fn max_difference(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .map(|(name, t)| {
            let u = &b[name];
            (t - u).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}

/// The binary as rank `rank` of `world`, as a launcher starts it.
fn rank_process(rank: usize, world: usize, port: u16) -> Command {
    let mut c = common::bin();
    c.env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string());
    c
}

/// The run's events (metrics.jsonl's complete lines).
fn metrics(run: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Waits for the first checkpoint, then a little into the next epoch.
fn mid_epoch(run: &Path) {
    common::wait_until("a checkpoint", 300, || {
        metrics(run).iter().any(|e| e["event"] == "checkpoint-saved")
    });
    let seen = metrics(run).len();
    common::wait_until("a step", 60, || metrics(run).len() > seen);
}

/// The exit code and the standard error of `what`'s process, which must
/// end within `secs` of its peer's going.
fn ends_within(c: &mut std::process::Child, secs: u64, what: &str) -> (i32, String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let status = loop {
        if let Some(s) = c.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} still runs {secs} s after its peer went"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(c.stderr.as_mut().unwrap(), &mut err).unwrap();
    (status.code().unwrap_or(-1), err)
}

/// The pids of a launcher's ranks (its children).
fn rank_pids(launcher: u32) -> Vec<i32> {
    let children = std::fs::read_to_string(format!("/proc/{launcher}/task/{launcher}/children")).unwrap();
    children.split_whitespace().map(|p| p.parse().unwrap()).collect()
}
