//! Checkpoints: one safetensors file with the weights (torchvision names),
//! the momentum buffers ("momentum.<name>") and the training state as JSON
//! metadata, beside the model card (`model::Card`), with a CRC-32 of the
//! tensors and the metadata, checked on load.
//! Written atomically: a temp file in the same folder, fsync, rename, fsync
//! of the folder; a half-written file never has the final name. A damaged
//! checkpoint is moved aside (renamed `*.damaged`), never counted or deleted.
use super::schedule::Schedule;
use crate::control::{EpochStats, LrCause};
use crate::model::{card::CARD_KEY, Card};
use anyhow::{bail, Context, Result};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::{
    collections::{HashMap, HashSet},
    fs,
    io::Write,
    path::{Path, PathBuf},
};
use tch::{Kind, Tensor};

const STATE_KEY: &str = "vggtrain.state";
const CHECKSUM_KEY: &str = "vggtrain.checksum";
pub const MOMENTUM: &str = "momentum.";
/// The state's format: 2 carries a checksum (round 1's files have none).
pub const FORMAT: u32 = 2;
pub const BEST: &str = "best.safetensors";
const TEMP_PREFIX: &str = ".tmp-";

/// Everything besides tensors that an exact resume needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    #[serde(default = "legacy_format")]
    pub format: u32,
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
    /// Finished epochs, compacted (`control::compact_history`): the header
    /// stays small however long the run and however many classes.
    pub history: Vec<EpochStats>,
    /// (global step, epoch, lr, cause) of every change, the start included.
    pub lr_timeline: Vec<(u64, usize, f64, LrCause)>,
    /// The run's effective config (TOML), changes on resume included.
    pub config: String,
    /// "VGG D ..." and the parameter shapes, to refuse another configuration.
    pub model: String,
    /// The data trained on (classes and split sizes), to refuse other data.
    #[serde(default)]
    pub data: String,
    /// The ranks the run trains on (1 before data parallelism).
    #[serde(default = "crate::control::one_rank")]
    pub world: usize,
    /// fp16's loss scale (absent in other precisions).
    #[serde(default)]
    pub loss_scale: Option<super::sgd::ScaleState>,
    /// Steps skipped for an inf or NaN in the gradients (fp16).
    #[serde(default)]
    pub skipped_steps: u64,
}

