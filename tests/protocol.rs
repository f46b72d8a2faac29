//! The paper's test protocol through the real binary (`eval`, `predict`),
//! checked against a reference written in plain PyTorch from the paper's
//! definitions (tests/reference/protocol.py) and against torchvision's own
//! VGG, run by the Python the set-up installs (`.libtorch`'s PyTorch 2.11.0
//! and `.pyref`'s torchvision 0.26.0).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

mod common;
use common::{bin, ok, python};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A PNG of w x h with a pattern that differs per `seed`.
fn png(path: &Path, w: u32, h: u32, seed: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_fn(w, h, |x, y| {
        let v = (x * 7 + y * 13 + seed * 29) ^ (x * y + seed);
        image::Rgb([
            (v % 256) as u8,
            ((v / 3 + seed * 40) % 256) as u8,
            ((x * 11 + seed * 90) % 256) as u8,
        ])
    })
    .save(path)
    .unwrap();
}

/// Trains a network on a small folder dataset (3 classes) and exports it.
fn trained(dir: &Path, name: &str, model: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
    let data = dir.join("data");
    if !data.is_dir() {
        for (split, n) in [("train", 12), ("val", 3)] {
            for c in 0..3 {
                for i in 0..n {
                    png(&data.join(format!("{split}/class{c}/{i}.png")), 40, 36, c * 50 + i);
                }
            }
        }
    }
    let args = format!(
        "train --no-tui --dataset folder --model {model} --width 8 --batch-size 8 --epochs 2 --device cpu \
         --set data.crop=32 --set data.scale=[32,40] --set data.val-size=6 --name {name}"
    );
    let mut c = bin();
    c.args(args.split_whitespace()).args(extra);
    c.arg("--data-dir").arg(&data).arg("--runs-dir").arg(dir.join("runs"));
    ok(c.output().unwrap());
    let run = dir.join("runs").join(name);
    let ckpt = run.join("checkpoints/ckpt-0000000008.safetensors");
    let export = dir.join(format!("{name}.safetensors"));
    ok(bin()
        .args(["export", "--checkpoint"])
        .arg(&ckpt)
        .arg("--out")
        .arg(&export)
        .output()
        .unwrap());
    (ckpt, export)
}

