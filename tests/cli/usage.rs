//! info, models, a headless run with its run directory, export, eval,
//! runs, bench.
use super::*;

#[test]
fn info_reports_libtorch_cuda_and_datasets() {
    let o = run(&["info"]);
    assert!(o.status.success());
    let t = text(&o);
    assert!(t.contains("libtorch 2.11.0"), "{t}");
    assert!(t.contains("CUDA available:"), "{t}");
    assert!(t.contains("MKL-DNN:") && t.contains("CPU threads:"), "{t}");
    if have_data() {
        assert!(t.contains(&format!("fashion-mnist  found in {FASHION}")), "{t}");
    }
}

#[test]
fn models_prints_torchvision_parameter_counts() {
    let o = run(&["models"]);
    assert!(o.status.success());
    let t = text(&o);
    for (name, params) in [("A ", "132,863,336"), ("D ", "138,357,544"), ("E ", "143,667,240")] {
        assert!(
            t.lines().any(|l| l.starts_with(name) && l.contains(params)),
            "{name} {params}\n{t}"
        );
    }
}

#[test]
fn headless_run_writes_a_complete_run_dir_and_exports_and_evaluates() {
    if !have_data() {
        return;
    }
    let runs = tempfile::tempdir().unwrap();
    // Inside a single-task SLURM job (no MASTER_ADDR): one process, as ever.
    let slurm = [("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1"), ("SLURM_LOCALID", "0")];
    let o = bin().args(tiny(runs.path(), "h", "2")).envs(slurm).output().unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let dir = runs.path().join("h");
    assert!(t.contains(&format!("run {}", dir.display())), "{t}");
    assert!(t.contains("VGG A (11 layers)") && t.contains("cpu x"), "{t}");
    assert!(
        t.contains("epoch 1 | train loss") && t.contains("epoch 2 | train loss"),
        "{t}"
    );
    assert!(t.contains("finished (2 epochs done) | test top-1"), "{t}");
    for f in ["config.toml", "metrics.jsonl", "train.log"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    assert!(!dir.join("pid").exists());
    let events = metrics(&dir);
    let kinds: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"started"));
    assert_eq!(kinds.last(), Some(&"finished"));
    assert_eq!(kinds.iter().filter(|k| **k == "epoch").count(), 2);
    assert!(kinds.contains(&"step") && kinds.contains(&"checkpoint-saved"));
    let cfg = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    assert!(cfg.contains("config = \"A\"") && cfg.contains("width = 8"), "{cfg}");

    // export: weights only, torchvision names.
    let ckpt = checkpoints(&dir)
        .into_iter()
        .rfind(|p| p.to_string_lossy().contains("ckpt-"))
        .unwrap();
    let out = runs.path().join("model.safetensors");
    let o = run(&[
        "export",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let names: Vec<String> = tch::Tensor::read_safetensors(&out)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(names.contains(&"features.0.weight".to_string()) && names.contains(&"classifier.6.bias".to_string()));
    assert!(!names.iter().any(|n| n.starts_with("momentum.")), "{names:?}");

    // eval with the paper's protocol options.
    let o = run(&["eval", "--checkpoint", ckpt.to_str().unwrap(), "--flip", "--dense"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("on 256 test images") && t.contains("top-1") && t.contains("Ankle boot"),
        "{t}"
    );

    // runs lists it.
    let o = run(&["runs", "--runs-dir", runs.path().to_str().unwrap()]);
    let t = text(&o);
    assert!(
        t.lines()
            .any(|l| l.starts_with("h ") && l.contains("finished") && l.contains(" 2 ")),
        "{t}"
    );

    // an existing run is never overwritten.
    let o = bin().args(tiny(runs.path(), "h", "1")).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("already exists"), "{}", text(&o));
}

#[test]
fn bench_reports_every_measure_as_json() {
    // A narrow A at 32 px, two timed steps, on the data at `flag DIR`.
    let bench = |flag: &str, dir: &str| {
        let args = "bench --model A --width 8 --input 32 --batch 4 --steps 2 --warmup 1 --scale 40 --device cpu --json";
        let mut a: Vec<&str> = args.split(' ').collect();
        a.extend([flag, dir]);
        run(&a)
    };
    let o = bench("--folder", concat!(env!("CARGO_MANIFEST_DIR"), "/tests/photos"));
    assert!(o.status.success(), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let f = &r["folder"];
    assert_eq!((f["images"].as_u64(), f["scale"].as_u64()), (Some(8), Some(40)), "{f}");
    let threads: Vec<u64> = f["threads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["threads"].as_u64().unwrap())
        .collect();
    let cores = std::thread::available_parallelism().unwrap().get() as u64;
    assert_eq!((threads[0], threads.last().copied()), (1, Some(cores)), "{f}");
    for t in f["threads"].as_array().unwrap() {
        assert!(
            t["images_per_sec"].as_f64().unwrap() > 0.0 && t["mb_per_sec"].as_f64().unwrap() > 0.0,
            "{t}"
        );
    }
    // data.workers' default on the CPU: one decoding thread per 8 cores.
    assert_eq!(f["workers"].as_u64(), Some((cores / 8).max(1)));
    assert!(f["end_to_end_images_per_sec"].as_f64().unwrap() > 0.0, "{f}");
    for key in [
        "compute_images_per_sec",
        "data_memory_images_per_sec",
        "end_to_end_images_per_sec",
        "train_tflops",
        "peak_host_memory_mb",
    ] {
        assert!(r[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {r}");
    }
    assert_eq!(r["model"], "VGG A (11 layers) 1/8 width");
    assert_eq!(r["channels_last"], true);
    assert_eq!(f["format"], "folder");

    // The same photographs packed as tar shards, through `--shards`.
    let tmp = tempfile::tempdir().unwrap();
    let (packed, shards) = (tmp.path().join("photos"), tmp.path().join("shards"));
    common::photo_folder(&packed, [1, 1]);
    let o = run(&[
        "pack",
        "--data-dir",
        packed.to_str().unwrap(),
        "--out",
        shards.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = bench("--shards", shards.to_str().unwrap());
    assert!(o.status.success(), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (r["folder"]["format"].as_str(), r["folder"]["images"].as_u64()),
        (Some("shards"), Some(8)),
        "{r}"
    );
    assert!(r["folder"]["end_to_end_images_per_sec"].as_f64().unwrap() > 0.0, "{r}");
}

#[test]
fn bench_on_a_folder_it_cannot_use_says_what_and_where() {
    let tmp = tempfile::tempdir().unwrap();
    let args = |dir: &std::path::Path, scale: &str| {
        let mut a: Vec<String> =
            "bench --model A --width 8 --input 32 --batch 4 --steps 1 --warmup 0 --device cpu --folder"
                .split(' ')
                .map(str::to_owned)
                .collect();
        a.extend([dir.display().to_string(), "--scale".into(), scale.into()]);
        a
    };
    let missing = tmp.path().join("nothing-here");
    let o = run(&args(&missing, "40").iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        !o.status.success() && text(&o).contains(&missing.display().to_string()),
        "{}",
        text(&o)
    );
    let photos = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/photos");
    let o = run(&args(&photos, "24").iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        !o.status.success() && text(&o).contains("--scale 24 is below the crop"),
        "{}",
        text(&o)
    );
}

#[test]
fn a_redirected_run_writes_plain_lines_never_carriage_returns() {
    if !have_data() {
        return;
    }
    let runs = tempfile::tempdir().unwrap();
    for (name, extra) in [("auto", None), ("forced", Some("bar"))] {
        let mut args = tiny(runs.path(), name, "1");
        if let Some(p) = extra {
            args.extend(["--progress".into(), p.into()]);
        }
        let o = bin().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        assert!(!err.contains('\r'), "{name}: a carriage return in a log:\n{err:?}");
        assert!(
            err.contains("preparing the run") && err.contains("epoch 1/1 step 1/8 |"),
            "{name}: {err}"
        );
    }
    // none: no step lines, the rest stays.
    let mut args = tiny(runs.path(), "none", "1");
    args.extend(["--progress".into(), "none".into()]);
    let err = String::from_utf8_lossy(&bin().args(&args).output().unwrap().stderr).into_owned();
    assert!(
        !err.contains("step 1/8") && err.contains("epoch 1 | train loss"),
        "{err}"
    );
}

/// libtorch's warning and error lines ("[W... ] Warning: ...", a bare
/// "Warning:", Kineto's "ERROR:...").
fn warnings(t: &str) -> Vec<&str> {
    t.lines()
        .filter(|l| l.contains("Warning:") || l.starts_with("[W") || l.starts_with("ERROR:"))
        .collect()
}

#[test]
fn fp16_runs_with_its_loss_scale_saved_and_no_libtorch_warning() {
    if !have_data() {
        return;
    }
    let runs = tempfile::tempdir().unwrap();
    let mut args = tiny(runs.path(), "fp16", "1");
    args.extend(["--set".into(), "train.precision=\"fp16\"".into()]);
    let o = bin().args(&args).output().unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(warnings(&t).is_empty(), "libtorch warned: {t}");
    let dir = runs.path().join("fp16");
    let end = vggtrain::engine::checkpoint::newest(&dir).unwrap().path;
    let state = vggtrain::engine::checkpoint::load(&end).unwrap().state;
    let scale = state.loss_scale.expect("an fp16 checkpoint holds its loss scale");
    // On the CPU the arithmetic is fp32: no step overflows, the scale stays
    // and counts its clean steps.
    assert_eq!(
        (scale.scale, scale.growth),
        (65536.0, state.global_step as i64),
        "{state:?}"
    );
    assert_eq!(state.skipped_steps, 0);
    let epoch = metrics(&dir).into_iter().find(|e| e["event"] == "epoch").unwrap();
    assert_eq!(epoch["skipped_steps"], 0, "{epoch}");
}

#[test]
fn bench_trace_writes_a_chrome_trace_and_its_top_ops() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.json");
    let args = "bench --model A --width 8 --input 32 --batch 4 --steps 2 --warmup 1 --device cpu --trace";
    let mut a: Vec<&str> = args.split(' ').collect();
    a.push(trace.to_str().unwrap());
    let o = run(&a);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(warnings(&t).is_empty(), "libtorch warned: {t}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("top cpu ops (self time) by time"), "{out}");
    // The file is a Chrome trace whose ops are the step's: the forward's
    // convolutions, the fused SGD.
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
    let ops: Vec<&str> = v["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ph"] == "X" && e["cat"] == "cpu_op")
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    let count = |name: &str| ops.iter().filter(|o| **o == name).count();
    // A has 8 convolutions a step, two steps; one fused SGD call per
    // parameter group (weights decayed, biases decayed too here: one) a step.
    assert_eq!(count("aten::convolution"), 16, "{ops:?}");
    assert_eq!(count("aten::_fused_sgd_"), 2, "{ops:?}");
    // The table's rows are ops of the trace.
    let rows: Vec<&str> = out.lines().skip_while(|l| !l.contains("calls")).skip(1).collect();
    assert!(!rows.is_empty(), "{out}");
    for r in rows {
        let name = r.split_whitespace().skip(3).collect::<Vec<_>>().join(" ");
        assert!(ops.contains(&name.as_str()), "{name} is not in the trace");
    }
}
