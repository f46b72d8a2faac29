//! The training loop on the engine's thread: steps, validation, the
//! schedule, checkpoints and the commands of the faces, from a prepared
//! worker (see `prepare`) until the run ends.
use super::batches::Batches;
use super::checkpoint::{self, TrainState};
use super::commands::Commands;
use super::schedule::Decision;
use super::sgd::Sgd;
use super::Sink;
use crate::config::Config;
use crate::control::{
    CheckpointReason, Command, ConfigChange, EpochStats, EvalResult, Event, LrCause, LrMark, RunInfo,
};
use crate::data::{augment::Augment, augment::Normalise, Dataset};
use crate::dist::DataParallel;
use crate::eval::{self, Member, Protocol, Runner};
use crate::model::{Card, Vgg};
use anyhow::{bail, Result};
use std::{
    collections::HashSet,
    path::PathBuf,
    time::{Duration, Instant},
};
use tch::{nn::VarStore, Kind, Tensor};

mod ranks;
mod steps;

/// Commands applied at one step boundary, at most.
const COMMANDS_PER_STEP: usize = 16;

/// While rank 0 is paused, it tells the other ranks this often (well
/// within any collective's timeout).
const HEARTBEAT: Duration = Duration::from_millis(500);

/// The epoch's loss and correct counts, summed on the device: read back
/// (flushed into the state) at step events and before every checkpoint.
struct Sums {
    loss: Tensor,
    correct: Tensor,
}

impl Sums {
    fn new(device: tch::Device) -> Sums {
        Sums {
            loss: Tensor::zeros([], (Kind::Double, device)),
            correct: Tensor::zeros([], (Kind::Double, device)),
        }
    }

    fn flush(&mut self, state: &mut TrainState) {
        state.loss_sum += self.loss.double_value(&[]);
        state.correct += self.correct.double_value(&[]);
        let _ = self.loss.zero_();
        let _ = self.correct.zero_();
    }
}

enum Flow {
    Continue,
    Stop { save: bool },
}

/// What a step boundary decided (with the other ranks, in a data-parallel
/// run).
enum Boundary {
    /// Train the step, on a batch of `images` in all (`skipped` of it
    /// could not be decoded).
    Go {
        images: usize,
        skipped: usize,
    },
    /// Rank 0 is paused: poll again, keeping this rank's batch.
    Wait,
    Stop {
        save: bool,
    },
}

/// Everything the loop needs, built by `prepare` before the run directory
/// is touched.
pub struct Worker {
    pub cfg: Config,
    pub data: Dataset,
    pub model: Vgg,
    pub vs: VarStore,
    pub sgd: Sgd,
    pub state: TrainState,
    pub batches: Batches,
    pub train_aug: Augment,
    /// What the network is and how its input is made (in every checkpoint).
    pub card: Card,
    /// The evaluation's input normalisation (the card's).
    pub norm: Normalise,
    pub resumed_from: Option<PathBuf>,
    /// Events of the preparation, emitted after `started`.
    pub notes: Vec<Event>,
    /// Keys a resume changed, and the lr it set.
    pub changes: Vec<ConfigChange>,
    pub set_lr: Option<f64>,
}

/// A worker at work: the state of the loop besides the run's.
struct Run<'a> {
    w: Worker,
    sink: &'a mut Sink,
    cmds: Commands,
    paused: bool,
    last_good: Option<PathBuf>,
    /// The periodic checkpoint of the newest save, by global step.
    last_periodic: Option<(u64, PathBuf)>,
    /// best.safetensors as this process last wrote it, by global step.
    last_best: Option<(u64, PathBuf)>,
    /// Checkpoints known good (written or verified by this process).
    verified: HashSet<PathBuf>,
    sums: Sums,
    /// Undecodable training images skipped this epoch, and the first's error.
    skipped: usize,
    bad: Option<String>,
    /// The other ranks of a data-parallel run.
    dp: Option<DataParallel>,
    /// Steps this process has trained (the first are warm-up).
    stepped: u64,
    /// Rank 0's face asked for a checkpoint, to save after the next step
    /// boundary (with the other ranks waiting for it there).
    save_asked: bool,
}

