//! The headless face: progress lines on stderr (the run directory has the
//! full record), and control by signals: SIGUSR1 = checkpoint now,
//! SIGINT/SIGTERM = checkpoint then stop; a second one quits at once (but
//! for its echo: `ECHO`).
use crate::control::{Command, Event, RunInfo};
use crate::engine::EngineHandle;
use crossbeam_channel::RecvTimeoutError;
use indicatif::{ProgressBar, ProgressStyle};
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use std::{
    io::{IsTerminal, Write},
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

/// A second stop signal this soon after the first is the same stop,
/// passed on: a signal to a process group reaches a rank both directly and
/// through its launcher (vggtrain's, torchrun, SLURM's srun).
pub const ECHO: Duration = Duration::from_secs(1);

/// What a SIGINT or SIGTERM asks for, by when the last one came.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Asked {
    /// The first: save, then stop.
    Stop,
    /// The first one's echo (within `ECHO`): nothing more.
    Echo,
    /// A second: quit at once.
    Quit,
}

/// When the first stop signal came, if one did.
#[derive(Default)]
pub struct Stopping(pub(crate) Option<Instant>);

impl Stopping {
    /// A stop signal came: what it asks for.
    pub fn signal(&mut self) -> Asked {
        match self.0 {
            Some(t) if t.elapsed() < ECHO => Asked::Echo,
            Some(_) => Asked::Quit,
            None => {
                self.0 = Some(Instant::now());
                Asked::Stop
            }
        }
    }
}

/// Seconds between step lines.
const STEP_LINE_EVERY: Duration = Duration::from_secs(5);

/// SIGINT, SIGTERM and SIGUSR1 caught as flags from the preparation on;
/// the headless face goes on with the same flags.
pub struct StopSignals {
    int: Arc<AtomicBool>,
    term: Arc<AtomicBool>,
    /// A checkpoint request: caught from the start (its default action
    /// would kill the process), acted on once the run has started.
    usr1: Arc<AtomicBool>,
}

fn flag(sig: i32) -> Arc<AtomicBool> {
    let f = Arc::new(AtomicBool::new(false));
    let _ = signal_hook::flag::register(sig, f.clone());
    f
}

impl StopSignals {
    pub fn new() -> StopSignals {
        StopSignals {
            int: flag(SIGINT),
            term: flag(SIGTERM),
            usr1: flag(SIGUSR1),
        }
    }

    /// The exit code of a signal received, if one was.
    pub fn code(&self) -> Option<i32> {
        if self.int.load(Ordering::SeqCst) {
            Some(EXIT_SIGINT)
        } else if self.term.load(Ordering::SeqCst) {
            Some(EXIT_SIGTERM)
        } else {
            None
        }
    }
}

impl Default for StopSignals {
    fn default() -> Self {
        StopSignals::new()
    }
}

/// Ends the process now, without waiting for the engine and without the
/// exit handlers (libtorch's static destructors would race the engine
/// thread, which may still be computing).
pub fn exit_now(code: i32) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    unsafe { libc::_exit(code) }
}

fn hms(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// How training progress shows on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Progress {
    /// A live bar for the epoch (on a terminal; else lines).
    Bar,
    /// A step line every 5 seconds (logs, SLURM, nohup).
    Lines,
    /// No step progress (the epoch lines and the rest stay).
    None,
}

impl Progress {
    /// The asked-for mode; unasked: a bar where stderr is a terminal. A bar
    /// needs a terminal: redirected, it is lines (never `\r` in a log).
    pub fn resolve(asked: Option<Progress>) -> Progress {
        let tty = std::io::stderr().is_terminal();
        match asked.unwrap_or(Progress::Bar) {
            Progress::Bar if !tty => Progress::Lines,
            p => p,
        }
    }
}

/// The progress face on stderr: lines, or a bar with the lines above it.
struct Out {
    mode: Progress,
    bar: Option<ProgressBar>,
    last_line: Instant,
    info: Option<RunInfo>,
    epoch: usize,
}

impl Out {
    fn new(mode: Progress) -> Out {
        Out {
            mode,
            bar: None,
            last_line: Instant::now() - STEP_LINE_EVERY,
            info: None,
            epoch: 0,
        }
    }

