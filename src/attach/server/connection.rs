//! One attached client: its bounded queue of frames drained by a writer
//! thread (the snapshot first), and a reader thread that turns its lines
//! into commands for the engine, each answered `accepted` or `error`.
use super::{lock, Hub, State};
use crate::attach::{parse_command, read_line, Frame, Line, Snapshot, SocketWriter, MAX_COMMAND_FRAME};
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use std::{
    io::{BufReader, BufWriter, Write},
    os::{fd::AsRawFd, unix::net::UnixStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

/// Frames queued for a client before it counts as too slow.
const CLIENT_QUEUE: usize = 1024;
/// Clients attached at once.
pub(super) const MAX_CLIENTS: usize = 32;
/// A client that takes no byte for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) struct Client {
    id: u64,
    /// To notice a client that hung up while nothing was published.
    stream: UnixStream,
    pub(super) queue: Sender<Arc<str>>,
    /// Dropped for being too slow.
    pub(super) lagged: Arc<AtomicBool>,
}

impl Hub {
    /// Serves a new connection: its snapshot, then the live events, and its
    /// commands; refused (told why) when the hub is full or closing.
    pub(super) fn add(self: &Arc<Self>, stream: UnixStream) {
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
                let snapshot = st.history.snapshot();
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
