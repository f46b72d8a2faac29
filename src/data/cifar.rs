//! CIFAR-10 and CIFAR-100, binary version, from a folder or the official
//! .tar.gz.
use super::{DataError, Images};
use std::{collections::HashMap, fs::File, io::Read, path::Path};

pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Which CIFAR: the files, the label bytes per record and the label used.
#[derive(Clone, Copy)]
pub struct Variant {
    pub train_files: &'static [&'static str],
    pub test_file: &'static str,
    /// Bytes before the pixels: 1 (CIFAR-10 label) or 2 (coarse, fine).
    pub label_bytes: usize,
    pub names_file: &'static str,
    pub classes: usize,
}

pub const CIFAR10: Variant = Variant {
    train_files: &[
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
    ],
    test_file: "test_batch.bin",
    label_bytes: 1,
    names_file: "batches.meta.txt",
    classes: 10,
};

pub const CIFAR100: Variant = Variant {
    train_files: &["train.bin"],
    test_file: "test.bin",
    label_bytes: 2,
    names_file: "fine_label_names.txt",
    classes: 100,
};

const PIXELS: usize = 3 * 32 * 32;

/// Parses the records of one binary file (label bytes + 3072 pixels each).
pub fn parse(bytes: &[u8], v: Variant, path: &Path) -> Result<Images, DataError> {
    let record = v.label_bytes + PIXELS;
    if bytes.is_empty() || !bytes.len().is_multiple_of(record) {
        return Err(DataError::Format {
            path: path.to_owned(),
            what: format!(
                "{} bytes is not a whole number of {record}-byte CIFAR records (truncated or not a CIFAR binary file)",
                bytes.len()
            ),
        });
    }
    let n = bytes.len() / record;
    let mut pixels = Vec::with_capacity(n * PIXELS);
    let mut labels = Vec::with_capacity(n);
    for r in bytes.chunks_exact(record) {
        labels.push(i64::from(r[v.label_bytes - 1]));
        pixels.extend_from_slice(&r[v.label_bytes..]);
    }
    let images = Images {
        c: 3,
        h: 32,
        w: 32,
        pixels,
        labels,
    };
    images.check_labels(path, v.classes)?;
    Ok(images)
}

/// The files of a CIFAR dataset, from `dir` (or its cifar-*-batches-bin
/// sub-folder) or from a .tar.gz inside it.
pub fn read(dir: &Path, archive: &str, v: Variant) -> Result<(Images, Images, Option<Vec<String>>), DataError> {
    let mut files = HashMap::new();
    let wanted: Vec<&str> = v
        .train_files
        .iter()
        .copied()
        .chain([v.test_file, v.names_file])
        .collect();
    let tarball = dir.join(archive);
    let source_dir = ["", "cifar-10-batches-bin", "cifar-100-binary"]
        .iter()
        .map(|s| dir.join(s))
        .find(|d| d.join(v.test_file).is_file());
    if let Some(d) = source_dir {
        for name in &wanted {
            let p = d.join(name);
            if p.is_file() {
                files.insert(
                    name.to_string(),
                    (std::fs::read(&p).map_err(|e| DataError::io(&p, e))?, p),
                );
            }
        }
    } else if tarball.is_file() {
        let f = File::open(&tarball).map_err(|e| DataError::io(&tarball, e))?;
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
        let entries = ar.entries().map_err(|e| DataError::io(&tarball, e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| DataError::io(&tarball, e))?;
            let path = entry.path().map_err(|e| DataError::io(&tarball, e))?.into_owned();
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                continue;
            };
            if wanted.contains(&name.as_str()) {
                let mut buf = Vec::new();
                entry.read_to_end(&mut buf).map_err(|e| DataError::io(&tarball, e))?;
                files.insert(name, (buf, tarball.join(&path)));
            }
        }
    } else {
        return Err(DataError::Missing {
            what: format!("CIFAR binary files ({} or {archive})", v.test_file),
            dir: dir.to_owned(),
        });
    }
    let mut take = |name: &str| {
        files.remove(name).ok_or_else(|| DataError::Missing {
            what: name.to_owned(),
            dir: dir.to_owned(),
        })
    };
    let mut train: Option<Images> = None;
    for name in v.train_files {
        let (bytes, path) = take(name)?;
        let part = parse(&bytes, v, &path)?;
        match &mut train {
            Some(t) => t.append(part),
            None => train = Some(part),
        }
    }
    let (bytes, path) = take(v.test_file)?;
    let test = parse(&bytes, v, &path)?;
    let names = take(v.names_file).ok().map(|(bytes, _)| {
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    });
    Ok((
        train.expect("at least one training file"),
        test,
        names.filter(|n| n.len() == v.classes),
    ))
}

/// Writes images in the CIFAR binary format (tests and tools).
pub fn write(images: &Images, v: Variant, path: &Path) -> std::io::Result<()> {
    let mut out = Vec::new();
    for (i, label) in images.labels.iter().enumerate() {
        for _ in 0..v.label_bytes {
            out.push(*label as u8);
        }
        out.extend_from_slice(&images.pixels[i * PIXELS..(i + 1) * PIXELS]);
    }
    std::fs::write(path, out)
}
