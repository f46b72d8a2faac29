//! The engine: a named worker thread that owns every tensor (dataset, model,
//! optimiser) and runs the paper's recipe; faces only see `Event`s and send
//! `Command`s.
pub mod checkpoint;
pub mod eval;
pub mod run_dir;
pub mod schedule;
pub mod sgd;

use crate::attach::{self, server::Hub};
use crate::config::{Config, Precision};
use crate::control::{self, CheckpointReason, Command, EpochStats, Event, LrCause, LrMark, RunInfo};
use crate::data::{self, augment::Augment, folder, Dataset, Source};
use crate::model::{self, Vgg};
use anyhow::{bail, Result};
use checkpoint::TrainState;
use crossbeam_channel::{bounded, never, select, unbounded, Receiver, Sender};
use run_dir::RunDir;
use schedule::{Decision, Schedule};
use sgd::Sgd;
use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    path::{Path, PathBuf},
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant},
};
use tch::{nn::VarStore, Device, Kind, Tensor};

/// `device = "auto" | "cpu" | "cuda" | "cuda:N"`.
pub fn parse_device(s: &str) -> Result<Option<Device>> {
    Ok(match s.trim() {
        "auto" => None,
        "cpu" => Some(Device::Cpu),
        "cuda" => Some(Device::Cuda(0)),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => Some(Device::Cuda(n)),
            None => bail!("train.device = `{other}`: expected auto, cpu, cuda or cuda:N"),
        },
    })
}

/// The configured device; "auto" is CUDA when present.
pub fn resolve_device(s: &str) -> Result<Device> {
    match parse_device(s)? {
        None => Ok(Device::cuda_if_available()),
        Some(Device::Cuda(n)) if n as i64 >= tch::Cuda::device_count() => bail!(
            "train.device = {s}, but libtorch sees {} CUDA device(s)",
            tch::Cuda::device_count()
        ),
        Some(d) => Ok(d),
    }
}

