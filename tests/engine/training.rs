//! Commands, resume, learning and folders.
use super::*;
use tch::{nn, nn::OptimizerConfig, Device, Kind};
use vggtrain::control::{CheckpointReason, Command, LrCause};
use vggtrain::engine::sgd::Sgd;
use vggtrain::model::{InitScheme, ModelSpec, Vgg};

#[test]
fn our_fused_sgd_matches_tch_step_for_step() {
    let _serial = serial();
    let spec = ModelSpec {
        arch: Arch::A,
        width: 8,
        in_channels: 1,
        input: (32, 32),
        classes: 10,
        batch_norm: false,
        dropout: 0.0,
    };
    let build = || {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let m = Vgg::new(&vs.root(), spec.clone(), InitScheme::Kaiming).unwrap();
        (vs, m)
    };
    let (vs_a, model_a) = build();
    let (vs_b, model_b) = build();
    let mut ours = Sgd::new(&vs_a, 0.9, 5e-4, true, false);
    let mut theirs = nn::Sgd {
        momentum: 0.9,
        dampening: 0.0,
        wd: 5e-4,
        nesterov: false,
    }
    .build(&vs_b, 0.01)
    .unwrap();
    for step in 0..10 {
        tch::manual_seed(100 + step);
        let x = Tensor::randn([16, 1, 32, 32], (Kind::Float, Device::Cpu));
        let y = Tensor::randint(10, [16], (Kind::Int64, Device::Cpu));
        let loss = model_a.forward_t(&x, true).cross_entropy_for_logits(&y);
        loss.backward();
        ours.step(0.01).unwrap();
        let loss = model_b.forward_t(&x, true).cross_entropy_for_logits(&y);
        theirs.backward_step(&loss);
    }
    let (a, b) = (vs_a.variables(), vs_b.variables());
    for (name, t) in &a {
        let diff = (t - &b[name]).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "{name} differs by {diff}");
    }
    // The buffers exist and are what a checkpoint saves.
    assert_eq!(ours.buffers().len(), a.len());
}

#[test]
fn commands_pause_decay_save_and_stop() {
    let _serial = serial();
    if !have_data() {
        return;
    }
    let runs = tempfile::tempdir().unwrap();
    let h = engine::spawn(Start::new(tiny(runs.path(), 1000)), &|| None).unwrap();
    wait_for(&h.events, |e| matches!(e, Event::Step { .. }));

    h.send(Command::Pause);
    wait_for(&h.events, |e| matches!(e, Event::Paused));
    // Paused holds: no step while paused.
    std::thread::sleep(Duration::from_millis(700));
    let during: Vec<Event> = h.events.try_iter().collect();
    assert!(
        !during.iter().any(|e| matches!(e, Event::Step { .. })),
        "steps while paused: {during:?}"
    );

    // Commands still apply while paused.
    h.send(Command::DecayLr);
    match wait_for(&h.events, |e| matches!(e, Event::LrChanged { .. })) {
        Event::LrChanged {
            old,
            new,
            cause,
            decays_used,
            ..
        } => {
            assert_eq!((old, cause, decays_used), (1e-2, LrCause::Manual, 1));
            assert!((new - 1e-3).abs() < 1e-15);
        }
        _ => unreachable!(),
    }
    h.send(Command::SaveCheckpoint);
    let saved = match wait_for(&h.events, |e| matches!(e, Event::CheckpointSaved { .. })) {
        Event::CheckpointSaved { path, reason } => {
            assert_eq!(reason, CheckpointReason::Key);
            path
        }
        _ => unreachable!(),
    };
    let loaded = checkpoint::load(&saved).expect("a saved checkpoint loads");
    assert!((loaded.state.schedule.lr - 1e-3).abs() < 1e-15);
    assert!(!loaded.momentum.is_empty());

    h.send(Command::Resume);
    wait_for(&h.events, |e| matches!(e, Event::Resumed));
    wait_for(
        &h.events,
        |e| matches!(e, Event::Step { lr, .. } if (lr - 1e-3).abs() < 1e-15),
    );

    h.send(Command::Stop { save: true });
    let rest = drain(&h.events);
    let stop_ckpt = rest.iter().position(|e| {
        matches!(
            e,
            Event::CheckpointSaved {
                reason: CheckpointReason::Stop,
                ..
            }
        )
    });
    let finished = rest.iter().position(|e| matches!(e, Event::Finished { .. }));
    assert!(
        stop_ckpt.is_some() && finished.is_some() && stop_ckpt < finished,
        "{rest:?}"
    );
    let run = h.run_dir.clone();
    h.join();
    assert!(!run.join("pid").exists(), "a finished run is not live");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    for line in metrics.lines() {
        serde_json::from_str::<serde_json::Value>(line).expect("each metrics line is JSON");
    }
    assert!(metrics.contains("\"event\":\"finished\""));
}

