//! The engine: a named worker thread that owns every tensor (dataset, model,
//! optimiser) and runs the paper's recipe; faces only see `Event`s and send
//! `Command`s.
//!
//! `spawn` starts the worker thread, which prepares the run (`prepare`:
//! data, network, weights, a resume's checkpoint and configuration) before
//! anything of the run is written; only then is the run directory created
//! (or opened) and training starts (`worker`).
pub mod batches;
pub mod checkpoint;
mod commands;
mod prepare;
pub mod resume;
pub mod run_dir;
pub mod schedule;
pub mod sgd;
mod worker;

pub use batches::Batches;
pub use prepare::card as model_card;

use crate::config::Config;
use crate::control::{Command, Event, Observe, Observer};
use crate::data;
use crate::dist::DataParallel;
use crate::model::Vgg;
use anyhow::{bail, Result};
use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender};
use run_dir::RunDir;
use sgd::Sgd;
use std::{
    collections::BTreeSet,
    panic::{catch_unwind, AssertUnwindSafe},
    path::{Path, PathBuf},
    sync::Arc,
    thread::JoinHandle,
    time::Duration,
};
use tch::{Device, Kind, Tensor};

/// A data-parallel step's group, and the images of the whole batch (this
/// rank's share and the others').
pub struct Reduce<'a> {
    pub dp: &'a mut DataParallel,
    pub images: usize,
}

/// One SGD step on an augmented batch: forward, backward (of the scaled
/// loss with fp16), (with `reduce`) the gradients summed over the ranks,
/// the update. Returns the summed loss
/// and the number of correct predictions (of the whole batch), on the
/// device (no host sync).
pub fn train_step(
    model: &Vgg,
    sgd: &mut Sgd,
    batches: &Batches,
    x: &Tensor,
    y: &Tensor,
    lr: f64,
    reduce: Option<Reduce>,
) -> Result<(Tensor, Tensor)> {
    let n = y.size()[0];
    let (loss, correct) = if n == 0 {
        // A rank with no image in this batch: zero gradients, every one defined.
        let params = sgd.params();
        let nothing = params
            .iter()
            .fold(Tensor::zeros([], (Kind::Float, x.device())), |a, p| {
                a + p.sum(Kind::Float)
            });
        (nothing * 0.0).backward();
        let zero = Tensor::zeros([], (Kind::Double, x.device()));
        (zero.shallow_clone(), zero)
    } else {
        let x = batches.layout(x.shallow_clone());
        let logits = batches.autocast(|| model.forward_t(&x, true)).to_kind(Kind::Float);
        let loss = logits.cross_entropy_for_logits(y);
        match &reduce {
            // This rank's mean, weighted by its share: the sum over the ranks
            // is the gradient of the whole batch's mean.
            Some(r) => sgd.scaled(&(&loss * (n as f64 / r.images as f64))).backward(),
            None => sgd.scaled(&loss).backward(),
        }
        let correct = logits.argmax(-1, false).eq_tensor(y).sum(Kind::Double);
        (loss.detach().to_kind(Kind::Double) * n as f64, correct)
    };
    let sums = match reduce {
        Some(r) => {
            let mut both = Tensor::stack(&[loss, correct], 0);
            r.dp.reduce(&sgd.params(), &mut both)?;
            (both.get(0), both.get(1))
        }
        None => (loss, correct),
    };
    sgd.step(lr)?;
    Ok(sums)
}

/// A step of one process at lr 1e-3 (bench): its summed loss.
pub fn step_alone(model: &Vgg, sgd: &mut Sgd, batches: &Batches, x: &Tensor, y: &Tensor) -> Tensor {
    train_step(model, sgd, batches, x, y, 1e-3, None)
        .expect("only a reduce over ranks can fail")
        .0
}

/// What a face holds: commands in, events out.
pub struct EngineHandle {
    pub commands: Sender<Command>,
    pub events: Receiver<Event>,
    pub run_dir: PathBuf,
    /// Where the run trains.
    pub device: Device,
    observer: Option<Arc<dyn Observer>>,
    thread: Option<JoinHandle<()>>,
}

impl EngineHandle {
    /// Sends a command; a finished engine ignores it.
    pub fn send(&self, c: Command) {
        let _ = self.commands.send(c);
    }

