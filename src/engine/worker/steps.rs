//! The steps of an epoch: this rank's part of each batch in the epoch's
//! order, the boundary (commands, the other ranks), the step, and the
//! throttled step events.
use super::{Boundary, Flow, Run};
use crate::control::Event;
use crate::data;
use crate::dist::DataParallel;
use crate::engine::batches::{Batch, Fetch};
use crate::engine::{train_step, Reduce};
use anyhow::{bail, Result};
use std::time::{Duration, Instant};
use tch::{Kind, Tensor};

/// A step's randomness (dropout, augmentation) is a function of the seed,
/// the epoch and the step: resuming needs no generator state.
fn step_seed(seed: u64, epoch: usize, step: usize) -> i64 {
    let mut rng = data::SplitMix(seed ^ ((epoch as u64) << 32) ^ step as u64);
    (rng.next() >> 1) as i64
}

/// A rank's randomness of a step (its dropout masks, its images'
/// augmentation): rank 0's is a single process's.
fn rank_seed(step_seed: i64, rank: usize) -> i64 {
    step_seed.wrapping_add(rank as i64) & i64::MAX
}

fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    data::SplitMix(seed.wrapping_add(0xe90c ^ epoch as u64)).next()
}

/// Steps a process takes before its images/s count.
const WARMUP_STEPS: u64 = 3;

/// The loss since the last step event, and when that was.
struct Window {
    loss: Tensor,
    images: usize,
    last: Option<(Instant, u64)>,
    every: Duration,
}

