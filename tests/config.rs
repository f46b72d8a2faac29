//! The configuration: the presets in config/, the checks of `validate`, the
//! layering defaults < file < VGGTRAIN_* environment < flags, and
//! `vggtrain config show`.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};
use vggtrain::config::{Config, DatasetName, InitName, Normalize, PcaSource};
use vggtrain::model::Arch;

fn presets() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

fn preset(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config").join(name)
}

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

fn sets(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The error of layering `overrides` on the defaults, with its causes.
fn layered_err(overrides: &[&str]) -> String {
    match Config::layered(None, no_env(), &sets(overrides)) {
        Ok(_) => panic!("{overrides:?} was accepted"),
        Err(e) => format!("{e:#}"),
    }
}

// ---------------------------------------------------------------- presets

#[test]
fn every_preset_parses_and_validates() {
    let files = presets();
    assert!(files.len() >= 4, "{files:?}");
    for f in files {
        let config = Config::from_file(&f).unwrap_or_else(|e| panic!("{}: {e:#}", f.display()));
        config.validate().unwrap_or_else(|e| panic!("{}: {e:#}", f.display()));
        let layered = Config::layered(Some(&f), no_env(), &[]).unwrap_or_else(|e| panic!("{}: {e:#}", f.display()));
        assert_eq!(layered.config, config, "{}", f.display());
        // A preset states only what differs from the defaults (it may name
        // its model and dataset even when they are the defaults).
        let text = fs::read_to_string(&f).unwrap();
        let written: toml::Table = toml::from_str(&text).unwrap();
        let defaults: toml::Table = toml::from_str(&Config::default().to_toml()).unwrap();
        for (section, fields) in &written {
            for (key, value) in fields.as_table().unwrap() {
                if ["model.config", "data.dataset"].contains(&format!("{section}.{key}").as_str()) {
                    continue;
                }
                let effective: toml::Table = toml::from_str(&config.to_toml()).unwrap();
                let same = defaults.get(section).and_then(|s| s.get(key)) == effective[section].get(key);
                assert!(!same, "{}: {section}.{key} = {value} is the default", f.display());
            }
        }
    }
}

#[test]
fn paper_imagenet_is_the_papers_recipe_on_a_folder() {
    let c = Config::from_file(&preset("paper-imagenet.toml")).unwrap();
    assert_eq!(c.model.config, Arch::D);
    assert_eq!(c.model.width, 1);
    assert!(!c.model.batch_norm);
    assert_eq!(c.model.dropout, 0.5);
    assert_eq!(c.data.dataset, DatasetName::Folder);
    assert_eq!(c.data.dir, None);
    assert_eq!(c.data.scale, [256, 256]);
    assert_eq!(c.crop(), 224);
    assert!(c.data.flip);
    assert_eq!(c.data.pca_lighting, 0.1);
    assert_eq!(c.data.pca_source, PcaSource::Imagenet);
    assert_eq!(c.data.normalize, Normalize::Mean);
    let t = &c.train;
    assert_eq!((t.batch_size, t.lr, t.momentum, t.weight_decay), (256, 1e-2, 0.9, 5e-4));
    assert_eq!((t.lr_decay_factor, t.max_decays, t.epochs), (10.0, 3, 74));
    let spec = c.model_spec(3, (c.crop(), c.crop()), 1000);
    assert_eq!(spec.parameter_count(), 138_357_544);

    // With a data folder it is ready to run.
    let tmp = tempfile::tempdir().unwrap();
    let dir = format!("data.dir={:?}", tmp.path().display().to_string());
    let l = Config::layered(Some(&preset("paper-imagenet.toml")), no_env(), &[dir]).unwrap();
    assert_eq!(l.config.data.dir.as_deref(), Some(tmp.path()));
}

#[test]
fn paper_imagenet_jitter_takes_a_warm_start() {
    let file = preset("paper-imagenet-jitter.toml");
    let c = Config::from_file(&file).unwrap();
    assert_eq!(c.model.config, Arch::D);
    assert_eq!(c.data.dataset, DatasetName::Folder);
    assert_eq!(c.data.scale, [256, 512]);
    assert_eq!(c.data.test_scale, None); // Q = 384
    assert_eq!(c.crop(), 224);
    // The weights' path is machine-specific: given on the command line, and
    // checked to exist.
    assert_eq!(c.init.warm_start, None);
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.safetensors");
    fs::write(&a, b"weights").unwrap();
    let set = format!("init.warm-start={:?}", a.display().to_string());
    let l = Config::layered(Some(&file), no_env(), &[set]).unwrap();
    assert_eq!(l.config.init.warm_start.as_deref(), Some(a.as_path()));
    assert_eq!(l.sources["init.warm-start"], "flag");
    // A new run needs the file; a resume does not (its checkpoint holds the
    // weights), so the layered config itself is fine without it.
    let missing = tmp.path().join("none.safetensors");
    let set = format!("init.warm-start={:?}", missing.display().to_string());
    let l = Config::layered(Some(&file), no_env(), &[set]).unwrap();
    let err = format!("{:#}", l.config.validate_inputs().unwrap_err());
    assert!(
        err.contains("init.warm-start") && err.contains("none.safetensors"),
        "{err}"
    );
    assert!(err.contains("no such file"), "{err}");
}

#[test]
fn cifar10_vgg16_is_d_at_32_with_the_papers_optimiser() {
    let c = Config::from_file(&preset("cifar10-vgg16.toml")).unwrap();
    assert_eq!(c.model.config, Arch::D);
    assert_eq!(c.model.width, 1);
    assert_eq!(c.data.dataset, DatasetName::Cifar10);
    assert_eq!(c.crop(), 32);
    assert_eq!(c.init.scheme, InitName::Kaiming);
    let t = &c.train;
    assert_eq!((t.batch_size, t.lr, t.momentum, t.weight_decay), (256, 1e-2, 0.9, 5e-4));
    assert_eq!((t.lr_decay_factor, t.max_decays, t.patience), (10.0, 3, 2));
    assert_eq!(c.model_spec(3, (32, 32), 10).fc_inputs(), 512);
}

#[test]
fn fashion_mnist_quick_is_a_small_a() {
    let c = Config::from_file(&preset("fashion-mnist-quick.toml")).unwrap();
    assert_eq!((c.model.config, c.model.width), (Arch::A, 4));
    assert_eq!(c.data.dataset, DatasetName::FashionMnist);
    assert_eq!(c.data.pca_lighting, 0.0);
}

// ---------------------------------------------------------------- validation

#[test]
fn defaults_are_the_papers_recipe_and_valid() {
    let c = Config::default();
    c.validate().unwrap();
    assert_eq!(c.model.config, Arch::D);
    assert_eq!(c.model.dropout, 0.5);
    let t = &c.train;
    assert_eq!((t.batch_size, t.lr, t.momentum, t.weight_decay), (256, 1e-2, 0.9, 5e-4));
    assert_eq!((t.lr_decay_factor, t.max_decays, t.epochs), (10.0, 3, 74));
    assert_eq!(c.init.scheme, InitName::Kaiming);
    assert_eq!(c.data.scale, [256, 256]);
    assert_eq!(c.data.pca_lighting, 0.1);
    // Round trip through TOML.
    let back: Config = toml::from_str(&c.to_toml()).unwrap();
    assert_eq!(back, c);
}

#[test]
fn invalid_values_are_clear_errors() {
    let cases: [(&[&str], &[&str]); 23] = [
        // Non-finite and out-of-range numbers (TOML has inf and nan).
        (
            &["train.lr-decay-factor=inf"],
            &["train.lr-decay-factor = inf", "finite"],
        ),
        (&["train.weight-decay=nan"], &["train.weight-decay = NaN", "finite"]),
        (&["train.lr=inf"], &["train.lr = inf", "finite"]),
        (&["init.std=-inf"], &["init.std = -inf", "finite"]),
        (&["init.std=0"], &["init.std = 0", "positive"]),
        (
            &["train.step-events-per-sec=0"],
            &["train.step-events-per-sec = 0", "positive"],
        ),
        (&["train.threads=-2"], &["train.threads = -2", "negative"]),
        (&["data.val-size=0"], &["data.val-size = 0", "schedule"]),
        (
            &["data.dataset=\"folder\"", "data.test-scale=200"],
            &["data.test-scale = 200", "at least the crop size 224"],
        ),
        (&["data.test-scale=-5"], &["data.test-scale = -5", "crop size 32"]),
        (&["train.batch-size=0"], &["train.batch-size = 0", "at least 1"]),
        (&["train.lr=0"], &["train.lr = 0", "positive"]),
        (&["train.lr=-0.1"], &["train.lr = -0.1", "positive"]),
        (&["train.momentum=1"], &["train.momentum = 1"]),
        (&["train.epochs=0"], &["train.epochs = 0"]),
        (
            &["data.dataset=\"folder\"", "data.crop=300"],
            &["data.crop = 300", "smallest training scale S = 256"],
        ),
        (&["data.scale=[512, 256]"], &["data.scale = [512, 256]"]),
        (&["model.config=\"F\""], &["unknown model `F`", "A, A-LRN, B, C, D, E"]),
        (&["model.config=\"vgg17\""], &["unknown model `vgg17`", "vgg16"]),
        (
            &["data.dataset=\"imagenet\""],
            &["imagenet", "cifar10", "fashion-mnist", "folder"],
        ),
        (&["model.width=3"], &["model.width = 3", "does not divide"]),
        (&["train.device=\"gpu\""], &["train.device = `gpu`", "cuda:N"]),
        (
            &["data.dir=\"/nonexistent/vggtrain-data\""],
            &["data.dir = /nonexistent/vggtrain-data", "no such directory"],
        ),
    ];
    for (overrides, wanted) in cases {
        let err = layered_err(overrides);
        for w in wanted {
            assert!(err.contains(w), "{overrides:?}: `{err}` lacks `{w}`");
        }
    }
    // A crop that is not a multiple of 32 does not survive the pools.
    let err = layered_err(&["data.crop=48"]);
    assert!(err.contains("48x48") && err.contains("multiple of 32"), "{err}");
    // crop > S is fine for the small datasets (upscaling), not for folders.
    Config::layered(None, no_env(), &sets(&["data.dataset=\"cifar10\"", "data.crop=64"])).unwrap();
    Config::layered(None, no_env(), &sets(&["data.dataset=\"folder\"", "data.crop=256"])).unwrap();
    // A missing data dir is fine when it is to be downloaded into.
    Config::layered(
        None,
        no_env(),
        &sets(&["data.dir=\"/nonexistent/vggtrain-data\"", "data.download=true"]),
    )
    .unwrap();
    // Malformed overrides.
    let err = layered_err(&["train.lr"]);
    assert!(err.contains("expected section.key=value"), "{err}");
    let err = layered_err(&["training.lr=1"]);
    assert!(err.contains("unknown section `training`"), "{err}");
    let err = layered_err(&["train.lrr=1"]);
    assert!(err.contains("unknown field `lrr`"), "{err}");
    let err = layered_err(&["train.lr=\"fast\""]);
    assert!(err.contains("invalid configuration"), "{err}");
}

#[test]
fn validate_checks_a_config_built_in_code() {
    let mut c = Config::default();
    c.train.batch_size = 0;
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("train.batch-size = 0"), "{err}");
    let mut c = Config::default();
    c.init.from = Some(PathBuf::from("/nonexistent/weights.safetensors"));
    c.validate().unwrap();
    let err = c.validate_inputs().unwrap_err().to_string();
    assert!(err.contains("init.from = /nonexistent/weights.safetensors"), "{err}");
}

