//! `bench --nproc-per-node N` (or under torchrun): each rank steps on its
//! share of the global batch with the gradients summed over the ranks, as
//! training does; rank 0 reports every rank's images/s, the total and the
//! all-reduce's share of the step time.
use super::{setup, sync, BenchArgs, Setup};
use crate::dist::DataParallel;
use crate::engine::{train_step, Reduce};
use anyhow::Result;
use serde::Serialize;
use std::time::Instant;
use tch::{Kind, Tensor};

#[derive(Debug, Serialize)]
pub struct ParallelReport {
    pub device: String,
    pub model: String,
    pub input: i64,
    /// The global batch; each rank steps on batch / world.
    pub batch: i64,
    pub world: usize,
    pub per_rank_images_per_sec: Vec<f64>,
    pub total_images_per_sec: f64,
    /// Of each rank's step time, the share spent summing gradients (the
    /// ranks' mean).
    pub all_reduce_share: f64,
    /// The gradients all-reduced each step.
    pub gradient_mb: f64,
    /// Whether the sums ran while backward did (else after it).
    pub overlap: bool,
}

pub fn run(a: &BenchArgs, dp: &mut DataParallel) -> Result<ParallelReport> {
    crate::dist::check_batch(a.batch, dp.world())?;
    let Setup {
        device,
        spec,
        net,
        mut sgd,
        batches,
        ..
    } = setup(a)?;
    let local = a.batch / dp.world() as i64;
    let x = Tensor::randn([local, 3, a.input, a.input], (Kind::Float, device));
    let y = Tensor::randint(10, [local], (Kind::Int64, device));
    let mut step = |dp: &mut DataParallel| -> Result<Tensor> {
        let reduce = Some(Reduce {
            dp,
            images: a.batch as usize,
        });
        Ok(train_step(&net, &mut sgd, &batches, &x, &y, 1e-3, reduce)?.0)
    };
    for _ in 0..a.warmup {
        sync(&step(dp)?);
    }
    let (start, reduced) = (Instant::now(), dp.reduce_time);
    for _ in 0..a.steps {
        sync(&step(dp)?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let share = (dp.reduce_time - reduced).as_secs_f64() / elapsed;
    // Every rank's numbers, summed into its own slot.
    let mut mine = Tensor::zeros([2, dp.world() as i64], (Kind::Double, tch::Device::Cpu));
    let _ = mine
        .get(0)
        .get(dp.rank() as i64)
        .fill_((local * a.steps as i64) as f64 / elapsed);
    let _ = mine.get(1).get(dp.rank() as i64).fill_(share);
    dp.sum(&mut mine)?;
    let all = Vec::<Vec<f64>>::try_from(&mine)?;
    let grad_bytes: i64 = sgd.params().iter().map(|p| p.numel() as i64 * 4).sum();
    Ok(ParallelReport {
        device: crate::device::describe(device),
        model: spec.describe(),
        input: a.input,
        batch: a.batch,
        world: dp.world(),
        total_images_per_sec: all[0].iter().sum(),
        all_reduce_share: all[1].iter().sum::<f64>() / dp.world() as f64,
        per_rank_images_per_sec: all[0].clone(),
        gradient_mb: grad_bytes as f64 / 1e6,
        overlap: dp.overlapped,
    })
}

impl ParallelReport {
    pub fn print(&self) {
        println!(
            "{} · {} · input {} · global batch {} over {} ranks, gradients summed {} backward",
            self.device,
            self.model,
            self.input,
            self.batch,
            self.world,
            if self.overlap { "during" } else { "after" }
        );
        for (rank, r) in self.per_rank_images_per_sec.iter().enumerate() {
            println!("rank {rank:<3}                {r:>10.1} img/s");
        }
        println!(
            "all ranks               {:>10.1} img/s; all-reduce of {:.1} MB of gradients {:.1}% of step time",
            self.total_images_per_sec,
            self.gradient_mb,
            100.0 * self.all_reduce_share
        );
    }
}
