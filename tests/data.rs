//! The datasets through the public API: every on-disk format written into a
//! temporary folder and read back exactly, the splits, bad input, the
//! augmentation, the real Fashion-MNIST when installed, and the resumable,
//! md5-checked download against a local HTTP server.
use std::{
    collections::HashMap,
    fs,
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};
mod common;
use common::have_data;
use tch::{Device, Kind, Tensor};
use vggtrain::config::{DataConfig, DatasetName, Normalize, PcaSource};
use vggtrain::data::{
    self,
    augment::{self, Augment, Normalise, Stats},
    cifar, download, folder, idx,
    shards::Member,
    Images, Source, SplitMix,
};

// ---------------------------------------------------------------- helpers

/// `n` images whose first pixel is their index (unique for n <= 256) and
/// the rest seeded noise; label = index % classes.
fn images(n: usize, c: usize, h: usize, w: usize, classes: usize, seed: u64) -> Images {
    let mut rng = SplitMix(seed);
    let per = c * h * w;
    let mut pixels = Vec::with_capacity(n * per);
    for i in 0..n {
        pixels.push(i as u8);
        pixels.extend((1..per).map(|_| rng.next() as u8));
    }
    Images {
        c,
        h,
        w,
        pixels,
        labels: (0..n).map(|i| (i % classes) as i64).collect(),
    }
}

fn slice(all: &Images, range: std::ops::Range<usize>) -> Images {
    let per = all.c * all.h * all.w;
    Images {
        pixels: all.pixels[range.start * per..range.end * per].to_vec(),
        labels: all.labels[range].to_vec(),
        ..all.clone()
    }
}

fn cfg(dataset: DatasetName, dir: &Path) -> DataConfig {
    DataConfig {
        dataset,
        dir: Some(dir.to_owned()),
        ..Default::default()
    }
}

fn bytes(t: &Tensor) -> Vec<u8> {
    Vec::<u8>::try_from(t.flatten(0, -1)).unwrap()
}

fn memory(s: &Source) -> (&Tensor, &Tensor) {
    match s {
        Source::Memory { images, labels } => (images, labels),
        Source::Folder(_) => panic!("expected an in-memory split"),
    }
}

fn err_text<T>(r: Result<T, impl std::fmt::Display>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

/// Writes the CIFAR-10 layout (5 training batches of `per` images + test).
fn write_cifar10(dir: &Path, per: usize) -> (Images, Images) {
    fs::create_dir_all(dir).unwrap();
    let train = images(5 * per, 3, 32, 32, 10, 1);
    for (b, name) in cifar::CIFAR10.train_files.iter().enumerate() {
        cifar::write(&slice(&train, b * per..(b + 1) * per), cifar::CIFAR10, &dir.join(name)).unwrap();
    }
    let test = images(7, 3, 32, 32, 10, 2);
    cifar::write(&test, cifar::CIFAR10, &dir.join("test_batch.bin")).unwrap();
    (train, test)
}

// ---------------------------------------------------------------- formats

#[test]
fn cifar10_binary_folder_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, test) = write_cifar10(tmp.path(), 4);
    let (r_train, r_test, names) = data::read_in_memory(DatasetName::Cifar10, tmp.path()).unwrap();
    assert_eq!(r_train, train);
    assert_eq!(r_test, test);
    assert_eq!(names, cifar::CIFAR10_CLASSES.map(String::from));

    // batches.meta.txt, when present, names the classes.
    let custom: Vec<String> = (0..10).map(|i| format!("class{i}")).collect();
    fs::write(tmp.path().join("batches.meta.txt"), custom.join("\n") + "\n\n").unwrap();
    let (_, _, names) = data::read_in_memory(DatasetName::Cifar10, tmp.path()).unwrap();
    assert_eq!(names, custom);
}

