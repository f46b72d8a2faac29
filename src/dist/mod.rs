//! The process group of a data-parallel run: PyTorch's own c10d (a TCPStore
//! rendezvous, a Gloo process group for CPU tensors and, where built and a
//! GPU is there, an NCCL one for CUDA tensors) through a small C++ shim,
//! `c10d.cpp`, that `build.rs` compiles against libtorch's headers and
//! Debian's `libgloo-dev`. Every C++ exception comes back as an error
//! naming what failed; every call is bounded by the group's timeout.
//!
//! `role` says what this process is in a launch: alone, the launcher of
//! this machine's ranks (`launch`, for `--nproc-per-node`), or one of the
//! ranks, which `join` meets with the others (from torchrun's environment
//! or SLURM's: `Rendezvous::from_env`); `DataParallel` is what training
//! asks of the group.
pub mod launch;
mod parallel;

pub use parallel::{DataParallel, Signal, Terms};

use anyhow::{bail, Context, Result};
use std::{
    ffi::{c_char, c_int, c_void, CStr, CString},
    net::ToSocketAddrs,
    time::Duration,
};
use tch::Tensor;

extern "C" {
    fn vgg_dist_error() -> *const c_char;
    fn vgg_dist_init(
        host: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        client_only: c_int,
        timeout_ms: i64,
        prefix: *const c_char,
        local: *const c_char,
    ) -> *mut c_void;
    fn vgg_dist_store_set(group: *mut c_void, key: *const c_char, value: *const c_char) -> c_int;
    fn vgg_dist_store_get(group: *mut c_void, key: *const c_char, out: *mut c_char, cap: i64) -> c_int;
    fn vgg_dist_all_reduce_sum(group: *mut c_void, tensor: *mut c_void, timeout_ms: i64) -> c_int;
    fn vgg_dist_broadcast(group: *mut c_void, tensor: *mut c_void, root: c_int, timeout_ms: i64) -> c_int;
    fn vgg_dist_cuda_backend(group: *mut c_void) -> *const c_char;
    fn vgg_dist_free(group: *mut c_void);
    fn vgg_overlap_new(group: *mut c_void, params: *mut *mut c_void, bucket_of: *const i64, n: i64) -> *mut c_void;
    fn vgg_overlap_finish(overlap: *mut c_void) -> c_int;
    fn vgg_overlap_free(overlap: *mut c_void);
}

/// The shim's message for the last call on this thread that failed.
fn last_error() -> String {
    unsafe { CStr::from_ptr(vgg_dist_error()) }
        .to_string_lossy()
        .into_owned()
}

/// Where the ranks of a run meet, and which one this process is.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendezvous {
    pub host: String,
    pub port: u16,
    pub rank: usize,
    pub world: usize,
    /// The rank among this machine's (its GPU, on CUDA).
    pub local_rank: usize,
    /// The ranks of this machine (LOCAL_WORLD_SIZE, SLURM_NTASKS_PER_NODE;
    /// 1 when not said), which share its cores on the CPU.
    pub local_world: usize,
    /// Another process (torchrun's agent) serves the store: rank 0 too
    /// connects as a client.
    pub agent_store: bool,
    /// How many times torchrun's elastic agent restarted the ranks
    /// (TORCHELASTIC_RESTART_COUNT): a restart resumes the run.
    pub attempt: usize,
}

impl Rendezvous {
    /// From the launcher's environment (`get`: a variable's value):
    /// torchrun's RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT and
    /// TORCHELASTIC_USE_AGENT_STORE, or, without RANK, SLURM's SLURM_PROCID,
    /// SLURM_NTASKS and SLURM_LOCALID (with MASTER_ADDR and MASTER_PORT).
    /// None when no launcher started this process, or it started one
    /// process alone (a single-task SLURM job needs no MASTER_ADDR).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Option<Rendezvous>> {
        let (rank, world, local) = match get("RANK") {
            Some(_) => ("RANK", "WORLD_SIZE", "LOCAL_RANK"),
            None if get("SLURM_PROCID").is_some() => ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
            None => return Ok(None),
        };
        let number = |key: &str| -> Result<usize> {
            let v = get(key).with_context(|| format!("{rank} is set but {key} is not"))?;
            v.trim().parse().with_context(|| format!("{key}={v:?}: not a number"))
        };
        if number(world)? == 1 {
            return Ok(None);
        }
        let r = Rendezvous {
            rank: number(rank)?,
            world: number(world)?,
            local_rank: get(local).map_or(Ok(0), |_| number(local))?,
            local_world: local_world(&get),
            host: get("MASTER_ADDR").with_context(|| format!("{rank} is set but MASTER_ADDR is not"))?,
            port: {
                let p = number("MASTER_PORT")?;
                u16::try_from(p)
                    .ok()
                    .filter(|&p| p > 0)
                    .with_context(|| format!("MASTER_PORT={p}: not a port"))?
            },
            agent_store: get("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v == "True"),
            attempt: match get("TORCHELASTIC_RESTART_COUNT") {
                Some(_) => number("TORCHELASTIC_RESTART_COUNT")?,
                None => 0,
            },
        };
        if r.world == 0 || r.rank >= r.world {
            bail!(
                "{rank}={} with {world}={}: the rank must be below the world size",
                r.rank,
                r.world
            );
        }
        Ok(Some(r))
    }
}

