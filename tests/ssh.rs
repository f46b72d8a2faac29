//! The route vggtrain's users take every day, for real: SSH in and start a
//! run with the TUI, lose the connection, come back and attach, steer it,
//! detach, and stop it from another session. Debian's OpenSSH server runs
//! on 127.0.0.1 (a free port, its own host key, a user key made here), and
//! the client runs in tmux as a person would type it.
use std::{
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

mod common;
#[path = "common/tmux.rs"]
mod tmux;

use common::{have_data, require, wait_until};
use tmux::Tmux;

/// An sshd of the test's own, stopped when dropped.
struct Sshd {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    user: String,
}

impl Sshd {
    fn start() -> Sshd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for key in ["host", "user"] {
            let ok = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(d.join(key))
                .status()
                .unwrap();
            assert!(ok.success(), "ssh-keygen");
        }
        std::fs::copy(d.join("user.pub"), d.join("authorized_keys")).unwrap();
        // sshd's privilege separation directory.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nAuthorizedKeysFile {keys}\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
             PermitRootLogin prohibit-password\nPidFile {pid}\nPrintMotd no\nPrintLastLog no\n",
            host = d.join("host").display(),
            keys = d.join("authorized_keys").display(),
            pid = d.join("sshd.pid").display(),
        );
        std::fs::write(d.join("sshd_config"), config).unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stderr(std::fs::File::create(d.join("sshd.log")).unwrap())
            .spawn()
            .expect("sshd starts");
        wait_until("sshd to listen", 30, || TcpStream::connect(("127.0.0.1", port)).is_ok());
        let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
        Sshd {
            child,
            dir,
            port,
            user: user.trim().to_owned(),
        }
    }

    /// A shell command line that logs in with a terminal (`ssh -tt`) and
    /// runs `remote` there.
    fn ssh(&self, remote: &str) -> String {
        format!(
            "ssh -tt -p {} -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR {}@127.0.0.1 '{remote}'",
            self.port,
            self.dir.path().join("user").display(),
            self.user
        )
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn have_ssh() -> bool {
    have_data()
        && require(
            Path::new("/usr/sbin/sshd").is_file()
                && Command::new("ssh").arg("-V").stderr(Stdio::null()).status().is_ok()
                && Command::new("tmux").arg("-V").stdout(Stdio::null()).status().is_ok(),
            "OpenSSH's server and client, and tmux",
            "apt-get install openssh-server openssh-client tmux",
        )
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rfind(')').and_then(|i| s[i + 2..].chars().next()) != Some('Z'))
        .unwrap_or(false)
}

fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
                .map(|s| s.trim().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn steps_logged(run: &Path) -> usize {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
        .matches("\"event\":\"step\"")
        .count()
}

fn header(screen: &str) -> String {
    screen.lines().take(4).collect::<Vec<_>>().join("\n")
}

/// Ends a trainer a failed test leaves behind.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if alive(self.0) {
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
}

/// The exit code of `pid`, a process orphaned to this one (the test is its
/// subreaper), once it ends.
fn exit_code(pid: u32, secs: u64) -> i32 {
    let mut status = 0;
    wait_until("the trainer to exit", secs, || {
        let got = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
        assert!(
            got >= 0,
            "the trainer is no child of the test: {}",
            std::io::Error::last_os_error()
        );
        got == pid as i32
    });
    assert!(libc::WIFEXITED(status), "the trainer ended by a signal: {status}");
    libc::WEXITSTATUS(status)
}

/// `vggtrain attach RUN` in a new SSH session of `w`x`h`, the exit code
/// printed after it (and the shell kept, to see the restored terminal).
fn attach_over_ssh(sshd: &Sshd, run: &Path, name: &str, w: u16, h: u16) -> Tmux {
    let remote = format!(
        "LANG=C.UTF-8 {} attach {}; echo ATTACH-EXIT=$?",
        env!("CARGO_BIN_EXE_vggtrain"),
        run.display()
    );
    let t = Tmux::start(name, &format!("{}; sleep 600", sshd.ssh(&remote)), w, h);
    t.wait_for("the attached TUI", 120, |s| {
        s.contains("vggtrain (attached)") && s.contains("route") && s.contains("img/s")
    });
    t
}

