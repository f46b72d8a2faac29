//! JPEG decoding with libjpeg-turbo at a reduced DCT scale: a photograph
//! whose smallest side is wanted at S decodes at the smallest factor (1/8,
//! 1/4, 1/2) that still leaves that side at least S (a 1024x768 image for
//! S = 256 at 1/2), which skips most of the inverse DCT and colour work;
//! the resize of the crop's window to exactly its size follows
//! (`Pixels::resize_window`). Training only: evaluation decodes in full, as
//! the reference it is checked against does.
use super::folder::Pixels;
use std::{cell::RefCell, sync::OnceLock};
use turbojpeg::{Decompressor, Image, PixelFormat, ScalingFactor};

thread_local! {
    /// One decompressor a decoding thread, made on first use.
    static DECOMPRESSOR: RefCell<Option<Decompressor>> = const { RefCell::new(None) };
}

/// Whether `bytes` start like a JPEG file (SOI and a marker).
pub fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xff, 0xd8, 0xff])
}

/// The factors taken: 1/8, 1/4, 1/2 and 1, the ones libjpeg-turbo has
/// SIMD inverse DCTs for. It supports every M/8, but 5/8 to 7/8 run on its
/// plain C kernels and decode slower than the full size (measured here:
/// 6/8 0.83 ms, 7/8 0.92 ms, 1/1 0.78 ms, 1/2 0.53 ms for a 430x410 photo);
/// PIL's draft mode keeps to the same four.
fn factors() -> &'static [ScalingFactor] {
    static FACTORS: OnceLock<Vec<ScalingFactor>> = OnceLock::new();
    FACTORS.get_or_init(|| {
        Decompressor::supported_scaling_factors()
            .into_iter()
            .filter(|f| f.num() == 1 && [1, 2, 4, 8].contains(&f.denom()))
            .collect()
    })
}

/// The smallest factor whose scaled smallest side (of `w` x `h`) is at
/// least `side`; 1 when none is smaller.
pub fn factor(w: usize, h: usize, side: usize) -> ScalingFactor {
    factors()
        .iter()
        .copied()
        .filter(|f| f.scale(w).min(f.scale(h)) >= side)
        .min_by(|a, b| (a.num() * b.denom()).cmp(&(b.num() * a.denom())))
        .unwrap_or(ScalingFactor::ONE)
}

/// A JPEG's pixels (`channels` 1: grey, 3: RGB), decoded at `factor(w, h,
/// side)` (the smallest side is at least `side` when the image has that
/// many), and its full size w x h. The error is libjpeg-turbo's (CMYK
/// images, damaged data).
pub fn decode(bytes: &[u8], channels: u32, side: u32) -> Result<(Pixels, (u32, u32)), String> {
    DECOMPRESSOR.with_borrow_mut(|slot| {
        let d = match slot {
            Some(d) => d,
            None => slot.insert(Decompressor::new().map_err(|e| e.to_string())?),
        };
        let header = d.read_header(bytes).map_err(|e| e.to_string())?;
        let f = factor(header.width, header.height, side as usize);
        d.set_scaling_factor(f).map_err(|e| e.to_string())?;
        let (w, h) = (f.scale(header.width), f.scale(header.height));
        let format = if channels == 1 {
            PixelFormat::GRAY
        } else {
            PixelFormat::RGB
        };
        let mut data = vec![0u8; w * h * channels as usize];
        let image = Image {
            pixels: data.as_mut_slice(),
            width: w,
            pitch: w * channels as usize,
            height: h,
            format,
        };
        d.decompress(bytes, image).map_err(|e| e.to_string())?;
        let px = Pixels {
            data,
            w: w as u32,
            h: h as u32,
            channels,
        };
        Ok((px, (header.width as u32, header.height as u32)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ratio(f: ScalingFactor) -> (usize, usize) {
        let g = (1..=8)
            .rev()
            .find(|&g| f.num().is_multiple_of(g) && f.denom().is_multiple_of(g))
            .unwrap();
        (f.num() / g, f.denom() / g)
    }

    #[test]
    fn the_factor_is_the_smallest_that_keeps_the_side() {
        // 500x375 for S = 256: 1/2 would give 188.
        assert_eq!(ratio(factor(500, 375, 256)), (1, 1));
        assert_eq!(ratio(factor(500, 375, 160)), (1, 2));
        assert_eq!(ratio(factor(1024, 768, 256)), (1, 2));
        assert_eq!(ratio(factor(1024, 768, 192)), (1, 4));
        // S = 512 needs more than the image has: full size.
        assert_eq!(ratio(factor(500, 375, 512)), (1, 1));
        // A large image for a small side: 1/8 at most.
        assert_eq!(ratio(factor(4000, 3000, 256)), (1, 8));
        assert_eq!(ratio(factor(8000, 6000, 64)), (1, 8));
        // The smallest side counts, portrait or landscape.
        assert_eq!(factor(768, 1024, 256), factor(1024, 768, 256));
    }

    #[test]
    fn a_file_that_is_not_a_jpeg_is_an_error_not_a_panic() {
        assert!(!is_jpeg(b"\x89PNG\r\n"));
        assert!(decode(b"\xff\xd8\xff\xe0 not really", 3, 256).is_err());
    }
}
