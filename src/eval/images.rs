//! Image files prepared as a network's card says, for `vggtrain predict`:
//! a folder-trained network rescales the smallest side to each test scale;
//! one trained on a small dataset brings the image to its native size (the
//! smallest side rescaled, the centre cut), pads it with zeros to 32 x 32
//! as training did, and rescales that square to each scale.
use crate::data::{
    folder::{self, Pixels},
    shards::Member,
};
use crate::engine::batches::{groups, square_scales, ScaledBatch};
use crate::model::Card;
use anyhow::{Context, Result};
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

/// The side small-dataset images are padded to (five pools need 32).
const PADDED: i64 = 32;

pub fn load(paths: &[PathBuf], card: &Card, scales: &[i64], device: Device) -> Result<ScaledBatch> {
    let c = card.channels;
    let scaled = match card.native {
        None => {
            let mut per_scale = vec![Vec::new(); scales.len()];
            for p in paths {
                for (s, image) in
                    per_scale
                        .iter_mut()
                        .zip(folder::decode_scales(&Member::File(p.clone()), c as u32, scales)?)
                {
                    s.push(image);
                }
            }
            per_scale.iter().map(|s| groups(s, c, device)).collect()
        }
        Some(native) => {
            let mut bytes = Vec::new();
            for p in paths {
                let px = Pixels::of(folder::open_image(p)?, c as u32)
                    .rescale(native as u32, native as u32)
                    .map_err(anyhow::Error::msg)
                    .with_context(|| format!("cannot rescale {}", p.display()))?;
                let (x0, y0) = ((px.w - native as u32) / 2, (px.h - native as u32) / 2);
                bytes.extend(px.planar(x0, y0, native as u32, native as u32));
            }
            let n = paths.len() as i64;
            let x = Tensor::from_slice(&bytes)
                .view([n, c, native, native])
                .to_kind(Kind::Float)
                / 255.0;
            let (before, after) = ((PADDED - native) / 2, PADDED - native - (PADDED - native) / 2);
            let x = x.constant_pad_nd([before, after, before, after]).to_device(device);
            square_scales(&x, scales)
        }
    };
    Ok(ScaledBatch {
        scales: scaled,
        labels: Tensor::zeros([paths.len() as i64], (Kind::Int64, device)),
        skipped: 0,
        bad: None,
    })
}
