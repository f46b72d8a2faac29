//! Attaching to a running training process over a Unix domain socket in its
//! run directory (`<run>/control.sock`, mode 0600 in a 0700 directory).
//!
//! The protocol is newline-delimited JSON. The server (`server::Hub`, inside
//! every training process) first sends a `snapshot` frame, then one `event`
//! frame per engine event; a client sends `Command` objects
//! (`{"command":"pause"}`), each answered by an `accepted` or an `error`
//! frame. See README.md ("Attaching to a run") for examples.
pub mod client;
pub mod server;

use crate::control::{Command, Event, Observe, RunInfo};
use serde::{Deserialize, Serialize};
use std::{
    fs::File,
    io::{self, BufRead, Write},
    os::{fd::AsRawFd, unix::net::UnixStream},
    path::{Path, PathBuf},
};

/// The socket's name in the run directory.
pub const SOCKET: &str = "control.sock";
/// Bumped when a frame changes incompatibly.
pub const PROTOCOL: u32 = 1;
/// The longest command frame a server reads (a command is ~50 bytes).
pub const MAX_COMMAND_FRAME: usize = 64 * 1024;
/// Step events a snapshot carries, the newest ones in full (older ones
/// thinned, so the whole run's loss curve survives).
pub const SNAPSHOT_STEPS: usize = 2048;
/// The command names a server knows.
pub const COMMANDS: [&str; 6] = ["pause", "resume", "decay-lr", "set-lr", "save-checkpoint", "stop"];

pub fn socket_path(run: &Path) -> PathBuf {
    run.join(SOCKET)
}

/// The attach server as the engine's observer (`engine::Start::observer`).
/// Attaching is a convenience: a run starts without it, and says why.
pub fn observe() -> Observe {
    Box::new(
        |run, config, commands| match server::Hub::start(run, config, commands) {
            Ok((hub, replaced)) => {
                let notes = replaced
                    .then(|| "replaced the control socket left by an earlier process of this run".to_owned())
                    .into_iter()
                    .collect();
                (Some(hub as _), notes)
            }
            Err(e) => (
                None,
                vec![format!(
                    "warning: attaching is off for this run: cannot listen on {}: {e}",
                    socket_path(run).display()
                )],
            ),
        },
    )
}

/// Whether a run is live and listening for `vggtrain attach`.
pub fn is_attachable(run: &Path) -> bool {
    crate::engine::run_dir::is_live(run) && socket_path(run).exists()
}

/// What the run is doing, as far as its events tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    Starting,
    Running,
    Paused,
    Finished,
    Failed,
}

/// An event and when it happened (seconds since the Unix epoch).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stamped {
    pub time: f64,
    pub event: Event,
}

/// The run so far, sent once on connect.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub protocol: u32,
    pub pid: u32,
    pub state: RunState,
    /// The run's effective configuration (TOML).
    pub config: String,
    /// The run's summary (None while the data loads).
    pub info: Option<RunInfo>,
    /// The run's history in order: every event but steps (epochs with
    /// per-class accuracy, lr changes, checkpoints, pauses, logs; only the
    /// newest epoch keeps its confusion matrix), and the recent step events.
    pub events: Vec<Stamped>,
}

impl Snapshot {
    /// Where the run trains (None until it has started, or when its
    /// description names no device).
    pub fn device(&self) -> Option<tch::Device> {
        crate::device::described(&self.info.as_ref()?.device)
    }
}

/// One line from the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "frame", rename_all = "kebab-case")]
pub enum Frame {
    Snapshot(Snapshot),
    Event {
        time: f64,
        event: Event,
    },
    /// A command was passed to the engine (its effect arrives as events).
    Accepted {
        command: Command,
    },
    /// A frame was refused, or the server is dropping this client.
    Error {
        message: String,
    },
}

