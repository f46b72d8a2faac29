//! Bad input: a clear error, exit 2, and nothing of the run written.
use super::*;

#[test]
fn bad_input_is_a_clear_error_with_exit_2() {
    let runs = tempfile::tempdir().unwrap();
    let r = runs.path().to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["train", "--no-tui", "--batch-size", "0", "--runs-dir", r],
            "train.batch-size = 0",
        ),
        (&["train", "--no-tui", "--lr=-1", "--runs-dir", r], "train.lr = -1"),
        (
            &["train", "--no-tui", "--model", "Z", "--runs-dir", r],
            "unknown model `Z`",
        ),
        (
            &["train", "--no-tui", "--width", "3", "--runs-dir", r],
            "model.width = 3",
        ),
        (
            &["train", "--no-tui", "--data-dir", "/nonexistent/x", "--runs-dir", r],
            "/nonexistent/x",
        ),
        (
            &["train", "--no-tui", "--set", "train.bogus=1", "--runs-dir", r],
            "bogus",
        ),
        (&["train", "--no-tui", "--resume", r], "no checkpoints"),
        (
            &["eval", "--checkpoint", "/nonexistent.safetensors"],
            "/nonexistent.safetensors",
        ),
    ];
    for (args, want) in cases {
        let o = run(args);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {t}");
        assert!(
            t.contains("error:") && t.contains(want),
            "{args:?}: want {want:?} in {t}"
        );
    }
    // A launcher's rank whose peers never come; a launch inside a launch; a
    // SLURM job of several tasks without MASTER_ADDR; a batch the ranks
    // cannot share; no time to wait.
    let rank1 = [
        ("RANK", "1"),
        ("WORLD_SIZE", "2"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "9"),
    ];
    type Env<'a> = &'a [(&'a str, &'a str)];
    let launched: &[(Env, &[&str], &str)] = &[
        (
            &rank1,
            &["--dist-timeout", "2"],
            "rank 1 of 2 could not join the process group at 127.0.0.1:9",
        ),
        (&rank1, &["--nproc-per-node", "2"], "leave it out"),
        (&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "4")], &[], "MASTER_ADDR"),
        (
            &[],
            &["--nproc-per-node", "2", "--batch-size", "7"],
            "a batch of 7 does not split between 2 ranks",
        ),
        (&[], &["--dist-timeout", "0"], "--dist-timeout"),
        // More ranks than GPUs (none here): refused before any rank starts.
        (
            &[],
            &["--nproc-per-node", "2", "--device", "cuda"],
            "--nproc-per-node 2 with train.device = cuda needs 2 GPUs, one a rank, but libtorch sees 0",
        ),
    ];
    for (vars, flags, want) in launched {
        let o = bin()
            .args(["train", "--no-tui", "--runs-dir", r])
            .args(flags.iter())
            .envs(vars.iter().copied())
            .output()
            .unwrap();
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{vars:?}: {t}");
        assert!(t.contains(want), "{vars:?}: want {want:?} in {t}");
    }
    assert_eq!(std::fs::read_dir(r).unwrap().count(), 0, "a run directory was written");
}

/// Runs `args`; asserts exit 2 with `want` in the error, and that the runs
/// directory is still empty.
fn refused(args: &[String], runs: &Path, want: &str) {
    let o = bin().args(args).output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{want}: {t}");
    assert!(t.contains("error:") && t.contains(want), "want {want:?} in {t}");
    let left: Vec<_> = std::fs::read_dir(runs).map(|d| d.collect()).unwrap_or_default();
    assert!(left.is_empty(), "{want}: the run directory was created: {left:?}");
}

#[test]
fn bad_data_and_weights_are_exit_2_before_the_run_directory_exists() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let data = tmp.path().join("mnist");
    write_mnist(&data, 64, 16);
    let images = data.join("train-images-idx3-ubyte");
    let good = std::fs::read(&images).unwrap();
    let args = mnist_run(&runs, &data, "bad", 1);

    std::fs::write(&images, &good[..good.len() - 100]).unwrap();
    refused(&args, &runs, "train-images-idx3-ubyte: truncated");
    let mut magic = good.clone();
    magic[3] = 0x01;
    std::fs::write(&images, &magic).unwrap();
    refused(&args, &runs, "wrong IDX magic");
    std::fs::write(&images, &good).unwrap();
    let labels = data.join("t10k-labels-idx1-ubyte");
    let mut bytes = std::fs::read(&labels).unwrap();
    bytes[8 + 5] = 12;
    std::fs::write(&labels, &bytes).unwrap();
    refused(&args, &runs, "label 12 of record 5");
    write_mnist(&data, 64, 16);

    // Weights of another shape (5 classes, not 10).
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let spec = vggtrain::model::ModelSpec {
        arch: vggtrain::model::Arch::A,
        width: 8,
        in_channels: 1,
        input: (32, 32),
        classes: 5,
        batch_norm: false,
        dropout: 0.5,
    };
    vggtrain::model::Vgg::new(&vs.root(), spec, vggtrain::model::InitScheme::Kaiming).unwrap();
    let weights = tmp.path().join("five.safetensors");
    let vars: Vec<(String, tch::Tensor)> = vs.variables().into_iter().collect();
    tch::Tensor::write_safetensors(&vars, &weights).unwrap();
    let mut with = args.clone();
    with.extend(["--set".into(), format!("init.from={:?}", weights.display().to_string())]);
    refused(&with, &runs, "but the model's classifier.6");

    // A warm start from a file that is not there.
    let mut with = args.clone();
    with.extend(["--set".into(), "init.warm-start=\"/nonexistent/a.safetensors\"".into()]);
    refused(
        &with,
        &runs,
        "init.warm-start = /nonexistent/a.safetensors: no such file",
    );

    // A folder dataset with an empty class folder.
    let folder = tmp.path().join("folder");
    std::fs::create_dir_all(folder.join("train/cat")).unwrap();
    std::fs::create_dir_all(folder.join("val/cat")).unwrap();
    let mut with = args.clone();
    with.extend([
        "--set".into(),
        "data.dataset=\"folder\"".into(),
        "--set".into(),
        format!("data.dir={:?}", folder.display().to_string()),
    ]);
    refused(&with, &runs, "empty class folder");

    // Numbers that are not finite, or out of range.
    for (set, want) in [
        (
            "train.lr-decay-factor=inf",
            "train.lr-decay-factor = inf: must be a finite number",
        ),
        ("data.val-size=0", "data.val-size = 0"),
    ] {
        let mut with = args.clone();
        with.extend(["--set".into(), set.into()]);
        refused(&with, &runs, want);
    }
}

