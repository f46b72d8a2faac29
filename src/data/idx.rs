//! MNIST-family IDX files, gzip or raw.
use super::{read_maybe_gz, DataError, Images};
use std::path::Path;

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// Parses an IDX file of unsigned bytes with `dims` dimensions.
fn parse(path: &Path, dims: usize) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let bytes = read_maybe_gz(path)?;
    let bad = |what: String| DataError::Format {
        path: path.to_owned(),
        what,
    };
    let header = 4 + 4 * dims;
    if bytes.len() < header {
        return Err(bad(format!(
            "truncated: {} bytes, shorter than the IDX header",
            bytes.len()
        )));
    }
    let magic = be_u32(&bytes, 0);
    let expected = 0x0800 + dims as u32;
    if magic != expected {
        return Err(bad(format!(
            "wrong IDX magic 0x{magic:08x}, expected 0x{expected:08x} (unsigned bytes, {dims} dimensions)"
        )));
    }
    let shape: Vec<usize> = (0..dims).map(|i| be_u32(&bytes, 4 + 4 * i) as usize).collect();
    // Checked: a corrupt header is an error, not an overflow.
    let Some(want) = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .and_then(|n| n.checked_add(header))
    else {
        return Err(bad(format!("the header {shape:?} describes more bytes than can exist")));
    };
    if bytes.len() < want {
        return Err(bad(format!(
            "truncated: {} bytes, the header {shape:?} needs {want}",
            bytes.len()
        )));
    }
    if bytes.len() > want {
        return Err(bad(format!(
            "{} bytes, more than the {want} its header {shape:?} needs",
            bytes.len()
        )));
    }
    Ok((shape, bytes[header..].to_vec()))
}

/// Reads an images file and its labels file into one set.
pub fn read_pair(images: &Path, labels: &Path, classes: usize) -> Result<Images, DataError> {
    let (shape, pixels) = parse(images, 3)?;
    let (lshape, lbytes) = parse(labels, 1)?;
    if lshape[0] != shape[0] {
        return Err(DataError::Format {
            path: labels.to_owned(),
            what: format!("{} labels for {} images in {}", lshape[0], shape[0], images.display()),
        });
    }
    let images = Images {
        c: 1,
        h: shape[1],
        w: shape[2],
        pixels,
        labels: lbytes.into_iter().map(i64::from).collect(),
    };
    images.check_labels(labels, classes)?;
    Ok(images)
}

/// Writes an IDX pair (raw or gzip by extension); tests and tools use it.
pub fn write_pair(images: &Images, images_path: &Path, labels_path: &Path) -> std::io::Result<()> {
    let n = images.len() as u32;
    let mut img = Vec::new();
    img.extend(0x0803u32.to_be_bytes());
    for d in [n, images.h as u32, images.w as u32] {
        img.extend(d.to_be_bytes());
    }
    img.extend(&images.pixels);
    let mut lab = Vec::new();
    lab.extend(0x0801u32.to_be_bytes());
    lab.extend(n.to_be_bytes());
    lab.extend(images.labels.iter().map(|&l| l as u8));
    super::write_maybe_gz(images_path, &img)?;
    super::write_maybe_gz(labels_path, &lab)
}
