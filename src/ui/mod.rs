//! The terminal UI: one screen to watch and steer a run.
//!
//! - `app`: the state (`app/events.rs` applies engine events, `app/keys.rs`
//!   keys and signals, answering with the `Command` to send); the open
//!   dialog (`app/dialogs/`: help, the quit question, the results box, each
//!   with its state, keys and drawing) sees a key before the app does;
//! - `panels`: drawing only, one file per panel;
//! - `input`: the key reader thread (poll(2) on the tty; it ends cleanly
//!   when the terminal goes away);
//! - this file: the loop, generic over the ratatui backend (tests use
//!   `TestBackend`), and the terminal's set-up and restoration, for a run in
//!   this process (`run`) or in another, over its socket (`attach`).
//!
//! The loop blocks in `crossbeam_channel::select!` on the engine's events,
//! the keys, the signals (SIGWINCH, SIGHUP, SIGINT, SIGTERM, SIGUSR1) and, only when
//! a frame is owed, a timer: it draws at most `MAX_FPS` frames a second,
//! only after a change, and wakes for nothing while idle. If the terminal
//! goes away (SIGHUP, EOF or an error on the tty, a failed draw) the UI
//! stops and the process goes on without it until the engine ends.
pub mod app;
pub mod fmt;
pub mod history;
pub mod input;
pub mod panels;
pub mod theme;

pub use app::App;

use crate::attach::client::Connection;
use crate::control::{Command, Event};
use crate::engine::EngineHandle;
use crate::headless::{EXIT_FAILED, EXIT_OK};
use anyhow::{Context, Result};
use crossbeam_channel::{after, never, select, unbounded, Receiver, Sender};
use crossterm::{
    cursor::{Hide, Show},
    execute,
    terminal::{disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen},
};
use input::Input;
use ratatui::{
    backend::{Backend, CrosstermBackend},
    Terminal,
};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGWINCH};
use std::{
    io::{Stdout, Write},
    os::fd::AsRawFd,
    panic::{catch_unwind, AssertUnwindSafe},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicI32, Ordering},
        Mutex, Once,
    },
    thread::{self, ThreadId},
    time::{Duration, Instant},
};

/// Most frames drawn per second.
pub const MAX_FPS: u64 = 15;
const FRAME: Duration = Duration::from_millis(1000 / MAX_FPS);
/// Events applied before a frame is drawn, at most (the rest wait for the next).
const EVENT_BATCH: usize = 1024;

/// How the loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The run ended and the user quit, or the user stopped the run and it
    /// ended: the process exits with this code.
    Quit(i32),
    /// The user quit twice while stopping: exit now, without waiting.
    Forced(i32),
    /// The terminal went away; the engine is still running.
    TerminalGone,
}

/// What the loop listens to and talks to.
pub struct Channels<'a> {
    pub events: &'a Receiver<Event>,
    pub commands: &'a Sender<Command>,
    pub input: &'a Receiver<Input>,
    /// Signal numbers.
    pub signals: &'a Receiver<i32>,
    /// GPU samples (a channel that never sends without a GPU).
    pub gpus: &'a Receiver<Vec<crate::gpu::Sample>>,
}

/// Draws one frame.
pub fn draw<B: Backend>(terminal: &mut Terminal<B>, app: &App) -> Result<(), B::Error> {
    terminal
        .draw(|f| {
            let area = f.area();
            panels::render(app, area, f.buffer_mut());
        })
        .map(|_| ())
}

