//! WebDataset-style tar shards: `DIR/train/*.tar` and `DIR/val/*.tar`, each
//! sample a pair of members `KEY.jpg` (or .jpeg, .png) and `KEY.cls` (the
//! class index as text), and `DIR/classes.txt` (a name a line) when `pack`
//! wrote it. The shards are indexed once (headers only, seeking past the
//! data); images are read by offset when their batch is decoded. An epoch
//! takes the shards in a seeded order, each front to back through a seeded
//! shuffle buffer (`order`): reads stay sequential within a shard, and the
//! order is a function of the seed alone, so a resume is exact.
use super::{folder::Files, DataError, SplitMix};
use std::{
    collections::BTreeMap,
    fs::File,
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
    sync::Arc,
};

/// Where an image's bytes are.
#[derive(Clone, Debug, PartialEq)]
pub enum Member {
    File(PathBuf),
    /// `len` bytes at `offset` of the tar file `shard`, named `name` there.
    Tar {
        shard: Arc<PathBuf>,
        name: String,
        offset: u64,
        len: u64,
    },
}

impl Member {
    /// The file that holds it (for errors: with `what()`).
    pub fn path(&self) -> &Path {
        match self {
            Member::File(p) => p,
            Member::Tar { shard, .. } => shard,
        }
    }

    /// An error about it: "member KEY.jpg: `what`" inside a shard.
    pub fn error(&self, what: impl std::fmt::Display) -> DataError {
        DataError::Format {
            path: self.path().to_owned(),
            what: match self {
                Member::File(_) => what.to_string(),
                Member::Tar { name, .. } => format!("member {name}: {what}"),
            },
        }
    }

    pub fn read(&self) -> Result<Vec<u8>, DataError> {
        match self {
            Member::File(p) => std::fs::read(p).map_err(|e| DataError::io(p, e)),
            Member::Tar { shard, offset, len, .. } => {
                let mut f = File::open(shard.as_path()).map_err(|e| DataError::io(shard.as_path(), e))?;
                let mut bytes = vec![0; *len as usize];
                f.seek(SeekFrom::Start(*offset))
                    .and_then(|_| f.read_exact(&mut bytes))
                    .map_err(|e| self.error(format!("cannot be read: {e}")))?;
                Ok(bytes)
            }
        }
    }
}

const IMAGE: [&str; 3] = ["jpg", "jpeg", "png"];

/// The samples of one shard, in file order: (image member, class index).
fn index(shard: &Arc<PathBuf>) -> Result<Vec<(Member, i64)>, DataError> {
    let path = shard.as_path();
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let size = file.metadata().map_err(|e| DataError::io(path, e))?.len();
    let damaged = |after: &str, e: &dyn std::fmt::Display| DataError::Format {
        path: path.to_owned(),
        what: format!("a damaged or truncated tar after member {after}: {e}"),
    };
    let mut archive = tar::Archive::new(file);
    let entries = archive.entries_with_seek().map_err(|e| damaged("(none)", &e))?;
    // key -> (image member, class text); in order of first appearance.
    let mut samples: BTreeMap<String, (usize, Option<Member>, Option<String>)> = BTreeMap::new();
    let mut last = "(none)".to_owned();
    for entry in entries {
        let mut entry = entry.map_err(|e| damaged(&last, &e))?;
        let name = entry
            .path()
            .map_err(|e| damaged(&last, &e))?
            .to_string_lossy()
            .into_owned();
        let (offset, len) = (entry.raw_file_position(), entry.size());
        if offset + len > size {
            return Err(damaged(
                &last,
                &format!("member {name} is cut short ({len} bytes at {offset} of {size})"),
            ));
        }
        last.clone_from(&name);
        let Some((key, ext)) = split_key(&name) else { continue };
        let order = samples.len();
        let sample = samples.entry(key.to_owned()).or_insert((order, None, None));
        if ext == "cls" {
            let mut text = String::new();
            entry.read_to_string(&mut text).map_err(|e| damaged(&name, &e))?;
            sample.2 = Some(text);
        } else if IMAGE.contains(&ext.to_ascii_lowercase().as_str()) {
            sample.1 = Some(Member::Tar {
                shard: shard.clone(),
                name,
                offset,
                len,
            });
        }
    }
    let mut out: Vec<(usize, Member, i64)> = Vec::new();
    for (key, (order, image, class)) in samples {
        let bad = |what: String| DataError::Format {
            path: path.to_owned(),
            what,
        };
        match (image, class) {
            (Some(image), Some(text)) => {
                let label = text
                    .trim()
                    .parse::<i64>()
                    .ok()
                    .filter(|l| *l >= 0)
                    .ok_or_else(|| bad(format!("member {key}.cls: {:?} is not a class index", text.trim())))?;
                out.push((order, image, label));
            }
            (Some(_), None) => return Err(bad(format!("sample {key} has an image but no {key}.cls"))),
            (None, Some(_)) => {
                return Err(bad(format!(
                    "sample {key} has a {key}.cls but no image (.jpg, .jpeg, .png)"
                )))
            }
            (None, None) => {}
        }
    }
    out.sort_by_key(|(order, ..)| *order);
    Ok(out.into_iter().map(|(_, m, l)| (m, l)).collect())
}