/// CUDA device names from nvidia-smi (libtorch's C API has none).
pub fn cuda_names() -> Vec<String> {
    std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// "cuda:0 NVIDIA H100" or "cpu x2".
pub fn describe_device(d: Device) -> String {
    match d {
        Device::Cuda(n) => {
            let name = cuda_names().get(n).cloned().unwrap_or_else(|| "CUDA".into());
            format!("cuda:{n} {name}")
        }
        _ => format!("cpu x{}", tch::get_num_threads()),
    }
}

/// Fetches u8 batches from a split, on the training device.
pub struct Batches {
    pub device: Device,
    plan: Option<folder::Plan>,
    bf16: bool,
    pub channels_last: bool,
}

impl Batches {
    pub fn new(cfg: &Config, crop: i64, device: Device) -> Batches {
        Batches {
            device,
            plan: (cfg.data.dataset == crate::config::DatasetName::Folder).then(|| folder::Plan::new(&cfg.data, crop)),
            bf16: cfg.train.precision == Precision::Bf16 && device.is_cuda(),
            channels_last: cfg.train.channels_last,
        }
    }

    /// u8 [B, C, H, W] and labels for images `idx` of `source`.
    pub fn get(&self, source: &Source, idx: &[usize], train: bool, seed: u64) -> Result<(Tensor, Tensor)> {
        match source {
            Source::Memory { images, labels } => {
                let i = Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(self.device);
                Ok((images.index_select(0, &i), labels.index_select(0, &i)))
            }
            Source::Folder(items) => {
                let plan = self.plan.expect("a plan for folder datasets");
                Ok(plan.batch(items, idx, train, seed)?.to_tensors(self.device))
            }
        }
    }

    /// The model's input layout: NHWC strides when channels-last is on.
    pub fn layout(&self, x: Tensor) -> Tensor {
        if self.channels_last {
            model::channels_last(&x)
        } else {
            x
        }
    }

    /// Runs `f` under bf16 autocast when configured (CUDA only).
    pub fn autocast<T>(&self, f: impl FnOnce() -> T) -> T {
        if self.bf16 {
            tch::autocast(true, f)
        } else {
            f()
        }
    }
}

/// One SGD step on an augmented batch: returns the summed loss and the
/// number of correct predictions, on the device (no host sync).
pub fn train_step(model: &Vgg, sgd: &mut Sgd, batches: &Batches, x: &Tensor, y: &Tensor, lr: f64) -> (Tensor, Tensor) {
    let x = batches.layout(x.shallow_clone());
    let logits = batches.autocast(|| model.forward_t(&x, true)).to_kind(Kind::Float);
    let loss = logits.cross_entropy_for_logits(y);
    sgd.zero_grad();
    loss.backward();
    sgd.step(lr);
    let n = y.size()[0] as f64;
    let correct = logits.argmax(-1, false).eq_tensor(y).sum(Kind::Double);
    (loss.detach().to_kind(Kind::Double) * n, correct)
}

/// What a face holds: commands in, events out.
pub struct EngineHandle {
    pub commands: Sender<Command>,
    pub events: Receiver<Event>,
    pub run_dir: PathBuf,
    thread: Option<JoinHandle<()>>,
}

impl EngineHandle {
    /// Sends a command; a finished engine ignores it.
    pub fn send(&self, c: Command) {
        let _ = self.commands.send(c);
    }

    /// Waits for the worker thread to end.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Events go to the run directory first, then to the attached clients
/// through the hub (which never blocks), then to the face, which may be
/// slow or gone: step events are dropped when its queue is full, the others
/// wait briefly.
struct Sink {
    tx: Sender<Event>,
    run: RunDir,
    disk_warned: bool,
    hub: Option<Arc<Hub>>,
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
        if let Some(hub) = &self.hub {
            hub.publish(&e);
        }
        if matches!(e, Event::Step { .. }) {
            let _ = self.tx.try_send(e);
        } else {
            let _ = self.tx.send_timeout(e, Duration::from_millis(200));
        }
    }
}

/// Commands from attached clients waiting for the engine, at most (more are
/// refused).
const CLIENT_COMMANDS: usize = 256;
/// Commands applied at one step boundary, at most.
const COMMANDS_PER_STEP: usize = 16;

/// Starts a run (or resumes `resume`, a run directory) on a worker thread.
/// Bad configuration, a missing dataset or an unusable run directory are
/// errors here, before anything starts.
pub fn spawn(config: Config, resume: Option<&Path>) -> Result<EngineHandle> {
    config.validate()?;
    data::locate(&config.data)?;
    resolve_device(&config.train.device)?;
    let (resume_from, run) = match resume {
        Some(dir) => {
            // Nothing is written to a directory that is not a run, or that
            // another process trains (RunDir::open's lock settles a race).
            if run_dir::is_live(dir) {
                return Err(run_dir::busy(dir));
            }
            let ckpt = newest_checkpoint(dir)?;
            (Some(ckpt), RunDir::open(dir)?)
        }
        None => (None, RunDir::create(&config)?),
    };
    let (cmd_tx, cmd_rx) = unbounded();
    let (ev_tx, ev_rx) = bounded(4096);
    let (client_tx, client_rx) = bounded(CLIENT_COMMANDS);
    // Attaching is a convenience: a run starts without it, and says why.
    let (hub, note) = match Hub::start(&run.path, config.to_toml(), client_tx) {
        Ok((hub, stale)) => (
            Some(hub),
            stale.then(|| "replaced the control socket left by an earlier process of this run".to_owned()),
        ),
        Err(e) => (
            None,
            Some(format!(
                "warning: attaching is off for this run: cannot listen on {}: {e}",
                attach::socket_path(&run.path).display()
            )),
        ),
    };
    let cmds = Commands::new(cmd_rx, client_rx);
    let run_dir = run.path.clone();
    let thread = std::thread::Builder::new()
        .name("vggtrain-engine".into())
        .spawn(move || {
            let mut sink = Sink {
                tx: ev_tx,
                run,
                disk_warned: false,
                hub,
            };
            if let Some(message) = note {
                sink.emit(Event::Log { message });
            }
            let outcome = catch_unwind(AssertUnwindSafe(|| Worker::run(&config, resume_from, cmds, &mut sink)));
            let failure = match outcome {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("{e:#}")),
                Err(panic) => Some(
                    panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "the engine panicked".into()),
                ),
            };
            if let Some(message) = failure {
                sink.emit(Event::Failed { message });
            }
            sink.run.close();
            if let Some(hub) = &sink.hub {
                hub.close();
            }
        })?;
    Ok(EngineHandle {
        commands: cmd_tx,
        events: ev_rx,
        run_dir,
        thread: Some(thread),
    })
}

