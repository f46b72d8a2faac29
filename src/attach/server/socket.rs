//! The control socket's life: made (mode 0600) where a run's socket goes,
//! replacing one a dead process left, refusing one a live process answers
//! on; woken to stop accepting; removed when the run ends or is abandoned.
use crate::attach::{socket_path, with_short_path};
use std::{
    fs, io,
    os::{
        fd::AsRawFd,
        unix::{
            fs::PermissionsExt,
            net::{UnixListener, UnixStream},
        },
    },
    path::{Path, PathBuf},
};

pub(super) struct Socket {
    pub(super) path: PathBuf,
    pub(super) listener: UnixListener,
    /// It replaced a socket left by a dead process.
    pub(super) replaced: bool,
}

impl Socket {
    /// Listens on `<run>/control.sock`.
    pub(super) fn listen(run: &Path) -> io::Result<Socket> {
        let path = socket_path(run);
        let replaced = fs::symlink_metadata(&path).is_ok();
        if replaced {
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
        Ok(Socket {
            path,
            listener,
            replaced,
        })
    }

    /// Removes the socket's file: nobody new can attach.
    pub(super) fn remove(&self) {
        let _ = fs::remove_file(&self.path);
    }

    /// Wakes the accept(2) a thread is blocked in (it then sees the hub
    /// closed).
    pub(super) fn wake(&self) {
        // SAFETY: shutting down a socket this value owns.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
    }
}