impl Worker {
    /// The network's variables (weights and buffers) by name, sorted.
    fn variables(&self) -> Vec<(String, Tensor)> {
        let mut all: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Trains the run; with `dp`, as one of its ranks: rank 0 owns the run
    /// directory, the checkpoints and the faces, and its faces' commands
    /// reach the others at a step boundary; every rank takes its share of
    /// each batch and of the evaluations.
    pub fn run(self, sink: &mut Sink, cmds: Commands, mut notes: Vec<Event>, dp: Option<DataParallel>) -> Result<()> {
        let device = self.batches.device;
        let last_good = self.resumed_from.clone();
        let mut run = Run {
            w: self,
            sink,
            cmds,
            paused: false,
            last_good,
            last_periodic: None,
            last_best: None,
            verified: HashSet::new(),
            sums: Sums::new(device),
            skipped: 0,
            bad: None,
            dp,
            stepped: 0,
            save_asked: false,
        };
        run.join_ranks(&mut notes)?;
        run.rank0_alone(|r| r.start(notes))?;
        run.train()
    }
}

impl Run<'_> {
    fn emit(&mut self, e: Event) {
        self.sink.emit(e);
    }

    fn log(&mut self, message: String) {
        self.emit(Event::Log { message });
    }

    /// `started`, then what the preparation and the resume noted; an lr
    /// the resume sets is saved at once.
    fn start(&mut self, mut notes: Vec<Event>) -> Result<()> {
        let w = &self.w;
        let s = &w.state;
        let path = self.sink.run.path.clone();
        let info = RunInfo {
            name: path.file_name().unwrap_or_default().to_string_lossy().into_owned(),
            run_dir: path,
            model: w.model.spec.describe(),
            parameters: w.model.spec.parameter_count(),
            dataset: format!("{} ({})", w.data.name.as_str(), w.data.dir.display()),
            device: crate::device::describe(w.batches.device),
            classes: w.data.classes.clone(),
            epochs: w.cfg.train.epochs,
            steps_per_epoch: self.steps(),
            batch_size: w.cfg.train.batch_size,
            train_images: w.data.train.len(),
            val_images: w.data.val.len(),
            test_images: w.data.test.len(),
            lr: s.schedule.lr,
            max_decays: w.cfg.train.max_decays,
            start_epoch: s.epoch,
            start_step: s.step,
            resumed_from: w.resumed_from.clone(),
            decays_used: s.schedule.decays_used,
            history: s.history.clone(),
            world: self.dp.as_ref().map_or(1, DataParallel::world),
            lr_history: s
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
        self.emit(Event::Started(info));
        notes.append(&mut self.w.notes);
        for e in notes {
            self.emit(e);
        }
        if !self.w.changes.is_empty() {
            let changes = std::mem::take(&mut self.w.changes);
            self.emit(Event::ConfigChanged { changes });
        }
        if let Some(lr) = self.w.set_lr.take() {
            let old = self.w.state.schedule.lr;
            self.w.state.schedule.lr = lr;
            self.set_lr(old, lr, LrCause::Manual);
            self.save(CheckpointReason::Resume, true)?;
        }
        Ok(())
    }

    fn steps(&self) -> usize {
        self.w.data.train.len().div_ceil(self.w.cfg.train.batch_size as usize)
    }

    fn last_good(&self) -> String {
        self.last_good
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "none".into())
    }

    fn check_loss(&self) -> Result<()> {
        let s = &self.w.state;
        if !s.loss_sum.is_finite() {
            bail!(
                "loss became NaN at epoch {} step {}; last good checkpoint: {}",
                s.epoch + 1,
                s.step,
                self.last_good()
            );
        }
        Ok(())
    }

    /// The loss and every weight are finite (one device sync).
    fn check_finite(&self) -> Result<()> {
        self.check_loss()?;
        let bad = tch::no_grad(|| {
            self.w
                .vs
                .variables()
                .values()
                .map(|t| t.isfinite().logical_not().sum(Kind::Int64))
                .fold(Tensor::zeros([], (Kind::Int64, self.w.batches.device)), |a, b| a + b)
                .int64_value(&[])
        });
        if bad > 0 {
            let s = &self.w.state;
            bail!(
                "{bad} weights became NaN or infinite at epoch {} step {} (not saved); last good checkpoint: {}",
                s.epoch + 1,
                s.step,
                self.last_good()
            );
        }
        Ok(())
    }