#[test]
fn cifar10_official_tar_gz_round_trips() {
    let src = tempfile::tempdir().unwrap();
    let (train, test) = write_cifar10(src.path(), 3);
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("cifar-10-binary.tar.gz");
    let gz = flate2::write::GzEncoder::new(fs::File::create(&archive).unwrap(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut names: Vec<&str> = cifar::CIFAR10.train_files.to_vec();
    names.extend(["test_batch.bin"]);
    for name in names {
        let body = fs::read(src.path().join(name)).unwrap();
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, format!("cifar-10-batches-bin/{name}"), &body[..])
            .unwrap();
    }
    let meta = b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\nTRUCK\n";
    let mut header = tar::Header::new_gnu();
    header.set_size(meta.len() as u64);
    header.set_cksum();
    tar.append_data(&mut header, "cifar-10-batches-bin/batches.meta.txt", &meta[..])
        .unwrap();
    tar.into_inner().unwrap().finish().unwrap();

    let (r_train, r_test, classes) = data::read_in_memory(DatasetName::Cifar10, tmp.path()).unwrap();
    assert_eq!(r_train, train);
    assert_eq!(r_test, test);
    assert_eq!(classes[9], "TRUCK");
    // The archive alone marks the folder as holding CIFAR-10.
    let found = data::locate(&cfg(DatasetName::Cifar10, tmp.path())).unwrap();
    assert_eq!(found, tmp.path());
}

#[test]
fn cifar100_uses_the_fine_label() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cifar-100-binary");
    fs::create_dir_all(&dir).unwrap();
    let train = images(12, 3, 32, 32, 100, 3);
    let train = Images {
        labels: (0..12).map(|i| 99 - 7 * i).collect(),
        ..train
    };
    let test = images(5, 3, 32, 32, 100, 4);
    // coarse label byte, fine label byte, 3072 pixels; coarse != fine.
    let write = |imgs: &Images, path: &Path| {
        let mut out = Vec::new();
        for (i, &fine) in imgs.labels.iter().enumerate() {
            out.push((fine % 20) as u8 ^ 0x0f);
            out.push(fine as u8);
            out.extend_from_slice(&imgs.pixels[i * 3072..(i + 1) * 3072]);
        }
        fs::write(path, out).unwrap();
    };
    write(&train, &dir.join("train.bin"));
    write(&test, &dir.join("test.bin"));
    let (r_train, r_test, names) = data::read_in_memory(DatasetName::Cifar100, tmp.path()).unwrap();
    assert_eq!(r_train, train);
    assert_eq!(r_test, test);
    assert_eq!(names.len(), 100);
    assert_eq!(names[0], "apple");

    // cifar::write's own format reads back too (its two label bytes are equal).
    cifar::write(&train, cifar::CIFAR100, &dir.join("train.bin")).unwrap();
    let (r_train, _, _) = data::read_in_memory(DatasetName::Cifar100, tmp.path()).unwrap();
    assert_eq!(r_train, train);
}

#[test]
fn idx_gzip_and_raw_round_trip() {
    for ext in [".gz", ""] {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let train = images(30, 1, 28, 28, 10, 5);
        let test = images(11, 1, 28, 28, 10, 6);
        let p = |stem: &str| d.join(format!("{stem}{ext}"));
        idx::write_pair(&train, &p("train-images-idx3-ubyte"), &p("train-labels-idx1-ubyte")).unwrap();
        idx::write_pair(&test, &p("t10k-images-idx3-ubyte"), &p("t10k-labels-idx1-ubyte")).unwrap();
        if ext == ".gz" {
            let head = fs::read(p("train-images-idx3-ubyte")).unwrap();
            assert_eq!(&head[..2], &[0x1f, 0x8b], "written gzip");
        }
        let (r_train, r_test, names) = data::read_in_memory(DatasetName::FashionMnist, d).unwrap();
        assert_eq!(r_train, train, "{ext:?}");
        assert_eq!(r_test, test, "{ext:?}");
        assert_eq!(names, data::FASHION_MNIST_CLASSES.map(String::from));
        let (_, _, names) = data::read_in_memory(DatasetName::Mnist, d).unwrap();
        assert_eq!(names, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
    }
}

#[test]
fn load_splits_and_keeps_labels_with_images() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, test) = write_cifar10(tmp.path(), 6); // 30 training images
    let per = 3 * 32 * 32;
    let by_pixels: HashMap<&[u8], i64> = train.pixels.chunks(per).zip(train.labels.iter().copied()).collect();

    let config = DataConfig {
        val_size: Some(5),
        subset: Some(7),
        test_subset: Some(3),
        ..cfg(DatasetName::Cifar10, tmp.path())
    };
    let ds = data::load(&config, 32, 11, Device::Cpu).unwrap();
    assert_eq!((ds.train.len(), ds.val.len(), ds.test.len()), (7, 5, 3));
    assert_eq!(ds.channels, 3);
    assert_eq!(ds.classes.len(), 10);
    let mut seen = Vec::new();
    for split in [&ds.train, &ds.val] {
        let (images, labels) = memory(split);
        assert_eq!(images.size()[1..], [3, 32, 32]);
        assert_eq!(images.kind(), Kind::Uint8);
        let px = bytes(images);
        let labels = Vec::<i64>::try_from(labels).unwrap();
        for (img, label) in px.chunks(per).zip(labels) {
            assert_eq!(by_pixels.get(img), Some(&label), "an image lost its label");
            seen.push(img[0]);
        }
    }
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 12, "validation and training overlap");
    // The test subset is the first N test images, in order.
    let (images, labels) = memory(&ds.test);
    assert_eq!(bytes(images), test.pixels[..3 * per]);
    assert_eq!(Vec::<i64>::try_from(labels).unwrap(), test.labels[..3]);

    // The same seed gives the same split, another seed another one.
    let again = data::load(&config, 32, 11, Device::Cpu).unwrap();
    assert!(memory(&again.val).0.equal(memory(&ds.val).0));
    let other = data::load(&config, 32, 12, Device::Cpu).unwrap();
    assert!(!memory(&other.val).0.equal(memory(&ds.val).0));

    // Default validation size: 10% of the training set (at most 5000).
    let ds = data::load(&cfg(DatasetName::Cifar10, tmp.path()), 32, 0, Device::Cpu).unwrap();
    assert_eq!((ds.train.len(), ds.val.len(), ds.test.len()), (27, 3, 7));
    assert_eq!(data::val_size(&DataConfig::default(), 60_000).unwrap(), 5000);

    // A validation split that swallows the training set is an error.
    let bad = DataConfig {
        val_size: Some(30),
        ..cfg(DatasetName::Cifar10, tmp.path())
    };
    let err = err_text(data::load(&bad, 32, 0, Device::Cpu));
    assert!(
        err.contains("val-size = 30") && err.contains("no training images"),
        "{err}"
    );
}

