//! The terminal UI: render tests on ratatui's TestBackend from fixed event
//! sequences, key → command mapping, the loop over channels, a real engine
//! run through the App, and the real binary in tmux.
use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::{backend::TestBackend, buffer::Buffer, style::Color, Terminal};
use std::{
    path::{Path, PathBuf},
    process::Command as Proc,
    time::{Duration, Instant},
};
mod common;
use common::{have_data, require, wait_until};
use vggtrain::attach::{RunState, Snapshot, Stamped};
use vggtrain::control::{CheckpointReason, Command, EpochStats, EvalResult, Event, LrCause, LrMark, RunInfo};
use vggtrain::ui::{self, app::App, fmt, input::Input, Channels, Exit};

use vggtrain::data::FASHION_MNIST_CLASSES as FASHION;

fn info(classes: &[String], epochs: usize) -> RunInfo {
    RunInfo {
        run_dir: PathBuf::from("/runs/demo"),
        name: "demo".into(),
        model: "VGG A (11 layers) 1/8 width".into(),
        parameters: 445_482,
        dataset: "fashion-mnist (/data/fashion-mnist)".into(),
        device: "cpu x2".into(),
        classes: classes.to_vec(),
        epochs,
        steps_per_epoch: 100,
        batch_size: 64,
        train_images: 6400,
        val_images: 1000,
        test_images: 1000,
        lr: 1e-2,
        max_decays: 3,
        start_epoch: 0,
        start_step: 0,
        resumed_from: None,
        decays_used: 0,
        history: Vec::new(),
        lr_history: Vec::new(),
        world: 1,
    }
}

fn fashion() -> Vec<String> {
    FASHION.iter().map(|s| s.to_string()).collect()
}

/// A confusion matrix with `per_class` on the diagonal (of 100 images per
/// class) and Shirt → T-shirt/top the most confused pair at `shirt_tshirt`.
fn eval(per_class: &[f64], shirt_tshirt: u64) -> EvalResult {
    let n = per_class.len();
    let mut confusion = vec![vec![0u64; n]; n];
    for (t, &acc) in per_class.iter().enumerate() {
        let right = (acc * 100.0).round() as u64;
        confusion[t][t] = right;
        let mut wrong = 100 - right;
        if t == 6 && n == 10 {
            confusion[6][0] = shirt_tshirt.min(wrong);
            wrong -= confusion[6][0];
        }
        // The rest spread one image at a time over the other classes.
        let mut p = 0;
        while wrong > 0 {
            p = (p + 1) % n;
            if p != t && !(t == 6 && p == 0) {
                confusion[t][p] += 1;
                wrong -= 1;
            }
        }
    }
    let top1 = per_class.iter().sum::<f64>() / n as f64;
    EvalResult {
        loss: 0.5,
        top1,
        top5: 0.99,
        per_class: per_class.to_vec(),
        confusion,
        images: 100 * n,
        skipped: 0,
    }
}

fn step(epoch: usize, step: usize, loss: f64, lr: f64) -> Event {
    Event::Step {
        epoch,
        step,
        global_step: ((epoch - 1) * 100 + step) as u64,
        loss,
        lr,
        images_per_sec: 1000.0,
    }
}

fn epoch(epoch: usize, val: EvalResult, best: f64, lr: f64) -> Event {
    Event::Epoch(EpochStats {
        epoch,
        train_loss: 1.0 / epoch as f64,
        train_acc: 0.7,
        val,
        best_top1: best,
        lr,
        seconds: 12.0,
        skipped_steps: 0,
        peak_gpu_bytes: None,
    })
}

const E1: [f64; 10] = [0.80, 0.95, 0.70, 0.85, 0.72, 0.93, 0.50, 0.90, 0.94, 0.92];
const E2: [f64; 10] = [0.82, 0.96, 0.75, 0.86, 0.78, 0.94, 0.52, 0.91, 0.95, 0.93];

/// Two finished epochs, a manual decay to 1.0e-3, checkpoints, and the
/// third epoch under way.
fn fixture() -> Vec<Event> {
    let classes = fashion();
    let mut ev = vec![Event::Started(info(&classes, 10))];
    for s in 1..=100 {
        ev.push(step(1, s, 2.3 - s as f64 * 0.01, 1e-2));
    }
    ev.push(epoch(1, eval(&E1, 10), 0.821, 1e-2));
    ev.push(Event::CheckpointSaved {
        path: "/runs/demo/checkpoints/best.safetensors".into(),
        reason: CheckpointReason::Best,
    });
    for s in 1..=100 {
        ev.push(step(2, s, 1.3 - s as f64 * 0.002, 1e-2));
    }
    ev.push(epoch(2, eval(&E2, 14), 0.842, 1e-2));
    ev.push(Event::CheckpointSaved {
        path: "/runs/demo/checkpoints/ckpt-0000000200.safetensors".into(),
        reason: CheckpointReason::Epoch,
    });
    ev.push(Event::LrChanged {
        old: 1e-2,
        new: 1e-3,
        cause: LrCause::Manual,
        epoch: 2,
        global_step: 200,
        decays_used: 1,
    });
    ev.push(Event::Log {
        message: "warning: 3 images skipped".into(),
    });
    for s in 1..=40 {
        ev.push(step(3, s, 1.0 - s as f64 * 0.001, 1e-3));
    }
    ev
}

fn app_with(events: &[Event]) -> App {
    let mut app = App::new();
    for e in events {
        app.update(e);
    }
    app
}

