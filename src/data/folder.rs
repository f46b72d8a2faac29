//! ImageNet-style folders: root/train/<class>/*.jpg|png and
//! root/val/<class>/... (class index = sorted folder names). Images are
//! decoded (image crate, zune-jpeg), rescaled (fast_image_resize) and cropped
//! on a thread pool, a batch ahead of training.
use super::{augment::Stats, permutation, val_size, DataError, Dataset, Source, SplitMix};
use crate::config::DataConfig;
use fast_image_resize::{images::Image, PixelType, ResizeOptions, Resizer};
use rayon::prelude::*;
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};
use tch::Tensor;

/// The files of one split and their labels.
#[derive(Clone, Default)]
pub struct Items {
    pub files: Arc<Vec<(PathBuf, i64)>>,
}

impl Items {
    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

const EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "JPEG"];

/// Image files and their labels.
pub type Files = Vec<(PathBuf, i64)>;

/// Lists `split/<class>/*` with classes in sorted order.
pub fn scan(split: &Path) -> Result<(Vec<String>, Files), DataError> {
    let read = |d: &Path| {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d)
            .map_err(|e| DataError::io(d, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        v.sort();
        Ok::<_, DataError>(v)
    };
    let classes: Vec<PathBuf> = read(split)?.into_iter().filter(|p| p.is_dir()).collect();
    if classes.is_empty() {
        return Err(DataError::Missing {
            what: "class folders".into(),
            dir: split.to_owned(),
        });
    }
    let mut files = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let images: Vec<PathBuf> = read(class)?
            .into_iter()
            .filter(|p| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| EXTENSIONS.contains(&e))
            })
            .collect();
        if images.is_empty() {
            return Err(DataError::Format {
                path: class.clone(),
                what: "empty class folder: no .jpg, .jpeg or .png files".into(),
            });
        }
        files.extend(images.into_iter().map(|p| (p, label as i64)));
    }
    let names = classes
        .iter()
        .map(|c| c.file_name().unwrap_or_default().to_string_lossy().into_owned())
        .collect();
    Ok((names, files))
}

/// How to cut one image: smallest side rescaled to `scale`, then a
/// `crop` x `crop` window at (fx, fy) in [0, 1] of the free room (0.5 =
/// centre); `crop` = 0 keeps the whole rescaled image.
#[derive(Clone, Copy, Debug)]
pub struct Cut {
    pub scale: u32,
    pub crop: u32,
    pub fx: f64,
    pub fy: f64,
}

