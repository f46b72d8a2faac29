//! Checkpoints over a long run: checksums, pruning by step and validity,
//! damaged files moved aside, temp files of killed saves, best as a hard
//! link, a checkpoint at every end, flushed sums, finite weights, and a
//! 1,000-class run whose checkpoints all stay loadable.
use super::*;
use std::os::unix::fs::MetadataExt;
use vggtrain::control::{CheckpointReason, Command};
use vggtrain::engine::schedule::Schedule;

fn small_state(step: usize) -> checkpoint::TrainState {
    checkpoint::TrainState {
        format: checkpoint::FORMAT,
        epoch: 0,
        step,
        global_step: step as u64,
        schedule: Schedule::new(&Default::default()),
        loss_sum: 1.5,
        correct: 3.0,
        seen: 4.0,
        history: vec![],
        lr_timeline: vec![],
        config: String::new(),
        model: "m".into(),
        data: String::new(),
        world: 1,
        loss_scale: None,
        skipped_steps: 0,
    }
}

fn save_small(path: &Path, step: usize) {
    let w = vec![("w".to_string(), Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]))];
    let m = vec![("w".to_string(), Tensor::from_slice(&[0.5f32, 0.5, 0.5, 0.5]))];
    checkpoint::save(path, &w, &m, &small_state(step), &small_card()).unwrap();
}

/// Flips the lowest bit of the byte at `at` (negative: from the end).
fn flip(path: &Path, at: isize) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = if at < 0 {
        bytes.len() - (-at) as usize
    } else {
        at as usize
    };
    bytes[i] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

/// The safetensors header's length (its first 8 bytes).
fn header_len(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    u64::from_le_bytes(bytes[..8].try_into().unwrap())
}

#[test]
fn a_flipped_byte_in_a_tensor_or_the_state_is_damage_not_a_silent_load() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("ckpt-0000000001.safetensors");
    save_small(&p, 1);
    checkpoint::verify(&p).unwrap();
    assert_eq!(checkpoint::load(&p).unwrap().state, small_state(1));
    // The last bytes are tensor data: the header still parses.
    flip(&p, -3);
    for err in [
        format!("{:#}", checkpoint::load(&p).err().unwrap()),
        format!("{:#}", checkpoint::verify(&p).unwrap_err()),
    ] {
        assert!(err.contains("damaged") && err.contains("ckpt-0000000001"), "{err}");
    }
    // A changed digit in the state's JSON is still JSON, and still damage.
    save_small(&p, 1);
    let bytes = std::fs::read(&p).unwrap();
    // (The state is a JSON string inside the header's JSON: its quotes are
    // escaped.) 1.5 becomes 1.4.
    let key = br#"loss_sum\":1."#;
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    flip(&p, at as isize);
    let err = format!("{:#}", checkpoint::load(&p).err().unwrap());
    assert!(err.contains("damaged"), "{err}");
}

#[test]
fn pruning_keeps_the_newest_good_checkpoints_by_step_and_moves_damaged_ones_aside() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let at = |step: u64| dir.join(checkpoint::periodic_name(step));
    for step in [1, 2, 3, 4, 900] {
        save_small(&at(step), step as usize);
    }
    flip(&at(4), -1);
    std::fs::write(at(900), b"cut short").unwrap();
    // A step past the zero-padded width still sorts by step.
    let wide = dir.join("ckpt-99999999999.safetensors");
    save_small(&wide, 5);
    let mut verified = std::collections::HashSet::new();
    let moved = checkpoint::prune(dir, 2, &mut verified);
    let moved: Vec<String> = moved.iter().map(|(d, _)| d.path.display().to_string()).collect();
    assert_eq!(moved.len(), 2, "{moved:?}");
    assert!(moved[0].ends_with("ckpt-0000000900.safetensors") && moved[1].ends_with("ckpt-0000000004.safetensors"));
    // The damaged ones are not counted: the next good one is kept instead.
    assert_eq!(checkpoint::list(dir), vec![at(3), wide.clone()]);
    assert!(dir.join("ckpt-0000000900.safetensors.damaged").is_file());
    assert!(dir.join("ckpt-0000000004.safetensors.damaged").is_file());
    assert!(
        !at(1).exists() && !at(2).exists(),
        "older ones beyond keep-last are deleted"
    );
    assert!(verified.contains(&at(3)) && verified.contains(&wide));
    // Known good files are not read again.
    flip(&at(3), -1);
    assert!(checkpoint::prune(dir, 2, &mut verified).is_empty());
}