/// `predict --json` of one image: its posterior.
fn predict(models: &[&Path], image: &Path, flags: &[&str]) -> Vec<f64> {
    let mut c = bin();
    c.arg("predict").arg("--json");
    for m in models {
        c.arg("--checkpoint").arg(m);
    }
    c.args(flags).arg(image);
    let out = ok(c.output().unwrap());
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    v["probs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_f64().unwrap())
        .collect()
}

/// Equal to float rounding: the two compute the same sums in other orders
/// (about 3e-8 here). A crop one pixel off moves a near-uniform posterior
/// by about 1e-4, so the bound is well below that.
fn close(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    assert!(d < 1e-6, "{what}: {a:?} vs {b:?} (max difference {d})");
}

/// The reference's description of `predict`'s flags (one scale).
fn reference_case(models: &[&Path], image: &Path, flags: &str) -> serde_json::Value {
    let f: Vec<&str> = flags.split(' ').collect();
    let q: i64 = f[f.iter().position(|&x| x == "--scales").unwrap() + 1].parse().unwrap();
    let (dense, multi) = (f.contains(&"--dense"), f.contains(&"--multi-crop"));
    let mut methods = Vec::new();
    if !dense && !multi {
        methods.push("crop");
    }
    if dense {
        methods.push("dense");
    }
    if multi {
        methods.push("multi-crop");
    }
    serde_json::json!({"models": models, "image": image, "q": q, "methods": methods, "flip": f.contains(&"--flip")})
}

/// The reference's posteriors for `cases`.
fn reference(python: &mut Command, dir: &Path, cases: &serde_json::Value) -> Vec<Vec<f64>> {
    let file = dir.join("cases.json");
    std::fs::write(&file, cases.to_string()).unwrap();
    let out = ok(python
        .arg(root().join("tests/reference/protocol.py"))
        .arg(&file)
        .output()
        .unwrap());
    serde_json::from_str(&out).unwrap()
}

#[test]
fn predict_matches_a_pytorch_reference_of_the_papers_views() {
    let Some(mut py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_, a) = trained(dir, "a", "A", &[]);
    let (_, b) = trained(dir, "b", "B", &["--seed", "3"]);
    // Smallest sides 32 and 66: at Q = 32 and 66 they need no rescaling;
    // their free room (17 x 0, 67 x 34) is not a multiple of 2 or 4, so
    // the crop offsets round down.
    let (wide, big) = (dir.join("wide.png"), dir.join("big.png"));
    png(&wide, 49, 32, 7);
    png(&big, 99, 66, 8);
    let (ab, only_a): (&[&Path], &[&Path]) = (&[&a, &b], &[&a]);
    let cases = [
        (only_a, &wide, "--scales 32"),
        (only_a, &wide, "--scales 32 --flip"),
        (only_a, &big, "--scales 66 --dense"),
        (only_a, &big, "--scales 66 --dense --flip"),
        (only_a, &big, "--scales 66 --multi-crop"),
        (only_a, &big, "--scales 66 --dense --multi-crop"),
        (ab, &wide, "--scales 32 --flip"),
        (ab, &big, "--scales 66 --dense"),
    ];
    let spec: Vec<serde_json::Value> = cases
        .iter()
        .map(|(models, image, flags)| reference_case(models, image, flags))
        .collect();
    let want = reference(&mut py, dir, &serde_json::Value::Array(spec));
    for ((models, image, flags), want) in cases.iter().zip(&want) {
        let flags: Vec<&str> = flags.split(' ').collect();
        let got = predict(models, image, &flags);
        close(&got, want, &format!("{flags:?} with {} model(s)", models.len()));
    }
    // Several scales: the mean of each scale's posteriors.
    let both = predict(&[&a], &big, &["--scales", "66,96", "--flip"]);
    let (s66, s96) = (
        predict(&[&a], &big, &["--scales", "66", "--flip"]),
        predict(&[&a], &big, &["--scales", "96", "--flip"]),
    );
    let mean: Vec<f64> = s66.iter().zip(&s96).map(|(x, y)| (x + y) / 2.0).collect();
    close(&both, &mean, "two scales");

    // The top K, by probability: as JSON and as a line an image.
    let probs = predict(&[&a], &big, &["--scales", "66"]);
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&i, &j| probs[j].total_cmp(&probs[i]));
    let run = |json: bool| {
        let mut c = bin();
        c.args(["predict", "--top", "2", "--scales", "66", "--checkpoint"])
            .arg(&a);
        if json {
            c.arg("--json");
        }
        ok(c.arg(&big).arg(&wide).output().unwrap())
    };
    let lines: Vec<serde_json::Value> = run(true).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["image"], big.to_str().unwrap());
    let top = lines[0]["top"].as_array().unwrap();
    assert_eq!(top.len(), 2);
    for (t, &i) in top.iter().zip(&order) {
        assert_eq!(t["index"].as_u64(), Some(i as u64));
        assert_eq!(t["class"], format!("class{i}"));
        // (Two images are one batch: sums in another order.)
        assert!((t["prob"].as_f64().unwrap() - probs[i]).abs() < 1e-6);
    }
    let plain = run(false);
    let first = plain.lines().next().unwrap();
    let want = format!(
        "{}: class{} {:.2}%, class{} {:.2}%",
        big.display(),
        order[0],
        100.0 * probs[order[0]],
        order[1],
        100.0 * probs[order[1]]
    );
    assert_eq!(first, want);
    assert_eq!(plain.lines().count(), 2);
}