#[test]
fn idx_images_are_padded_to_32() {
    let tmp = tempfile::tempdir().unwrap();
    let train = images(20, 1, 28, 28, 10, 7);
    let test = images(4, 1, 28, 28, 10, 8);
    let p = |s: &str| tmp.path().join(s);
    idx::write_pair(
        &train,
        &p("train-images-idx3-ubyte.gz"),
        &p("train-labels-idx1-ubyte.gz"),
    )
    .unwrap();
    idx::write_pair(&test, &p("t10k-images-idx3-ubyte.gz"), &p("t10k-labels-idx1-ubyte.gz")).unwrap();
    let ds = data::load(&cfg(DatasetName::FashionMnist, tmp.path()), 32, 0, Device::Cpu).unwrap();
    assert_eq!(ds.channels, 1);
    let (images, labels) = memory(&ds.test);
    assert_eq!(images.size(), [4, 1, 32, 32]);
    let inner = images.narrow(2, 2, 28).narrow(3, 2, 28);
    assert_eq!(bytes(&inner), test.pixels);
    assert_eq!(
        images.sum(Kind::Int64).int64_value(&[]),
        inner.sum(Kind::Int64).int64_value(&[])
    );
    assert_eq!(Vec::<i64>::try_from(labels).unwrap(), test.labels);
}

/// root/train/{cat,dog}/*.jpg and root/val/{cat,dog}/*.png, flat colours.
fn write_folder(root: &Path) -> HashMap<&'static str, [u8; 3]> {
    let colours = HashMap::from([("cat", [200u8, 100, 50]), ("dog", [10u8, 220, 130])]);
    for (class, rgb) in &colours {
        let train = root.join("train").join(class);
        let val = root.join("val").join(class);
        fs::create_dir_all(&train).unwrap();
        fs::create_dir_all(&val).unwrap();
        for i in 0..4 {
            let img = image::RgbImage::from_fn(48 + 8 * i, 40, |x, y| {
                image::Rgb([rgb[0], rgb[1].wrapping_add((x + y) as u8 % 16), rgb[2]])
            });
            img.save(train.join(format!("{i}.jpg"))).unwrap();
        }
        for i in 0..2 {
            image::RgbImage::from_pixel(40, 30 + 10 * i, image::Rgb(*rgb))
                .save(val.join(format!("{i}.png")))
                .unwrap();
        }
    }
    colours
}

#[test]
fn folder_scan_decode_and_load() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let colours = write_folder(root);
    // Files that are not images by extension are ignored.
    fs::write(root.join("train/cat/notes.txt"), "not an image").unwrap();

    let (classes, files) = folder::scan(&root.join("train")).unwrap();
    assert_eq!(classes, ["cat", "dog"]);
    assert_eq!(files.len(), 8);
    assert_eq!(files[0], (Member::File(root.join("train/cat/0.jpg")), 0));
    assert_eq!(files[7], (Member::File(root.join("train/dog/3.jpg")), 1));

    // PNG, flat colour: the smallest side rescaled to 20, a 16x16 centre crop.
    let cut = folder::Cut {
        scale: 20,
        crop: 16,
        fx: 0.5,
        fy: 0.5,
    };
    let (px, w, h) = folder::decode(&Member::File(root.join("val/cat/0.png")), cut, false).unwrap();
    assert_eq!((w, h, px.len()), (16, 16, 3 * 16 * 16));
    let rgb = colours["cat"];
    for c in 0..3 {
        assert!(px[c * 256..(c + 1) * 256].iter().all(|&v| v == rgb[c]), "channel {c}");
    }
    // crop = 0 keeps the whole rescaled image: 40x30 -> smallest side 15 -> 20x15.
    let (px, w, h) = folder::decode(
        &Member::File(root.join("val/dog/0.png")),
        folder::Cut {
            scale: 15,
            crop: 0,
            fx: 0.5,
            fy: 0.5,
        },
        false,
    )
    .unwrap();
    assert_eq!((w, h, px.len()), (20, 15, 3 * 20 * 15));
    assert_eq!(&px[..1], &[10]);
    // JPEG: the shape, decoded in full and at a DCT scale.
    for draft in [false, true] {
        let (px, w, h) = folder::decode(&Member::File(root.join("train/dog/2.jpg")), cut, draft).unwrap();
        assert_eq!((w, h, px.len()), (16, 16, 768));
    }

    let config = DataConfig {
        scale: [32, 40],
        val_size: Some(2),
        test_subset: Some(3),
        ..cfg(DatasetName::Folder, root)
    };
    let ds = data::load(&config, 24, 0, Device::Cpu).unwrap();
    assert_eq!(ds.classes, ["cat", "dog"]);
    assert_eq!((ds.train.len(), ds.val.len(), ds.test.len()), (6, 2, 3));
    assert_eq!(ds.stats.mean.len(), 3);
    let Source::Folder(train) = &ds.train else {
        panic!("folder split")
    };
    let plan = folder::Plan::new(&config, 24, Device::Cpu);
    assert_eq!(plan.test_scale, 36);
    let batch = plan.batch(train, &[0, 1, 2], true, 5).unwrap();
    assert_eq!(
        (batch.labels.len(), batch.pixels.len(), batch.skipped),
        (3, 3 * 3 * 24 * 24, 0)
    );
    let (x, y) = batch.to_tensors(Device::Cpu);
    assert_eq!(x.size(), [3, 3, 24, 24]);
    assert_eq!(y.size(), [3]);
    // Each image keeps its label: the red channel tells the class apart.
    for (i, &label) in batch.labels.iter().enumerate() {
        let red = batch.pixels[i * 3 * 576];
        let class = if label == 0 { "cat" } else { "dog" };
        assert!((red as i32 - colours[class][0] as i32).abs() <= 8, "{class}: red {red}");
    }
    // The evaluation cut is deterministic.
    let Source::Folder(test) = &ds.test else {
        panic!("folder split")
    };
    let a = plan.batch(test, &[0, 1, 2], false, 1).unwrap();
    let b = plan.batch(test, &[0, 1, 2], false, 2).unwrap();
    assert_eq!(a.pixels, b.pixels);
    assert_eq!(a.labels, [0, 0, 1]);
}

