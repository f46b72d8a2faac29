//! `vggtrain report`: one sheet of a run (or several, overlaid) drawn from
//! metrics.jsonl with plotters: the loss (step loss behind the epochs'),
//! top-1/top-5, the learning rate on a log scale with each change marked by
//! its cause, per-class top-1 of the best epoch, and the newest confusion
//! matrix (the most confused pairs for more than 50 classes). PNG or SVG.
mod draw;
mod history;

pub use history::History;

use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use std::path::Path;

/// The sheet's size in pixels.
pub const SIZE: (u32, u32) = (1800, 1100);

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// Draws the report of `runs` (the first one's classes) into `out`.
pub fn write(runs: &[&Path], out: &Path) -> Result<()> {
    let histories: Vec<History> = runs.iter().map(|r| History::read(r)).collect::<Result<_>>()?;
    // The same font on every machine: DejaVu Sans, in the binary.
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| anyhow::anyhow!("the report's font does not load"))?;
    match out.extension().and_then(|e| e.to_str()) {
        Some("png") => {
            let mut buf = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
            {
                let root = BitMapBackend::with_buffer(&mut buf, SIZE).into_drawing_area();
                draw::sheet(&root, &histories)?;
                root.present()?;
            }
            image::RgbImage::from_raw(SIZE.0, SIZE.1, buf)
                .context("a full image buffer")?
                .save(out)
                .with_context(|| format!("cannot write {}", out.display()))?;
        }
        Some("svg") => {
            let root = SVGBackend::new(out, SIZE).into_drawing_area();
            draw::sheet(&root, &histories)?;
            root.present()
                .with_context(|| format!("cannot write {}", out.display()))?;
        }
        _ => bail!("--out {}: expected a .png or .svg file", out.display()),
    }
    Ok(())
}
