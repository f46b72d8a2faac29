//! Data parallelism over a process group, as the training loop asks for it:
//! each rank takes its share of every global batch (`share`) and of the
//! evaluation splits (`shard`); the ranks start from rank 0's weights
//! (`broadcast`), sum their gradients before every update (`reduce`) and
//! agree at every step boundary on what rank 0's faces asked for and on a
//! stop (`agree`). A single-process run has no `DataParallel` and pays
//! nothing.
use super::{Overlap, ProcessGroup};
use anyhow::{bail, Result};
use std::time::{Duration, Instant};
use tch::{Kind, Tensor};

/// Gradients (and weights) travel in flat buckets of at most this many
/// bytes, as DDP's default.
const BUCKET_BYTES: i64 = 25 << 20;

/// The rendezvous store's key for the run's directory: an elastic restart
/// resumes the run it names.
const RUN_KEY: &str = "vggtrain/run";

/// How long the other ranks wait for rank 0's work on its own disk
/// (opening the run, saving a checkpoint, writing its records), unless
/// `--dist-timeout` is longer: a slow disk, or a 1 GB checkpoint, is no
/// lost peer.
const RANK0_DISK: Duration = Duration::from_secs(30 * 60);

/// What rank 0 says at a step boundary; the others only ever say `Go` or
/// `Stop` (a signal or their face asked).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Signal {
    Go,
    /// Rank 0 is paused: the others wait, and ask again.
    Paused,
    Stop {
        save: bool,
    },
}

/// The terms of a step: what one rank brings to the step boundary (its
/// own images; only rank 0's schedule counts), and what the ranks agree on
/// (`agree`: rank 0's schedule and signal, a stop when any rank asked for
/// one, the images of the whole batch).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Terms {
    pub lr: f64,
    pub decays_used: u32,
    pub since_best: u32,
    pub signal: Signal,
    /// Images of the batch, and those of them that could not be decoded
    /// (left out).
    pub images: usize,
    pub skipped: usize,
    /// Rank 0's face asked for a checkpoint: every rank waits for rank 0
    /// to save it after this boundary (`after_rank0`).
    pub save: bool,
}

pub struct DataParallel {
    /// The parameters' hooks, from the second step on (declared before
    /// the group: dropped first, as it uses the group).
    overlap: Option<Overlap>,
    /// Whether gradients are summed while backward runs (else after it).
    pub overlapped: bool,
    group: ProcessGroup,
    /// Time spent summing gradients, since the start.
    pub reduce_time: Duration,
}

impl DataParallel {
    pub fn new(group: ProcessGroup) -> DataParallel {
        DataParallel {
            overlap: None,
            overlapped: true,
            group,
            reduce_time: Duration::ZERO,
        }
    }

    pub fn rank(&self) -> usize {
        self.group.rank
    }

    pub fn world(&self) -> usize {
        self.group.world
    }

    /// "2 ranks over c10d (gloo)", or on CUDA "2 ranks over c10d (nccl;
    /// gloo for the step's control)".
    pub fn describe(&self, cuda: bool) -> String {
        match cuda {
            true => format!(
                "{} ranks over c10d ({}; gloo for the step's control)",
                self.world(),
                self.group.cuda_backend()
            ),
            false => format!("{} ranks over c10d (gloo)", self.world()),
        }
    }

    /// This rank's part of a global batch: the rank-th of `world`
    /// near-equal consecutive parts (all of them, in order, are the batch).
    pub fn share<T: Clone>(&self, batch: &[T]) -> Vec<T> {
        let (r, w, n) = (self.rank(), self.world(), batch.len());
        batch[r * n / w..(r + 1) * n / w].to_vec()
    }

    /// This rank's images of an evaluation split of `n`: every world-th,
    /// from its rank.
    pub fn shard(&self, n: usize) -> Vec<usize> {
        (self.rank()..n).step_by(self.world()).collect()
    }

    /// Gives every rank rank 0's values of `tensors`, in place.
    pub fn broadcast(&self, tensors: &[Tensor]) -> Result<()> {
        bucketed(tensors, |flat| self.group.broadcast(flat, 0))
    }