fn legacy_format() -> u32 {
    1
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

/// CRC-32 of the tensors (in name order: name, dtype, shape, bytes) and the
/// metadata (the state, the model card; in key order): any flipped byte of
/// the data or the metadata changes it.
fn checksum<'a>(
    tensors: impl IntoIterator<Item = (&'a str, Dtype, &'a [usize], &'a [u8])>,
    meta: &HashMap<String, String>,
) -> u32 {
    let mut sorted: Vec<_> = tensors.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = crc32fast::Hasher::new();
    for (name, dtype, shape, bytes) in sorted {
        h.update(name.as_bytes());
        h.update(format!("{dtype:?}").as_bytes());
        for d in shape {
            h.update(&(*d as u64).to_le_bytes());
        }
        h.update(bytes);
    }
    let mut keys: Vec<&String> = meta.keys().filter(|k| *k != CHECKSUM_KEY).collect();
    keys.sort();
    for k in keys {
        h.update(k.as_bytes());
        h.update(meta[k].as_bytes());
    }
    h.finalize()
}

/// Tensors copied to host memory, ready to serialise.
struct Host(Vec<(String, Dtype, Vec<usize>, Vec<u8>)>);

impl Host {
    fn new(tensors: &[(String, Tensor)]) -> Result<Host> {
        let mut host = Vec::with_capacity(tensors.len());
        for (name, t) in tensors {
            let t = t.to_device(tch::Device::Cpu).contiguous();
            let mut bytes = vec![0u8; t.numel() * t.kind().elt_size_in_bytes()];
            t.f_copy_data_u8(&mut bytes, t.numel())?;
            let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
            host.push((name.clone(), dtype(t.kind())?, shape, bytes));
        }
        Ok(Host(host))
    }

    fn checksum(&self, meta: &HashMap<String, String>) -> u32 {
        checksum(
            self.0
                .iter()
                .map(|(n, d, s, b)| (n.as_str(), *d, s.as_slice(), b.as_slice())),
            meta,
        )
    }

    /// The safetensors bytes, with the checksum added to `meta`.
    fn sealed(&self, mut meta: HashMap<String, String>) -> Result<Vec<u8>> {
        meta.insert(CHECKSUM_KEY.to_owned(), format!("{:08x}", self.checksum(&meta)));
        let views = self
            .0
            .iter()
            .map(|(n, d, s, b)| Ok((n.as_str(), TensorView::new(*d, s.clone(), b)?)))
            .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
        Ok(safetensors::tensor::serialize(views, &Some(meta))?)
    }
}

/// Serialises named tensors and metadata to safetensors bytes.
/// The metadata gets the checksum of the tensors and itself, which every
/// load by vggtrain verifies.
pub fn to_bytes(tensors: &[(String, Tensor)], metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    Host::new(tensors)?.sealed(metadata)
}

/// The folder of a path ("." for a bare file name).
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn temp_name(path: &Path) -> PathBuf {
    folder_of(path).join(format!(
        "{TEMP_PREFIX}{}-{}",
        std::process::id(),
        path.file_name().unwrap_or_default().to_string_lossy()
    ))
}

/// Removes temp files of writers killed during a save in `dir`. `target`
/// None: every one but this process's, for a caller that holds the run's
/// lock (no other writer can be live; the pid in a name may have been
/// reused since). `target` Some: only those of that file name whose process
/// is gone (a folder others may write in too). Returns how many.
pub fn remove_stale_temp_files(dir: &Path, target: Option<&str>) -> usize {
    let mut removed = 0;
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((pid, file)) = name.strip_prefix(TEMP_PREFIX).and_then(|r| r.split_once('-')) else {
            continue;
        };
        let pid = pid.parse::<i32>().ok();
        let mine = pid.is_some_and(|p| p as u32 == std::process::id());
        let stale = match target {
            None => !mine,
            Some(t) => t == file && !mine && pid.is_none_or(|p| unsafe { libc::kill(p, 0) } != 0),
        };
        if stale && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Replaces `path` with a file `fill` writes: temp file, fsync, rename,
/// fsync of the folder. On failure the old file is untouched.
fn replace(path: &Path, fill: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<()> {
    let dir = folder_of(path);
    let file_name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
    remove_stale_temp_files(dir, Some(&file_name));
    let tmp = temp_name(path);
    let result = (|| -> std::io::Result<()> {
        fill(&tmp)?;
        fs::File::open(&tmp)?.sync_all()?;
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

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    replace(path, |tmp| {
        let mut f = fs::File::create(tmp)?;
        f.write_all(bytes)
    })
}

/// Makes `dst` the same file as `src` (a hard link; a copy where links are
/// not supported), atomically.
pub fn link_atomic(src: &Path, dst: &Path) -> Result<()> {
    replace(dst, |tmp| {
        fs::hard_link(src, tmp).or_else(|_| fs::copy(src, tmp).map(|_| ()))
    })
}

/// Writes a checkpoint: the weights, the momentum buffers, the state and the
/// model card, with their checksum.
pub fn save(
    path: &Path,
    weights: &[(String, Tensor)],
    momentum: &[(String, Tensor)],
    state: &TrainState,
    card: &Card,
) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = weights.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
    tensors.extend(
        momentum
            .iter()
            .map(|(n, t)| (format!("{MOMENTUM}{n}"), t.shallow_clone())),
    );
    let state = TrainState {
        format: FORMAT,
        ..state.clone()
    };
    let meta = HashMap::from([
        (STATE_KEY.to_owned(), serde_json::to_string(&state)?),
        (CARD_KEY.to_owned(), card.to_json()),
    ]);
    write_atomic(path, &to_bytes(&tensors, meta)?)
}

/// A loaded checkpoint: weights, momentum buffers and state.
pub struct Loaded {
    pub weights: HashMap<String, Tensor>,
    pub momentum: HashMap<String, Tensor>,
    pub state: TrainState,
}

/// Parses and checks a checkpoint's bytes: the header, the state, and the
/// checksum over the tensors and the metadata.
fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<(SafeTensors<'a>, TrainState)> {
    let corrupt =
        |e: &dyn std::fmt::Display| anyhow::anyhow!("{} is not a complete vggtrain checkpoint: {e}", path.display());
    let st = SafeTensors::deserialize(bytes).map_err(|e| corrupt(&e))?;
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| corrupt(&e))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let state_json = meta
        .get(STATE_KEY)
        .ok_or_else(|| corrupt(&"no training state (an exported weights file?)"))?;
    let state: TrainState = serde_json::from_str(state_json).map_err(|e| corrupt(&e))?;
    if state.format >= FORMAT && !meta.contains_key(CHECKSUM_KEY) {
        return Err(corrupt(&"its checksum is missing"));
    }
    check_sum(&st, &meta).map_err(|e| corrupt(&e))?;
    Ok((st, state))
}

/// Compares the checksum in `meta`, where there is one, with the data's.
fn check_sum(st: &SafeTensors, meta: &HashMap<String, String>) -> Result<(), String> {
    let Some(want) = meta.get(CHECKSUM_KEY) else {
        return Ok(());
    };
    let tensors = st.tensors();
    let got = checksum(
        tensors
            .iter()
            .map(|(n, v)| (n.as_str(), v.dtype(), v.shape(), v.data())),
        meta,
    );
    if format!("{got:08x}") != *want {
        return Err(format!(
            "damaged: the checksum of its data is {got:08x}, {want} was written"
        ));
    }
    Ok(())
}

/// The weights of a file vggtrain wrote (a checkpoint or an export), read
/// once and checked against its checksum (a file without one, older or from
/// elsewhere, is taken as it is); a checkpoint's momentum buffers are left out.
pub fn load_weights(path: &Path) -> Result<HashMap<String, Tensor>> {
    let bytes = read(path)?;
    let bad = |e: &dyn std::fmt::Display| anyhow::anyhow!("{}: {e}", path.display());
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(&e))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(&e))?;
    check_sum(&st, &meta.metadata().clone().unwrap_or_default()).map_err(|e| bad(&e))?;
    st.tensors()
        .into_iter()
        .filter(|(name, _)| !name.starts_with(MOMENTUM))
        .map(|(name, view)| Ok((name, Tensor::try_from(view).map_err(|e| bad(&e))?)))
        .collect()
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("cannot read checkpoint {}", path.display()))
}

