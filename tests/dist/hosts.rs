//! Two machines in one: Linux network namespaces joined by a veth pair, on
//! a private /30 that lives only inside them (made and removed by each
//! test; root only, as CI runs). Rank 0's host in one, rank 1's in the
//! other, MASTER_ADDR the first's address; the run directory is on the
//! file system both share, as a cluster's is.
use super::{
    common, ends_within, max_difference, metrics, mid_epoch, newest_weights, rank_pids, tiny,
    training::same_as_one_process,
};
use std::{
    path::Path,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};
use vggtrain::engine::checkpoint;

/// Which /30 (10.77.N.0) and which names a new pair takes.
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The rendezvous port (any: each pair of namespaces has its own stack).
const PORT: &str = "29400";

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("runs ip (iproute2)");
    assert!(
        o.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
}

struct Hosts {
    ns: [String; 2],
    dev: [String; 2],
    addr: [String; 2],
}

impl Hosts {
    /// Two namespaces and their link; None where they cannot be made (not
    /// root, no iproute2: a failure under CI, see `common::require`).
    fn new() -> Option<Hosts> {
        let root = unsafe { libc::geteuid() } == 0;
        let tools = Command::new("ip").arg("-V").output().is_ok() && Command::new("tc").arg("-V").output().is_ok();
        if !common::require(
            root && tools,
            "root and iproute2 (ip, tc)",
            "run as root; apt-get install iproute2",
        ) {
            return None;
        }
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}x{n}", std::process::id() % 100_000);
        let hosts = Hosts {
            ns: [format!("vgg{id}a"), format!("vgg{id}b")],
            dev: [format!("vg{id}a"), format!("vg{id}b")],
            addr: [format!("10.77.{n}.1"), format!("10.77.{n}.2")],
        };
        for ns in &hosts.ns {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let [a, b] = &hosts.dev;
        ip(&[
            "link",
            "add",
            a,
            "netns",
            &hosts.ns[0],
            "type",
            "veth",
            "peer",
            "name",
            b,
            "netns",
            &hosts.ns[1],
        ]);
        for i in 0..2 {
            ip(&[
                "-n",
                &hosts.ns[i],
                "addr",
                "add",
                &format!("{}/30", hosts.addr[i]),
                "dev",
                &hosts.dev[i],
            ]);
            ip(&["-n", &hosts.ns[i], "link", "set", &hosts.dev[i], "up"]);
        }
        Some(hosts)
    }