/// The newest checkpoint of a run that loads; damaged ones are skipped.
pub fn newest_checkpoint(run: &Path) -> Result<PathBuf> {
    let dir = run.join("checkpoints");
    if !dir.is_dir() {
        bail!(
            "{} is not a vggtrain run directory (no checkpoints/ folder)",
            run.display()
        );
    }
    let mut errors = Vec::new();
    for p in checkpoint::list(&dir).into_iter().rev() {
        match checkpoint::load(&p) {
            Ok(_) => return Ok(p),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    bail!(
        "no complete checkpoint in {}{}",
        dir.display(),
        errors.iter().map(|e| format!("\n  skipped: {e}")).collect::<String>()
    )
}

/// A step's randomness (dropout, augmentation) is a function of the seed,
/// the epoch and the step: resuming needs no generator state.
fn step_seed(seed: u64, epoch: usize, step: usize) -> i64 {
    let mut rng = data::SplitMix(seed ^ ((epoch as u64) << 32) ^ step as u64);
    (rng.next() >> 1) as i64
}

fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    data::SplitMix(seed.wrapping_add(0xe90c ^ epoch as u64)).next()
}

/// Where commands come from: the face (never refused) and the attached
/// clients (through a bounded queue); a source that closes is left.
struct Commands {
    face: Receiver<Command>,
    clients: Receiver<Command>,
    face_open: bool,
    clients_open: bool,
}

impl Commands {
    fn new(face: Receiver<Command>, clients: Receiver<Command>) -> Commands {
        Commands {
            face,
            clients,
            face_open: true,
            clients_open: true,
        }
    }

    /// The next command, if one is waiting; the face's first.
    fn try_next(&self) -> Option<Command> {
        self.face.try_recv().ok().or_else(|| self.clients.try_recv().ok())
    }

    /// Waits for the next command; None once no source is left.
    fn wait(&mut self) -> Option<Command> {
        let none = never();
        while self.face_open || self.clients_open {
            let face = if self.face_open { &self.face } else { &none };
            let clients = if self.clients_open { &self.clients } else { &none };
            select! {
                recv(face) -> c => match c {
                    Ok(c) => return Some(c),
                    Err(_) => self.face_open = false,
                },
                recv(clients) -> c => match c {
                    Ok(c) => return Some(c),
                    Err(_) => self.clients_open = false,
                },
            }
        }
        None
    }
}

struct Worker<'a> {
    cfg: &'a Config,
    data: Dataset,
    model: Vgg,
    vs: VarStore,
    sgd: Sgd,
    state: TrainState,
    batches: Batches,
    train_aug: Augment,
    eval_aug: Augment,
    cmds: Commands,
    paused: bool,
    last_good: Option<PathBuf>,
}

enum Flow {
    Continue,
    Stop { save: bool },
}