    /// The process leaves at once, with the engine still running (a forced
    /// quit): the run is no longer live, and the observer's files go.
    pub fn abandon(&self) {
        run_dir::abandon(&self.run_dir);
        if let Some(o) = &self.observer {
            o.abandon();
        }
    }

    /// Waits for the worker thread to end.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Events go to the run directory first, then to the observer (which
/// never blocks), then to the face, which may be slow or gone: step events
/// are dropped when its queue is full, the others wait briefly.
pub struct Sink {
    tx: Sender<Event>,
    run: RunDir,
    disk_warned: bool,
    observer: Option<Arc<dyn Observer>>,
}

impl Sink {
    fn emit(&mut self, e: Event) {
        if let Err(err) = self.run.record(&e) {
            if !self.disk_warned {
                self.disk_warned = true;
                let _ = self.tx.try_send(Event::Log {
                    message: format!(
                        "warning: cannot write the run's metrics/log in {}: {err}",
                        self.run.path.display()
                    ),
                });
            }
        }
        if let Some(o) = &self.observer {
            o.publish(&e);
        }
        if matches!(e, Event::Step { .. }) {
            let _ = self.tx.try_send(e);
        } else {
            let _ = self.tx.send_timeout(e, Duration::from_millis(200));
        }
    }
}

/// Commands from the observer waiting for the engine, at most (more are
/// refused).
const OBSERVER_COMMANDS: usize = 256;

/// What to start: a new run of `config`, or the run `resume` continued
/// with it (see `resume::POLICIES` for what may change).
pub struct Start {
    pub config: Config,
    pub resume: Option<PathBuf>,
    /// Keys set by flags or the environment: on a resume, `train.lr` among
    /// them sets the lr even when it equals the run's initial lr.
    pub explicit: BTreeSet<String>,
    /// One rank of a data-parallel run: rank 0 owns the run directory and
    /// the faces, the others follow it (see `Worker::run`).
    pub parallel: Option<DataParallel>,
    /// A face fed beside the handle's (`attach::observe`), opened with the
    /// run directory (by rank 0 only).
    pub observer: Option<Observe>,
}

impl Start {
    pub fn new(config: Config) -> Start {
        Start {
            config,
            resume: None,
            explicit: BTreeSet::new(),
            parallel: None,
            observer: None,
        }
    }

    pub fn resume(self, run: &Path) -> Start {
        Start {
            resume: Some(run.to_owned()),
            ..self
        }
    }
}

/// A stop request (SIGINT, SIGTERM) came while the run was being prepared:
/// nothing of it was written. Holds the exit code.
#[derive(Debug, thiserror::Error)]
#[error("stopped while preparing the run: nothing was written")]
pub struct Interrupted(pub i32);

/// What the prepared worker tells `spawn`: the configuration to write and
/// the damaged checkpoints to move aside.
struct Ready {
    config: Config,
    damaged: Vec<checkpoint::Damaged>,
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "the engine panicked".into())
}

/// Starts a run (or resumes one) on a worker thread. Bad input (the
/// configuration, the data, weights or a checkpoint, a resume that would
/// change the run) is an error here, before anything of the run is written.
/// `interrupted` is asked while the run is prepared: an exit code from it
/// abandons the start (`Interrupted`).
pub fn spawn(mut start: Start, interrupted: &dyn Fn() -> Option<i32>) -> Result<EngineHandle> {
    start.config.validate()?;
    let mut parallel = start.parallel.take();
    let observe = start.observer.take();
    let leader = crate::dist::leads(parallel.as_ref());
    match &start.resume {
        None => start.config.validate_inputs()?,
        // Nothing is written to a directory that is not a run, or that
        // another process trains (RunDir::open's lock settles a race).
        Some(dir) if leader && run_dir::is_live(dir) => return Err(run_dir::busy(dir)),
        Some(_) => {}
    }
    data::locate(&start.config.data)?;
    crate::device::resolve(&start.config.train.device)?;
    let resume = start.resume.clone();
    let (ready_tx, ready_rx) = bounded(1);
    let (go_tx, go_rx) = bounded(1);
    let (cmd_tx, cmd_rx) = unbounded();
    let (ev_tx, ev_rx) = bounded(4096);
    let (observer_tx, observer_rx) = bounded(OBSERVER_COMMANDS);
    let cmds = commands::Commands::new(cmd_rx, observer_rx);
    let thread = std::thread::Builder::new()
        .name("vggtrain-engine".into())
        .spawn(move || engine_thread(start, ready_tx, go_rx, cmds))?;
    let ready = wait_ready(&ready_rx, interrupted)?;
    let (run, observer, notes) = match &mut parallel {
        Some(p) if p.rank() > 0 => {
            // Rank 0 names the run; this rank logs beside it.
            let dir = p.share_run(None)?;
            (RunDir::follower(&dir, p.rank())?, None, Vec::new())
        }
        _ => {
            let (run, mut notes) = open_run(&ready, resume.as_deref())?;
            let observer = observe.and_then(|open| {
                let (observer, said) = open(&run.path, ready.config.to_toml(), observer_tx);
                notes.extend(said);
                observer
            });
            if let Some(p) = &mut parallel {
                p.share_run(Some(&run.path))?;
            }
            (run, observer, notes)
        }
    };
    let run_dir = run.path.clone();
    let sink = Sink {
        tx: ev_tx,
        run,
        disk_warned: false,
        observer: observer.clone(),
    };
    let notes = notes.into_iter().map(|message| Event::Log { message }).collect();
    if go_tx.send((sink, notes, parallel)).is_err() {
        bail!("the engine ended before training started");
    }
    Ok(EngineHandle {
        commands: cmd_tx,
        events: ev_rx,
        run_dir,
        device: crate::device::resolve(&ready.config.train.device)?,
        observer,
        thread: Some(thread),
    })
}