    /// `program` on host `i`, with `like`'s environment.
    fn command(&self, i: usize, like: &Command) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns[i]]).arg(like.get_program());
        for (k, v) in like.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c
    }

    /// vggtrain on host `i`, as node `i` of the built-in launcher.
    fn node(&self, i: usize, args: &[String]) -> Command {
        let mut c = self.command(i, &common::bin());
        c.args(args)
            .args(["--nnodes", "2", "--node-rank", &i.to_string()])
            .args(["--master-addr", &self.addr[0], "--master-port", PORT]);
        c
    }

    /// Both nodes of `args`, to their ends; node 0's output (node 1's must
    /// succeed).
    fn both(&self, args: &[String], node: impl Fn(usize, &[String]) -> Command) -> Output {
        let one = node(1, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let zero = node(0, args).output().unwrap();
        let one = one.wait_with_output().unwrap();
        assert!(one.status.success(), "node 1: {}", common::text(&one));
        zero
    }

    /// Both ends of the link send at most `rate` (tc's token bucket; this
    /// kernel has no netem).
    fn limit(&self, rate: &str) {
        for i in 0..2 {
            let o = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &self.ns[i],
                    "tc",
                    "qdisc",
                    "add",
                    "dev",
                    &self.dev[i],
                    "root",
                    "tbf",
                ])
                .args(["rate", rate, "burst", "64kb", "latency", "50ms"])
                .output()
                .unwrap();
            assert!(o.status.success(), "tc: {}", String::from_utf8_lossy(&o.stderr));
        }
    }

    /// The link up or down, as a cable pulled out and put back.
    fn link(&self, up: bool) {
        ip(&[
            "-n",
            &self.ns[0],
            "link",
            "set",
            &self.dev[0],
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // A namespace takes its end of the pair with it; the pair goes.
        for ns in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

#[test]
fn two_hosts_launched_by_vggtrain_compute_what_one_process_does() {
    if !common::have_data() {
        return;
    }
    let Some(hosts) = Hosts::new() else { return };
    let tmp = tempfile::tempdir().unwrap();
    same_as_one_process(tmp.path(), "hosts", |args| hosts.both(&args, |i, a| hosts.node(i, a)));
}

#[test]
fn two_hosts_launched_by_torchrun_compute_what_one_process_does() {
    if !common::have_data() {
        return;
    }
    let Some(python) = common::python() else {
        return;
    };
    let Some(hosts) = Hosts::new() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let torchrun = |i: usize, args: &[String]| {
        let mut c = hosts.command(i, &python);
        c.args(python.get_args())
            .args(["-m", "torch.distributed.run", "--no-python", "--nproc-per-node", "1"])
            .args(["--nnodes", "2", "--node-rank", &i.to_string()])
            .args(["--master-addr", &hosts.addr[0], "--master-port", PORT])
            .arg(env!("CARGO_BIN_EXE_vggtrain"))
            .args(args);
        c
    };
    same_as_one_process(tmp.path(), "torchrun-hosts", |args| hosts.both(&args, torchrun));
}

/// Both nodes of a long run (`--dist-timeout 5`), into its second epoch.
fn two_nodes_mid_epoch(hosts: &Hosts, runs: &Path) -> [Child; 2] {
    let args = tiny(runs, "faults", 16, 200, 1024);
    let start = |i| {
        hosts
            .node(i, &args)
            .args(["--dist-timeout", "5"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let nodes = [start(0), start(1)];
    mid_epoch(&runs.join("faults"));
    nodes
}

/// Node `i` lost its peer: it ended within the timeout (5 s) and 15 s to
/// spare, non-zero, naming the peer and what happened to it (`how`: "is
/// gone", "did not answer within 5s"), and the command that resumes.
fn lost_its_peer(i: usize, node: &mut Child, run: &Path, how: &str) {
    let (code, err) = ends_within(node, 5 + 15, &format!("node {i}"));
    assert_ne!(code, 0, "node {i}: {err}");
    assert!(
        err.contains(&format!("rank {i} of 2 failed: rank {} {how}", 1 - i)),
        "node {i} names the peer it lost: {err}"
    );
    assert!(
        err.contains(&format!("vggtrain train --resume {}", run.display())),
        "node {i} says how to resume: {err}"
    );
}

/// The run's newest checkpoint is intact, and both hosts resume it to 3
/// epochs: the weights of two ranks that never stopped (on one host: the
/// transport changes nothing).
fn both_resume_to_an_uninterrupted_runs_weights(hosts: &Hosts, runs: &Path) {
    let run = runs.join("faults");
    let (newest, _) = newest_weights(&run);
    assert!(checkpoint::load(&newest).is_ok(), "the newest checkpoint is intact");
    let done = metrics(&run).iter().filter(|e| e["event"] == "epoch").count();
    assert!(done < 3, "the fault came after epoch 3: {done} epochs");
    let resume: Vec<String> = ["train", "--no-tui", "--resume", &run.display().to_string()]
        .into_iter()
        .map(str::to_owned)
        .chain(["--set".to_owned(), "train.epochs=3".to_owned()])
        .collect();
    common::ok(hosts.both(&resume, |i, a| hosts.node(i, a)));
    let straight = tiny(runs, "straight", 16, 3, 1024);
    common::ok(
        common::bin()
            .args(straight)
            .args(["--nproc-per-node", "2"])
            .output()
            .unwrap(),
    );
    let (a_path, a) = newest_weights(&runs.join("straight"));
    let (b_path, b) = newest_weights(&run);
    assert_eq!(a_path.file_name(), b_path.file_name(), "the same global step");
    let diff = max_difference(&a, &b);
    assert!(
        diff < 1e-6,
        "the resumed two-host run differs from an uninterrupted one by {diff}"
    );
}

#[test]
fn a_cut_link_stops_both_hosts_and_both_resume_to_an_uninterrupted_runs_weights() {
    if !common::have_data() {
        return;
    }
    let Some(hosts) = Hosts::new() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = two_nodes_mid_epoch(&hosts, tmp.path());
    hosts.link(false);
    for (i, node) in nodes.iter_mut().enumerate() {
        lost_its_peer(i, node, &tmp.path().join("faults"), "did not answer within 5s");
    }
    hosts.link(true);
    both_resume_to_an_uninterrupted_runs_weights(&hosts, tmp.path());
}

#[test]
fn a_host_whose_processes_are_killed_stops_the_other_and_both_resume() {
    if !common::have_data() {
        return;
    }
    let Some(hosts) = Hosts::new() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let [mut zero, mut one] = two_nodes_mid_epoch(&hosts, tmp.path());
    // Node 1's launcher and its rank, as a machine that loses power.
    for pid in rank_pids(one.id()) {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let _ = one.kill();
    let _ = one.wait();
    lost_its_peer(0, &mut zero, &tmp.path().join("faults"), "is gone");
    both_resume_to_an_uninterrupted_runs_weights(&hosts, tmp.path());
}

#[test]
fn a_slow_link_and_a_peer_stalled_for_less_than_the_timeout_only_slow_the_run() {
    if !common::have_data() {
        return;
    }
    let Some(hosts) = Hosts::new() else { return };
    hosts.limit("200mbit");
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("slow");
    let args = tiny(tmp.path(), "slow", 16, 3, 1024);
    let start = |i| {
        hosts
            .node(i, &args)
            .args(["--dist-timeout", "10"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (zero, one) = (start(0), start(1));
    common::wait_until("a checkpoint", 300, || {
        metrics(&run).iter().any(|e| e["event"] == "checkpoint-saved")
    });
    // Node 1's rank stops for 4 s (as a machine swapping, or a debugger).
    let rank = rank_pids(one.id())[0];
    unsafe { libc::kill(rank, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_secs(4));
    unsafe { libc::kill(rank, libc::SIGCONT) };
    for (i, node) in [zero, one].into_iter().enumerate() {
        let out = node.wait_with_output().unwrap();
        assert!(out.status.success(), "node {i}: {}", common::text(&out));
    }
    assert_eq!(metrics(&run).last().unwrap()["event"], "finished");
}

#[test]
fn bad_launch_flags_are_refused_before_any_rank_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path().to_str().unwrap();
    let busy = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port().to_string();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--nnodes", "2", "--node-rank", "2", "--master-addr", "127.0.0.1"],
            "--node-rank 2 with --nnodes 2",
        ),
        (&["--nnodes", "2", "--node-rank", "1"], "--nnodes 2 needs --master-addr"),
        (
            &["--nnodes", "2", "--master-addr", "no-such-host.invalid"],
            "--master-addr no-such-host.invalid: no such host",
        ),
        (
            &[
                "--nnodes",
                "2",
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                &busy_port,
            ],
            &format!("--master-port {busy_port}: cannot listen there"),
        ),
    ];
    for (flags, want) in cases {
        let o = common::bin()
            .args(["train", "--no-tui", "--device", "cpu", "--runs-dir", r])
            .args(flags.iter())
            .output()
            .unwrap();
        let t = common::text(&o);
        assert_eq!(o.status.code(), Some(2), "{flags:?}: {t}");
        assert!(t.contains(want), "{flags:?}: want {want:?} in {t}");
    }
    assert_eq!(std::fs::read_dir(r).unwrap().count(), 0, "a run directory was written");
}
