//! Everything a run needs before its directory is touched: the resume's
//! checkpoint and configuration settled, the data read and checked, the
//! network built and its weights loaded. An error here is bad input: the
//! process exits 2 and nothing of the run was written.
use super::batches::Batches;
use super::checkpoint::{self, Damaged, TrainState};
use super::resume;
use super::schedule::Schedule;
use super::sgd::Sgd;
use super::worker::Worker;
use crate::config::{Config, Normalize};
use crate::control::{Event, LrCause};
use crate::data::{self, augment::Augment, augment::Normalise, Dataset, Source};
use crate::model::{self, Card, Vgg};
use anyhow::{bail, Context, Result};
use std::{collections::BTreeSet, path::Path};
use tch::nn::VarStore;

/// A prepared worker, and the damaged checkpoints a resume skipped (moved
/// aside once the run is locked).
pub struct Prepared {
    pub worker: Worker,
    pub damaged: Vec<Damaged>,
}

/// What the data is, to refuse a resume on other data: classes (their
/// names' CRC-32) and the sizes of the training and validation splits.
fn data_id(data: &Dataset) -> String {
    format!(
        "{} classes (names crc32 {:08x}), {} training and {} validation images",
        data.classes.len(),
        crc32fast::hash(data.classes.join("\n").as_bytes()),
        data.train.len(),
        data.val.len()
    )
}

/// The checkpoint to resume from (none when the run ended before its first
/// save), and the configuration settled against the one it was saved with.
struct Resumed {
    found: Option<checkpoint::Newest>,
    settled: resume::Settled,
}

fn settle_resume(dir: &Path, wanted: &Config, explicit: &BTreeSet<String>) -> Result<Resumed> {
    let ckpts = dir.join("checkpoints");
    if ckpts.is_dir() && checkpoint::list(&ckpts).is_empty() {
        // Killed before its first checkpoint: the run starts again, as it was.
        let saved = Config::from_file(&dir.join("config.toml"))?;
        let settled = resume::settle(&saved, wanted, explicit)?;
        return Ok(Resumed { found: None, settled });
    }
    let found = checkpoint::newest(dir)?;
    let saved: Config = toml::from_str(&found.loaded.state.config)
        .with_context(|| format!("{}: its saved configuration does not parse", found.path.display()))?;
    let settled = resume::settle(&saved, wanted, explicit)?;
    let done = found.loaded.state.epoch;
    if settled.config.train.epochs < done {
        bail!(
            "train.epochs = {}, but the run has already finished {done} epochs: ask for more to train longer",
            settled.config.train.epochs
        );
    }
    Ok(Resumed {
        found: Some(found),
        settled,
    })
}

/// libtorch's intra-op threads for `train.threads` on `device`, where they
/// are set. 0 chooses: on the CPU libtorch's default (every core: the step
/// is the work; the decoding pool is small, `folder::decode_threads`); on
/// CUDA one, since the step runs on the GPU and the other cores decode: an
/// idle pool of every core would spin against the decoding threads.
pub fn compute_threads(threads: i32, device: tch::Device) -> Option<i32> {
    match threads {
        0 if device.is_cuda() => Some(1),
        0 => None,
        n => Some(n),
    }
}

pub fn prepare(cfg: Config, resume: Option<&Path>, explicit: &BTreeSet<String>) -> Result<Prepared> {
    let resumed = resume.map(|dir| settle_resume(dir, &cfg, explicit)).transpose()?;
    let cfg = resumed.as_ref().map_or(cfg, |r| r.settled.config.clone());
    let device = crate::device::resolve(&cfg.train.device)?;
    if let Some(n) = compute_threads(cfg.train.threads, device) {
        tch::set_num_threads(n);
    }
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    let crop = cfg.crop();
    let data = data::load(&cfg.data, crop, cfg.train.seed, device)?;
    let spec = cfg.model_spec(data.channels, (crop, crop), data.classes.len() as i64);
    let vs = VarStore::new(device);
    tch::manual_seed(cfg.train.seed as i64);
    let model = Vgg::new(&vs.root(), spec, cfg.init.scheme()).map_err(anyhow::Error::msg)?;
    // A resume's weights come from its checkpoint: these files may be gone.
    let mut notes = match &resumed {
        Some(Resumed { found: Some(_), .. }) => Vec::new(),
        _ => init_weights(&cfg, &model, &vs)?,
    };
    if cfg.train.channels_last {
        model::vars_to_channels_last(&vs);
    }
    let fp16 = cfg.train.precision == crate::config::Precision::Fp16;
    let mut sgd = Sgd::new(
        &vs,
        cfg.train.momentum,
        cfg.train.weight_decay,
        cfg.train.decay_biases,
        fp16,
    );
    let mut state = fresh_state(&cfg, &model, &data);
    let (mut changes, mut set_lr, mut damaged, mut resumed_from) = (Vec::new(), None, Vec::new(), None);
    if let Some(Resumed { found, settled }) = resumed {
        (changes, set_lr) = (settled.changes, settled.lr);
        match found {
            Some(found) => {
                state = continue_from(found.loaded, &found.path, state, &vs, &mut sgd, &data.dir)?;
                (damaged, resumed_from) = (found.damaged, Some(found.path));
            }
            None => {
                notes.push("no checkpoint was saved before the run stopped: it starts again from its first step".into())
            }
        }
    }
    let native = match &data.train {
        Source::Memory { images, .. } => images.size()[2],
        Source::Folder(_) => crop,
    };
    let upscale = (crop != native).then_some(crop);
    let pad = if matches!(data.train, Source::Memory { .. }) {
        cfg.data.pad
    } else {
        0
    };
    let card = card(&cfg, &data);
    let worker = Worker {
        train_aug: Augment::new(&cfg.data, &data.stats, pad, upscale, device),
        norm: Normalise::new(&card.mean, card.std.as_deref(), device),
        card,
        batches: Batches::new(&cfg, crop, device),
        cfg,
        data,
        model,
        vs,
        sgd,
        state,
        resumed_from,
        notes: notes.into_iter().map(|message| Event::Log { message }).collect(),
        changes,
        set_lr,
    };
    Ok(Prepared { worker, damaged })
}

