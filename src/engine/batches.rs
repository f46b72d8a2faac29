//! Batches of a split on the training device, in a given order: cut from
//! the in-memory tensor, or decoded ahead on the folder pool. Waiting for a
//! batch never hides a stop request.
use crate::config::Config;
use crate::data::{folder, DataError, Source};
use crate::model;
use crate::native::{self, Half};
use anyhow::Result;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::time::Duration;
use tch::{Device, Kind, Tensor};

/// How often a wait for data looks for a stop request.
const STOP_POLL: Duration = Duration::from_millis(100);

/// The device, the layout and the folder plan batches are made with.
pub struct Batches {
    pub device: Device,
    plan: Option<folder::Plan>,
    /// CUDA autocast's dtype (bf16, fp16), None for fp32 or on the CPU.
    half: Option<Half>,
    pub channels_last: bool,
}

/// One batch: u8 [B, C, H, W] images and labels on the device, and the
/// undecodable images left out of it (`data.skip-bad-images`).
pub struct Batch {
    pub x: Tensor,
    pub y: Tensor,
    pub skipped: usize,
    /// The first undecodable image's error, when some were skipped.
    pub bad: Option<String>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.y.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What waiting for the next batch gave.
pub enum Fetch<T> {
    Batch(Result<T>),
    /// The list is done.
    Done,
    /// A stop was requested while waiting.
    Stopped,
}

/// Waits for the next prefetched batch, asking `stop` meanwhile.
fn wait<T, U>(
    rx: &Receiver<Result<T, DataError>>,
    stop: &mut dyn FnMut() -> bool,
    then: impl FnOnce(T) -> U,
) -> Fetch<U> {
    loop {
        match rx.recv_timeout(STOP_POLL) {
            Ok(Ok(b)) => return Fetch::Batch(Ok(then(b))),
            Ok(Err(e)) => return Fetch::Batch(Err(e.into())),
            Err(RecvTimeoutError::Disconnected) => return Fetch::Done,
            Err(RecvTimeoutError::Timeout) if stop() => return Fetch::Stopped,
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

/// Images of an evaluation batch at each of its scales, as floats in
/// [0, 1] on the device: per scale, groups of images of one size (in
/// order); the labels, and the undecodable images left out.
pub struct ScaledBatch {
    pub scales: Vec<Vec<Tensor>>,
    pub labels: Tensor,
    pub skipped: usize,
    pub bad: Option<String>,
}

impl ScaledBatch {
    pub fn len(&self) -> usize {
        self.labels.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Planar images (C x H x W bytes, W, H) as float tensors in [0, 1]:
/// consecutive images of one size stacked into one group.
pub fn groups(images: &[(Vec<u8>, u32, u32)], channels: i64, device: Device) -> Vec<Tensor> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < images.len() {
        let (w, h) = (images[i].1, images[i].2);
        let j = (i..images.len())
            .find(|&j| (images[j].1, images[j].2) != (w, h))
            .unwrap_or(images.len());
        let bytes: Vec<u8> = images[i..j].iter().flat_map(|im| im.0.iter().copied()).collect();
        let t = Tensor::from_slice(&bytes)
            .view([(j - i) as i64, channels, h as i64, w as i64])
            .to_device(device);
        out.push(t.to_kind(Kind::Float) / 255.0);
        i = j;
    }
    out
}

/// Square float images [N, C, S, S] at each scale Q (bilinear, as the
/// training's upscaling), one group each.
pub fn square_scales(x: &Tensor, scales: &[i64]) -> Vec<Vec<Tensor>> {
    let side = x.size()[2];
    scales
        .iter()
        .map(|&q| {
            vec![if q == side {
                x.shallow_clone()
            } else {
                x.upsample_bilinear2d([q, q], false, None, None)
            }]
        })
        .collect()
}

/// Evaluation batches of a split at the protocol's scales, in order.
pub enum ScaledStream {
    Memory {
        images: Tensor,
        labels: Tensor,
        device: Device,
        list: std::vec::IntoIter<Vec<usize>>,
        scales: Vec<i64>,
    },
    Folder {
        rx: Receiver<Result<folder::HostScaled, DataError>>,
        device: Device,
    },
}

impl ScaledStream {
    pub fn next(&mut self, stop: &mut dyn FnMut() -> bool) -> Fetch<ScaledBatch> {
        match self {
            ScaledStream::Memory {
                images,
                labels,
                device,
                list,
                scales,
            } => match list.next() {
                Some(idx) => {
                    let i = Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(*device);
                    let x = images.index_select(0, &i).to_kind(Kind::Float) / 255.0;
                    Fetch::Batch(Ok(ScaledBatch {
                        scales: square_scales(&x, scales),
                        labels: labels.index_select(0, &i),
                        skipped: 0,
                        bad: None,
                    }))
                }
                None => Fetch::Done,
            },
            ScaledStream::Folder { rx, device } => {
                let device = *device;
                wait(rx, stop, |b: folder::HostScaled| ScaledBatch {
                    scales: b.scales.iter().map(|s| groups(s, 3, device)).collect(),
                    labels: Tensor::from_slice(&b.labels).to_device(device),
                    skipped: b.skipped,
                    bad: b.bad,
                })
            }
        }
    }
}

/// Training batches of a list of (image indices, seed), in order.
pub enum Stream {
    Memory {
        images: Tensor,
        labels: Tensor,
        device: Device,
        list: std::vec::IntoIter<(Vec<usize>, u64)>,
    },
    Folder {
        rx: Receiver<Result<folder::Staged, DataError>>,
        device: Device,
    },
}

impl Stream {
    /// The next batch; `stop` is asked while a folder batch is awaited.
    pub fn next(&mut self, stop: &mut dyn FnMut() -> bool) -> Fetch<Batch> {
        match self {
            Stream::Memory {
                images,
                labels,
                device,
                list,
            } => match list.next() {
                Some((idx, _)) => {
                    let i = Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(*device);
                    Fetch::Batch(Ok(Batch {
                        x: images.index_select(0, &i),
                        y: labels.index_select(0, &i),
                        skipped: 0,
                        bad: None,
                    }))
                }
                None => Fetch::Done,
            },
            Stream::Folder { rx, device } => {
                let device = *device;
                wait(rx, stop, |b: folder::Staged| Batch {
                    x: folder::upload(&b.x, device),
                    y: folder::upload(&b.y, device),
                    skipped: b.skipped,
                    bad: b.bad,
                })
            }
        }
    }
}

/// Folder batches decoded this far ahead of training.
const PREFETCH: usize = 4;

impl Batches {
    pub fn new(cfg: &Config, crop: i64, device: Device) -> Batches {
        Batches {
            device,
            plan: cfg
                .data
                .dataset
                .decoded()
                .then(|| folder::Plan::new(&cfg.data, crop, device)),
            half: cfg.train.precision.half().filter(|_| device.is_cuda()),
            channels_last: cfg.train.channels_last,
        }
    }

    /// The training batches `list` of `source`, in order.
    pub fn stream(&self, source: &Source, list: Vec<(Vec<usize>, u64)>) -> Stream {
        match source {
            Source::Memory { images, labels } => Stream::Memory {
                images: images.shallow_clone(),
                labels: labels.shallow_clone(),
                device: self.device,
                list: list.into_iter(),
            },
            Source::Folder(items) => {
                let (plan, items) = (self.plan.clone().expect("a plan for folder datasets"), items.clone());
                let device = self.device;
                Stream::Folder {
                    rx: folder::prefetch(list, PREFETCH, move |idx, seed| {
                        plan.batch(&items, idx, true, seed).map(|b| b.stage(device))
                    }),
                    device,
                }
            }
        }
    }

    /// Evaluation batches of `source` (`list`: image indices) at `scales`.
    pub fn scaled(&self, source: &Source, list: Vec<Vec<usize>>, scales: &[i64]) -> ScaledStream {
        match source {
            Source::Memory { images, labels } => ScaledStream::Memory {
                images: images.shallow_clone(),
                labels: labels.shallow_clone(),
                device: self.device,
                list: list.into_iter(),
                scales: scales.to_vec(),
            },
            Source::Folder(items) => {
                let (plan, items, scales) = (
                    self.plan.clone().expect("a plan for folder datasets"),
                    items.clone(),
                    scales.to_vec(),
                );
                let list = list.into_iter().map(|idx| (idx, 0)).collect();
                ScaledStream::Folder {
                    rx: folder::prefetch(list, PREFETCH, move |idx, _| plan.scaled(&items, idx, &scales)),
                    device: self.device,
                }
            }
        }
    }

    /// The model's input layout: NHWC strides when channels-last is on.
    pub fn layout(&self, x: Tensor) -> Tensor {
        if self.channels_last {
            model::channels_last(&x)
        } else {
            x
        }
    }

    /// Runs `f` under CUDA autocast to bf16 or fp16 when configured.
    pub fn autocast<T>(&self, f: impl FnOnce() -> T) -> T {
        match self.half {
            Some(half) => native::autocast(half, f),
            None => f(),
        }
    }
}
