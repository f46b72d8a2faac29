//! `vggtrain eval` and `vggtrain predict`: networks loaded from checkpoints
//! or exported weights (with their model cards), run through the paper's
//! test protocol (`crate::eval`).
use crate::cli::{EvalArgs, PredictArgs, ViewArgs};
use crate::config::Config;
use crate::data::{self, augment::Normalise};
use crate::engine::{self, checkpoint, Batches};
use crate::eval::{self, images, Member, Protocol, Runner};
use crate::model::{self, Card, Vgg};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{nn::VarStore, Device};

/// Views a forward pass of `predict`, at most.
const CHUNK: usize = 128;
/// Images `predict` prepares at once.
const PREDICT_BATCH: usize = 16;

/// A network loaded from a file, and its card.
struct Loaded {
    path: PathBuf,
    card: Card,
    _vs: VarStore,
    model: Vgg,
    norm: Normalise,
}

impl Loaded {
    /// `fallback`: the card of a checkpoint older than cards.
    fn new(path: &Path, device: Device, fallback: Option<Card>) -> Result<Loaded> {
        let card = match Card::read(path)? {
            Some(c) => c,
            None => fallback.with_context(|| {
                format!(
                    "{} has no model card (vggtrain.model metadata): export it again from a checkpoint saved by this version",
                    path.display()
                )
            })?,
        };
        let vs = VarStore::new(device);
        let model = Vgg::new(&vs.root(), card.spec(), model::InitScheme::Kaiming).map_err(anyhow::Error::msg)?;
        model::copy_weights(&vs, &checkpoint::load_weights(path)?, path)?;
        model::vars_to_channels_last(&vs);
        let norm = Normalise::new(&card.mean, card.std.as_deref(), device);
        Ok(Loaded {
            path: path.to_owned(),
            card,
            _vs: vs,
            model,
            norm,
        })
    }

    fn member(&self) -> Member<'_> {
        Member {
            model: &self.model,
            norm: &self.norm,
        }
    }
}

/// Loads every file; the models must agree on what an input and a class
/// are (fusion averages their posteriors class by class).
fn load_all(paths: &[PathBuf], device: Device, first_card: Option<Card>) -> Result<Vec<Loaded>> {
    let mut all: Vec<Loaded> = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        let m = Loaded::new(p, device, if i == 0 { first_card.clone() } else { None })?;
        if let Some(first) = all.first() {
            let (a, b) = (&first.card, &m.card);
            let same = a.classes == b.classes && a.channels == b.channels && a.crop == b.crop && a.native == b.native;
            if !same {
                bail!(
                    "{} and {} cannot be fused: they differ in classes, input channels, crop or input preparation",
                    first.path.display(),
                    m.path.display()
                );
            }
        }
        all.push(m);
    }
    Ok(all)
}

/// The views the flags ask for, checked against the network.
fn protocol(v: &ViewArgs, card: &Card) -> Result<Protocol> {
    let mut scales = Vec::new();
    for s in &v.scales {
        if s == "paper" {
            let [lo, hi] = card.train_scale;
            if card.native.is_some() {
                bail!("--scales paper: the paper's scale sets are for runs on image folders (training scale S)");
            }
            scales.extend(if lo == hi {
                [lo - 32, lo, lo + 32]
            } else {
                [lo, (lo + hi) / 2, hi]
            });
        } else {
            scales.push(
                s.parse()
                    .map_err(|_| anyhow::anyhow!("--scales {s}: expected numbers or `paper`"))?,
            );
        }
    }
    if scales.is_empty() {
        scales.push(card.test_scale);
    }
    if let Some(q) = scales.iter().find(|&&q| q < card.crop) {
        bail!(
            "--scales {q}: a test scale is at least the training crop {} (its views are crops of that size; \
             dense evaluation needs Q >= {} too, the first fully connected layer becomes a convolution as \
             large as the training feature map)",
            card.crop,
            card.crop
        );
    }
    Ok(Protocol {
        scales,
        dense: v.dense,
        multi_crop: v.multi_crop,
        flip: v.flip,
    })
}

