//! ImageNet-style folders: root/train/<class>/*.jpg|png and
//! root/val/<class>/... (class index = sorted folder names). Images are
//! decoded (image crate, zune-jpeg), rescaled (fast_image_resize) and cropped
//! on a pool of `data.workers` threads, batches ahead of training.
use super::{
    augment::Stats, jpeg, permutation, shards, shards::Member, val_size, DataError, Dataset, Source, SplitMix,
};
use crate::config::{DataConfig, DatasetName};
use fast_image_resize::{
    images::{Image, ImageRef},
    PixelType, ResizeOptions, Resizer,
};
use rayon::prelude::*;
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};
use tch::Tensor;

/// The images of one split and their labels; for tar shards, where each
/// shard's run of images starts (empty for a folder).
#[derive(Clone, Default)]
pub struct Items {
    pub files: Arc<Files>,
    pub shards: Arc<Vec<usize>>,
}

/// Samples a shuffle buffer of tar shards holds (`shards::order`).
const SHUFFLE_BUFFER: usize = 2048;

impl Items {
    /// A folder's images.
    pub fn of(files: Files) -> Items {
        Items {
            files: Arc::new(files),
            shards: Arc::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// An epoch's order from its seed: a permutation for a folder, the
    /// shards' seeded order through a shuffle buffer for tar shards.
    pub fn order(&self, seed: u64) -> Vec<usize> {
        if self.shards.is_empty() {
            permutation(self.len(), seed)
        } else {
            shards::order(self.len(), &self.shards, SHUFFLE_BUFFER, seed)
        }
    }
}

const EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "JPEG"];

/// Images and their labels.
pub type Files = Vec<(Member, i64)>;

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
        files.extend(images.into_iter().map(|p| (Member::File(p), label as i64)));
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

/// An image file, decoded (JPEG, PNG, ...).
pub fn open_image(path: &Path) -> Result<image::DynamicImage, DataError> {
    read_image(&Member::File(path.to_owned()))
}

/// A file's or a shard member's image, decoded.
fn read_image(member: &Member) -> Result<image::DynamicImage, DataError> {
    image_in(member, &member.read()?)
}

/// `bytes`, the contents of `member`, decoded.
fn image_in(member: &Member, bytes: &[u8]) -> Result<image::DynamicImage, DataError> {
    image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| member.error(format!("cannot be read: {e}")))?
        .decode()
        .map_err(|e| member.error(format!("not a decodable image: {e}")))
}

/// An image file's pixels and its full size; a JPEG decoded by
/// libjpeg-turbo at the smallest DCT scale that keeps its smallest side at
/// least `side` (`jpeg::decode`), anything else (and a JPEG libjpeg-turbo
/// refuses, e.g. CMYK) in full.
fn draft_pixels(member: &Member, channels: u32, side: u32) -> Result<(Pixels, (u32, u32)), DataError> {
    let bytes = member.read()?;
    if jpeg::is_jpeg(&bytes) {
        if let Ok(decoded) = jpeg::decode(&bytes, channels, side) {
            return Ok(decoded);
        }
    }
    let px = Pixels::of(image_in(member, &bytes)?, channels);
    let size = (px.w, px.h);
    Ok((px, size))
}

/// The size of a w x h image rescaled isotropically so that its smallest
/// side is `scale`, each side at least `min`.
pub fn rescaled_size(w: u32, h: u32, scale: u32, min: u32) -> (u32, u32) {
    let k = scale as f64 / w.min(h) as f64;
    let side = |n: u32| ((n as f64 * k).round() as u32).max(min);
    (side(w), side(h))
}

/// Interleaved pixels (`channels` 1 or 3) and their width and height.
#[derive(Clone)]
pub struct Pixels {
    pub data: Vec<u8>,
    pub w: u32,
    pub h: u32,
    pub channels: u32,
}

impl Pixels {
    /// RGB (or grey when `channels` is 1) pixels of an image.
    pub fn of(img: image::DynamicImage, channels: u32) -> Pixels {
        let (w, h) = (img.width(), img.height());
        let data = if channels == 1 {
            img.to_luma8().into_raw()
        } else {
            img.to_rgb8().into_raw()
        };
        Pixels { data, w, h, channels }
    }

    /// Rescaled isotropically so that the smallest side is `scale` (and
    /// each side at least `min`); the same pixels when that is their size.
    pub fn rescale(self, scale: u32, min: u32) -> Result<Pixels, String> {
        let (nw, nh) = rescaled_size(self.w, self.h, scale, min);
        self.resize(nw, nh)
    }

