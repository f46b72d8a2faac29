//! Keys from the terminal, read by a thread of our own.
//!
//! crossterm 0.29's reader spins at 100% CPU once the tty is gone (a closed
//! ssh session, a killed tmux pane): its read loop retries forever on EOF
//! and EIO (crossterm-rs/crossterm#793). This reader polls the tty with
//! `poll(2)`, reports `Input::Closed` on hang-up, EOF or a read error and
//! ends, and turns the bytes into crossterm's `KeyEvent`s itself (the keys a
//! TUI uses: characters, control keys, Enter, Tab, Esc, arrows, paging).
use crossbeam_channel::Sender;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use std::{
    fs::File,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    thread::JoinHandle,
};

/// What the reader thread sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    Key(KeyEvent),
    /// The terminal is gone (hang-up, EOF or a read error); nothing follows.
    Closed,
}

/// How long an incomplete escape sequence waits for its remaining bytes
/// before it counts as what it has (a lone ESC is the Esc key).
const ESC_WAIT_MS: i32 = 30;

/// The reader thread; `stop` ends it.
pub struct Reader {
    stop_tx: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl Reader {
    /// Reads stdin when it is a terminal, else /dev/tty.
    pub fn spawn(tx: Sender<Input>) -> io::Result<Reader> {
        let (tty, owned): (RawFd, Option<File>) = if unsafe { libc::isatty(0) } == 1 {
            (0, None)
        } else {
            let f = File::open("/dev/tty")?;
            (f.as_raw_fd(), Some(f))
        };
        let mut fds = [0; 2];
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let (stop_rx, stop_tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let thread = std::thread::Builder::new()
            .name("vggtrain-input".into())
            .spawn(move || {
                super::register_ui_thread();
                read_loop(tty, stop_rx.as_raw_fd(), &tx);
                drop(owned);
                drop(stop_rx);
            })?;
        Ok(Reader {
            stop_tx: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Ends the thread (closing the pipe wakes its poll) and waits for it.
    pub fn stop(mut self) {
        self.stop_tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop_tx.take();
    }
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn read_loop(tty: RawFd, stop: RawFd, tx: &Sender<Input>) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 1024];
    let send_keys = |keys: Vec<KeyEvent>| keys.into_iter().all(|k| tx.send(Input::Key(k)).is_ok());
    loop {
        let mut fds = [
            libc::pollfd {
                fd: tty,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let timeout = if pending.is_empty() { -1 } else { ESC_WAIT_MS };
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            let _ = tx.send(Input::Closed);
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        if n == 0 {
            // The rest of an escape sequence never came.
            let (keys, _) = parse(&pending, true);
            pending.clear();
            if !send_keys(keys) {
                return;
            }
            continue;
        }
        let rev = fds[0].revents;
        if rev & libc::POLLIN != 0 {
            let r = unsafe { libc::read(tty, buf.as_mut_ptr().cast(), buf.len()) };
            if r < 0 {
                let e = errno();
                if e == libc::EINTR || e == libc::EAGAIN {
                    continue;
                }
                let _ = tx.send(Input::Closed);
                return;
            }
            if r == 0 {
                let _ = tx.send(Input::Closed);
                return;
            }
            pending.extend_from_slice(&buf[..r as usize]);
            let (keys, used) = parse(&pending, false);
            pending.drain(..used);
            if !send_keys(keys) {
                return;
            }
        } else if rev & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            let _ = tx.send(Input::Closed);
            return;
        }
    }
}

fn key(code: KeyCode, m: KeyModifiers) -> KeyEvent {
    KeyEvent::new(code, m)
}

/// Keys in `bytes` and how many bytes they used; an incomplete sequence at
/// the end is left for more bytes unless `flush`, when it counts as what it
/// has (ESC alone is Esc, ESC + byte is Alt + key). Unknown sequences are
/// consumed and dropped.
pub fn parse(bytes: &[u8], flush: bool) -> (Vec<KeyEvent>, usize) {
    let mut keys = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match parse_one(&bytes[i..], flush) {
            Parsed::Key(k, n) => {
                keys.push(k);
                i += n;
            }
            Parsed::Skip(n) => i += n,
            Parsed::Incomplete => break,
        }
    }
    (keys, i)
}

enum Parsed {
    Key(KeyEvent, usize),
    Skip(usize),
    Incomplete,
}

fn parse_one(b: &[u8], flush: bool) -> Parsed {
    let none = KeyModifiers::NONE;
    match b[0] {
        0x1b => match b.get(1) {
            None if flush => Parsed::Key(key(KeyCode::Esc, none), 1),
            None => Parsed::Incomplete,
            Some(b'[') => csi(b, flush),
            Some(b'O') => match b.get(2) {
                None if flush => Parsed::Key(key(KeyCode::Char('O'), KeyModifiers::ALT | KeyModifiers::SHIFT), 2),
                None => Parsed::Incomplete,
                Some(&c) => {
                    let code = match c {
                        b'P'..=b'S' => Some(KeyCode::F(c - b'P' + 1)),
                        _ => cursor_key(c),
                    };
                    match code {
                        Some(code) => Parsed::Key(key(code, none), 3),
                        None => Parsed::Skip(3),
                    }
                }
            },
            Some(0x1b) => Parsed::Key(key(KeyCode::Esc, none), 1),
            Some(_) => match parse_one(&b[1..], flush) {
                Parsed::Key(mut k, n) => {
                    k.modifiers |= KeyModifiers::ALT;
                    Parsed::Key(k, n + 1)
                }
                Parsed::Skip(n) => Parsed::Skip(n + 1),
                Parsed::Incomplete => Parsed::Incomplete,
            },
        },
        b'\r' | b'\n' => Parsed::Key(key(KeyCode::Enter, none), 1),
        b'\t' => Parsed::Key(key(KeyCode::Tab, none), 1),
        0x7f | 0x08 => Parsed::Key(key(KeyCode::Backspace, none), 1),
        0x00 => Parsed::Key(key(KeyCode::Char(' '), KeyModifiers::CONTROL), 1),
        c @ 0x01..=0x1a => Parsed::Key(key(KeyCode::Char((c - 1 + b'a') as char), KeyModifiers::CONTROL), 1),
        c @ 0x1c..=0x1f => Parsed::Key(key(KeyCode::Char((c - 0x1c + b'4') as char), KeyModifiers::CONTROL), 1),
        c if c.is_ascii() => {
            let ch = c as char;
            let m = if ch.is_ascii_uppercase() {
                KeyModifiers::SHIFT
            } else {
                none
            };
            Parsed::Key(key(KeyCode::Char(ch), m), 1)
        }
        c => {
            // UTF-8: the lead byte gives the length.
            let len = match c {
                0xc0..=0xdf => 2,
                0xe0..=0xef => 3,
                0xf0..=0xf7 => 4,
                _ => return Parsed::Skip(1),
            };
            if b.len() < len {
                return if flush {
                    Parsed::Skip(b.len())
                } else {
                    Parsed::Incomplete
                };
            }
            match std::str::from_utf8(&b[..len]).ok().and_then(|s| s.chars().next()) {
                Some(ch) => Parsed::Key(key(KeyCode::Char(ch), none), len),
                None => Parsed::Skip(1),
            }
        }
    }
}

/// ESC [ params final.
fn csi(b: &[u8], flush: bool) -> Parsed {
    let mut end = None;
    for (i, &c) in b.iter().enumerate().skip(2) {
        match c {
            0x20..=0x3f => continue,
            0x40..=0x7e => {
                end = Some(i);
                break;
            }
            // Not a CSI sequence after all: drop ESC [.
            _ => return Parsed::Skip(2),
        }
    }
    let Some(end) = end else {
        return if flush {
            Parsed::Key(key(KeyCode::Char('['), KeyModifiers::ALT), 2)
        } else {
            Parsed::Incomplete
        };
    };
    let params = std::str::from_utf8(&b[2..end]).unwrap_or("");
    let mut nums = params.split(';').map(|p| p.parse::<u8>().unwrap_or(1));
    let first = nums.next().unwrap_or(1);
    let mods = nums.next().map(modifiers).unwrap_or(KeyModifiers::NONE);
    let code = match b[end] {
        c @ (b'A' | b'B' | b'C' | b'D' | b'H' | b'F') => cursor_key(c),
        b'Z' => return Parsed::Key(key(KeyCode::BackTab, KeyModifiers::SHIFT), end + 1),
        b'~' => match first {
            1 | 7 => Some(KeyCode::Home),
            2 => Some(KeyCode::Insert),
            3 => Some(KeyCode::Delete),
            4 | 8 => Some(KeyCode::End),
            5 => Some(KeyCode::PageUp),
            6 => Some(KeyCode::PageDown),
            _ => None,
        },
        _ => None,
    };
    match code {
        Some(code) if !params.starts_with(['<', '?', '>']) => Parsed::Key(key(code, mods), end + 1),
        _ => Parsed::Skip(end + 1),
    }
}

/// xterm's modifier parameter: 1 + (shift 1 | alt 2 | ctrl 4).
fn modifiers(p: u8) -> KeyModifiers {
    let bits = p.saturating_sub(1);
    let mut m = KeyModifiers::NONE;
    if bits & 1 != 0 {
        m |= KeyModifiers::SHIFT;
    }
    if bits & 2 != 0 {
        m |= KeyModifiers::ALT;
    }
    if bits & 4 != 0 {
        m |= KeyModifiers::CONTROL;
    }
    m
}

/// The final byte of an arrow, Home or End sequence (after `ESC [` or `ESC O`).
fn cursor_key(c: u8) -> Option<KeyCode> {
    match c {
        b'A' => Some(KeyCode::Up),
        b'B' => Some(KeyCode::Down),
        b'C' => Some(KeyCode::Right),
        b'D' => Some(KeyCode::Left),
        b'H' => Some(KeyCode::Home),
        b'F' => Some(KeyCode::End),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(bytes: &[u8], flush: bool) -> (Vec<(KeyCode, KeyModifiers)>, usize) {
        let (keys, n) = parse(bytes, flush);
        (keys.into_iter().map(|k| (k.code, k.modifiers)).collect(), n)
    }

    const N: KeyModifiers = KeyModifiers::NONE;

    #[test]
    fn plain_and_control_keys() {
        let (k, n) = codes(b"p d\x03\r\t?Q", false);
        assert_eq!(n, 8);
        assert_eq!(
            k,
            vec![
                (KeyCode::Char('p'), N),
                (KeyCode::Char(' '), N),
                (KeyCode::Char('d'), N),
                (KeyCode::Char('c'), KeyModifiers::CONTROL),
                (KeyCode::Enter, N),
                (KeyCode::Tab, N),
                (KeyCode::Char('?'), N),
                (KeyCode::Char('Q'), KeyModifiers::SHIFT),
            ]
        );
    }

    #[test]
    fn escape_sequences() {
        let (k, n) = codes(
            b"\x1b[A\x1b[B\x1bOC\x1b[D\x1b[5~\x1b[6~\x1b[Z\x1b[1;5A\x1b[H\x1b[4~",
            false,
        );
        assert_eq!(n, 36);
        assert_eq!(
            k,
            vec![
                (KeyCode::Up, N),
                (KeyCode::Down, N),
                (KeyCode::Right, N),
                (KeyCode::Left, N),
                (KeyCode::PageUp, N),
                (KeyCode::PageDown, N),
                (KeyCode::BackTab, KeyModifiers::SHIFT),
                (KeyCode::Up, KeyModifiers::CONTROL),
                (KeyCode::Home, N),
                (KeyCode::End, N),
            ]
        );
    }

    #[test]
    fn lone_escape_waits_then_counts_as_esc() {
        assert_eq!(codes(b"\x1b", false), (vec![], 0));
        assert_eq!(codes(b"\x1b", true), (vec![(KeyCode::Esc, N)], 1));
        assert_eq!(codes(b"\x1b[", false), (vec![], 0));
        assert_eq!(codes(b"q\x1b[1;", false), (vec![(KeyCode::Char('q'), N)], 1));
        assert_eq!(
            codes(b"\x1b\x1b[A", false),
            (vec![(KeyCode::Esc, N), (KeyCode::Up, N)], 4)
        );
        assert_eq!(
            codes(b"\x1bn", false),
            (vec![(KeyCode::Char('n'), KeyModifiers::ALT)], 2)
        );
    }

    #[test]
    fn utf8_and_unknown_sequences() {
        assert_eq!(codes("é".as_bytes(), false), (vec![(KeyCode::Char('é'), N)], 2));
        assert_eq!(codes(&"é".as_bytes()[..1], false), (vec![], 0));
        // Mouse reports and focus events are dropped.
        assert_eq!(
            codes(b"\x1b[<0;3;4M\x1b[Ip", false),
            (vec![(KeyCode::Char('p'), N)], 13)
        );
    }
}
