//! Helpers shared by the integration tests (each test crate compiles this
//! file and uses a part of it).
#![allow(dead_code)]
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

/// The vggtrain binary under test.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vggtrain"))
}

/// A command's standard output and error, together.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The standard output of a command that succeeded (a failure shows both).
pub fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub const FASHION: &str = "/usr/share/datasets/fashion-mnist";

/// Whether what a test needs is here. Locally a test without it says why
/// and passes without running; under CI (`CI=true`) a missing requirement is
/// a failure, so that no test passes by skipping.
pub fn require(present: bool, what: &str, install: &str) -> bool {
    if present {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "{what} is missing under CI: {install} (scripts/setup.sh --for-tests does it)"
    );
    eprintln!("skipped: {what} is missing ({install})");
    false
}

/// Whether Fashion-MNIST is installed (see `require`).
pub fn have_data() -> bool {
    require(
        Path::new(FASHION).join("train-images-idx3-ubyte.gz").is_file(),
        &format!("Fashion-MNIST in {FASHION}"),
        "apt-get install dataset-fashion-mnist",
    )
}

/// Polls `cond` until it holds; panics naming `what` after `secs`.
pub fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// python3 with the set-up's PyTorch (`.libtorch`) and the tests' Python
/// references (`.pyref`: torchvision, TensorBoard's reader), if they are
/// there (see `require`).
pub fn python() -> Option<Command> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let torch = std::fs::canonicalize(root.join(".libtorch")).ok();
    let present = torch.is_some()
        && root.join(".pyref/.complete").is_file()
        && Command::new("python3").arg("-V").output().is_ok();
    if !require(
        present,
        "the tests' Python references (.pyref)",
        "bash scripts/setup.sh --for-tests",
    ) {
        return None;
    }
    let mut c = Command::new("python3");
    c.env(
        "PYTHONPATH",
        format!("{}:{}", root.join(".pyref").display(), torch?.parent()?.display()),
    );
    Some(c)
}

/// root/{train,val}/<class>/NNN.jpg: `per_class` copies of each of the
/// eight real photographs in tests/photos.
pub fn photo_folder(root: &Path, per_class: [usize; 2]) {
    let photos = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/photos/train");
    for class in std::fs::read_dir(&photos).unwrap() {
        let class = class.unwrap().path();
        let name = class.file_name().unwrap().to_owned();
        for (split, n) in [("train", per_class[0]), ("val", per_class[1])] {
            let dir = root.join(split).join(&name);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                std::fs::copy(class.join("00000.jpg"), dir.join(format!("{i:03}.jpg"))).unwrap();
            }
        }
    }
}

/// Every file under `dir` and its bytes, sorted by path.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    out.sort();
    out
}
