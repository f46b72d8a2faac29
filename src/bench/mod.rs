//! `vggtrain bench`: training throughput measured in one process, after
//! warm-up: compute alone, the input pipeline alone (in-memory and
//! a real JPEG folder with `--folder`: `folder.rs`), and the two together
//! as the engine runs them.
use crate::config::{Config, DataConfig, Precision};
use crate::data::{augment::Augment, augment::Stats};
use crate::engine::{self, sgd::Sgd, Batches};
use crate::model::{self, Arch, Vgg};
use anyhow::Result;
use serde::Serialize;
use std::{path::PathBuf, time::Instant};

mod folder;
mod parallel;
pub mod trace;
pub use folder::FolderReport;
pub use parallel::{run as parallel, ParallelReport};
use tch::{nn::VarStore, Device, Kind, Tensor};

#[derive(Clone, Debug)]
pub struct BenchArgs {
    pub model: Arch,
    pub input: i64,
    pub batch: i64,
    pub width: i64,
    pub device: String,
    pub precision: Precision,
    pub steps: usize,
    pub warmup: usize,
    pub channels_last: bool,
    /// An ImageNet-style folder to time the JPEG pipeline on, at scale S.
    pub folder: Option<PathBuf>,
    pub scale: u32,
    /// `data.workers` for the folder's end to end run (0: the default).
    pub workers: usize,
    /// Where to write a profile of the compute-only steps (Chrome trace).
    pub trace: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub device: String,
    pub model: String,
    pub input: i64,
    pub batch: i64,
    pub precision: String,
    pub channels_last: bool,
    pub compute_images_per_sec: f64,
    pub data_memory_images_per_sec: f64,
    pub end_to_end_images_per_sec: f64,
    pub end_to_end_over_compute: f64,
    pub data_wait_share: f64,
    pub train_tflops: f64,
    pub peak_host_memory_mb: f64,
    /// The CUDA allocator's peak over the compute-only steps.
    pub peak_gpu_memory_mb: Option<f64>,
    pub folder: Option<FolderReport>,
    pub top_ops: Option<trace::TopOps>,
}

/// Waits for the device's queued work (reading a scalar syncs).
fn sync(t: &Tensor) {
    let _ = t.double_value(&[]);
}

/// Images per second of `steps` calls of `f`, after `warmup` calls.
fn rate(batch: i64, warmup: usize, steps: usize, mut f: impl FnMut() -> Tensor) -> f64 {
    for _ in 0..warmup {
        sync(&f());
    }
    let start = Instant::now();
    let mut last = Tensor::zeros([], (Kind::Float, Device::Cpu));
    for _ in 0..steps {
        last = f();
    }
    sync(&last);
    (steps as i64 * batch) as f64 / start.elapsed().as_secs_f64()
}

fn peak_host_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// The network of a benchmark, on its device.
struct Setup {
    device: Device,
    cfg: Config,
    spec: model::ModelSpec,
    _vs: VarStore,
    net: Vgg,
    sgd: Sgd,
    batches: Batches,
}

fn setup(a: &BenchArgs) -> Result<Setup> {
    let device = crate::device::resolve(&a.device)?;
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    let mut cfg = Config::default();
    cfg.model.config = a.model;
    cfg.model.width = a.width;
    cfg.train.precision = a.precision;
    cfg.train.channels_last = a.channels_last;
    cfg.data.crop = Some(a.input);
    let spec = cfg.model_spec(3, (a.input, a.input), 10);
    spec.validate().map_err(anyhow::Error::msg)?;
    let vs = VarStore::new(device);
    let net = Vgg::new(&vs.root(), spec.clone(), model::InitScheme::Kaiming).map_err(anyhow::Error::msg)?;
    if a.channels_last {
        model::vars_to_channels_last(&vs);
    }
    let sgd = Sgd::new(&vs, 0.9, 5e-4, true, a.precision == Precision::Fp16);
    let batches = Batches::new(&cfg, a.input, device);
    Ok(Setup {
        device,
        cfg,
        spec,
        _vs: vs,
        net,
        sgd,
        batches,
    })
}