/// "dir/n0144_10026.JPEG" -> ("dir/n0144_10026", "JPEG"): the key is all
/// up to the first dot of the file name, as webdataset has it.
fn split_key(name: &str) -> Option<(&str, &str)> {
    let base = name.rfind('/').map_or(0, |i| i + 1);
    let dot = name[base..].find('.')? + base;
    Some((&name[..dot], &name[dot + 1..]))
}

/// The samples of `split/*.tar` (sorted by name), and where each shard's
/// run of samples starts.
pub fn scan(split: &Path) -> Result<(Files, Vec<usize>), DataError> {
    let mut shards: Vec<PathBuf> = std::fs::read_dir(split)
        .map_err(|e| DataError::io(split, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "tar"))
        .collect();
    shards.sort();
    if shards.is_empty() {
        return Err(DataError::Missing {
            what: "tar shards (*.tar)".into(),
            dir: split.to_owned(),
        });
    }
    let (mut files, mut starts) = (Vec::new(), Vec::new());
    for shard in shards {
        let samples = index(&Arc::new(shard))?;
        starts.push(files.len());
        files.extend(samples);
    }
    Ok((files, starts))
}

/// The class names: `root/classes.txt`, or "0".."K-1" for the labels seen.
pub fn classes(root: &Path, files: &[&Files]) -> Result<Vec<String>, DataError> {
    let max = files.iter().flat_map(|f| f.iter().map(|(_, l)| *l)).max().unwrap_or(0);
    let listed = root.join("classes.txt");
    let names: Vec<String> = if listed.is_file() {
        let text = std::fs::read_to_string(&listed).map_err(|e| DataError::io(&listed, e))?;
        text.lines().map(str::to_owned).collect()
    } else {
        (0..=max).map(|i| i.to_string()).collect()
    };
    if max as usize >= names.len() {
        return Err(DataError::Format {
            path: listed,
            what: format!("{} class names, but a sample has class {max}", names.len()),
        });
    }
    Ok(names)
}

/// An epoch's order of the samples whose shards start at `starts` (of
/// `n`): the shards in a seeded order, each through a shuffle buffer of
/// `buffer` samples.
pub fn order(n: usize, starts: &[usize], buffer: usize, seed: u64) -> Vec<usize> {
    let runs = super::permutation(starts.len(), seed);
    let mut rng = SplitMix(seed ^ 0x5bd1_e995);
    let (mut held, mut out) = (Vec::with_capacity(buffer), Vec::with_capacity(n));
    for r in runs {
        let end = starts.get(r + 1).copied().unwrap_or(n);
        for i in starts[r]..end {
            if held.len() < buffer.max(1) {
                held.push(i);
            } else {
                let j = rng.below(held.len() as u64) as usize;
                out.push(std::mem::replace(&mut held[j], i));
            }
        }
    }
    while !held.is_empty() {
        let j = rng.below(held.len() as u64) as usize;
        out.push(held.swap_remove(j));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_end_at_the_first_dot_of_the_file_name() {
        assert_eq!(split_key("a/n01_2.JPEG"), Some(("a/n01_2", "JPEG")));
        assert_eq!(split_key("x.y/k.tar.cls"), Some(("x.y/k", "tar.cls")));
        assert_eq!(split_key("noext"), None);
    }

    #[test]
    fn an_epochs_order_is_every_sample_once_shard_by_shard() {
        let starts = [0, 10, 25, 40];
        let o = order(50, &starts, 4, 7);
        let mut sorted = o.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(o, order(50, &starts, 4, 7), "a function of the seed");
        assert_ne!(o, order(50, &starts, 4, 8));
        // A buffer of 4 keeps each sample within a few places of its shard's
        // run: no sample comes more than 4 before the run it belongs to.
        let shard = |i: usize| starts.iter().rposition(|&s| s <= i).unwrap();
        let mut seen = [false; 4];
        for (k, &i) in o.iter().enumerate() {
            seen[shard(i)] = true;
            let started = seen.iter().filter(|s| **s).count();
            assert!(started <= 2 || k >= 10, "more than two shards open at {k}");
        }
    }
}