fn text(buf: &Buffer) -> String {
    let w = buf.area.width as usize;
    buf.content()
        .chunks(w)
        .map(|row| row.iter().map(|c| c.symbol()).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n")
}

fn screen(app: &App, w: u16, h: u16) -> (String, Buffer) {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    ui::draw(&mut t, app).unwrap();
    let buf = t.backend().buffer().clone();
    (text(&buf), buf)
}

fn render(app: &App, w: u16, h: u16) -> String {
    screen(app, w, h).0
}

#[track_caller]
fn has(s: &str, needle: &str) {
    assert!(s.contains(needle), "`{needle}` not on screen:\n{s}");
}

#[track_caller]
fn lacks(s: &str, needle: &str) {
    assert!(!s.contains(needle), "`{needle}` on screen:\n{s}");
}

fn key(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
}

fn code(c: KeyCode) -> KeyEvent {
    KeyEvent::new(c, KeyModifiers::NONE)
}

fn ctrl_c() -> KeyEvent {
    KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)
}

// ---- render tests ----

#[test]
fn renders_a_run_at_80x24() {
    let app = app_with(&fixture());
    let s = render(&app, 80, 24);
    for needle in [
        "vggtrain",
        "demo",
        "VGG A (11 layers)",
        "fashion-mnist",
        "cpu x2",
        "running",
        "epoch 3/10",
        "step 40/100",
        "40%",
        "img/s",
        "ETA",
        "lr 1.0e-3",
        "1/3 decays",
        "best 84.2%",
        "T-shirt/top",
        "Trouser",
        "Shirt → T-shirt/top 14%",
        "most confused",
        "manual in ep 3",
        "warning: 3 images skipped",
        "p pause",
        "d decay lr",
        "s save",
        "q quit",
        "? help",
    ] {
        has(&s, needle);
    }
    // The header's state badge sits at the right edge of the first line.
    let first = s.lines().next().unwrap();
    assert!(first.trim_end().ends_with("running"), "{first}");
    assert_eq!(s.lines().count(), 24);
    // Older events are a scroll away: focus the log, scroll up.
    let mut app = app;
    lacks(&s, "checkpoint saved (epoch)");
    while app.focus != ui::app::Focus::Log {
        app.on_key(code(KeyCode::Tab));
    }
    app.on_key(code(KeyCode::Up));
    app.on_key(code(KeyCode::Up));
    let s = render(&app, 80, 24);
    has(&s, "checkpoint saved (epoch):");
    has(&s, "newer below");
    app.on_key(code(KeyCode::End));
    lacks(&render(&app, 80, 24), "newer below");
}

#[test]
fn a_data_parallel_run_shows_its_ranks_and_their_throughput() {
    let app = app_with(&[
        Event::Started(RunInfo {
            world: 2,
            ..info(&fashion(), 10)
        }),
        Event::Step {
            epoch: 1,
            step: 5,
            global_step: 5,
            loss: 2.0,
            lr: 1e-2,
            images_per_sec: 949.0,
        },
    ]);
    let s = render(&app, 120, 30);
    has(&s, "cpu x2 × 2 ranks");
    has(&s, "949 img/s (2 ranks)");
    let alone = render(&app_with(&fixture()), 120, 30);
    lacks(&alone, "ranks");
}

#[test]
fn renders_a_run_at_160x48() {
    let app = app_with(&fixture());
    let s = render(&app, 160, 48);
    for c in FASHION {
        has(&s, c);
    }
    for needle in [
        "fashion-mnist (/data/fashion-mnist)",
        "/runs/demo",
        "epoch 3/10",
        "lr 1.0e-3",
        "1/3 decays",
        "val top-1 %",
        "top-5 %",
        "checkpoints/ckpt-0000000200.safetensors",
        "checkpoints/best.safetensors",
        "lr 1.0e-2 → 1.0e-3 (manual in ep 3, 1/3 decays used)",
        "Shirt → T-shirt/top 14%",
        "1e-3",
    ] {
        has(&s, needle);
    }
    // Per-class accuracy and change since epoch 1 (Pullover 70% → 75%).
    let pullover = s.lines().find(|l| l.contains("Pullover ")).unwrap();
    assert!(pullover.contains("75.0%") && pullover.contains("+5.0"), "{pullover}");
    // The three worst classes are marked: Shirt (52%), Pullover, Coat (78%).
    for worst in ["▼ Shirt", "▼ Pullover", "▼ Coat"] {
        has(&s, worst);
    }
    lacks(&s, "▼ Trouser");
}

#[test]
fn starts_empty_and_waits() {
    let app = App::new();
    let s = render(&app, 80, 24);
    has(&s, "starting");
    has(&s, "loading the data");
    let app = app_with(&[Event::Started(info(&fashion(), 10))]);
    // A sentence that does not fit is never cut: a shorter one stands in.
    let wide = render(&app, 200, 60);
    has(&wide, "no validation yet: the first comes after epoch 1");
    let s = render(&app, 80, 24);
    lacks(&s, "no validation yet:");
    has(&s, "validation after epoch 1");
    has(&s, "lr 1.0e-2");
    has(&s, "0/3 decays");
    has(&s, "no decays yet");
}

#[test]
fn too_small_a_terminal_says_so() {
    let app = app_with(&fixture());
    let s = render(&app, 40, 10);
    has(&s, "enlarge the terminal");
    has(&s, "epoch 3/10");
}