    /// Resized to exactly nw x nh (Lanczos-3).
    pub fn resize(self, nw: u32, nh: u32) -> Result<Pixels, String> {
        if (nw, nh) == (self.w, self.h) {
            return Ok(self);
        }
        let kind = self.pixel_type();
        let src = Image::from_vec_u8(self.w, self.h, self.data, kind).map_err(|e| e.to_string())?;
        let mut dst = Image::new(nw, nh, kind);
        Resizer::new()
            .resize(&src, &mut dst, &ResizeOptions::new())
            .map_err(|e| e.to_string())?;
        Ok(Pixels {
            data: dst.into_vec(),
            w: nw,
            h: nh,
            channels: self.channels,
        })
    }

    /// The window cw x ch at (x0, y0) of these pixels resized to nw x nh,
    /// resizing only that window.
    pub fn resize_window(
        &self,
        (nw, nh): (u32, u32),
        (x0, y0): (u32, u32),
        (cw, ch): (u32, u32),
    ) -> Result<Pixels, String> {
        let src = ImageRef::new(self.w, self.h, &self.data, self.pixel_type()).map_err(|e| e.to_string())?;
        let (sx, sy) = (self.w as f64 / nw as f64, self.h as f64 / nh as f64);
        let (left, top) = (x0 as f64 * sx, y0 as f64 * sy);
        // Within the image, whatever the rounding.
        let (width, height) = (
            (cw as f64 * sx).min(self.w as f64 - left),
            (ch as f64 * sy).min(self.h as f64 - top),
        );
        let window = ResizeOptions::new().crop(left, top, width, height);
        let mut dst = Image::new(cw, ch, self.pixel_type());
        Resizer::new()
            .resize(&src, &mut dst, &window)
            .map_err(|e| e.to_string())?;
        Ok(Pixels {
            data: dst.into_vec(),
            w: cw,
            h: ch,
            channels: self.channels,
        })
    }

    fn pixel_type(&self) -> PixelType {
        if self.channels == 1 {
            PixelType::U8
        } else {
            PixelType::U8x3
        }
    }

    /// The window w x h at (x0, y0), planar: C x h x w bytes.
    pub fn planar(&self, x0: u32, y0: u32, w: u32, h: u32) -> Vec<u8> {
        let c = self.channels as usize;
        let plane = (w * h) as usize;
        let mut out = vec![0u8; c * plane];
        for y in 0..h {
            for x in 0..w {
                let s = (((y0 + y) * self.w + x0 + x) as usize) * c;
                let d = (y * w + x) as usize;
                for k in 0..c {
                    out[k * plane + d] = self.data[s + k];
                }
            }
        }
        out
    }
}

/// Decodes, rescales and crops one image into C x H x W bytes (RGB);
/// `draft`: a JPEG at a reduced DCT scale first (training).
pub fn decode(member: &Member, cut: Cut, draft: bool) -> Result<(Vec<u8>, u32, u32), DataError> {
    let (px, (w, h)) = if draft {
        draft_pixels(member, 3, cut.scale)?
    } else {
        let px = Pixels::of(read_image(member)?, 3);
        let size = (px.w, px.h);
        (px, size)
    };
    // The size the full image rescales to, whatever size it was decoded at.
    let (nw, nh) = rescaled_size(w, h, cut.scale, cut.crop);
    let (cw, ch) = if cut.crop == 0 { (nw, nh) } else { (cut.crop, cut.crop) };
    let x0 = ((nw - cw) as f64 * cut.fx).round() as u32;
    let y0 = ((nh - ch) as f64 * cut.fy).round() as u32;
    let format = |what: String| member.error(what);
    if draft {
        // Only the window is resized.
        let window = px.resize_window((nw, nh), (x0, y0), (cw, ch)).map_err(format)?;
        Ok((window.planar(0, 0, cw, ch), cw, ch))
    } else {
        Ok((px.resize(nw, nh).map_err(format)?.planar(x0, y0, cw, ch), cw, ch))
    }
}

/// One decoded image at several scales: (C x H x W bytes, W, H) at each,
/// the whole image with its smallest side rescaled to the scale.
pub fn decode_scales(member: &Member, channels: u32, scales: &[i64]) -> Result<Vec<(Vec<u8>, u32, u32)>, DataError> {
    let px = Pixels::of(read_image(member)?, channels);
    scales
        .iter()
        .map(|&q| {
            let at = px.clone().rescale(q as u32, 0).map_err(|what| member.error(what))?;
            Ok((at.planar(0, 0, at.w, at.h), at.w, at.h))
        })
        .collect()
}