pub fn load(path: &Path) -> Result<Loaded> {
    let bytes = read(path)?;
    let (st, state) = parse(path, &bytes)?;
    let mut weights = HashMap::new();
    let mut momentum = HashMap::new();
    for (name, view) in st.tensors() {
        let t = Tensor::try_from(view)
            .map_err(|e| anyhow::anyhow!("{} is not a complete vggtrain checkpoint: {e}", path.display()))?;
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

/// Checks a checkpoint without building its tensors.
pub fn verify(path: &Path) -> Result<()> {
    let bytes = read(path)?;
    parse(path, &bytes).map(|_| ())
}

/// The global step of a periodic checkpoint's file name.
fn step_of(p: &Path) -> Option<u64> {
    p.file_name()?
        .to_str()?
        .strip_prefix("ckpt-")?
        .strip_suffix(".safetensors")?
        .parse()
        .ok()
}

/// Periodic checkpoints of a run, oldest (lowest step) first.
pub fn list(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<(u64, PathBuf)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| step_of(&p).map(|s| (s, p)))
        .collect();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}

pub fn periodic_name(global_step: u64) -> String {
    format!("ckpt-{global_step:010}.safetensors")
}

/// A checkpoint that failed to load, and why.
#[derive(Clone, Debug)]
pub struct Damaged {
    pub path: PathBuf,
    pub error: String,
}

/// Renames a damaged checkpoint to `<name>.damaged` (`.damaged.N` when
/// taken): out of the list, kept for inspection. Returns the new path.
pub fn move_aside(path: &Path) -> Result<PathBuf> {
    let base = format!("{}.damaged", path.display());
    let to = (0..)
        .map(|i| PathBuf::from(if i == 0 { base.clone() } else { format!("{base}.{i}") }))
        .find(|p| !p.exists())
        .expect("a free name");
    fs::rename(path, &to).with_context(|| format!("cannot move {} aside", path.display()))?;
    Ok(to)
}

/// The newest periodic checkpoint of a run that loads, and the newer ones
/// that did not.
pub struct Newest {
    pub path: PathBuf,
    pub loaded: Loaded,
    pub damaged: Vec<Damaged>,
}

pub fn newest(run: &Path) -> Result<Newest> {
    let dir = run.join("checkpoints");
    if !dir.is_dir() {
        bail!(
            "{} is not a vggtrain run directory (no checkpoints/ folder)",
            run.display()
        );
    }
    let mut damaged = Vec::new();
    for path in list(&dir).into_iter().rev() {
        match load(&path) {
            Ok(loaded) => return Ok(Newest { path, loaded, damaged }),
            Err(e) => damaged.push(Damaged {
                path,
                error: format!("{e:#}"),
            }),
        }
    }
    bail!(
        "no complete checkpoint in {}{}",
        dir.display(),
        damaged
            .iter()
            .map(|d| format!("\n  skipped: {}", d.error))
            .collect::<String>()
    )
}

/// Keeps the newest `keep` periodic checkpoints that verify, by step, and
/// deletes the older ones; a damaged one is moved aside and not counted.
/// `verified` remembers the files already checked (or written) by this
/// process, so each is read once. Returns the damaged ones moved aside.
pub fn prune(dir: &Path, keep: usize, verified: &mut HashSet<PathBuf>) -> Vec<(Damaged, PathBuf)> {
    let mut kept = 0;
    let mut moved = Vec::new();
    for path in list(dir).into_iter().rev() {
        if kept >= keep {
            let _ = fs::remove_file(&path);
            verified.remove(&path);
            continue;
        }
        if verified.contains(&path) {
            kept += 1;
            continue;
        }
        match verify(&path) {
            Ok(()) => {
                verified.insert(path);
                kept += 1;
            }
            Err(e) => {
                if let Ok(to) = move_aside(&path) {
                    moved.push((
                        Damaged {
                            path,
                            error: format!("{e:#}"),
                        },
                        to,
                    ));
                }
            }
        }
    }
    moved
}