#[test]
fn resize_relays_out() {
    let app = app_with(&fixture());
    let mut t = Terminal::new(TestBackend::new(80, 24)).unwrap();
    ui::draw(&mut t, &app).unwrap();
    t.backend_mut().resize(120, 40);
    ui::draw(&mut t, &app).unwrap();
    let buf = t.backend().buffer().clone();
    assert_eq!((buf.area.width, buf.area.height), (120, 40));
    let s = text(&buf);
    let first = s.lines().next().unwrap();
    assert_eq!(first.chars().count(), 120);
    assert!(first.trim_end().ends_with("running"), "{first}");
    // The bottom line is the key help.
    has(s.lines().last().unwrap(), "q quit");
}

#[test]
fn no_color_draws_without_colours() {
    let mut app = app_with(&fixture());
    let (_, coloured) = screen(&app, 100, 30);
    let colours = |b: &Buffer| {
        b.content()
            .iter()
            .filter(|c| c.fg != Color::Reset || c.bg != Color::Reset)
            .count()
    };
    assert!(colours(&coloured) > 0, "the normal theme has colours");
    app.no_color = true;
    app.dialog = None;
    let (s, plain) = screen(&app, 100, 30);
    assert_eq!(colours(&plain), 0, "colours with NO_COLOR:\n{s}");
    has(&s, "running");
    // The focused panel still shows, by its thick frame.
    has(&s, "┏");
}

// ---- keys ----

#[test]
fn pause_shows_at_once_and_the_engine_confirms() {
    let mut app = app_with(&fixture());
    assert_eq!(app.on_key(key('p')), Some(Command::Pause));
    let s = render(&app, 80, 24);
    has(&s, "paused (pausing…)");
    has(&s, "ETA paused");
    has(&s, "p resume");
    app.update(&Event::Paused);
    let s = header(&render(&app, 80, 24));
    has(&s, "paused");
    lacks(&s, "pausing");
    // Space toggles too.
    assert_eq!(app.on_key(key(' ')), Some(Command::Resume));
    has(&render(&app, 80, 24), "running (resuming…)");
    app.update(&Event::Resumed);
    let s = header(&render(&app, 80, 24));
    has(&s, "running");
    lacks(&s, "resuming");
    lacks(&s, "paused");
}

#[test]
fn keys_map_to_commands() {
    let mut app = app_with(&fixture());
    assert_eq!(app.on_key(key('d')), Some(Command::DecayLr));
    assert_eq!(app.on_key(key('s')), Some(Command::SaveCheckpoint));
    has(&render(&app, 80, 24), "saving a checkpoint");
    assert_eq!(app.on_key(key('z')), None);
    // x asks the quit question, as q does.
    assert_eq!(app.on_key(key('x')), None);
    has(&render(&app, 80, 24), "Save a checkpoint first?");
    assert_eq!(app.on_key(code(KeyCode::Esc)), None);
    // Help lists every key; any key closes it without acting.
    assert_eq!(app.on_key(key('?')), None);
    let s = render(&app, 100, 30);
    for needle in [
        "pause / resume",
        "decay the learning rate",
        "save a checkpoint now",
        "quit without saving",
        "scroll",
    ] {
        has(&s, needle);
    }
    assert_eq!(app.on_key(key('d')), None);
    assert_ne!(app.dialog, Some(ui::app::Dialog::Help));
    lacks(&render(&app, 100, 30), "decay the learning rate");
    // Focus moves with tab and the arrows.
    let f0 = app.focus;
    app.on_key(code(KeyCode::Tab));
    assert_ne!(app.focus, f0);
    app.on_key(code(KeyCode::Left));
    assert_eq!(app.focus, f0);
}

#[test]
fn quit_dialog_enter_saves_and_quits() {
    let mut app = app_with(&fixture());
    assert_eq!(app.on_key(key('q')), None);
    let s = render(&app, 80, 24);
    has(&s, "Save a checkpoint first?");
    has(&s, "Enter");
    has(&s, "quit without saving");
    // Keys other than the dialog's do nothing while it is open.
    assert_eq!(app.on_key(key('d')), None);
    assert_eq!(app.on_key(code(KeyCode::Enter)), Some(Command::Stop { save: true }));
    assert_eq!(app.dialog, None);
    has(&render(&app, 80, 24), "saving & stopping");
    // The UI waits for the engine to finish, then exits 0.
    assert_eq!(app.exit_code(), None);
    app.update(&Event::CheckpointSaved {
        path: "/runs/demo/checkpoints/ckpt-0000000240.safetensors".into(),
        reason: CheckpointReason::Stop,
    });
    app.update(&Event::Finished {
        reason: "stopped by the user".into(),
        test: None,
    });
    assert_eq!(app.exit_code(), Some(0));
}

fn snapshot(events: &[Event]) -> Snapshot {
    Snapshot {
        protocol: vggtrain::attach::PROTOCOL,
        pid: 4242,
        state: RunState::Running,
        config: String::new(),
        info: None,
        events: events
            .iter()
            .enumerate()
            .map(|(i, e)| Stamped {
                time: 1_700_000_000.0 + i as f64,
                event: e.clone(),
            })
            .collect(),
    }
}

#[test]
fn an_attached_app_replays_the_snapshot_and_q_detaches() {
    let local = app_with(&fixture());
    let mut app = App::attached(&snapshot(&fixture()));
    // The same run on screen as in-process.
    assert_eq!(app.epochs, local.epochs);
    assert_eq!(app.lr_points, local.lr_points);
    assert_eq!(
        app.recent_loss.iter().collect::<Vec<_>>(),
        local.recent_loss.iter().collect::<Vec<_>>()
    );
    assert_eq!(
        (app.epoch, app.step, app.decays_used),
        (local.epoch, local.step, local.decays_used)
    );
    // Past events are logged at the time they happened.
    let first = app.log.front().unwrap();
    assert_eq!(first.time, fmt::clock_at(1_700_000_000.0));
    let s = render(&app, 100, 30);
    has(&s, "vggtrain (attached)");
    has(&s, "x stop");
    has(&s, "q detach");
    has(&s, "attached to process 4242");
    // q leaves the run alone.
    assert_eq!(app.on_key(key('q')), None);
    assert!(app.detached());
    assert_eq!(app.exit_code(), Some(0));
    // So do the signals that end the viewer.
    let mut app = App::attached(&snapshot(&fixture()));
    assert_eq!(app.on_signal(libc::SIGTERM), None);
    assert!(app.detached());
    assert_eq!(app.exit_code(), Some(0));
}

