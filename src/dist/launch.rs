//! `vggtrain train --nproc-per-node N [--nnodes M --node-rank R
//! --master-addr A --master-port P]`: the ranks of this machine, started by
//! vggtrain itself (no Python, no torchrun). Each rank is this program run
//! again with torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK,
//! LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT): on one machine a free
//! loopback port, on several node 0's address (each rank then takes its
//! GPU, or its share of the cores: `main`'s and
//! `bench`'s rank set-up). Rank 0 keeps the terminal
//! (its face), the others are quiet. The launcher passes SIGINT and SIGTERM
//! on to the ranks (a rank takes the copy of a signal that reached it
//! directly too as one stop: `headless::ECHO`) and SIGUSR1 to rank 0, and
//! returns when all are done: a rank that fails ends the others within the
//! group's timeout (and a rank still there past it is killed).
use crate::cli::LaunchArgs;
use crate::headless::{EXIT_SIGINT, EXIT_SIGTERM};
use anyhow::{anyhow, bail, Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use std::{
    ffi::OsString,
    net::{TcpListener, ToSocketAddrs},
    os::unix::process::ExitStatusExt,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// Extra time, past the group's timeout, a rank gets to end on its own
/// once another has failed.
const GRACE: Duration = Duration::from_secs(15);

/// The rendezvous port of a launch over several machines, as torchrun's.
const DEFAULT_PORT: u16 = 29500;
/// The launcher's flags, which its ranks leave out.
const FLAGS: [&str; 5] = [
    "--nproc-per-node",
    "--nnodes",
    "--node-rank",
    "--master-addr",
    "--master-port",
];

/// What this machine's launcher starts: the `nproc` ranks of node
/// `node_rank` of `nnodes`, meeting at `addr:port`.
#[derive(Clone, Debug, PartialEq)]
pub struct Launch {
    pub nproc: usize,
    pub nnodes: usize,
    pub node_rank: usize,
    pub addr: String,
    /// None: a free port of this machine (one node).
    pub port: Option<u16>,
}

impl Launch {
    /// The launch the flags ask for; None for one process alone.
    pub fn from_args(a: &LaunchArgs) -> Result<Option<Launch>> {
        let (nproc, nnodes, node_rank) = (
            a.nproc_per_node.unwrap_or(1) as usize,
            a.nnodes as usize,
            a.node_rank as usize,
        );
        if node_rank >= nnodes {
            bail!(
                "--node-rank {node_rank} with --nnodes {nnodes}: a machine's rank must be below --nnodes (0 to {})",
                nnodes - 1
            );
        }
        if nproc * nnodes == 1 {
            return Ok(None);
        }
        let addr = match (&a.master_addr, nnodes) {
            (Some(addr), _) => addr.clone(),
            (None, 1) => "127.0.0.1".into(),
            (None, _) => bail!("--nnodes {nnodes} needs --master-addr: node 0's address, which every machine reaches"),
        };
        let port = a.master_port.or((nnodes > 1).then_some(DEFAULT_PORT));
        Ok(Some(Launch {
            nproc,
            nnodes,
            node_rank,
            addr,
            port,
        }))
    }

    /// The ranks of all the machines.
    pub fn world(&self) -> usize {
        self.nnodes * self.nproc
    }

    /// What can be known before any rank starts: the address resolves,
    /// and on node 0 the port is free (rank 0 serves the rendezvous there).
    pub fn check(&self) -> Result<()> {
        let port = self.port.unwrap_or(0);
        let resolved = (self.addr.as_str(), port).to_socket_addrs();
        if !resolved.is_ok_and(|mut a| a.next().is_some()) {
            bail!(
                "--master-addr {}: no such host (it must name node 0, reachable from every machine)",
                self.addr
            );
        }
        if let (0, Some(p)) = (self.node_rank, self.port) {
            TcpListener::bind(("0.0.0.0", p)).map_err(|e| {
                anyhow!("--master-port {p}: cannot listen there on this machine, node 0 ({e}): name a free port")
            })?;
        }
        Ok(())
    }
}

/// This command line without the launcher's flags (`--flag V` or
/// `--flag=V`).
fn rank_args(args: impl Iterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut skip = false;
    for a in args {
        if std::mem::take(&mut skip) {
            continue;
        }
        match a.to_str() {
            Some(s) if FLAGS.contains(&s) => skip = true,
            Some(s)
                if FLAGS
                    .iter()
                    .any(|f| s.strip_prefix(f).is_some_and(|v| v.starts_with('='))) => {}
            _ => out.push(a),
        }
    }
    out
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port on 127.0.0.1")?;
    Ok(listener.local_addr()?.port())
}

/// A process's exit code; 128 + the signal that killed it.
fn code(status: std::process::ExitStatus) -> i32 {
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Starts this machine's ranks of this command and waits for them; returns
/// the exit code (its first rank's, else the first failure's). `timeout`:
/// the ranks' own, after which a failure ends the others.
pub fn run(launch: &Launch, timeout: Duration) -> Result<i32> {
    launch.check()?;
    let exe = std::env::current_exe().context("cannot find this program to start its ranks")?;
    let args = rank_args(std::env::args_os().skip(1));
    let port = match launch.port {
        Some(p) => p,
        None => free_port()?,
    }
    .to_string();
    let (nproc, first) = (launch.nproc, launch.node_rank * launch.nproc);
    let world = launch.world().to_string();
    let flags: Vec<(i32, Arc<AtomicBool>)> = [SIGINT, SIGTERM, SIGUSR1]
        .into_iter()
        .map(|s| {
            let f = Arc::new(AtomicBool::new(false));
            let _ = signal_hook::flag::register(s, f.clone());
            (s, f)
        })
        .collect();
    let mut ranks: Vec<Child> = Vec::new();
    for rank in 0..nproc {
        let mut cmd = Command::new(&exe);
        cmd.args(&args)
            .env("RANK", (first + rank).to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", &world)
            .env("LOCAL_WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", &launch.addr)
            .env("MASTER_PORT", &port)
            .env_remove("TORCHELASTIC_USE_AGENT_STORE");
        if rank > 0 {
            cmd.stdin(Stdio::null()).stdout(Stdio::null());
        }
        match cmd.spawn() {
            Ok(child) => ranks.push(child),
            Err(e) => {
                for c in &mut ranks {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(e).with_context(|| format!("cannot start rank {} ({})", first + rank, exe.display()));
            }
        }
    }
    Ok(wait(ranks, first, &flags, timeout + GRACE))
}

/// Waits for every rank (`first` is the first's rank in the run), passing
/// signals on; once one failed, the others get `grace` to end.
fn wait(mut ranks: Vec<Child>, first: usize, flags: &[(i32, Arc<AtomicBool>)], grace: Duration) -> i32 {
    let mut codes: Vec<Option<i32>> = vec![None; ranks.len()];
    let mut first_failure: Option<Instant> = None;
    while codes.iter().any(Option::is_none) {
        for (sig, flag) in flags {
            if !flag.swap(false, Ordering::SeqCst) {
                continue;
            }
            for (rank, c) in ranks.iter().enumerate() {
                if codes[rank].is_none() && (*sig != SIGUSR1 || rank == 0) {
                    unsafe { libc::kill(c.id() as i32, *sig) };
                }
            }
        }
        for (rank, c) in ranks.iter_mut().enumerate() {
            if codes[rank].is_some() {
                continue;
            }
            if let Ok(Some(status)) = c.try_wait() {
                let code = code(status);
                codes[rank] = Some(code);
                // A rank stopped by a signal ended as asked: the others stop too.
                let failed = ![0, EXIT_SIGINT, EXIT_SIGTERM].contains(&code);
                if failed && first_failure.is_none() {
                    eprintln!("rank {} exited with code {code}: the other ranks stop", first + rank);
                    first_failure = Some(Instant::now());
                }
            }
        }
        if let Some(at) = first_failure {
            if at.elapsed() > grace {
                for (rank, c) in ranks.iter_mut().enumerate() {
                    if codes[rank].is_none() {
                        eprintln!("rank {} did not end {grace:?} after the failure: killed", first + rank);
                        let _ = c.kill();
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Rank 0's code, else the first other's that is not 0.
    codes.into_iter().flatten().find(|&c| c != 0).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ranks_command_line_leaves_out_the_launch() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            rank_args(args(&["train", "--nproc-per-node", "2", "--no-tui"]).into_iter()),
            args(&["train", "--no-tui"])
        );
        assert_eq!(
            rank_args(args(&["train", "--nproc-per-node=4", "--set", "a=1"]).into_iter()),
            args(&["train", "--set", "a=1"])
        );
        let two = [
            "train",
            "--nnodes",
            "2",
            "--node-rank=1",
            "--master-addr",
            "10.0.0.1",
            "--master-port=29400",
        ];
        assert_eq!(rank_args(args(&two).into_iter()), args(&["train"]));
        // A value that looks like a flag's prefix is no flag.
        assert_eq!(
            rank_args(args(&["train", "--nnodes-x", "1"]).into_iter()),
            args(&["train", "--nnodes-x", "1"])
        );
    }

    #[test]
    fn a_launch_over_machines_needs_its_master_and_a_node_rank_below_nnodes() {
        let flags = |nproc: u16, nnodes: u16, node_rank: u16, addr: Option<&str>| LaunchArgs {
            nproc_per_node: Some(nproc),
            nnodes,
            node_rank,
            master_addr: addr.map(str::to_owned),
            master_port: None,
        };
        assert_eq!(Launch::from_args(&flags(1, 1, 0, None)).unwrap(), None);
        let one = Launch::from_args(&flags(2, 1, 0, None)).unwrap().unwrap();
        assert_eq!((one.addr.as_str(), one.port), ("127.0.0.1", None));
        let two = Launch::from_args(&flags(1, 2, 1, Some("10.0.0.1"))).unwrap().unwrap();
        assert_eq!(
            (two.nproc, two.nnodes, two.node_rank, two.port),
            (1, 2, 1, Some(DEFAULT_PORT))
        );
        let err = |a: LaunchArgs| Launch::from_args(&a).unwrap_err().to_string();
        assert!(err(flags(1, 2, 2, Some("h"))).contains("--node-rank 2 with --nnodes 2"));
        assert!(err(flags(1, 1, 1, None)).contains("below --nnodes (0 to 0)"));
        assert!(err(flags(1, 2, 0, None)).contains("--nnodes 2 needs --master-addr"));
    }
}
