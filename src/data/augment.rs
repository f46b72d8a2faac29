//! The paper's training augmentation and the deterministic evaluation
//! transform, as batched tensor ops on the training device (never one kernel
//! per image). Randomness comes from libtorch's generator, which the engine
//! seeds per step.
use crate::config::{DataConfig, Normalize, PcaSource};
use tch::{Device, Kind, Tensor};

/// AlexNet's ImageNet eigen-pairs (pixels in [0, 1]); columns of the matrix
/// are the eigenvectors.
pub const IMAGENET_EIGVAL: [f64; 3] = [0.2175, 0.0188, 0.0045];
pub const IMAGENET_EIGVEC: [f64; 9] = [
    -0.5675, 0.7192, 0.4009, //
    -0.5808, -0.0045, -0.8140, //
    -0.5836, -0.6948, 0.4203,
];

/// Per-channel statistics of the training pixels (in [0, 1]).
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    pub eigval: Vec<f64>,
    /// C x C, row-major, eigenvectors in the columns.
    pub eigvec: Vec<f64>,
}

impl Stats {
    /// From u8 [N, C, H, W] training images (a sample of at most 2,000).
    pub fn from_images(images: &Tensor, source: PcaSource) -> Stats {
        let n = images.size()[0].min(2000);
        let c = images.size()[1];
        let x = images
            .narrow(0, 0, n)
            .to_kind(Kind::Double)
            .divide_scalar(255.0)
            .permute([0, 2, 3, 1])
            .reshape([-1, c]);
        let mean = x.mean_dim(0, false, Kind::Double);
        let centred = &x - &mean;
        let cov = centred.tr().matmul(&centred) / (x.size()[0] - 1).max(1) as f64;
        let std = cov.diagonal(0, 0, 1).sqrt();
        let (eigval, eigvec) = if source == PcaSource::Imagenet && c == 3 {
            (IMAGENET_EIGVAL.to_vec(), IMAGENET_EIGVEC.to_vec())
        } else {
            // eigh gives ascending eigenvalues; AlexNet lists them descending.
            let (val, vec) = cov.linalg_eigh("L");
            (to_vec(&val.flip([0])), to_vec(&vec.flip([1])))
        };
        Stats {
            mean: to_vec(&mean),
            std: to_vec(&std),
            eigval,
            eigvec,
        }
    }
}

pub fn to_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).to_device(Device::Cpu).flatten(0, -1)).expect("a numeric tensor")
}

/// AlexNet's colour shift for each image: eigvec @ (alpha * eigval), with
/// alpha [B, C] -> [B, C].
pub fn color_shift(alpha: &Tensor, eigval: &Tensor, eigvec: &Tensor) -> Tensor {
    (alpha * eigval).matmul(&eigvec.tr())
}

/// The input normalisation: subtract the per-channel mean (pixels in
/// [0, 1]), then divide by the standard deviation when there is one.
pub struct Normalise {
    mean: Tensor,
    std: Option<Tensor>,
}

impl Normalise {
    pub fn new(mean: &[f64], std: Option<&[f64]>, device: Device) -> Normalise {
        let c = mean.len() as i64;
        let t = |v: &[f64]| {
            Tensor::from_slice(v)
                .to_kind(Kind::Float)
                .view([1, c, 1, 1])
                .to_device(device)
        };
        Normalise {
            mean: t(mean),
            std: std.map(|s| t(s).clamp_min(1e-6)),
        }
    }

    /// Float images [B, C, H, W] in [0, 1], normalised.
    pub fn apply(&self, x: &Tensor) -> Tensor {
        let x = x - &self.mean;
        match &self.std {
            Some(std) => x / std,
            None => x,
        }
    }
}

/// Turns u8 training batches into augmented, normalised float batches.
pub struct Augment {
    /// Pad-and-random-crop, pixels each side (0 = none).
    pad: i64,
    flip: bool,
    pca_std: f64,
    /// Upscale small images to this size first (None = native size).
    upscale: Option<i64>,
    norm: Normalise,
    eigval: Tensor,
    eigvec: Tensor,
}

impl Augment {
    /// `pad` is the data config's for in-memory images, 0 for images that
    /// were already cropped while decoding.
    pub fn new(cfg: &DataConfig, stats: &Stats, pad: i64, upscale: Option<i64>, device: Device) -> Augment {
        let c = stats.mean.len() as i64;
        let t = |v: &[f64], shape: &[i64]| Tensor::from_slice(v).to_kind(Kind::Float).view(shape).to_device(device);
        let std = (cfg.normalize == Normalize::MeanStd).then_some(stats.std.as_slice());
        Augment {
            pad,
            flip: cfg.flip,
            pca_std: cfg.pca_lighting,
            upscale,
            norm: Normalise::new(&stats.mean, std, device),
            eigval: t(&stats.eigval, &[c]),
            eigvec: t(&stats.eigvec, &[c, c]),
        }
    }

    fn to_float(&self, batch: &Tensor) -> Tensor {
        let x = batch.to_kind(Kind::Float) / 255.0;
        match self.upscale {
            Some(s) if s != x.size()[2] => x.upsample_bilinear2d([s, s], false, None, None),
            _ => x,
        }
    }

    /// Random horizontal flip, PCA colour shift, normalisation, then
    /// pad-and-random-crop (the padding is the mean colour).
    pub fn train(&self, batch: &Tensor) -> Tensor {
        let mut x = self.to_float(batch);
        let (b, c, h, w) = x.size4().expect("a 4-d batch");
        let dev = x.device();
        if self.flip {
            let mask = Tensor::rand([b, 1, 1, 1], (Kind::Float, dev)).lt(0.5);
            x = x.flip([3]).where_self(&mask, &x);
        }
        if self.pca_std > 0.0 {
            let alpha = Tensor::randn([b, c], (Kind::Float, dev)) * self.pca_std;
            x += color_shift(&alpha, &self.eigval, &self.eigvec).view([b, c, 1, 1]);
        }
        let x = self.norm.apply(&x);
        if self.pad == 0 {
            return x;
        }
        let p = self.pad;
        let padded = x.constant_pad_nd([p, p, p, p]);
        let offsets =
            |n| Tensor::randint(2 * p + 1, [b, 1, 1, 1], (Kind::Int64, dev)) + Tensor::arange(n, (Kind::Int64, dev));
        let rows = (offsets(h).view([b, 1, h, 1])).expand([b, c, h, w + 2 * p], false);
        let cols = (offsets(w).view([b, 1, 1, w])).expand([b, c, h, w], false);
        padded.gather(2, &rows, false).gather(3, &cols, false)
    }
}
