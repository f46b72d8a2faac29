//! The subcommands other than train's faces (`eval` and `predict` in
//! `eval`).
mod eval;
mod train;

pub use eval::{eval, predict};
pub use train::train;

use crate::cli::ConfigArgs;
use crate::config::{Config, DatasetName, Layered};
use crate::data;
use crate::engine::{checkpoint, run_dir};
use crate::model::{card::CARD_KEY, Arch, Card, ModelSpec};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The effective configuration of the config flags.
pub fn layered(args: &ConfigArgs) -> Result<Layered> {
    Config::layered(args.config.as_deref(), std::env::vars(), &args.overrides())
}

pub fn config_show(args: &ConfigArgs) -> Result<()> {
    let l = layered(args)?;
    let full: toml::Table = toml::from_str(&l.config.to_toml())?;
    for (section, fields) in full {
        println!("[{section}]");
        if let toml::Value::Table(fields) = fields {
            for (k, v) in fields {
                let source = &l.sources[&format!("{section}.{k}")];
                println!("{:<40} # {source}", format!("{k} = {v}"));
            }
        }
        println!();
    }
    Ok(())
}

pub fn info() -> Result<()> {
    println!("vggtrain {}", env!("CARGO_PKG_VERSION"));
    println!("libtorch {}", env!("VGGTRAIN_LIBTORCH_VERSION"));
    let n = tch::Cuda::device_count();
    if tch::Cuda::is_available() {
        let names = crate::device::cuda_names();
        println!("CUDA available: yes, {n} device(s)");
        for i in 0..n as usize {
            println!(
                "  cuda:{i} {}",
                names.get(i).map(String::as_str).unwrap_or("(name unknown)")
            );
        }
        println!(
            "cuDNN: {} (version {})",
            tch::Cuda::cudnn_is_available(),
            tch::utils::version_cudnn()
        );
    } else {
        println!("CUDA available: no (training runs on the CPU)");
        println!("cuDNN: no");
    }
    println!("MKL-DNN: {}", if tch::utils::has_mkldnn() { "yes" } else { "no" });
    println!("CPU threads: {}", tch::get_num_threads());
    println!("datasets:");
    for name in [
        DatasetName::FashionMnist,
        DatasetName::Mnist,
        DatasetName::Cifar10,
        DatasetName::Cifar100,
    ] {
        let cfg = crate::config::DataConfig {
            dataset: name,
            ..Default::default()
        };
        match data::locate(&cfg) {
            Ok(dir) => println!("  {:<14} found in {}", name.as_str(), dir.display()),
            Err(_) => println!(
                "  {:<14} not found (looked in {})",
                name.as_str(),
                data::candidate_dirs(name)
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    println!("runs directory: {}", run_dir::default_runs_dir().display());
    Ok(())
}

pub fn models(input: i64, classes: i64, width: i64, channels: i64) -> Result<()> {
    println!("input {input}x{input}x{channels}, {classes} classes, width 1/{width}");
    println!(
        "{:<6} {:<10} {:>13} {:>15} {:>15}",
        "config", "alias", "weight layers", "parameters", "forward GFLOPs"
    );
    for arch in Arch::ALL {
        let spec = ModelSpec {
            arch,
            width,
            in_channels: channels,
            input: (input, input),
            classes,
            batch_norm: false,
            dropout: 0.5,
        };
        spec.validate().map_err(anyhow::Error::msg)?;
        println!(
            "{:<6} {:<10} {:>13} {:>15} {:>15.2}",
            arch.name(),
            arch.alias(),
            arch.depth(),
            group(spec.parameter_count()),
            spec.forward_flops() / 1e9
        );
    }
    Ok(())
}

fn group(n: i64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The weights alone under torchvision's names, with the model card.
pub fn export(ckpt: &Path, out: &Path) -> Result<()> {
    let loaded = checkpoint::load(ckpt)?;
    let card = Card::read(ckpt)?;
    let mut weights: Vec<_> = loaded.weights.into_iter().collect();
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    let meta = card
        .iter()
        .map(|c| (CARD_KEY.to_owned(), c.to_json()))
        .collect::<HashMap<_, _>>();
    checkpoint::write_atomic(out, &checkpoint::to_bytes(&weights, meta)?)?;
    println!(
        "wrote {} tensors to {}{}",
        weights.len(),
        out.display(),
        if card.is_none() {
            " (without a model card: the checkpoint is older than cards; `predict` needs one)"
        } else {
            ""
        }
    );
    Ok(())
}

/// The report of `runs` (overlaid), into `out` or the first run's report.png.
pub fn report(runs: &[PathBuf], out: Option<PathBuf>) -> Result<()> {
    let out = out.unwrap_or_else(|| runs[0].join("report.png"));
    let runs: Vec<&Path> = runs.iter().map(PathBuf::as_path).collect();
    crate::report::write(&runs, &out)?;
    println!("wrote {}", out.display());
    Ok(())
}

/// An ImageNet-style folder as tar shards, with a bar where stderr is a
/// terminal.
pub fn pack(folder: PathBuf, out: PathBuf, max_side: Option<u32>, shard_mb: u64) -> Result<()> {
    use indicatif::{ProgressBar, ProgressStyle};
    use std::io::IsTerminal;
    let args = crate::pack::PackArgs {
        folder,
        out,
        max_side,
        shard_bytes: shard_mb.max(1) * 1_000_000,
        seed: 0,
    };
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("packing [{bar:32}] {pos}/{len} images · {per_sec} · ETA {eta}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let p = crate::pack::run(&args, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    println!(
        "wrote {} train and {} val images ({:.1} MB, {} shrunk) in {} shards to {}",
        p.train,
        p.val,
        p.bytes as f64 / 1e6,
        p.shrunk,
        p.shards,
        args.out.display()
    );
    println!(
        "train on them: vggtrain train --dataset shards --data-dir {}",
        args.out.display()
    );
    Ok(())
}

/// A run's TensorBoard event files, written from its metrics.jsonl.
pub fn tensorboard_export(run: &Path, out: Option<PathBuf>) -> Result<()> {
    let out = out.unwrap_or_else(|| run.join("tensorboard"));
    let has_events = std::fs::read_dir(&out)
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("events.out.tfevents"))
        })
        .unwrap_or(false);
    if has_events {
        bail!(
            "{} holds event files already (nothing is overwritten): --out another folder",
            out.display()
        );
    }
    let mut writer = crate::record::tensorboard::Writer::create(&out)?;
    let n = crate::record::replay(run, &mut writer)?;
    println!(
        "wrote {n} events to {} (tensorboard --logdir {})",
        out.display(),
        out.display()
    );
    Ok(())
}

pub fn runs(dir: Option<PathBuf>) -> Result<()> {
    let dir = dir.unwrap_or_else(run_dir::default_runs_dir);
    let mut runs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("no runs directory at {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("metrics.jsonl").is_file())
        .collect();
    runs.sort();
    println!(
        "{:<48} {:<9} {:>7} {:>8}  last checkpoint",
        "run", "state", "epochs", "best"
    );
    for run in runs {
        let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
        let events: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let kind = |e: &serde_json::Value| e["event"].as_str().unwrap_or("").to_owned();
        let state = if run_dir::is_live(&run) {
            "live".to_owned()
        } else {
            match events.iter().rev().map(kind).find(|k| k == "finished" || k == "failed") {
                Some(k) => k,
                None => "stopped".into(),
            }
        };
        let epochs = events.iter().filter(|e| kind(e) == "epoch").count();
        let best = events
            .iter()
            .filter_map(|e| e["best_top1"].as_f64())
            .fold(f64::NAN, f64::max);
        let last = checkpoint::list(&run.join("checkpoints")).pop();
        println!(
            "{:<48} {:<9} {:>7} {:>8}  {}",
            run.file_name().unwrap_or_default().to_string_lossy(),
            state,
            epochs,
            if best.is_nan() {
                "-".into()
            } else {
                format!("{:.2}%", 100.0 * best)
            },
            last.map(|p| p.display().to_string()).unwrap_or_else(|| "-".into())
        );
    }
    Ok(())
}

/// `vggtrain attach [RUN]`: the TUI on a live run; returns the exit code.
pub fn attach(run: Option<PathBuf>, runs_dir: Option<PathBuf>) -> Result<i32> {
    let run = match run {
        Some(r) => r,
        None => newest_live_run(&runs_dir.unwrap_or_else(run_dir::default_runs_dir))?,
    };
    if !run.join("config.toml").is_file() {
        bail!(
            "{} is not a vggtrain run directory (no config.toml): name one that `vggtrain runs` lists",
            run.display()
        );
    }
    crate::ui::attach(crate::attach::client::connect(&run)?)
}

/// The live run started (or resumed) last.
fn newest_live_run(dir: &Path) -> Result<PathBuf> {
    std::fs::read_dir(dir)
        .with_context(|| format!("no runs directory at {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| crate::attach::is_attachable(p))
        .max_by_key(|p| std::fs::metadata(p.join("pid")).and_then(|m| m.modified()).ok())
        .with_context(|| {
            format!(
                "no live run in {}: start one with `vggtrain train`, or name a run directory",
                dir.display()
            )
        })
}

pub fn bench(a: &crate::cli::BenchCli) -> Result<()> {
    let precision = a.precision.parse().map_err(|e| anyhow::anyhow!("--{e}"))?;
    let args = crate::bench::BenchArgs {
        model: a.model.parse().map_err(anyhow::Error::msg)?,
        input: a.input,
        batch: a.batch,
        width: a.width,
        device: a.device.clone(),
        precision,
        steps: a.steps,
        warmup: a.warmup,
        channels_last: a.channels_last,
        folder: a.folder.clone(),
        scale: a.scale,
        workers: a.workers,
        trace: a.trace.clone(),
    };
    let timeout = std::time::Duration::from_secs(60);
    match crate::dist::role(&a.launch)? {
        crate::dist::Role::Launcher(l) => {
            crate::dist::check_batch(a.batch, l.world())?;
            crate::dist::check_gpus(&a.device, l.nproc)?;
            match crate::dist::launch::run(&l, timeout)? {
                0 => Ok(()),
                code => bail!("a rank of the benchmark exited with code {code}"),
            }
        }
        crate::dist::Role::Rank(r) => {
            let device = crate::dist::settle_rank(&a.device, 0, &r)?;
            let (r, mut dp) = crate::dist::join(r, timeout)?;
            dp.overlapped = !a.no_overlap;
            let report = crate::bench::parallel(&crate::bench::BenchArgs { device, ..args }, &mut dp)?;
            match (r.rank, a.json) {
                (0, true) => println!("{}", serde_json::to_string(&report)?),
                (0, false) => report.print(),
                _ => {}
            }
            Ok(())
        }
        crate::dist::Role::Alone => {
            let report = crate::bench::run(&args)?;
            if a.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                report.print();
            }
            Ok(())
        }
    }
}