// ---------------------------------------------------------------- bad input

#[test]
fn bad_idx_files_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = images(5, 1, 28, 28, 10, 9);
    let ip = tmp.path().join("train-images-idx3-ubyte");
    let lp = tmp.path().join("train-labels-idx1-ubyte");
    idx::write_pair(&imgs, &ip, &lp).unwrap();
    assert_eq!(idx::read_pair(&ip, &lp, 10).unwrap(), imgs);
    let good = fs::read(&ip).unwrap();

    fs::write(&ip, &good[..good.len() - 1]).unwrap();
    let err = err_text(idx::read_pair(&ip, &lp, 10));
    assert!(
        err.contains(&ip.display().to_string()) && err.contains("truncated"),
        "{err}"
    );

    fs::write(&ip, &good[..10]).unwrap();
    let err = err_text(idx::read_pair(&ip, &lp, 10));
    assert!(err.contains("truncated") && err.contains("header"), "{err}");

    let mut big = good.clone();
    big.push(0);
    fs::write(&ip, &big).unwrap();
    let err = err_text(idx::read_pair(&ip, &lp, 10));
    assert!(
        err.contains(&ip.display().to_string()) && err.contains("more than"),
        "{err}"
    );

    let mut magic = good.clone();
    magic[3] = 0x01; // a labels file's magic where images are expected
    fs::write(&ip, &magic).unwrap();
    let err = err_text(idx::read_pair(&ip, &lp, 10));
    assert!(err.contains("wrong IDX magic 0x00000801"), "{err}");

    // A header whose sizes overflow is an error, not a panic.
    let mut huge = good[..16].to_vec();
    huge[4..16].fill(0xff);
    fs::write(&ip, &huge).unwrap();
    let err = err_text(idx::read_pair(&ip, &lp, 10));
    assert!(err.contains(&ip.display().to_string()), "{err}");

    fs::write(&ip, &good).unwrap();
    let bad_labels = Images {
        labels: vec![0, 1, 10, 3, 4],
        ..imgs.clone()
    };
    idx::write_pair(&bad_labels, &ip, &lp).unwrap();
    let err = err_text(idx::read_pair(&ip, &lp, 10));
    assert!(err.contains(&lp.display().to_string()), "{err}");
    assert!(
        err.contains("label 10 of record 2") && err.contains("10 classes"),
        "{err}"
    );

    // Images and labels that disagree in count.
    let fewer = slice(&imgs, 0..3);
    let lp2 = tmp.path().join("labels3");
    idx::write_pair(&fewer, &tmp.path().join("images3"), &lp2).unwrap();
    idx::write_pair(&imgs, &ip, &lp).unwrap();
    let err = err_text(idx::read_pair(&ip, &lp2, 10));
    assert!(err.contains("3 labels for 5 images"), "{err}");
}

#[test]
fn corrupt_gzip_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = images(50, 1, 28, 28, 10, 10);
    let ip = tmp.path().join("train-images-idx3-ubyte.gz");
    let lp = tmp.path().join("train-labels-idx1-ubyte.gz");
    idx::write_pair(&imgs, &ip, &lp).unwrap();
    let gz = fs::read(&ip).unwrap();
    fs::write(&ip, &gz[..gz.len() / 2]).unwrap();
    let err = err_text(idx::read_pair(&ip, &lp, 10));
    assert!(err.contains(&ip.display().to_string()) && err.contains("gzip"), "{err}");
    let mut garbage = gz[..10].to_vec();
    garbage.extend([0xffu8; 64]);
    fs::write(&ip, &garbage).unwrap();
    let err = err_text(idx::read_pair(&ip, &lp, 10));
    assert!(err.contains("corrupt or truncated gzip"), "{err}");
}