#[test]
fn resume_is_bitwise_identical_to_an_uninterrupted_run() {
    let _serial = serial();
    if !have_data() {
        return;
    }
    let runs = tempfile::tempdir().unwrap();
    let run = |cfg: Config, resume: Option<&Path>| {
        let start = match resume {
            Some(dir) => Start::new(cfg).resume(dir),
            None => Start::new(cfg),
        };
        let h = engine::spawn(start, &|| None).unwrap();
        let dir = h.run_dir.clone();
        let events = drain(&h.events);
        h.join();
        assert!(events.iter().any(|e| matches!(e, Event::Finished { .. })), "{events:?}");
        dir
    };
    // Two epochs straight.
    let mut cfg = tiny(runs.path(), 2);
    cfg.run.name = Some("straight".into());
    let straight = run(cfg.clone(), None);

    // One epoch, then resume for the second.
    cfg.run.name = Some("split".into());
    cfg.train.epochs = 1;
    let split = run(cfg.clone(), None);
    cfg.train.epochs = 2;
    run(cfg.clone(), Some(&split));

    // Stopped mid-epoch (wherever the stop lands), then resumed.
    cfg.run.name = Some("mid".into());
    let mid = stopped_inside_the_first_epoch(&cfg);
    run(cfg.clone(), Some(&mid));

    // Stopped before its first checkpoint (as when killed then): the resume
    // starts it again.
    cfg.run.name = Some("early".into());
    let h = engine::spawn(Start::new(cfg.clone()), &|| None).unwrap();
    let early = h.run_dir.clone();
    wait_for(&h.events, |e| matches!(e, Event::Step { .. }));
    h.send(Command::Stop { save: false });
    drain(&h.events);
    h.join();
    assert!(checkpoint::list(&early.join("checkpoints")).is_empty());
    run(cfg.clone(), Some(&early));

    let want = tensors(&newest(&straight).unwrap());
    for other in [&split, &mid, &early] {
        let got = tensors(&newest(other).unwrap());
        assert_eq!(want.len(), got.len());
        for (name, t) in &want {
            assert!(
                t.equal(&got[name]),
                "{name} differs after resume in {}",
                other.display()
            );
        }
    }
}

#[test]
fn an_fp16_run_resumes_bitwise_with_its_loss_scale() {
    let _serial = serial();
    if !have_data() {
        return;
    }
    let runs = tempfile::tempdir().unwrap();
    let mut cfg = tiny(runs.path(), 1);
    cfg.train.precision = vggtrain::config::Precision::Fp16;
    cfg.run.name = Some("straight".into());
    let (straight, _) = run_to_end(Start::new(cfg.clone()));
    cfg.run.name = Some("mid".into());
    let mid = stopped_inside_the_first_epoch(&cfg);
    let stopped = checkpoint::load(&newest(&mid).unwrap()).unwrap().state;
    let scale = stopped.loss_scale.expect("the stop's checkpoint holds the loss scale");
    assert_eq!(scale.growth, stopped.global_step as i64, "{stopped:?}");
    run_to_end(Start::new(cfg.clone()).resume(&mid));
    let (a, b) = (newest(&straight).unwrap(), newest(&mid).unwrap());
    let (sa, sb) = (checkpoint::load(&a).unwrap().state, checkpoint::load(&b).unwrap().state);
    assert_eq!(sa.loss_scale, sb.loss_scale);
    assert_eq!(sa.loss_scale.unwrap().growth, sa.global_step as i64);
    let (want, got) = (tensors(&a), tensors(&b));
    assert_eq!(want.len(), got.len());
    for (name, t) in &want {
        assert!(t.equal(&got[name]), "{name} differs after the fp16 resume");
    }
}

#[test]
fn the_images_per_sec_leave_out_the_first_steps() {
    let _serial = serial();
    if !have_data() {
        return;
    }
    let runs = tempfile::tempdir().unwrap();
    let mut cfg = tiny(runs.path(), 1);
    // A step event at every step.
    cfg.train.step_events_per_sec = 10_000.0;
    let (_, events) = run_to_end(Start::new(cfg));
    let rates: Vec<(u64, f64)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Step {
                global_step,
                images_per_sec,
                ..
            } => Some((*global_step, *images_per_sec)),
            _ => None,
        })
        .collect();
    assert_eq!(
        rates.iter().map(|r| r.0).collect::<Vec<_>>(),
        (1..=rates.len() as u64).collect::<Vec<_>>()
    );
    for (step, ips) in &rates {
        // Warm-up (cuDNN's autotuning on a GPU) counts for no rate, so no ETA.
        assert_eq!(*ips > 0.0, *step > 3, "step {step}: {ips} img/s");
    }
}

