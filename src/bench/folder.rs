//! `vggtrain bench --folder DIR`: the training input pipeline on a real
//! ImageNet-style folder (decode, rescale to S, random crop, as training
//! does), data only at each thread count, then end to end with the model
//! through the engine's own prefetching batch stream.
use super::rate;
use crate::config::{Config, DatasetName};
use crate::data::{augment::Augment, augment::Stats, folder, shards, shards::Member, Source};
use crate::engine::{self, batches::Fetch, sgd::Sgd, Batches};
use crate::model::Vgg;
use anyhow::{bail, Result};
use serde::Serialize;
use std::{path::Path, sync::Arc, time::Instant};
use tch::{Device, Tensor};

#[derive(Debug, Serialize)]
pub struct FolderReport {
    pub dir: String,
    /// "folder" (class folders) or "shards" (tar shards).
    pub format: &'static str,
    pub images: usize,
    pub mean_file_kb: f64,
    pub scale: u32,
    pub threads: Vec<Threads>,
    /// The decoding threads end to end (`data.workers` on the device).
    pub workers: usize,
    pub end_to_end_images_per_sec: f64,
    pub end_to_end_over_compute: f64,
    pub data_wait_share: f64,
}

#[derive(Debug, Serialize)]
pub struct Threads {
    pub threads: usize,
    pub images_per_sec: f64,
    pub mb_per_sec: f64,
}

/// 1, 2, 4, ... threads, and all of them.
fn thread_counts(all: usize) -> Vec<usize> {
    let mut v: Vec<usize> = std::iter::successors(Some(1), |n| Some(n * 2))
        .take_while(|&n| n < all)
        .collect();
    v.push(all);
    v
}

/// The model's step, as `super::run` built it.
pub struct Model<'a> {
    pub net: &'a Vgg,
    pub sgd: &'a mut Sgd,
    pub cfg: &'a Config,
    pub device: Device,
    /// Compute-only images/s, for the ratio.
    pub compute: f64,
}

/// What to time: the folder, S, the crop, and `data.workers` end to end.
pub struct Shape {
    pub scale: u32,
    pub crop: i64,
    pub batch: i64,
    pub steps: usize,
    pub warmup: usize,
    pub workers: usize,
}

pub fn run(dir: &Path, shape: Shape, m: Model) -> Result<FolderReport> {
    let Shape {
        scale,
        crop,
        batch,
        steps,
        warmup,
        workers,
    } = shape;
    if (scale as i64) < crop {
        bail!("--scale {scale} is below the crop --input {crop}: S must be at least the crop");
    }
    let split = if dir.join("train").is_dir() {
        dir.join("train")
    } else {
        dir.to_owned()
    };
    // Tar shards when the split holds them (`vggtrain pack`), else class folders.
    let tars = std::fs::read_dir(&split)
        .map_err(|e| anyhow::anyhow!("{}: {e}", split.display()))?
        .any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "tar")));
    let (files, starts) = if tars {
        shards::scan(&split)?
    } else {
        (folder::scan(&split)?.1, Vec::new())
    };
    if files.len() < batch as usize {
        bail!(
            "{}: {} images, fewer than one batch of {batch}",
            split.display(),
            files.len()
        );
    }
    let bytes: u64 = files
        .iter()
        .filter_map(|(m, _)| match m {
            Member::File(p) => std::fs::metadata(p).ok().map(|m| m.len()),
            Member::Tar { len, .. } => Some(*len),
        })
        .sum();
    let mean_bytes = bytes as f64 / files.len() as f64;
    let items = folder::Items {
        files: Arc::new(files),
        shards: Arc::new(starts),
    };
    let all = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let plan = |threads| folder::Plan {
        scale: [scale as i64, scale as i64],
        test_scale: scale as i64,
        crop,
        skip_bad: false,
        pool: folder::pool(threads),
    };
    let idx: Vec<usize> = (0..items.len()).collect();
    let pass = |plan: &folder::Plan| -> Result<f64> {
        let start = Instant::now();
        for chunk in idx.chunks(batch as usize) {
            plan.batch(&items, chunk, true, 1)?;
        }
        Ok(idx.len() as f64 / start.elapsed().as_secs_f64())
    };
    pass(&plan(all))?; // the page cache, warm
    let mut threads = Vec::new();
    for n in thread_counts(all) {
        let ips = pass(&plan(n))?;
        threads.push(Threads {
            threads: n,
            images_per_sec: ips,
            mb_per_sec: ips * mean_bytes / 1e6,
        });
    }

    // End to end: the engine's stream (decoding ahead on data.workers
    // threads) and the training step, as a run at this S and crop does.
    let mut cfg = m.cfg.clone();
    cfg.data.dataset = DatasetName::Folder;
    cfg.data.scale = [scale as i64, scale as i64];
    cfg.data.workers = workers;
    let batches = Batches::new(&cfg, crop, m.device);
    let source = Source::Folder(items.clone());
    let per_epoch = items.len() / batch as usize;
    let list: Vec<(Vec<usize>, u64)> = (0..warmup + steps)
        .map(|s| {
            let at = (s % per_epoch) * batch as usize;
            (idx[at..at + batch as usize].to_vec(), s as u64)
        })
        .collect();
    let stats = Stats::from_images(
        &plan(all)
            .batch(&items, &idx[..batch as usize], false, 0)?
            .to_tensors(m.device)
            .0,
        cfg.data.pca_source,
    );
    let aug = Augment::new(&cfg.data, &stats, 0, None, batches.device);
    // Started after the statistics: no batch is decoded before the clock runs.
    let mut stream = batches.stream(&source, list);
    let mut failed = None;
    let e2e = rate(batch, warmup, steps, || match stream.next(&mut || false) {
        Fetch::Batch(Ok(b)) => engine::step_alone(m.net, m.sgd, &batches, &aug.train(&b.x), &b.y),
        Fetch::Batch(Err(e)) => {
            failed.get_or_insert(e);
            Tensor::zeros([], (tch::Kind::Float, batches.device))
        }
        Fetch::Done | Fetch::Stopped => Tensor::zeros([], (tch::Kind::Float, batches.device)),
    });
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(FolderReport {
        dir: dir.display().to_string(),
        format: if tars { "shards" } else { "folder" },
        images: items.len(),
        mean_file_kb: mean_bytes / 1e3,
        scale,
        threads,
        workers: folder::decode_threads(workers, m.device),
        end_to_end_images_per_sec: e2e,
        end_to_end_over_compute: e2e / m.compute,
        data_wait_share: (1.0 - m.compute.recip() / e2e.recip()).max(0.0),
    })
}

impl FolderReport {
    pub fn print(&self) {
        println!(
            "JPEG {} {} · {} images, {:.0} kB mean · S = {}, random crop, flip",
            self.format, self.dir, self.images, self.mean_file_kb, self.scale
        );
        for t in &self.threads {
            println!(
                "  data only, {:>2} thread{} {:>10.1} img/s  {:>7.1} MB/s  ({:.0} img/s a thread)",
                t.threads,
                if t.threads == 1 { " " } else { "s" },
                t.images_per_sec,
                t.mb_per_sec,
                t.images_per_sec / t.threads as f64
            );
        }
        println!(
            "  end to end, {} decoding thread{} {:>7.1} img/s  = {:.3} x compute only; data wait {:.1}% of step time",
            self.workers,
            if self.workers == 1 { "" } else { "s" },
            self.end_to_end_images_per_sec,
            self.end_to_end_over_compute,
            100.0 * self.data_wait_share
        );
    }
}
