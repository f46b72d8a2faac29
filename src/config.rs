//! The run's configuration: defaults are the paper's recipe; a TOML file
//! states only what differs; `VGGTRAIN_*` environment variables and
//! command-line `--set section.key=value` override it, in that order.
use crate::model::{Arch, InitScheme, ModelSpec};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, path::Path, path::PathBuf};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Config {
    pub model: ModelConfig,
    pub init: InitConfig,
    pub data: DataConfig,
    pub train: TrainConfig,
    pub run: RunConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ModelConfig {
    /// A, A-LRN, B, C, D, E (or vgg11, vgg11-lrn, vgg13, vgg16-c, vgg16, vgg19).
    pub config: Arch,
    /// Divides every conv and FC width: 1 is the paper's network.
    pub width: i64,
    /// An extension; the paper has no batch norm.
    pub batch_norm: bool,
    pub dropout: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            config: Arch::D,
            width: 1,
            batch_norm: false,
            dropout: 0.5,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitName {
    Paper,
    Normal,
    Glorot,
    Kaiming,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct InitConfig {
    /// paper (std 0.1), normal (std below), glorot, kaiming (the default).
    pub scheme: InitName,
    pub std: f64,
    /// Start from these weights (an exported model or a checkpoint).
    pub from: Option<PathBuf>,
    /// The paper's warm start from a trained configuration A.
    pub warm_start: Option<PathBuf>,
}

impl Default for InitConfig {
    fn default() -> Self {
        InitConfig {
            scheme: InitName::Kaiming,
            std: 0.01,
            from: None,
            warm_start: None,
        }
    }
}

impl InitConfig {
    pub fn scheme(&self) -> InitScheme {
        match self.scheme {
            InitName::Paper => InitScheme::Paper,
            InitName::Normal => InitScheme::Normal(self.std),
            InitName::Glorot => InitScheme::Glorot,
            InitName::Kaiming => InitScheme::Kaiming,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetName {
    Cifar10,
    Cifar100,
    Mnist,
    FashionMnist,
    /// root/train/<class>/*.jpg and root/val/<class>/*.jpg
    Folder,
    /// root/train/*.tar and root/val/*.tar, webdataset style (KEY.jpg +
    /// KEY.cls), and root/classes.txt
    Shards,
}

impl DatasetName {
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetName::Cifar10 => "cifar10",
            DatasetName::Cifar100 => "cifar100",
            DatasetName::Mnist => "mnist",
            DatasetName::FashionMnist => "fashion-mnist",
            DatasetName::Folder => "folder",
            DatasetName::Shards => "shards",
        }
    }

    /// Images decoded a batch at a time (folders, shards), not read into
    /// memory.
    pub fn decoded(self) -> bool {
        matches!(self, DatasetName::Folder | DatasetName::Shards)
    }

    /// The side of the dataset's square images (folders: none).
    pub fn native_side(self) -> Option<i64> {
        match self {
            DatasetName::Mnist | DatasetName::FashionMnist => Some(28),
            DatasetName::Cifar10 | DatasetName::Cifar100 => Some(32),
            DatasetName::Folder | DatasetName::Shards => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Normalize {
    /// Subtract the training set's mean per channel (the paper).
    Mean,
    /// Subtract the mean and divide by the standard deviation per channel.
    MeanStd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PcaSource {
    /// AlexNet's ImageNet eigen-pairs (3-channel data only).
    Imagenet,
    /// Computed from the training pixels' covariance.
    Dataset,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct DataConfig {
    pub dataset: DatasetName,
    /// Where the files are; default: searched (see `vggtrain info`).
    pub dir: Option<PathBuf>,
    /// Download the dataset into the data directory when it is missing.
    pub download: bool,
    /// Held out of the training set for the lr schedule; default
    /// min(5000, 10% of the training set).
    pub val_size: Option<usize>,
    /// Train on the first N images of the (seeded) shuffled training set.
    pub subset: Option<usize>,
    /// Test on the first N images of the test set.
    pub test_subset: Option<usize>,
    /// Crop size C: default 224 for folders, the native size (28 padded to
    /// 32) for the small datasets. Larger than native = upscale.
    pub crop: Option<i64>,
    /// Training scale S = [Smin, Smax] (folders): smallest side rescaled to
    /// S, drawn per image when Smin < Smax (scale jittering).
    pub scale: [i64; 2],
    /// Test scale Q (folders); default (Smin + Smax) / 2.
    pub test_scale: Option<i64>,
    /// Pad-and-random-crop for small images (pixels each side).
    pub pad: i64,
    pub flip: bool,
    /// Standard deviation of AlexNet's PCA colour shift (0 = off).
    pub pca_lighting: f64,
    pub pca_source: PcaSource,
    pub normalize: Normalize,
    /// Decoding threads for folder and shard datasets (0 = by device: see
    /// `data::folder::decode_threads`).
    pub workers: usize,
    /// Count and skip undecodable images in folders instead of failing.
    pub skip_bad_images: bool,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            dataset: DatasetName::FashionMnist,
            dir: None,
            download: false,
            val_size: None,
            subset: None,
            test_subset: None,
            crop: None,
            scale: [256, 256],
            test_scale: None,
            pad: 4,
            flip: true,
            pca_lighting: 0.1,
            pca_source: PcaSource::Imagenet,
            normalize: Normalize::Mean,
            workers: 0,
            skip_bad_images: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    Fp32,
    /// bf16 autocast on CUDA (fp32 on CPU).
    Bf16,
    /// fp16 autocast on CUDA (fp32 on CPU), with dynamic loss scaling.
    Fp16,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Precision, String> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "bf16" => Ok(Precision::Bf16),
            "fp16" => Ok(Precision::Fp16),
            other => Err(format!("precision `{other}`: expected fp32, bf16 or fp16")),
        }
    }
}

impl Precision {
    /// Autocast's dtype where the run is on CUDA.
    pub fn half(self) -> Option<crate::native::Half> {
        match self {
            Precision::Fp32 => None,
            Precision::Bf16 => Some(crate::native::Half::Bf16),
            Precision::Fp16 => Some(crate::native::Half::Fp16),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct TrainConfig {
    pub batch_size: i64,
    pub epochs: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Apply weight decay to biases too (the paper's L2 term is on all
    /// weights; PyTorch's default does the same).
    pub decay_biases: bool,
    /// The lr is divided by this on each decay.
    pub lr_decay_factor: f64,
    /// Plateau decays in total (the paper: 3).
    pub max_decays: u32,
    /// Epochs without a new best validation accuracy before the lr decays.
    pub patience: u32,
    /// Whether the user's manual decays use up the `max-decays` budget.
    pub manual_decays_count: bool,
    /// auto, cpu, cuda or cuda:N.
    pub device: String,
    pub seed: u64,
    pub precision: Precision,
    /// CPU threads for libtorch (0 = by device: see
    /// `engine::prepare::compute_threads`).
    pub threads: i32,
    /// NHWC memory layout for activations and conv weights (faster with
    /// oneDNN on CPU and cuDNN on tensor cores; see BENCHMARKS.md).
    pub channels_last: bool,
    /// Most step events per second sent to the face.
    pub step_events_per_sec: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            batch_size: 256,
            epochs: 74,
            lr: 1e-2,
            momentum: 0.9,
            weight_decay: 5e-4,
            decay_biases: true,
            lr_decay_factor: 10.0,
            max_decays: 3,
            patience: 2,
            manual_decays_count: true,
            device: "auto".into(),
            seed: 0,
            precision: Precision::Fp32,
            threads: 0,
            channels_last: true,
            step_events_per_sec: 20.0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct RunConfig {
    /// Folder of runs; default: vggtrain's data directory/runs.
    pub runs_dir: Option<PathBuf>,
    /// Run name; default: <UTC time>-<model>-<dataset>.
    pub name: Option<String>,
    /// Periodic checkpoints kept (plus best.safetensors).
    pub keep_last: usize,
    /// Save a checkpoint every N epochs (0 = only on demand and at the end).
    pub checkpoint_every: usize,
    /// Write TensorBoard event files in RUN/tensorboard/.
    pub tensorboard: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            runs_dir: None,
            name: None,
            keep_last: 3,
            checkpoint_every: 1,
            tensorboard: true,
        }
    }
}

/// The effective configuration and where each value came from.
pub struct Layered {
    pub config: Config,
    /// "section.key" -> "default" | "file PATH" | "env VAR" | "flag".
    pub sources: BTreeMap<String, String>,
}

const SECTIONS: [&str; 5] = ["model", "init", "data", "train", "run"];

fn table(value: toml::Value) -> toml::Table {
    match value {
        toml::Value::Table(t) => t,
        _ => unreachable!("a config serialises to a table"),
    }
}

/// Parses a command-line or environment value as TOML (numbers, booleans,
/// arrays), or else as a plain string.
fn parse_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

impl Config {
    /// Reads a config file; unknown keys and bad values name the file.
    pub fn from_file(path: &Path) -> Result<Config> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// defaults < file < VGGTRAIN_SECTION_KEY environment < `overrides`
    /// ("section.key=value" pairs, the command line's).
    pub fn layered(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[String],
    ) -> Result<Layered> {
        let mut merged = table(toml::Value::try_from(Config::default())?);
        let mut sources = BTreeMap::new();
        let mut set = |merged: &mut toml::Table, key: &str, value: toml::Value, source: &str| -> Result<()> {
            let (section, field) = key
                .split_once('.')
                .with_context(|| format!("`{key}` ({source}): expected section.key, e.g. train.lr"))?;
            if !SECTIONS.contains(&section) {
                bail!("`{key}` ({source}): unknown section `{section}`, expected one of {SECTIONS:?}");
            }
            let entry = merged
                .entry(section)
                .or_insert_with(|| toml::Value::Table(Default::default()));
            let toml::Value::Table(t) = entry else { unreachable!() };
            t.insert(field.to_owned(), value);
            sources.insert(key.to_owned(), source.to_owned());
            Ok(())
        };
        if let Some(path) = file {
            let file_config = Config::from_file(path)?;
            let text = std::fs::read_to_string(path)?;
            let written: toml::Table = toml::from_str(&text)?;
            let full = table(toml::Value::try_from(file_config)?);
            for (section, fields) in written {
                if let toml::Value::Table(fields) = fields {
                    for field in fields.keys() {
                        let value = full[&section][field].clone();
                        set(
                            &mut merged,
                            &format!("{section}.{field}"),
                            value,
                            &format!("file {}", path.display()),
                        )?;
                    }
                }
            }
        }
        for (var, raw) in env {
            let Some(rest) = var.strip_prefix("VGGTRAIN_") else {
                continue;
            };
            // Not a config key, though it looks like data.home.
            if var == "VGGTRAIN_DATA_HOME" {
                continue;
            }
            let lower = rest.to_ascii_lowercase();
            let Some((section, field)) = lower.split_once('_') else {
                continue;
            };
            if !SECTIONS.contains(&section) {
                continue;
            }
            let key = format!("{section}.{}", field.replace('_', "-"));
            set(&mut merged, &key, parse_value(&raw), &format!("env {var}"))?;
        }
        for o in overrides {
            let (key, raw) = o
                .split_once('=')
                .with_context(|| format!("--set {o}: expected section.key=value"))?;
            set(&mut merged, key.trim(), parse_value(raw.trim()), "flag")?;
        }
        let config: Config = toml::Value::Table(merged)
            .try_into()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("invalid configuration: {}", e.message()))?;
        // Every key of the effective config has a source.
        let full = table(toml::Value::try_from(&config)?);
        for (section, fields) in full {
            if let toml::Value::Table(fields) = fields {
                for field in fields.keys() {
                    sources
                        .entry(format!("{section}.{field}"))
                        .or_insert_with(|| "default".into());
                }
            }
        }
        config.validate()?;
        Ok(Layered { config, sources })
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a config serialises")
    }

    /// Checks every value that can be checked before anything starts.
    pub fn validate(&self) -> Result<()> {
        self.check_finite()?;
        self.check_ranges()?;
        self.check_data()?;
        if self.run.keep_last == 0 {
            bail!("run.keep-last = 0: keep at least one checkpoint");
        }
        self.model_spec(1, (self.crop(), self.crop()), 10)
            .validate()
            .map_err(|e| anyhow::anyhow!(e))
    }

    /// The numbers of the recipe are in their ranges.
    fn check_ranges(&self) -> Result<()> {
        let (t, d) = (&self.train, &self.data);
        let positive = "must be a positive number";
        let floats = [
            ("train.lr", t.lr, t.lr > 0.0, positive),
            (
                "train.momentum",
                t.momentum,
                (0.0..1.0).contains(&t.momentum),
                "expected 0 <= momentum < 1",
            ),
            (
                "train.weight-decay",
                t.weight_decay,
                t.weight_decay >= 0.0,
                "must not be negative",
            ),
            (
                "train.lr-decay-factor",
                t.lr_decay_factor,
                t.lr_decay_factor > 1.0,
                "must be greater than 1",
            ),
            (
                "train.step-events-per-sec",
                t.step_events_per_sec,
                t.step_events_per_sec > 0.0,
                positive,
            ),
            ("init.std", self.init.std, self.init.std > 0.0, positive),
            (
                "data.pca-lighting",
                d.pca_lighting,
                d.pca_lighting >= 0.0,
                "must not be negative",
            ),
        ];
        if let Some((key, v, _, want)) = floats.iter().find(|f| !f.2) {
            bail!("{key} = {v}: {want}");
        }
        if t.batch_size < 1 {
            bail!("train.batch-size = {}: must be at least 1", t.batch_size);
        }
        if t.epochs == 0 {
            bail!("train.epochs = 0: must be at least 1");
        }
        if t.patience == 0 {
            bail!("train.patience = 0: must be at least 1");
        }
        if t.threads < 0 {
            bail!(
                "train.threads = {}: must not be negative (0 = libtorch's default)",
                t.threads
            );
        }
        crate::device::parse(&t.device).map(|_| ())
    }

    /// The data settings fit together.
    fn check_data(&self) -> Result<()> {
        let d = &self.data;
        if d.scale[0] > d.scale[1] || d.scale[0] < 1 {
            bail!(
                "data.scale = {:?}: expected [Smin, Smax] with 1 <= Smin <= Smax",
                d.scale
            );
        }
        if let Some(c) = d.crop {
            if d.dataset.decoded() && c > d.scale[0] {
                bail!(
                    "data.crop = {c} is larger than the smallest training scale S = {}",
                    d.scale[0]
                );
            }
        }
        if let Some(q) = d.test_scale {
            if q < self.crop() {
                bail!(
                    "data.test-scale = {q}: the test scale Q must be at least the crop size {}",
                    self.crop()
                );
            }
        }
        if d.pad < 0 {
            bail!("data.pad = {}: must not be negative", d.pad);
        }
        if d.subset == Some(0) {
            bail!("data.subset = 0: must be at least 1");
        }
        if d.val_size == Some(0) {
            bail!("data.val-size = 0: the learning-rate schedule and best.safetensors need validation images");
        }
        if let Some(dir) = &d.dir {
            if !(dir.is_dir() || (d.download && !d.dataset.decoded())) {
                bail!("data.dir = {}: no such directory", dir.display());
            }
        }
        Ok(())
    }

    /// Every number is finite (TOML allows inf and nan).
    fn check_finite(&self) -> Result<()> {
        let table: toml::Table = toml::from_str(&self.to_toml())?;
        for (section, fields) in &table {
            let toml::Value::Table(fields) = fields else { continue };
            for (key, value) in fields {
                if let toml::Value::Float(v) = value {
                    if !v.is_finite() {
                        bail!("{section}.{key} = {v}: must be a finite number");
                    }
                }
            }
        }
        Ok(())
    }

    /// The files a new run starts from exist (a resume no longer reads them).
    pub fn validate_inputs(&self) -> Result<()> {
        for (key, path) in [
            ("init.from", &self.init.from),
            ("init.warm-start", &self.init.warm_start),
        ] {
            if let Some(p) = path {
                if !p.is_file() {
                    bail!("{key} = {}: no such file (a safetensors file of weights)", p.display());
                }
            }
        }
        Ok(())
    }

    /// The crop the network trains on.
    pub fn crop(&self) -> i64 {
        self.data
            .crop
            .unwrap_or(if self.data.dataset.decoded() { 224 } else { 32 })
    }

    pub fn model_spec(&self, in_channels: i64, input: (i64, i64), classes: i64) -> ModelSpec {
        ModelSpec {
            arch: self.model.config,
            width: self.model.width,
            in_channels,
            input,
            classes,
            batch_norm: self.model.batch_norm,
            dropout: self.model.dropout,
        }
    }
}
