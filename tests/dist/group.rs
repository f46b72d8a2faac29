//! The c10d process group (Gloo over loopback): collectives between ranks
//! give the right values; a missing peer or a bad address is an error
//! within the timeout, never a hang; the launchers' environments map to a
//! rendezvous.
use super::free_port;
use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};
use tch::Tensor;
use vggtrain::dist::{DataParallel, ProcessGroup, Rendezvous, Signal, Terms};

/// One test at a time makes process groups in this process: a process
/// holds one group in use, and the c10d stores and Gloo devices of several,
/// made and torn down at once (a failing join among them), once crashed
/// this test binary under CI's load.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static GROUPS: Mutex<()> = Mutex::new(());
    GROUPS.lock().unwrap_or_else(|e| e.into_inner())
}

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

#[test]
fn ranks_all_reduce_broadcast_and_meet() {
    let _one = one_at_a_time();
    let port = free_port();
    let ranks: Vec<_> = (0..2)
        .map(|rank| {
            std::thread::spawn(move || {
                let pg = ProcessGroup::join(&rendezvous(port, rank, 2), Duration::from_secs(30)).unwrap();
                assert_eq!((pg.rank, pg.world), (rank, 2));
                let mut sum = Tensor::from_slice(&[1.0f32 + rank as f32, 10.0 * rank as f32]);
                pg.all_reduce_sum(&mut sum).unwrap();
                let mut from_0 = Tensor::from_slice(&[rank as i64 + 7; 3]);
                pg.broadcast(&mut from_0, 0).unwrap();
                if rank == 0 {
                    pg.store_set("run", "/runs/a").unwrap();
                }
                // A collective: rank 1 leaves it after rank 0 came, key set.
                pg.all_reduce_sum(&mut Tensor::from_slice(&[0.0f32])).unwrap();
                let stored = (pg.store_get("run").unwrap(), pg.store_get("unset").unwrap());
                (
                    Vec::<f32>::try_from(&sum).unwrap(),
                    Vec::<i64>::try_from(&from_0).unwrap(),
                    stored,
                )
            })
        })
        .collect();
    for r in ranks {
        let (sum, from_0, stored) = r.join().unwrap();
        assert_eq!(sum, [3.0, 10.0]);
        assert_eq!(from_0, [7, 7, 7]);
        assert_eq!(
            stored,
            (Some("/runs/a".to_owned()), None),
            "rank 0's key, for every rank"
        );
    }
}

#[test]
fn a_missing_peer_or_a_bad_address_is_an_error_within_the_timeout() {
    let _one = one_at_a_time();
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

/// Runs `f` as each of 2 ranks (threads) of a data-parallel group.
fn two_ranks<T: Send + 'static>(f: fn(&mut DataParallel) -> T) -> Vec<T> {
    let _one = one_at_a_time();
    let port = free_port();
    let ranks: Vec<_> = (0..2)
        .map(|rank| {
            std::thread::spawn(move || {
                let pg = ProcessGroup::join(&rendezvous(port, rank, 2), Duration::from_secs(30)).unwrap();
                f(&mut DataParallel::new(pg))
            })
        })
        .collect();
    ranks.into_iter().map(|r| r.join().unwrap()).collect()
}

#[test]
fn ranks_start_from_rank_zeros_weights_and_sum_their_gradients() {
    let out = two_ranks(|dp| {
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
        (
            Vec::<f32>::try_from(w.detach()).unwrap(),
            Vec::<f32>::try_from(b.detach()).unwrap(),
            Vec::<f32>::try_from(w.grad()).unwrap(),
            Vec::<f32>::try_from(b.grad()).unwrap(),
            Vec::<f64>::try_from(&stats).unwrap(),
        )
    });
    for (w, b, gw, gb, stats) in out {
        assert_eq!((w, b), (vec![1.0, 0.0], vec![5.0]), "rank 0's weights");
        assert_eq!(
            (gw, gb),
            (vec![3.0, 3.0], vec![3.0]),
            "1 + 2: the ranks' gradients summed"
        );
        assert_eq!(stats, [1.0, 2.0]);
    }
}

#[test]
fn ranks_agree_on_rank_zeros_schedule_and_any_ranks_stop() {
    let out = two_ranks(|dp| {
        let lead = dp.rank() == 0;
        let propose = |signal, images| Terms {
            lr: if lead { 0.01 } else { 0.5 },
            decays_used: if lead { 1 } else { 7 },
            since_best: if lead { 2 } else { 9 },
            signal,
            images,
            skipped: 1,
        };
        let go = dp.agree(&propose(Signal::Go, 4)).unwrap();
        let paused = dp
            .agree(&propose(if lead { Signal::Paused } else { Signal::Go }, 0))
            .unwrap();
        // Rank 1 asks to stop (a signal) while rank 0 is paused.
        let stop = dp
            .agree(&propose(
                if lead {
                    Signal::Paused
                } else {
                    Signal::Stop { save: false }
                },
                0,
            ))
            .unwrap();
        let shares = (dp.share(&[0, 1, 2, 3, 4]), dp.shard(5));
        // Ranks that resumed from other checkpoints are refused.
        let same = dp.check_same_start([100, 7]).is_ok();
        let differ = dp
            .check_same_start([100 + dp.rank() as i64, 7])
            .err()
            .map(|e| format!("{e:#}"));
        (go, paused, stop, shares, same, differ)
    });
    for (rank, (go, paused, stop, shares, same, differ)) in out.into_iter().enumerate() {
        assert_eq!(
            (go.lr, go.decays_used, go.since_best),
            (0.01, 1, 2),
            "rank 0's schedule"
        );
        assert_eq!((go.signal, go.images, go.skipped), (Signal::Go, 8, 2));
        assert_eq!(paused.signal, Signal::Paused);
        assert_eq!(stop.signal, Signal::Stop { save: true }, "a signal's stop saves");
        let want = if rank == 0 {
            (vec![0, 1], vec![0, 2, 4])
        } else {
            (vec![2, 3, 4], vec![1, 3])
        };
        assert_eq!(shares, want, "rank {rank}'s part of a batch, and of a split");
        assert!(same);
        let differ = differ.expect("a different start is an error on every rank");
        assert!(differ.contains("start from another place than rank 0"), "{differ}");
    }
}
