//! Attaching to a running training process over its control socket: the
//! real binary running headless, a client speaking newline-delimited JSON,
//! and the TUI's App driven through the client by a real engine.
use std::{
    io::{BufRead, BufReader, Write},
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};
use vggtrain::attach::{self, client, Frame, RunState};
use vggtrain::control::{CheckpointReason, Event};
use vggtrain::ui::app::App;

mod common;
use common::{have_data, wait_until};

/// One training process at a time, on one thread: two cores oversubscribed
/// by several libtorch processes crawl.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A training process, killed if a test fails before it ends.
struct Run(Child);

impl Drop for Run {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A narrow headless run that goes on until it is stopped (no plateau stop).
fn start(runs: &Path, name: &str, batch: &str, extra: &[&str]) -> Run {
    let log = std::fs::File::create(runs.join(format!("{name}.log"))).unwrap();
    Command::new(env!("CARGO_BIN_EXE_vggtrain"))
        .args([
            "train",
            "--no-tui",
            "--model",
            "A",
            "--width",
            "8",
            "--subset",
            "2048",
            "--batch-size",
            batch,
            "--device",
            "cpu",
            "--epochs",
            "1000",
            "--name",
            name,
            "--set",
            "data.val-size=128",
            "--set",
            "data.test-subset=128",
            "--set",
            "train.patience=1000",
            "--set",
            "train.threads=1",
            "--runs-dir",
        ])
        .arg(runs)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map(Run)
        .expect("vggtrain starts")
}

struct Client {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Client {
    fn connect(run: &Path) -> Client {
        let sock = attach::socket_path(run);
        wait_until("the control socket", 180, || UnixStream::connect(&sock).is_ok());
        let w = UnixStream::connect(&sock).unwrap();
        w.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        Client {
            r: BufReader::new(w.try_clone().unwrap()),
            w,
        }
    }

    fn frame(&mut self) -> Option<Frame> {
        let mut line = String::new();
        if self.r.read_line(&mut line).expect("a frame in time") == 0 {
            return None;
        }
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")))
    }

    fn snapshot(&mut self) -> attach::Snapshot {
        match self.frame() {
            Some(Frame::Snapshot(s)) => s,
            f => panic!("expected a snapshot, got {f:?}"),
        }
    }

    fn send(&mut self, line: &[u8]) {
        self.w.write_all(line).unwrap();
        self.w.write_all(b"\n").unwrap();
    }

