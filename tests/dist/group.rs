//! The c10d process group (Gloo over loopback): collectives between ranks
//! give the right values; a missing peer or a bad address is an error
//! within the timeout, never a hang; the launchers' environments map to a
//! rendezvous.
//!
//! The ranks of a test are processes, as a launcher's are: this test
//! binary again, running only that test, as one rank (`two_processes`); each
//! asserts what it sees, and the test passes when both do.
use super::{free_port, free_ports};
use std::{
    collections::HashMap,
    process::{Child, Command, Stdio},
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};
use tch::Tensor;
use vggtrain::dist::{DataParallel, ProcessGroup, Rendezvous, Signal, Terms};

fn rendezvous(port: u16, rank: usize, world: usize) -> Rendezvous {
    Rendezvous {
        host: "127.0.0.1".into(),
        port,
        rank,
        world,
        local_rank: rank,
        local_world: 2,
        agent_store: false,
        attempt: 0,
    }
}

/// Set in a rank's process: its rank, and the store's port.
const RANK: &str = "VGGTRAIN_TEST_GROUP_RANK";
const PORT: &str = "VGGTRAIN_TEST_GROUP_PORT";

/// Runs `rank` as each of 2 ranks of a process group whose collectives
/// time out after `timeout`, each rank in its own process (the calling
/// test, run again by this binary with `RANK` set); fails with a rank's
/// output when it fails.
fn two_processes(timeout: Duration, rank: impl FnOnce(ProcessGroup)) {
    if let (Ok(r), Ok(port)) = (std::env::var(RANK), std::env::var(PORT)) {
        let r = rendezvous(port.parse().unwrap(), r.parse().unwrap(), 2);
        return rank(ProcessGroup::join(&r, timeout).unwrap());
    }
    let port = free_port().to_string();
    let ranks: Vec<_> = (0..2)
        .map(|r| this_test_again(&[(RANK, &r.to_string()), (PORT, &port)]))
        .collect();
    for (r, child) in ranks.into_iter().enumerate() {
        passes(&format!("rank {r}"), child);
    }
}

/// The calling test, run again by this binary in a process of its own,
/// with `vars` set.
fn this_test_again(vars: &[(&str, &str)]) -> Child {
    let test = std::thread::current().name().unwrap().to_owned();
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &test, "--nocapture"])
        .envs(vars.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Fails with `who`'s output unless its one test passed.
fn passes(who: &str, child: Child) {
    let o = child.wait_with_output().unwrap();
    let out = super::common::text(&o);
    assert!(o.status.success(), "{who} failed ({}):\n{out}", o.status);
    assert!(out.contains("test result: ok. 1 passed"), "{who} ran no test:\n{out}");
}

/// `two_processes` for a data-parallel group.
fn two_ranks(timeout: Duration, rank: impl FnOnce(&mut DataParallel)) {
    two_processes(timeout, |pg| rank(&mut DataParallel::new(pg)));
}
#[test]
fn a_missing_peer_or_a_bad_address_is_an_error_within_the_timeout() {
    let timeout = Duration::from_secs(3);
    // Rank 1 never comes.
    let started = Instant::now();
    let err = ProcessGroup::join(&rendezvous(free_port(), 0, 2), timeout)
        .err()
        .unwrap();
    let msg = format!("{err:#}");
    assert!(started.elapsed() < timeout * 4, "took {:?}", started.elapsed());
    assert!(
        msg.contains("rank 0 of 2 could not join") && msg.contains("127.0.0.1"),
        "{msg}"
    );
    assert!(!msg.contains("frame #"), "a C++ backtrace in the message: {msg}");
    // Nobody serves the store: a client waits for it no longer than the timeout.
    let started = Instant::now();
    let err = ProcessGroup::join(&rendezvous(free_port(), 1, 2), timeout)
        .err()
        .unwrap();
    assert!(started.elapsed() < timeout * 4, "took {:?}", started.elapsed());
    assert!(format!("{err:#}").contains("rank 1 of 2"), "{err:#}");
    // An address that is no address.
    let mut bad = rendezvous(free_port(), 0, 1);
    bad.host = "no-such-host.invalid".into();
    let started = Instant::now();
    assert!(ProcessGroup::join(&bad, timeout).is_err());
    assert!(started.elapsed() < timeout * 4, "took {:?}", started.elapsed());
}

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |k| map.get(k).cloned()
}

