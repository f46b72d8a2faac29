//! The engine, driven as the faces drive it: commands in, events out, on
//! real Fashion-MNIST (Debian's dataset-fashion-mnist, installed by the
//! set-up; see `common::have_data`) and on generated image folders.
//!
//! - `training`: commands, resume, learning, folders;
//! - `checkpoints`: the checkpoint format, pruning, damage, long runs;
//! - `shards`: training on tar shards, and its exact resume;
//! - `step`: the training step's kernels against PyTorch.
use crossbeam_channel::Receiver;
use std::{collections::HashMap, path::Path, path::PathBuf, time::Duration};
use tch::Tensor;
use vggtrain::config::Config;
use vggtrain::control::Event;
use vggtrain::engine::{self, checkpoint, Start};
use vggtrain::model::Arch;

mod checkpoints;
#[path = "../common/mod.rs"]
mod common;
mod shards;
mod step;
mod training;

use common::{have_data, snapshot};

/// libtorch's generator is global to the process, and each engine seeds it
/// per step: tests that train or draw random numbers run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A CPU-sized run: VGG A at 1/8 width on a few hundred images.
fn tiny(runs: &Path, epochs: usize) -> Config {
    let mut cfg = Config::default();
    cfg.model.config = Arch::A;
    cfg.model.width = 8;
    cfg.data.subset = Some(512);
    cfg.data.val_size = Some(256);
    cfg.data.test_subset = Some(256);
    cfg.train.batch_size = 64;
    cfg.train.epochs = epochs;
    cfg.train.device = "cpu".into();
    cfg.train.seed = 7;
    cfg.run.runs_dir = Some(runs.to_owned());
    cfg
}

/// Events until `pred` matches one (returned), failing after a minute.
fn wait_for(events: &Receiver<Event>, mut pred: impl FnMut(&Event) -> bool) -> Event {
    loop {
        let e = events
            .recv_timeout(Duration::from_secs(60))
            .expect("the engine went quiet");
        if let Event::Failed { message } = &e {
            panic!("the engine failed: {message}");
        }
        if pred(&e) {
            return e;
        }
    }
}

/// Every event until the engine ends.
fn drain(events: &Receiver<Event>) -> Vec<Event> {
    let mut all = Vec::new();
    while let Ok(e) = events.recv_timeout(Duration::from_secs(120)) {
        all.push(e);
    }
    all
}

/// Runs a start to its end: the run directory and every event.
fn run_to_end(start: Start) -> (PathBuf, Vec<Event>) {
    let h = engine::spawn(start, &|| None).unwrap();
    let dir = h.run_dir.clone();
    let events = drain(&h.events);
    h.join();
    (dir, events)
}

/// A run of `cfg` stopped with a checkpoint at step 3 or later of its
/// first epoch: its directory (the test resumes it).
fn stopped_inside_the_first_epoch(cfg: &Config) -> PathBuf {
    let h = engine::spawn(Start::new(cfg.clone()), &|| None).unwrap();
    let dir = h.run_dir.clone();
    wait_for(&h.events, |e| matches!(e, Event::Step { step, .. } if *step >= 3));
    h.send(vggtrain::control::Command::Stop { save: true });
    drain(&h.events);
    h.join();
    let stopped = checkpoint::load(&newest(&dir).unwrap()).unwrap().state;
    assert_eq!(stopped.epoch, 0, "stopped inside the first epoch");
    assert!(stopped.step >= 3, "{}", stopped.step);
    dir
}

/// The newest checkpoint of a run that loads.
fn newest(run: &Path) -> Result<PathBuf, anyhow::Error> {
    checkpoint::newest(run).map(|n| n.path)
}

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    let l = checkpoint::load(path).unwrap();
    let mut all = l.weights;
    all.extend(l.momentum.into_iter().map(|(k, v)| (format!("momentum.{k}"), v)));
    all
}

/// root/{train,val}/<class>/*.png: `classes` classes of tiny images.
fn write_folder(root: &Path, classes: usize, per_class: [usize; 2]) {
    for (split, n) in [("train", per_class[0]), ("val", per_class[1])] {
        for c in 0..classes {
            let dir = root.join(split).join(format!("c{c:04}"));
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let img = image::RgbImage::from_fn(32, 32, |x, y| {
                    image::Rgb([
                        (c % 251) as u8,
                        (x * 7 + i as u32) as u8,
                        (y * 5 + (c / 251) as u32) as u8,
                    ])
                });
                img.save(dir.join(format!("{i}.png"))).unwrap();
            }
        }
    }
}

/// A model card for checkpoints written by hand.
fn small_card() -> vggtrain::model::Card {
    vggtrain::model::Card {
        arch: Arch::A,
        width: 8,
        batch_norm: false,
        channels: 1,
        crop: 32,
        classes: vec!["a".into(), "b".into()],
        test_scale: 32,
        train_scale: [32, 32],
        native: Some(28),
        mean: vec![0.5],
        std: None,
    }
}

/// The paths from `crate::` a source file names, comments left out; a
/// group (`crate::{a, b::c}`) gives one path per member.
fn crate_paths(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut out = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        match rest.strip_prefix('{') {
            Some(group) => {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                out.extend(group.split(',').map(|m| format!("crate::{}", m.trim())));
            }
            None => out.push(format!("crate::{rest}")),
        }
    }
    out
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

#[test]
fn the_engine_imports_no_face_and_the_config_no_engine() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let engine = rust_files(&src.join("engine"));
    assert!(engine.len() > 5, "{engine:?}");
    for f in engine {
        for p in crate_paths(&f) {
            for face in ["crate::attach", "crate::ui", "crate::headless"] {
                assert!(!p.starts_with(face), "{} names a face: {p}", f.display());
            }
        }
    }
    for f in ["config.rs", "device.rs", "control.rs"] {
        for p in crate_paths(&src.join(f)) {
            assert!(!p.starts_with("crate::engine"), "{f} names the engine: {p}");
        }
    }
}