    /// Reads frames until one matches; returns the frames read.
    fn until(&mut self, what: &str, mut pred: impl FnMut(&Frame) -> bool) -> Vec<Frame> {
        let mut seen = Vec::new();
        loop {
            let f = self
                .frame()
                .unwrap_or_else(|| panic!("closed before {what}; saw {seen:?}"));
            let done = pred(&f);
            seen.push(f);
            if done {
                return seen;
            }
        }
    }
}

fn is_event(f: &Frame, pred: impl Fn(&Event) -> bool) -> bool {
    matches!(f, Frame::Event { event, .. } if pred(event))
}

fn is_step(f: &Frame) -> bool {
    is_event(f, |e| matches!(e, Event::Step { .. }))
}

fn exit_code(run: &mut Run) -> i32 {
    let start = Instant::now();
    loop {
        if let Some(s) = run.0.try_wait().unwrap() {
            return s.code().unwrap_or(-1);
        }
        assert!(start.elapsed() < Duration::from_secs(180), "the run did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn runs_listing(runs: &Path) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_vggtrain"))
        .args(["runs", "--runs-dir"])
        .arg(runs)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_client_watches_and_steers_a_headless_run() {
    if !have_data() {
        return;
    }
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path();
    let mut child = start(runs, "steer", "64", &[]);
    let run = runs.join("steer");
    let mut c = Client::connect(&run);
    let mode = std::fs::metadata(attach::socket_path(&run))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the socket is the user's alone");
    let s = c.snapshot();
    assert_eq!(s.pid, child.0.id());
    assert!(s.config.contains("fashion-mnist"), "{}", s.config);
    assert!(matches!(s.state, RunState::Starting | RunState::Running));
    // Live events follow the snapshot.
    c.until("a step event", is_step);
    assert!(runs_listing(runs).contains("live"), "{}", runs_listing(runs));

    // Pause: accepted, then confirmed by the engine.
    c.send(br#"{"command":"pause"}"#);
    let seen = c.until("the pause", |f| is_event(f, |e| matches!(e, Event::Paused)));
    let accepted = seen.iter().position(|f| matches!(f, Frame::Accepted { .. }));
    assert!(
        accepted.is_some_and(|i| i + 1 < seen.len()),
        "accepted after its effect: {seen:?}"
    );
    // A second client sees the paused run in its snapshot.
    let mut second = Client::connect(&run);
    let s2 = second.snapshot();
    assert_eq!(s2.state, RunState::Paused);
    assert!(s2.info.is_some());
    // The face learns where the run trains (its GPU panel watches that).
    assert_eq!(s2.device(), Some(tch::Device::Cpu));
    assert!(s2.events.iter().any(|e| matches!(e.event, Event::Step { .. })));

    // A checkpoint on request, while paused.
    c.send(br#"{"command":"save-checkpoint"}"#);
    let seen = c.until("the checkpoint", |f| {
        is_event(f, |e| {
            matches!(
                e,
                Event::CheckpointSaved {
                    reason: CheckpointReason::Key,
                    ..
                }
            )
        })
    });
    assert!(!seen.iter().any(is_step), "a step while paused: {seen:?}");
    let Some(Frame::Event {
        event: Event::CheckpointSaved { path, .. },
        ..
    }) = seen.last()
    else {
        unreachable!()
    };
    assert!(path.is_file(), "{} is missing", path.display());
    // The second client got the same event.
    second.until("the checkpoint on the second client", |f| {
        is_event(f, |e| matches!(e, Event::CheckpointSaved { .. }))
    });

    // Bad frames get errors; the run does not mind.
    c.send(b"{this is not json");
    c.send(br#"{"command":"self-destruct"}"#);
    c.send(&vec![b'a'; 100_000]);
    let mut errors = Vec::new();
    c.until("three errors", |f| {
        if let Frame::Error { message } = f {
            errors.push(message.clone());
        }
        errors.len() == 3
    });
    assert!(errors[0].contains("malformed JSON"), "{errors:?}");
    assert!(errors[1].contains("unknown command `self-destruct`"), "{errors:?}");
    assert!(errors[2].contains("over the 65536-byte limit"), "{errors:?}");

    // Resume: steps again.
    c.send(br#"{"command":"resume"}"#);
    c.until("the resume", |f| is_event(f, |e| matches!(e, Event::Resumed)));
    c.until("a step after the resume", is_step);

    // A flood of commands: each answered, and training goes on.
    for _ in 0..400 {
        c.send(br#"{"command":"decay-lr"}"#);
    }
    let mut answers = 0;
    c.until("400 answers", |f| {
        answers += usize::from(matches!(f, Frame::Accepted { .. } | Frame::Error { .. }));
        answers == 400
    });
    c.until("a step after the flood", is_step);

    // Stop with a checkpoint: the run ends, the connection closes, the
    // socket and the pid file go.
    c.send(br#"{"command":"stop","save":true}"#);
    c.until("the end", |f| is_event(f, |e| matches!(e, Event::Finished { .. })));
    assert!(c.frame().is_none(), "the connection stays open after the run");
    assert_eq!(exit_code(&mut child), 0);
    assert!(!attach::socket_path(&run).exists(), "the socket outlived the run");
    assert!(!run.join("pid").exists());
    let listing = runs_listing(runs);
    assert!(listing.contains("finished"), "{listing}");
}

#[test]
fn slow_and_silent_clients_do_not_hold_the_run_back() {
    if !have_data() {
        return;
    }
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path();
    // Many step events, so that a client that never reads falls behind.
    let mut child = start(runs, "slow", "16", &["--set", "train.step-events-per-sec=300"]);
    let run = runs.join("slow");
    let mut watcher = Client::connect(&run);
    watcher.snapshot();
    watcher.send(br#"{"command":"pause"}"#);
    watcher.until("the pause", |f| is_event(f, |e| matches!(e, Event::Paused)));
    // Attached while paused, never read from.
    let silent: Vec<UnixStream> = (0..3)
        .map(|_| UnixStream::connect(attach::socket_path(&run)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    watcher.send(br#"{"command":"resume"}"#);
    // Twenty epochs (2,560 steps: more step events than a socket's buffer
    // and a client's queue hold) go by while the silent clients never read.
    let (mut epochs, mut steps) = (0, 0);
    watcher.until("20 epochs", |f| {
        steps += usize::from(is_step(f));
        if is_event(f, |e| matches!(e, Event::Epoch(_))) {
            epochs += 1;
        }
        epochs == 20
    });
    assert!(steps >= 100, "only {steps} step events reached the watcher");
    watcher.send(br#"{"command":"stop","save":false}"#);
    watcher.until("the end", |f| is_event(f, |e| matches!(e, Event::Finished { .. })));
    assert_eq!(exit_code(&mut child), 0);
    drop(silent);
}

#[test]
fn a_socket_left_by_a_killed_run_is_replaced_when_it_resumes() {
    if !have_data() {
        return;
    }
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path();
    let mut child = start(runs, "killed", "64", &[]);
    let run = runs.join("killed");
    let mut c = Client::connect(&run);
    c.snapshot();
    c.until("an epoch", |f| is_event(f, |e| matches!(e, Event::Epoch(_))));
    c.send(br#"{"command":"save-checkpoint"}"#);
    c.until("the checkpoint", |f| {
        is_event(f, |e| {
            matches!(
                e,
                Event::CheckpointSaved {
                    reason: CheckpointReason::Key,
                    ..
                }
            )
        })
    });
    unsafe { libc::kill(child.0.id() as i32, libc::SIGKILL) };
    child.0.wait().unwrap();
    let sock = attach::socket_path(&run);
    assert!(sock.exists(), "SIGKILL leaves the socket behind");
    assert!(!runs_listing(runs).contains("live"), "{}", runs_listing(runs));
    // Attaching to it says what happened, and what to do.
    let o = Command::new(env!("CARGO_BIN_EXE_vggtrain"))
        .arg("attach")
        .arg(&run)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("nobody answers") && err.contains("--resume"), "{err}");

    let mut resumed = Run(Command::new(env!("CARGO_BIN_EXE_vggtrain"))
        .args(["train", "--no-tui", "--resume"])
        .arg(&run)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    let mut c = Client::connect(&run);
    let s = c.snapshot();
    assert_eq!(s.pid, resumed.0.id());
    let stale_note = |s: &attach::Snapshot| {
        s.events
            .iter()
            .any(|e| matches!(&e.event, Event::Log { message } if message.contains("left by an earlier process")))
    };
    if s.info.is_none() {
        c.until("the start", |f| is_event(f, |e| matches!(e, Event::Started(_))));
    }
    let s = Client::connect(&run).snapshot();
    assert!(stale_note(&s), "{:?}", s.events);
    let info = s.info.expect("started");
    assert!(info.resumed_from.is_some());
    // The past epochs come with the resumed run.
    assert!(!info.history.is_empty(), "no history after the resume");
    c.send(br#"{"command":"stop","save":false}"#);
    c.until("the end", |f| is_event(f, |e| matches!(e, Event::Finished { .. })));
    assert_eq!(exit_code(&mut resumed), 0);
    assert!(!sock.exists());
}

#[test]
fn a_second_process_cannot_resume_a_live_run() {
    if !have_data() {
        return;
    }
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path();
    let mut child = start(runs, "busy", "64", &[]);
    let run = runs.join("busy");
    let mut c = Client::connect(&run);
    c.snapshot();
    let o = Command::new(env!("CARGO_BIN_EXE_vggtrain"))
        .args(["train", "--no-tui", "--resume"])
        .arg(&run)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("is being trained by another process") && err.contains("vggtrain attach"),
        "{err}"
    );
    c.send(br#"{"command":"stop","save":false}"#);
    c.until("the end", |f| is_event(f, |e| matches!(e, Event::Finished { .. })));
    assert_eq!(exit_code(&mut child), 0);
}

/// The TUI's state, fed by a real engine through the socket client.
#[test]
fn the_engine_drives_an_attached_app() -> anyhow::Result<()> {
    if !have_data() {
        return Ok(());
    }
    let _serial = serial();
    let tmp = tempfile::tempdir()?;
    let mut cfg = vggtrain::config::Config::default();
    cfg.model.config = vggtrain::model::Arch::A;
    cfg.data.subset = Some(512);
    cfg.data.val_size = Some(128);
    cfg.data.test_subset = Some(128);
    cfg.model.width = 8;
    cfg.train.batch_size = 64;
    cfg.train.epochs = 3;
    cfg.train.device = "cpu".into();
    cfg.train.threads = 1;
    cfg.run.runs_dir = Some(tmp.path().to_owned());
    cfg.run.name = Some("app".into());
    // The attach server is the engine's observer, as `vggtrain train` asks.
    let mut start = vggtrain::engine::Start::new(cfg);
    start.observer = Some(vggtrain::attach::observe());
    let handle = vggtrain::engine::spawn(start, &|| None)?;
    // Connected before the first event: the snapshot may be nearly empty.
    let conn = client::connect(&handle.run_dir)?;
    let mut app = App::attached(&conn.snapshot);
    for e in conn.events.iter() {
        app.update(&e);
    }
    app.engine_gone();
    let local: Vec<Event> = handle.events.try_iter().collect();
    handle.join();
    let epochs = local.iter().filter(|e| matches!(e, Event::Epoch(_))).count();
    assert_eq!(epochs, 3);
    assert_eq!(app.epochs.len(), 3, "the attached app missed epochs");
    assert!(app.finished.is_some(), "no result: {:?}", app.log);
    assert!(app.last_val.as_ref().is_some_and(|v| v.per_class.len() == 10));
    assert_eq!(app.exit_code(), None, "ended runs wait for q");
    // What the app saw is what the engine said.
    let last_local = local.iter().rev().find_map(|e| match e {
        Event::Epoch(s) => Some(s.val.top1),
        _ => None,
    });
    assert_eq!(app.epochs.last().map(|e| e.top1), last_local);
    Ok(())
}
