//! The binary as a user runs it: info, models, headless training with its
//! run directory, signals, export, eval, runs, and bad input.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
};

mod common;
use common::{have_data, wait_until, FASHION};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vggtrain"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("vggtrain runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
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

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
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

#[test]
fn info_reports_libtorch_cuda_and_datasets() {
    let o = run(&["info"]);
    assert!(o.status.success());
    let t = text(&o);
    assert!(t.contains("libtorch 2.11.0"), "{t}");
    assert!(t.contains("CUDA available:"), "{t}");
    assert!(t.contains("MKL-DNN:") && t.contains("CPU threads:"), "{t}");
    if have_data() {
        assert!(t.contains(&format!("fashion-mnist  found in {FASHION}")), "{t}");
    }
}

#[test]
fn models_prints_torchvision_parameter_counts() {
    let o = run(&["models"]);
    assert!(o.status.success());
    let t = text(&o);
    for (name, params) in [("A ", "132,863,336"), ("D ", "138,357,544"), ("E ", "143,667,240")] {
        assert!(
            t.lines().any(|l| l.starts_with(name) && l.contains(params)),
            "{name} {params}\n{t}"
        );
    }
}

#[test]
fn headless_run_writes_a_complete_run_dir_and_exports_and_evaluates() {
    if !have_data() {
        return;
    }
    let runs = tempfile::tempdir().unwrap();
    let o = bin().args(tiny(runs.path(), "h", "2")).output().unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let dir = runs.path().join("h");
    assert!(t.contains(&format!("run {}", dir.display())), "{t}");
    assert!(t.contains("VGG A (11 layers)") && t.contains("cpu x"), "{t}");
    assert!(
        t.contains("epoch 1 | train loss") && t.contains("epoch 2 | train loss"),
        "{t}"
    );
    assert!(t.contains("finished (2 epochs done) | test top-1"), "{t}");
    for f in ["config.toml", "metrics.jsonl", "train.log"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    assert!(!dir.join("pid").exists());
    let events = metrics(&dir);
    let kinds: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"started"));
    assert_eq!(kinds.last(), Some(&"finished"));
    assert_eq!(kinds.iter().filter(|k| **k == "epoch").count(), 2);
    assert!(kinds.contains(&"step") && kinds.contains(&"checkpoint-saved"));
    let cfg = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    assert!(cfg.contains("config = \"A\"") && cfg.contains("width = 8"), "{cfg}");

    // export: weights only, torchvision names.
    let ckpt = checkpoints(&dir)
        .into_iter()
        .rfind(|p| p.to_string_lossy().contains("ckpt-"))
        .unwrap();
    let out = runs.path().join("model.safetensors");
    let o = run(&[
        "export",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let names: Vec<String> = tch::Tensor::read_safetensors(&out)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(names.contains(&"features.0.weight".to_string()) && names.contains(&"classifier.6.bias".to_string()));
    assert!(!names.iter().any(|n| n.starts_with("momentum.")), "{names:?}");

    // eval with the paper's protocol options.
    let o = run(&["eval", "--checkpoint", ckpt.to_str().unwrap(), "--flip", "--dense"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("on 256 test images") && t.contains("top-1") && t.contains("Ankle boot"),
        "{t}"
    );

    // runs lists it.
    let o = run(&["runs", "--runs-dir", runs.path().to_str().unwrap()]);
    let t = text(&o);
    assert!(
        t.lines()
            .any(|l| l.starts_with("h ") && l.contains("finished") && l.contains(" 2 ")),
        "{t}"
    );

    // an existing run is never overwritten.
    let o = bin().args(tiny(runs.path(), "h", "1")).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("already exists"), "{}", text(&o));
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

#[test]
fn sigusr1_checkpoints_and_sigterm_checkpoints_then_exits_143() {
    if !have_data() {
        return;
    }
    let runs = tempfile::tempdir().unwrap();
    let run = runs.path().join("sig");
    let mut child = spawn_logged(tiny(runs.path(), "sig", "1000"), &runs.path().join("stderr"));
    wait_until("training steps", 120, || {
        metrics(&run).iter().any(|e| e["event"] == "step")
    });

    signal(&child, libc::SIGUSR1);
    wait_until("a checkpoint from SIGUSR1", 120, || {
        metrics(&run)
            .iter()
            .any(|e| e["event"] == "checkpoint-saved" && e["reason"] == "key")
    });

    signal(&child, libc::SIGTERM);
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(143),
        "{}",
        std::fs::read_to_string(runs.path().join("stderr")).unwrap()
    );
    let events = metrics(&run);
    assert!(events
        .iter()
        .any(|e| e["event"] == "checkpoint-saved" && e["reason"] == "stop"));
    assert_eq!(events.last().unwrap()["event"], "finished");
    let log = std::fs::read_to_string(runs.path().join("stderr")).unwrap();
    assert!(log.contains("signal received"), "{log}");
}

#[test]
fn sigint_exits_130_and_resume_continues() {
    if !have_data() {
        return;
    }
    let runs = tempfile::tempdir().unwrap();
    let run = runs.path().join("int");
    let mut child = spawn_logged(tiny(runs.path(), "int", "1000"), &runs.path().join("stderr"));
    wait_until("training steps", 120, || {
        metrics(&run).iter().any(|e| e["event"] == "step")
    });
    signal(&child, libc::SIGINT);
    assert_eq!(child.wait().unwrap().code(), Some(130));

    let mut args = tiny(runs.path(), "int", "1");
    args.extend(["--resume".into(), run.display().to_string()]);
    let o = bin().args(args).output().unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("resumed from") && t.contains("finished"), "{t}");
}

#[test]
fn bad_input_is_a_clear_error_with_exit_2() {
    let runs = tempfile::tempdir().unwrap();
    let r = runs.path().to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["train", "--no-tui", "--batch-size", "0", "--runs-dir", r],
            "train.batch-size = 0",
        ),
        (&["train", "--no-tui", "--lr=-1", "--runs-dir", r], "train.lr = -1"),
        (
            &["train", "--no-tui", "--model", "Z", "--runs-dir", r],
            "unknown model `Z`",
        ),
        (
            &["train", "--no-tui", "--width", "3", "--runs-dir", r],
            "model.width = 3",
        ),
        (
            &["train", "--no-tui", "--data-dir", "/nonexistent/x", "--runs-dir", r],
            "/nonexistent/x",
        ),
        (
            &["train", "--no-tui", "--set", "train.bogus=1", "--runs-dir", r],
            "bogus",
        ),
        (&["train", "--no-tui", "--resume", r], "no checkpoints"),
        (
            &["eval", "--checkpoint", "/nonexistent.safetensors"],
            "/nonexistent.safetensors",
        ),
    ];
    for (args, want) in cases {
        let o = run(args);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {t}");
        assert!(
            t.contains("error:") && t.contains(want),
            "{args:?}: want {want:?} in {t}"
        );
    }
}

#[test]
fn bench_reports_every_measure_as_json() {
    let o = run(&[
        "bench",
        "--model",
        "A",
        "--width",
        "8",
        "--input",
        "32",
        "--batch",
        "16",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--folder-images",
        "8",
        "--device",
        "cpu",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for key in [
        "compute_images_per_sec",
        "data_memory_images_per_sec",
        "data_folder_images_per_sec_1_thread",
        "data_folder_images_per_sec_all_threads",
        "end_to_end_images_per_sec",
        "train_tflops",
        "peak_host_memory_mb",
    ] {
        assert!(r[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {r}");
    }
    assert_eq!(r["model"], "VGG A (11 layers) 1/8 width");
    assert_eq!(r["channels_last"], true);
}
