//! Signals in every phase of a run: preparing, training, validating,
//! testing; a second one quits at once.
use super::*;

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

/// A folder dataset of `n` JPEGs a class (2 classes, `size` pixels square)
/// in train/ and val/.
fn write_jpegs(root: &Path, n: usize, size: u32) {
    for split in ["train", "val"] {
        for class in 0..2u8 {
            let dir = root.join(split).join(format!("c{class}"));
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let img = image::RgbImage::from_fn(size, size, |x, y| {
                    image::Rgb([class * 100, (x + i as u32) as u8, y as u8])
                });
                img.save(dir.join(format!("{i}.jpg"))).unwrap();
            }
        }
    }
}

/// A named pipe where an image should be: opening it blocks, as a read
/// from a stalled network file system would.
fn fifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

fn folder_run(runs: &Path, data: &Path, name: &str) -> Vec<String> {
    let args = format!(
        "train --no-tui --dataset folder --model A --width 8 --batch-size 4 --device cpu --epochs 1 \
         --set data.crop=32 --set data.scale=[32,32] --set data.val-size=4 --name {name}"
    );
    args.split_whitespace()
        .map(str::to_owned)
        .chain(["--data-dir".into(), data.display().to_string()])
        .chain(["--runs-dir".into(), runs.display().to_string()])
        .collect()
}

/// Waits for the child to exit; kills it and fails after `secs`.
fn exit_within(child: &mut Child, secs: u64, what: &str) -> i32 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what}: still running {secs}s after the signal");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn log_has(log: &Path, what: &str) -> bool {
    std::fs::read_to_string(log).unwrap_or_default().contains(what)
}

#[test]
fn sigint_while_the_run_is_prepared_exits_130_and_writes_nothing_and_sigusr1_is_harmless() {
    let tmp = tempfile::tempdir().unwrap();
    let (runs, data, log) = (
        tmp.path().join("runs"),
        tmp.path().join("data"),
        tmp.path().join("stderr"),
    );
    write_jpegs(&data, 4, 40);
    // The pixel statistics read the training images while preparing.
    fifo(&data.join("train/c1/stalled.jpg"));
    let mut child = spawn_logged(folder_run(&runs, &data, "p"), &log);
    wait_until("the preparation", 60, || log_has(&log, "preparing the run"));
    std::thread::sleep(std::time::Duration::from_millis(300));
    // A checkpoint request has nothing to save yet, and kills nothing.
    signal(&child, libc::SIGUSR1);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "SIGUSR1 ended the preparation");
    signal(&child, libc::SIGINT);
    assert_eq!(exit_within(&mut child, 5, "preparing"), 130);
    assert!(
        log_has(&log, "nothing was written"),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(!runs.join("p").exists(), "a run directory was created");
}

#[test]
fn sigint_during_the_final_test_stops_it_and_saves_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (runs, data, log) = (
        tmp.path().join("runs"),
        tmp.path().join("data"),
        tmp.path().join("stderr"),
    );
    write_jpegs(&data, 8, 40);
    // val/ is the test split: read only for the final test, where it stalls.
    fifo(&data.join("val/c0/stalled.jpg"));
    let run = runs.join("t");
    let mut child = spawn_logged(folder_run(&runs, &data, "t"), &log);
    wait_until("the end of training", 120, || {
        metrics(&run)
            .iter()
            .any(|e| e["event"] == "checkpoint-saved" && e["reason"] == "best")
    });
    signal(&child, libc::SIGINT);
    assert_eq!(exit_within(&mut child, 10, "testing"), 130);
    let last = metrics(&run).pop().unwrap();
    assert_eq!(
        (last["event"].as_str(), last["reason"].as_str()),
        (Some("finished"), Some("stopped by the user"))
    );
    assert!(last["test"].is_null());
    let state = vggtrain::engine::checkpoint::newest(&run).unwrap().loaded.state;
    assert_eq!(state.epoch, 1, "the trained epoch is saved");
}

#[test]
fn sigint_during_validation_abandons_it() {
    if !have_data() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (runs, log) = (tmp.path().join("runs"), tmp.path().join("stderr"));
    let run = runs.join("v");
    // One training step, then 30,000 validation images.
    let mut args = tiny(&runs, "v", "1");
    let at = args.iter().position(|a| a == "512").unwrap();
    args[at] = "64".into();
    args.extend(["--set".into(), "data.val-size=30000".into()]);
    let mut child = spawn_logged(args, &log);
    wait_until("the training step", 120, || {
        metrics(&run).iter().any(|e| e["event"] == "step")
    });
    signal(&child, libc::SIGINT);
    assert_eq!(exit_within(&mut child, 10, "validating"), 130);
    let events = metrics(&run);
    assert!(
        !events.iter().any(|e| e["event"] == "epoch"),
        "validation was not abandoned"
    );
    assert!(events
        .iter()
        .any(|e| e["event"] == "checkpoint-saved" && e["reason"] == "stop"));
}

#[test]
fn a_second_sigint_quits_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (runs, data, log) = (
        tmp.path().join("runs"),
        tmp.path().join("data"),
        tmp.path().join("stderr"),
    );
    // Full-width E at 224x224 on the CPU: one step takes seconds.
    write_jpegs(&data, 4, 256);
    let run = runs.join("q");
    let mut args = folder_run(&runs, &data, "q");
    args.extend(
        [
            "--set",
            "model.width=1",
            "--set",
            "model.config=E",
            "--set",
            "data.crop=224",
            "--set",
            "data.scale=[256,256]",
        ]
        .map(String::from),
    );
    let mut child = spawn_logged(args, &log);
    wait_until("the first step", 120, || {
        metrics(&run).iter().any(|e| e["event"] == "started")
    });
    signal(&child, libc::SIGINT);
    wait_until("the first signal's answer", 10, || {
        log_has(&log, "again to quit at once")
    });
    // Sooner, it would be the first one's echo (`headless::ECHO`).
    std::thread::sleep(vggtrain::headless::ECHO);
    signal(&child, libc::SIGINT);
    assert_eq!(exit_within(&mut child, 3, "the second signal"), 130);
    let events = metrics(&run);
    assert!(
        !events.iter().any(|e| e["event"] == "step" || e["event"] == "finished"),
        "it waited: {events:?}"
    );
    assert!(log_has(&log, "quitting now"));
    assert!(!run.join("pid").exists(), "the run is no longer live");
}
