//! A run's directory: config.toml, the recorders' files (metrics.jsonl,
//! train.log, summary.csv, tensorboard/: see `crate::record`),
//! checkpoints/, and a pid file while the run is live.
use crate::config::Config;
use crate::control::Event;
use crate::record::{self, Recorders};
use anyhow::{bail, Context, Result};
use std::{
    fs::{self, File, OpenOptions},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

pub struct RunDir {
    pub path: PathBuf,
    recorders: Recorders,
    /// Holds the run's lock while this process trains it (none on the
    /// ranks that follow rank 0's lead).
    lock: Option<File>,
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
        RunDir::open(&path, cfg)
    }

    /// An existing run, appended to (resume); an error while another
    /// process trains it.
    pub fn open(path: &Path, cfg: &Config) -> Result<RunDir> {
        let lock = take_lock(path)?;
        let dir = RunDir {
            path: path.to_owned(),
            recorders: record::open(path, cfg)?,
            lock: Some(lock),
        };
        restrict(path);
        fs::write(dir.path.join("pid"), std::process::id().to_string())
            .with_context(|| format!("cannot write {}", dir.path.join("pid").display()))?;
        Ok(dir)
    }

    /// Rank `rank`'s view of the run that rank 0 trains: its events'
    /// lines go to rank-N.log there (on another machine, into a directory
    /// of that name), and it owns nothing else.
    pub fn follower(path: &Path, rank: usize) -> Result<RunDir> {
        fs::create_dir_all(path).with_context(|| format!("cannot create run directory {}", path.display()))?;
        Ok(RunDir {
            path: path.to_owned(),
            recorders: record::rank_log(&path.join(format!("rank-{rank}.log")))?,
            lock: None,
        })
    }

    pub fn checkpoints(&self) -> PathBuf {
        self.path.join("checkpoints")
    }

    /// Hands the event to the recorders. A write error (a full disk) is
    /// for the caller to report: it must not stop training.
    pub fn record(&mut self, event: &Event) -> std::io::Result<()> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.recorders.record(event, now)
    }

    /// The run is over: no longer live.
    pub fn close(&self) {
        if self.lock.is_some() {
            let _ = fs::remove_file(self.path.join("pid"));
        }
    }
}

/// The process leaves at once, with its engine still running (a forced
/// quit): the run is no longer live.
pub fn abandon(run: &Path) {
    let _ = fs::remove_file(run.join("pid"));
}

/// The run's lock file: whoever holds it (flock) trains the run.
fn lock_path(run: &Path) -> PathBuf {
    run.join("lock")
}

/// Takes the run's lock for as long as the file stays open.
fn take_lock(run: &Path) -> Result<File> {
    let path = lock_path(run);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // `vggtrain runs` may hold it for an instant to look.
    for _ in 0..20 {
        match flock(&file, libc::LOCK_EX) {
            // A file system without locks: unguarded, as before locks.
            Ok(()) | Err(Locked::Unsupported) => return Ok(file),
            Err(Locked::Held) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
    Err(busy(run))
}

/// The error for a run that another process trains.
pub fn busy(run: &Path) -> anyhow::Error {
    let pid = fs::read_to_string(run.join("pid"))
        .map(|p| format!(" (pid {})", p.trim()))
        .unwrap_or_default();
    anyhow::anyhow!(
        "{} is being trained by another process{pid}: `vggtrain attach {}` to watch and steer it",
        run.display(),
        run.display()
    )
}

enum Locked {
    Held,
    Unsupported,
}

/// flock(2) without waiting.
fn flock(file: &File, how: i32) -> Result<(), Locked> {
    if unsafe { libc::flock(file.as_raw_fd(), how | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EWOULDBLOCK) => Err(Locked::Held),
        _ => Err(Locked::Unsupported),
    }
}

/// Whether a process trains the run now: it holds the run's lock (runs from
/// before the lock, or on a file system without locks: its pid is alive).
pub fn is_live(run: &Path) -> bool {
    // Closing the file lets go of the shared lock taken to look.
    match File::open(lock_path(run)).map(|f| flock(&f, libc::LOCK_SH)) {
        Ok(Ok(())) => false,
        Ok(Err(Locked::Held)) => true,
        _ => fs::read_to_string(run.join("pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .is_some_and(|pid| unsafe { libc::kill(pid, 0) } == 0),
    }
}

/// Only the user may read a run (it can hold a control socket).
fn restrict(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_at_a_time_trains_a_run() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path();
        fs::create_dir(run.join("checkpoints")).unwrap();
        assert!(!is_live(run), "no run yet");
        let first = RunDir::open(run, &Config::default()).unwrap();
        assert!(is_live(run));
        let err = RunDir::open(run, &Config::default())
            .err()
            .expect("a second trainer is refused");
        assert!(
            format!("{err:#}").contains("is being trained by another process"),
            "{err:#}"
        );
        // Looking does not take the run away from its trainer.
        assert!(is_live(run) && is_live(run));
        first.close();
        drop(first);
        assert!(!is_live(run), "a closed run is not live");
        assert!(
            RunDir::open(run, &Config::default()).is_ok(),
            "a dead run can be resumed"
        );
    }
}