/// The engine's thread: prepares the run and tells `spawn`; once `spawn`
/// has the run directory (`go`), trains; a failure or a panic becomes
/// `Event::Failed`.
fn engine_thread(
    start: Start,
    ready: Sender<Result<Ready>>,
    go: Receiver<(Sink, Vec<Event>, Option<DataParallel>)>,
    cmds: commands::Commands,
) {
    let prepared = catch_unwind(AssertUnwindSafe(|| {
        prepare::prepare(start.config, start.resume.as_deref(), &start.explicit)
    }))
    .unwrap_or_else(|p| Err(anyhow::anyhow!(panic_message(p))));
    let worker = match prepared {
        Ok(p) => {
            let _ = ready.send(Ok(Ready {
                config: p.worker.cfg.clone(),
                damaged: p.damaged,
            }));
            p.worker
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let Ok((mut sink, notes, parallel)) = go.recv() else {
        return;
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| worker.run(&mut sink, cmds, notes, parallel)));
    let failure = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{e:#}")),
        Err(panic) => Some(panic_message(panic)),
    };
    if let Some(message) = failure {
        sink.emit(Event::Failed { message });
    }
    sink.run.close();
    if let Some(o) = &sink.observer {
        o.close();
    }
}

/// Waits for the prepared worker, asking `interrupted` meanwhile.
fn wait_ready(rx: &Receiver<Result<Ready>>, interrupted: &dyn Fn() -> Option<i32>) -> Result<Ready> {
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(ready) => return ready,
            Err(RecvTimeoutError::Timeout) => {
                if let Some(code) = interrupted() {
                    return Err(Interrupted(code).into());
                }
            }
            Err(RecvTimeoutError::Disconnected) => bail!("the engine ended while preparing the run"),
        }
    }
}

/// Creates the run's directory, or opens the resumed one: its config.toml
/// rewritten with the settled configuration, temp files of interrupted
/// saves removed, damaged checkpoints moved aside. Returns what it did.
fn open_run(ready: &Ready, resume: Option<&Path>) -> Result<(RunDir, Vec<String>)> {
    let Some(dir) = resume else {
        return Ok((RunDir::create(&ready.config)?, Vec::new()));
    };
    let run = RunDir::open(dir, &ready.config)?;
    checkpoint::write_atomic(&dir.join("config.toml"), ready.config.to_toml().as_bytes())?;
    let mut notes = Vec::new();
    let removed = checkpoint::remove_stale_temp_files(&run.checkpoints(), None);
    if removed > 0 {
        notes.push(format!(
            "removed {removed} temporary file(s) left by a checkpoint save that was interrupted"
        ));
    }
    for d in &ready.damaged {
        match checkpoint::move_aside(&d.path) {
            Ok(to) => notes.push(format!(
                "warning: moved a damaged checkpoint aside to {}: {}",
                to.display(),
                d.error
            )),
            Err(e) => notes.push(format!("warning: {e:#}: {}", d.error)),
        }
    }
    Ok((run, notes))
}