    /// Sums the gradients of `params` over the ranks, and `stats` with
    /// them, in place. The first time after backward; then (`overlapped`)
    /// the parameters are hooked, and later sums start while backward runs:
    /// this waits for them.
    pub fn reduce(&mut self, params: &[Tensor], stats: &mut Tensor) -> Result<()> {
        let started = Instant::now();
        match &mut self.overlap {
            Some(o) => self.group.finish(o)?,
            None => {
                let grads: Vec<Tensor> = params.iter().map(Tensor::grad).collect();
                if grads.iter().any(|g| !g.defined()) {
                    bail!("a parameter has no gradient to reduce");
                }
                bucketed(&grads, |flat| self.group.all_reduce_sum(flat))?;
                if self.overlapped {
                    // Filled in the order backward finishes the gradients.
                    let reversed: Vec<Tensor> = params.iter().rev().map(Tensor::shallow_clone).collect();
                    let total: i64 = params.iter().map(bytes).sum();
                    let cap = (total / 8).clamp(1 << 18, BUCKET_BYTES);
                    self.overlap = Some(self.group.overlap(&buckets(&reversed, cap))?);
                }
            }
        }
        self.group.all_reduce_sum(stats)?;
        self.reduce_time += started.elapsed();
        Ok(())
    }

    /// Sums `t` over the ranks, in place (evaluation counts).
    pub fn sum(&self, t: &mut Tensor) -> Result<()> {
        self.group.all_reduce_sum(t)
    }

    /// The step boundary: every rank brings its terms, all leave with the
    /// same agreed ones.
    pub fn agree(&self, p: &Terms) -> Result<Terms> {
        let leader = self.rank() == 0;
        let (code, stop) = match p.signal {
            Signal::Go => (0.0, 0.0),
            Signal::Paused => (1.0, 0.0),
            Signal::Stop { save: false } => (2.0, 1.0),
            Signal::Stop { save: true } => (3.0, 1.0),
        };
        let mine = if leader {
            [
                p.lr,
                p.decays_used as f64,
                p.since_best as f64,
                code,
                stop,
                p.images as f64,
                p.skipped as f64,
                f64::from(u8::from(p.save)),
            ]
        } else {
            [0.0, 0.0, 0.0, 0.0, stop, p.images as f64, p.skipped as f64, 0.0]
        };
        let mut t = Tensor::from_slice(&mine);
        self.group.all_reduce_sum(&mut t)?;
        let v = Vec::<f64>::try_from(&t)?;
        let signal = match v[3] as u32 {
            2 => Signal::Stop { save: false },
            3 => Signal::Stop { save: true },
            // Another rank's stop (a signal): saved, as a signal's is.
            _ if v[4] > 0.0 => Signal::Stop { save: true },
            1 => Signal::Paused,
            _ => Signal::Go,
        };
        Ok(Terms {
            lr: v[0],
            decays_used: v[1] as u32,
            since_best: v[2] as u32,
            signal,
            images: v[5] as usize,
            skipped: v[6] as usize,
            save: v[7] > 0.0,
        })
    }

    /// How long the others wait for rank 0's disk (`RANK0_DISK`).
    fn disk_bound(&self) -> Duration {
        RANK0_DISK.max(self.group.timeout())
    }

    /// The ranks meet after rank 0's work on its own disk (`work`, which
    /// only rank 0 does: the others wait for it up to `RANK0_DISK`, not
    /// `--dist-timeout`); when it failed, every rank fails (the others
    /// saying so, rank 0 with its own error).
    pub fn after_rank0(&self, work: Result<()>) -> Result<()> {
        let failed = self.rank() == 0 && work.is_err();
        let mut t = Tensor::from_slice(&[i64::from(failed)]);
        let met = self.group.all_reduce_sum_within(&mut t, self.disk_bound());
        work?;
        met?;
        if t.int64_value(&[0]) > 0 {
            bail!(
                "rank 0 could not write the run's files (its error is in its log and on its \
                 standard error); rank {} stops with it",
                self.rank()
            );
        }
        Ok(())
    }

    /// Every rank learns the run's directory from rank 0 (which gives it:
    /// `run`, once it has opened it, however long its disk takes), names it
    /// in its errors, and rank 0 names it in the store for an elastic
    /// restart.
    pub fn share_run(&mut self, run: Option<&std::path::Path>) -> Result<std::path::PathBuf> {
        let dir = std::path::PathBuf::from(self.share_text(&run.map(|r| r.to_string_lossy()).unwrap_or_default())?);
        if self.rank() == 0 {
            self.group.store_set(RUN_KEY, &dir.to_string_lossy())?;
        }
        self.group.run = Some(dir.clone());
        Ok(dir)
    }

    /// Every rank's copy of rank 0's `text` (the others' is ignored).
    fn share_text(&self, text: &str) -> Result<String> {
        let mut len = Tensor::from_slice(&[text.len() as i64]);
        self.group.broadcast_within(&mut len, 0, self.disk_bound())?;
        let n = len.int64_value(&[0]) as usize;
        let mut bytes = if self.rank() == 0 {
            Tensor::from_slice(text.as_bytes())
        } else {
            Tensor::zeros([n as i64], (Kind::Uint8, tch::Device::Cpu))
        };
        self.group.broadcast(&mut bytes, 0)?;
        Ok(String::from_utf8(Vec::<u8>::try_from(&bytes)?)?)
    }

