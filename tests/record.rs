//! What a run leaves to look at: TensorBoard event files (read back with
//! TensorBoard's own reader and checked against metrics.jsonl, also after a
//! resume from an older checkpoint) and summary.csv.
use serde_json::Value;
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
};

mod common;
use common::{bin, have_data, ok, python};

/// A tiny headless Fashion-MNIST run (8 steps an epoch).
fn tiny(runs: &Path, name: &str, epochs: usize, extra: &[&str]) -> PathBuf {
    let args = format!(
        "train --no-tui --model A --width 8 --subset 512 --batch-size 64 --device cpu --epochs {epochs} \
         --set data.val-size=256 --set data.test-subset=256 --name {name}"
    );
    ok(bin()
        .args(args.split(' '))
        .args(extra)
        .arg("--runs-dir")
        .arg(runs)
        .output()
        .unwrap());
    runs.join(name)
}

fn metrics(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// {tag: [(step, value)]} as TensorBoard's EventAccumulator reads `dir`.
fn scalars(py: &mut Command, dir: &Path) -> HashMap<String, Vec<(u64, f64)>> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference/tensorboard_scalars.py");
    let out = ok(py.arg(script).arg(dir).output().unwrap());
    serde_json::from_str(&out).unwrap()
}

fn near(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * b.abs().max(1e-3)
}

#[test]
fn tensorboard_files_hold_what_metrics_jsonl_holds() {
    let Some(mut py) = python() else { return };
    if !have_data() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny(tmp.path(), "tb", 2, &[]);
    let tb = scalars(&mut py, &run.join("tensorboard"));
    let events = metrics(&run);
    let steps: Vec<&Value> = events.iter().filter(|e| e["event"] == "step").collect();
    let written = &tb["loss/train_step"];
    assert_eq!(written.len(), steps.len());
    for (w, e) in written.iter().zip(&steps) {
        assert_eq!(w.0, e["global_step"].as_u64().unwrap());
        assert!(near(w.1, e["loss"].as_f64().unwrap()), "{w:?} vs {e}");
    }
    let epochs: Vec<&Value> = events.iter().filter(|e| e["event"] == "epoch").collect();
    for (tag, field) in [
        ("loss/train", "/train_loss"),
        ("loss/val", "/val/loss"),
        ("accuracy/train", "/train_acc"),
        ("accuracy/val_top1", "/val/top1"),
        ("accuracy/val_top5", "/val/top5"),
        ("accuracy/best_val_top1", "/best_top1"),
    ] {
        let got = &tb[tag];
        assert_eq!(got.len(), 2, "{tag}");
        for (g, e) in got.iter().zip(&epochs) {
            assert_eq!(g.0, 8 * e["epoch"].as_u64().unwrap(), "{tag} at the epoch's last step");
            assert!(
                near(g.1, e.pointer(field).unwrap().as_f64().unwrap()),
                "{tag}: {g:?} vs {e}"
            );
        }
    }
    let per_class: Vec<&String> = tb.keys().filter(|t| t.starts_with("val_top1_per_class/")).collect();
    assert_eq!(per_class.len(), 10);
    assert!(tb.contains_key("val_top1_per_class/00 T-shirt_top"), "{per_class:?}");
    let shirt = &tb["val_top1_per_class/06 Shirt"];
    assert!(near(shirt[1].1, epochs[1]["val"]["per_class"][6].as_f64().unwrap()));
    let test = events.last().unwrap()["test"]["top1"].as_f64().unwrap();
    assert_eq!(tb["test/top1"].len(), 1);
    assert!(near(tb["test/top1"][0].1, test) && tb["test/top1"][0].0 == 16);
    assert!(tb["optim/lr"].iter().all(|p| near(p.1, 0.01)));

    // summary.csv: a row an epoch.
    let csv = std::fs::read_to_string(run.join("summary.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(
        rows[0],
        "epoch,train_loss,train_acc,val_loss,val_top1,val_top5,lr,seconds"
    );
    assert_eq!(rows.len(), 3);
    let cols: Vec<f64> = rows[2].split(',').map(|c| c.parse().unwrap()).collect();
    assert_eq!(cols[0], 2.0);
    assert_eq!(cols[4], epochs[1]["val"]["top1"].as_f64().unwrap());

    // The same files again, from metrics.jsonl; never over existing ones.
    let out = tmp.path().join("exported");
    ok(bin()
        .arg("tensorboard-export")
        .arg(&run)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap());
    assert_eq!(scalars(&mut py, &out), tb);
    let o = bin().arg("tensorboard-export").arg(&run).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("holds event files already"));
}

#[test]
fn a_resume_from_an_older_checkpoint_rewinds_no_curve() {
    let Some(mut py) = python() else { return };
    if !have_data() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Step events throttled to the first and last step of each epoch.
    let run = tiny(tmp.path(), "rw", 3, &["--set", "train.step-events-per-sec=0.01"]);
    // The newest checkpoint is lost: the resume redoes epoch 3.
    std::fs::remove_file(run.join("checkpoints/ckpt-0000000024.safetensors")).unwrap();
    ok(bin()
        .args(["train", "--no-tui", "--resume"])
        .arg(&run)
        .output()
        .unwrap());
    let tb = scalars(&mut py, &run.join("tensorboard"));
    let epoch_steps: Vec<u64> = tb["loss/train"].iter().map(|p| p.0).collect();
    assert_eq!(epoch_steps, [8, 16, 24], "each epoch once");
    let steps: Vec<u64> = tb["loss/train_step"].iter().map(|p| p.0).collect();
    assert_eq!(steps, [1, 8, 9, 16, 17, 24], "a rewound curve or a missing epoch end");
    let csv = std::fs::read_to_string(run.join("summary.csv")).unwrap();
    let epochs: Vec<&str> = csv.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(epochs, ["1", "2", "3"]);
}

#[test]
fn run_tensorboard_false_writes_no_event_files() {
    if !have_data() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny(tmp.path(), "off", 1, &["--set", "run.tensorboard=false"]);
    assert!(!run.join("tensorboard").exists());
    assert!(run.join("summary.csv").is_file());
}

#[test]
fn a_report_of_real_runs_is_an_image_of_the_sheets_size() {
    if !have_data() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let a = tiny(tmp.path(), "a", 2, &[]);
    let b = tiny(tmp.path(), "b", 2, &["--seed", "4", "--set", "train.lr=0.02"]);
    ok(bin().arg("report").arg(&a).output().unwrap());
    let png = image::open(a.join("report.png")).unwrap();
    assert_eq!((png.width(), png.height()), vggtrain::report::SIZE);
    // Not a blank sheet: many colours are drawn.
    let rgb = png.to_rgb8();
    let mut colours: Vec<[u8; 3]> = rgb.pixels().map(|p| p.0).collect();
    colours.sort_unstable();
    colours.dedup();
    assert!(colours.len() > 50, "{} colours", colours.len());
    let svg = tmp.path().join("both.svg");
    ok(bin()
        .arg("report")
        .arg(&a)
        .arg(&b)
        .arg("--out")
        .arg(&svg)
        .output()
        .unwrap());
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.contains("a validation") && text.contains("b validation"));
    let o = bin().arg("report").arg(&a).args(["--out", "x.jpg"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let o = bin().arg("report").arg(tmp.path().join("none")).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("metrics.jsonl"), "{o:?}");
}