#[test]
fn bad_cifar_files_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    write_cifar10(tmp.path(), 2);
    let f = tmp.path().join("data_batch_3.bin");
    let good = fs::read(&f).unwrap();
    fs::write(&f, &good[..good.len() - 100]).unwrap();
    let err = err_text(data::read_in_memory(DatasetName::Cifar10, tmp.path()));
    assert!(err.contains(&f.display().to_string()), "{err}");
    assert!(err.contains("3073-byte CIFAR records"), "{err}");

    let mut bad = good.clone();
    bad[3073] = 10; // the second record's label
    fs::write(&f, &bad).unwrap();
    let err = err_text(data::read_in_memory(DatasetName::Cifar10, tmp.path()));
    assert!(
        err.contains("data_batch_3.bin") && err.contains("label 10 of record 1"),
        "{err}"
    );

    fs::write(&f, &good).unwrap();
    fs::remove_file(tmp.path().join("data_batch_5.bin")).unwrap();
    let err = err_text(data::read_in_memory(DatasetName::Cifar10, tmp.path()));
    assert!(err.contains("missing data_batch_5.bin"), "{err}");

    // A corrupt archive names the archive.
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("cifar-10-binary.tar.gz");
    fs::write(&archive, [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xff, 0xff, 0xff, 0xff]).unwrap();
    let err = err_text(data::read_in_memory(DatasetName::Cifar10, tmp.path()));
    assert!(err.contains("cifar-10-binary.tar.gz"), "{err}");
}

#[test]
fn missing_data_dir_names_the_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let gone = tmp.path().join("nowhere");
    for dataset in [DatasetName::Cifar10, DatasetName::FashionMnist, DatasetName::Folder] {
        let err = err_text(data::load(&cfg(dataset, &gone), 32, 0, Device::Cpu));
        assert!(err.contains(&gone.display().to_string()), "{dataset:?}: {err}");
        assert!(err.contains("no such directory"), "{dataset:?}: {err}");
    }
    // A folder that exists but lacks the files says which.
    let err = err_text(data::load(&cfg(DatasetName::Cifar10, tmp.path()), 32, 0, Device::Cpu));
    assert!(
        err.contains("test_batch.bin") && err.contains(&tmp.path().display().to_string()),
        "{err}"
    );
    let err = err_text(data::load(&cfg(DatasetName::Mnist, tmp.path()), 32, 0, Device::Cpu));
    assert!(err.contains("train-images-idx3-ubyte"), "{err}");
}

#[test]
fn missing_dataset_without_dir_says_where_to_put_it() {
    let tmp = tempfile::tempdir().unwrap();
    // Only this test reads or writes VGGTRAIN_DATA_HOME in this test binary.
    std::env::set_var("VGGTRAIN_DATA_HOME", tmp.path());
    let home = tmp.path().join("datasets").join("cifar10");
    let config = DataConfig {
        dataset: DatasetName::Cifar10,
        ..Default::default()
    };
    let err = err_text(data::locate(&config));
    assert!(
        err.contains("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "put https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz into {}",
            home.display()
        )),
        "{err}"
    );
    assert!(err.contains("--download"), "{err}");

    let config = DataConfig {
        dataset: DatasetName::Folder,
        ..Default::default()
    };
    let err = err_text(data::locate(&config));
    assert!(err.contains("data.dir") && err.contains("train/<class>"), "{err}");

    // Once the archive is there, the same search finds it.
    fs::create_dir_all(&home).unwrap();
    fs::write(home.join("cifar-10-binary.tar.gz"), b"").unwrap();
    let config = DataConfig {
        dataset: DatasetName::Cifar10,
        ..Default::default()
    };
    assert_eq!(data::locate(&config).unwrap(), home);
    std::env::remove_var("VGGTRAIN_DATA_HOME");
}