/// A decoded batch in host memory: [N, 3, crop, crop] bytes and labels.
pub struct HostBatch {
    pub pixels: Vec<u8>,
    pub labels: Vec<i64>,
    pub crop: i64,
    /// Undecodable images left out (with `skip_bad`), and the first's error.
    pub skipped: usize,
    pub bad: Option<String>,
}

/// A batch as host tensors made ready, on the prefetch thread, for a copy
/// to the training device: page-locked on CUDA, so that `upload` does not
/// block the thread that trains.
pub struct Staged {
    pub x: Tensor,
    pub y: Tensor,
    pub skipped: usize,
    pub bad: Option<String>,
}

impl HostBatch {
    pub fn to_tensors(&self, device: tch::Device) -> (Tensor, Tensor) {
        let s = self.stage(tch::Device::Cpu);
        (upload(&s.x, device), upload(&s.y, device))
    }

    /// [N, 3, crop, crop] bytes and the labels, page-locked for `device`
    /// when it is a GPU.
    pub fn stage(&self, device: tch::Device) -> Staged {
        let n = self.labels.len() as i64;
        let x = Tensor::from_slice(&self.pixels).view([n, 3, self.crop, self.crop]);
        let y = Tensor::from_slice(&self.labels);
        let (x, y) = if device.is_cuda() {
            // Unpinned still uploads, only slower.
            let pin = |t: Tensor| crate::native::pin_memory(&t).unwrap_or(t);
            (pin(x), pin(y))
        } else {
            (x, y)
        };
        Staged {
            x,
            y,
            skipped: self.skipped,
            bad: self.bad.clone(),
        }
    }
}

/// A host tensor on `device`; from page-locked memory to a GPU the copy is
/// queued on the device's stream without waiting (the kernels that read it
/// come after it on that stream).
pub fn upload(t: &Tensor, device: tch::Device) -> Tensor {
    if device.is_cuda() && t.device() == tch::Device::Cpu {
        t.to_device_(device, t.kind(), true, false)
    } else {
        t.to_device(device)
    }
}

/// What a folder batch needs besides the indices, and the threads that
/// decode it.
#[derive(Clone)]
pub struct Plan {
    pub scale: [i64; 2],
    pub test_scale: i64,
    pub crop: i64,
    pub skip_bad: bool,
    pub pool: Arc<rayon::ThreadPool>,
}

/// The decoding threads for `data.workers` on `device`. 0 chooses: on
/// CUDA every core but one (the step runs on the GPU; the engine's thread
/// keeps a core); on the CPU one thread per 8 cores, at least one, since
/// libtorch's step needs the cores and a core decodes several times the
/// images a CPU step trains on (BENCHMARKS.md).
pub fn decode_threads(workers: usize, device: tch::Device) -> usize {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    match workers {
        0 if device.is_cuda() => (cores - 1).max(1),
        0 => (cores / 8).max(1),
        n => n,
    }
}

/// A pool of `threads` decoding threads.
pub fn pool(threads: usize) -> Arc<rayon::ThreadPool> {
    Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("vggtrain-decode-{i}"))
            .build()
            .expect("the decoding threads start"),
    )
}

