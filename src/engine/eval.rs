//! Evaluation: top-1, top-5, per-class accuracy and the confusion matrix,
//! accumulated on the device and read back once. Options follow the paper's
//! test protocol: flip averaging, dense evaluation, several scales.
use super::Batches;
use crate::control::EvalResult;
use crate::data::{augment::Augment, Source};
use crate::model::Vgg;
use anyhow::Result;
use tch::{Kind, Tensor};

/// How to evaluate: the views whose softmax is averaged.
#[derive(Clone, Debug, Default)]
pub struct Protocol {
    /// Average with the horizontally flipped image.
    pub flip: bool,
    /// Dense evaluation: the classifier as convolutions over the whole image.
    pub dense: bool,
}

pub fn evaluate(
    model: &Vgg,
    batches: &Batches,
    source: &Source,
    augments: &[Augment],
    batch_size: usize,
    protocol: &Protocol,
) -> Result<EvalResult> {
    let k = model.spec.classes;
    let dev = batches.device;
    let mut loss_sum = Tensor::zeros([], (Kind::Double, dev));
    let mut top5 = Tensor::zeros([], (Kind::Double, dev));
    let mut confusion = Tensor::zeros([k * k], (Kind::Int64, dev));
    let n = source.len();
    let all: Vec<usize> = (0..n).collect();
    tch::no_grad(|| -> Result<()> {
        for idx in all.chunks(batch_size.max(1)) {
            let (x, y) = batches.get(source, idx, false, 0)?;
            let mut probs: Option<Tensor> = None;
            let mut views = 0.0;
            for aug in augments {
                let x = batches.layout(aug.eval(&x));
                let xs = if protocol.flip { vec![x.flip([3]), x] } else { vec![x] };
                for v in xs {
                    let logits = batches.autocast(|| {
                        if protocol.dense {
                            model.forward_dense(&v)
                        } else {
                            model.forward_t(&v, false)
                        }
                    });
                    let p = logits.to_kind(Kind::Float).softmax(-1, Kind::Float);
                    probs = Some(match probs {
                        Some(acc) => acc + p,
                        None => p,
                    });
                    views += 1.0;
                }
            }
            let probs = probs.expect("at least one view") / views;
            loss_sum += probs.clamp_min(1e-12).log().nll_loss(&y).to_kind(Kind::Double) * idx.len() as f64;
            let pred = probs.argmax(-1, false);
            confusion += (&y * k + &pred).bincount::<Tensor>(None, k * k);
            let (_, top) = probs.topk(5.min(k), -1, true, true);
            top5 += top.eq_tensor(&y.unsqueeze(1)).any_dim(1, false).sum(Kind::Double);
        }
        Ok(())
    })?;
    let confusion: Vec<i64> = Vec::try_from(confusion.to_device(tch::Device::Cpu))?;
    let rows: Vec<Vec<u64>> = confusion
        .chunks(k as usize)
        .map(|r| r.iter().map(|&c| c as u64).collect())
        .collect();
    let correct: u64 = (0..k as usize).map(|i| rows[i][i]).sum();
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
    let nf = n.max(1) as f64;
    Ok(EvalResult {
        loss: loss_sum.double_value(&[]) / nf,
        top1: correct as f64 / nf,
        top5: top5.double_value(&[]) / nf,
        per_class,
        confusion: rows,
        images: n,
    })
}