impl Frame {
    /// The frame as one line, newline included.
    pub fn line(&self) -> String {
        let mut s = serde_json::to_string(self)
            .unwrap_or_else(|e| format!(r#"{{"frame":"error","message":"cannot encode a frame: {e}"}}"#));
        s.push('\n');
        s
    }
}

/// A client's line as a command, or the reason it is refused.
pub fn parse_command(line: &[u8]) -> Result<Command, String> {
    let text = std::str::from_utf8(line).map_err(|_| "the frame is not UTF-8".to_owned())?;
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("malformed JSON: {e}"))?;
    let name = value
        .get("command")
        .and_then(|c| c.as_str())
        .map(str::to_owned)
        .ok_or_else(|| r#"expected an object with a "command" field, e.g. {"command":"pause"}"#.to_owned())?;
    if !COMMANDS.contains(&name.as_str()) {
        return Err(format!("unknown command `{name}`; known: {}", COMMANDS.join(", ")));
    }
    let command: Command = serde_json::from_value(value).map_err(|e| format!("bad `{name}` command: {e}"))?;
    match command {
        Command::SetLr { lr } if !(lr.is_finite() && lr > 0.0) => {
            Err(format!("bad `set-lr` command: lr must be a positive number, not {lr}"))
        }
        c => Ok(c),
    }
}

/// Writes to a socket without SIGPIPE: a vanished peer is an EPIPE error,
/// never the end of the process.
pub struct SocketWriter<'a>(pub &'a UnixStream);

impl Write for SocketWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for `buf.len()` bytes; the fd is open.
        let n = unsafe { libc::send(self.0.as_raw_fd(), buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How `read_line` ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A line is in the buffer (without its newline).
    Complete,
    /// A line of this many bytes was over the limit and skipped.
    TooLong(usize),
    Eof,
}

/// Reads one line of at most `max` bytes into `buf`; a longer line is read
/// to its end and dropped, never held in memory.
pub fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>, max: usize) -> io::Result<Line> {
    buf.clear();
    let (mut seen, mut too_long) = (0usize, false);
    loop {
        let chunk = match r.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(match (seen, too_long) {
                (0, _) => Line::Eof,
                (n, true) => Line::TooLong(n),
                _ => Line::Complete,
            });
        }
        let newline = chunk.iter().position(|&b| b == b'\n');
        let part = &chunk[..newline.unwrap_or(chunk.len())];
        seen += part.len();
        if !too_long && buf.len() + part.len() > max {
            too_long = true;
            buf.clear();
        }
        if !too_long {
            buf.extend_from_slice(part);
        }
        let used = newline.map_or(chunk.len(), |i| i + 1);
        r.consume(used);
        if newline.is_some() {
            return Ok(if too_long { Line::TooLong(seen) } else { Line::Complete });
        }
    }
}

/// Runs `f` on a path the socket calls accept: one longer than `sun_path`
/// (108 bytes) is reached through /proc/self/fd and its directory.
fn with_short_path<T>(path: &Path, f: impl FnOnce(&Path) -> io::Result<T>) -> io::Result<T> {
    if path.as_os_str().len() < 100 {
        return f(path);
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return f(path);
    };
    let dir = File::open(dir)?;
    f(&Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_command_parses_and_bad_ones_say_why() {
        for (line, want) in [
            (r#"{"command":"pause"}"#, Command::Pause),
            (r#"{"command":"resume"}"#, Command::Resume),
            (r#"{"command":"decay-lr"}"#, Command::DecayLr),
            (r#"{"command":"set-lr","lr":0.001}"#, Command::SetLr { lr: 0.001 }),
            (r#"{"command":"save-checkpoint"}"#, Command::SaveCheckpoint),
            (r#"{"command":"stop","save":false}"#, Command::Stop { save: false }),
            (r#"{"command":"stop"}"#, Command::Stop { save: true }),
        ] {
            assert_eq!(parse_command(line.as_bytes()), Ok(want.clone()));
            let name = serde_json::to_value(&want).unwrap()["command"]
                .as_str()
                .unwrap()
                .to_owned();
            assert!(COMMANDS.contains(&name.as_str()), "{name} missing from COMMANDS");
        }
        assert_eq!(COMMANDS.len(), 6);
        let err = |l: &str| parse_command(l.as_bytes()).unwrap_err();
        assert!(err("{nope").starts_with("malformed JSON"), "{}", err("{nope"));
        assert!(err(r#"{"command":"explode"}"#).contains("unknown command `explode`"));
        assert!(err(r#"[1,2]"#).contains(r#""command" field"#));
        assert!(err(r#"{"command":"set-lr","lr":-1}"#).contains("positive"));
        assert!(err(r#"{"command":"set-lr"}"#).contains("missing field `lr`"));
        assert!(parse_command(b"\xff\xfe").unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn lines_over_the_limit_are_skipped_whole() {
        let data = format!("short\n{}\nnext\nlast", "x".repeat(100));
        let mut r = io::BufReader::with_capacity(8, data.as_bytes());
        let mut buf = Vec::new();
        assert_eq!(read_line(&mut r, &mut buf, 10).unwrap(), Line::Complete);
        assert_eq!(buf, b"short");
        assert_eq!(read_line(&mut r, &mut buf, 10).unwrap(), Line::TooLong(100));
        assert!(buf.is_empty());
        assert_eq!(read_line(&mut r, &mut buf, 10).unwrap(), Line::Complete);
        assert_eq!(buf, b"next");
        assert_eq!(read_line(&mut r, &mut buf, 10).unwrap(), Line::Complete);
        assert_eq!(buf, b"last");
        assert_eq!(read_line(&mut r, &mut buf, 10).unwrap(), Line::Eof);
    }

    #[test]
    fn frames_round_trip_as_single_lines() {
        let frames = [
            Frame::Event {
                time: 1.5,
                event: Event::Step {
                    epoch: 1,
                    step: 2,
                    global_step: 2,
                    loss: f64::NAN,
                    lr: 0.01,
                    images_per_sec: 10.0,
                },
            },
            Frame::Accepted {
                command: Command::Pause,
            },
            Frame::Error { message: "a\nb".into() },
        ];
        for f in frames {
            let line = f.line();
            assert_eq!(line.matches('\n').count(), 1, "{line}");
            let back: Frame = serde_json::from_str(&line).unwrap();
            // NaN != NaN: compare the encodings.
            assert_eq!(back.line(), line);
        }
    }
}
