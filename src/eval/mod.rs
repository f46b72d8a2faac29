//! The paper's test protocol (§3.2, §4.2-§4.4) as one core that training's
//! validation and test, `vggtrain eval` and `vggtrain predict` all call.
//!
//! An image's result is the mean of soft-max class posteriors over views:
//! each member network (ConvNet fusion) × each test scale Q (the image
//! rescaled isotropically so its smallest side is Q) × each method: the
//! centre crop (the default), dense evaluation (the fully connected layers
//! as convolutions over the whole image, the class score map averaged
//! before the soft-max) and multi-crop (a 5×5 grid of crops, each also
//! flipped: 50 views). A method's posterior is the mean over its views (the
//! horizontal flip, with `flip`, is a second view of the centre crop and of
//! the dense image); the image's is the mean over (member, scale, method).
//! Top-1, top-5, per-class accuracy and the confusion matrix come from that
//! mean: posteriors are averaged, never accuracies.
pub mod images;
mod views;

use crate::control::EvalResult;
use crate::data::{augment::Normalise, Source};
use crate::engine::batches::{Batches, Fetch, ScaledBatch};
use crate::model::Vgg;
use anyhow::Result;
use serde::Serialize;
use tch::{Kind, Tensor};

/// Which views of each image are averaged.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Protocol {
    /// Test scales Q: the smallest side of the rescaled image.
    pub scales: Vec<i64>,
    /// Dense evaluation over the whole image.
    pub dense: bool,
    /// The 5×5 grid of crops and their mirror images.
    pub multi_crop: bool,
    /// The mirror image as a second view (of the centre crop, of the dense image).
    pub flip: bool,
}

impl Protocol {
    /// One centre crop at scale `q`: training's validation.
    pub fn single(q: i64) -> Protocol {
        Protocol {
            scales: vec![q],
            dense: false,
            multi_crop: false,
            flip: false,
        }
    }

    /// The methods: the centre crop unless dense or multi-crop is asked for.
    pub fn methods(&self) -> Vec<Method> {
        let mut m = Vec::new();
        if !self.dense && !self.multi_crop {
            m.push(Method::Crop);
        }
        if self.dense {
            m.push(Method::Dense);
        }
        if self.multi_crop {
            m.push(Method::MultiCrop);
        }
        m
    }

    /// Forward passes per image and member.
    pub fn views_per_image(&self) -> usize {
        let flip = if self.flip { 2 } else { 1 };
        let per_scale: usize = self
            .methods()
            .iter()
            .map(|m| match m {
                Method::MultiCrop => views::GRID * views::GRID * 2,
                Method::Crop | Method::Dense => flip,
            })
            .sum();
        per_scale * self.scales.len()
    }

    /// "scales [256, 384, 512] · dense + multi-crop · flip".
    pub fn describe(&self) -> String {
        let methods: Vec<&str> = self.methods().iter().map(|m| m.name()).collect();
        format!(
            "scales {:?} · {}{}",
            self.scales,
            methods.join(" + "),
            if self.flip { " · flip" } else { "" }
        )
    }
}

/// How the views of an image at one scale are taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// The centre crop of the training crop size.
    Crop,
    /// The whole image through the fully convolutional network.
    Dense,
    /// The 5×5 grid of crops and their mirror images.
    MultiCrop,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Crop => "crop",
            Method::Dense => "dense",
            Method::MultiCrop => "multi-crop",
        }
    }
}

/// A network to evaluate and the input normalisation it was trained with.
pub struct Member<'a> {
    pub model: &'a Vgg,
    pub norm: &'a Normalise,
}

/// How forward passes run: the device's layout and precision, and at most
/// `chunk` views at once.
pub struct Runner<'a> {
    pub batches: &'a Batches,
    pub chunk: usize,
}

/// The mean posterior [B, K] of each image of `batch` over the members,
/// the scales and the methods of `protocol`.
pub fn posteriors(members: &[Member], batch: &ScaledBatch, protocol: &Protocol, run: &Runner) -> Tensor {
    let mut sum: Option<Tensor> = None;
    let mut n = 0.0;
    tch::no_grad(|| {
        for m in members {
            for groups in &batch.scales {
                for method in protocol.methods() {
                    let p = match method {
                        Method::Crop => views::crops(m, groups, views::centre, protocol.flip, run),
                        Method::Dense => views::dense(m, groups, protocol.flip, run),
                        Method::MultiCrop => views::crops(m, groups, views::grid, true, run),
                    };
                    sum = Some(match sum.take() {
                        Some(s) => s + p,
                        None => p,
                    });
                    n += 1.0;
                }
            }
        }
    });
    sum.expect("at least one member, scale and method") / n
}

/// Top-1, top-5, loss and the confusion matrix, accumulated on the device
/// from posteriors and read back once.
pub struct Metrics {
    k: i64,
    loss: Tensor,
    top5: Tensor,
    confusion: Tensor,
    images: usize,
    skipped: usize,
}

impl Metrics {
    pub fn new(classes: i64, device: tch::Device) -> Metrics {
        Metrics {
            k: classes,
            loss: Tensor::zeros([], (Kind::Double, device)),
            top5: Tensor::zeros([], (Kind::Double, device)),
            confusion: Tensor::zeros([classes * classes], (Kind::Int64, device)),
            images: 0,
            skipped: 0,
        }
    }

