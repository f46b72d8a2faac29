//! A real terminal for the tests: a tmux server of its own, a session
//! running a command, its screen read and keys typed as a person would.
//! (Each test crate that includes it uses a part of it.)
#![allow(dead_code)]
use std::{
    process::Command,
    time::{Duration, Instant},
};

pub struct Tmux {
    socket: String,
    pub session: String,
}

impl Tmux {
    fn tmux(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]);
        c
    }

    /// A `w`x`h` terminal running `cmd` (through the shell).
    pub fn start(name: &str, cmd: &str, w: u16, h: u16) -> Tmux {
        let t = Tmux {
            socket: format!("vggtrain-test-{}-{name}", std::process::id()),
            session: name.into(),
        };
        let ok = t
            .tmux()
            .args(["-f", "/dev/null", "new-session", "-d", "-s", name, "-x"])
            .arg(w.to_string())
            .arg("-y")
            .arg(h.to_string())
            .arg(cmd)
            .env("LANG", "C.UTF-8")
            .env_remove("NO_COLOR")
            .status()
            .expect("tmux runs");
        assert!(ok.success(), "tmux new-session failed");
        t
    }

    pub fn capture(&self) -> String {
        let out = self
            .tmux()
            .args(["capture-pane", "-p", "-t", &self.session])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The pid of the pane's process (the command, if it was `exec`ed).
    pub fn pane_pid(&self) -> u32 {
        let out = self
            .tmux()
            .args(["display-message", "-p", "-t", &self.session, "#{pane_pid}"])
            .output()
            .expect("tmux display-message");
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("a pane pid")
    }

    pub fn keys(&self, keys: &[&str]) {
        let ok = self
            .tmux()
            .args(["send-keys", "-t", &self.session])
            .args(keys)
            .status()
            .expect("tmux send-keys");
        assert!(ok.success());
    }

    /// Polls the screen until `pred` holds; panics with the screen after `secs`.
    pub fn wait_for(&self, what: &str, secs: u64, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.capture();
            if pred(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; screen:\n{s}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self
            .tmux()
            .args(["kill-server"])
            .stderr(std::process::Stdio::null())
            .status();
    }
}