#[test]
fn a_resume_that_would_change_the_run_is_refused_and_writes_nothing() {
    let _serial = serial();
    if !have_data() {
        return;
    }
    let runs = tempfile::tempdir().unwrap();
    let h = engine::spawn(Start::new(tiny(runs.path(), 2)), &|| None).unwrap();
    let dir = h.run_dir.clone();
    drain(&h.events);
    h.join();
    let before = snapshot(&dir);
    let refused = |cfg: Config| {
        let err = engine::spawn(Start::new(cfg).resume(&dir), &|| None)
            .err()
            .expect("the resume is refused");
        format!("{err:#}")
    };
    let mut other = tiny(runs.path(), 2);
    other.model.config = Arch::B;
    let err = refused(other);
    assert!(err.contains(r#"model.config = "B" (the run has "A")"#), "{err}");
    let mut other = tiny(runs.path(), 2);
    other.train.batch_size = 32;
    other.train.seed = 9;
    other.data.pca_lighting = 0.0;
    let err = refused(other);
    for key in ["train.batch-size = 32", "train.seed = 9", "data.pca-lighting = 0.0"] {
        assert!(err.contains(key), "{key} in {err}");
    }
    // Fewer epochs than the run has done.
    let err = refused(tiny(runs.path(), 1));
    assert!(
        err.contains("train.epochs = 1, but the run has already finished 2 epochs"),
        "{err}"
    );
    assert!(snapshot(&dir) == before, "a refused resume wrote into the run");
}

#[test]
fn nan_loss_fails_the_run_and_keeps_the_last_good_checkpoint() {
    let _serial = serial();
    if !have_data() {
        return;
    }
    let runs = tempfile::tempdir().unwrap();
    // A good first epoch, then an absurd lr.
    let mut cfg = tiny(runs.path(), 1);
    cfg.run.name = Some("nan".into());
    let h = engine::spawn(Start::new(cfg.clone()), &|| None).unwrap();
    let dir = h.run_dir.clone();
    drain(&h.events);
    h.join();
    let good = newest(&dir).unwrap();
    let good_bytes = std::fs::read(&good).unwrap();

    cfg.train.epochs = 3;
    let h = engine::spawn(Start::new(cfg).resume(&dir), &|| None).unwrap();
    h.send(Command::SetLr { lr: 1e3 });
    let events = drain(&h.events);
    h.join();
    let message = events
        .iter()
        .find_map(|e| match e {
            Event::Failed { message } => Some(message.clone()),
            _ => None,
        })
        .expect("a NaN loss fails the run");
    assert!(message.contains("loss became NaN at epoch 2"), "{message}");
    assert!(message.contains(&good.display().to_string()), "{message}");
    assert_eq!(checkpoint::list(&dir.join("checkpoints")), vec![good.clone()]);
    assert_eq!(
        std::fs::read(&good).unwrap(),
        good_bytes,
        "the last good checkpoint is untouched"
    );
}

#[test]
fn a_half_written_checkpoint_is_never_taken_for_one() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let ckpts = dir.path().join("checkpoints");
    std::fs::create_dir(&ckpts).unwrap();
    let w = vec![("w".to_string(), Tensor::from_slice(&[1.0f32, 2.0]))];
    let state_of = |step| checkpoint::TrainState {
        format: checkpoint::FORMAT,
        epoch: 0,
        step,
        global_step: step as u64,
        schedule: engine::schedule::Schedule::new(&Default::default()),
        loss_sum: 0.0,
        correct: 0.0,
        seen: 0.0,
        history: vec![],
        lr_timeline: vec![],
        config: String::new(),
        model: "m".into(),
        data: String::new(),
        world: 1,
        loss_scale: None,
        skipped_steps: 0,
    };
    let old = ckpts.join(checkpoint::periodic_name(1));
    checkpoint::save(&old, &w, &[], &state_of(1), &small_card()).unwrap();
    let old_bytes = std::fs::read(&old).unwrap();

    // A writer killed between write and rename leaves only its temp file...
    std::fs::write(
        ckpts.join(".tmp-999-ckpt-0000000002.safetensors"),
        &old_bytes[..old_bytes.len() / 2],
    )
    .unwrap();
    // ...and a truncated file under a checkpoint's name (not ours: a copy
    // cut short) is skipped too.
    std::fs::write(
        ckpts.join(checkpoint::periodic_name(3)),
        &old_bytes[..old_bytes.len() - 5],
    )
    .unwrap();
    assert_eq!(newest(dir.path()).unwrap(), old);

    // A failed write (here: the target's folder is a file) leaves the old one.
    let blocked = dir.path().join("not-a-dir");
    std::fs::write(&blocked, b"x").unwrap();
    let err = checkpoint::save(&blocked.join("ckpt.safetensors"), &w, &[], &state_of(2), &small_card()).unwrap_err();
    assert!(format!("{err:#}").contains("cannot write"), "{err:#}");
    assert_eq!(std::fs::read(&old).unwrap(), old_bytes);
    assert_eq!(checkpoint::load(&old).unwrap().state.step, 1);
}

#[test]
fn a_corrupt_checkpoint_is_a_clear_error() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.safetensors");
    std::fs::write(&p, b"not a checkpoint at all").unwrap();
    let err = format!("{:#}", checkpoint::load(&p).err().unwrap());
    assert!(
        err.contains("is not a complete vggtrain checkpoint") && err.contains("x.safetensors"),
        "{err}"
    );
}

