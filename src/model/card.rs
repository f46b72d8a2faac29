//! What another program needs to use a trained network: its shape, its
//! classes and how its input is made (as torchvision's weight enums carry
//! their transforms and categories). Checkpoints and exports carry it as
//! JSON metadata under `vggtrain.model`.
use super::{Arch, ModelSpec};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::{io::Read, path::Path};

pub const CARD_KEY: &str = "vggtrain.model";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Card {
    /// "A" ... "E", "A-LRN".
    pub arch: Arch,
    pub width: i64,
    pub batch_norm: bool,
    /// 1 (grey) or 3 (RGB).
    pub channels: i64,
    /// The training crop: the classifier's input is crop x crop.
    pub crop: i64,
    pub classes: Vec<String>,
    /// The test scale Q evaluation uses unless told otherwise.
    pub test_scale: i64,
    /// The training scales [Smin, Smax] (folders; the crop for the others).
    pub train_scale: [i64; 2],
    /// Small datasets: images are brought to `native` x `native` (the
    /// smallest side rescaled, the centre cut), then zero-padded to 32 and
    /// rescaled to Q; unset (folders): the smallest side is rescaled to Q.
    pub native: Option<i64>,
    /// Per-channel mean subtracted from pixels in [0, 1], and the standard
    /// deviation divided by after it (when `data.normalize = "mean-std"`).
    pub mean: Vec<f64>,
    pub std: Option<Vec<f64>>,
}

impl Card {
    /// The network's shape (dropout does not matter to inference).
    pub fn spec(&self) -> ModelSpec {
        ModelSpec {
            arch: self.arch,
            width: self.width,
            in_channels: self.channels,
            input: (self.crop, self.crop),
            classes: self.classes.len() as i64,
            batch_norm: self.batch_norm,
            dropout: 0.5,
        }
    }

    /// The card in a safetensors file's metadata, if it has one (only the
    /// header is read).
    pub fn read(path: &Path) -> Result<Option<Card>> {
        let bad = |what: &str| anyhow::anyhow!("{} is not a safetensors file: {what}", path.display());
        let mut f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut len = [0u8; 8];
        f.read_exact(&mut len).map_err(|_| bad("shorter than its header"))?;
        let len = u64::from_le_bytes(len);
        if len > 100_000_000 {
            return Err(bad("its header is too large"));
        }
        let mut header = vec![0u8; len as usize];
        f.read_exact(&mut header).map_err(|_| bad("its header is cut short"))?;
        let header: serde_json::Value = serde_json::from_slice(&header).map_err(|_| bad("its header is not JSON"))?;
        header["__metadata__"][CARD_KEY]
            .as_str()
            .map(|json| {
                serde_json::from_str(json)
                    .with_context(|| format!("{}: its {CARD_KEY} metadata does not parse", path.display()))
            })
            .transpose()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a card serialises")
    }
}