#[test]
fn an_attached_app_stops_the_run_only_when_asked_with_x() {
    let mut app = App::attached(&snapshot(&fixture()));
    assert_eq!(app.on_key(key('x')), None);
    let s = render(&app, 100, 30);
    has(&s, "Stop the run");
    has(&s, "save a checkpoint, then stop");
    has(&s, "stop without saving");
    assert_eq!(app.on_key(code(KeyCode::Enter)), Some(Command::Stop { save: true }));
    assert_eq!(app.exit_code(), None, "waits for the run to end");
    app.update(&Event::Finished {
        reason: "stopped by the user".into(),
        test: None,
    });
    assert_eq!(app.exit_code(), Some(0));
    assert!(!app.detached());
    // A connection that closes without a result says so.
    let mut app = App::attached(&snapshot(&fixture()));
    app.engine_gone();
    assert!(app.is_ended());
    has(&render(&app, 100, 30), "connection to the run closed");
    app.on_key(key('q'));
    assert_eq!(app.exit_code(), Some(1));
}

#[test]
fn a_resumed_run_shows_its_past_epochs_and_lr_changes() {
    let past = |n: usize, per_class: &[f64]| EpochStats {
        epoch: n,
        train_loss: 1.0,
        train_acc: 0.7,
        val: eval(per_class, 9),
        best_top1: 0.8,
        lr: 1e-2,
        seconds: 30.0,
        skipped_steps: 0,
        peak_gpu_bytes: None,
    };
    let mut older = past(1, &E1);
    older.val.confusion.clear();
    let app = app_with(&[Event::Started(RunInfo {
        start_epoch: 2,
        lr: 1e-3,
        decays_used: 1,
        resumed_from: Some("/runs/demo/checkpoints/ckpt-0000000200.safetensors".into()),
        history: vec![older, past(2, &E2)],
        lr_history: vec![
            LrMark {
                global_step: 0,
                epoch: 0,
                lr: 1e-2,
                cause: LrCause::Schedule,
            },
            LrMark {
                global_step: 200,
                epoch: 2,
                lr: 1e-3,
                cause: LrCause::Plateau,
            },
        ],
        ..info(&fashion(), 10)
    })]);
    assert_eq!(app.epochs.iter().map(|e| e.epoch).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(app.lr_points.len(), 2);
    assert_eq!(app.lr_points[1].old, 1e-2);
    assert_eq!(app.lr_points[1].cause, Some(LrCause::Plateau));
    // The last epoch's classes, its change from the one before, its pairs.
    assert_eq!(app.last_val.as_ref().unwrap().per_class, E2.to_vec());
    assert_eq!(app.prev_per_class.as_deref(), Some(&E1[..]));
    assert!(!app.confused.is_empty());
    let s = render(&app, 120, 40);
    has(&s, "1/3 decays");
    has(&s, "epoch 3/10");
    has(&s, "plateau");
}

#[test]
fn quit_dialog_n_quits_without_saving_and_esc_cancels() {
    let mut app = app_with(&fixture());
    assert_eq!(app.on_key(ctrl_c()), None);
    assert_eq!(app.dialog, Some(ui::app::Dialog::Quit));
    assert_eq!(app.on_key(code(KeyCode::Esc)), None);
    assert_eq!(app.dialog, None);
    lacks(&render(&app, 80, 24), "Save a checkpoint first?");
    assert_eq!(app.stopping, None);
    // Training goes on: keys work again.
    assert_eq!(app.on_key(key('d')), Some(Command::DecayLr));
    assert_eq!(app.on_key(key('q')), None);
    assert_eq!(app.on_key(key('n')), Some(Command::Stop { save: false }));
    has(&render(&app, 80, 24), "stopping…");
    app.update(&Event::Finished {
        reason: "stopped by the user".into(),
        test: None,
    });
    assert_eq!(app.exit_code(), Some(0));
}

#[test]
fn finished_runs_show_results_and_quit_without_a_dialog() {
    let mut app = app_with(&fixture());
    app.update(&Event::Finished {
        reason: "10 epochs done".into(),
        test: Some(EvalResult {
            top1: 0.852,
            top5: 0.996,
            images: 256,
            ..eval(&E2, 14)
        }),
    });
    for (w, h) in [(80, 24), (160, 48)] {
        let s = render(&app, w, h);
        has(&s, "finished");
        has(&s, "10 epochs done");
        has(&s, "top-1 85.2% top-5 99.6% on 256 images");
        has(&s, "q quit");
    }
    // Commands no longer apply.
    assert_eq!(app.on_key(key('p')), None);
    assert_eq!(app.on_key(key('d')), None);
    assert_eq!(app.exit_code(), None, "results stay until the user quits");
    assert_eq!(app.on_key(key('q')), None);
    assert_eq!(app.dialog, None);
    assert_eq!(app.exit_code(), Some(0));
}

#[test]
fn failures_show_and_exit_1() {
    let mut app = app_with(&fixture());
    app.update(&Event::Failed {
        message: "loss became NaN at epoch 3 step 41".into(),
    });
    let s = render(&app, 80, 24);
    has(&s, "failed");
    has(&s, "loss became NaN");
    app.on_key(ctrl_c());
    assert_eq!(app.exit_code(), Some(1));
}

#[test]
fn a_hundred_classes_scroll() {
    let classes: Vec<String> = (0..100).map(|i| format!("class{i:02}")).collect();
    let per_class: Vec<f64> = (0..100).map(|i| 0.5 + i as f64 / 250.0).collect();
    let mut app = app_with(&[
        Event::Started(info(&classes, 10)),
        epoch(1, eval(&per_class, 0), 0.7, 1e-2),
    ]);
    // A table row: the name padded (a confused pair is "name → other").
    let row = |n: &str| format!("{n}  ");
    let s = render(&app, 80, 24);
    has(&s, &row("class00"));
    lacks(&s, &row("class99"));
    // 10 worst marked (a tenth of 100).
    assert_eq!(app.class_rows().iter().filter(|r| r.worst).count(), 10);
    app.on_key(code(KeyCode::End));
    let s = render(&app, 80, 24);
    has(&s, &row("class99"));
    lacks(&s, &row("class00"));
    app.on_key(code(KeyCode::Home));
    has(&render(&app, 80, 24), &row("class00"));
    app.on_key(code(KeyCode::Down));
    app.on_key(code(KeyCode::Down));
    let s = render(&app, 80, 24);
    has(&s, &row("class02"));
    lacks(&s, &row("class01"));
    app.on_key(code(KeyCode::PageDown));
    lacks(&render(&app, 80, 24), &row("class02"));
    // Worst first.
    app.on_key(key('o'));
    let s = render(&app, 80, 24);
    has(&s, "worst first");
    has(&s, "▼ class00");
}

#[test]
fn history_stays_bounded_over_370k_steps() {
    let mut app = app_with(&[Event::Started(RunInfo {
        steps_per_epoch: 5005,
        ..info(&fashion(), 74)
    })]);
    for g in 1..=370_000u64 {
        app.update(&Event::Step {
            epoch: (g / 5005) as usize + 1,
            step: (g % 5005) as usize,
            global_step: g,
            loss: 2.0 / (1.0 + g as f64 / 1000.0),
            lr: 1e-2,
            images_per_sec: 800.0,
        });
    }
    assert!(app.step_loss.points().len() <= ui::app::HISTORY_POINTS + 1);
    assert!(app.recent_loss.len() <= ui::app::RECENT_STEPS);
    let s = render(&app, 160, 48);
    has(&s, "epoch 74/74");
}

// ---- the loop over channels ----

struct Rig {
    events: Sender<Event>,
    commands: Receiver<Command>,
    input: Option<Sender<Input>>,
    signals: Sender<i32>,
    done: Receiver<(Exit, String)>,
}

/// The loop on a TestBackend in a thread of its own.
fn rig(w: u16, h: u16) -> Rig {
    let (ev_tx, ev_rx) = bounded::<Event>(4096);
    let (cmd_tx, cmd_rx) = unbounded();
    let (in_tx, in_rx) = unbounded();
    let (sig_tx, sig_rx) = unbounded();
    let (done_tx, done_rx) = bounded(1);
    std::thread::spawn(move || {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        let mut app = App::new();
        let no_gpus = crossbeam_channel::never();
        let ch = Channels {
            events: &ev_rx,
            commands: &cmd_tx,
            input: &in_rx,
            signals: &sig_rx,
            gpus: &no_gpus,
        };
        let exit = ui::run_loop(&mut t, &mut app, &ch);
        let _ = done_tx.send((exit, text(t.backend().buffer())));
    });
    Rig {
        events: ev_tx,
        commands: cmd_rx,
        input: Some(in_tx),
        signals: sig_tx,
        done: done_rx,
    }
}

const WAIT: Duration = Duration::from_secs(30);

impl Rig {
    fn key(&self, k: KeyEvent) {
        self.input.as_ref().unwrap().send(Input::Key(k)).unwrap();
    }
}

#[test]
fn loop_quit_with_save_waits_for_the_engine() {
    let r = rig(80, 24);
    for e in fixture() {
        r.events.send(e).unwrap();
    }
    r.key(key('p'));
    assert_eq!(r.commands.recv_timeout(WAIT), Ok(Command::Pause));
    r.key(key('q'));
    r.key(code(KeyCode::Enter));
    assert_eq!(r.commands.recv_timeout(WAIT), Ok(Command::Stop { save: true }));
    // Not before the engine says it finished.
    assert!(r.done.recv_timeout(Duration::from_millis(200)).is_err());
    r.events
        .send(Event::Finished {
            reason: "stopped by the user".into(),
            test: None,
        })
        .unwrap();
    let (exit, s) = r.done.recv_timeout(WAIT).unwrap();
    assert_eq!(exit, Exit::Quit(0));
    has(&s, "finished");
}

#[test]
fn loop_ends_when_the_event_channel_closes_after_stop() {
    let r = rig(80, 24);
    r.events.send(fixture()[0].clone()).unwrap();
    r.key(key('q'));
    r.key(key('n'));
    assert_eq!(r.commands.recv_timeout(WAIT), Ok(Command::Stop { save: false }));
    drop(r.events);
    let (exit, _) = r.done.recv_timeout(WAIT).unwrap();
    // An engine that vanished without a result is a failure.
    assert_eq!(exit, Exit::Quit(1));
}

#[test]
fn loop_reports_a_lost_terminal() {
    let mut r = rig(80, 24);
    r.events.send(fixture()[0].clone()).unwrap();
    r.input.take();
    assert_eq!(r.done.recv_timeout(WAIT).unwrap().0, Exit::TerminalGone);

    let r = rig(80, 24);
    r.signals.send(libc::SIGHUP).unwrap();
    assert_eq!(r.done.recv_timeout(WAIT).unwrap().0, Exit::TerminalGone);

    let r = rig(80, 24);
    r.key(key('q'));
    r.input.as_ref().unwrap().send(Input::Closed).unwrap();
    assert_eq!(r.done.recv_timeout(WAIT).unwrap().0, Exit::TerminalGone);
}

#[test]
fn loop_sigterm_saves_stops_and_exits_143() {
    let r = rig(80, 24);
    r.events.send(fixture()[0].clone()).unwrap();
    r.signals.send(libc::SIGTERM).unwrap();
    assert_eq!(r.commands.recv_timeout(WAIT), Ok(Command::Stop { save: true }));
    r.events
        .send(Event::Finished {
            reason: "stopped by the user".into(),
            test: None,
        })
        .unwrap();
    assert_eq!(r.done.recv_timeout(WAIT).unwrap().0, Exit::Quit(143));
}

#[test]
fn drain_runs_to_the_end_without_a_terminal() {
    let (ev_tx, ev_rx) = unbounded();
    let (cmd_tx, _cmd_rx) = unbounded();
    let (_sig_tx, sig_rx) = unbounded::<i32>();
    for e in fixture() {
        ev_tx.send(e).unwrap();
    }
    ev_tx
        .send(Event::Finished {
            reason: "10 epochs done".into(),
            test: None,
        })
        .unwrap();
    drop(ev_tx);
    let mut app = App::new();
    assert_eq!(ui::drain(&ev_rx, &cmd_tx, &sig_rx, &mut app), 0);
    assert_eq!(app.epochs.len(), 2);
}

// ---- a real engine run through the App ----

#[test]
fn engine_events_drive_the_panels() -> anyhow::Result<()> {
    if !have_data() {
        return Ok(());
    }
    let tempdir = tempfile::tempdir()?;
    let mut cfg = vggtrain::config::Config::default();
    cfg.model.config = vggtrain::model::Arch::A;
    cfg.model.width = 8;
    cfg.data.subset = Some(512);
    cfg.data.val_size = Some(256);
    cfg.data.test_subset = Some(256);
    cfg.train.batch_size = 64;
    cfg.train.epochs = 2;
    cfg.train.device = "cpu".into();
    cfg.run.runs_dir = Some(tempdir.path().to_owned());
    let handle = vggtrain::engine::spawn(vggtrain::engine::Start::new(cfg), &|| None)?;
    // Applied before the first step.
    handle.send(Command::DecayLr);
    let mut app = App::new();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        match handle.events.recv_timeout(Duration::from_secs(5)) {
            Ok(e) => {
                app.update(&e);
                seen.push(e);
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                assert!(Instant::now() < deadline, "the run did not end");
            }
        }
    }
    handle.join();
    let info = seen
        .iter()
        .find_map(|e| match e {
            Event::Started(i) => Some(i.clone()),
            _ => None,
        })
        .expect("a Started event");
    let epochs: Vec<&EpochStats> = seen
        .iter()
        .filter_map(|e| match e {
            Event::Epoch(s) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(epochs.len(), 2);
    let last = epochs[1];
    let test = seen
        .iter()
        .find_map(|e| match e {
            Event::Finished { test, .. } => test.clone(),
            _ => None,
        })
        .expect("a test result");
    let new_lr = seen
        .iter()
        .find_map(|e| match e {
            Event::LrChanged { new, cause, .. } => Some((*new, *cause)),
            _ => None,
        })
        .expect("the decay");
    assert_eq!(new_lr.1, LrCause::Manual);

    assert_eq!(app.epochs.len(), 2);
    assert_eq!(app.lr, new_lr.0);
    app.results.hidden = true;
    let s = render(&app, 160, 48);
    has(&s, &info.model);
    has(&s, "epoch 2/2");
    has(&s, "finished");
    has(&s, &format!("lr {}", fmt::lr(new_lr.0)));
    has(&s, "manual in ep 1");
    // Every class with its validation accuracy from the last epoch.
    for (i, name) in info.classes.iter().enumerate() {
        let row = s
            .lines()
            .find(|l| l.contains(&format!(" {name} ")))
            .unwrap_or_else(|| panic!("no row for {name}:\n{s}"));
        has(row, &fmt::pct(last.val.per_class[i]));
    }
    has(
        &s,
        &format!("top-1 {} top-5 {}", fmt::pct(last.val.top1), fmt::pct(last.val.top5)),
    );
    // The most confused pair is the engine's confusion matrix's.
    if let Some(p) = ui::app::confused_pairs(&last.val.confusion, 1).first() {
        has(&s, &app.confused_label(p));
    }
    // The results box shows the test pass.
    app.results.hidden = false;
    let s = render(&app, 160, 48);
    has(
        &s,
        &format!(
            "top-1 {} top-5 {} on {} images",
            fmt::pct(test.top1),
            fmt::pct(test.top5),
            test.images
        ),
    );
    Ok(())
}

// ---- the real binary in tmux ----

#[path = "common/tmux.rs"]
mod tmux;
use tmux::Tmux;

fn tmux_available() -> bool {
    if !have_data() {
        return false;
    }
    require(
        Proc::new("tmux").arg("-V").output().is_ok(),
        "tmux",
        "apt-get install tmux",
    )
}

fn periodic_checkpoints(run: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(run.join("checkpoints"))
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let n = p.file_name().unwrap().to_string_lossy();
                    n.starts_with("ckpt-") && n.ends_with(".safetensors")
                })
                .collect()
        })
        .unwrap_or_default()
}