impl<'a> Worker<'a> {
    fn run(cfg: &'a Config, resume: Option<PathBuf>, cmds: Commands, sink: &mut Sink) -> Result<()> {
        if cfg.train.threads > 0 {
            tch::set_num_threads(cfg.train.threads);
        }
        let device = resolve_device(&cfg.train.device)?;
        if device.is_cuda() {
            tch::Cuda::cudnn_set_benchmark(true);
        }
        let crop = cfg.crop();
        let data = data::load(&cfg.data, crop, cfg.train.seed, device)?;
        let native = match &data.train {
            Source::Memory { images, .. } => images.size()[2],
            Source::Folder(_) => crop,
        };
        let spec = cfg.model_spec(data.channels, (crop, crop), data.classes.len() as i64);
        let vs = VarStore::new(device);
        tch::manual_seed(cfg.train.seed as i64);
        let model = Vgg::new(&vs.root(), spec, cfg.init.scheme()).map_err(anyhow::Error::msg)?;
        let model_id = format!("{} {:?}", model.spec.describe(), model.spec.parameter_shapes());
        if let Some(from) = &cfg.init.from {
            model::load_weights(&vs, from)?;
            sink.emit(Event::Log {
                message: format!("weights loaded from {}", from.display()),
            });
        }
        if let Some(a) = &cfg.init.warm_start {
            let copied = model::warm_start_from_a(&model, &vs, a)?;
            sink.emit(Event::Log {
                message: format!("warm start from {}: copied {}", a.display(), copied.join(", ")),
            });
        }
        if cfg.train.channels_last {
            model::vars_to_channels_last(&vs);
        }
        let mut sgd = Sgd::new(&vs, cfg.train.momentum, cfg.train.weight_decay, cfg.train.decay_biases);
        let schedule = Schedule::new(&cfg.train);
        let mut state = TrainState {
            epoch: 0,
            step: 0,
            global_step: 0,
            lr_timeline: vec![(0, 0, schedule.lr, LrCause::Schedule)],
            schedule,
            loss_sum: 0.0,
            correct: 0.0,
            seen: 0.0,
            history: Vec::new(),
            config: cfg.to_toml(),
            model: model_id.clone(),
        };
        if let Some(path) = &resume {
            let loaded = checkpoint::load(path)?;
            if loaded.state.model != model_id {
                bail!(
                    "{} was saved by another configuration ({}) than this run's ({})",
                    path.display(),
                    loaded.state.model.split(" [").next().unwrap_or(""),
                    model.spec.describe()
                );
            }
            model::copy_weights(&vs, &loaded.weights, path)?;
            sgd.load_buffers(loaded.momentum).map_err(anyhow::Error::msg)?;
            state = loaded.state;
        }
        let upscale = (crop != native).then_some(crop);
        let pad = if matches!(data.train, Source::Memory { .. }) {
            cfg.data.pad
        } else {
            0
        };
        let train_aug = Augment::new(&cfg.data, &data.stats, pad, upscale, device);
        let eval_aug = Augment::new(&cfg.data, &data.stats, 0, upscale, device);
        let batch = cfg.train.batch_size as usize;
        let info = RunInfo {
            run_dir: sink.run.path.clone(),
            name: sink
                .run
                .path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            model: model.spec.describe(),
            parameters: model.spec.parameter_count(),
            dataset: format!("{} ({})", data.name.as_str(), data.dir.display()),
            device: describe_device(device),
            classes: data.classes.clone(),
            epochs: cfg.train.epochs,
            steps_per_epoch: data.train.len().div_ceil(batch),
            batch_size: cfg.train.batch_size,
            train_images: data.train.len(),
            val_images: data.val.len(),
            test_images: data.test.len(),
            lr: state.schedule.lr,
            max_decays: cfg.train.max_decays,
            start_epoch: state.epoch,
            start_step: state.step,
            resumed_from: resume.clone(),
            decays_used: state.schedule.decays_used,
            history: control::compact_history(&state.history),
            lr_history: state
                .lr_timeline
                .iter()
                .map(|&(global_step, epoch, lr, cause)| LrMark {
                    global_step,
                    epoch,
                    lr,
                    cause,
                })
                .collect(),
        };
        sink.emit(Event::Started(info));
        let mut w = Worker {
            cfg,
            batches: Batches::new(cfg, crop, device),
            data,
            model,
            vs,
            sgd,
            state,
            train_aug,
            eval_aug,
            cmds,
            paused: false,
            last_good: resume,
        };
        w.train(sink)
    }

    fn checkpoint(&mut self, sink: &mut Sink, reason: CheckpointReason) -> Result<PathBuf> {
        let dir = sink.run.checkpoints();
        let name = match reason {
            CheckpointReason::Best => "best.safetensors".to_owned(),
            _ => checkpoint::periodic_name(self.state.global_step),
        };
        let path = dir.join(name);
        let mut weights: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        weights.sort_by(|a, b| a.0.cmp(&b.0));
        checkpoint::save(&path, &weights, &self.sgd.buffers(), &self.state)?;
        if reason != CheckpointReason::Best {
            checkpoint::prune(&dir, self.cfg.run.keep_last);
            self.last_good = Some(path.clone());
        }
        sink.emit(Event::CheckpointSaved {
            path: path.clone(),
            reason,
        });
        Ok(path)
    }

    /// Saves, reporting a failure (a full disk) without ending the run.
    fn checkpoint_or_warn(&mut self, sink: &mut Sink, reason: CheckpointReason) {
        if let Err(e) = self.checkpoint(sink, reason) {
            sink.emit(Event::Log {
                message: format!("warning: checkpoint failed: {e:#}"),
            });
        }
    }

    fn set_lr(&mut self, sink: &mut Sink, old: f64, new: f64, cause: LrCause) {
        let s = &mut self.state;
        s.lr_timeline.push((s.global_step, s.epoch, new, cause));
        sink.emit(Event::LrChanged {
            old,
            new,
            cause,
            epoch: s.epoch,
            global_step: s.global_step,
            decays_used: s.schedule.decays_used,
        });
    }

