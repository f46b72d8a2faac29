use super::connection::MAX_CLIENTS;
use super::history::Steps;
use super::*;
use crate::attach::{
    socket_path, with_short_path, Frame, RunState, Stamped, MAX_COMMAND_FRAME, PROTOCOL, SNAPSHOT_STEPS,
};
use crate::control::{EpochStats, EvalResult};
use crossbeam_channel::unbounded;
use std::{
    fs,
    io::{self, BufRead, BufReader, Write},
    os::unix::{
        fs::PermissionsExt,
        net::{UnixListener, UnixStream},
    },
};

fn step(i: u64) -> Event {
    Event::Step {
        epoch: 1,
        step: i as usize,
        global_step: i,
        loss: 2.0,
        lr: 0.01,
        images_per_sec: 100.0,
    }
}

fn epoch(n: usize) -> Event {
    Event::Epoch(EpochStats {
        epoch: n,
        train_loss: 1.0,
        train_acc: 0.5,
        val: EvalResult {
            loss: 1.0,
            top1: 0.5,
            top5: 0.9,
            per_class: vec![0.5, 0.5],
            confusion: vec![vec![1, 1], vec![1, 1]],
            skipped: 0,
            images: 4,
        },
        best_top1: 0.5,
        lr: 0.01,
        seconds: 1.0,
        skipped_steps: 0,
        peak_gpu_bytes: None,
    })
}

struct Conn {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Conn {
    fn open(run: &Path) -> Conn {
        let w = UnixStream::connect(socket_path(run)).expect("connects");
        w.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Conn {
            r: BufReader::new(w.try_clone().unwrap()),
            w,
        }
    }

    fn frame(&mut self) -> Frame {
        let mut line = String::new();
        assert!(
            self.r.read_line(&mut line).expect("a frame in time") > 0,
            "connection closed"
        );
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).unwrap();
        self.w.write_all(b"\n").unwrap();
    }
}

fn hub(run: &Path) -> (Arc<Hub>, crossbeam_channel::Receiver<Command>) {
    let (tx, rx) = unbounded();
    let (hub, stale) = Hub::start(run, "[model]\nconfig = \"A\"\n".into(), tx).expect("listens");
    assert!(!stale);
    (hub, rx)
}