impl Run<'_> {
    /// The epoch's batches from the current step: this rank's part of each,
    /// and its seed.
    fn epoch_list(&self) -> Vec<(Vec<usize>, u64)> {
        let cfg = &self.w.cfg;
        let (batch, seed) = (cfg.train.batch_size as usize, cfg.train.seed);
        let (n, epoch) = (self.w.data.train.len(), self.w.state.epoch);
        let order = self.w.data.train.order(epoch_seed(seed, epoch));
        let rank = self.dp.as_ref().map_or(0, DataParallel::rank);
        (self.w.state.step..self.steps())
            .map(|s| {
                let batch = &order[s * batch..((s + 1) * batch).min(n)];
                let idx = match &self.dp {
                    Some(dp) => dp.share(batch),
                    None => batch.to_vec(),
                };
                (idx, rank_seed(step_seed(seed, epoch, s), rank) as u64)
            })
            .collect()
    }

    /// The epoch's remaining steps; false when a stop request ended it.
    pub(super) fn steps_of_epoch(&mut self) -> Result<bool> {
        let steps = self.steps();
        let mut stream = self.w.batches.stream(&self.w.data.train, self.epoch_list());
        let dev = self.w.batches.device;
        self.sums = super::Sums::new(dev);
        let mut window = Window {
            loss: Tensor::zeros([], (Kind::Double, dev)),
            images: 0,
            last: None,
            every: Duration::from_secs_f64(1.0 / self.w.cfg.train.step_events_per_sec),
        };
        // This rank's batch of the step, held while rank 0 is paused.
        let mut held = None;
        while self.w.state.step < steps {
            let flow = self.poll()?;
            // Rank 0 paused in a data-parallel run: the ranks wait together.
            let waiting = matches!(flow, Flow::Continue) && self.paused && self.leader();
            if matches!(flow, Flow::Continue) && !waiting && held.is_none() {
                let cmds = &mut self.cmds;
                held = match stream.next(&mut || cmds.stop_requested()) {
                    Fetch::Batch(b) => Some(b?),
                    // The poll at the top of the loop takes the stop.
                    Fetch::Stopped => continue,
                    Fetch::Done => bail!(
                        "the training data ended before step {} of {steps}",
                        self.w.state.step + 1
                    ),
                };
            }
            let (images, skipped) = match self.boundary(flow, waiting, held.as_ref())? {
                Boundary::Stop { save } => {
                    self.stop(save)?;
                    return Ok(false);
                }
                Boundary::Wait => continue,
                Boundary::Go { images, skipped } => (images, skipped),
            };
            let b = held.take().expect("a batch unless stopping or waiting");
            self.skipped += skipped;
            self.learn(b, images, &mut window)?;
        }
        Ok(true)
    }

    /// One step on this rank's `b` of a batch of `images`, and its event
    /// when one is due (the first undecodable image's error is this rank's).
    fn learn(&mut self, b: Batch, images: usize, window: &mut Window) -> Result<()> {
        let (seed, epoch, step) = (self.w.cfg.train.seed, self.w.state.epoch, self.w.state.step);
        let rank = self.dp.as_ref().map_or(0, DataParallel::rank);
        tch::manual_seed(rank_seed(step_seed(seed, epoch, step), rank));
        if self.bad.is_none() {
            self.bad = b.bad.clone();
        }
        self.w.state.step += 1;
        self.w.state.global_step += 1;
        self.stepped += 1;
        if self.stepped == 2 {
            if let Some(why) = crate::native::bias_relu_fallback() {
                self.log(format!(
                    "the one-pass CUDA bias + ReLU failed; plain ops serve instead: {why}"
                ));
            }
        }
        if images == 0 {
            // Every image of the batch was undecodable: nothing to learn.
            return Ok(());
        }
        let w = &mut self.w;
        let x = if b.is_empty() {
            b.x.shallow_clone()
        } else {
            w.train_aug.train(&b.x)
        };
        let reduce = self.dp.as_mut().map(|dp| Reduce { dp, images });
        let (loss, correct) = train_step(&w.model, &mut w.sgd, &w.batches, &x, &b.y, w.state.schedule.lr, reduce)?;
        self.sums.loss += &loss;
        self.sums.correct += correct;
        window.loss += &loss;
        window.images += images;
        self.w.state.seen += images as f64;
        // The epoch's last step always reports, so every curve reaches it.
        let last = self.w.state.step == self.steps();
        if last || window.last.is_none_or(|(t, _)| t.elapsed() >= window.every) {
            self.step_event(window)?;
        }
        Ok(())
    }

    /// The only host sync of a step, at most step-events-per-sec.
    fn step_event(&mut self, window: &mut Window) -> Result<()> {
        self.sums.flush(&mut self.w.state);
        let loss = window.loss.double_value(&[]) / window.images as f64;
        self.check_loss()?;
        self.skipped_steps();
        let now = Instant::now();
        let global = self.w.state.global_step;
        let batch = self.w.cfg.train.batch_size as f64;
        // The rate (and so the ETA) leaves out windows that hold one of
        // this process's first steps: cuDNN's autotuning, the allocator's
        // growth.
        let ips = window
            .last
            .filter(|(_, s)| self.stepped - (global - s) >= WARMUP_STEPS)
            .map(|(t, s)| (global - s) as f64 * batch / now.duration_since(t).as_secs_f64())
            .unwrap_or(0.0);
        window.last = Some((now, global));
        let _ = window.loss.zero_();
        window.images = 0;
        self.emit(Event::Step {
            epoch: self.w.state.epoch + 1,
            step: self.w.state.step,
            global_step: global,
            loss,
            lr: self.w.state.schedule.lr,
            images_per_sec: ips,
        });
        Ok(())
    }

    /// fp16's steps skipped for an inf or NaN since the last step event,
    /// counted in the state and logged.
    fn skipped_steps(&mut self) {
        let n = self.w.sgd.take_skipped();
        if n > 0 {
            self.w.state.skipped_steps += n;
            let scale = self.w.sgd.scale_state().map_or(0.0, |s| s.scale);
            self.log(format!(
                "fp16: {n} step(s) skipped for an inf or NaN in the gradients ({} in the run); loss scale now {scale}",
                self.w.state.skipped_steps
            ));
        }
    }
}