/// Each of `world` ranks takes an equal share of the global batch.
pub fn check_batch(batch: i64, world: usize) -> Result<()> {
    if batch % world as i64 != 0 {
        bail!("a batch of {batch} does not split between {world} ranks: each takes batch/{world}, so make it a multiple of {world}");
    }
    Ok(())
}

/// A launcher's `n` ranks each take a GPU of this machine where the
/// configured device is CUDA (see `rank_device`): refused before any rank
/// starts unless libtorch sees `n`.
pub fn check_gpus(configured: &str, n: usize) -> Result<()> {
    let cuda = match crate::device::parse(configured)? {
        None => tch::Cuda::is_available(),
        Some(d) => d.is_cuda(),
    };
    let seen = tch::Cuda::device_count().max(0) as usize;
    if cuda && seen < n {
        let fewer = match seen {
            0 => String::new(),
            k => format!("--nproc-per-node {k}, or "),
        };
        bail!(
            "--nproc-per-node {n} with train.device = {configured} needs {n} GPUs, one a rank, but libtorch sees {seen} CUDA device(s) here: start {fewer}train on the CPU (--device cpu)"
        );
    }
    Ok(())
}

/// What this process is in a launch.
pub enum Role {
    /// No launcher started it, and it starts none.
    Alone,
    /// It starts this machine's ranks (`--nproc-per-node`, `--nnodes`).
    Launcher(launch::Launch),
    /// One of the ranks a launcher started (torchrun, SLURM, vggtrain).
    Rank(Rendezvous),
}

/// This process's role, from the launcher's environment and the launch
/// flags; a launcher's rank may not launch again.
pub fn role(flags: &crate::cli::LaunchArgs) -> Result<Role> {
    let r = Rendezvous::from_env(|k| std::env::var(k).ok())?;
    Ok(match (r, launch::Launch::from_args(flags)?) {
        (Some(r), Some(_)) => bail!(
            "--nproc-per-node or --nnodes in rank {} of a launch that started {} ranks already (torchrun, SLURM): leave it out",
            r.rank,
            r.world
        ),
        (Some(r), None) => Role::Rank(r),
        (None, Some(l)) => Role::Launcher(l),
        (None, None) => Role::Alone,
    })
}

/// A rank's device: its own GPU (LOCAL_RANK) wherever the configured one
/// is CUDA (`cuda`, any `cuda:N`, which rank 0 saved in the run, or `auto`
/// on a machine with CUDA); else as configured.
pub fn rank_device(configured: &str, local_rank: usize) -> Result<String> {
    Ok(match crate::device::parse(configured)? {
        None if !tch::Cuda::is_available() => configured.to_owned(),
        None | Some(tch::Device::Cuda(_)) => format!("cuda:{local_rank}"),
        Some(_) => configured.to_owned(),
    })
}

/// A rank's device (see `rank_device`) and, on the CPU, its share of the
/// machine's cores, set in libtorch unless `threads` (train.threads) says.
pub fn settle_rank(device: &str, threads: i32, r: &Rendezvous) -> Result<String> {
    let device = rank_device(device, r.local_rank)?;
    let cuda = crate::device::resolve(&device)?.is_cuda();
    if threads == 0 && !cuda {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        tch::set_num_threads((cores / r.local_world.max(1)).max(1) as i32);
    }
    Ok(device)
}

/// Whether this process owns the run: it trains alone, or is rank 0.
pub fn leads(dp: Option<&DataParallel>) -> bool {
    dp.is_none_or(|dp| dp.rank() == 0)
}