#[test]
fn snapshot_then_live_events_and_commands_with_errors_for_bad_frames() {
    let tmp = tempfile::tempdir().unwrap();
    let (hub, commands) = hub(tmp.path());
    let mode = fs::metadata(socket_path(tmp.path())).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    hub.publish(&step(1));
    hub.publish(&epoch(1));
    hub.publish(&Event::Paused);
    hub.publish(&epoch(2));
    let mut c = Conn::open(tmp.path());
    let Frame::Snapshot(s) = c.frame() else {
        panic!("no snapshot first")
    };
    assert_eq!(
        (s.protocol, s.pid, s.state),
        (PROTOCOL, std::process::id(), RunState::Paused)
    );
    assert!(s.config.contains("config = \"A\""));
    let kinds: Vec<&Event> = s.events.iter().map(|e| &e.event).collect();
    assert_eq!(kinds.len(), 4);
    assert!(matches!(kinds[0], Event::Step { .. }) && matches!(kinds[2], Event::Paused));
    // Only the newest epoch keeps its confusion matrix.
    match (kinds[1], kinds[3]) {
        (Event::Epoch(a), Event::Epoch(b)) => {
            assert!(a.val.confusion.is_empty() && !b.val.confusion.is_empty());
            assert_eq!(a.val.per_class, vec![0.5, 0.5]);
        }
        _ => panic!("epochs out of order: {kinds:?}"),
    }
    hub.publish(&Event::Resumed);
    assert!(matches!(
        c.frame(),
        Frame::Event {
            event: Event::Resumed,
            ..
        }
    ));

    c.send(br#"{"command":"pause"}"#);
    assert_eq!(
        c.frame(),
        Frame::Accepted {
            command: Command::Pause
        }
    );
    assert_eq!(commands.recv_timeout(Duration::from_secs(10)), Ok(Command::Pause));
    for (bad, says) in [
        (b"{\"command\":".to_vec(), "malformed JSON"),
        (br#"{"command":"explode"}"#.to_vec(), "unknown command `explode`"),
        (vec![b'x'; MAX_COMMAND_FRAME + 10], "over the 65536-byte limit"),
        (br#"{"command":"set-lr","lr":"fast"}"#.to_vec(), "bad `set-lr` command"),
    ] {
        c.send(&bad);
        match c.frame() {
            Frame::Error { message } => assert!(message.contains(says), "{message}"),
            f => panic!("expected an error for {says}, got {f:?}"),
        }
    }
    // Blank lines are nothing; the connection still works after errors.
    c.send(b"   ");
    c.send(br#"{"command":"set-lr","lr":0.001}"#);
    assert_eq!(
        c.frame(),
        Frame::Accepted {
            command: Command::SetLr { lr: 0.001 }
        }
    );
    assert_eq!(commands.try_recv(), Ok(Command::SetLr { lr: 0.001 }));
    assert!(commands.try_recv().is_err(), "a refused frame reached the engine");
    hub.close();
}

#[test]
fn a_client_that_stops_reading_never_blocks_publishing() {
    let tmp = tempfile::tempdir().unwrap();
    let (hub, _commands) = hub(tmp.path());
    let _silent = Conn::open(tmp.path());
    let mut reader = Conn::open(tmp.path());
    let Frame::Snapshot(_) = reader.frame() else { panic!() };
    // The reader hands on every log event it sees.
    let (seen_tx, seen) = unbounded();
    let t = thread::spawn(move || loop {
        match reader.frame() {
            Frame::Event {
                event: Event::Log { message },
                ..
            } => {
                if seen_tx.send(message).is_err() {
                    return;
                }
            }
            Frame::Event { .. } => {}
            f => panic!("unexpected {f:?}"),
        }
    });
    let (done_tx, done) = unbounded();
    let h = hub.clone();
    thread::spawn(move || {
        for i in 0..100u64 {
            for s in 0..200 {
                h.publish(&step(i * 200 + s));
            }
            let message = format!("log {i}");
            h.publish(&Event::Log {
                message: message.clone(),
            });
            // Paced by the reading client, never by the silent one.
            assert_eq!(seen.recv_timeout(Duration::from_secs(30)), Ok(message));
        }
        let _ = done_tx.send(());
    });
    assert!(
        done.recv_timeout(Duration::from_secs(120)).is_ok(),
        "publishing stalled (or the reading client missed an event)"
    );
    // The silent client filled its queue and was dropped; the other stays.
    assert_eq!(hub.clients(), 1);
    hub.close();
    let _ = t.join();
}

#[test]
fn clients_connecting_mid_stream_miss_and_repeat_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (hub, _commands) = hub(tmp.path());
    let h = hub.clone();
    // Fewer events than a client's queue holds: nobody can fall behind.
    let publisher = thread::spawn(move || {
        for i in 0..900 {
            h.publish(&Event::Log { message: i.to_string() });
        }
        h.publish(&Event::Finished {
            reason: "done".into(),
            test: None,
        });
    });
    let logs = |events: Vec<Event>| -> Vec<u32> {
        events
            .into_iter()
            .filter_map(|e| match e {
                Event::Log { message } => Some(message.parse().unwrap()),
                _ => None,
            })
            .collect()
    };
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(thread::spawn({
            let run = tmp.path().to_owned();
            move || {
                let mut c = Conn::open(&run);
                let Frame::Snapshot(s) = c.frame() else { panic!() };
                let mut seen: Vec<Event> = s.events.into_iter().map(|s| s.event).collect();
                while !matches!(seen.last(), Some(Event::Finished { .. })) {
                    match c.frame() {
                        Frame::Event { event, .. } => seen.push(event),
                        f => panic!("{f:?}"),
                    }
                }
                seen
            }
        }));
        thread::sleep(Duration::from_millis(2));
    }
    publisher.join().unwrap();
    for c in clients {
        // The snapshot keeps the newest NOTES log events; from there on,
        // every one once, in order.
        let got = logs(c.join().unwrap());
        let first = *got.first().expect("some logs");
        assert_eq!(got, (first..900).collect::<Vec<_>>());
    }
    hub.close();
}

#[test]
fn hung_up_clients_leave_at_once_and_half_closed_ones_still_hear() {
    let tmp = tempfile::tempdir().unwrap();
    let (hub, _commands) = hub(tmp.path());
    // More short connections than clients allowed, with no event between.
    for _ in 0..2 * MAX_CLIENTS {
        let mut c = Conn::open(tmp.path());
        assert!(matches!(c.frame(), Frame::Snapshot(_)), "refused");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while hub.clients() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} hung-up clients kept",
            hub.clients()
        );
        thread::sleep(Duration::from_millis(10));
    }
    // `echo '{"command":"pause"}' | nc -U control.sock` closes its
    // writing half and waits for the answer and the events.
    let mut c = Conn::open(tmp.path());
    assert!(matches!(c.frame(), Frame::Snapshot(_)));
    c.send(br#"{"command":"pause"}"#);
    c.w.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(
        c.frame(),
        Frame::Accepted {
            command: Command::Pause
        }
    );
    thread::sleep(Duration::from_millis(100));
    hub.publish(&Event::Paused);
    assert!(matches!(
        c.frame(),
        Frame::Event {
            event: Event::Paused,
            ..
        }
    ));
    hub.close();
}

#[test]
fn commands_beyond_the_engines_queue_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (tx, commands) = bounded(4);
    let (hub, _) = Hub::start(tmp.path(), String::new(), tx).unwrap();
    let mut c = Conn::open(tmp.path());
    assert!(matches!(c.frame(), Frame::Snapshot(_)));
    for _ in 0..10 {
        c.send(br#"{"command":"decay-lr"}"#);
    }
    let replies: Vec<Frame> = (0..10).map(|_| c.frame()).collect();
    let accepted = replies.iter().filter(|f| matches!(f, Frame::Accepted { .. })).count();
    assert_eq!(accepted, 4, "{replies:?}");
    assert!(replies[4..]
        .iter()
        .all(|f| matches!(f, Frame::Error { message } if message.contains("too many commands"))));
    assert_eq!(commands.try_iter().count(), 4);
    hub.close();
}

#[test]
fn closing_delivers_the_last_event_and_removes_the_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let (hub, _commands) = hub(tmp.path());
    let mut c = Conn::open(tmp.path());
    let Frame::Snapshot(_) = c.frame() else { panic!() };
    hub.publish(&Event::Finished {
        reason: "done".into(),
        test: None,
    });
    hub.close();
    assert!(matches!(
        c.frame(),
        Frame::Event {
            event: Event::Finished { .. },
            ..
        }
    ));
    let mut rest = String::new();
    assert_eq!(c.r.read_line(&mut rest).unwrap(), 0, "not closed: {rest}");
    assert!(!socket_path(tmp.path()).exists());
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_one_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // A dead process's socket: the file stays, nobody accepts.
    drop(UnixListener::bind(socket_path(tmp.path())).unwrap());
    assert!(socket_path(tmp.path()).exists());
    let (tx, _rx) = unbounded();
    let (hub, stale) = Hub::start(tmp.path(), String::new(), tx.clone()).expect("replaces it");
    assert!(stale);
    let err = Hub::start(tmp.path(), String::new(), tx)
        .err()
        .expect("a live socket is kept");
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    let mut c = Conn::open(tmp.path());
    assert!(matches!(c.frame(), Frame::Snapshot(_)));
    hub.close();
}