fn header(screen: &str) -> String {
    screen.lines().take(4).collect::<Vec<_>>().join("\n")
}

#[test]
fn tmux_pause_save_decay_quit() {
    if !tmux_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cmd = format!(
        "{} train --model A --width 8 --subset 2000 --epochs 50 --batch-size 64 --device cpu --runs-dir {} --name tui; echo EXIT=$? > {}",
        env!("CARGO_BIN_EXE_vggtrain"),
        dir.display(),
        dir.join("exit").display()
    );
    let t = Tmux::start("keys", &cmd, 120, 40);
    let run = dir.join("tui");
    t.wait_for("the run to start", 300, |s| {
        s.contains("epoch 1/50") && s.contains("1.0e-2")
    });

    t.keys(&["p"]);
    let s = t.wait_for("the engine to confirm the pause", 120, |s| {
        header(s).contains("paused") && !s.contains("pausing")
    });
    has(&s, "p resume");

    t.keys(&["s"]);
    wait_until("a checkpoint file", 120, || !periodic_checkpoints(&run).is_empty());
    t.wait_for("the checkpoint in the event log", 60, |s| {
        s.contains("checkpoint saved (on request)")
    });

    t.keys(&["d"]);
    let s = t.wait_for("the lr to fall to 1.0e-3", 60, |s| header(s).contains("lr 1.0e-3"));
    has(&s, "1/3 decays");
    has(&s, "manual");

    t.keys(&["q"]);
    t.wait_for("the quit dialog", 60, |s| s.contains("Save a checkpoint first?"));
    t.keys(&["Enter"]);
    wait_until("the process to exit", 300, || dir.join("exit").is_file());
    let exit = std::fs::read_to_string(dir.join("exit")).unwrap();
    assert_eq!(exit.trim(), "EXIT=0");
    assert!(run.join("config.toml").is_file());
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"event\":\"finished\""), "{metrics}");
    assert!(
        metrics.contains("\"reason\":\"stop\""),
        "no checkpoint on stop: {metrics}"
    );
    assert!(metrics.contains("\"event\":\"paused\""));
    assert!(!periodic_checkpoints(&run).is_empty());
    assert!(!run.join("pid").exists(), "the run was not closed");
}

