//! The subcommands other than train's faces.
use crate::cli::{ConfigArgs, EvalArgs};
use crate::config::{Config, DatasetName, Layered};
use crate::data::{self, augment::Augment, Source};
use crate::engine::{self, checkpoint, eval, run_dir, Batches};
use crate::model::{self, Arch, ModelSpec, Vgg};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::nn::VarStore;

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
        let names = engine::cuda_names();
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

pub fn export(ckpt: &Path, out: &Path) -> Result<()> {
    let loaded = checkpoint::load(ckpt)?;
    let mut weights: Vec<_> = loaded.weights.into_iter().collect();
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    checkpoint::write_atomic(out, &checkpoint::to_bytes(&weights, None)?)?;
    println!("wrote {} tensors to {}", weights.len(), out.display());
    Ok(())
}

pub fn eval(args: &EvalArgs) -> Result<()> {
    let loaded = checkpoint::load(&args.checkpoint)?;
    let mut cfg: Config = toml::from_str(&loaded.state.config)
        .with_context(|| format!("{}: its saved configuration does not parse", args.checkpoint.display()))?;
    if let Some(d) = &args.device {
        cfg.train.device = d.clone();
    }
    if let Some(d) = &args.data_dir {
        cfg.data.dir = Some(d.clone());
    }
    let device = engine::resolve_device(&cfg.train.device)?;
    let crop = cfg.crop();
    let dataset = data::load(&cfg.data, crop, cfg.train.seed, device)?;
    let source = match args.split.as_str() {
        "test" => &dataset.test,
        "val" => &dataset.val,
        other => bail!("--split {other}: expected test or val"),
    };
    let spec = cfg.model_spec(dataset.channels, (crop, crop), dataset.classes.len() as i64);
    let vs = VarStore::new(device);
    let net = Vgg::new(&vs.root(), spec, model::InitScheme::Kaiming).map_err(anyhow::Error::msg)?;
    model::load_weights(&vs, &args.checkpoint)?;
    if cfg.train.channels_last {
        model::vars_to_channels_last(&vs);
    }
    let batch = cfg.train.batch_size as usize;
    let protocol = eval::Protocol {
        flip: args.flip,
        dense: args.dense,
    };
    let native = match source {
        Source::Memory { images, .. } => images.size()[2],
        Source::Folder(_) => crop,
    };
    let scales = if args.scales.is_empty() {
        vec![crop]
    } else {
        args.scales.clone()
    };
    if !args.dense && scales.iter().any(|&q| q != crop) {
        bail!("--scales other than the crop size {crop} need --dense (the classifier's input is fixed)");
    }
    let mut results = Vec::new();
    for q in &scales {
        let mut c = cfg.clone();
        c.data.test_scale = Some(*q);
        let batches = Batches::new(&c, if matches!(source, Source::Folder(_)) { *q } else { crop }, device);
        let upscale = (*q != native).then_some(*q);
        let aug = Augment::new(&cfg.data, &dataset.stats, 0, upscale, device);
        results.push(eval::evaluate(
            &net,
            &batches,
            source,
            std::slice::from_ref(&aug),
            batch,
            &protocol,
        )?);
    }
    let n = results.len() as f64;
    let top1 = results.iter().map(|r| r.top1).sum::<f64>() / n;
    let top5 = results.iter().map(|r| r.top5).sum::<f64>() / n;
    println!(
        "{} on {} {} images (scales {:?}{}{}): top-1 {:.2}% top-5 {:.2}% (error {:.2}% / {:.2}%)",
        args.checkpoint.display(),
        results[0].images,
        args.split,
        scales,
        if args.flip { ", flip" } else { "" },
        if args.dense { ", dense" } else { "" },
        100.0 * top1,
        100.0 * top5,
        100.0 * (1.0 - top1),
        100.0 * (1.0 - top5)
    );
    println!("{:<20} {:>8}", "class", "top-1");
    for (i, name) in dataset.classes.iter().enumerate() {
        let acc = results.iter().map(|r| r.per_class[i]).sum::<f64>() / n;
        println!("{name:<20} {:>7.2}%", 100.0 * acc);
    }
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
    crate::ui::attach(crate::attach::client::connect(&run)?)
}

/// The live run started (or resumed) last.
fn newest_live_run(dir: &Path) -> Result<PathBuf> {
    std::fs::read_dir(dir)
        .with_context(|| format!("no runs directory at {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| run_dir::is_attachable(p))
        .max_by_key(|p| std::fs::metadata(p.join("pid")).and_then(|m| m.modified()).ok())
        .with_context(|| {
            format!(
                "no live run in {}: start one with `vggtrain train`, or name a run directory",
                dir.display()
            )
        })
}

pub fn bench(a: &crate::cli::BenchCli) -> Result<()> {
    let precision = match a.precision.as_str() {
        "fp32" => crate::config::Precision::Fp32,
        "bf16" => crate::config::Precision::Bf16,
        other => bail!("--precision {other}: expected fp32 or bf16"),
    };
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
        folder_images: a.folder_images,
    };
    let report = crate::bench::run(&args)?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        report.print();
    }
    Ok(())
}