pub fn run(a: &BenchArgs) -> Result<Report> {
    let Setup {
        device,
        cfg,
        spec,
        net,
        mut sgd,
        batches,
        ..
    } = setup(a)?;
    let b = a.batch;

    // 1. Compute only: one batch already on the device.
    let x = Tensor::randn([b, 3, a.input, a.input], (Kind::Float, device));
    let y = Tensor::randint(10, [b], (Kind::Int64, device));
    crate::native::cuda_peak_bytes(device, true);
    let compute = rate(b, a.warmup, a.steps, || {
        engine::step_alone(&net, &mut sgd, &batches, &x, &y)
    });
    let peak_gpu = crate::native::cuda_peak_bytes(device, false).map(|b| b as f64 / 1048576.0);
    let top_ops = match &a.trace {
        Some(path) => Some(trace::record(path, device, a.steps, || {
            engine::step_alone(&net, &mut sgd, &batches, &x, &y)
        })?),
        None => None,
    };

    // 2. Data only, in memory: u8 images on the device, batched augmentation.
    let n = (b as usize * 8).max(1024);
    let images = Tensor::randint(256, [n as i64, 3, a.input, a.input], (Kind::Uint8, device));
    let labels = Tensor::randint(10, [n as i64], (Kind::Int64, device));
    let stats = Stats::from_images(&images, crate::config::PcaSource::Imagenet);
    let data_cfg = DataConfig::default();
    let aug = Augment::new(&data_cfg, &stats, 4, None, device);
    let order = crate::data::permutation(n, 1);
    let mut at = 0;
    let mut next = || {
        let idx: Vec<i64> = (0..b as usize).map(|i| order[(at + i) % n] as i64).collect();
        at += b as usize;
        let idx = Tensor::from_slice(&idx).to_device(device);
        (images.index_select(0, &idx), labels.index_select(0, &idx))
    };
    let data_memory = rate(b, a.warmup, a.steps.max(20), || {
        let (x, _) = next();
        aug.train(&x).sum(Kind::Float)
    });

    // 3. End to end: pipeline and step as the engine runs them.
    let e2e = rate(b, a.warmup, a.steps, || {
        let (x, y) = next();
        engine::step_alone(&net, &mut sgd, &batches, &aug.train(&x), &y)
    });
    // 4. A JPEG folder: data only, then end to end.
    let folder = match &a.folder {
        Some(dir) => {
            let m = folder::Model {
                net: &net,
                sgd: &mut sgd,
                cfg: &cfg,
                device,
                compute,
            };
            let shape = folder::Shape {
                scale: a.scale,
                crop: a.input,
                batch: b,
                steps: a.steps,
                warmup: a.warmup,
                workers: a.workers,
            };
            Some(folder::run(dir, shape, m)?)
        }
        None => None,
    };
    let tflops = 3.0 * spec.forward_flops() * compute / 1e12;
    Ok(Report {
        device: crate::device::describe(device),
        model: spec.describe(),
        input: a.input,
        batch: b,
        precision: format!("{:?}", a.precision).to_lowercase(),
        channels_last: a.channels_last,
        compute_images_per_sec: compute,
        data_memory_images_per_sec: data_memory,
        end_to_end_images_per_sec: e2e,
        end_to_end_over_compute: e2e / compute,
        data_wait_share: (1.0 - compute.recip() / e2e.recip()).max(0.0),
        train_tflops: tflops,
        peak_host_memory_mb: peak_host_mb(),
        peak_gpu_memory_mb: peak_gpu,
        folder,
        top_ops,
    })
}

impl Report {
    pub fn print(&self) {
        println!(
            "{} · {} · input {} · batch {} · {} · channels-last {}",
            self.device, self.model, self.input, self.batch, self.precision, self.channels_last
        );
        println!(
            "compute only            {:>10.1} img/s  ({:.2} TFLOP/s)",
            self.compute_images_per_sec, self.train_tflops
        );
        println!(
            "data only, in memory    {:>10.1} img/s",
            self.data_memory_images_per_sec
        );
        println!(
            "end to end (in memory)  {:>10.1} img/s  = {:.3} x compute only; data wait {:.1}% of step time",
            self.end_to_end_images_per_sec,
            self.end_to_end_over_compute,
            100.0 * self.data_wait_share
        );
        println!(
            "peak memory             {:>10.0} MB host{}",
            self.peak_host_memory_mb,
            self.peak_gpu_memory_mb
                .map(|m| format!(", {m:.0} MB GPU"))
                .unwrap_or_default()
        );
        if let Some(f) = &self.folder {
            f.print();
        }
        if let Some(t) = &self.top_ops {
            t.print();
        }
    }
}