#[test]
fn a_resume_past_a_damaged_newest_checkpoint_keeps_the_good_ones_and_cleans_up() {
    let _serial = serial();
    if !have_data() {
        return;
    }
    let runs = tempfile::tempdir().unwrap();
    let (dir, _) = run_to_end(Start::new(tiny(runs.path(), 2)));
    let ckpts = dir.join("checkpoints");
    let good = checkpoint::list(&ckpts);
    assert_eq!(good.len(), 2, "{good:?}");
    // The newest is damaged (a flipped byte in a copy with a later step),
    // and a save killed midway left its temp file behind.
    let damaged = ckpts.join(checkpoint::periodic_name(999));
    std::fs::copy(&good[1], &damaged).unwrap();
    flip(&damaged, -100);
    let temp = ckpts.join(".tmp-999999-ckpt-0000000020.safetensors");
    std::fs::write(&temp, vec![0u8; 4096]).unwrap();
    // Another, named by a pid that is live again (reused after a restart):
    // the resume holds the run's lock, so it is stale all the same.
    let reused = ckpts.join(".tmp-1-ckpt-0000000016.safetensors");
    std::fs::write(&reused, vec![0u8; 4096]).unwrap();

    let mut cfg = tiny(runs.path(), 3);
    cfg.run.keep_last = 1;
    let (_, events) = run_to_end(Start::new(cfg).resume(&dir));
    let logs: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::Log { message } => Some(message.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        logs.iter()
            .any(|m| m.contains("moved a damaged checkpoint aside") && m.contains("ckpt-0000000999")),
        "{logs:?}"
    );
    assert!(logs.iter().any(|m| m.contains("removed 2 temporary file")), "{logs:?}");
    assert!(!temp.exists() && !reused.exists());
    assert!(ckpts.join("ckpt-0000000999.safetensors.damaged").is_file());
    // keep-last = 1 keeps the newest good checkpoint, by step.
    let left = checkpoint::list(&ckpts);
    assert_eq!(left, vec![ckpts.join(checkpoint::periodic_name(24))]);
    assert_eq!(checkpoint::load(&left[0]).unwrap().state.epoch, 3);
}

