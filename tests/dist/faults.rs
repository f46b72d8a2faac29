//! A rank that dies or hangs ends the run within the timeout, with an
//! error, and the run resumes from its newest checkpoint.
use super::{common, ends_within, metrics, mid_epoch, rank_pids, rank_process, tiny};
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Two ranks of a long run, started as a launcher would (the run's
/// temporary folder lives as long as `_tmp`: keep it bound).
struct TwoRanks {
    _tmp: tempfile::TempDir,
    run: PathBuf,
    rank0: Child,
    rank1: Child,
}

/// Starts 2 ranks of a long run with the timeout, and waits until they are
/// into its second epoch; None without the data (see `common::have_data`).
fn two_ranks_mid_epoch(timeout: &str) -> Option<TwoRanks> {
    if !common::have_data() {
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let port = super::free_port();
    let start = |rank| {
        rank_process(rank, 2, port)
            .args(tiny(tmp.path(), "faults", 16, 200, 1024))
            .args(["--dist-timeout", timeout])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (rank0, rank1) = (start(0), start(1));
    let run = tmp.path().join("faults");
    mid_epoch(&run);
    Some(TwoRanks {
        _tmp: tmp,
        run,
        rank0,
        rank1,
    })
}

#[test]
fn a_killed_rank_ends_the_run_with_an_error_and_the_run_resumes() {
    let Some(TwoRanks {
        run,
        mut rank0,
        mut rank1,
        _tmp,
    }) = two_ranks_mid_epoch("60")
    else {
        return;
    };
    unsafe { libc::kill(rank1.id() as i32, libc::SIGKILL) };
    let _ = rank1.wait();
    let (code, err) = ends_within(&mut rank0, 60, "rank 0");
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("rank 0 of 2"), "the error names the rank: {err}");
    // Resumed on 2 ranks, it goes on from the newest checkpoint.
    let before = metrics(&run).len();
    let port = super::free_port();
    let resume = |rank| {
        rank_process(rank, 2, port)
            .args(["train", "--no-tui", "--resume"])
            .arg(&run)
            .args(["--set", "train.epochs=2"])
            .output()
            .unwrap()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| resume(0));
        let b = s.spawn(|| resume(1));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert!(a.status.success(), "{}", common::text(&a));
    assert!(b.status.success(), "{}", common::text(&b));
    let after = metrics(&run).split_off(before);
    let started = after.iter().find(|e| e["event"] == "started").unwrap();
    assert!(started["resumed_from"].is_string(), "{started}");
    assert_eq!(started["world"], 2);
    assert!(after.iter().any(|e| e["event"] == "finished"));
}

#[test]
fn a_hung_rank_ends_the_run_within_the_timeout() {
    let Some(TwoRanks {
        run: _,
        mut rank0,
        mut rank1,
        _tmp,
    }) = two_ranks_mid_epoch("5")
    else {
        return;
    };
    unsafe { libc::kill(rank1.id() as i32, libc::SIGSTOP) };
    let (code, err) = ends_within(&mut rank0, 60, "rank 0");
    let _ = rank1.kill();
    let _ = rank1.wait();
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("rank 0 of 2 failed: rank 1 did not answer within 5s (--dist-timeout)"),
        "the error says which rank timed out: {err}"
    );
}

/// Two ranks of a run on `args` with `--dist-timeout 5`, rank 0 under strace
/// with its fsyncs changed by `inject` (strace's `-e inject=fsync:...`) and
/// written to `trace`; None without strace or the data (see `common::require`).
fn ranks_with_rank0s_disk(inject: &str, trace: &std::path::Path, args: &[String]) -> Option<[Child; 2]> {
    let strace = Command::new("strace").arg("-V").output().is_ok();
    if !common::have_data() || !common::require(strace, "strace", "apt-get install strace") {
        return None;
    }
    let port = super::free_port();
    let mut rank0 = Command::new("strace");
    rank0
        .args(["-f", "-qq", "-e", "trace=fsync", "-e"])
        .arg(format!("inject=fsync:{inject}"))
        .arg("-o")
        .arg(trace)
        .arg(env!("CARGO_BIN_EXE_vggtrain"));
    for (k, v) in rank_process(0, 2, port).get_envs() {
        rank0.env(k, v.unwrap());
    }
    Some([rank0, rank_process(1, 2, port)].map(|mut c| {
        c.args(args)
            .args(["--dist-timeout", "5"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }))
}

/// Rank 0's disk takes longer than `--dist-timeout` for every fsync
/// (strace delays each one, as a slow or busy disk would): while rank 0
/// opens the run, writes its records and saves its checkpoints (one asked
/// for by SIGUSR1 mid-epoch among them), rank 1 waits on its own, longer
/// bound, and the run ends on both as on a fast disk.
#[test]
fn a_slow_disk_on_rank_0_is_no_lost_peer() {
    let tmp = tempfile::tempdir().unwrap();
    let delay = 6;
    let trace = tmp.path().join("fsync.trace");
    let args = tiny(tmp.path(), "slow", 16, 2, 256);
    let started = Instant::now();
    let Some([mut rank0, mut rank1]) = ranks_with_rank0s_disk(&format!("delay_enter={delay}s"), &trace, &args) else {
        return;
    };
    let run = tmp.path().join("slow");
    common::wait_until("the first checkpoint", 300, || {
        metrics(&run).iter().any(|e| e["event"] == "checkpoint-saved")
    });
    let traced = rank_pids(rank0.id())[0];
    unsafe { libc::kill(traced, libc::SIGUSR1) };
    let (code1, err1) = ends_within(&mut rank1, 300, "rank 1");
    let (code0, err0) = ends_within(&mut rank0, 60, "rank 0");
    assert_eq!((code0, code1), (0, 0), "rank 0: {err0}\nrank 1: {err1}");
    let delayed = std::fs::read_to_string(&trace).unwrap().matches("(DELAYED)").count();
    assert!(delayed >= 6, "{delayed} fsyncs delayed");
    assert!(started.elapsed() > Duration::from_secs(delayed as u64 * delay));
    let events = metrics(&run);
    let reasons: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "checkpoint-saved")
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert!(reasons.contains(&"key"), "the checkpoint asked for: {reasons:?}");
    assert_eq!(events.last().unwrap()["event"], "finished");
}

/// Rank 0's disk is full (every fsync fails with ENOSPC): its epoch
/// checkpoints fail with a warning, the run's last one, which must be
/// written, fails the run, and rank 1 stops with it, saying why.
#[test]
fn a_full_disk_on_rank_0_stops_every_rank_at_a_save_that_must_be_written() {
    let tmp = tempfile::tempdir().unwrap();
    let trace = tmp.path().join("fsync.trace");
    let mut args = tiny(tmp.path(), "full", 16, 1, 64);
    args.extend(["--set".into(), "run.checkpoint-every=0".into()]);
    let Some([mut rank0, mut rank1]) = ranks_with_rank0s_disk("error=ENOSPC", &trace, &args) else {
        return;
    };
    let (code1, err1) = ends_within(&mut rank1, 120, "rank 1");
    let (code0, err0) = ends_within(&mut rank0, 60, "rank 0");
    assert_ne!(code0, 0, "{err0}");
    assert!(
        err0.contains("No space left on device"),
        "rank 0 says what failed: {err0}"
    );
    assert_ne!(code1, 0, "{err1}");
    assert!(err1.contains("rank 0 could not write the run's files"), "{err1}");
}

#[test]
fn a_signal_to_any_rank_stops_every_rank_and_rank_zero_saves() {
    let Some(TwoRanks {
        run,
        mut rank0,
        mut rank1,
        _tmp,
    }) = two_ranks_mid_epoch("60")
    else {
        return;
    };
    unsafe { libc::kill(rank1.id() as i32, libc::SIGTERM) };
    let (code, err) = ends_within(&mut rank0, 60, "rank 0");
    assert_eq!(code, 0, "rank 0 stops as asked: {err}");
    assert_eq!(rank1.wait().unwrap().code(), Some(143), "rank 1 ends as SIGTERM's");
    let events = metrics(&run);
    let saved = events.iter().rev().find(|e| e["event"] == "checkpoint-saved").unwrap();
    assert_eq!(saved["reason"], "stop", "{saved}");
    assert!(events.last().unwrap()["reason"]
        .as_str()
        .is_some_and(|r| r.contains("stopped")));
}

#[test]
fn the_launcher_passes_sigterm_on_and_every_rank_stops_once() {
    if !common::have_data() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("faults");
    let mut launcher = common::bin()
        .args(tiny(tmp.path(), "faults", 16, 200, 1024))
        .args(["--nproc-per-node", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    mid_epoch(&run);
    // To the launcher's process group, as SLURM or a service manager does:
    // each rank has it twice (directly, and passed on), and stops once.
    unsafe { libc::kill(launcher.id() as i32, libc::SIGTERM) };
    for pid in rank_pids(launcher.id()) {
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let (code, err) = ends_within(&mut launcher, 120, "the launcher");
    assert_eq!(code, 143, "{err}");
    assert!(
        !err.contains("quitting now"),
        "an echo taken for a second signal: {err}"
    );
    let events = metrics(&run);
    let saved = events.iter().rev().find(|e| e["event"] == "checkpoint-saved").unwrap();
    assert_eq!(saved["reason"], "stop", "{saved}");
    assert!(events.last().unwrap()["event"] == "finished");
}

/// Every process below `pid` (the children of each of its threads, and theirs).
fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            out.push(child);
            out.extend(descendants(child));
        }
    }
    out
}

#[test]
fn torchrun_restarts_a_lost_rank_and_the_run_resumes() {
    if !common::have_data() {
        return;
    }
    let Some(mut python) = common::python() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("faults");
    let mut torchrun = python
        .args(["-m", "torch.distributed.run", "--no-python", "--nproc-per-node", "2"])
        .args(["--max-restarts", "1", "--master-port", &super::free_port().to_string()])
        .arg(env!("CARGO_BIN_EXE_vggtrain"))
        .args(tiny(tmp.path(), "faults", 16, 3, 1024))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    mid_epoch(&run);
    // A rank: one of torchrun's descendants running the binary (not
    // another test's).
    let pid = descendants(torchrun.id() as i32)
        .into_iter()
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).starts_with(env!("CARGO_BIN_EXE_vggtrain")))
        })
        .expect("a rank among torchrun's processes");
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let status = torchrun.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(torchrun.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{err}");
    let events = metrics(&run);
    let starts: Vec<_> = events.iter().filter(|e| e["event"] == "started").collect();
    assert_eq!(starts.len(), 2, "a start, and the restart's");
    assert!(starts[1]["resumed_from"].is_string(), "{}", starts[1]);
    assert!(events.last().unwrap()["event"] == "finished");
}