#[test]
fn over_ssh_a_dropped_connection_leaves_the_run_which_attach_steers_and_stops() {
    if !have_ssh() {
        return;
    }
    // The trainer outlives its SSH session: orphaned, it becomes this
    // test's child, whose exit code the test can read.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }, 0);
    let sshd = Sshd::start();
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path();
    let run: PathBuf = runs.join("route");

    // 1. ssh in and start a run with the TUI, on an 80x24 terminal.
    let remote = format!(
        "LANG=C.UTF-8 exec {} train --model A --width 8 --subset 2000 --epochs 1000 --batch-size 64 --device cpu --set train.patience=1000 --set train.threads=1 --set data.val-size=256 --set data.test-subset=256 --runs-dir {} --name route",
        env!("CARGO_BIN_EXE_vggtrain"),
        runs.display()
    );
    let first = Tmux::start("first", &format!("exec {}", sshd.ssh(&remote)), 80, 24);
    let s = first.wait_for("the TUI over SSH", 300, |s| {
        s.contains("epoch 1/1000") && s.contains("img/s")
    });
    assert!(!s.contains("no validation yet:"), "a sentence cut off at 80x24:\n{s}");
    wait_until("the pid file", 60, || run.join("pid").is_file());
    let pid: u32 = std::fs::read_to_string(run.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _kill = KillOnDrop(pid);
    first.wait_for("an epoch's validation", 300, |s| s.contains("epoch 1 val"));

    // 2. The client dies without a goodbye: the run goes on, headless.
    let client = first.pane_pid();
    unsafe { libc::kill(client as i32, libc::SIGKILL) };
    wait_until("the trainer's terminal to go", 60, || {
        !thread_names(pid).iter().any(|n| n == "vggtrain-input")
    });
    assert!(alive(pid), "the run died with its connection");
    let steps = steps_logged(&run);
    wait_until("the metrics to grow", 120, || steps_logged(&run) > steps + 2);
    let newest = vggtrain::engine::checkpoint::newest(&run).expect("a checkpoint that loads");

    // 3. A new session attaches (200x60): the live run with its history;
    // p pauses it, q detaches, the run goes on.
    let second = attach_over_ssh(&sshd, &run, "second", 200, 60);
    second.keys(&["p"]);
    second.wait_for("the engine to confirm the pause", 120, |s| {
        header(s).contains("paused") && !s.contains("pausing")
    });
    let s = second.capture();
    assert!(
        s.contains(" val top-1 ") && s.contains("checkpoint saved (epoch)"),
        "no history:\n{s}"
    );
    second.keys(&["q"]);
    let s = second.wait_for("attach to exit", 60, |s| s.contains("ATTACH-EXIT=0"));
    assert!(
        !s.contains("vggtrain (attached)"),
        "the terminal was not restored:\n{s}"
    );
    assert!(alive(pid), "detaching ended the run");

    // 4. Another session stops the run: x, then Enter saves and stops; the
    // trainer exits 0 and the terminal is restored.
    let third = attach_over_ssh(&sshd, &run, "third", 80, 24);
    third.keys(&["x"]);
    third.wait_for("the stop dialog", 60, |s| s.contains("Stop the run"));
    third.keys(&["Enter"]);
    assert_eq!(exit_code(pid, 120), 0);
    let s = third.wait_for("attach to exit", 60, |s| s.contains("ATTACH-EXIT=0"));
    assert!(
        !s.contains("vggtrain (attached)"),
        "the terminal was not restored:\n{s}"
    );
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"reason\":\"stopped by the user\""), "{metrics}");
    let last = vggtrain::engine::checkpoint::newest(&run).expect("the stop's checkpoint");
    assert!(last.path != newest.path, "the stop saved no checkpoint");
    assert!(!run.join("pid").exists() && !run.join("control.sock").exists());
}