#[test]
fn unknown_key_in_a_file_names_the_key_and_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("typo.toml");
    fs::write(&f, "[train]\nlr = 0.1\nlearning-rate = 0.1\n").unwrap();
    for err in [
        format!("{:#}", Config::from_file(&f).unwrap_err()),
        format!("{:#}", Config::layered(Some(&f), no_env(), &[]).err().unwrap()),
    ] {
        assert!(err.contains("learning-rate"), "{err}");
        assert!(err.contains("typo.toml"), "{err}");
    }
    fs::write(&f, "[optimizer]\nlr = 0.1\n").unwrap();
    let err = format!("{:#}", Config::from_file(&f).unwrap_err());
    assert!(err.contains("optimizer") && err.contains("typo.toml"), "{err}");
    // A bad value names the file too.
    fs::write(&f, "[train]\nbatch-size = \"many\"\n").unwrap();
    let err = format!("{:#}", Config::from_file(&f).unwrap_err());
    assert!(err.contains("batch-size") && err.contains("typo.toml"), "{err}");
    // A missing file.
    let err = format!("{:#}", Config::from_file(&tmp.path().join("none.toml")).unwrap_err());
    assert!(err.contains("none.toml"), "{err}");
}

// ---------------------------------------------------------------- layering

fn write_file(dir: &Path) -> PathBuf {
    let f = dir.join("run.toml");
    fs::write(
        &f,
        "[model]\nconfig = \"vgg11\"\nwidth = 4\n\n[train]\nlr = 0.1\nbatch-size = 64\nepochs = 5\n",
    )
    .unwrap();
    f
}

