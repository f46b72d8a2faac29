//! Datasets (CIFAR-10/100, MNIST, Fashion-MNIST, ImageNet-style folders),
//! the validation split, and batches with the paper's augmentation.
pub mod augment;
pub mod cifar;
pub mod download;
pub mod folder;
pub mod idx;
pub mod jpeg;
pub mod shards;

use crate::config::{DataConfig, DatasetName};
use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
};
use tch::{Device, Kind, Tensor};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DataError {
    #[error("{path}: {what}")]
    Format { path: PathBuf, what: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("missing {what} in {dir}")]
    Missing { what: String, dir: PathBuf },
    #[error("{0}")]
    Other(String),
}

impl DataError {
    pub fn io(path: &Path, source: std::io::Error) -> DataError {
        DataError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Images held in host memory: N x C x H x W bytes and their labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Images {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub pixels: Vec<u8>,
    pub labels: Vec<i64>,
}

impl Images {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    fn append(&mut self, other: Images) {
        self.pixels.extend(other.pixels);
        self.labels.extend(other.labels);
    }

    fn check_labels(&self, path: &Path, classes: usize) -> Result<(), DataError> {
        match self.labels.iter().position(|&l| l < 0 || l as usize >= classes) {
            Some(i) => Err(DataError::Format {
                path: path.to_owned(),
                what: format!(
                    "label {} of record {i} is outside the {classes} classes",
                    self.labels[i]
                ),
            }),
            None => Ok(()),
        }
    }

    /// u8 [N, C, H, W] and i64 [N] tensors on `device`.
    fn to_tensors(&self, device: Device) -> (Tensor, Tensor) {
        let n = self.len() as i64;
        let images = Tensor::from_slice(&self.pixels)
            .view([n, self.c as i64, self.h as i64, self.w as i64])
            .to_device(device);
        (images, Tensor::from_slice(&self.labels).to_device(device))
    }
}

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::Format {
                path: path.to_owned(),
                what: format!("corrupt or truncated gzip data: {e}"),
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn write_maybe_gz(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if path.extension().is_some_and(|e| e == "gz") {
        let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(path)?, flate2::Compression::fast());
        enc.write_all(bytes)?;
        enc.finish()?;
        Ok(())
    } else {
        std::fs::write(path, bytes)
    }
}

pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// vggtrain's own data directory (datasets are looked for and downloaded
/// under `<data dir>/datasets/<name>`).
pub fn data_home() -> PathBuf {
    if let Ok(dir) = std::env::var("VGGTRAIN_DATA_HOME") {
        return PathBuf::from(dir);
    }
    directories::ProjectDirs::from("", "", "vggtrain")
        .map(|d| d.data_dir().to_owned())
        .unwrap_or_else(|| PathBuf::from(".vggtrain"))
}

/// Folders searched for a dataset, in order.
pub fn candidate_dirs(name: DatasetName) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    match name {
        DatasetName::FashionMnist => dirs.push(PathBuf::from("/usr/share/datasets/fashion-mnist")),
        DatasetName::Mnist => dirs.push(PathBuf::from("/usr/share/datasets/mnist")),
        _ => {}
    }
    dirs.push(data_home().join("datasets").join(name.as_str()));
    dirs
}

/// The file that marks a folder as holding the dataset.
fn marker_present(name: DatasetName, dir: &Path) -> bool {
    match name {
        DatasetName::FashionMnist | DatasetName::Mnist => idx_file(dir, "t10k-images-idx3-ubyte").is_some(),
        DatasetName::Cifar10 => {
            dir.join(download::CIFAR10.file).is_file() || cifar_dir_has(dir, cifar::CIFAR10.test_file)
        }
        DatasetName::Cifar100 => {
            dir.join(download::CIFAR100.file).is_file() || cifar_dir_has(dir, cifar::CIFAR100.test_file)
        }
        DatasetName::Folder | DatasetName::Shards => dir.join("train").is_dir(),
    }
}

fn cifar_dir_has(dir: &Path, file: &str) -> bool {
    ["", "cifar-10-batches-bin", "cifar-100-binary"]
        .iter()
        .any(|s| dir.join(s).join(file).is_file())
}

fn idx_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    [format!("{stem}.gz"), stem.to_owned()]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// Finds the dataset's folder: the configured one, or the first candidate
/// that holds it; downloads it when asked.
pub fn locate(cfg: &DataConfig) -> Result<PathBuf, DataError> {
    if let Some(dir) = &cfg.dir {
        if !marker_present(cfg.dataset, dir) && cfg.download && !cfg.dataset.decoded() {
            download::fetch_dataset(cfg.dataset, dir)?;
        }
        if !dir.is_dir() {
            return Err(DataError::Other(format!(
                "data.dir = {}: no such directory",
                dir.display()
            )));
        }
        return Ok(dir.clone());
    }
    let dirs = candidate_dirs(cfg.dataset);
    if let Some(dir) = dirs.iter().find(|d| marker_present(cfg.dataset, d)) {
        return Ok(dir.clone());
    }
    let home = dirs.last().expect("at least one candidate").clone();
    if cfg.download && !cfg.dataset.decoded() {
        download::fetch_dataset(cfg.dataset, &home)?;
        return Ok(home);
    }
    Err(DataError::Other(match cfg.dataset {
        DatasetName::Folder => {
            "a folder dataset needs data.dir (or --data-dir) = a folder with train/<class>/ and val/<class>/".into()
        }
        DatasetName::Shards => {
            "a shards dataset needs data.dir (or --data-dir) = a folder with train/*.tar and val/*.tar (vggtrain pack writes one)".into()
        }
        other => format!(
            "{} not found in {}; {}",
            other.as_str(),
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            download::how_to_get(other, &home)
        ),
    }))
}

/// Reads an in-memory dataset: (train, test, class names).
pub fn read_in_memory(name: DatasetName, dir: &Path) -> Result<(Images, Images, Vec<String>), DataError> {
    let idx = |stem: &str| {
        idx_file(dir, stem).ok_or_else(|| DataError::Missing {
            what: format!("{stem}(.gz)"),
            dir: dir.to_owned(),
        })
    };
    let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    match name {
        DatasetName::FashionMnist | DatasetName::Mnist => {
            let train = idx::read_pair(&idx("train-images-idx3-ubyte")?, &idx("train-labels-idx1-ubyte")?, 10)?;
            let test = idx::read_pair(&idx("t10k-images-idx3-ubyte")?, &idx("t10k-labels-idx1-ubyte")?, 10)?;
            let classes = if name == DatasetName::Mnist {
                (0..10).map(|d| d.to_string()).collect()
            } else {
                names(&FASHION_MNIST_CLASSES)
            };
            Ok((train, test, classes))
        }
        DatasetName::Cifar10 => {
            let (train, test, found) = cifar::read(dir, download::CIFAR10.file, cifar::CIFAR10)?;
            Ok((train, test, found.unwrap_or_else(|| names(&cifar::CIFAR10_CLASSES))))
        }
        DatasetName::Cifar100 => {
            let (train, test, found) = cifar::read(dir, download::CIFAR100.file, cifar::CIFAR100)?;
            let builtin = include_str!("../../assets/cifar100-classes.txt")
                .lines()
                .map(str::to_owned)
                .collect();
            Ok((train, test, found.unwrap_or(builtin)))
        }
        DatasetName::Folder | DatasetName::Shards => unreachable!("folder datasets are not read into memory"),
    }
}

/// Where a split's images live.
pub enum Source {
    /// u8 [N, C, H, W] and i64 [N] on the training device.
    Memory {
        images: Tensor,
        labels: Tensor,
    },
    Folder(folder::Items),
}

impl Source {
    /// An epoch's order of the images, from the epoch's seed.
    pub fn order(&self, seed: u64) -> Vec<usize> {
        match self {
            Source::Folder(items) => items.order(seed),
            Source::Memory { .. } => permutation(self.len(), seed),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Source::Memory { labels, .. } => labels.size()[0] as usize,
            Source::Folder(items) => items.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A dataset ready to train on: three splits, class names, pixel statistics.
pub struct Dataset {
    pub name: DatasetName,
    pub dir: PathBuf,
    pub classes: Vec<String>,
    pub channels: i64,
    pub train: Source,
    pub val: Source,
    pub test: Source,
    pub stats: augment::Stats,
}

/// The number of images held out for validation.
pub fn val_size(cfg: &DataConfig, train_len: usize) -> Result<usize, DataError> {
    match cfg.val_size {
        Some(v) if v >= train_len => Err(DataError::Other(format!(
            "data.val-size = {v} leaves no training images out of {train_len}"
        ))),
        Some(v) => Ok(v),
        None => Ok((train_len / 10).min(5000)),
    }
}

/// A seeded permutation of 0..n (the same on every machine).
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = SplitMix(seed);
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        p.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    p
}

/// A small, fast, seedable generator for host-side choices.
#[derive(Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    #[allow(clippy::should_implement_trait)] // an endless generator, not an iterator
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Loads the configured dataset onto `device`: validation split held out of
/// the (seeded, shuffled) training set, subsets applied, 28x28 padded to 32.
pub fn load(cfg: &DataConfig, crop: i64, seed: u64, device: Device) -> Result<Dataset, DataError> {
    let dir = locate(cfg)?;
    if cfg.dataset.decoded() {
        return folder::load(cfg, &dir, seed, crop);
    }
    let (train, test, classes) = read_in_memory(cfg.dataset, &dir)?;
    let order = permutation(train.len(), seed ^ 0x5eed_da7a);
    let n_val = val_size(cfg, train.len())?;
    let (val_idx, train_idx) = order.split_at(n_val);
    let train_idx = &train_idx[..cfg.subset.unwrap_or(usize::MAX).min(train_idx.len())];
    let test_len = cfg.test_subset.unwrap_or(usize::MAX).min(test.len());
    let (train_images, train_labels) = train.to_tensors(device);
    let pick = |idx: &[usize]| {
        let idx = Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(device);
        Source::Memory {
            images: pad_to_32(&train_images.index_select(0, &idx)),
            labels: train_labels.index_select(0, &idx),
        }
    };
    let (train_s, val_s) = (pick(train_idx), pick(val_idx));
    let (test_images, test_labels) = test.to_tensors(device);
    let test_s = Source::Memory {
        images: pad_to_32(&test_images.narrow(0, 0, test_len as i64)),
        labels: test_labels.narrow(0, 0, test_len as i64),
    };
    let Source::Memory { images, .. } = &train_s else {
        unreachable!()
    };
    let stats = augment::Stats::from_images(images, cfg.pca_source);
    Ok(Dataset {
        name: cfg.dataset,
        dir,
        classes,
        channels: train.c as i64,
        train: train_s,
        val: val_s,
        test: test_s,
        stats,
    })
}

/// 28x28 (the MNIST family) padded with zeros to 32x32 so five pools fit.
fn pad_to_32(images: &Tensor) -> Tensor {
    let (h, w) = (images.size()[2], images.size()[3]);
    if h >= 32 && w >= 32 {
        return images.shallow_clone();
    }
    let (ph, pw) = (32 - h, 32 - w);
    images
        .to_kind(Kind::Float)
        .constant_pad_nd([pw / 2, pw - pw / 2, ph / 2, ph - ph / 2])
        .to_kind(Kind::Uint8)
}