#[test]
fn best_and_periodic_checkpoints_of_one_step_are_one_file() {
    let _serial = serial();
    if !have_data() {
        return;
    }
    let runs = tempfile::tempdir().unwrap();
    let (dir, events) = run_to_end(Start::new(tiny(runs.path(), 1)));
    let saved: Vec<CheckpointReason> = events
        .iter()
        .filter_map(|e| match e {
            Event::CheckpointSaved { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect();
    assert_eq!(saved, [CheckpointReason::Epoch, CheckpointReason::Best]);
    let periodic = std::fs::metadata(dir.join("checkpoints").join(checkpoint::periodic_name(8))).unwrap();
    let best = std::fs::metadata(dir.join("checkpoints").join(checkpoint::BEST)).unwrap();
    assert_eq!((best.ino(), best.nlink()), (periodic.ino(), 2), "best is a hard link");
}

fn finish_reason(events: &[Event]) -> String {
    match events.last() {
        Some(Event::Finished { reason, .. }) => reason.clone(),
        other => panic!("the run did not finish: {other:?}"),
    }
}

fn saved_reasons(events: &[Event]) -> Vec<CheckpointReason> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::CheckpointSaved { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

#[test]
fn the_end_of_a_run_always_leaves_a_checkpoint_to_resume_from() {
    let _serial = serial();
    if !have_data() {
        return;
    }
    let runs = tempfile::tempdir().unwrap();
    // "Only on request and at the end".
    let mut cfg = tiny(runs.path(), 1);
    cfg.run.checkpoint_every = 0;
    cfg.run.name = Some("every-0".into());
    let (dir, events) = run_to_end(Start::new(cfg));
    assert_eq!(saved_reasons(&events), [CheckpointReason::Best, CheckpointReason::End]);
    assert_eq!(checkpoint::load(&newest(&dir).unwrap()).unwrap().state.epoch, 1);
    // The end's checkpoint of the best's step is the same file, not a copy.
    let end = std::fs::metadata(newest(&dir).unwrap()).unwrap();
    let best = std::fs::metadata(dir.join("checkpoints").join(checkpoint::BEST)).unwrap();
    assert_eq!(
        (end.ino(), end.nlink()),
        (best.ino(), 2),
        "the end is a hard link to best"
    );

    // A plateau stop between two periodic saves (every 5 epochs).
    let mut cfg = tiny(runs.path(), 6);
    cfg.run.checkpoint_every = 7;
    cfg.run.name = Some("plateau".into());
    cfg.train.lr = 1e-12;
    cfg.train.patience = 1;
    cfg.train.max_decays = 0;
    let (dir, events) = run_to_end(Start::new(cfg.clone()));
    assert!(finish_reason(&events).contains("stopped improving"), "{events:?}");
    assert_eq!(saved_reasons(&events).last(), Some(&CheckpointReason::End));
    let state = checkpoint::load(&newest(&dir).unwrap()).unwrap().state;
    assert_eq!(state.epoch, state.history.len());
    assert!(state.epoch < 6);

    // The schedule's stop holds across a resume (as after a SIGKILL between
    // the end checkpoint and the exit): no more epochs, the same end.
    let (_, events) = run_to_end(Start::new(cfg.clone()).resume(&dir));
    assert!(!events.iter().any(|e| matches!(e, Event::Epoch(_))), "{events:?}");
    assert!(finish_reason(&events).contains("stopped improving"), "{events:?}");
    assert_eq!(
        checkpoint::load(&newest(&dir).unwrap()).unwrap().state.epoch,
        state.epoch
    );
    // Unless the resume raises max-decays: the stall then decays the lr.
    cfg.train.max_decays = 1;
    let (_, events) = run_to_end(Start::new(cfg).resume(&dir));
    assert!(events.iter().any(|e| matches!(e, Event::Epoch(_))), "{events:?}");
    assert!(
        events.iter().any(|e| matches!(e, Event::LrChanged { .. })),
        "{events:?}"
    );
}

#[test]
fn a_key_checkpoint_holds_the_sums_of_every_step_done() {
    let _serial = serial();
    if !have_data() {
        return;
    }
    let runs = tempfile::tempdir().unwrap();
    // One step event a minute: the device-side sums are read back at the
    // first step only, unless a save flushes them.
    let mut cfg = tiny(runs.path(), 1);
    cfg.data.subset = Some(5000);
    cfg.train.step_events_per_sec = 1.0 / 60.0;
    cfg.run.name = Some("straight".into());
    let (_, events) = run_to_end(Start::new(cfg.clone()));
    let straight = events
        .iter()
        .find_map(|e| match e {
            Event::Epoch(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap();

    cfg.run.name = Some("saved".into());
    let h = engine::spawn(Start::new(cfg.clone()), &|| None).unwrap();
    let dir = h.run_dir.clone();
    wait_for(&h.events, |e| matches!(e, Event::Step { .. }));
    std::thread::sleep(Duration::from_millis(300));
    h.send(Command::Pause);
    wait_for(&h.events, |e| matches!(e, Event::Paused));
    h.send(Command::SaveCheckpoint);
    wait_for(&h.events, |e| matches!(e, Event::CheckpointSaved { .. }));
    // Gone without another save, as after a kill.
    h.send(Command::Stop { save: false });
    drain(&h.events);
    h.join();
    let state = checkpoint::load(&newest(&dir).unwrap()).unwrap().state;
    assert!((2..79).contains(&state.step), "saved after {} steps", state.step);
    assert_eq!(state.seen, (state.step * 64) as f64);
    let (_, events) = run_to_end(Start::new(cfg).resume(&dir));
    let resumed = events
        .iter()
        .find_map(|e| match e {
            Event::Epoch(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap();
    // The same epoch as one never stopped (the sums are added in another
    // order: equal to rounding).
    assert!(
        (resumed.train_loss - straight.train_loss).abs() < 1e-9 * straight.train_loss,
        "{} vs {}",
        resumed.train_loss,
        straight.train_loss
    );
    assert_eq!(resumed.train_acc, straight.train_acc);
}

#[test]
fn non_finite_weights_are_never_saved() {
    let _serial = serial();
    if !have_data() {
        return;
    }
    let runs = tempfile::tempdir().unwrap();
    let mut cfg = tiny(runs.path(), 1);
    cfg.model.batch_norm = true;
    // A batch-norm running mean that is NaN: training (batch statistics)
    // and its loss stay finite, the weights do not.
    let spec = cfg.model_spec(1, (32, 32), 10);
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    vggtrain::model::Vgg::new(&vs.root(), spec, vggtrain::model::InitScheme::Kaiming).unwrap();
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    for (name, t) in &mut vars {
        if name == "features.1.running_mean" {
            *t = t.fill(f64::NAN);
        }
    }
    let weights = runs.path().join("nan.safetensors");
    Tensor::write_safetensors(&vars, &weights).unwrap();
    cfg.init.from = Some(weights);
    let (dir, events) = run_to_end(Start::new(cfg));
    let message = events
        .iter()
        .find_map(|e| match e {
            Event::Failed { message } => Some(message.clone()),
            _ => None,
        })
        .expect("the run fails");
    assert!(message.contains("weights became NaN or infinite"), "{message}");
    assert!(message.contains("not saved"), "{message}");
    let files: Vec<_> = std::fs::read_dir(dir.join("checkpoints")).unwrap().collect();
    assert!(files.is_empty(), "{files:?}");
}

#[test]
fn a_thousand_class_run_of_sixty_epochs_keeps_every_checkpoint_loadable() {
    let _serial = serial();
    let data = tempfile::tempdir().unwrap();
    write_folder(data.path(), 1000, [3, 1]);
    let runs = tempfile::tempdir().unwrap();
    let mut cfg = tiny(runs.path(), 60);
    cfg.model.width = 16;
    cfg.data.dataset = vggtrain::config::DatasetName::Folder;
    cfg.data.dir = Some(data.path().to_owned());
    cfg.data.crop = Some(32);
    cfg.data.scale = [32, 32];
    cfg.data.subset = None;
    cfg.data.val_size = Some(1000);
    cfg.data.test_subset = Some(100);
    cfg.data.pca_lighting = 0.0;
    cfg.train.batch_size = 256;
    cfg.train.lr = 1e-3;
    cfg.train.patience = 1000;
    cfg.run.keep_last = 2;
    let started = std::time::Instant::now();
    let (dir, events) = run_to_end(Start::new(cfg));
    assert_eq!(finish_reason(&events), "60 epochs done");
    let ckpts = dir.join("checkpoints");
    let mut kept = checkpoint::list(&ckpts);
    assert_eq!(kept.len(), 2);
    kept.push(ckpts.join(checkpoint::BEST));
    for p in &kept {
        let state = checkpoint::load(p).unwrap_or_else(|e| panic!("{e:#}")).state;
        assert!(
            header_len(p) < 4_000_000,
            "{}: header {} bytes",
            p.display(),
            header_len(p)
        );
        let with_matrix = state.history.iter().filter(|e| !e.val.confusion.is_empty()).count();
        assert_eq!(with_matrix, 1, "only the newest epoch keeps its confusion matrix");
    }
    let last = checkpoint::load(&kept[1]).unwrap().state;
    assert_eq!((last.epoch, last.history.len()), (60, 60));
    assert_eq!(last.history[59].val.confusion.len(), 1000);
    // For the record: what round 1 stored per epoch (its full evaluation)
    // against the whole header now.
    let epoch_json = events
        .iter()
        .find_map(|e| match e {
            Event::Epoch(s) => Some(serde_json::to_string(s).unwrap().len()),
            _ => None,
        })
        .unwrap();
    eprintln!(
        "1000 classes, 60 epochs in {:.0}s: header {} bytes at epoch 60; one epoch with its matrix is {} bytes of JSON",
        started.elapsed().as_secs_f64(),
        header_len(&kept[1]),
        epoch_json
    );
}