/// utime + stime of one thread, in clock ticks.
fn cpu_ticks(pid: u32, tid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
                .map(|s| s.trim().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s.rfind(')').and_then(|i| s[i + 2..].chars().next());
            state != Some('Z')
        })
        .unwrap_or(false)
}

#[test]
fn tmux_hangup_keeps_training_headless() {
    if !tmux_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // exec: the trainer is the pane's process and gets the hang-up.
    let cmd = format!(
        "exec {} train --model A --width 8 --subset 2000 --epochs 3 --batch-size 64 --device cpu --set data.val-size=256 --set data.test-subset=256 --runs-dir {} --name hup",
        env!("CARGO_BIN_EXE_vggtrain"),
        dir.display(),
    );
    let t = Tmux::start("hup", &cmd, 100, 30);
    let run = dir.join("hup");
    t.wait_for("the run to start", 300, |s| s.contains("epoch 1/3"));
    let pid: u32 = std::fs::read_to_string(run.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(thread_names(pid).iter().any(|n| n == "vggtrain-input"));
    // Paused, the run cannot end before the terminal goes away.
    t.keys(&["p"]);
    t.wait_for("the engine to confirm the pause", 120, |s| {
        header(s).contains("paused") && !s.contains("pausing")
    });
    // The terminal goes away.
    drop(t);
    wait_until("the key reader to end", 60, || {
        !alive(pid) || !thread_names(pid).iter().any(|n| n == "vggtrain-input")
    });
    // Nothing spins: the UI thread sleeps while the engine trains.
    if alive(pid) {
        if let Some(before) = cpu_ticks(pid, pid) {
            std::thread::sleep(Duration::from_secs(2));
            if let Some(after) = cpu_ticks(pid, pid) {
                eprintln!("UI thread after the hang-up: {} ticks in 2 s", after - before);
                assert!(
                    after - before < 100,
                    "the UI thread used {} ticks in 2 s",
                    after - before
                );
            }
        }
    }
    // Training goes on to the end, and the process exits.
    wait_until("the process to exit", 600, || !alive(pid));
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    // Nobody can resume a paused run without a terminal: the UI did.
    assert!(metrics.contains("\"event\":\"resumed\""), "{metrics}");
    assert!(metrics.contains("\"event\":\"finished\""), "{metrics}");
    assert!(metrics.contains("\"reason\":\"3 epochs done\""), "{metrics}");
    assert!(!run.join("pid").exists());
}

/// Ends a training process a failed test leaves behind.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if alive(self.0) {
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
}