/// The UI loop; returns when the UI should end (see `Exit`).
pub fn run_loop<B: Backend>(terminal: &mut Terminal<B>, app: &mut App, ch: &Channels) -> Exit {
    let (mut events_open, mut signals_open, mut gpus_open) = (true, true, true);
    let mut dirty = true;
    let mut last_draw: Option<Instant> = None;
    let (no_events, no_signals, no_gpus) = (never::<Event>(), never::<i32>(), never());
    loop {
        if let Some(code) = app.exit_code() {
            // The final state goes on screen before the loop ends.
            let _ = draw(terminal, app);
            return if app.forced() {
                Exit::Forced(code)
            } else {
                Exit::Quit(code)
            };
        }
        let owed = last_draw.map_or(Duration::ZERO, |t| FRAME.saturating_sub(t.elapsed()));
        if dirty && owed.is_zero() {
            if draw(terminal, app).is_err() {
                return Exit::TerminalGone;
            }
            last_draw = Some(Instant::now());
            dirty = false;
        }
        // A timer only when a frame is owed: idle means blocked.
        let timer = if dirty { after(owed) } else { never() };
        let events = if events_open { ch.events } else { &no_events };
        let signals = if signals_open { ch.signals } else { &no_signals };
        let gpus = if gpus_open { ch.gpus } else { &no_gpus };
        select! {
            recv(events) -> e => match e {
                Ok(e) => {
                    app.update(&e);
                    for e in ch.events.try_iter().take(EVENT_BATCH) {
                        app.update(&e);
                    }
                    dirty = true;
                }
                Err(_) => {
                    events_open = false;
                    app.engine_gone();
                    dirty = true;
                }
            },
            recv(ch.input) -> k => match k {
                Ok(Input::Key(k)) => {
                    if let Some(c) = app.on_key(k) {
                        let _ = ch.commands.send(c);
                    }
                    dirty = true;
                }
                Ok(Input::Closed) | Err(_) => return Exit::TerminalGone,
            },
            recv(signals) -> s => match s {
                Ok(SIGWINCH) => dirty = true,
                Ok(SIGHUP) => return Exit::TerminalGone,
                Ok(sig) => {
                    if let Some(c) = app.on_signal(sig) {
                        let _ = ch.commands.send(c);
                    }
                    dirty = true;
                }
                Err(_) => signals_open = false,
            },
            recv(gpus) -> g => match g {
                Ok(g) => {
                    app.gpus = g;
                    dirty = true;
                }
                Err(_) => gpus_open = false,
            },
            recv(timer) -> _ => {}
        }
    }
}

/// After the terminal went away: apply SIGINT/SIGTERM, drain the events
/// (blocking, no output) until the engine ends; returns the exit code.
pub fn drain(events: &Receiver<Event>, commands: &Sender<Command>, signals: &Receiver<i32>, app: &mut App) -> i32 {
    let no_signals = never::<i32>();
    let mut signals_open = true;
    loop {
        let sigs = if signals_open { signals } else { &no_signals };
        select! {
            recv(events) -> e => match e {
                Ok(e) => app.update(&e),
                Err(_) => break,
            },
            recv(sigs) -> s => match s {
                Ok(sig) => {
                    if let Some(c) = app.on_signal(sig) {
                        let _ = commands.send(c);
                    }
                }
                Err(_) => signals_open = false,
            },
        }
    }
    app.engine_gone();
    match app.engine {
        app::EngineState::Failed | app::EngineState::Ended => EXIT_FAILED,
        _ => app.signal_code.unwrap_or(EXIT_OK),
    }
}

// ---- the real terminal ----

/// Threads whose panic restores the terminal (the engine's report a failure
/// instead, and the UI shows it).
static UI_THREADS: Mutex<Vec<ThreadId>> = Mutex::new(Vec::new());
/// Raw mode and the alternate screen are on.
static TERMINAL_ON: AtomicBool = AtomicBool::new(false);
/// The real stderr while it points at the run's tui-stderr.log.
static SAVED_STDERR: AtomicI32 = AtomicI32::new(-1);

pub(crate) fn register_ui_thread() {
    if let Ok(mut t) = UI_THREADS.lock() {
        t.push(thread::current().id());
    }
}

fn is_ui_thread() -> bool {
    match UI_THREADS.try_lock() {
        Ok(t) => t.contains(&thread::current().id()),
        Err(_) => true,
    }
}

/// A panic in a UI thread restores the terminal before its message prints.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if is_ui_thread() {
                restore_terminal();
            }
            prev(info);
        }));
    });
}

/// Sends stderr (libtorch warnings, panic messages of other threads) to a
/// file while the screen is ours, so nothing scribbles over it.
fn redirect_stderr(path: &Path) -> Option<PathBuf> {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(path).ok()?;
    let saved = unsafe { libc::dup(2) };
    if saved < 0 {
        return None;
    }
    if unsafe { libc::dup2(file.as_raw_fd(), 2) } < 0 {
        unsafe { libc::close(saved) };
        return None;
    }
    SAVED_STDERR.store(saved, Ordering::SeqCst);
    Some(path.to_owned())
}