#[test]
fn bad_folders_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write_folder(root);
    let empty = root.join("train/emu");
    fs::create_dir_all(&empty).unwrap();
    let err = err_text(folder::scan(&root.join("train")));
    assert!(
        err.contains(&empty.display().to_string()) && err.contains("empty class folder"),
        "{err}"
    );
    fs::remove_dir(&empty).unwrap();

    let err = err_text(folder::scan(&root.join("val/cat")));
    assert!(err.contains("missing class folders"), "{err}");

    // A different set of classes in val.
    fs::create_dir_all(root.join("val/emu")).unwrap();
    image::RgbImage::new(8, 8).save(root.join("val/emu/0.png")).unwrap();
    let err = err_text(data::load(&cfg(DatasetName::Folder, root), 24, 0, Device::Cpu));
    assert!(err.contains("3 class folders differ from train's 2"), "{err}");
    fs::remove_dir_all(root.join("val/emu")).unwrap();

    // Not an image, named like one.
    let bad = root.join("train/dog/x.jpg");
    fs::write(&bad, "this is text, not a JPEG").unwrap();
    let cut = folder::Cut {
        scale: 32,
        crop: 24,
        fx: 0.5,
        fy: 0.5,
    };
    for draft in [false, true] {
        let err = err_text(folder::decode(&Member::File(bad.clone()), cut, draft));
        assert!(
            err.contains(&bad.display().to_string()) && err.contains("not a decodable image"),
            "{err}"
        );
    }

    let (_, files) = folder::scan(&root.join("train")).unwrap();
    let items = folder::Items::of(files.clone());
    let at = files.iter().position(|(p, _)| *p == Member::File(bad.clone())).unwrap();
    let config = DataConfig {
        scale: [32, 32],
        ..cfg(DatasetName::Folder, root)
    };
    let all: Vec<usize> = (0..files.len()).collect();
    let err = err_text(folder::Plan::new(&config, 24, Device::Cpu).batch(&items, &all, true, 0));
    assert!(err.contains("x.jpg"), "{err}");
    let skipping = DataConfig {
        skip_bad_images: true,
        ..config
    };
    let batch = folder::Plan::new(&skipping, 24, Device::Cpu)
        .batch(&items, &all, true, 0)
        .unwrap();
    assert_eq!(batch.skipped, 1);
    assert_eq!(batch.labels.len(), files.len() - 1);
    assert_eq!(batch.pixels.len(), (files.len() - 1) * 3 * 24 * 24);
    let only_bad = folder::Plan::new(&skipping, 24, Device::Cpu)
        .batch(&items, &[at], false, 0)
        .unwrap();
    assert_eq!((only_bad.skipped, only_bad.labels.len()), (1, 0));
}

// ---------------------------------------------------------------- augmentation

fn aug_cfg(pad: i64, flip: bool, pca: f64) -> DataConfig {
    DataConfig {
        dataset: DatasetName::Cifar10,
        pad,
        flip,
        pca_lighting: pca,
        ..Default::default()
    }
}

/// libtorch's generator is global: the tests that seed it and compare the
/// draws hold this lock, so that tests on other threads do not draw between.
static TORCH_RNG: Mutex<()> = Mutex::new(());

fn torch_rng() -> std::sync::MutexGuard<'static, ()> {
    TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

/// The images without augmentation: x / 255, normalised with `stats`.
fn plain(x: &Tensor, stats: &Stats) -> Tensor {
    Normalise::new(&stats.mean, None, Device::Cpu).apply(&(x.to_kind(Kind::Float) / 255.0))
}

fn batch_u8(n: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randint(256, [n, 3, 32, 32], (Kind::Uint8, Device::Cpu))
}

#[test]
fn training_transform_is_random_and_seeded_evaluation_deterministic() {
    let _rng = torch_rng();
    let x = batch_u8(8, 0);
    let stats = Stats::from_images(&x, PcaSource::Imagenet);
    let aug = Augment::new(&aug_cfg(4, true, 0.1), &stats, 4, None, Device::Cpu);
    tch::manual_seed(1);
    let a = aug.train(&x);
    tch::manual_seed(1);
    let b = aug.train(&x);
    tch::manual_seed(2);
    let c = aug.train(&x);
    assert_eq!(a.size(), [8, 3, 32, 32]);
    assert_eq!(a.kind(), Kind::Float);
    assert!(a.equal(&b), "same seed, different batches");
    assert!(!a.equal(&c), "different seeds, same batches");

    // Without augmentation, training is x / 255 - mean (normalize = mean, the paper).
    let none = Augment::new(&aug_cfg(0, false, 0.0), &stats, 0, None, Device::Cpu);
    let mean = Tensor::from_slice(&stats.mean).to_kind(Kind::Float).view([1, 3, 1, 1]);
    let expected = x.to_kind(Kind::Float) / 255.0 - mean;
    assert!((none.train(&x) - &expected).abs().max().double_value(&[]) < 1e-6);
    assert!((plain(&x, &stats) - expected).abs().max().double_value(&[]) < 1e-6);

    // mean-std divides by the standard deviation too.
    let cfg = DataConfig {
        normalize: Normalize::MeanStd,
        ..aug_cfg(0, false, 0.0)
    };
    let e = Augment::new(&cfg, &stats, 0, None, Device::Cpu).train(&x);
    let per_channel = e.transpose(0, 1).flatten(1, -1).std_dim(1, true, false);
    assert!((per_channel - 1.0).abs().max().double_value(&[]) < 0.01);

    // Upscaling to a larger crop.
    let up = Augment::new(&aug_cfg(0, false, 0.0), &stats, 0, Some(64), Device::Cpu);
    assert_eq!(up.train(&x).size(), [8, 3, 64, 64]);
}

#[test]
fn flips_are_horizontal_only() {
    let _rng = torch_rng();
    let x = batch_u8(64, 4);
    let stats = Stats::from_images(&x, PcaSource::Imagenet);
    let aug = Augment::new(&aug_cfg(0, true, 0.0), &stats, 0, None, Device::Cpu);
    tch::manual_seed(5);
    let out = aug.train(&x);
    let plain = plain(&x, &stats);
    let (mut kept, mut flipped) = (0, 0);
    for i in 0..64 {
        let (o, p) = (out.get(i), plain.get(i));
        if o.equal(&p) {
            kept += 1;
        } else if o.equal(&p.flip([2])) {
            flipped += 1;
        } else {
            panic!("image {i} is neither itself nor its mirror (a vertical flip?)");
        }
    }
    assert!(kept > 10 && flipped > 10, "kept {kept}, flipped {flipped}");

    // flip = false leaves every image as it is.
    let aug = Augment::new(&aug_cfg(0, false, 0.0), &stats, 0, None, Device::Cpu);
    assert!(aug.train(&x).equal(&plain));
}

