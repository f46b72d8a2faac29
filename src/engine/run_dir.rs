//! A run's directory: config.toml, metrics.jsonl (one JSON object per
//! event), train.log (the same, for people), checkpoints/, and a pid file
//! while the run is live.
use crate::config::Config;
use crate::control::Event;
use anyhow::{bail, Context, Result};
use std::{
    fs::{self, File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

pub struct RunDir {
    pub path: PathBuf,
    metrics: File,
    log: File,
}

/// "20261127-224901" (UTC).
pub fn timestamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

pub fn default_runs_dir() -> PathBuf {
    crate::data::data_home().join("runs")
}

pub fn runs_dir(cfg: &Config) -> PathBuf {
    cfg.run.runs_dir.clone().unwrap_or_else(default_runs_dir)
}

impl RunDir {
    /// A new run directory; an existing one is never reused.
    pub fn create(cfg: &Config) -> Result<RunDir> {
        let name = cfg.run.name.clone().unwrap_or_else(|| {
            format!(
                "{}-{}-{}",
                timestamp(),
                cfg.model.config.alias(),
                cfg.data.dataset.as_str()
            )
        });
        let path = runs_dir(cfg).join(&name);
        if path.exists() {
            bail!(
                "run directory {} already exists: pick another --name, or --resume it",
                path.display()
            );
        }
        fs::create_dir_all(path.join("checkpoints"))
            .with_context(|| format!("cannot create run directory {}", path.display()))?;
        restrict(&path);
        fs::write(path.join("config.toml"), cfg.to_toml())
            .with_context(|| format!("cannot write {}", path.join("config.toml").display()))?;
        RunDir::open(&path)
    }

    /// An existing run, appended to (resume).
    pub fn open(path: &Path) -> Result<RunDir> {
        let append = |name: &str| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path.join(name))
                .with_context(|| format!("cannot open {}", path.join(name).display()))
        };
        let dir = RunDir {
            path: path.to_owned(),
            metrics: append("metrics.jsonl")?,
            log: append("train.log")?,
        };
        restrict(path);
        fs::write(dir.path.join("pid"), std::process::id().to_string())
            .with_context(|| format!("cannot write {}", dir.path.join("pid").display()))?;
        Ok(dir)
    }

    pub fn checkpoints(&self) -> PathBuf {
        self.path.join("checkpoints")
    }

    /// Appends the event to metrics.jsonl and train.log. A write error (a full
    /// disk) is reported once on stderr-free channels: it must not stop training.
    pub fn record(&mut self, event: &Event) -> std::io::Result<()> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let mut value = serde_json::to_value(event).map_err(std::io::Error::other)?;
        value["time"] = serde_json::json!(now);
        writeln!(self.metrics, "{value}")?;
        if let Some(line) = event.summary() {
            writeln!(self.log, "[{}] {line}", timestamp())?;
        }
        Ok(())
    }

    /// The run is over: no longer live.
    pub fn close(&self) {
        let _ = fs::remove_file(self.path.join("pid"));
    }
}

/// The process leaves at once, with its engine still running (a forced
/// quit): the run is no longer live, and its socket goes.
pub fn abandon(run: &Path) {
    let _ = fs::remove_file(run.join("pid"));
    let _ = fs::remove_file(crate::attach::socket_path(run));
}

/// When a process started, in Unix seconds (Linux's /proc).
fn started_at(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22, in clock ticks after boot; the command name (field 2) may
    // hold spaces, so count from its ')'.
    let ticks: f64 = stat[stat.rfind(')')? + 2..].split_whitespace().nth(19)?.parse().ok()?;
    let boot: f64 = fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| boot + ticks / hz as f64)
}

/// Only the user may read a run (it can hold a control socket).
fn restrict(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
}

/// Whether a run is live and listening for `vggtrain attach`.
pub fn is_attachable(run: &Path) -> bool {
    is_live(run) && crate::attach::socket_path(run).exists()
}

/// Whether a run's process is still alive: the pid file's process, if it
/// started before the file was written (after a crash, a later process may
/// have the same pid).
pub fn is_live(run: &Path) -> bool {
    let file = run.join("pid");
    let Some(pid) = fs::read_to_string(&file)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    else {
        return false;
    };
    if unsafe { libc::kill(pid as i32, 0) } != 0 {
        return false;
    }
    let written = fs::metadata(&file)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64());
    match (started_at(pid), written) {
        // A second of slack for clock-tick rounding.
        (Some(started), Some(written)) => started <= written + 1.0,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn a_run_is_live_only_while_the_process_that_wrote_its_pid_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path();
        assert!(!is_live(run), "no pid file");
        fs::write(run.join("pid"), std::process::id().to_string()).unwrap();
        assert!(is_live(run), "this process");
        // A pid file older than the process with that pid: the pid was reused.
        let f = File::options().write(true).open(run.join("pid")).unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000))
            .unwrap();
        assert!(!is_live(run), "a reused pid");
        fs::write(run.join("pid"), "2147483646").unwrap();
        assert!(!is_live(run), "a process that is gone");
        fs::write(run.join("pid"), "garbage").unwrap();
        assert!(!is_live(run));
    }
}