    /// Applies one command; Pause blocks here (without spinning) until Resume
    /// or Stop. A dropped command channel (no face left) never stops training.
    fn apply(&mut self, sink: &mut Sink, c: Command) -> Result<Flow> {
        match c {
            Command::Pause if !self.paused => {
                self.paused = true;
                sink.emit(Event::Paused);
            }
            Command::Resume if self.paused => {
                self.paused = false;
                sink.emit(Event::Resumed);
            }
            Command::Pause | Command::Resume => {}
            Command::DecayLr => {
                let (old, new) = self.state.schedule.manual_decay();
                self.set_lr(sink, old, new, LrCause::Manual);
            }
            Command::SetLr { lr } if lr > 0.0 && lr.is_finite() => {
                let old = self.state.schedule.lr;
                self.state.schedule.lr = lr;
                self.set_lr(sink, old, lr, LrCause::Manual);
            }
            Command::SetLr { lr } => sink.emit(Event::Log {
                message: format!("ignored: lr {lr} is not a positive number"),
            }),
            Command::SaveCheckpoint => {
                self.check_finite()?;
                self.checkpoint_or_warn(sink, CheckpointReason::Key);
            }
            Command::Stop { save } => return Ok(Flow::Stop { save }),
        }
        Ok(Flow::Continue)
    }

    fn poll(&mut self, sink: &mut Sink) -> Result<Flow> {
        let (mut applied, mut saved) = (0, false);
        loop {
            // A flood of commands cannot hold training up.
            if !self.paused && applied == COMMANDS_PER_STEP {
                return Ok(Flow::Continue);
            }
            let next = if self.paused {
                let next = self.cmds.wait();
                if next.is_none() {
                    // Nobody can resume us: carry on.
                    self.paused = false;
                    sink.emit(Event::Resumed);
                }
                next
            } else {
                self.cmds.try_next()
            };
            match next {
                // One checkpoint of this state is enough.
                Some(Command::SaveCheckpoint) if saved => {}
                Some(c) => {
                    applied += 1;
                    saved |= c == Command::SaveCheckpoint;
                    if let Flow::Stop { save } = self.apply(sink, c)? {
                        return Ok(Flow::Stop { save });
                    }
                }
                None if !self.paused => return Ok(Flow::Continue),
                None => {}
            }
        }
    }