pub fn eval(args: &EvalArgs) -> Result<()> {
    if !["test", "val"].contains(&args.split.as_str()) {
        bail!("--split {}: expected test or val", args.split);
    }
    let first = &args.checkpoint[0];
    // The first names the data: a checkpoint of a run, not exported weights.
    let state = checkpoint::load(first)?.state;
    let mut cfg: Config = toml::from_str(&state.config)
        .with_context(|| format!("{}: its saved configuration does not parse", first.display()))?;
    if let Some(d) = &args.device {
        cfg.train.device = d.clone();
    }
    if let Some(d) = &args.data_dir {
        cfg.data.dir = Some(d.clone());
    }
    let device = crate::device::resolve(&cfg.train.device)?;
    let crop = cfg.crop();
    let dataset = data::load(&cfg.data, crop, cfg.train.seed, device)?;
    let members = load_all(&args.checkpoint, device, Some(engine::model_card(&cfg, &dataset)))?;
    if members[0].card.classes != dataset.classes {
        bail!(
            "{}'s classes are not those of its data in {}",
            first.display(),
            dataset.dir.display()
        );
    }
    let protocol = protocol(&args.views, &members[0].card)?;
    let source = if args.split == "val" {
        &dataset.val
    } else {
        &dataset.test
    };
    let batches = Batches::new(&cfg, crop, device);
    // The run's batch: its validation, evaluated again, gives its numbers.
    let run = Runner {
        batches: &batches,
        chunk: cfg.train.batch_size as usize,
    };
    let started = Instant::now();
    let m: Vec<Member> = members.iter().map(Loaded::member).collect();
    // A bar where stderr is a terminal (multi-crop at three scales is slow).
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(source.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("evaluating [{bar:32}] {pos}/{len} images · ETA {eta}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let r = eval::evaluate(&m, source, &protocol, &run, &mut || false, &mut |n| {
        bar.set_position(n as u64)
    })?
    .expect("an evaluation nobody stops finishes");
    bar.finish_and_clear();
    let ips = r.images as f64 / started.elapsed().as_secs_f64();
    let names: Vec<String> = args.checkpoint.iter().map(|p| p.display().to_string()).collect();
    if args.json {
        let per_class: Vec<_> = dataset
            .classes
            .iter()
            .zip(&r.per_class)
            .map(|(c, a)| json!({"class": c, "top1": a}))
            .collect();
        let out = json!({
            "checkpoints": names, "split": args.split, "images": r.images, "skipped": r.skipped,
            "top1": r.top1, "top5": r.top5, "loss": r.loss, "per_class": per_class,
            "views": {
                "scales": protocol.scales, "dense": protocol.dense, "multi_crop": protocol.multi_crop,
                "flip": protocol.flip, "methods": protocol.methods().iter().map(|m| m.name()).collect::<Vec<_>>(),
                "per_image": protocol.views_per_image() * members.len(), "models": members.len(),
            },
            "images_per_sec": ips,
        });
        println!("{out}");
        return Ok(());
    }
    println!(
        "{} on {} {} images ({}{}): top-1 {:.2}% top-5 {:.2}% (error {:.2}% / {:.2}%) · {} views an image, {:.0} images/s",
        names.join(" + "),
        r.images,
        args.split,
        protocol.describe(),
        if members.len() > 1 {
            format!(" · {} models fused", members.len())
        } else {
            String::new()
        },
        100.0 * r.top1,
        100.0 * r.top5,
        100.0 * (1.0 - r.top1),
        100.0 * (1.0 - r.top5),
        protocol.views_per_image() * members.len(),
        ips
    );
    println!("{:<20} {:>8}", "class", "top-1");
    for (name, acc) in dataset.classes.iter().zip(&r.per_class) {
        println!("{name:<20} {:>7.2}%", 100.0 * acc);
    }
    Ok(())
}

pub fn predict(args: &PredictArgs) -> Result<()> {
    let device = crate::device::resolve(args.device.as_deref().unwrap_or("auto"))?;
    let members = load_all(&args.checkpoint, device, None)?;
    let card = &members[0].card;
    let protocol = protocol(&args.views, card)?;
    let batches = Batches::new(&Config::default(), card.crop, device);
    let run = Runner {
        batches: &batches,
        chunk: CHUNK,
    };
    let m: Vec<Member> = members.iter().map(Loaded::member).collect();
    let k = args.top.clamp(1, card.classes.len());
    for paths in args.images.chunks(PREDICT_BATCH) {
        let batch = images::load(paths, card, &protocol.scales, device)?;
        let probs = eval::posteriors(&m, &batch, &protocol, &run).to_device(Device::Cpu);
        for (i, path) in paths.iter().enumerate() {
            let p: Vec<f64> = Vec::try_from(probs.get(i as i64).to_kind(tch::Kind::Double))?;
            let mut order: Vec<usize> = (0..p.len()).collect();
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
            let top = &order[..k];
            if args.json {
                let top: Vec<_> = top
                    .iter()
                    .map(|&i| json!({"index": i, "class": card.classes[i], "prob": p[i]}))
                    .collect();
                println!("{}", json!({"image": path, "probs": p, "top": top}));
            } else {
                let shown: Vec<String> = top
                    .iter()
                    .map(|&i| format!("{} {:.2}%", card.classes[i], 100.0 * p[i]))
                    .collect();
                println!("{}: {}", path.display(), shown.join(", "));
            }
        }
    }
    Ok(())
}
