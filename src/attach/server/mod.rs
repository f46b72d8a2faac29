//! The server inside every training process that leads its run: the
//! engine's observer. The `Hub` keeps the run's history for snapshots
//! (`history`) and fans each event out to the attached clients
//! (`connection`) over the run's control socket (`socket`). Publishing
//! never blocks on a client: each has a bounded queue drained by its own
//! writer thread; a full queue drops step events, and a client that falls
//! behind on any other event is dropped (told so when it can still hear
//! it) and may reconnect for a fresh snapshot.
mod connection;
mod history;
mod socket;
#[cfg(test)]
mod tests;

use crate::control::{Command, Event, Observer};
use connection::Client;
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use history::History;
use socket::Socket;
use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread::{self, JoinHandle},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// How long closing waits for the clients to receive the last events.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Hub {
    socket: Socket,
    commands: Sender<Command>,
    state: Mutex<State>,
    closed: AtomicBool,
    accept: Mutex<Option<JoinHandle<()>>>,
    /// Each writer holds a clone; closing drops this one and waits until
    /// `flushed_rx` disconnects (every writer done).
    flushed: Mutex<Option<Sender<()>>>,
    flushed_rx: Receiver<()>,
}

struct State {
    history: History,
    clients: Vec<Client>,
    next_id: u64,
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
    /// Serves the run's control socket (see `Socket::listen`) for a run of
    /// `config` (TOML), sending the clients' commands to `commands`. The
    /// bool says it replaced a socket a dead process left.
    pub fn start(run: &Path, config: String, commands: Sender<Command>) -> std::io::Result<(Arc<Hub>, bool)> {
        let socket = Socket::listen(run)?;
        let replaced = socket.replaced;
        let (flushed, flushed_rx) = bounded(0);
        let hub = Arc::new(Hub {
            socket,
            commands,
            state: Mutex::new(State {
                history: History::new(config),
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
        Ok((hub, replaced))
    }

    fn accept_loop(self: Arc<Self>) {
        loop {
            let conn = self.socket.listener.accept();
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

    /// Clients attached now.
    #[cfg(test)]
    fn clients(&self) -> usize {
        lock(&self.state).clients.len()
    }
}

impl Observer for Hub {
    /// Records the event and queues it for every client; never blocks.
    fn publish(&self, event: &Event) {
        let time = now();
        let mut st = lock(&self.state);
        st.history.record(time, event);
        if st.clients.is_empty() {
            return;
        }
        let frame = crate::attach::Frame::Event {
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

    /// The run is over: removes the socket, stops accepting, and gives the
    /// clients a moment to receive the last events before their
    /// connections close.
    fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        self.socket.remove();
        self.socket.wake();
        if let Some(t) = lock(&self.accept).take() {
            let _ = t.join();
        }
        lock(&self.state).clients.clear();
        lock(&self.flushed).take();
        let _ = self.flushed_rx.recv_timeout(FLUSH_TIMEOUT);
    }

    /// Nobody new can attach to a process that leaves at once.
    fn abandon(&self) {
        self.socket.remove();
    }
}