    /// Saves this step: flushes the sums, refuses non-finite weights (the
    /// run fails), writes the file (a best of a step already saved is a hard
    /// link to it) and prunes. A failed write fails the run when `must`
    /// (stop, end), and is a warning otherwise.
    fn save(&mut self, reason: CheckpointReason, must: bool) -> Result<()> {
        self.sums.flush(&mut self.w.state);
        if !self.leader() {
            return Ok(());
        }
        self.check_finite()?;
        let dir = self.sink.run.checkpoints();
        let step = self.w.state.global_step;
        let path = match reason {
            CheckpointReason::Best => dir.join(checkpoint::BEST),
            _ => dir.join(checkpoint::periodic_name(step)),
        };
        // A file of this step already written: the same bytes, linked.
        let same_step = match reason {
            CheckpointReason::Best => &self.last_periodic,
            _ => &self.last_best,
        };
        let written = match same_step {
            Some((s, same)) if *s == step => checkpoint::link_atomic(same, &path),
            _ => {
                let weights = self.w.variables();
                self.w.state.loss_scale = self.w.sgd.scale_state();
                checkpoint::save(&path, &weights, &self.w.sgd.buffers(), &self.w.state, &self.w.card)
            }
        };
        if let Err(e) = written {
            if must {
                return Err(e);
            }
            self.log(format!("warning: checkpoint failed: {e:#}"));
            return Ok(());
        }
        if reason == CheckpointReason::Best {
            self.last_best = Some((step, path.clone()));
        } else {
            self.verified.insert(path.clone());
            for (d, to) in checkpoint::prune(&dir, self.w.cfg.run.keep_last, &mut self.verified) {
                self.log(format!(
                    "warning: moved a damaged checkpoint aside to {}: {}",
                    to.display(),
                    d.error
                ));
            }
            self.last_good = Some(path.clone());
            self.last_periodic = Some((step, path.clone()));
        }
        self.emit(Event::CheckpointSaved { path, reason });
        Ok(())
    }

    fn set_lr(&mut self, old: f64, new: f64, cause: LrCause) {
        let s = &mut self.w.state;
        s.lr_timeline.push((s.global_step, s.epoch, new, cause));
        let e = Event::LrChanged {
            old,
            new,
            cause,
            epoch: s.epoch,
            global_step: s.global_step,
            decays_used: s.schedule.decays_used,
        };
        self.emit(e);
    }

    /// Applies one command; Pause blocks in `poll` (without spinning) until
    /// Resume or Stop.
    fn apply(&mut self, c: Command) -> Result<Flow> {
        match c {
            Command::Pause if !self.paused => {
                self.paused = true;
                self.emit(Event::Paused);
            }
            Command::Resume if self.paused => {
                self.paused = false;
                self.emit(Event::Resumed);
            }
            Command::Pause | Command::Resume => {}
            Command::DecayLr => {
                let (old, new) = self.w.state.schedule.manual_decay();
                self.set_lr(old, new, LrCause::Manual);
            }
            Command::SetLr { lr } if lr > 0.0 && lr.is_finite() => {
                let old = self.w.state.schedule.lr;
                self.w.state.schedule.lr = lr;
                self.set_lr(old, lr, LrCause::Manual);
            }
            Command::SetLr { lr } => self.log(format!("ignored: lr {lr} is not a positive number")),
            // The other ranks are at the step boundary already: rank 0
            // saves after it, with them waiting for it (`boundary`).
            Command::SaveCheckpoint if self.dp.is_some() => self.save_asked = true,
            Command::SaveCheckpoint => self.save(CheckpointReason::Key, false)?,
            Command::Stop { save } => return Ok(Flow::Stop { save }),
        }
        Ok(Flow::Continue)
    }

    /// The commands waiting at a step boundary (all of them while paused,
    /// but for a data-parallel run, whose boundary waits while paused). A
    /// dropped command channel (no face left) never stops training. A rank
    /// that follows takes only a stop.
    fn poll(&mut self) -> Result<Flow> {
        if !self.leader() {
            return Ok(match self.cmds.stop_requested() {
                true => Flow::Stop { save: true },
                false => Flow::Continue,
            });
        }
        let blocking = self.dp.is_none();
        let (mut applied, mut saved) = (0, false);
        loop {
            // A flood of commands cannot hold training up.
            if !self.paused && applied == COMMANDS_PER_STEP {
                return Ok(Flow::Continue);
            }
            let next = if self.paused && blocking {
                let next = self.cmds.wait();
                if next.is_none() {
                    // Nobody can resume us: carry on.
                    self.paused = false;
                    self.emit(Event::Resumed);
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
                    if let Flow::Stop { save } = self.apply(c)? {
                        return Ok(Flow::Stop { save });
                    }
                }
                None if !self.paused || !blocking => return Ok(Flow::Continue),
                None => {}
            }
        }
    }

    /// Ends the run on a stop request: a checkpoint of the last finished
    /// step when asked, then `finished`.
    fn stop(&mut self, save: bool) -> Result<()> {
        if save {
            self.rank0_alone(|r| r.save(CheckpointReason::Stop, true))?;
        }
        self.emit(Event::Finished {
            reason: "stopped by the user".into(),
            test: None,
        });
        Ok(())
    }

    /// A pass was abandoned for a stop request: take it (and the commands
    /// before it) and stop.
    fn take_stop(&mut self) -> Result<()> {
        loop {
            if let Flow::Stop { save } = self.poll()? {
                return self.stop(save);
            }
        }
    }