    /// Adds images' posteriors [B, K] and their labels [B].
    pub fn add(&mut self, probs: &Tensor, labels: &Tensor) {
        let b = labels.size()[0];
        self.images += b as usize;
        self.loss += probs.clamp_min(1e-12).log().nll_loss(labels).to_kind(Kind::Double) * b as f64;
        let pred = probs.argmax(-1, false);
        self.confusion += (labels * self.k + &pred).bincount::<Tensor>(None, self.k * self.k);
        let (_, top) = probs.topk(5.min(self.k), -1, true, true);
        self.top5 += top.eq_tensor(&labels.unsqueeze(1)).any_dim(1, false).sum(Kind::Double);
    }

    /// Adds the other ranks' counts to these (`sum`: an all-reduce).
    pub fn sum_with(&mut self, sum: &mut dyn FnMut(&mut Tensor) -> Result<()>) -> Result<()> {
        let device = self.confusion.device();
        let cpu = tch::Device::Cpu;
        let mut counts = Tensor::stack(
            &[
                self.loss.to_device(cpu),
                self.top5.to_device(cpu),
                Tensor::from(self.images as f64),
                Tensor::from(self.skipped as f64),
            ],
            0,
        );
        sum(&mut counts)?;
        let mut confusion = self.confusion.to_device(cpu);
        sum(&mut confusion)?;
        let v = Vec::<f64>::try_from(&counts)?;
        self.loss = Tensor::from(v[0]).to_device(device);
        self.top5 = Tensor::from(v[1]).to_device(device);
        (self.images, self.skipped) = (v[2] as usize, v[3] as usize);
        self.confusion = confusion.to_device(device);
        Ok(())
    }

    pub fn finish(self) -> Result<EvalResult> {
        let k = self.k as usize;
        let confusion: Vec<i64> = Vec::try_from(self.confusion.to_device(tch::Device::Cpu))?;
        let rows: Vec<Vec<u64>> = confusion
            .chunks(k)
            .map(|r| r.iter().map(|&c| c as u64).collect())
            .collect();
        let correct: u64 = (0..k).map(|i| rows[i][i]).sum();
        let per_class = rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let total: u64 = r.iter().sum();
                if total == 0 {
                    0.0
                } else {
                    r[i] as f64 / total as f64
                }
            })
            .collect();
        let n = self.images.max(1) as f64;
        Ok(EvalResult {
            loss: self.loss.double_value(&[]) / n,
            top1: correct as f64 / n,
            top5: self.top5.double_value(&[]) / n,
            per_class,
            confusion: rows,
            images: self.images,
            skipped: self.skipped,
        })
    }
}

/// Evaluates `source` with `protocol`; None when `stop` asked for it
/// meanwhile (it is asked between batches and while a batch is awaited).
/// `progress` hears the images done after each batch.
pub fn evaluate(
    members: &[Member],
    source: &Source,
    protocol: &Protocol,
    run: &Runner,
    stop: &mut dyn FnMut() -> bool,
    progress: &mut dyn FnMut(usize),
) -> Result<Option<EvalResult>> {
    let all: Vec<usize> = (0..source.len()).collect();
    match measure(members, source, &all, protocol, run, stop, progress)? {
        Some(m) => m.finish().map(Some),
        None => Ok(None),
    }
}

/// The counts of `images` of `source` (a shard of a data-parallel run's
/// evaluation: `Metrics::sum_with` adds the others'), as `evaluate`.
pub fn measure(
    members: &[Member],
    source: &Source,
    images: &[usize],
    protocol: &Protocol,
    run: &Runner,
    stop: &mut dyn FnMut() -> bool,
    progress: &mut dyn FnMut(usize),
) -> Result<Option<Metrics>> {
    let classes = members[0].model.spec.classes;
    // Images a batch: at most `chunk` views of each member in flight.
    let per_batch = (run.chunk / protocol.views_per_image().max(1)).clamp(1, run.chunk);
    let list = images.chunks(per_batch).map(<[usize]>::to_vec).collect();
    let mut stream = run.batches.scaled(source, list, &protocol.scales);
    let mut metrics = Metrics::new(classes, run.batches.device);
    loop {
        if stop() {
            return Ok(None);
        }
        let batch = match stream.next(stop) {
            Fetch::Batch(b) => b?,
            Fetch::Done => return Ok(Some(metrics)),
            Fetch::Stopped => return Ok(None),
        };
        metrics.skipped += batch.skipped;
        if !batch.is_empty() {
            metrics.add(&posteriors(members, &batch, protocol, run), &batch.labels);
        }
        progress(metrics.images + metrics.skipped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two images (of class 0 and 1), two scales: one scale gets both
    /// wrong, the other both right. Averaged accuracies say 50%; the
    /// averaged posteriors get both images right.
    #[test]
    fn averaging_posteriors_is_not_averaging_accuracies() {
        let at_scale = |rows: [[f64; 3]; 2]| Tensor::from_slice(&rows.concat()).view([2, 3]);
        let q1 = at_scale([[0.2, 0.8, 0.0], [0.9, 0.1, 0.0]]);
        let q2 = at_scale([[0.9, 0.1, 0.0], [0.0, 1.0, 0.0]]);
        let labels = Tensor::from_slice(&[0i64, 1]);
        let acc = |p: &Tensor| {
            let mut m = Metrics::new(3, tch::Device::Cpu);
            m.add(p, &labels);
            m.finish().unwrap().top1
        };
        let (a1, a2) = (acc(&q1), acc(&q2));
        assert_eq!((a1, a2), (0.0, 1.0));
        assert_eq!((a1 + a2) / 2.0, 0.5, "the mean of the accuracies");
        assert_eq!(acc(&((&q1 + &q2) / 2.0)), 1.0, "the accuracy of the mean posteriors");
    }
}