fn restore_stderr() {
    let saved = SAVED_STDERR.swap(-1, Ordering::SeqCst);
    if saved >= 0 {
        unsafe {
            libc::dup2(saved, 2);
            libc::close(saved);
        }
    }
}

/// Leaves raw mode and the alternate screen (once), and gives stderr back.
/// Errors (a terminal that is gone) are ignored.
pub fn restore_terminal() {
    if TERMINAL_ON.swap(false, Ordering::SeqCst) {
        let _ = disable_raw_mode();
        let _ = execute!(std::io::stdout(), LeaveAlternateScreen, Show);
    }
    restore_stderr();
}

fn enter_terminal() -> std::io::Result<Terminal<CrosstermBackend<Stdout>>> {
    enable_raw_mode()?;
    TERMINAL_ON.store(true, Ordering::SeqCst);
    execute!(std::io::stdout(), EnterAlternateScreen, Hide)?;
    Terminal::new(CrosstermBackend::new(std::io::stdout()))
}

/// Signals to a channel, from a thread of their own; `close` ends it.
struct SignalThread {
    handle: signal_hook::iterator::Handle,
    thread: Option<thread::JoinHandle<()>>,
}

impl SignalThread {
    fn spawn(tx: Sender<i32>) -> Result<SignalThread> {
        let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGWINCH])?;
        let handle = signals.handle();
        let thread = thread::Builder::new().name("vggtrain-signals".into()).spawn(move || {
            register_ui_thread();
            for s in signals.forever() {
                if tx.send(s).is_err() {
                    break;
                }
            }
        })?;
        Ok(SignalThread {
            handle,
            thread: Some(thread),
        })
    }

    fn close(mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The real terminal while the UI has it: the screen, the keys and the
/// signals.
struct Screen {
    terminal: Terminal<CrosstermBackend<Stdout>>,
    reader: input::Reader,
    keys: Receiver<Input>,
    signals: SignalThread,
    sigs: Receiver<i32>,
}

impl Screen {
    /// Takes the terminal (and sends stderr to `stderr_to` meanwhile); on
    /// failure whatever was started is undone.
    fn open(stderr_to: Option<&Path>) -> Result<(Screen, Option<PathBuf>)> {
        install_panic_hook();
        register_ui_thread();
        let (sig_tx, sigs) = unbounded();
        let signals = SignalThread::spawn(sig_tx)?;
        let (in_tx, keys) = unbounded();
        let reader = match input::Reader::spawn(in_tx) {
            Ok(r) => r,
            Err(e) => {
                signals.close();
                anyhow::bail!("no terminal to read keys from ({e})");
            }
        };
        let stderr_log = stderr_to.and_then(redirect_stderr);
        match enter_terminal() {
            Ok(terminal) => Ok((
                Screen {
                    terminal,
                    reader,
                    keys,
                    signals,
                    sigs,
                },
                stderr_log,
            )),
            Err(e) => {
                restore_terminal();
                reader.stop();
                signals.close();
                anyhow::bail!("cannot start the terminal UI ({e})");
            }
        }
    }

    /// The loop on this terminal; a panic in it is caught (the hook has
    /// restored the terminal and printed it).
    fn run(
        &mut self,
        app: &mut App,
        events: &Receiver<Event>,
        commands: &Sender<Command>,
        gpus: &Receiver<Vec<crate::gpu::Sample>>,
    ) -> thread::Result<Exit> {
        let ch = Channels {
            events,
            commands,
            input: &self.keys,
            signals: &self.sigs,
            gpus,
        };
        catch_unwind(AssertUnwindSafe(|| run_loop(&mut self.terminal, app, &ch)))
    }

    /// Gives the terminal back; the signals go on being caught.
    fn close(self, gone: bool) -> (SignalThread, Receiver<i32>) {
        // A terminal that is gone must not be touched again: ratatui's Drop
        // shows the cursor and eprintln!s the failure, which panics on a dead
        // tty. Otherwise it goes first, while stderr still points at the file.
        if gone {
            std::mem::forget(self.terminal);
        } else {
            drop(self.terminal);
        }
        restore_terminal();
        self.reader.stop();
        (self.signals, self.sigs)
    }
}

/// Runs the TUI until the user quits (or the engine ends after the user
/// asked it to stop); returns the process exit code. Without a usable
/// terminal it runs headless.
pub fn run(handle: EngineHandle, progress: crate::headless::Progress) -> Result<i32> {
    let no_color = theme::no_color_from_env();
    let (mut screen, stderr_log) = match Screen::open(Some(&handle.run_dir.join("tui-stderr.log"))) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vggtrain: {e:#}; running headless");
            return Ok(crate::headless::run(
                handle,
                progress,
                crate::headless::StopSignals::new(),
            ));
        }
    };
    let mut app = App::new().with_no_color(no_color);
    let gpus = crate::gpu::watch(handle.device).unwrap_or_else(never);
    let outcome = screen.run(&mut app, &handle.events, &handle.commands, &gpus);
    let (signals, sig_rx) = screen.close(matches!(outcome, Ok(Exit::TerminalGone)));
    let code = match outcome {
        Ok(Exit::Quit(code)) => {
            signals.close();
            handle.join();
            report(&app, stderr_log.as_deref());
            code
        }
        Ok(Exit::Forced(code)) => {
            // Leave without waiting for the engine, and without running the
            // exit handlers: libtorch's static destructors would race the
            // engine thread, which is still computing.
            handle.abandon();
            report(&app, stderr_log.as_deref());
            let _ = std::io::stdout().flush();
            unsafe { libc::_exit(code) }
        }
        Ok(Exit::TerminalGone) => {
            // Keep training: a paused run would wait for an attach.
            handle.send(Command::Resume);
            let code = drain(&handle.events, &handle.commands, &sig_rx, &mut app);
            signals.close();
            handle.join();
            code
        }
        Err(_) => {
            // The panic message is out (the hook restored the terminal first).
            signals.close();
            eprintln!("vggtrain: the terminal UI crashed; training continues headless");
            handle.send(Command::Resume);
            crate::headless::run(handle, progress, crate::headless::StopSignals::new())
        }
    };
    if let Some(p) = stderr_log {
        if std::fs::metadata(&p).map(|m| m.len() == 0).unwrap_or(false) {
            let _ = std::fs::remove_file(&p);
        }
    }
    Ok(code)
}