/// Meets the other ranks at `r`.
pub fn join(r: Rendezvous, timeout: Duration) -> Result<(Rendezvous, DataParallel)> {
    let group = ProcessGroup::join(&r, timeout)?;
    Ok((r, DataParallel::new(group)))
}

/// This host's address towards the rendezvous at `host:port`, for Gloo's
/// own sockets: the host itself when it is this machine's loopback, else
/// the source address the routing table picks to reach it (no packet is
/// sent); empty when there is none (torch's default then).
fn local_address(host: &str, port: u16) -> String {
    let to = (host, port).to_socket_addrs().ok().and_then(|mut a| a.next());
    match to {
        Some(a) if a.ip().is_loopback() => host.to_owned(),
        Some(a) => {
            let any: std::net::SocketAddr = if a.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                ([0u16; 8], 0).into()
            };
            std::net::UdpSocket::bind(any)
                .and_then(|s| s.connect(a).and_then(|_| s.local_addr()))
                .map(|l| l.ip().to_string())
                .unwrap_or_default()
        }
        None => String::new(),
    }
}

/// LOCAL_WORLD_SIZE (torchrun), or the leading number of
/// SLURM_NTASKS_PER_NODE ("8" or "8(x2)"); 1 when neither says.
fn local_world(get: &impl Fn(&str) -> Option<String>) -> usize {
    let digits = |v: String| v.chars().take_while(char::is_ascii_digit).collect::<String>();
    get("LOCAL_WORLD_SIZE")
        .or_else(|| get("SLURM_NTASKS_PER_NODE"))
        .and_then(|v| digits(v).parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1)
}

/// This process's membership of a c10d process group (Gloo, and NCCL for
/// CUDA tensors where built and a GPU is there).
pub struct ProcessGroup {
    group: *mut c_void,
    pub rank: usize,
    pub world: usize,
    timeout: Duration,
    /// The run's directory, once rank 0 named it (for the errors' resume
    /// command).
    run: Option<std::path::PathBuf>,
}

