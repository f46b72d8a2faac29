//! The views of an image and their posteriors: crops (the centre one, or
//! the 5×5 grid) batched across images, at most `Runner::chunk` views a
//! forward pass, and dense evaluation over whole images.
use super::{Member, Runner};
use tch::{Kind, Tensor};

/// The multi-crop grid is GRID × GRID crops.
pub const GRID: usize = 5;

/// The centre crop's (y0, x0) in an h × w image.
pub fn centre(h: i64, w: i64, crop: i64) -> Vec<(i64, i64)> {
    vec![((h - crop) / 2, (w - crop) / 2)]
}

/// The 5×5 grid: x0 = ⌊i (w − crop) / 4⌋, y0 = ⌊j (h − crop) / 4⌋, i, j = 0..4.
pub fn grid(h: i64, w: i64, crop: i64) -> Vec<(i64, i64)> {
    let n = GRID as i64 - 1;
    (0..=n)
        .flat_map(|j| (0..=n).map(move |i| (j * (h - crop) / n, i * (w - crop) / n)))
        .collect()
}

/// Soft-max posteriors of float images in [0, 1].
fn forward(m: &Member, x: &Tensor, run: &Runner, dense: bool) -> Tensor {
    let x = run.batches.layout(m.norm.apply(x));
    let logits = run.batches.autocast(|| {
        if dense {
            m.model.forward_dense(&x)
        } else {
            m.model.forward_t(&x, false)
        }
    });
    logits.to_kind(Kind::Float).softmax(-1, Kind::Float)
}

/// Posteriors of the views in `pending` (image-major, `v` an image), each
/// image's mean [n, K].
fn flush(m: &Member, pending: &mut Vec<Tensor>, v: i64, run: &Runner) -> Tensor {
    let x = Tensor::cat(pending, 0);
    pending.clear();
    forward(m, &x, run, false)
        .view([-1, v, m.model.spec.classes])
        .mean_dim(1, false, Kind::Float)
}

/// The mean posterior [B, K] of each image over its crops at `offsets`
/// (and their mirror images with `flip`).
pub fn crops(
    m: &Member,
    groups: &[Tensor],
    offsets: fn(i64, i64, i64) -> Vec<(i64, i64)>,
    flip: bool,
    run: &Runner,
) -> Tensor {
    let crop = m.model.spec.input.0;
    let v = (offsets(crop, crop, crop).len() * if flip { 2 } else { 1 }) as i64;
    let per = (run.chunk as i64 / v).max(1);
    let (mut pending, mut pending_views, mut out) = (Vec::new(), 0, Vec::new());
    for g in groups {
        let (b, c, h, w) = g.size4().expect("a 4-d group of images");
        let offs = offsets(h, w, crop);
        let mut start = 0;
        while start < b {
            let n = per.min(b - start);
            let images = g.narrow(0, start, n);
            let mut views: Vec<Tensor> = offs
                .iter()
                .map(|&(y, x)| images.narrow(2, y, crop).narrow(3, x, crop))
                .collect();
            if flip {
                let mirrored: Vec<Tensor> = views.iter().map(|t| t.flip([3])).collect();
                views.extend(mirrored);
            }
            pending.push(Tensor::stack(&views, 1).reshape([n * v, c, crop, crop]));
            pending_views += n * v;
            if pending_views >= run.chunk as i64 {
                out.push(flush(m, &mut pending, v, run));
                pending_views = 0;
            }
            start += n;
        }
    }
    if !pending.is_empty() {
        out.push(flush(m, &mut pending, v, run));
    }
    Tensor::cat(&out, 0)
}

/// The mean posterior [B, K] of dense evaluation over each whole image
/// (and its mirror image with `flip`).
pub fn dense(m: &Member, groups: &[Tensor], flip: bool, run: &Runner) -> Tensor {
    let mut out = Vec::new();
    for g in groups {
        let b = g.size()[0];
        let mut start = 0;
        while start < b {
            let n = (run.chunk as i64).min(b - start);
            let x = g.narrow(0, start, n);
            let p = forward(m, &x, run, true);
            out.push(if flip {
                (p + forward(m, &x.flip([3]), run, true)) / 2.0
            } else {
                p
            });
            start += n;
        }
    }
    Tensor::cat(&out, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_spans_the_image_evenly() {
        let g = grid(64, 96, 32);
        assert_eq!(g.len(), 25);
        let xs: Vec<i64> = g[..5].iter().map(|o| o.1).collect();
        let ys: Vec<i64> = g.iter().step_by(5).map(|o| o.0).collect();
        assert_eq!((xs, ys), (vec![0, 16, 32, 48, 64], vec![0, 8, 16, 24, 32]));
        assert_eq!(
            grid(33, 35, 32)[24],
            (1, 3),
            "floor, and the last crop at the far corner"
        );
        assert_eq!(centre(64, 97, 32), vec![(16, 32)]);
    }
}