    fn check_finite(&self) -> Result<()> {
        if !self.state.loss_sum.is_finite() {
            bail!(
                "loss became NaN at epoch {} step {}; last good checkpoint: {}",
                self.state.epoch + 1,
                self.state.step,
                self.last_good
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "none".into())
            );
        }
        Ok(())
    }

    fn train(&mut self, sink: &mut Sink) -> Result<()> {
        let cfg = self.cfg;
        let batch = cfg.train.batch_size as usize;
        let dev = self.batches.device;
        let n = self.data.train.len();
        let steps = n.div_ceil(batch);
        let throttle = Duration::from_secs_f64(1.0 / cfg.train.step_events_per_sec.max(0.01));
        let mut finish_reason = format!("{} epochs done", cfg.train.epochs);
        'epochs: while self.state.epoch < cfg.train.epochs {
            let epoch = self.state.epoch;
            let order = data::permutation(n, epoch_seed(cfg.train.seed, epoch));
            let started = Instant::now();
            let mut loss_acc = Tensor::zeros([], (Kind::Double, dev));
            let mut correct_acc = Tensor::zeros([], (Kind::Double, dev));
            let (mut window_loss, mut window_n) = (Tensor::zeros([], (Kind::Double, dev)), 0usize);
            let mut last_event: Option<(Instant, u64)> = None;
            // Folder datasets decode ahead on other threads; in-memory ones
            // are cut from the device tensor in place.
            let prefetched = match (&self.data.train, self.batches.plan) {
                (Source::Folder(items), Some(plan)) => {
                    let list = (self.state.step..steps)
                        .map(|s| {
                            let idx = order[s * batch..((s + 1) * batch).min(n)].to_vec();
                            (idx, step_seed(cfg.train.seed, epoch, s) as u64)
                        })
                        .collect();
                    Some(folder::prefetch(plan, items.clone(), list, 4))
                }
                _ => None,
            };
            let flush = |w: &mut Worker, loss_acc: &mut Tensor, correct_acc: &mut Tensor| {
                w.state.loss_sum += loss_acc.double_value(&[]);
                w.state.correct += correct_acc.double_value(&[]);
                let _ = loss_acc.zero_();
                let _ = correct_acc.zero_();
            };
            while self.state.step < steps {
                if let Flow::Stop { save } = self.poll(sink)? {
                    flush(self, &mut loss_acc, &mut correct_acc);
                    self.check_finite()?;
                    if save {
                        self.checkpoint(sink, CheckpointReason::Stop)?;
                    }
                    finish_reason = "stopped by the user".into();
                    break 'epochs;
                }
                let step = self.state.step;
                let idx = &order[step * batch..((step + 1) * batch).min(n)];
                let seed = step_seed(cfg.train.seed, epoch, step);
                tch::manual_seed(seed);
                let (x, y) = match &prefetched {
                    Some(rx) => rx
                        .recv()
                        .expect("the prefetch thread lives while its receiver does")?
                        .to_tensors(dev),
                    None => self.batches.get(&self.data.train, idx, true, seed as u64)?,
                };
                let x = self.train_aug.train(&x);
                let (loss, correct) = train_step(
                    &self.model,
                    &mut self.sgd,
                    &self.batches,
                    &x,
                    &y,
                    self.state.schedule.lr,
                );
                let b = idx.len() as f64;
                let batch_loss = loss;
                loss_acc += &batch_loss;
                window_loss += &batch_loss;
                window_n += idx.len();
                correct_acc += correct;
                self.state.step += 1;
                self.state.global_step += 1;
                self.state.seen += b;
                let due = last_event.is_none_or(|(t, _)| t.elapsed() >= throttle);
                if due {
                    // The only host sync of a step, at most step-events-per-sec.
                    flush(self, &mut loss_acc, &mut correct_acc);
                    let loss = window_loss.double_value(&[]) / window_n as f64;
                    self.check_finite()?;
                    let now = Instant::now();
                    let ips = last_event
                        .map(|(t, s)| {
                            (self.state.global_step - s) as f64 * batch as f64 / now.duration_since(t).as_secs_f64()
                        })
                        .unwrap_or(0.0);
                    last_event = Some((now, self.state.global_step));
                    let _ = window_loss.zero_();
                    window_n = 0;
                    sink.emit(Event::Step {
                        epoch: epoch + 1,
                        step: self.state.step,
                        global_step: self.state.global_step,
                        loss,
                        lr: self.state.schedule.lr,
                        images_per_sec: ips,
                    });
                }
            }
            flush(self, &mut loss_acc, &mut correct_acc);
            self.check_finite()?;
            let val = eval::evaluate(
                &self.model,
                &self.batches,
                &self.data.val,
                std::slice::from_ref(&self.eval_aug),
                batch,
                &Default::default(),
            )?;
            let improved = self.state.schedule.is_best(val.top1);
            let decision = self.state.schedule.on_epoch(val.top1);
            let seen = self.state.seen.max(1.0);
            let stats = EpochStats {
                epoch: epoch + 1,
                train_loss: self.state.loss_sum / seen,
                train_acc: self.state.correct / seen,
                val,
                best_top1: self.state.schedule.best,
                lr: self.state.schedule.lr,
                seconds: started.elapsed().as_secs_f64(),
            };
            self.state.history.push(stats.clone());
            self.state.epoch += 1;
            self.state.step = 0;
            self.state.loss_sum = 0.0;
            self.state.correct = 0.0;
            self.state.seen = 0.0;
            sink.emit(Event::Epoch(stats));
            if let Decision::Decay(old, new) = decision {
                self.set_lr(sink, old, new, LrCause::Plateau);
            }
            if improved {
                self.checkpoint_or_warn(sink, CheckpointReason::Best);
            }
            let every = cfg.run.checkpoint_every;
            if every > 0 && (self.state.epoch.is_multiple_of(every) || self.state.epoch == cfg.train.epochs) {
                self.checkpoint_or_warn(sink, CheckpointReason::Epoch);
            }
            if decision == Decision::Stop {
                finish_reason = "validation accuracy stopped improving after the last lr decay".into();
                break;
            }
        }
        let test = if finish_reason.starts_with("stopped") {
            None
        } else {
            Some(eval::evaluate(
                &self.model,
                &self.batches,
                &self.data.test,
                std::slice::from_ref(&self.eval_aug),
                batch,
                &Default::default(),
            )?)
        };
        sink.emit(Event::Finished {
            reason: finish_reason,
            test,
        });
        Ok(())
    }
}
