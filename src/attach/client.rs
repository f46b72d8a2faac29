//! The client side: connects to a run's socket, reads its snapshot, and
//! then turns frames into `Event`s and `Command`s into lines, each on a
//! thread of its own, so that the TUI sees the same channels as in-process.
use super::{read_line, socket_path, with_short_path, Frame, Line, Snapshot, SocketWriter, PROTOCOL};
use crate::control::{Command, Event};
use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::{unbounded, Receiver, Sender};
use std::{
    io::{self, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    thread,
    time::Duration,
};

/// The longest frame a client reads (a snapshot of a 1000-class run).
const MAX_SERVER_FRAME: usize = 1 << 30;
/// How long the server may take to send its snapshot.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a command may take to go out.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Connection {
    pub snapshot: Snapshot,
    /// Closes when the connection does (the run ended, or was lost).
    pub events: Receiver<Event>,
    pub commands: Sender<Command>,
    writer: thread::JoinHandle<()>,
}

impl Connection {
    /// Sends the commands still queued, then hangs up.
    pub fn close(self) {
        drop(self.commands);
        let _ = self.writer.join();
    }
}

/// Connects to the run in `run`, with errors that say what to do.
pub fn connect(run: &Path) -> Result<Connection> {
    let path = socket_path(run);
    let stream = with_short_path(&path, |p| UnixStream::connect(p)).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => anyhow!(
            "{} has no control socket: the run is not running (see `vggtrain runs`)",
            run.display()
        ),
        io::ErrorKind::ConnectionRefused => anyhow!(
            "nobody answers on {}: the process that ran it is gone; resume it with `vggtrain train --resume {}`",
            path.display(),
            run.display()
        ),
        _ => anyhow!("cannot connect to {}: {e}", path.display()),
    })?;
    stream.set_read_timeout(Some(SNAPSHOT_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut buf = Vec::new();
    let first = read_line(&mut reader, &mut buf, MAX_SERVER_FRAME)
        .with_context(|| format!("no snapshot from {}", path.display()))?;
    if first != Line::Complete {
        bail!("{} closed the connection before sending a snapshot", path.display());
    }
    let snapshot = match serde_json::from_slice::<Frame>(&buf) {
        Ok(Frame::Snapshot(s)) => s,
        Ok(Frame::Error { message }) => bail!("{} refused the connection: {message}", path.display()),
        _ => bail!(
            "{} is not a vggtrain control socket (its first line is no snapshot)",
            path.display()
        ),
    };
    if snapshot.protocol != PROTOCOL {
        bail!(
            "the run speaks attach protocol {}, this vggtrain speaks {PROTOCOL}: attach with the vggtrain that runs it",
            snapshot.protocol
        );
    }
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let (ev_tx, ev_rx) = unbounded();
    let (cmd_tx, cmd_rx) = unbounded::<Command>();
    thread::Builder::new()
        .name("vggtrain-attach-in".into())
        .spawn(move || read_events(reader, ev_tx))?;
    let writer = thread::Builder::new()
        .name("vggtrain-attach-out".into())
        .spawn(move || {
            let mut out = SocketWriter(&stream);
            for c in cmd_rx {
                let line = serde_json::to_string(&c).unwrap_or_default() + "\n";
                if out.write_all(line.as_bytes()).is_err() {
                    break;
                }
            }
            // Hangs up (the reader thread holds the same connection).
            let _ = stream.shutdown(std::net::Shutdown::Both);
        })?;
    Ok(Connection {
        snapshot,
        events: ev_rx,
        commands: cmd_tx,
        writer,
    })
}

/// Frames to events until the connection ends; the server's error frames
/// become warnings in the event log.
fn read_events(mut r: BufReader<UnixStream>, tx: Sender<Event>) {
    let mut buf = Vec::new();
    while let Ok(Line::Complete | Line::TooLong(_)) = read_line(&mut r, &mut buf, MAX_SERVER_FRAME) {
        let event = match serde_json::from_slice::<Frame>(&buf) {
            Ok(Frame::Event { event, .. }) => event,
            Ok(Frame::Error { message }) => Event::Log {
                message: format!("warning: the run says: {message}"),
            },
            Ok(Frame::Accepted { .. } | Frame::Snapshot(_)) => continue,
            Err(e) => Event::Log {
                message: format!("warning: an unreadable frame from the run: {e}"),
            },
        };
        if tx.send(event).is_err() {
            break;
        }
    }
}