#[test]
fn an_export_loads_into_torchvision_with_the_probabilities_of_predict() {
    let Some(mut py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("data");
    for (split, n) in [("train", 3), ("val", 1)] {
        for c in 0..2 {
            for i in 0..n {
                png(&data.join(format!("{split}/c{c}/{i}.png")), 224, 224, c * 10 + i);
            }
        }
    }
    // The paper's A at full width, as torchvision's vgg11 (one step).
    let mut c = bin();
    c.args("train --no-tui --dataset folder --model A --batch-size 4 --epochs 1 --device cpu --name tv".split(' '))
        .args([
            "--set",
            "data.scale=[224,224]",
            "--set",
            "data.val-size=2",
            "--set",
            "train.lr=1e-4",
            // With a std as well, as the README's example divides by it.
            "--set",
            "data.normalize=\"mean-std\"",
        ])
        .arg("--data-dir")
        .arg(&data)
        .arg("--runs-dir")
        .arg(dir.join("runs"));
    ok(c.output().unwrap());
    let export = dir.join("vgg11.safetensors");
    let ckpt = dir.join("runs/tv/checkpoints/ckpt-0000000001.safetensors");
    ok(bin()
        .args(["export", "--checkpoint"])
        .arg(&ckpt)
        .arg("--out")
        .arg(&export)
        .output()
        .unwrap());
    let image = data.join("val/c1/0.png");
    let cases = serde_json::json!([{"models": [export], "image": image, "q": 224, "methods": ["crop"],
                                    "flip": false, "torchvision": true}]);
    let want = reference(&mut py, dir, &cases);
    close(&predict(&[&export], &image, &[]), &want[0], "torchvision's vgg11");
}

#[test]
fn eval_repeats_the_runs_validation_and_fuses_models() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (a, _) = trained(dir, "a", "A", &[]);
    let (b, b_export) = trained(dir, "b", "B", &["--seed", "3"]);
    let eval = |args: &[&str]| -> serde_json::Value {
        let out = ok(bin().arg("eval").arg("--json").args(args).output().unwrap());
        serde_json::from_str(out.trim()).unwrap()
    };
    let (a_s, b_s) = (a.to_str().unwrap(), b.to_str().unwrap());
    // No --scales: the run's own test scale ((32 + 40) / 2), one centre crop:
    // the validation the run reported for that epoch (the second).
    let r = eval(&["--checkpoint", a_s, "--split", "val"]);
    assert_eq!(r["views"]["scales"], serde_json::json!([36]));
    let metrics = std::fs::read_to_string(dir.join("runs/a/metrics.jsonl")).unwrap();
    let epoch2 = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["event"] == "epoch" && e["epoch"] == 2)
        .unwrap();
    assert_eq!(r["top1"], epoch2["val"]["top1"], "{r}");
    assert_eq!(r["loss"], epoch2["val"]["loss"], "{r}");
    assert_eq!(r["images"], 6);
    // Fusion of a checkpoint and an export, and the paper's scale set.
    let fused = eval(&[
        "--checkpoint",
        a_s,
        "--checkpoint",
        b_export.to_str().unwrap(),
        "--flip",
    ]);
    assert_eq!(
        (fused["views"]["models"].as_u64(), fused["views"]["per_image"].as_u64()),
        (Some(2), Some(4))
    );
    // Models that prepare their input otherwise (here: another crop) are not fused.
    let (c, _) = trained(
        &dir.join("other"),
        "c",
        "A",
        &["--set", "data.crop=64", "--set", "data.scale=[64,72]"],
    );
    let o = bin()
        .args(["eval", "--checkpoint", a_s, "--checkpoint"])
        .arg(&c)
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("cannot be fused") && t.contains(c.to_str().unwrap()), "{t}");
    let paper = eval(&["--checkpoint", b_s, "--dense", "--multi-crop", "--scales", "paper"]);
    assert_eq!(paper["views"]["scales"], serde_json::json!([32, 36, 40]));
    // Each scale: dense (one view) and the 50 crops.
    assert_eq!(paper["views"]["per_image"], 3 * 51);
    assert_eq!(paper["per_class"].as_array().unwrap().len(), 3);
    let text = ok(bin()
        .args(["eval", "--checkpoint", a_s, "--multi-crop"])
        .output()
        .unwrap());
    assert!(
        text.contains("multi-crop") && text.contains("50 views an image") && text.contains("images/s"),
        "{text}"
    );
}

#[test]
fn predict_prepares_small_dataset_images_as_training_did() {
    let Some(mut py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // MNIST-format data: 28 x 28 grey, padded to 32 in training.
    let data = dir.join("mnist");
    std::fs::create_dir_all(&data).unwrap();
    let images = |n: usize, seed: usize| vggtrain::data::Images {
        c: 1,
        h: 28,
        w: 28,
        pixels: (0..n * 784)
            .map(|i| ((i * 7 + seed * 13 + i / 97) % 251) as u8)
            .collect(),
        labels: (0..n).map(|i| (i % 10) as i64).collect(),
    };
    for (stem, n) in [("train", 80), ("t10k", 10)] {
        vggtrain::data::idx::write_pair(
            &images(n, n),
            &data.join(format!("{stem}-images-idx3-ubyte")),
            &data.join(format!("{stem}-labels-idx1-ubyte")),
        )
        .unwrap();
    }
    let mut c = bin();
    c.args(
        "train --no-tui --dataset mnist --model A --width 8 --batch-size 16 --epochs 1 --device cpu --name m"
            .split(' '),
    )
    .args(["--set", "data.val-size=16"])
    .arg("--data-dir")
    .arg(&data)
    .arg("--runs-dir")
    .arg(dir.join("runs"));
    ok(c.output().unwrap());
    let ckpt = dir.join("runs/m/checkpoints/ckpt-0000000004.safetensors");
    let grey = dir.join("grey.png");
    image::GrayImage::from_fn(28, 28, |x, y| image::Luma([((x * 9 + y * 5) % 256) as u8]))
        .save(&grey)
        .unwrap();
    let want = reference(
        &mut py,
        dir,
        &serde_json::json!([reference_case(&[&ckpt], &grey, "--scales 32 --flip")]),
    );
    close(
        &predict(&[&ckpt], &grey, &["--flip"]),
        &want[0],
        "a grey 28 x 28 image, padded",
    );
    // Any size and colour: brought to 28 x 28 grey first.
    let colour = dir.join("colour.png");
    png(&colour, 90, 70, 3);
    let p = predict(&[&ckpt], &colour, &[]);
    assert_eq!(p.len(), 10);
    assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-5);
}