#[test]
fn pad_and_crop_is_a_shifted_window() {
    let _rng = torch_rng();
    let x = batch_u8(16, 6);
    let stats = Stats::from_images(&x, PcaSource::Imagenet);
    let aug = Augment::new(&aug_cfg(4, false, 0.0), &stats, 4, None, Device::Cpu);
    tch::manual_seed(7);
    let out = aug.train(&x);
    // Padding is the mean colour: 0 after normalisation.
    let padded = plain(&x, &stats).constant_pad_nd([4, 4, 4, 4]);
    let mut offsets = Vec::new();
    for i in 0..16 {
        let found = (0..9)
            .flat_map(|dy| (0..9).map(move |dx| (dy, dx)))
            .find(|&(dy, dx)| out.get(i).equal(&padded.get(i).narrow(1, dy, 32).narrow(2, dx, 32)));
        offsets.push(found.unwrap_or_else(|| panic!("image {i} is not a window of its padded self")));
    }
    offsets.sort_unstable();
    offsets.dedup();
    assert!(offsets.len() > 4, "the crops hardly move: {offsets:?}");
}

#[test]
fn colour_shift_matches_the_hand_computation() {
    let _rng = torch_rng();
    let alpha = [[0.1, -0.2, 0.05], [-0.03, 0.0, 0.3]];
    let a = Tensor::from_slice(&alpha.concat()).view([2, 3]);
    let eigval = Tensor::from_slice(&augment::IMAGENET_EIGVAL);
    let eigvec = Tensor::from_slice(&augment::IMAGENET_EIGVEC).view([3, 3]);
    let got = augment::to_vec(&augment::color_shift(&a, &eigval, &eigvec));
    let v = augment::IMAGENET_EIGVEC;
    let l = augment::IMAGENET_EIGVAL;
    for (b, al) in alpha.iter().enumerate() {
        for c in 0..3 {
            // eigvec @ (alpha * eigval): row c of the matrix, columns j the vectors.
            let want: f64 = (0..3).map(|j| v[3 * c + j] * al[j] * l[j]).sum();
            assert!(
                (got[3 * b + c] - want).abs() < 1e-12,
                "image {b} channel {c}: {} vs {want}",
                got[3 * b + c]
            );
        }
    }
    // A by-hand value: alpha = (1, 0, 0) shifts by eigval[0] * the first column.
    let unit = Tensor::from_slice(&[1.0, 0.0, 0.0]).view([1, 3]);
    let got = augment::to_vec(&augment::color_shift(&unit, &eigval, &eigvec));
    let want = [-0.5675 * 0.2175, -0.5808 * 0.2175, -0.5836 * 0.2175];
    for c in 0..3 {
        assert!((got[c] - want[c]).abs() < 1e-12);
    }

    // In training, the shift is one constant per image and channel.
    let x = batch_u8(4, 8);
    let stats = Stats::from_images(&x, PcaSource::Imagenet);
    let aug = Augment::new(&aug_cfg(0, false, 0.1), &stats, 0, None, Device::Cpu);
    tch::manual_seed(9);
    let shift = aug.train(&x) - plain(&x, &stats);
    let spread = shift.amax([2, 3].as_slice(), false) - shift.amin([2, 3].as_slice(), false);
    assert!(spread.max().double_value(&[]) < 1e-5);
    assert!(shift.abs().max().double_value(&[]) > 1e-4, "no shift applied");
}

#[test]
fn dataset_pca_reconstructs_the_covariance() {
    let _rng = torch_rng();
    let x = batch_u8(10, 10);
    let stats = Stats::from_images(&x, PcaSource::Dataset);
    assert!(stats.eigval.windows(2).all(|w| w[0] >= w[1]), "{:?}", stats.eigval);
    let v = Tensor::from_slice(&stats.eigvec).view([3, 3]);
    let l = Tensor::from_slice(&stats.eigval);
    let cov = (&v * &l).matmul(&v.tr());
    let std = augment::to_vec(&cov.diagonal(0, 0, 1).sqrt());
    for c in 0..3 {
        assert!((std[c] - stats.std[c]).abs() < 1e-9, "{std:?} vs {:?}", stats.std);
        // Uniform bytes: mean about 0.5, std about 0.29.
        assert!((stats.mean[c] - 0.5).abs() < 0.01 && (stats.std[c] - 0.289).abs() < 0.01);
    }
    let imagenet = Stats::from_images(&x, PcaSource::Imagenet);
    assert_eq!(imagenet.eigval, augment::IMAGENET_EIGVAL);
    // Grey images have one channel: the ImageNet pairs do not apply.
    let grey = Stats::from_images(&x.narrow(1, 0, 1), PcaSource::Imagenet);
    assert_eq!(grey.eigval.len(), 1);
    assert_eq!(grey.eigvec, [1.0]);
}

