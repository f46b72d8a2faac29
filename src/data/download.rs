//! Downloads from the datasets' official locations: resumable (an HTTP Range
//! request continues a `.part` file), md5 checked, then renamed into place.
use super::DataError;
use crate::config::DatasetName;
use md5::{Digest, Md5};
use std::{
    fs::{self, OpenOptions},
    io::{Read, Write},
    path::Path,
};

/// One file of a dataset and where it comes from.
#[derive(Clone, Copy)]
pub struct Remote {
    pub base: &'static str,
    pub file: &'static str,
    pub md5: &'static str,
}

pub const CIFAR10: Remote = Remote {
    base: "https://www.cs.toronto.edu/~kriz/",
    file: "cifar-10-binary.tar.gz",
    md5: "c32a1d4ab5d03f1284b67883e8d87530",
};

pub const CIFAR100: Remote = Remote {
    base: "https://www.cs.toronto.edu/~kriz/",
    file: "cifar-100-binary.tar.gz",
    md5: "03b5dce01913d631647c71ecec9e9cb8",
};

const FASHION: &str = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/";
const MNIST: &str = "https://ossci-datasets.s3.amazonaws.com/mnist/";

fn remotes(name: DatasetName) -> Vec<Remote> {
    let idx =
        |base, files: [(&'static str, &'static str); 4]| files.map(|(file, md5)| Remote { base, file, md5 }).to_vec();
    match name {
        DatasetName::Cifar10 => vec![CIFAR10],
        DatasetName::Cifar100 => vec![CIFAR100],
        DatasetName::FashionMnist => idx(
            FASHION,
            [
                ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
                ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
                ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
                ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
            ],
        ),
        DatasetName::Mnist => idx(
            MNIST,
            [
                ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
                ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
                ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
                ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
            ],
        ),
        DatasetName::Folder | DatasetName::Shards => vec![],
    }
}

/// What to do when the dataset is not there.
pub fn how_to_get(name: DatasetName, dir: &Path) -> String {
    let files: Vec<String> = remotes(name).iter().map(|r| format!("{}{}", r.base, r.file)).collect();
    let mut s = format!(
        "run with --download, or put {} into {}",
        files.join(" and "),
        dir.display()
    );
    if name == DatasetName::FashionMnist {
        s += " (or: apt-get install dataset-fashion-mnist)";
    }
    s
}

pub fn fetch_dataset(name: DatasetName, dir: &Path) -> Result<(), DataError> {
    for r in remotes(name) {
        let url = format!("{}{}", r.base, r.file);
        fetch(&url, &dir.join(r.file), r.md5).map_err(|e| {
            DataError::Other(format!(
                "{e}\n  offline? download {url} yourself and put it in {} (expected md5 {})",
                dir.display(),
                r.md5
            ))
        })?;
    }
    Ok(())
}

fn md5_of(path: &Path) -> std::io::Result<String> {
    let mut f = fs::File::open(path)?;
    let mut h = Md5::new();
    let mut buf = vec![0; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Downloads `url` to `dest`, resuming `dest.part` and checking the md5.
pub fn fetch(url: &str, dest: &Path, md5: &str) -> Result<(), DataError> {
    if dest.is_file() && md5_of(dest).map_err(|e| DataError::io(dest, e))? == md5 {
        return Ok(());
    }
    let dir = dest.parent().expect("a file in a folder");
    fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let part = dest.with_extension("part");
    let have = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    // A complete .part (stopped before the rename) would get 416 on resume.
    if have > 0 && md5_of(&part).map_err(|e| DataError::io(&part, e))? == md5 {
        return fs::rename(&part, dest).map_err(|e| DataError::io(dest, e));
    }
    let fail = |what: String| DataError::Other(format!("cannot download {url}: {what}"));
    let mut req = ureq::get(url);
    if have > 0 {
        req = req.header("Range", &format!("bytes={have}-"));
    }
    let resp = req.call().map_err(|e| fail(e.to_string()))?;
    let resumed = resp.status() == 206;
    let mut out = OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(&part)
        .map_err(|e| DataError::io(&part, e))?;
    let mut body = resp.into_body();
    let mut reader = body.as_reader();
    std::io::copy(&mut reader, &mut out).map_err(|e| fail(e.to_string()))?;
    out.sync_all().map_err(|e| DataError::io(&part, e))?;
    let got = md5_of(&part).map_err(|e| DataError::io(&part, e))?;
    if got != md5 {
        let _ = fs::remove_file(&part);
        return Err(fail(format!(
            "md5 {got} does not match the expected {md5}; the partial file was removed, try again"
        )));
    }
    fs::rename(&part, dest).map_err(|e| DataError::io(dest, e))?;
    let _ = out.flush();
    Ok(())
}