#[test]
fn layering_defaults_file_env_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let f = write_file(tmp.path());
    let file_src = format!("file {}", f.display());
    let env = vec![
        ("VGGTRAIN_TRAIN_LR".to_string(), "0.5".to_string()),
        ("VGGTRAIN_TRAIN_BATCH_SIZE".to_string(), "32".to_string()),
        ("VGGTRAIN_DATA_SKIP_BAD_IMAGES".to_string(), "true".to_string()),
        ("PATH".to_string(), "/usr/bin".to_string()),
        ("VGGTRAIN_UNRELATED_THING".to_string(), "x".to_string()),
        // vggtrain's data folder, not a config key.
        ("VGGTRAIN_DATA_HOME".to_string(), "/tmp/somewhere".to_string()),
    ];

    // defaults < file
    let l = Config::layered(Some(&f), no_env(), &[]).unwrap();
    assert_eq!(l.config.model.config, Arch::A);
    assert_eq!((l.config.train.lr, l.config.train.batch_size), (0.1, 64));
    assert_eq!(l.config.train.momentum, 0.9);
    assert_eq!(l.sources["train.lr"], file_src);
    assert_eq!(l.sources["model.config"], file_src);
    assert_eq!(l.sources["train.momentum"], "default");

    // file < env
    let l = Config::layered(Some(&f), env.clone(), &[]).unwrap();
    assert_eq!((l.config.train.lr, l.config.train.batch_size), (0.5, 32));
    assert!(l.config.data.skip_bad_images);
    assert_eq!(l.config.train.epochs, 5);
    assert_eq!(l.sources["train.lr"], "env VGGTRAIN_TRAIN_LR");
    assert_eq!(l.sources["train.batch-size"], "env VGGTRAIN_TRAIN_BATCH_SIZE");
    assert_eq!(l.sources["data.skip-bad-images"], "env VGGTRAIN_DATA_SKIP_BAD_IMAGES");
    assert_eq!(l.sources["train.epochs"], file_src);

    // env < flags
    let l = Config::layered(Some(&f), env, &sets(&["train.lr=0.25", "data.scale=[256, 512]"])).unwrap();
    assert_eq!(l.config.train.lr, 0.25);
    assert_eq!(l.config.train.batch_size, 32);
    assert_eq!(l.config.data.scale, [256, 512]);
    assert_eq!(l.sources["train.lr"], "flag");
    assert_eq!(l.sources["data.scale"], "flag");

    // Every key of the effective configuration has a source.
    let full: toml::Table = toml::from_str(&l.config.to_toml()).unwrap();
    for (section, fields) in full {
        for key in fields.as_table().unwrap().keys() {
            assert!(l.sources.contains_key(&format!("{section}.{key}")), "{section}.{key}");
        }
    }
}

