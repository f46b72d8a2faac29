//! `vggtrain pack`: an ImageNet-style folder written as WebDataset-style tar
//! shards (`--dataset shards` reads them, `data::shards`): `OUT/train/` and
//! `OUT/val/` of `shard-NNNNNN.tar`, each sample `CLASS/STEM.jpg` (or the
//! file's own extension) and `CLASS/STEM.cls`, in a seeded order that mixes
//! the classes, and `OUT/classes.txt`. Optionally each image is shrunk first
//! so that its smallest side is at most `--max-side` (re-encoded as JPEG at
//! quality 90), as FFCV does. Everything is written in a folder beside and
//! renamed into place at the end: an interrupted pack leaves nothing under
//! the dataset's names, and an existing dataset is never overwritten.
use crate::data::{folder, permutation, shards::Member};
use anyhow::{bail, Context, Result};
use std::{
    fs::File,
    io::Write,
    path::{Path, PathBuf},
};

pub struct PackArgs {
    pub folder: PathBuf,
    pub out: PathBuf,
    pub max_side: Option<u32>,
    /// A new shard starts past this many bytes.
    pub shard_bytes: u64,
    pub seed: u64,
}

#[derive(Debug, Default)]
pub struct Packed {
    pub train: usize,
    pub val: usize,
    pub shards: usize,
    pub bytes: u64,
    pub shrunk: usize,
}

/// Packs `a.folder`; `progress(done, total)` after each image.
pub fn run(a: &PackArgs, progress: &mut dyn FnMut(usize, usize)) -> Result<Packed> {
    for name in ["train", "val", "classes.txt"] {
        if a.out.join(name).exists() {
            bail!("{} exists: pack into another --out", a.out.join(name).display());
        }
    }
    let (classes, train) = folder::scan(&a.folder.join("train"))?;
    let (val_classes, val) = folder::scan(&a.folder.join("val"))?;
    if val_classes != classes {
        bail!(
            "{}: its {} class folders differ from train's {}",
            a.folder.join("val").display(),
            val_classes.len(),
            classes.len()
        );
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    let partial = a.out.join(format!(".pack-partial-{}", std::process::id()));
    let result = (|| {
        let mut packed = Packed {
            train: train.len(),
            val: val.len(),
            ..Packed::default()
        };
        let total = train.len() + val.len();
        let mut done = 0;
        for (split, files) in [("train", &train), ("val", &val)] {
            let dir = partial.join(split);
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let mut writer = Shards::new(dir, a.shard_bytes);
            for i in permutation(files.len(), a.seed) {
                let (member, label) = &files[i];
                let (name, bytes, shrunk) = sample(member, &classes[*label as usize], a.max_side)?;
                packed.shrunk += shrunk as usize;
                packed.bytes += bytes.len() as u64;
                writer.add(&name, &bytes, *label)?;
                done += 1;
                progress(done, total);
            }
            packed.shards += writer.finish()?;
        }
        let names = classes.join("\n") + "\n";
        write_synced(&partial.join("classes.txt"), names.as_bytes())?;
        for name in ["train", "val", "classes.txt"] {
            std::fs::rename(partial.join(name), a.out.join(name))
                .with_context(|| format!("cannot move {} into place", a.out.join(name).display()))?;
        }
        File::open(&a.out).and_then(|d| d.sync_all()).ok();
        Ok(packed)
    })();
    let _ = std::fs::remove_dir_all(&partial);
    result
}

/// One image's member name ("CLASS/STEM.ext"), its bytes, and whether it
/// was shrunk.
fn sample(member: &Member, class: &str, max_side: Option<u32>) -> Result<(String, Vec<u8>, bool)> {
    let path = member.path();
    let stem = path.file_stem().unwrap_or_default().to_string_lossy().replace('.', "_");
    let ext = path
        .extension()
        .unwrap_or_default()
        .to_string_lossy()
        .to_ascii_lowercase();
    let bytes = member.read()?;
    if let Some(side) = max_side {
        let img = image::load_from_memory(&bytes).map_err(|e| member.error(format!("not a decodable image: {e}")))?;
        if img.width().min(img.height()) > side {
            let px = folder::Pixels::of(img, 3)
                .rescale(side, 0)
                .map_err(anyhow::Error::msg)?;
            let jpeg = turbojpeg::compress(
                turbojpeg::Image {
                    pixels: px.data.as_slice(),
                    width: px.w as usize,
                    pitch: 3 * px.w as usize,
                    height: px.h as usize,
                    format: turbojpeg::PixelFormat::RGB,
                },
                90,
                turbojpeg::Subsamp::Sub2x2,
            )
            .with_context(|| format!("cannot encode {} as JPEG", path.display()))?;
            return Ok((format!("{class}/{stem}.jpg"), jpeg.to_vec(), true));
        }
    }
    Ok((format!("{class}/{stem}.{ext}"), bytes, false))
}

/// The shards of one split, written one after another.
struct Shards {
    dir: PathBuf,
    limit: u64,
    current: Option<(tar::Builder<File>, u64)>,
    count: usize,
}

impl Shards {
    fn new(dir: PathBuf, limit: u64) -> Shards {
        Shards {
            dir,
            limit,
            current: None,
            count: 0,
        }
    }

    fn add(&mut self, name: &str, image: &[u8], label: i64) -> Result<()> {
        if self.current.as_ref().is_some_and(|(_, size)| *size >= self.limit) {
            self.close()?;
        }
        if self.current.is_none() {
            let path = self.dir.join(format!("shard-{:06}.tar", self.count));
            let file = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
            self.current = Some((tar::Builder::new(file), 0));
            self.count += 1;
        }
        let (tar, size) = self.current.as_mut().expect("a shard is open");
        let key = name.rsplit_once('.').map_or(name, |(k, _)| k);
        for (member, bytes) in [
            (name.to_owned(), image),
            (format!("{key}.cls"), label.to_string().as_bytes()),
        ] {
            let mut header = tar::Header::new_ustar();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_cksum();
            tar.append_data(&mut header, &member, bytes)
                .with_context(|| format!("cannot write {member} into shard {}", self.count - 1))?;
            *size += 512 + bytes.len().div_ceil(512) as u64 * 512;
        }
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        if let Some((tar, _)) = self.current.take() {
            let mut file = tar.into_inner().context("cannot finish a shard")?;
            file.flush()?;
            file.sync_all().context("cannot sync a shard")?;
        }
        Ok(())
    }

    /// Closes the last shard; the number written.
    fn finish(mut self) -> Result<usize> {
        self.close()?;
        Ok(self.count)
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}