#[test]
fn long_run_dirs_still_get_a_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("r".repeat(120));
    fs::create_dir(&run).unwrap();
    let (hub, _commands) = hub(&run);
    assert!(socket_path(&run).exists());
    let stream = with_short_path(&socket_path(&run), |p| UnixStream::connect(p)).expect("connects");
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    assert!(line.starts_with(r#"{"frame":"snapshot""#), "{line}");
    hub.close();
}

#[test]
fn snapshots_keep_recent_steps_whole_and_older_ones_evenly_thinned() {
    let mut s = Steps::default();
    let n = 20 * SNAPSHOT_STEPS as u64;
    for i in 0..n {
        let e = step(i);
        s.push((i, Stamped { time: 0.0, event: e }));
    }
    let recent: Vec<u64> = s.recent.iter().map(|(i, _)| *i).collect();
    assert_eq!(recent, (n - SNAPSHOT_STEPS as u64..n).collect::<Vec<_>>());
    let old: Vec<u64> = s.old.iter().map(|(i, _)| *i).collect();
    assert_eq!(old[0], 0, "the run's first step is kept");
    assert!(
        old.len() >= SNAPSHOT_STEPS && old.len() < 2 * SNAPSHOT_STEPS,
        "{}",
        old.len()
    );
    assert!(old.windows(2).all(|w| w[1] - w[0] == s.stride), "uneven spacing");
}