    /// Rank 0 checks that every rank starts from the same place (`at`: the
    /// global step and the parameter count): ranks that resumed from
    /// different checkpoints are an error on every rank.
    pub fn check_same_start(&self, at: [i64; 2]) -> Result<()> {
        let mut theirs = Tensor::from_slice(&at);
        self.group.broadcast(&mut theirs, 0)?;
        let rank0 = Vec::<i64>::try_from(&theirs)?;
        let mut differ = Tensor::from_slice(&[i64::from(rank0 != at)]);
        self.group.all_reduce_sum(&mut differ)?;
        let n = differ.int64_value(&[0]);
        if n > 0 {
            bail!(
                "{n} rank(s) start from another place than rank 0 (global step {}, {} parameters; \
                 this rank: step {}, {} parameters): every rank must see the same run directory \
                 and checkpoints",
                rank0[0],
                rank0[1],
                at[0],
                at[1]
            );
        }
        Ok(())
    }

    /// The run an earlier attempt of this launch published, if any.
    pub fn published_run(&self) -> Result<Option<std::path::PathBuf>> {
        Ok(self.group.store_get(RUN_KEY)?.map(Into::into))
    }
}

/// Runs the collective `op` on `tensors` a flat bucket at a time, each
/// tensor taking its part of the result in place.
fn bucketed(tensors: &[Tensor], op: impl Fn(&mut Tensor) -> Result<()>) -> Result<()> {
    tch::no_grad(|| {
        for bucket in buckets(tensors, BUCKET_BYTES) {
            let mut flat = flatten(bucket);
            op(&mut flat)?;
            unflatten(&flat, bucket);
        }
        Ok(())
    })
}

fn bytes(t: &Tensor) -> i64 {
    t.numel() as i64 * t.kind().elt_size_in_bytes() as i64
}

/// Consecutive tensors of at most `cap` bytes (one alone may pass it). The
/// sums after backward use `BUCKET_BYTES`; the overlapped ones an eighth
/// of the gradients, between 256 KB and `BUCKET_BYTES` (full VGG16's 528 MB
/// in 25 MB buckets, as DDP's; a small network still gets several, or its
/// one bucket would wait for the whole backward pass; a sixteenth was 4%
/// slower over 1 Gbit/s, each sum's own cost: BENCHMARKS.md).
fn buckets(tensors: &[Tensor], cap: i64) -> Vec<&[Tensor]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, t) in tensors.iter().enumerate() {
        let b = self::bytes(t);
        if i > start && bytes + b > cap {
            out.push(&tensors[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += b;
    }
    if start < tensors.len() {
        out.push(&tensors[start..]);
    }
    out
}

fn flatten(ts: &[Tensor]) -> Tensor {
    Tensor::cat(&ts.iter().map(|t| t.reshape([-1])).collect::<Vec<_>>(), 0)
}

fn unflatten(flat: &Tensor, ts: &[Tensor]) {
    let mut at = 0;
    for t in ts {
        let n = t.numel() as i64;
        let mut t = t.shallow_clone();
        t.copy_(&flat.narrow(0, at, n).view_as(&t));
        at += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_tensor_in_order_and_stay_small() {
        let big = BUCKET_BYTES / 4 / 2; // half a bucket of f32
        let ts: Vec<Tensor> = [big, big, 1, big * 3, 5]
            .iter()
            .map(|&n| Tensor::zeros([n], (Kind::Float, tch::Device::Cpu)))
            .collect();
        let sizes: Vec<Vec<i64>> = buckets(&ts, BUCKET_BYTES)
            .iter()
            .map(|b| b.iter().map(|t| t.numel() as i64).collect())
            .collect();
        assert_eq!(sizes, vec![vec![big, big], vec![1], vec![big * 3], vec![5]]);
    }

    #[test]
    fn flatten_then_unflatten_gives_the_tensors_back() {
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]);
        let b = Tensor::from_slice(&[5.0f32]);
        let flat = flatten(&[a.shallow_clone(), b.shallow_clone()]) * 2.0;
        unflatten(&flat, &[a.shallow_clone(), b.shallow_clone()]);
        assert_eq!(Vec::<f32>::try_from(a.view([-1])).unwrap(), [2.0, 4.0, 6.0, 8.0]);
        assert_eq!(Vec::<f32>::try_from(&b).unwrap(), [10.0]);
    }
}
