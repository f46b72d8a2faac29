//! The training loop's side of a data-parallel run: the ranks start from
//! the same place and rank 0's weights, and agree at every step boundary
//! (see `crate::dist::DataParallel::agree`). Without ranks, a boundary is
//! the face's commands alone.
use super::{Boundary, Flow, Run, HEARTBEAT};
use crate::control::{CheckpointReason, Event, LrCause};
use crate::dist::{DataParallel, Signal, Terms};
use crate::engine::batches::Batch;
use anyhow::Result;
use tch::Tensor;

impl Run<'_> {
    /// Whether this process owns the run (the only one, or rank 0).
    pub(super) fn leader(&self) -> bool {
        crate::dist::leads(self.dp.as_ref())
    }

    /// Every rank resumed from the same step of the same network, and
    /// takes rank 0's weights (noted in `notes`); the run's world size is
    /// recorded, and a resume on another said not to be exact (each rank's
    /// randomness is its own).
    pub(super) fn join_ranks(&mut self, notes: &mut Vec<Event>) -> Result<()> {
        let world = self.dp.as_ref().map_or(1, DataParallel::world);
        if let Some(dp) = &self.dp {
            let state = &self.w.state;
            dp.check_same_start([state.global_step as i64, self.w.model.spec.parameter_count()])?;
            let all: Vec<Tensor> = self.w.variables().into_iter().map(|(_, t)| t).collect();
            dp.broadcast(&all)?;
            notes.push(Event::Log {
                message: format!("data-parallel: {}", dp.describe(self.w.batches.device.is_cuda())),
            });
        }
        let state = &mut self.w.state;
        if state.global_step > 0 && state.world != world {
            let message = format!(
                "warning: this run trained on {} rank(s) and resumes on {world}: each rank's dropout and \
                 augmentation differ from before, so the resume is not exact",
                state.world
            );
            notes.push(Event::Log { message });
        }
        state.world = world;
        Ok(())
    }

    /// Rank 0's work on its own disk (saving, writing the run's records),
    /// which every rank calls at the same point: the others wait for it on
    /// their own, longer bound (`DataParallel::after_rank0`), not
    /// `--dist-timeout`. In a single process, just the work.
    pub(super) fn rank0_alone(&mut self, work: impl FnOnce(&mut Self) -> Result<()>) -> Result<()> {
        let done = work(self);
        match &self.dp {
            Some(dp) => dp.after_rank0(done),
            None => done,
        }
    }

    /// Before an evaluation every rank takes rank 0's buffers (batch-norm
    /// statistics, which each rank updated on its own images), the ones
    /// its checkpoints hold.
    pub(super) fn take_rank0_buffers(&self) -> Result<()> {
        let Some(dp) = &self.dp else {
            return Ok(());
        };
        let buffers: Vec<Tensor> = self
            .w
            .variables()
            .into_iter()
            .filter_map(|(_, t)| (!t.requires_grad()).then_some(t))
            .collect();
        dp.broadcast(&buffers)
    }

    /// The step boundary after `poll`: alone, its flow; with other ranks,
    /// what they agree on (rank 0's schedule, pause and checkpoint asked
    /// for, which is saved here; a stop from any rank; the whole batch's
    /// images and those left out). `batch`: this rank's, if it has one;
    /// `waiting`: rank 0 is paused.
    pub(super) fn boundary(&mut self, flow: Flow, waiting: bool, batch: Option<&Batch>) -> Result<Boundary> {
        let (images, skipped) = batch.map_or((0, 0), |b| (b.len(), b.skipped));
        let Some(dp) = &self.dp else {
            return Ok(match flow {
                Flow::Stop { save } => Boundary::Stop { save },
                Flow::Continue => Boundary::Go { images, skipped },
            });
        };
        let s = &self.w.state.schedule;
        let signal = match flow {
            Flow::Stop { save } => Signal::Stop { save },
            Flow::Continue if waiting => Signal::Paused,
            Flow::Continue => Signal::Go,
        };
        let agreed = dp.agree(&Terms {
            lr: s.lr,
            decays_used: s.decays_used,
            since_best: s.since_best,
            signal,
            images,
            skipped,
            save: std::mem::take(&mut self.save_asked),
        })?;
        if !self.leader() {
            self.follow(&agreed);
        }
        // A stop that saves makes the checkpoint asked for.
        if agreed.save && agreed.signal != (Signal::Stop { save: true }) {
            self.rank0_alone(|r| r.save(CheckpointReason::Key, false))?;
        }
        Ok(match agreed.signal {
            Signal::Stop { save } => Boundary::Stop { save },
            Signal::Paused => {
                if waiting {
                    // Until a command comes, or it is time to tell the others again.
                    self.cmds.wait_for(HEARTBEAT);
                    if self.cmds.closed() {
                        // Nobody can resume us: carry on.
                        self.paused = false;
                        self.emit(Event::Resumed);
                    }
                }
                Boundary::Wait
            }
            Signal::Go => Boundary::Go {
                images: agreed.images,
                skipped: agreed.skipped,
            },
        })
    }

    /// A rank that follows takes rank 0's schedule, and notes in its log
    /// what changed at which global step.
    fn follow(&mut self, a: &Terms) {
        let global = self.w.state.global_step;
        let paused = a.signal == Signal::Paused;
        if paused != self.paused {
            self.paused = paused;
            let what = if paused { "paused" } else { "resumed" };
            self.log(format!("global step {global}: {what} by rank 0"));
        }
        let s = &mut self.w.state.schedule;
        (s.decays_used, s.since_best) = (a.decays_used, a.since_best);
        if a.lr != s.lr {
            let old = std::mem::replace(&mut s.lr, a.lr);
            self.set_lr(old, a.lr, LrCause::Manual);
            self.log(format!("global step {global}: lr {old:e} -> {:e} from rank 0", a.lr));
        }
    }
}
