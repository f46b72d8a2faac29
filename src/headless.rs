//! The headless face: progress lines on stderr (the run directory has the
//! full record), and control by signals: SIGUSR1 = checkpoint now,
//! SIGINT/SIGTERM = checkpoint then stop.
use crate::control::{Command, Event, RunInfo};
use crate::engine::EngineHandle;
use crossbeam_channel::RecvTimeoutError;
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// Exit codes.
pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_SIGINT: i32 = 130;
pub const EXIT_SIGTERM: i32 = 143;

/// Seconds between step lines.
const STEP_LINE_EVERY: Duration = Duration::from_secs(5);

fn hms(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// Runs until the engine finishes; returns the process exit code.
pub fn run(handle: EngineHandle) -> i32 {
    let flag = |sig| {
        let f = Arc::new(AtomicBool::new(false));
        let _ = signal_hook::flag::register(sig, f.clone());
        f
    };
    let (int, term, usr1) = (flag(SIGINT), flag(SIGTERM), flag(SIGUSR1));
    let mut code = EXIT_OK;
    let mut stopping = false;
    let mut info: Option<RunInfo> = None;
    let mut last_line = Instant::now() - STEP_LINE_EVERY;
    loop {
        if usr1.swap(false, Ordering::SeqCst) {
            handle.send(Command::SaveCheckpoint);
        }
        for (f, c) in [(&int, EXIT_SIGINT), (&term, EXIT_SIGTERM)] {
            if f.swap(false, Ordering::SeqCst) && !stopping {
                stopping = true;
                code = c;
                eprintln!("signal received: saving a checkpoint, then stopping");
                handle.send(Command::Stop { save: true });
            }
        }
        let event = match handle.events.recv_timeout(Duration::from_millis(100)) {
            Ok(e) => e,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        match &event {
            Event::Started(i) => info = Some(i.clone()),
            Event::Step {
                epoch,
                step,
                loss,
                lr,
                images_per_sec,
                ..
            } => {
                if last_line.elapsed() < STEP_LINE_EVERY {
                    continue;
                }
                last_line = Instant::now();
                let (steps, epochs) = info.as_ref().map(|i| (i.steps_per_epoch, i.epochs)).unwrap_or((0, 0));
                let batch = info.as_ref().map(|i| i.batch_size as f64).unwrap_or(0.0);
                let left_epoch = steps.saturating_sub(*step) as f64 * batch;
                let left_run = left_epoch + (epochs.saturating_sub(*epoch)) as f64 * steps as f64 * batch;
                let eta = |imgs: f64| {
                    if *images_per_sec > 0.0 {
                        hms(imgs / images_per_sec)
                    } else {
                        "?".into()
                    }
                };
                eprintln!(
                    "epoch {epoch}/{epochs} step {step}/{steps} | loss {loss:.4} | lr {lr:.1e} | {images_per_sec:.0} img/s | ETA epoch {} run {}",
                    eta(left_epoch),
                    eta(left_run)
                );
                continue;
            }
            Event::Failed { .. } => code = EXIT_FAILED,
            _ => {}
        }
        if let Some(line) = event.summary() {
            eprintln!("{line}");
        }
    }
    handle.join();
    code
}