// The group is used by one thread at a time (the engine's); c10d's own
// threads are behind it.
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    /// Meets the other ranks at the rendezvous (rank 0 serves the store
    /// unless the launcher's agent does); an error when they are not all
    /// there within `timeout`, which also bounds every later collective.
    pub fn join(r: &Rendezvous, timeout: Duration) -> Result<ProcessGroup> {
        let host = CString::new(r.host.as_str()).context("MASTER_ADDR holds a NUL byte")?;
        let local = CString::new(local_address(&r.host, r.port))?;
        // Each restart meets under its own keys, as torch's env:// does.
        let prefix = CString::new(format!("vggtrain/attempt_{}", r.attempt))?;
        let group = unsafe {
            vgg_dist_init(
                host.as_ptr(),
                r.port as c_int,
                r.rank as c_int,
                r.world as c_int,
                r.agent_store as c_int,
                timeout.as_millis() as i64,
                prefix.as_ptr(),
                local.as_ptr(),
            )
        };
        if group.is_null() {
            bail!(
                "rank {} of {} could not join the process group at {}:{} within {:?}: {}",
                r.rank,
                r.world,
                r.host,
                r.port,
                timeout,
                last_error()
            );
        }
        Ok(ProcessGroup {
            group,
            rank: r.rank,
            world: r.world,
            timeout,
            run: None,
        })
    }

    /// The error of a collective that failed (`code` not 0) after waiting
    /// up to `within`.
    fn check(&self, what: &str, code: c_int, within: Duration) -> Result<()> {
        if code != 0 {
            let peer = match self.world {
                2 => format!("rank {}", 1 - self.rank),
                _ => "another rank".to_owned(),
            };
            let cause = last_error();
            let lower = cause.to_lowercase();
            let happened = if lower.contains("timed out") || lower.contains("timeout") {
                let bound = match within == self.timeout {
                    true => "--dist-timeout",
                    false => "the wait for rank 0's disk",
                };
                format!("{peer} did not answer within {}s ({bound})", within.as_secs())
            } else {
                format!("{peer} is gone")
            };
            let resume = match &self.run {
                Some(run) => format!(
                    "`vggtrain train --resume {}` with the same launch on every machine",
                    run.display()
                ),
                None => "a new start".to_owned(),
            };
            bail!(
                "{what} on rank {} of {} failed: {happened}: {cause}; the run goes on from its newest checkpoint with {resume}",
                self.rank,
                self.world,
            );
        }
        Ok(())
    }

    /// Sums `t` over the ranks, in place (contiguous, on the group's device).
    pub fn all_reduce_sum(&self, t: &mut Tensor) -> Result<()> {
        self.all_reduce_sum_within(t, self.timeout)
    }

    /// `all_reduce_sum`, waiting for the others up to `within` (not the
    /// group's timeout).
    pub fn all_reduce_sum_within(&self, t: &mut Tensor, within: Duration) -> Result<()> {
        let ms = within.as_millis() as i64;
        let code = unsafe { vgg_dist_all_reduce_sum(self.group, t.as_mut_ptr().cast(), ms) };
        self.check("all-reduce", code, within)
    }

    /// Gives every rank `root`'s `t`, in place.
    pub fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<()> {
        self.broadcast_within(t, root, self.timeout)
    }

    /// `broadcast`, waiting for `root` up to `within`.
    pub fn broadcast_within(&self, t: &mut Tensor, root: usize, within: Duration) -> Result<()> {
        let ms = within.as_millis() as i64;
        let code = unsafe { vgg_dist_broadcast(self.group, t.as_mut_ptr().cast(), root as c_int, ms) };
        self.check("broadcast", code, within)
    }

    /// How long a collective waits for the others unless told otherwise.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sets `key` in the rendezvous store, where every later attempt of
    /// the launch (an elastic restart) reads it while the store's server
    /// lives (torchrun's agent).
    pub fn store_set(&self, key: &str, value: &str) -> Result<()> {
        let (key, value) = (CString::new(key)?, CString::new(value)?);
        let code = unsafe { vgg_dist_store_set(self.group, key.as_ptr(), value.as_ptr()) };
        self.check("setting a store key", code, self.timeout)
    }

    /// `key`'s value in the store (up to 4,095 bytes: a path), None when
    /// unset (without waiting).
    pub fn store_get(&self, key: &str) -> Result<Option<String>> {
        let key = CString::new(key)?;
        let mut out = vec![0 as c_char; 4096];
        let code = unsafe { vgg_dist_store_get(self.group, key.as_ptr(), out.as_mut_ptr(), out.len() as i64) };
        if code < 0 {
            self.check("reading a store key", code, self.timeout)?;
        }
        Ok((code == 1).then(|| unsafe { CStr::from_ptr(out.as_ptr()) }.to_string_lossy().into_owned()))
    }

    /// Hooks the parameters of `buckets` so that their gradients are
    /// summed over the ranks while backward runs, a bucket as soon as all
    /// of its gradients are there, in bucket order, as DDP's reducer does;
    /// `finish` after each backward. The group must outlive it.
    pub fn overlap(&self, buckets: &[&[Tensor]]) -> Result<Overlap> {
        let mut ptrs = Vec::new();
        let mut bucket_of = Vec::new();
        for (i, bucket) in buckets.iter().enumerate() {
            ptrs.extend(bucket.iter().map(|p| p.as_ptr() as *mut c_void));
            bucket_of.extend(bucket.iter().map(|_| i as i64));
        }
        let ptr = unsafe { vgg_overlap_new(self.group, ptrs.as_mut_ptr(), bucket_of.as_ptr(), ptrs.len() as i64) };
        if ptr.is_null() {
            bail!("cannot hook the gradients for overlapped sums: {}", last_error());
        }
        Ok(Overlap(ptr))
    }

    /// Waits for the overlapped sums of this backward pass, and puts them
    /// into the gradients.
    pub fn finish(&self, o: &mut Overlap) -> Result<()> {
        match unsafe { vgg_overlap_finish(o.0) } {
            -2 => bail!("{} (rank {})", last_error(), self.rank),
            code => self.check("all-reduce", code, self.timeout),
        }
    }

    /// The backend that CUDA tensors go through: "nccl" where built and a
    /// GPU is there, else "gloo" (CPU tensors always go through Gloo).
    pub fn cuda_backend(&self) -> String {
        unsafe { CStr::from_ptr(vgg_dist_cuda_backend(self.group)) }
            .to_string_lossy()
            .into_owned()
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        unsafe { vgg_dist_free(self.group) }
    }
}

/// Parameters hooked for overlapped gradient sums (`ProcessGroup::overlap`);
/// dropping it unhooks them.
pub struct Overlap(*mut c_void);

// Used by the engine's thread, and by autograd's through the hooks, which
// the shim's lock serialises.
unsafe impl Send for Overlap {}

impl Drop for Overlap {
    fn drop(&mut self) {
        unsafe { vgg_overlap_free(self.0) }
    }
}