#[test]
fn tmux_hangup_then_attach_from_another_session_and_detach() {
    if !tmux_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let bin = env!("CARGO_BIN_EXE_vggtrain");
    let cmd = format!(
        "exec {bin} train --model A --width 8 --subset 2000 --epochs 1000 --batch-size 64 --device cpu --set train.patience=1000 --set train.threads=1 --set data.val-size=256 --set data.test-subset=256 --runs-dir {} --name away",
        dir.display(),
    );
    let t = Tmux::start("away", &cmd, 100, 30);
    let run = dir.join("away");
    let read_pid = || {
        std::fs::read_to_string(run.join("pid"))
            .ok()?
            .trim()
            .parse::<u32>()
            .ok()
    };
    wait_until("the pid file", 300, || read_pid().is_some());
    let pid = read_pid().unwrap();
    let _kill = KillOnDrop(pid);
    t.wait_for("the run to start", 300, |s| s.contains("epoch 1/1000"));
    // The SSH session drops: the terminal goes away, training goes on.
    drop(t);
    wait_until("the key reader to end", 60, || {
        !thread_names(pid).iter().any(|n| n == "vggtrain-input")
    });
    assert!(alive(pid), "the run died with its terminal");
    // From a new session: the newest live run, on the same TUI.
    let attach = format!(
        "{bin} attach --runs-dir {}; echo EXIT=$? > {}",
        dir.display(),
        dir.join("attach-exit").display()
    );
    let a = Tmux::start("back", &attach, 100, 30);
    let s = a.wait_for("the attached TUI", 120, |s| {
        s.contains("vggtrain (attached)") && s.contains("away") && s.contains("img/s")
    });
    has(&s, "q detach");
    // It steers the run: pause, confirmed by the engine.
    a.keys(&["p"]);
    a.wait_for("the engine to confirm the pause", 120, |s| {
        header(s).contains("paused") && !s.contains("pausing")
    });
    a.keys(&["q"]);
    wait_until("attach to exit", 60, || dir.join("attach-exit").is_file());
    assert_eq!(
        std::fs::read_to_string(dir.join("attach-exit")).unwrap().trim(),
        "EXIT=0"
    );
    // Detached: the run is still there, still paused, and can be stopped.
    assert!(alive(pid), "detaching ended the run");
    let conn = vggtrain::attach::client::connect(&run).expect("still attachable");
    assert_eq!(conn.snapshot.state, RunState::Paused);
    conn.close();
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    wait_until("the run to exit", 120, || !alive(pid));
    assert!(!run.join("control.sock").exists());
}