#[test]
fn set_overrides_win_over_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let f = write_file(tmp.path());
    let l = Config::layered(
        Some(&f),
        no_env(),
        &sets(&[
            "train.lr=0.25",
            "model.config=\"E\"",
            "model.width = 2",
            "train.epochs=1",
        ]),
    )
    .unwrap();
    assert_eq!(l.config.train.lr, 0.25);
    assert_eq!(l.config.model.config, Arch::E);
    assert_eq!(l.config.model.width, 2);
    assert_eq!(l.config.train.epochs, 1);
    assert_eq!(l.config.train.batch_size, 64);
    // The last of several overrides of one key wins; plain words are strings;
    // integers are accepted for float keys.
    let l = Config::layered(
        None,
        no_env(),
        &sets(&[
            "train.lr=0.5",
            "train.lr=1",
            "model.config=vgg19",
            "data.dataset=cifar100",
        ]),
    )
    .unwrap();
    assert_eq!(l.config.train.lr, 1.0);
    assert_eq!(l.config.model.config, Arch::E);
    assert_eq!(l.config.data.dataset, DatasetName::Cifar100);
}

// ---------------------------------------------------------------- the binary

#[test]
fn config_show_prints_values_and_sources() {
    let tmp = tempfile::tempdir().unwrap();
    let f = write_file(tmp.path());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vggtrain"));
    for (k, _) in std::env::vars() {
        if k.starts_with("VGGTRAIN_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .args(["config", "show", "--config"])
        .arg(&f)
        .args(["--set", "train.epochs=3"])
        .env("VGGTRAIN_TRAIN_LR", "0.5")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let line = |key: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no `{key}` line in\n{stdout}"))
    };
    let file_src = format!("# file {}", f.display());
    assert!(
        line("epochs").contains("= 3") && line("epochs").ends_with("# flag"),
        "{stdout}"
    );
    assert!(
        line("lr").contains("= 0.5") && line("lr").ends_with("# env VGGTRAIN_TRAIN_LR"),
        "{stdout}"
    );
    assert!(
        line("batch-size").contains("= 64") && line("batch-size").ends_with(&file_src),
        "{stdout}"
    );
    assert!(
        line("config").contains("\"A\"") && line("config").ends_with(&file_src),
        "{stdout}"
    );
    assert!(
        line("momentum").contains("= 0.9") && line("momentum").ends_with("# default"),
        "{stdout}"
    );
    for section in ["[model]", "[init]", "[data]", "[train]", "[run]"] {
        assert!(stdout.lines().any(|l| l == section), "{section} in\n{stdout}");
    }

    // A bad value exits non-zero with the message on stderr.
    let out = Command::new(env!("CARGO_BIN_EXE_vggtrain"))
        .args(["config", "show", "--set", "train.batch-size=0"])
        .env_remove("VGGTRAIN_TRAIN_BATCH_SIZE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("train.batch-size = 0"), "{stderr}");
}