/// The seed's run ended at chance (9.92%); ours must learn.
#[test]
fn it_learns_fashion_mnist() {
    let _serial = serial();
    if !have_data() {
        return;
    }
    let runs = tempfile::tempdir().unwrap();
    let mut cfg = tiny(runs.path(), 8);
    cfg.data.subset = Some(5000);
    cfg.data.val_size = Some(1000);
    cfg.data.test_subset = None;
    cfg.data.pad = 0;
    cfg.data.pca_lighting = 0.0;
    cfg.train.patience = 3;
    cfg.run.checkpoint_every = 0;
    let h = engine::spawn(Start::new(cfg), &|| None).unwrap();
    let events = drain(&h.events);
    h.join();
    let test = events
        .iter()
        .find_map(|e| match e {
            Event::Finished { test: Some(t), .. } => Some(t.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no test result: {:?}", events.last()));
    eprintln!("test accuracy after 8 epochs of 5000 images: {:.2}%", 100.0 * test.top1);
    assert_eq!(test.images, 10_000);
    assert!(test.top1 >= 0.75, "test top-1 {:.2}% < 75%", 100.0 * test.top1);
}

#[test]
fn trains_on_an_image_folder_through_the_prefetch_queue() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    for (split, n) in [("train", 24), ("val", 4)] {
        for class in 0..3u8 {
            let dir = root.path().join(split).join(format!("class{class}"));
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let img = image::RgbImage::from_fn(60, 48, |x, y| {
                    image::Rgb([class * 80, (x * 4) as u8, (y * 5 + i) as u8])
                });
                img.save(dir.join(format!("{i}.jpg"))).unwrap();
            }
        }
    }
    let runs = tempfile::tempdir().unwrap();
    let mut cfg = tiny(runs.path(), 2);
    cfg.data.dataset = vggtrain::config::DatasetName::Folder;
    cfg.data.dir = Some(root.path().to_owned());
    cfg.data.crop = Some(32);
    cfg.data.scale = [36, 44];
    cfg.data.subset = None;
    cfg.data.val_size = Some(12);
    cfg.data.test_subset = None;
    cfg.train.batch_size = 16;
    let h = engine::spawn(Start::new(cfg), &|| None).unwrap();
    let events = drain(&h.events);
    h.join();
    let started = events.iter().find_map(|e| match e {
        Event::Started(i) => Some(i.clone()),
        _ => None,
    });
    let info = started.expect("started");
    assert_eq!(info.classes, vec!["class0", "class1", "class2"]);
    assert_eq!((info.train_images, info.val_images, info.test_images), (60, 12, 12));
    assert_eq!(events.iter().filter(|e| matches!(e, Event::Epoch(_))).count(), 2);
    match events.last() {
        Some(Event::Finished { test: Some(t), .. }) => assert_eq!(t.images, 12),
        other => panic!("{other:?}"),
    }
}

fn folder_config(runs: &Path, data: &Path, epochs: usize) -> Config {
    let mut cfg = tiny(runs, epochs);
    cfg.data.dataset = vggtrain::config::DatasetName::Folder;
    cfg.data.dir = Some(data.to_owned());
    cfg.data.crop = Some(32);
    cfg.data.scale = [32, 32];
    cfg.data.subset = None;
    cfg.data.test_subset = None;
    cfg
}

/// Threads of this process whose name starts with `prefix`.
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

#[test]
fn data_workers_is_the_number_of_decoding_threads() {
    let _serial = serial();
    let data = tempfile::tempdir().unwrap();
    write_folder(data.path(), 2, [40, 4]);
    let runs = tempfile::tempdir().unwrap();
    let mut cfg = folder_config(runs.path(), data.path(), 1000);
    cfg.data.val_size = Some(8);
    cfg.data.workers = 3;
    cfg.train.batch_size = 8;
    let h = engine::spawn(Start::new(cfg), &|| None).unwrap();
    wait_for(&h.events, |e| matches!(e, Event::Step { .. }));
    common::wait_until("3 decoding threads", 30, || threads_named("vggtrain-decode") == 3);
    h.send(Command::Stop { save: false });
    drain(&h.events);
    h.join();

    // 0: on the CPU, one thread per 8 cores (at least one), leaving the
    // cores to libtorch's step.
    let mut cfg = folder_config(runs.path(), data.path(), 1000);
    cfg.data.val_size = Some(8);
    cfg.train.batch_size = 8;
    cfg.run.name = Some("default-workers".into());
    let want = (std::thread::available_parallelism().unwrap().get() / 8).max(1);
    let h = engine::spawn(Start::new(cfg), &|| None).unwrap();
    wait_for(&h.events, |e| matches!(e, Event::Step { .. }));
    common::wait_until(&format!("{want} decoding threads"), 30, || {
        threads_named("vggtrain-decode") == want
    });
    h.send(Command::Stop { save: false });
    drain(&h.events);
    h.join();
}

#[test]
fn undecodable_images_are_skipped_counted_and_left_out_of_the_accuracy() {
    let _serial = serial();
    let data = tempfile::tempdir().unwrap();
    write_folder(data.path(), 2, [10, 3]);
    for bad in ["train/c0000/0.png", "train/c0001/4.png", "val/c0001/1.png"] {
        std::fs::write(data.path().join(bad), b"not a PNG").unwrap();
    }
    let runs = tempfile::tempdir().unwrap();
    let mut cfg = folder_config(runs.path(), data.path(), 1);
    cfg.data.val_size = Some(4);
    cfg.data.skip_bad_images = true;
    // One image a batch: a bad image is a batch with nothing in it.
    cfg.train.batch_size = 1;
    let (_, events) = run_to_end(Start::new(cfg));
    let epoch = events
        .iter()
        .find_map(|e| match e {
            Event::Epoch(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no epoch: {:?}", events.last()));
    assert!(epoch.train_loss.is_finite());
    let skipped_in_training: usize = events
        .iter()
        .filter_map(|e| match e {
            Event::Log { message } if message.contains("undecodable training images") => message
                .split("skipped ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .and_then(|n| n.parse::<usize>().ok()),
            _ => None,
        })
        .sum();
    // The two bad training files are in the training or the validation split.
    assert_eq!(skipped_in_training + epoch.val.skipped, 2, "{events:?}");
    assert_eq!(epoch.val.images + epoch.val.skipped, 4);
    match events.last() {
        Some(Event::Finished { test: Some(t), .. }) => {
            assert_eq!((t.images, t.skipped), (5, 1));
            let counted: u64 = t.confusion.iter().flatten().sum();
            assert_eq!(counted, 5, "the skipped image is in no denominator");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_stop_during_validation_abandons_it_and_the_resume_validates_that_epoch() {
    let _serial = serial();
    if !have_data() {
        return;
    }
    let runs = tempfile::tempdir().unwrap();
    // One training step, then a long validation pass.
    let mut cfg = tiny(runs.path(), 1);
    cfg.data.subset = Some(64);
    cfg.data.val_size = Some(30_000);
    let h = engine::spawn(Start::new(cfg.clone()), &|| None).unwrap();
    let dir = h.run_dir.clone();
    wait_for(&h.events, |e| matches!(e, Event::Step { step: 1, .. }));
    h.send(Command::Stop { save: true });
    let events = drain(&h.events);
    h.join();
    assert!(!events.iter().any(|e| matches!(e, Event::Epoch(_))), "{events:?}");
    assert!(matches!(events.last(), Some(Event::Finished { test: None, .. })));
    let state = checkpoint::load(&newest(&dir).unwrap()).unwrap().state;
    assert_eq!((state.epoch, state.step, state.seen), (0, 1, 64.0));
    let (_, events) = run_to_end(Start::new(cfg).resume(&dir));
    assert!(
        !events.iter().any(|e| matches!(e, Event::Step { .. })),
        "no step to redo"
    );
    let epochs: Vec<_> = events.iter().filter(|e| matches!(e, Event::Epoch(_))).collect();
    assert_eq!(epochs.len(), 1);
}
