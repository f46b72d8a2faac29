//! `vggtrain train --nproc-per-node N`: the ranks of one machine, started by
//! vggtrain itself (no Python, no torchrun). Each rank is this program run
//! again with torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK,
//! LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) on a free loopback port
//! (each rank then takes its GPU, or its share of the cores: `main`'s and
//! `bench`'s rank set-up). Rank 0 keeps the terminal
//! (its face), the others are quiet. The launcher passes SIGINT and SIGTERM
//! on to the ranks (a rank takes the copy of a signal that reached it
//! directly too as one stop: `headless::ECHO`) and SIGUSR1 to rank 0, and
//! returns when all are done: a rank that fails ends the others within the
//! group's timeout (and a rank still there past it is killed).
use crate::headless::{EXIT_SIGINT, EXIT_SIGTERM};
use anyhow::{Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use std::{
    ffi::OsString,
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

/// This command line without `--nproc-per-node` (`--nproc-per-node N` or
/// `--nproc-per-node=N`).
fn rank_args(args: impl Iterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut skip = false;
    for a in args {
        if std::mem::take(&mut skip) {
            continue;
        }
        match a.to_str() {
            Some("--nproc-per-node") => skip = true,
            Some(s) if s.starts_with("--nproc-per-node=") => {}
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

/// Starts `nproc` ranks of this command and waits for them; returns the
/// exit code (rank 0's, else the first failure's). `timeout`: the ranks'
/// own, after which a failure ends the others.
pub fn run(nproc: usize, timeout: Duration) -> Result<i32> {
    let exe = std::env::current_exe().context("cannot find this program to start its ranks")?;
    let args = rank_args(std::env::args_os().skip(1));
    let port = free_port()?.to_string();
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
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("LOCAL_WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
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
                return Err(e).with_context(|| format!("cannot start rank {rank} ({})", exe.display()));
            }
        }
    }
    Ok(wait(ranks, &flags, timeout + GRACE))
}

/// Waits for every rank, passing signals on; once one failed, the others
/// get `grace` to end.
fn wait(mut ranks: Vec<Child>, flags: &[(i32, Arc<AtomicBool>)], grace: Duration) -> i32 {
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
                    eprintln!("rank {rank} exited with code {code}: the other ranks stop");
                    first_failure = Some(Instant::now());
                }
            }
        }
        if let Some(at) = first_failure {
            if at.elapsed() > grace {
                for (rank, c) in ranks.iter_mut().enumerate() {
                    if codes[rank].is_none() {
                        eprintln!("rank {rank} did not end {grace:?} after the failure: killed");
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
    }
}