#[test]
fn tmux_headless_on_a_terminal_draws_a_progress_bar() {
    if !tmux_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cmd = format!(
        "{} train --no-tui --model A --width 8 --subset 2000 --epochs 1000 --batch-size 64 --device cpu --set data.val-size=256 --runs-dir {} --name bar; echo EXIT=$? > {}",
        env!("CARGO_BIN_EXE_vggtrain"),
        dir.display(),
        dir.join("exit").display()
    );
    let t = Tmux::start("bar", &cmd, 120, 20);
    let screen = t.wait_for("the bar", 120, |s| {
        s.contains("epoch 1/1000 [") && s.contains("img/s · ETA")
    });
    assert!(!screen.contains("| ETA epoch"), "step lines on a terminal:\n{screen}");
    // The epoch lines scroll above the bar.
    let screen = t.wait_for("an epoch line above the bar", 120, |s| {
        s.contains("epoch 1 | train loss")
    });
    let above = screen.find("epoch 1 | train loss").unwrap();
    let bar = screen.rfind("/1000 [").unwrap();
    assert!(above < bar, "{screen}");
    t.keys(&["C-c"]);
    wait_until("the run to stop", 60, || dir.join("exit").is_file());
    assert_eq!(std::fs::read_to_string(dir.join("exit")).unwrap().trim(), "EXIT=130");
}

#[test]
fn the_header_shows_the_gpus_and_nothing_without_them() {
    let mut app = app_with(&fixture());
    let s = render(&app, 200, 40);
    lacks(&s, "GPU");
    app.gpus = vec![vggtrain::gpu::Sample {
        index: 0,
        utilization: 87,
        used_mb: 30.1 * 1024.0,
        total_mb: 80.0 * 1024.0,
        temperature: 64,
        process_mb: Some(20_000.0),
    }];
    has(&render(&app, 200, 40), "GPU0 87% · 30.1/80.0 GB · 64°C");
}

#[test]
fn gpu_samples_reach_the_screen_and_the_loop_outlives_the_sampler() {
    let (ev_tx, ev_rx) = bounded::<Event>(4096);
    let (cmd_tx, _cmd_rx) = unbounded();
    let (_in_tx, in_rx) = unbounded::<vggtrain::ui::input::Input>();
    let (sig_tx, sig_rx) = unbounded::<i32>();
    let (gpu_tx, gpu_rx) = unbounded();
    let sample = vggtrain::gpu::Sample {
        index: 1,
        utilization: 42,
        used_mb: 1024.0,
        total_mb: 2048.0,
        temperature: 50,
        process_mb: None,
    };
    gpu_tx.send(vec![sample]).unwrap();
    // The sampler ends: the loop goes on without it.
    drop(gpu_tx);
    for e in fixture() {
        ev_tx.send(e).unwrap();
    }
    let looped = std::thread::spawn(move || {
        let mut t = Terminal::new(TestBackend::new(200, 40)).unwrap();
        let mut app = App::new();
        let ch = Channels {
            events: &ev_rx,
            commands: &cmd_tx,
            input: &in_rx,
            signals: &sig_rx,
            gpus: &gpu_rx,
        };
        ui::run_loop(&mut t, &mut app, &ch);
        text(t.backend().buffer())
    });
    std::thread::sleep(Duration::from_millis(300));
    ev_tx
        .send(Event::Finished {
            reason: "done".into(),
            test: None,
        })
        .unwrap();
    // SIGINT after the end: quit.
    sig_tx.send(libc::SIGINT).unwrap();
    let screen = looped.join().unwrap();
    has(&screen, "GPU1 42% · 1.0/2.0 GB · 50°C");
}
