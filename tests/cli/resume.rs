//! What a resume may change: applied and recorded, set as an lr change, or
//! refused before anything is written.
use super::*;

/// `train --no-tui --resume RUN` with `extra` flags.
fn resume(run: &Path, extra: &[&str]) -> Output {
    let mut a = vec![
        "train".to_string(),
        "--no-tui".into(),
        "--resume".into(),
        run.display().to_string(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    bin().args(a).output().unwrap()
}

/// The events of the newest start (after the last `started`).
fn last_start(run: &Path) -> Vec<serde_json::Value> {
    let all = metrics(run);
    let from = all.iter().rposition(|e| e["event"] == "started").unwrap();
    all[from..].to_vec()
}

#[test]
fn a_resume_applies_and_records_allowed_changes_and_refuses_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let (runs, data) = (tmp.path().join("runs"), tmp.path().join("mnist"));
    write_mnist(&data, 64, 16);
    let args = mnist_run(&runs, &data, "r", 1);
    let o = bin().args(&args).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let run = runs.join("r");

    // Changes that would make it another run: exit 2, nothing written.
    let before = snapshot(&run);
    for (flags, want) in [
        (&["--batch-size", "32"][..], "train.batch-size = 32 (the run has 16)"),
        (
            &["--seed", "5", "--model", "B"][..],
            r#"model.config = "B" (the run has "A")"#,
        ),
        (
            &["--set", "data.flip=false"][..],
            "data.flip = false (the run has true)",
        ),
    ] {
        let o = resume(&run, flags);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{flags:?}: {t}");
        assert!(t.contains(want), "{want} in {t}");
        assert!(
            snapshot(&run) == before,
            "{flags:?}: a refused resume wrote into the run"
        );
    }

    // Allowed ones: applied, written to config.toml, recorded.
    let o = resume(&run, &["--epochs", "3", "--lr", "0.005", "--set", "train.patience=4"]);
    assert!(o.status.success(), "{}", text(&o));
    let events = last_start(&run);
    let changed = events
        .iter()
        .find(|e| e["event"] == "config-changed")
        .expect("config-changed");
    let keys: Vec<(&str, &str, &str)> = changed["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["key"].as_str().unwrap(),
                c["old"].as_str().unwrap(),
                c["new"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(keys, [("train.epochs", "1", "3"), ("train.patience", "2", "4")]);
    // The lr is set now, as a manual change in the timeline.
    let lr = events.iter().find(|e| e["event"] == "lr-changed").expect("lr-changed");
    assert_eq!(
        (lr["old"].as_f64(), lr["new"].as_f64(), lr["cause"].as_str()),
        (Some(0.01), Some(0.005), Some("manual"))
    );
    assert!(events
        .iter()
        .filter(|e| e["event"] == "step")
        .all(|e| e["lr"].as_f64() == Some(0.005)));
    // ... and saved at once, at the step resumed from: a kill before the
    // next checkpoint does not lose it.
    let saved = events
        .iter()
        .find(|e| e["event"] == "checkpoint-saved")
        .expect("checkpoint-saved");
    assert_eq!(saved["reason"], "resume", "{saved}");
    let started = &events[0];
    let at = started["start_epoch"].as_u64().unwrap() * started["steps_per_epoch"].as_u64().unwrap()
        + started["start_step"].as_u64().unwrap();
    let name = format!("ckpt-{at:010}.safetensors");
    assert!(
        saved["path"].as_str().unwrap().ends_with(&name),
        "{saved} is not {name}"
    );
    let cfg = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(
        cfg.contains("epochs = 3") && cfg.contains("patience = 4") && cfg.contains("lr = 0.01"),
        "{cfg}"
    );
    let log = std::fs::read_to_string(run.join("train.log")).unwrap();
    assert!(
        log.contains("config changed on resume: train.epochs 1 -> 3, train.patience 2 -> 4"),
        "{log}"
    );
    let ckpt = vggtrain::engine::checkpoint::newest(&run).unwrap().loaded.state;
    assert_eq!((ckpt.schedule.patience, ckpt.epoch), (4, 3));

    // A plain resume keeps what the last one changed.
    let o = resume(&run, &[]);
    let t = text(&o);
    assert!(o.status.success() && t.contains("finished (3 epochs done)"), "{t}");
    assert!(!last_start(&run).iter().any(|e| e["event"] == "config-changed"));
}

#[test]
fn a_warm_started_run_resumes_without_the_weights_it_started_from() {
    let tmp = tempfile::tempdir().unwrap();
    let (runs, data) = (tmp.path().join("runs"), tmp.path().join("mnist"));
    write_mnist(&data, 64, 16);
    let o = bin().args(mnist_run(&runs, &data, "a", 1)).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let a = tmp.path().join("a.safetensors");
    let ckpt = checkpoints(&runs.join("a"))
        .into_iter()
        .find(|p| p.to_string_lossy().contains("ckpt-"))
        .unwrap();
    let o = run(&[
        "export",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--out",
        a.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));

    let mut b = mnist_run(&runs, &data, "b", 1);
    let at = b.iter().position(|s| s == "A").unwrap();
    b[at] = "B".into();
    b.extend(["--set".into(), format!("init.warm-start={:?}", a.display().to_string())]);
    let o = bin().args(&b).output().unwrap();
    let t = text(&o);
    assert!(o.status.success() && t.contains("warm start from"), "{t}");
    std::fs::remove_file(&a).unwrap();
    let o = resume(&runs.join("b"), &["--epochs", "2"]);
    let t = text(&o);
    assert!(o.status.success() && t.contains("finished (2 epochs done)"), "{t}");
}
