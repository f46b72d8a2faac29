//! The JPEG pipeline on real photographs (tests/photos, made by
//! benches/make_photos.py): the reduced-DCT-scale decode training uses
//! equals the full decode and resize within a small tolerance, and JPEGs
//! libjpeg-turbo cannot give as RGB still decode.
use std::path::{Path, PathBuf};
use vggtrain::data::{folder, jpeg, shards::Member};

mod common;
use common::{bin, photo_folder, text};

fn photos() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/photos/train");
    let mut all: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|class| class.unwrap().path().join("00000.jpg"))
        .collect();
    all.sort();
    assert_eq!(all.len(), 8, "the photographs in {}", root.display());
    all
}

/// Peak signal-to-noise ratio of b against a, in dB.
fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mse = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (255.0f64.powi(2) / mse.max(1e-12)).log10()
}

fn cut(scale: u32, fx: f64, fy: f64) -> folder::Cut {
    folder::Cut {
        scale,
        crop: 96,
        fx,
        fy,
    }
}

/// Against the full decode, a resize of the whole image to S and the crop
/// (what evaluation does): the DCT-scaled decode, and the resize of the
/// crop's window only. Photographs with fine detail (stars, a retina's
/// vessels) differ most: the DCT scale is sharper than the Lanczos-3 resize.
/// A JPEG at quality 90 is itself about 35-40 dB from its source.
#[test]
fn the_scaled_decode_equals_the_full_decode_and_resize() {
    let (mut reduced, mut all) = (0, Vec::new());
    for path in photos() {
        let (w, h) = image::image_dimensions(&path).unwrap();
        // Photographs of about 430x410: 1/4, 1/2 and full-size decodes.
        let cases = [
            (96, 0.5, 0.5),
            (128, 0.0, 1.0),
            (160, 0.3, 0.7),
            (200, 1.0, 0.0),
            (256, 0.2, 0.9),
            (384, 0.5, 0.5),
        ];
        for (s, fx, fy) in cases {
            let f = jpeg::factor(w as usize, h as usize, s as usize);
            let scaled = f.num() < f.denom();
            reduced += scaled as usize;
            let (full, fw, fh) = folder::decode(&Member::File(path.clone()), cut(s, fx, fy), false).unwrap();
            let (draft, dw, dh) = folder::decode(&Member::File(path.clone()), cut(s, fx, fy), true).unwrap();
            assert_eq!((dw, dh), (fw, fh));
            let p = psnr(&full, &draft);
            assert!(
                p > 27.0,
                "{} at S = {s} ({f} of {w}x{h}): PSNR {p:.1} dB",
                path.display()
            );
            // Not the full decode under another name.
            assert!(
                !scaled || p < 60.0,
                "{} at S = {s}: the same pixels as the full decode",
                path.display()
            );
            all.push(p);
        }
    }
    let mean = all.iter().sum::<f64>() / all.len() as f64;
    assert!(mean > 33.0, "mean PSNR {mean:.1} dB: {all:.1?}");
    // Most of the cases decode at a reduced scale: the test sees that path.
    assert!(reduced >= 16, "only {reduced} of 48 cases at a reduced scale");
}

#[test]
fn every_window_at_every_scale_decodes() {
    // The crop at the image's edges, for scales that round every way.
    for path in photos() {
        for s in (64..=420).step_by(7) {
            for (fx, fy) in [(0.0, 0.0), (1.0, 1.0), (1.0, 0.0), (0.0, 1.0), (0.37, 0.81)] {
                let c = folder::Cut {
                    crop: 64,
                    ..cut(s, fx, fy)
                };
                let (px, w, h) = folder::decode(&Member::File(path.clone()), c, true)
                    .unwrap_or_else(|e| panic!("S = {s} at ({fx}, {fy}): {e}"));
                assert_eq!((w, h, px.len()), (64, 64, 3 * 64 * 64));
            }
        }
    }
}

#[test]
fn a_scaled_decode_keeps_the_smallest_side_and_skips_the_rest() {
    for path in photos() {
        let bytes = std::fs::read(&path).unwrap();
        let (w, h) = image::image_dimensions(&path).unwrap();
        let (px, full) = jpeg::decode(&bytes, 3, 256).unwrap();
        assert_eq!(full, (w, h));
        assert!(px.w.min(px.h) >= 256.min(w.min(h)), "{}", path.display());
        let f = jpeg::factor(w as usize, h as usize, 256);
        assert_eq!(
            (px.w as usize, px.h as usize),
            (f.scale(w as usize), f.scale(h as usize))
        );
        assert_eq!(px.data.len(), (px.w * px.h * 3) as usize);
    }
}

#[test]
fn cmyk_and_progressive_jpegs_decode_too() {
    let odd = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/photos/odd");
    for name in ["cmyk.jpg", "progressive.jpg"] {
        let path = odd.join(name);
        let small = folder::Cut {
            crop: 64,
            ..cut(96, 0.5, 0.5)
        };
        let (full, w, h) = folder::decode(&Member::File(path.clone()), small, false).unwrap();
        let (draft, ..) = folder::decode(&Member::File(path.clone()), small, true).unwrap();
        assert_eq!((w, h, full.len()), (64, 64, 3 * 64 * 64), "{name}");
        let p = psnr(&full, &draft);
        assert!(p > 30.0, "{name}: PSNR {p:.1} dB");
    }
}

// ------------------------------------------------------------ tar shards