#[test]
fn torchrun_and_slurm_environments_give_the_rendezvous() {
    assert_eq!(Rendezvous::from_env(env(&[])).unwrap(), None);
    // One process alone: no group (SLURM sets no MASTER_ADDR for it).
    let alone = [("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1")];
    assert_eq!(Rendezvous::from_env(env(&alone)).unwrap(), None);
    let torchrun = [
        ("RANK", "3"),
        ("WORLD_SIZE", "4"),
        ("LOCAL_RANK", "1"),
        ("LOCAL_WORLD_SIZE", "2"),
        ("MASTER_ADDR", "node0"),
        ("MASTER_PORT", "29500"),
        ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ("TORCHELASTIC_RESTART_COUNT", "2"),
    ];
    let r = Rendezvous::from_env(env(&torchrun)).unwrap().unwrap();
    assert_eq!(
        r,
        Rendezvous {
            host: "node0".into(),
            port: 29500,
            rank: 3,
            world: 4,
            local_rank: 1,
            local_world: 2,
            agent_store: true,
            attempt: 2,
        }
    );
    // SLURM's variables when RANK is absent.
    let slurm = [
        ("SLURM_PROCID", "5"),
        ("SLURM_NTASKS", "8"),
        ("SLURM_LOCALID", "1"),
        ("SLURM_NTASKS_PER_NODE", "4(x2)"),
        ("MASTER_ADDR", "n1"),
        ("MASTER_PORT", "1234"),
    ];
    let r = Rendezvous::from_env(env(&slurm)).unwrap().unwrap();
    assert_eq!(
        (r.rank, r.world, r.local_rank, r.local_world, r.agent_store, r.attempt),
        (5, 8, 1, 4, false, 0)
    );
    // What is missing or wrong is named.
    for (vars, want) in [
        (
            vec![("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "1")],
            "MASTER_ADDR",
        ),
        (
            vec![
                ("RANK", "2"),
                ("WORLD_SIZE", "2"),
                ("MASTER_ADDR", "h"),
                ("MASTER_PORT", "1"),
            ],
            "below the world size",
        ),
        (
            vec![
                ("RANK", "0"),
                ("WORLD_SIZE", "2"),
                ("MASTER_ADDR", "h"),
                ("MASTER_PORT", "70000"),
            ],
            "MASTER_PORT=70000",
        ),
        (
            vec![
                ("RANK", "x"),
                ("WORLD_SIZE", "2"),
                ("MASTER_ADDR", "h"),
                ("MASTER_PORT", "1"),
            ],
            "RANK=\"x\"",
        ),
    ] {
        let err = format!("{:#}", Rendezvous::from_env(env(&vars)).unwrap_err());
        assert!(err.contains(want), "{vars:?}: {err}");
    }
}

#[test]
fn each_rank_takes_its_own_gpu_where_the_device_is_cuda_or_auto() {
    use vggtrain::dist::rank_device;
    assert_eq!(rank_device("cuda", 1).unwrap(), "cuda:1");
    assert_eq!(rank_device("cpu", 1).unwrap(), "cpu");
    assert_eq!(
        rank_device("cuda:0", 1).unwrap(),
        "cuda:1",
        "rank 0's, saved in the run"
    );
    let auto = if tch::Cuda::is_available() { "cuda:1" } else { "auto" };
    assert_eq!(rank_device("auto", 1).unwrap(), auto);
    assert!(rank_device("tpu", 0).is_err());
}

/// Several process groups of one process start their first collectives at
/// once, round after round: PyTorch 2.11's flight recorder (one per
/// process) raced on them and crashed the process with SIGSEGV within a
/// few rounds, until the shim started Gloo's collectives one at a time. The
/// groups live in a process of their own (this test, run again by this
/// binary), so that a crash fails this test and no other.
#[test]
fn groups_of_one_process_start_their_collectives_at_once() {
    const ALONE: &str = "VGGTRAIN_TEST_GROUPS_AT_ONCE";
    const PAIRS: usize = 8;
    const ROUNDS: usize = 60;
    if std::env::var_os(ALONE).is_none() {
        return passes("the groups' process", this_test_again(&[(ALONE, "1")]));
    }
    for round in 0..ROUNDS {
        let at_once = Arc::new(Barrier::new(2 * PAIRS));
        let ranks: Vec<_> = free_ports(PAIRS)
            .into_iter()
            .flat_map(|port| [(port, 0), (port, 1)])
            .map(|(port, rank)| {
                let at_once = Arc::clone(&at_once);
                std::thread::spawn(move || {
                    let pg = ProcessGroup::join(&rendezvous(port, rank, 2), Duration::from_secs(60));
                    at_once.wait();
                    let pg = pg.unwrap();
                    let mut sum = Tensor::from_slice(&[1.0f32 + rank as f32; 4]);
                    pg.all_reduce_sum(&mut sum).unwrap();
                    assert_eq!(Vec::<f32>::try_from(&sum).unwrap(), [3.0; 4], "round {round}");
                })
            })
            .collect();
        for r in ranks {
            r.join().unwrap();
        }
    }
}

#[test]
fn ranks_all_reduce_broadcast_and_meet() {
    two_processes(Duration::from_secs(30), |pg| {
        let rank = pg.rank;
        assert_eq!((rank.to_string(), pg.world), (std::env::var(RANK).unwrap(), 2));
        let mut sum = Tensor::from_slice(&[1.0f32 + rank as f32, 10.0 * rank as f32]);
        pg.all_reduce_sum(&mut sum).unwrap();
        assert_eq!(Vec::<f32>::try_from(&sum).unwrap(), [3.0, 10.0]);
        let mut from_0 = Tensor::from_slice(&[rank as i64 + 7; 3]);
        pg.broadcast(&mut from_0, 0).unwrap();
        assert_eq!(Vec::<i64>::try_from(&from_0).unwrap(), [7, 7, 7]);
        if rank == 0 {
            pg.store_set("run", "/runs/a").unwrap();
        }
        // A collective: rank 1 leaves it after rank 0 came, the key set.
        pg.all_reduce_sum(&mut Tensor::from_slice(&[0.0f32])).unwrap();
        let stored = (pg.store_get("run").unwrap(), pg.store_get("unset").unwrap());
        assert_eq!(
            stored,
            (Some("/runs/a".to_owned()), None),
            "rank 0's key, for rank {rank}"
        );
        // Rank 0 (the store's server) leaves last.
        pg.all_reduce_sum(&mut Tensor::from_slice(&[0.0f32])).unwrap();
    });
}

#[test]
fn ranks_start_from_rank_zeros_weights_and_sum_their_gradients() {
    two_ranks(Duration::from_secs(30), |dp| {
        let r = dp.rank() as f32;
        // Weights of each rank's own; rank 0's win.
        let w = Tensor::from_slice(&[r + 1.0, 10.0 * r]).set_requires_grad(true);
        let b = Tensor::from_slice(&[5.0 + r]).set_requires_grad(true);
        dp.broadcast(&[w.shallow_clone(), b.shallow_clone()]).unwrap();
        // Each rank's gradient is (rank + 1) for every weight.
        let k = f64::from(r) + 1.0;
        ((&w * k).sum(tch::Kind::Float) + (&b * k).sum(tch::Kind::Float)).backward();
        let mut stats = Tensor::from_slice(&[r as f64, 1.0]);
        dp.reduce(&[w.shallow_clone(), b.shallow_clone()], &mut stats).unwrap();
        let weights = (
            Vec::<f32>::try_from(w.detach()).unwrap(),
            Vec::<f32>::try_from(b.detach()).unwrap(),
        );
        assert_eq!(weights, (vec![1.0, 0.0], vec![5.0]), "rank 0's weights");
        let grads = (
            Vec::<f32>::try_from(w.grad()).unwrap(),
            Vec::<f32>::try_from(b.grad()).unwrap(),
        );
        assert_eq!(grads, (vec![3.0, 3.0], vec![3.0]), "1 + 2: the ranks' gradients summed");
        assert_eq!(Vec::<f64>::try_from(&stats).unwrap(), [1.0, 2.0]);
    });
}

#[test]
fn ranks_agree_on_rank_zeros_schedule_and_any_ranks_stop() {
    two_ranks(Duration::from_secs(30), |dp| {
        let lead = dp.rank() == 0;
        let propose = |signal, images| Terms {
            lr: if lead { 0.01 } else { 0.5 },
            decays_used: if lead { 1 } else { 7 },
            since_best: if lead { 2 } else { 9 },
            signal,
            images,
            skipped: 1,
            save: lead,
        };
        let go = dp.agree(&propose(Signal::Go, 4)).unwrap();
        assert_eq!(
            (go.lr, go.decays_used, go.since_best),
            (0.01, 1, 2),
            "rank 0's schedule"
        );
        assert_eq!((go.signal, go.images, go.skipped), (Signal::Go, 8, 2));
        assert!(go.save, "rank 0's checkpoint asked for, on every rank");
        let paused = dp
            .agree(&propose(if lead { Signal::Paused } else { Signal::Go }, 0))
            .unwrap();
        assert_eq!(paused.signal, Signal::Paused);
        // Rank 1 asks to stop (a signal) while rank 0 is paused.
        let stop = if lead {
            Signal::Paused
        } else {
            Signal::Stop { save: false }
        };
        let stop = dp.agree(&propose(stop, 0)).unwrap();
        assert_eq!(stop.signal, Signal::Stop { save: true }, "a signal's stop saves");
        let want = if lead {
            (vec![0, 1], vec![0, 2, 4])
        } else {
            (vec![2, 3, 4], vec![1, 3])
        };
        let shares = (dp.share(&[0, 1, 2, 3, 4]), dp.shard(5));
        assert_eq!(shares, want, "this rank's part of a batch, and of a split");
        // Ranks that resumed from other checkpoints are refused.
        dp.check_same_start([100, 7]).unwrap();
        let differ = dp.check_same_start([100 + dp.rank() as i64, 7]);
        let differ = format!("{:#}", differ.expect_err("a different start is an error on every rank"));
        assert!(differ.contains("start from another place than rank 0"), "{differ}");
    });
}

#[test]
fn ranks_wait_for_rank_zeros_disk_beyond_the_timeout_and_fail_with_it() {
    two_ranks(Duration::from_secs(2), |dp| {
        let lead = dp.rank() == 0;
        // Rank 0 saves for longer than the collectives' timeout.
        if lead {
            std::thread::sleep(Duration::from_secs(4));
        }
        dp.after_rank0(Ok(())).expect("no timeout while rank 0 saves");
        let failed = dp.after_rank0(match lead {
            true => Err(anyhow::anyhow!("cannot write ckpt-7: no space left")),
            false => Ok(()),
        });
        let failed = format!("{:#}", failed.expect_err("rank 0's failure is every rank's"));
        let want = if lead {
            "no space left"
        } else {
            "rank 0 could not write the run's files"
        };
        assert!(failed.contains(want), "{failed}");
        // Then a step's collective is bounded by the timeout again.
        if lead {
            let step = dp.sum(&mut Tensor::from_slice(&[1.0f32]));
            let step = format!("{:#}", step.expect_err("a step's wait is --dist-timeout"));
            assert!(
                step.contains("rank 1 did not answer within 2s (--dist-timeout)"),
                "{step}"
            );
        } else {
            std::thread::sleep(Duration::from_secs(4));
        }
    });
}