    /// A line for people, above the bar if there is one.
    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn started(&mut self, info: &RunInfo) {
        self.info = Some(info.clone());
        if self.mode == Progress::Bar && self.bar.is_none() {
            let bar = ProgressBar::new(info.steps_per_epoch as u64);
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:32}] {pos}/{len} · {msg} · ETA {eta}")
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            self.bar = Some(bar);
        }
    }

    fn step(&mut self, epoch: usize, step: usize, loss: f64, lr: f64, ips: f64) {
        let (steps, epochs) = self
            .info
            .as_ref()
            .map(|i| (i.steps_per_epoch, i.epochs))
            .unwrap_or((0, 0));
        if let Some(bar) = &self.bar {
            if epoch != self.epoch {
                bar.reset();
                bar.set_prefix(format!("epoch {epoch}/{epochs}"));
            }
            bar.set_position(step as u64);
            bar.set_message(format!("loss {loss:.4} · lr {lr:.1e} · {ips:.0} img/s"));
            self.epoch = epoch;
            return;
        }
        if self.mode == Progress::None || self.last_line.elapsed() < STEP_LINE_EVERY {
            return;
        }
        self.last_line = Instant::now();
        let batch = self.info.as_ref().map(|i| i.batch_size as f64).unwrap_or(0.0);
        let left_epoch = steps.saturating_sub(step) as f64 * batch;
        let left_run = left_epoch + (epochs.saturating_sub(epoch)) as f64 * steps as f64 * batch;
        let eta = |imgs: f64| {
            if ips > 0.0 {
                hms(imgs / ips)
            } else {
                "?".into()
            }
        };
        eprintln!(
            "epoch {epoch}/{epochs} step {step}/{steps} | loss {loss:.4} | lr {lr:.1e} | {ips:.0} img/s | ETA epoch {} run {}",
            eta(left_epoch),
            eta(left_run)
        );
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// A spinner on stderr while the run is prepared (a line where stderr is
/// not a terminal, or with `none`).
pub struct Preparing(Option<ProgressBar>);

impl Preparing {
    pub fn start(mode: Progress, what: &str) -> Preparing {
        let text = format!("preparing the run: {what}");
        if mode != Progress::Bar {
            eprintln!("{text}");
            return Preparing(None);
        }
        let spinner = ProgressBar::new_spinner();
        spinner.set_message(text);
        Preparing(Some(spinner))
    }

    /// Nothing shown (a rank that follows rank 0).
    pub fn quiet() -> Preparing {
        Preparing(None)
    }

    pub fn tick(&self) {
        if let Some(s) = &self.0 {
            s.tick();
        }
    }

    pub fn done(self) {
        if let Some(s) = self.0 {
            s.finish_and_clear();
        }
    }
}

/// A rank that follows rank 0 (its face and run directory are rank 0's):
/// quiet until the engine ends, but for a failure's message. A signal
/// stops every rank (rank 0 saves); a second quits at once.
pub fn follow(handle: EngineHandle, signals: StopSignals, rank: usize) -> i32 {
    let mut code = EXIT_OK;
    let mut stopping = Stopping::default();
    loop {
        for (f, c) in [(&signals.int, EXIT_SIGINT), (&signals.term, EXIT_SIGTERM)] {
            if !f.swap(false, Ordering::SeqCst) {
                continue;
            }
            match stopping.signal() {
                Asked::Echo => {}
                Asked::Quit => exit_now(code),
                Asked::Stop => {
                    code = c;
                    handle.send(Command::Stop { save: true });
                }
            }
        }
        match handle.events.recv_timeout(Duration::from_millis(100)) {
            Ok(Event::Failed { message }) => {
                eprintln!("rank {rank}: error: {message}");
                code = EXIT_FAILED;
            }
            Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    handle.join();
    code
}

/// Runs until the engine finishes; returns the process exit code.
/// `signals`: those caught since the preparation, so none is lost between
/// the two.
pub fn run(handle: EngineHandle, progress: Progress, signals: StopSignals) -> i32 {
    let StopSignals { int, term, usr1 } = signals;
    let mut code = EXIT_OK;
    let mut stopping = Stopping::default();
    let mut out = Out::new(progress);
    loop {
        if usr1.swap(false, Ordering::SeqCst) {
            handle.send(Command::SaveCheckpoint);
        }
        for (f, c) in [(&int, EXIT_SIGINT), (&term, EXIT_SIGTERM)] {
            if !f.swap(false, Ordering::SeqCst) {
                continue;
            }
            match stopping.signal() {
                Asked::Echo => {}
                Asked::Quit => {
                    out.line("second signal: quitting now; the run resumes from its last checkpoint");
                    handle.abandon();
                    exit_now(code);
                }
                Asked::Stop => {
                    code = c;
                    out.line("signal received: saving a checkpoint, then stopping (again to quit at once)");
                    handle.send(Command::Stop { save: true });
                }
            }
        }
        let event = match handle.events.recv_timeout(Duration::from_millis(100)) {
            Ok(e) => e,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        match &event {
            Event::Started(i) => out.started(i),
            Event::Step {
                epoch,
                step,
                loss,
                lr,
                images_per_sec,
                ..
            } => out.step(*epoch, *step, *loss, *lr, *images_per_sec),
            Event::Failed { .. } => code = EXIT_FAILED,
            _ => {}
        }
        if let Some(line) = event.summary() {
            out.line(&line);
        }
    }
    out.finish();
    handle.join();
    code
}