fn pack(folder: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    bin()
        .arg("pack")
        .arg("--data-dir")
        .arg(folder)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

/// Python's own tarfile reads the shards: every KEY.jpg has its KEY.cls,
/// the bytes are the source file's, the class is classes.txt's line.
#[test]
fn pack_writes_webdataset_shards_that_pythons_tarfile_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("folder");
    photo_folder(&folder, [3, 1]);
    let out = tmp.path().join("shards");
    let o = pack(&folder, &out, &["--shard-mb", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("wrote 24 train and 8 val images"), "{}", text(&o));
    let script = r#"
import sys, tarfile, glob, os
root, folder = sys.argv[1], sys.argv[2]
classes = open(os.path.join(root, "classes.txt")).read().split()
for split in ("train", "val"):
    shards = sorted(glob.glob(os.path.join(root, split, "*.tar")))
    samples = {}
    for s in shards:
        with tarfile.open(s) as t:
            for m in t.getmembers():
                key, ext = m.name.split(".", 1)
                samples.setdefault(key, {})[ext] = t.extractfile(m).read()
    for key, parts in samples.items():
        assert set(parts) == {"jpg", "cls"}, (key, set(parts))
        cls = classes[int(parts["cls"])]
        assert key.startswith(cls + "/"), (key, cls)
        src = os.path.join(folder, split, key + ".jpg")
        assert parts["jpg"] == open(src, "rb").read(), key
    print(split, len(shards), len(samples))
"#;
    let py = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&out)
        .arg(&folder)
        .output()
        .unwrap();
    let said = text(&py);
    assert!(py.status.success(), "{said}");
    let train_shards: usize = said.lines().next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    assert!(train_shards >= 2, "--shard-mb 1 splits 1.3 MB: {said}");
    assert!(said.contains(" 24\n") && said.contains(" 8\n"), "{said}");

    // Never over an existing dataset.
    let o = pack(&folder, &out, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("exists: pack into another --out"), "{}", text(&o));
}

#[test]
fn pack_max_side_shrinks_the_images() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("folder");
    photo_folder(&folder, [1, 1]);
    let out = tmp.path().join("shards");
    let o = pack(&folder, &out, &["--max-side", "120"]);
    assert!(o.status.success() && text(&o).contains("16 shrunk"), "{}", text(&o));
    let (files, starts) = vggtrain::data::shards::scan(&out.join("train")).unwrap();
    assert_eq!((files.len(), starts), (8, vec![0]));
    for (member, _) in &files {
        let img = image::load_from_memory(&member.read().unwrap()).unwrap();
        assert_eq!(img.width().min(img.height()), 120, "{member:?}");
    }
}

/// A tar shard with `members` (name, bytes), in order.
fn write_tar(path: &Path, members: &[(&str, &[u8])]) {
    let mut tar = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, bytes) in members {
        let mut h = tar::Header::new_ustar();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, *bytes).unwrap();
    }
    tar.into_inner().unwrap();
}

#[test]
fn damaged_shards_are_errors_that_name_the_shard_and_the_member() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("folder");
    photo_folder(&folder, [6, 1]);
    let good = tmp.path().join("good");
    assert!(pack(&folder, &good, &[]).status.success());
    let runs = tmp.path().join("runs");
    let train = |data: &Path, extra: &[&str]| {
        bin()
            .args(
                "train --no-tui --dataset shards --model A --width 16 --epochs 1 --batch-size 8 --device cpu"
                    .split(' '),
            )
            .args([
                "--set",
                "data.crop=32",
                "--set",
                "data.scale=[36,36]",
                "--set",
                "data.val-size=8",
            ])
            .arg("--data-dir")
            .arg(data)
            .arg("--runs-dir")
            .arg(&runs)
            .args(extra)
            .output()
            .unwrap()
    };
    let o = train(&good, &["--name", "good"]);
    assert!(o.status.success(), "{}", text(&o));

    let copy = |name: &str| {
        let dir = tmp.path().join(name);
        for split in ["train", "val"] {
            std::fs::create_dir_all(dir.join(split)).unwrap();
            for e in std::fs::read_dir(good.join(split)).unwrap() {
                let p = e.unwrap().path();
                std::fs::copy(&p, dir.join(split).join(p.file_name().unwrap())).unwrap();
            }
        }
        std::fs::copy(good.join("classes.txt"), dir.join("classes.txt")).unwrap();
        dir
    };
    // Truncated: refused before anything is written, naming shard and member.
    let cut = copy("cut");
    let shard = cut.join("train/shard-000000.tar");
    let len = std::fs::metadata(&shard).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let o = train(&cut, &["--name", "cut"]);
    let said = text(&o);
    assert_eq!(o.status.code(), Some(2), "{said}");
    assert!(
        said.contains(&shard.display().to_string()) && said.contains("member"),
        "{said}"
    );
    assert!(!runs.join("cut").exists(), "nothing written for bad input");

    // An image that is not one: the run fails naming it; with
    // --skip-bad-images it is counted and left out.
    let junk = copy("junk");
    let bad = junk.join("train/shard-zzz.tar");
    write_tar(&bad, &[("odd/x.jpg", b"not a JPEG"), ("odd/x.cls", b"0")]);
    let o = train(&junk, &["--name", "junk"]);
    let said = text(&o);
    assert!(
        !o.status.success() && said.contains("shard-zzz.tar") && said.contains("member odd/x.jpg"),
        "{said}"
    );
    let o = train(&junk, &["--name", "junk-skipped", "--skip-bad-images"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("skipped"), "{}", text(&o));

    // A sample without its class.
    let lone = copy("lone");
    write_tar(&lone.join("train/shard-zzz.tar"), &[("odd/y.jpg", b"\xff\xd8\xff")]);
    let o = train(&lone, &["--name", "lone"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("sample odd/y has an image but no odd/y.cls"),
        "{}",
        text(&o)
    );
}