/// The TUI on a run in another process (`vggtrain attach`): quitting
/// detaches, and the run goes on.
pub fn attach(conn: Connection) -> Result<i32> {
    let mut app = App::attached(&conn.snapshot).with_no_color(theme::no_color_from_env());
    let (mut screen, _) = Screen::open(None).context("vggtrain attach needs a terminal")?;
    // The run is on this host (the socket is local): its GPU, as the
    // local face shows it.
    let gpus = conn.snapshot.device().and_then(crate::gpu::watch).unwrap_or_else(never);
    let outcome = screen.run(&mut app, &conn.events, &conn.commands, &gpus);
    let (signals, _) = screen.close(matches!(outcome, Ok(Exit::TerminalGone)));
    signals.close();
    conn.close();
    Ok(match outcome {
        Ok(Exit::Quit(code) | Exit::Forced(code)) => {
            report(&app, None);
            code
        }
        Ok(Exit::TerminalGone) => EXIT_OK,
        Err(_) => {
            eprintln!("vggtrain: the terminal UI crashed; the run goes on");
            EXIT_FAILED
        }
    })
}

/// The final lines on the normal screen after the TUI closes.
fn report(app: &App, stderr_log: Option<&Path>) {
    let mut out = std::io::stdout().lock();
    if let Some(i) = &app.info {
        let _ = writeln!(out, "run {}", i.run_dir.display());
        if app.detached() {
            let _ = writeln!(
                out,
                "detached: the run goes on; `vggtrain attach {}` to come back",
                i.run_dir.display()
            );
        }
    }
    if let Some(e) = app
        .log
        .iter()
        .rev()
        .find(|e| e.kind == app::LogKind::Done || e.kind == app::LogKind::Error)
    {
        let _ = writeln!(out, "{}", e.text);
    }
    if let Some(p) = stderr_log {
        if std::fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false) {
            let _ = writeln!(out, "messages written to stderr during the run: {}", p.display());
        }
    }
}