/// Decodes, rescales and crops one image into C x H x W bytes (RGB).
pub fn decode(path: &Path, cut: Cut) -> Result<(Vec<u8>, u32, u32), DataError> {
    let bad = |what: String| DataError::Format {
        path: path.to_owned(),
        what,
    };
    let img = image::ImageReader::open(path)
        .map_err(|e| DataError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?
        .decode()
        .map_err(|e| bad(format!("not a decodable image: {e}")))?
        .to_rgb8();
    let (w, h) = img.dimensions();
    let k = cut.scale as f64 / w.min(h) as f64;
    let (nw, nh) = (
        ((w as f64 * k).round() as u32).max(cut.crop),
        ((h as f64 * k).round() as u32).max(cut.crop),
    );
    let src = Image::from_vec_u8(w, h, img.into_raw(), PixelType::U8x3).map_err(|e| bad(e.to_string()))?;
    let mut dst = Image::new(nw, nh, PixelType::U8x3);
    Resizer::new()
        .resize(&src, &mut dst, &ResizeOptions::new())
        .map_err(|e| bad(e.to_string()))?;
    let (cw, ch) = if cut.crop == 0 { (nw, nh) } else { (cut.crop, cut.crop) };
    let x0 = ((nw - cw) as f64 * cut.fx).round() as u32;
    let y0 = ((nh - ch) as f64 * cut.fy).round() as u32;
    let rgb = dst.buffer();
    let mut out = vec![0u8; (3 * cw * ch) as usize];
    let plane = (cw * ch) as usize;
    for y in 0..ch {
        for x in 0..cw {
            let s = (((y0 + y) * nw + x0 + x) * 3) as usize;
            let d = (y * cw + x) as usize;
            for c in 0..3 {
                out[c * plane + d] = rgb[s + c];
            }
        }
    }
    Ok((out, cw, ch))
}

/// A decoded batch in host memory: [N, 3, crop, crop] bytes and labels.
pub struct HostBatch {
    pub pixels: Vec<u8>,
    pub labels: Vec<i64>,
    pub crop: i64,
    pub skipped: usize,
}

impl HostBatch {
    pub fn to_tensors(&self, device: tch::Device) -> (Tensor, Tensor) {
        let n = self.labels.len() as i64;
        (
            Tensor::from_slice(&self.pixels)
                .view([n, 3, self.crop, self.crop])
                .to_device(device),
            Tensor::from_slice(&self.labels).to_device(device),
        )
    }
}

/// What a folder batch needs besides the indices.
#[derive(Clone, Copy)]
pub struct Plan {
    pub scale: [i64; 2],
    pub test_scale: i64,
    pub crop: i64,
    pub skip_bad: bool,
}

impl Plan {
    pub fn new(cfg: &DataConfig, crop: i64) -> Plan {
        Plan {
            scale: cfg.scale,
            test_scale: cfg.test_scale.unwrap_or((cfg.scale[0] + cfg.scale[1]) / 2),
            crop,
            skip_bad: cfg.skip_bad_images,
        }
    }

    /// Training: S drawn per image (scale jittering) and a random crop,
    /// seeded by (seed, image); evaluation: Q and the centre crop.
    fn cut(&self, train: bool, seed: u64, index: usize) -> Cut {
        if !train {
            return Cut {
                scale: self.test_scale as u32,
                crop: self.crop as u32,
                fx: 0.5,
                fy: 0.5,
            };
        }
        let mut rng = SplitMix(seed ^ (index as u64).wrapping_mul(0x9e37_79b9));
        let s = self.scale[0] + rng.below((self.scale[1] - self.scale[0] + 1) as u64) as i64;
        Cut {
            scale: s as u32,
            crop: self.crop as u32,
            fx: rng.uniform(),
            fy: rng.uniform(),
        }
    }

    /// Decodes the images `indices` of `items` on rayon's pool.
    pub fn batch(&self, items: &Items, indices: &[usize], train: bool, seed: u64) -> Result<HostBatch, DataError> {
        let decoded: Vec<_> = indices
            .par_iter()
            .map(|&i| {
                let (path, label) = &items.files[i];
                decode(path, self.cut(train, seed, i)).map(|(px, _, _)| (px, *label))
            })
            .collect();
        let mut batch = HostBatch {
            pixels: Vec::new(),
            labels: Vec::new(),
            crop: self.crop,
            skipped: 0,
        };
        for d in decoded {
            match d {
                Ok((px, label)) => {
                    batch.pixels.extend(px);
                    batch.labels.push(label);
                }
                Err(_) if self.skip_bad => batch.skipped += 1,
                Err(e) => return Err(e),
            }
        }
        Ok(batch)
    }
}

/// Scans root/train and root/val, holds the validation split out of train.
pub fn load(cfg: &DataConfig, root: &Path, seed: u64, crop: i64) -> Result<Dataset, DataError> {
    let (classes, train_all) = scan(&root.join("train"))?;
    let (val_classes, test) = scan(&root.join("val"))?;
    if val_classes != classes {
        return Err(DataError::Format {
            path: root.join("val"),
            what: format!(
                "its {} class folders differ from train's {}",
                val_classes.len(),
                classes.len()
            ),
        });
    }
    let order = permutation(train_all.len(), seed ^ 0x5eed_da7a);
    let n_val = val_size(cfg, train_all.len())?;
    let pick = |idx: &[usize]| Items {
        files: Arc::new(idx.iter().map(|&i| train_all[i].clone()).collect()),
    };
    let (val_idx, train_idx) = order.split_at(n_val);
    let train_idx = &train_idx[..cfg.subset.unwrap_or(usize::MAX).min(train_idx.len())];
    let test_len = cfg.test_subset.unwrap_or(usize::MAX).min(test.len());
    let train = pick(train_idx);
    // Pixel statistics from the centre crops of up to 256 training images.
    let plan = Plan::new(cfg, crop);
    let sample: Vec<usize> = (0..train.len().min(256)).collect();
    let host = Plan { skip_bad: true, ..plan }.batch(&train, &sample, false, seed)?;
    let (images, _) = host.to_tensors(tch::Device::Cpu);
    let stats = Stats::from_images(&images, cfg.pca_source);
    Ok(Dataset {
        name: cfg.dataset,
        dir: root.to_owned(),
        classes,
        channels: 3,
        train: Source::Folder(train),
        val: Source::Folder(pick(val_idx)),
        test: Source::Folder(Items {
            files: Arc::new(test[..test_len].to_vec()),
        }),
        stats,
    })
}

/// Decodes the listed training batches (indices, seed) in order on rayon's
/// pool, at most `depth` batches ahead of the consumer, so training does not
/// wait while cores suffice. Dropping the receiver stops it.
pub fn prefetch(
    plan: Plan,
    items: Items,
    batches: Vec<(Vec<usize>, u64)>,
    depth: usize,
) -> crossbeam_channel::Receiver<Result<HostBatch, DataError>> {
    let (tx, rx) = crossbeam_channel::bounded(depth);
    std::thread::Builder::new()
        .name("vggtrain-prefetch".into())
        .spawn(move || {
            for (idx, seed) in batches {
                if tx.send(plan.batch(&items, &idx, true, seed)).is_err() {
                    break;
                }
            }
        })
        .expect("the prefetch thread starts");
    rx
}