    /// Evaluates the validation (or test) split, one centre crop at the
    /// test scale; None when a stop asked. Ranks each take their shard and
    /// sum the counts; they finish the pass (a stop waits for the next
    /// step boundary).
    fn evaluate(&mut self, test: bool) -> Result<Option<EvalResult>> {
        self.take_rank0_buffers()?;
        let w = &self.w;
        let source = if test { &w.data.test } else { &w.data.val };
        let cmds = &mut self.cmds;
        let member = Member {
            model: &w.model,
            norm: &w.norm,
        };
        let run = Runner {
            batches: &w.batches,
            chunk: w.cfg.train.batch_size as usize,
        };
        let images = match &self.dp {
            Some(dp) => dp.shard(source.len()),
            None => (0..source.len()).collect(),
        };
        let alone = self.dp.is_none();
        let mut stop = || alone && cmds.stop_requested();
        let protocol = Protocol::single(w.card.test_scale);
        let Some(mut metrics) = eval::measure(&[member], source, &images, &protocol, &run, &mut stop, &mut |_| {})?
        else {
            return Ok(None);
        };
        if let Some(dp) = &self.dp {
            metrics.sum_with(&mut |t| dp.sum(t))?;
        }
        metrics.finish().map(Some)
    }

    fn train(&mut self) -> Result<()> {
        // The schedule's stop is in the state: a resumed run it ended ends.
        while self.w.state.epoch < self.w.cfg.train.epochs && !self.w.state.schedule.stopped {
            if !self.epoch()? {
                return Ok(());
            }
        }
        let reason = if self.w.state.schedule.stopped {
            "validation accuracy stopped improving after the last lr decay".into()
        } else {
            format!("{} epochs done", self.w.cfg.train.epochs)
        };
        // The run's end leaves a checkpoint to resume (or train longer) from.
        self.rank0_alone(|r| {
            if r.last_periodic.as_ref().map(|(s, _)| *s) == Some(r.w.state.global_step) {
                return Ok(());
            }
            r.save(CheckpointReason::End, true)
        })?;
        match self.evaluate(true)? {
            Some(test) => {
                self.emit(Event::Finished {
                    reason,
                    test: Some(test),
                });
                Ok(())
            }
            None => self.take_stop(),
        }
    }

    /// Trains the rest of the current epoch, then validates it and applies
    /// the schedule and the checkpoint cadence; false when a stop request
    /// ended it.
    fn epoch(&mut self) -> Result<bool> {
        let started = Instant::now();
        let device = self.w.batches.device;
        crate::native::cuda_peak_bytes(device, true);
        if !self.steps_of_epoch()? {
            return Ok(false);
        }
        self.sums.flush(&mut self.w.state);
        self.check_loss()?;
        let Some(val) = self.evaluate(false)? else {
            self.take_stop()?;
            return Ok(false);
        };
        let s = &mut self.w.state;
        let improved = s.schedule.is_best(val.top1);
        let decision = s.schedule.on_epoch(val.top1);
        let seen = s.seen.max(1.0);
        let stats = EpochStats {
            epoch: s.epoch + 1,
            train_loss: s.loss_sum / seen,
            train_acc: s.correct / seen,
            val,
            best_top1: s.schedule.best,
            lr: s.schedule.lr,
            seconds: started.elapsed().as_secs_f64(),
            skipped_steps: s.skipped_steps,
            peak_gpu_bytes: crate::native::cuda_peak_bytes(device, false),
        };
        s.history.push(stats.clone());
        crate::control::compact_history(&mut s.history);
        s.epoch += 1;
        s.step = 0;
        (s.loss_sum, s.correct, s.seen) = (0.0, 0.0, 0.0);
        self.rank0_alone(|r| r.close_epoch(stats, decision, improved))?;
        Ok(true)
    }

    /// The end of an epoch on rank 0's disk: its event (and the run's
    /// records), the schedule's decay, and the checkpoints due.
    fn close_epoch(&mut self, stats: EpochStats, decision: Decision, improved: bool) -> Result<()> {
        let epoch = self.w.state.epoch;
        self.emit(Event::Epoch(stats));
        if self.skipped > 0 {
            let first = self.bad.take().unwrap_or_default();
            self.log(format!(
                "epoch {epoch}: skipped {} undecodable training images (first: {first})",
                self.skipped
            ));
            self.skipped = 0;
        }
        if let Decision::Decay(old, new) = decision {
            self.set_lr(old, new, LrCause::Plateau);
        }
        let every = self.w.cfg.run.checkpoint_every;
        if every > 0 && (epoch.is_multiple_of(every) || epoch == self.w.cfg.train.epochs) {
            self.save(CheckpointReason::Epoch, false)?;
        }
        if improved {
            self.save(CheckpointReason::Best, false)?;
        }
        Ok(())
    }
}