impl Plan {
    /// The plan of `cfg` for training on `device`.
    pub fn new(cfg: &DataConfig, crop: i64, device: tch::Device) -> Plan {
        Plan {
            scale: cfg.scale,
            test_scale: cfg.test_scale.unwrap_or((cfg.scale[0] + cfg.scale[1]) / 2),
            crop,
            skip_bad: cfg.skip_bad_images,
            pool: pool(decode_threads(cfg.workers, device)),
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

    /// Decodes the images `indices` of `items` on the plan's pool.
    pub fn batch(&self, items: &Items, indices: &[usize], train: bool, seed: u64) -> Result<HostBatch, DataError> {
        let decoded: Vec<_> = self.pool.install(|| {
            indices
                .par_iter()
                .map(|&i| {
                    let (path, label) = &items.files[i];
                    decode(path, self.cut(train, seed, i), train).map(|(px, _, _)| (px, *label))
                })
                .collect()
        });
        let mut batch = HostBatch {
            pixels: Vec::new(),
            labels: Vec::new(),
            crop: self.crop,
            skipped: 0,
            bad: None,
        };
        for d in decoded {
            match d {
                Ok((px, label)) => {
                    batch.pixels.extend(px);
                    batch.labels.push(label);
                }
                Err(e) if self.skip_bad => {
                    batch.skipped += 1;
                    batch.bad.get_or_insert_with(|| e.to_string());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(batch)
    }
}

/// Images decoded for evaluation: at each scale, (C x H x W bytes, W, H)
/// of every image (whole, the smallest side at the scale), and the labels.
pub struct HostScaled {
    pub scales: Vec<Vec<(Vec<u8>, u32, u32)>>,
    pub labels: Vec<i64>,
    pub skipped: usize,
    pub bad: Option<String>,
}

impl Plan {
    /// Decodes the images `indices` of `items` once each, at every scale,
    /// on the plan's pool.
    pub fn scaled(&self, items: &Items, indices: &[usize], scales: &[i64]) -> Result<HostScaled, DataError> {
        let decoded: Vec<_> = self.pool.install(|| {
            indices
                .par_iter()
                .map(|&i| {
                    let (path, label) = &items.files[i];
                    decode_scales(path, 3, scales).map(|s| (s, *label))
                })
                .collect()
        });
        let mut out = HostScaled {
            scales: vec![Vec::new(); scales.len()],
            labels: Vec::new(),
            skipped: 0,
            bad: None,
        };
        for d in decoded {
            match d {
                Ok((at, label)) => {
                    for (s, image) in out.scales.iter_mut().zip(at) {
                        s.push(image);
                    }
                    out.labels.push(label);
                }
                Err(e) if self.skip_bad => {
                    out.skipped += 1;
                    out.bad.get_or_insert_with(|| e.to_string());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

/// Scans root/train and root/val, holds the validation split out of train.
pub fn load(cfg: &DataConfig, root: &Path, seed: u64, crop: i64) -> Result<Dataset, DataError> {
    let (classes, train_all, starts, test) = if cfg.dataset == DatasetName::Shards {
        let (train_all, starts) = shards::scan(&root.join("train"))?;
        let (test, _) = shards::scan(&root.join("val"))?;
        (shards::classes(root, &[&train_all, &test])?, train_all, starts, test)
    } else {
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
        (classes, train_all, Vec::new(), test)
    };
    let order = permutation(train_all.len(), seed ^ 0x5eed_da7a);
    let n_val = val_size(cfg, train_all.len())?;
    let pick = |idx: &[usize]| Items::of(idx.iter().map(|&i| train_all[i].clone()).collect());
    let (val_idx, train_idx) = order.split_at(n_val);
    let train_idx = &train_idx[..cfg.subset.unwrap_or(usize::MAX).min(train_idx.len())];
    let test_len = cfg.test_subset.unwrap_or(usize::MAX).min(test.len());
    let train = if starts.is_empty() {
        pick(train_idx)
    } else {
        // Shards keep their samples together, in file order.
        let mut idx = train_idx.to_vec();
        idx.sort_unstable();
        let shard_of = |i: usize| starts.partition_point(|&s| s <= i);
        let runs = (0..idx.len())
            .filter(|&k| k == 0 || shard_of(idx[k]) != shard_of(idx[k - 1]))
            .collect();
        Items {
            shards: Arc::new(runs),
            ..pick(&idx)
        }
    };
    // Pixel statistics from the centre crops of up to 256 training images.
    let plan = Plan {
        skip_bad: true,
        ..Plan::new(cfg, crop, tch::Device::Cpu)
    };
    let sample: Vec<usize> = (0..train.len().min(256)).collect();
    let host = plan.batch(&train, &sample, false, seed)?;
    let (images, _) = host.to_tensors(tch::Device::Cpu);
    let stats = Stats::from_images(&images, cfg.pca_source);
    Ok(Dataset {
        name: cfg.dataset,
        dir: root.to_owned(),
        classes,
        channels: 3,
        train: Source::Folder(train),
        val: Source::Folder(pick(val_idx)),
        test: Source::Folder(Items::of(test[..test_len].to_vec())),
        stats,
    })
}

/// Makes the listed batches (indices, seed) in order with `make` (on a
/// thread of its own; `make` uses the plan's pool), at most `depth` batches
/// ahead of the consumer, so training does not wait while cores suffice.
/// Dropping the receiver stops it.
pub fn prefetch<T: Send + 'static>(
    batches: Vec<(Vec<usize>, u64)>,
    depth: usize,
    make: impl Fn(&[usize], u64) -> Result<T, DataError> + Send + 'static,
) -> crossbeam_channel::Receiver<Result<T, DataError>> {
    let (tx, rx) = crossbeam_channel::bounded(depth);
    std::thread::Builder::new()
        .name("vggtrain-prefetch".into())
        .spawn(move || {
            for (idx, seed) in batches {
                if tx.send(make(&idx, seed)).is_err() {
                    break;
                }
            }
        })
        .expect("the prefetch thread starts");
    rx
}