// ---------------------------------------------------------------- real Fashion-MNIST

#[test]
fn real_fashion_mnist() {
    if !have_data() {
        return;
    }
    let dir = Path::new(common::FASHION);
    let (train, test, classes) = data::read_in_memory(DatasetName::FashionMnist, dir).unwrap();
    assert_eq!((train.len(), test.len()), (60_000, 10_000));
    assert_eq!((train.c, train.h, train.w), (1, 28, 28));
    assert_eq!(train.pixels.len(), 60_000 * 784);
    assert!(train.labels.iter().chain(&test.labels).all(|&l| (0..10).contains(&l)));
    // Balanced: 6000 / 1000 of each class.
    for c in 0..10 {
        assert_eq!(train.labels.iter().filter(|&&l| l == c).count(), 6000);
        assert_eq!(test.labels.iter().filter(|&&l| l == c).count(), 1000);
    }
    assert_eq!(classes, data::FASHION_MNIST_CLASSES.map(String::from));
    assert_eq!(classes[9], "Ankle boot");
    // Found without a configured dir.
    let found = data::locate(&DataConfig::default()).unwrap();
    assert_eq!(found, dir);
}

// ---------------------------------------------------------------- download

/// A tiny HTTP/1.1 server on 127.0.0.1 serving `body` at /file (with
/// `Range: bytes=N-` support) and 404 elsewhere; records each request's Range
/// header. Stops when dropped.
struct Server {
    addr: String,
    ranges: Arc<Mutex<Vec<Option<String>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(body: Vec<u8>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let ranges = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (ranges.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: at most 32 connections, then the thread ends.
            for stream in listener.incoming().take(32) {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    let _ = serve(stream, &body, &r);
                }
            }
        });
        Server {
            addr,
            ranges,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    fn requests(&self) -> Vec<Option<String>> {
        self.ranges.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(stream: TcpStream, body: &[u8], ranges: &Mutex<Vec<Option<String>>>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut range = None;
    for _ in 0..100 {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_owned());
            }
        }
    }
    if request_line.is_empty() {
        return Ok(()); // the wake-up connection
    }
    ranges.lock().unwrap().push(range.clone());
    let mut out = stream;
    if !request_line.starts_with("GET /file ") {
        return out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    }
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    match start {
        Some(n) if n < body.len() => {
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {n}-{}/{}\r\nConnection: close\r\n\r\n",
                body.len() - n,
                body.len() - 1,
                body.len()
            );
            out.write_all(head.as_bytes())?;
            out.write_all(&body[n..])
        }
        Some(_) => {
            out.write_all(b"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        }
        None => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            out.write_all(head.as_bytes())?;
            out.write_all(body)
        }
    }
}

fn md5_hex(bytes: &[u8]) -> String {
    use md5::{Digest, Md5};
    Md5::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn part_of(dest: &Path) -> PathBuf {
    dest.with_extension("part")
}

#[test]
fn download_checks_md5_and_resumes() {
    let body: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 255) as u8).collect();
    let md5 = md5_hex(&body);
    let server = Server::start(body.clone());
    let url = server.url("file");
    let tmp = tempfile::tempdir().unwrap();

    // A full download, md5 checked, into a folder that does not exist yet.
    let dest = tmp.path().join("sub/full.tar.gz");
    download::fetch(&url, &dest, &md5).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), body);
    assert!(!part_of(&dest).exists());
    assert_eq!(server.requests(), [None]);

    // Already there with the right md5: nothing is fetched.
    download::fetch(&url, &dest, &md5).unwrap();
    assert_eq!(server.requests().len(), 1);

    // A wrong md5 is an error and leaves no file behind.
    let dest = tmp.path().join("wrong.bin");
    let err = err_text(download::fetch(&url, &dest, "00000000000000000000000000000000"));
    assert!(err.contains("md5") && err.contains(&md5) && err.contains(&url), "{err}");
    assert!(!dest.exists() && !part_of(&dest).exists());

    // A .part file is resumed with a Range request.
    let dest = tmp.path().join("resumed.bin");
    fs::write(part_of(&dest), &body[..30_000]).unwrap();
    download::fetch(&url, &dest, &md5).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), body);
    assert!(!part_of(&dest).exists());
    assert_eq!(server.requests().last().unwrap().as_deref(), Some("bytes=30000-"));

    // A complete .part (killed before the rename) is used as it is.
    let dest = tmp.path().join("complete.bin");
    fs::write(part_of(&dest), &body).unwrap();
    let before = server.requests().len();
    download::fetch(&url, &dest, &md5).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), body);
    assert_eq!(server.requests().len(), before, "a complete .part was fetched again");

    // A file that is not there is an error naming the URL.
    let missing = server.url("nothing");
    let err = err_text(download::fetch(&missing, &tmp.path().join("x"), &md5));
    assert!(err.contains(&missing) && err.contains("404"), "{err}");
    drop(server);
}