#[test]
fn eval_refuses_dense_scales_the_network_cannot_take_and_export_takes_a_bare_name() {
    let tmp = tempfile::tempdir().unwrap();
    let (runs, data) = (tmp.path().join("runs"), tmp.path().join("mnist"));
    write_mnist(&data, 64, 16);
    let o = bin().args(mnist_run(&runs, &data, "e", 1)).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let ckpt = checkpoints(&runs.join("e"))
        .into_iter()
        .find(|p| p.to_string_lossy().contains("ckpt-"))
        .unwrap();
    let c = ckpt.to_str().unwrap();
    for scales in ["8", "16,32", "-32"] {
        let o = run(&["eval", "--checkpoint", c, "--dense", &format!("--scales={scales}")]);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{scales}: {t}");
        assert!(
            t.contains("dense evaluation needs Q >= 32") && !t.contains("panicked"),
            "{t}"
        );
    }
    let o = run(&["eval", "--checkpoint", c, "--dense", "--scales=32,64"]);
    assert!(o.status.success(), "{}", text(&o));

    let o = bin()
        .args(["export", "--checkpoint", c, "--out", "bare.safetensors"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let export = tmp.path().join("bare.safetensors");
    assert!(tch::Tensor::read_safetensors(&export).is_ok());

    // A flipped byte in the weights of an export or of a fused checkpoint
    // is damage for predict and eval, never a silent load.
    let sample = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/samples/bag.png");
    let sample = sample.to_str().unwrap();
    let o = run(&["predict", "--checkpoint", export.to_str().unwrap(), sample]);
    assert!(o.status.success(), "{}", text(&o));
    let damaged = tmp.path().join("damaged.safetensors");
    for (good, what) in [(export.as_path(), "export"), (ckpt.as_path(), "checkpoint")] {
        let mut bytes = std::fs::read(good).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 1;
        std::fs::write(&damaged, bytes).unwrap();
        let d = damaged.to_str().unwrap();
        for args in [
            vec!["predict", "--checkpoint", d, sample],
            vec!["eval", "--checkpoint", c, "--checkpoint", d],
        ] {
            let o = run(&args);
            let t = text(&o);
            assert!(!o.status.success(), "{what}: {args:?} loaded a damaged file: {t}");
            assert!(
                t.contains("damaged") && t.contains("damaged.safetensors"),
                "{what}: {t}"
            );
        }
    }
}

#[test]
fn attach_to_what_is_no_live_run_is_exit_2_and_removes_nothing() {
    if !have_data() {
        return;
    }
    let runs = tempfile::tempdir().unwrap();
    let o = bin().args(tiny(runs.path(), "ended", "1")).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let ended = runs.path().join("ended");
    let plain = runs.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    let attach = |dir: &Path| bin().arg("attach").arg(dir).output().unwrap();
    let cases = [
        (ended.clone(), "has no control socket: the run is not running"),
        (plain.clone(), "is not a vggtrain run directory (no config.toml)"),
        (runs.path().join("missing"), "is not a vggtrain run directory"),
    ];
    for (dir, want) in &cases {
        let o = attach(dir);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{}: {t}", dir.display());
        assert!(t.contains(want) && t.contains(&dir.display().to_string()), "{t}");
    }
    // A socket and pid left by a process that is gone: nobody answers; the
    // message says how to resume, and nothing is removed.
    let sock = ended.join("control.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    std::fs::write(ended.join("pid"), "999999\n").unwrap();
    let before = snapshot(&ended);
    let o = attach(&ended);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(
        t.contains("nobody answers") && t.contains("vggtrain train --resume"),
        "{t}"
    );
    assert!(sock.exists());
    assert_eq!(snapshot(&ended), before, "attach changed the run directory");
}
