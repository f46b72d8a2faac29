//! Checkpoints: one safetensors file with the weights (torchvision names),
//! the momentum buffers ("momentum.<name>") and the training state as JSON
//! metadata. Written atomically: a temp file in the same folder, fsync,
//! rename, fsync of the folder; a half-written file never has the final name.
use super::schedule::Schedule;
use crate::control::{EpochStats, LrCause};
use anyhow::{bail, Context, Result};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::{
    collections::HashMap,
    fs,
    io::Write,
    path::{Path, PathBuf},
};
use tch::{Kind, Tensor};

const STATE_KEY: &str = "vggtrain.state";
pub const MOMENTUM: &str = "momentum.";

/// Everything besides tensors that an exact resume needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Completed epochs.
    pub epoch: usize,
    /// Steps done in the current epoch (the data order is a function of the
    /// seed and the epoch, the randomness of a step of the seed, the epoch
    /// and the step: this is the whole RNG and data-order state).
    pub step: usize,
    pub global_step: u64,
    pub schedule: Schedule,
    /// The current epoch's running sums.
    pub loss_sum: f64,
    pub correct: f64,
    pub seen: f64,
    pub history: Vec<EpochStats>,
    /// (global step, epoch, lr, cause) of every change, the start included.
    pub lr_timeline: Vec<(u64, usize, f64, LrCause)>,
    /// The effective config (TOML) the run was started with.
    pub config: String,
    /// "VGG D ..." and the parameter shapes, to refuse another configuration.
    pub model: String,
}

fn dtype(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Half => Dtype::F16,
        Kind::Uint8 => Dtype::U8,
        other => bail!("cannot checkpoint tensors of kind {other:?}"),
    })
}

/// Serialises named tensors and metadata to safetensors bytes.
pub fn to_bytes(tensors: &[(String, Tensor)], metadata: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
    let mut host = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_device(tch::Device::Cpu).contiguous();
        let mut bytes = vec![0u8; t.numel() * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut bytes, t.numel())?;
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        host.push((name.clone(), dtype(t.kind())?, shape, bytes));
    }
    let views = host
        .iter()
        .map(|(n, d, s, b)| Ok((n.as_str(), TensorView::new(*d, s.clone(), b)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    Ok(safetensors::tensor::serialize(views, &metadata)?)
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("a checkpoint path has a folder")?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let result = (|| -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        bail!(
            "cannot write {}: {e} (the previous checkpoints are untouched)",
            path.display()
        );
    }
    Ok(())
}

pub fn save(
    path: &Path,
    weights: &[(String, Tensor)],
    momentum: &[(String, Tensor)],
    state: &TrainState,
) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = weights.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
    tensors.extend(
        momentum
            .iter()
            .map(|(n, t)| (format!("{MOMENTUM}{n}"), t.shallow_clone())),
    );
    let meta = HashMap::from([(STATE_KEY.to_owned(), serde_json::to_string(state)?)]);
    write_atomic(path, &to_bytes(&tensors, Some(meta))?)
}

/// A loaded checkpoint: weights, momentum buffers and state.
pub struct Loaded {
    pub weights: HashMap<String, Tensor>,
    pub momentum: HashMap<String, Tensor>,
    pub state: TrainState,
}

pub fn load(path: &Path) -> Result<Loaded> {
    let bytes = fs::read(path).with_context(|| format!("cannot read checkpoint {}", path.display()))?;
    let corrupt =
        |e: &dyn std::fmt::Display| anyhow::anyhow!("{} is not a complete vggtrain checkpoint: {e}", path.display());
    let st = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(&e))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(&e))?;
    let state_json = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(STATE_KEY))
        .ok_or_else(|| corrupt(&"no training state (an exported weights file?)"))?;
    let state: TrainState = serde_json::from_str(state_json).map_err(|e| corrupt(&e))?;
    let mut weights = HashMap::new();
    let mut momentum = HashMap::new();
    for (name, view) in st.tensors() {
        let t = Tensor::try_from(view).map_err(|e| corrupt(&e))?;
        match name.strip_prefix(MOMENTUM) {
            Some(n) => momentum.insert(n.to_owned(), t),
            None => weights.insert(name, t),
        };
    }
    Ok(Loaded {
        weights,
        momentum,
        state,
    })
}

/// Periodic checkpoints of a run, oldest first.
pub fn list(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("ckpt-") && n.ends_with(".safetensors"))
        })
        .collect();
    v.sort();
    v
}

pub fn periodic_name(global_step: u64) -> String {
    format!("ckpt-{global_step:010}.safetensors")
}

/// Removes all but the newest `keep` periodic checkpoints.
pub fn prune(dir: &Path, keep: usize) {
    let all = list(dir);
    for old in &all[..all.len().saturating_sub(keep)] {
        let _ = fs::remove_file(old);
    }
}