/// The run's model card: the network, its classes, its input.
pub fn card(cfg: &Config, data: &Dataset) -> Card {
    let crop = cfg.crop();
    let d = &cfg.data;
    let folder = d.dataset.decoded();
    Card {
        arch: cfg.model.config,
        width: cfg.model.width,
        batch_norm: cfg.model.batch_norm,
        channels: data.channels,
        crop,
        classes: data.classes.clone(),
        test_scale: if folder {
            d.test_scale.unwrap_or((d.scale[0] + d.scale[1]) / 2)
        } else {
            crop
        },
        train_scale: if folder { d.scale } else { [crop, crop] },
        native: d.dataset.native_side(),
        mean: data.stats.mean.clone(),
        std: (d.normalize == Normalize::MeanStd).then(|| data.stats.std.clone()),
    }
}

/// A new run's weights: `init.from`, then `init.warm-start`. Returns what
/// was loaded, for the log.
fn init_weights(cfg: &Config, model: &Vgg, vs: &VarStore) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    if let Some(from) = &cfg.init.from {
        model::load_weights(vs, from)?;
        notes.push(format!("weights loaded from {}", from.display()));
    }
    if let Some(a) = &cfg.init.warm_start {
        let copied = model::warm_start_from_a(model, vs, a)?;
        notes.push(format!("warm start from {}: copied {}", a.display(), copied.join(", ")));
    }
    Ok(notes)
}

/// The state of a run before its first step.
fn fresh_state(cfg: &Config, model: &Vgg, data: &Dataset) -> TrainState {
    let schedule = Schedule::new(&cfg.train);
    TrainState {
        format: checkpoint::FORMAT,
        epoch: 0,
        step: 0,
        global_step: 0,
        lr_timeline: vec![(0, 0, schedule.lr, LrCause::Schedule)],
        schedule,
        loss_sum: 0.0,
        correct: 0.0,
        seen: 0.0,
        history: Vec::new(),
        config: cfg.to_toml(),
        model: format!("{} {:?}", model.spec.describe(), model.spec.parameter_shapes()),
        data: data_id(data),
        world: 1,
        loss_scale: None,
        skipped_steps: 0,
    }
}

/// The saved run, checked against the network and the data built for it
/// (`fresh`'s ids): its weights and momentum loaded, its state continued
/// with the settled configuration and the schedule's settings from it.
fn continue_from(
    loaded: checkpoint::Loaded,
    path: &Path,
    fresh: TrainState,
    vs: &VarStore,
    sgd: &mut Sgd,
    data_dir: &Path,
) -> Result<TrainState> {
    if loaded.state.model != fresh.model {
        let name = |id: &str| id.split(" [").next().unwrap_or("").to_owned();
        bail!(
            "{} was saved by another configuration ({}) than this run's ({})",
            path.display(),
            name(&loaded.state.model),
            name(&fresh.model)
        );
    }
    if !loaded.state.data.is_empty() && loaded.state.data != fresh.data {
        bail!(
            "the data in {} is not the run's: it has {}, the run was trained on {}",
            data_dir.display(),
            fresh.data,
            loaded.state.data
        );
    }
    model::copy_weights(vs, &loaded.weights, path)?;
    sgd.load_buffers(loaded.momentum).map_err(anyhow::Error::msg)?;
    sgd.load_scale(loaded.state.loss_scale);
    Ok(TrainState {
        schedule: loaded.state.schedule.with_settings(&fresh.schedule),
        config: fresh.config,
        data: fresh.data,
        format: fresh.format,
        ..loaded.state
    })
}

#[cfg(test)]
mod tests {
    use super::compute_threads;
    use tch::Device;

    #[test]
    fn libtorch_threads_leave_the_cores_to_decoding_on_a_gpu_only() {
        assert_eq!(compute_threads(0, Device::Cuda(0)), Some(1));
        assert_eq!(compute_threads(0, Device::Cpu), None, "libtorch's default: every core");
        assert_eq!(compute_threads(3, Device::Cuda(0)), Some(3), "asked for");
        assert_eq!(compute_threads(3, Device::Cpu), Some(3));
    }
}
