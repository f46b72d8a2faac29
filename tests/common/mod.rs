//! Helpers shared by the integration tests that run the binary.
use std::{
    path::Path,
    time::{Duration, Instant},
};

pub const FASHION: &str = "/usr/share/datasets/fashion-mnist";

/// Whether Fashion-MNIST is installed; says so when it is not (the test
/// then passes without running).
pub fn have_data() -> bool {
    let ok = Path::new(FASHION).join("train-images-idx3-ubyte.gz").is_file();
    if !ok {
        eprintln!("skipped: Fashion-MNIST is not installed in {FASHION} (apt-get install dataset-fashion-mnist)");
    }
    ok
}

/// Polls `cond` until it holds; panics naming `what` after `secs`.
pub fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
