//! The server inside every training process. The engine's sink publishes
//! each event to the `Hub`, which keeps the run's history for snapshots and
//! fans the event out to the attached clients. Publishing never blocks on
//! a client: each has a bounded queue drained by its own writer thread; a
//! full queue drops step events, and a client that falls behind on any
//! other event is dropped (told so when it can still hear it) and may
//! reconnect for a fresh snapshot. A reader thread per client turns its
//! lines into commands for the engine.
use super::{
    parse_command, read_line, socket_path, with_short_path, Frame, Line, RunState, Snapshot, SocketWriter, Stamped,
    MAX_COMMAND_FRAME, PROTOCOL, SNAPSHOT_STEPS,
};
use crate::control::{Command, Event};
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use std::{
    collections::VecDeque,
    fs,
    io::{self, BufReader, BufWriter, Write},
    os::{
        fd::AsRawFd,
        unix::{
            fs::PermissionsExt,
            net::{UnixListener, UnixStream},
        },
    },
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread::{self, JoinHandle},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// Frames queued for a client before it counts as too slow.
const CLIENT_QUEUE: usize = 1024;
/// Clients attached at once.
const MAX_CLIENTS: usize = 32;
/// A client that takes no byte for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long closing waits for the clients to receive the last events.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// Checkpoint, pause, lr-change and log events kept for snapshots.
const NOTES: usize = 500;

pub struct Hub {
    path: PathBuf,
    listener: UnixListener,
    commands: Sender<Command>,
    state: Mutex<State>,
    closed: AtomicBool,
    accept: Mutex<Option<JoinHandle<()>>>,
    /// Each writer holds a clone; closing drops this one and waits until
    /// `flushed_rx` disconnects (every writer done).
    flushed: Mutex<Option<Sender<()>>>,
    flushed_rx: Receiver<()>,
}

struct Client {
    id: u64,
    /// To notice a client that hung up while nothing was published.
    stream: UnixStream,
    queue: Sender<Arc<str>>,
    /// Dropped for being too slow.
    lagged: Arc<AtomicBool>,
}

/// Step events: the newest `SNAPSHOT_STEPS` in full, and every `stride`-th
/// older one (the stride doubles as they pile up).
#[derive(Default)]
struct Steps {
    recent: VecDeque<(u64, Stamped)>,
    old: Vec<(u64, Stamped)>,
    stride: u64,
    aged: u64,
}

impl Steps {
    fn push(&mut self, item: (u64, Stamped)) {
        self.recent.push_back(item);
        if self.recent.len() <= SNAPSHOT_STEPS {
            return;
        }
        let out = self.recent.pop_front().expect("more than SNAPSHOT_STEPS");
        if self.aged.is_multiple_of(self.stride.max(1)) {
            self.old.push(out);
        }
        self.aged += 1;
        if self.old.len() >= 2 * SNAPSHOT_STEPS {
            let mut keep = false;
            self.old.retain(|_| {
                keep = !keep;
                keep
            });
            self.stride = self.stride.max(1) * 2;
        }
    }
}

struct State {
    config: String,
    run_state: RunState,
    seq: u64,
    /// Every event but steps, in order (notes capped at `NOTES`).
    history: Vec<(u64, Stamped)>,
    notes: usize,
    steps: Steps,
    clients: Vec<Client>,
    next_id: u64,
}

/// Events that are neither the run's shape nor its results (a client can
/// cause any number of them).
fn is_note(e: &Event) -> bool {
    !matches!(
        e,
        Event::Started(_) | Event::Epoch(_) | Event::Finished { .. } | Event::Failed { .. }
    )
}

impl State {
    fn record(&mut self, time: f64, event: &Event) {
        self.seq += 1;
        self.run_state = match event {
            Event::Started(_) | Event::Step { .. } if self.run_state == RunState::Starting => RunState::Running,
            Event::Paused => RunState::Paused,
            Event::Resumed => RunState::Running,
            Event::Finished { .. } => RunState::Finished,
            Event::Failed { .. } => RunState::Failed,
            _ => self.run_state,
        };
        let item = (
            self.seq,
            Stamped {
                time,
                event: event.clone(),
            },
        );
        match event {
            Event::Step { .. } => return self.steps.push(item),
            // Only the newest epoch keeps its confusion matrix.
            Event::Epoch(_) => {
                if let Some((
                    _,
                    Stamped {
                        event: Event::Epoch(prev),
                        ..
                    },
                )) = self
                    .history
                    .iter_mut()
                    .rev()
                    .find(|(_, s)| matches!(s.event, Event::Epoch(_)))
                {
                    prev.val.confusion.clear();
                }
            }
            e if is_note(e) => {
                self.notes += 1;
                if self.notes > NOTES {
                    if let Some(i) = self.history.iter().position(|(_, s)| is_note(&s.event)) {
                        self.history.remove(i);
                        self.notes -= 1;
                    }
                }
            }
            _ => {}
        }
        self.history.push(item);
    }

    fn snapshot(&self) -> Snapshot {
        let mut events: Vec<&(u64, Stamped)> = self
            .history
            .iter()
            .chain(&self.steps.old)
            .chain(&self.steps.recent)
            .collect();
        events.sort_by_key(|(seq, _)| *seq);
        Snapshot {
            protocol: PROTOCOL,
            pid: std::process::id(),
            state: self.run_state,
            config: self.config.clone(),
            info: self.history.iter().find_map(|(_, s)| match &s.event {
                Event::Started(info) => Some(info.clone()),
                _ => None,
            }),
            events: events.into_iter().map(|(_, s)| s.clone()).collect(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Hub {
    /// Listens on `<run>/control.sock` (mode 0600). A socket left by a dead
    /// process is replaced (the bool says so); one a live process answers on
    /// is an error.
    pub fn start(run: &Path, config: String, commands: Sender<Command>) -> io::Result<(Arc<Hub>, bool)> {
        let path = socket_path(run);
        let stale = fs::symlink_metadata(&path).is_ok();
        if stale {
            if with_short_path(&path, |p| UnixStream::connect(p)).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is served by another live process", path.display()),
                ));
            }
            fs::remove_file(&path)?;
        }
        let listener = with_short_path(&path, |p| UnixListener::bind(p))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        let (flushed, flushed_rx) = bounded(0);
        let hub = Arc::new(Hub {
            path,
            listener,
            commands,
            state: Mutex::new(State {
                config,
                run_state: RunState::Starting,
                seq: 0,
                history: Vec::new(),
                notes: 0,
                steps: Steps::default(),
                clients: Vec::new(),
                next_id: 0,
            }),
            closed: AtomicBool::new(false),
            accept: Mutex::new(None),
            flushed: Mutex::new(Some(flushed)),
            flushed_rx,
        });
        let h = hub.clone();
        let thread = thread::Builder::new()
            .name("vggtrain-attach".into())
            .spawn(move || h.accept_loop())?;
        *lock(&hub.accept) = Some(thread);
        Ok((hub, stale))
    }

    fn accept_loop(self: Arc<Self>) {
        loop {
            let conn = self.listener.accept();
            if self.closed.load(Ordering::SeqCst) {
                break;
            }
            match conn {
                Ok((stream, _)) => self.add(stream),
                // Out of file descriptors, say: try again a little later.
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn add(self: &Arc<Self>, stream: UnixStream) {
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let refuse = |message: String| {
            let _ = SocketWriter(&stream).write_all(Frame::Error { message }.line().as_bytes());
        };
        let Some(done) = lock(&self.flushed).clone() else {
            return refuse("the run is ending".into());
        };
        let (Ok(write_half), Ok(watch)) = (stream.try_clone(), stream.try_clone()) else {
            return refuse("the server cannot serve this connection".into());
        };
        let (tx, rx) = bounded(CLIENT_QUEUE);
        let lagged = Arc::new(AtomicBool::new(false));
        let joined = {
            let mut st = lock(&self.state);
            st.clients.retain(|c| !peer_gone(&c.stream));
            (st.clients.len() < MAX_CLIENTS).then(|| {
                // Under the lock: the snapshot and the live stream meet
                // exactly (the writer encodes it, off the engine's path).
                let snapshot = st.snapshot();
                let id = st.next_id;
                st.next_id += 1;
                st.clients.push(Client {
                    id,
                    stream: watch,
                    queue: tx,
                    lagged: lagged.clone(),
                });
                (id, snapshot)
            })
        };
        let Some((id, snapshot)) = joined else {
            return refuse(format!("{MAX_CLIENTS} clients are attached already"));
        };
        let spawned = thread::Builder::new()
            .name("vggtrain-client-out".into())
            .spawn(move || write_frames(write_half, snapshot, rx, lagged, done));
        let hub = self.clone();
        if spawned.is_ok() {
            let _ = thread::Builder::new()
                .name("vggtrain-client-in".into())
                .spawn(move || hub.read_commands(stream, id));
        }
    }

    /// A client's lines to commands; each gets an `accepted` or `error` frame.
    fn read_commands(&self, stream: UnixStream, id: u64) {
        let mut r = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            let message = match read_line(&mut r, &mut buf, MAX_COMMAND_FRAME) {
                // A client that only shut its writing half still listens.
                Ok(Line::Eof) if !peer_gone(r.get_ref()) => return,
                Ok(Line::Eof) | Err(_) => return lock(&self.state).clients.retain(|c| c.id != id),
                Ok(Line::TooLong(n)) => {
                    format!("a frame of {n} bytes is over the {MAX_COMMAND_FRAME}-byte limit; ignored")
                }
                Ok(Line::Complete) if buf.iter().all(u8::is_ascii_whitespace) => continue,
                Ok(Line::Complete) => match parse_command(&buf) {
                    Ok(command) => {
                        // Under the lock, so that `accepted` goes out before
                        // the events the command causes.
                        let st = lock(&self.state);
                        let reply = match self.commands.try_send(command.clone()) {
                            Ok(()) => Frame::Accepted { command },
                            Err(TrySendError::Full(_)) => Frame::Error {
                                message: "too many commands are waiting for the engine; this one is dropped".into(),
                            },
                            Err(TrySendError::Disconnected(_)) => Frame::Error {
                                message: "the engine has ended".into(),
                            },
                        };
                        reply_to(&st, id, reply);
                        continue;
                    }
                    Err(message) => message,
                },
            };
            reply_to(&lock(&self.state), id, Frame::Error { message });
        }
    }

    /// Records the event and queues it for every client; never blocks.
    pub fn publish(&self, event: &Event) {
        let time = now();
        let mut st = lock(&self.state);
        st.record(time, event);
        if st.clients.is_empty() {
            return;
        }
        let frame = Frame::Event {
            time,
            event: event.clone(),
        };
        let line: Arc<str> = Arc::from(frame.line());
        let step = matches!(event, Event::Step { .. });
        st.clients.retain(|c| match c.queue.try_send(line.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) if step => true,
            Err(TrySendError::Full(_)) => {
                c.lagged.store(true, Ordering::SeqCst);
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        });
    }

    /// Clients attached now.
    #[cfg(test)]
    fn clients(&self) -> usize {
        lock(&self.state).clients.len()
    }

    /// The run is over: removes the socket, stops accepting, and gives the
    /// clients a moment to receive the last events before their
    /// connections close.
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = fs::remove_file(&self.path);
        // Wakes the accept(2) the accept thread is blocked in.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(t) = lock(&self.accept).take() {
            let _ = t.join();
        }
        lock(&self.state).clients.clear();
        lock(&self.flushed).take();
        let _ = self.flushed_rx.recv_timeout(FLUSH_TIMEOUT);
    }
}

/// Queues a frame for one client (dropped if its queue is full).
fn reply_to(st: &State, id: u64, frame: Frame) {
    if let Some(c) = st.clients.iter().find(|c| c.id == id) {
        let _ = c.queue.try_send(Arc::from(frame.line()));
    }
}

/// Whether the peer closed its end entirely (not only its writing half).
fn peer_gone(s: &UnixStream) -> bool {
    let mut p = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let ready = unsafe { libc::poll(&mut p, 1, 0) };
    ready == 1 && p.revents & (libc::POLLHUP | libc::POLLERR) != 0
}

/// A client's writer: the snapshot, then its queue, to its socket, until
/// either ends.
fn write_frames(
    stream: UnixStream,
    snapshot: Snapshot,
    frames: Receiver<Arc<str>>,
    lagged: Arc<AtomicBool>,
    _done: Sender<()>,
) {
    let mut out = BufWriter::new(SocketWriter(&stream));
    let mut ok = out.write_all(Frame::Snapshot(snapshot).line().as_bytes()).is_ok() && out.flush().is_ok();
    while ok {
        let Ok(line) = frames.recv() else { break };
        ok = out.write_all(line.as_bytes()).is_ok() && (!frames.is_empty() || out.flush().is_ok());
    }
    if ok && lagged.load(Ordering::SeqCst) {
        let message =
            "this client fell too far behind the run's events and was dropped; attach again for a fresh snapshot";
        let _ = out.write_all(
            Frame::Error {
                message: message.into(),
            }
            .line()
            .as_bytes(),
        );
    }
    let _ = out.flush();
    drop(out);
    // Also ends the reader thread's read.
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{EpochStats, EvalResult};
    use crossbeam_channel::unbounded;
    use std::io::{BufRead, BufReader};

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
}
