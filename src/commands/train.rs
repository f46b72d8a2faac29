//! `vggtrain train`: a run alone, the launcher of this machine's ranks
//! (`--nproc-per-node`), or one rank of a data-parallel run (torchrun,
//! SLURM, vggtrain's launcher), which meets the others before the engine
//! starts and then trains under rank 0's lead.
use crate::cli::TrainArgs;
use crate::config::Config;
use crate::dist::{self, DataParallel, Rendezvous, Role};
use crate::{data, engine, headless, ui};
use anyhow::Result;
use std::{collections::BTreeSet, io::IsTerminal, time::Duration};

/// Trains; returns the process's exit code.
pub fn train(mut args: TrainArgs) -> Result<i32> {
    let timeout = Duration::from_secs(args.dist_timeout);
    let ranks = match dist::role(&args.launch)? {
        Role::Launcher(l) => return launch(&l, &mut args, timeout),
        Role::Rank(r) => Some(meet(r, &mut args, timeout)?),
        Role::Alone => None,
    };
    keep_saved_config(&mut args);
    let layered = super::layered(&args.config)?;
    // Flags and the environment, as opposed to the run's own config.toml.
    let mut explicit: BTreeSet<String> = layered
        .sources
        .iter()
        .filter(|(_, source)| *source == "flag" || source.starts_with("env "))
        .map(|(key, _)| key.clone())
        .collect();
    if ranks.as_ref().is_some_and(|(r, _)| r.attempt > 0) {
        // An elastic restart repeats the launch's flags: an `--lr` among
        // them set the run's start, and must not undo its decays since.
        explicit.remove("train.lr");
    }
    let mut config = layered.config;
    if let Some((r, _)) = &ranks {
        rank_config(&mut config, r)?;
    }
    let rank = ranks.as_ref().map_or(0, |(r, _)| r.rank);
    let start = engine::Start {
        config,
        resume: args.resume.clone(),
        explicit,
        parallel: ranks.map(|(_, dp)| dp),
        observer: Some(crate::attach::observe()),
    };
    // Until a face takes the signals, SIGINT and SIGTERM end the preparation
    // (and SIGUSR1 does no harm).
    let stop = headless::StopSignals::new();
    let progress = headless::Progress::resolve(args.progress);
    // The other ranks are quiet.
    let preparing = match rank {
        0 => headless::Preparing::start(
            progress,
            if args.resume.is_some() {
                "reading the dataset and building the network, loading the checkpoint"
            } else {
                "reading the dataset and building the network"
            },
        ),
        _ => headless::Preparing::quiet(),
    };
    let spawned = engine::spawn(start, &|| {
        preparing.tick();
        stop.code()
    });
    preparing.done();
    let handle = match spawned {
        Ok(h) => h,
        Err(e) => match e.downcast_ref::<engine::Interrupted>() {
            Some(engine::Interrupted(code)) => {
                eprintln!("{e}");
                headless::exit_now(*code)
            }
            None => return Err(e),
        },
    };
    Ok(if rank > 0 {
        headless::follow(handle, stop, rank)
    } else if args.no_tui || !std::io::stdout().is_terminal() {
        headless::run(handle, progress, stop)
    } else {
        ui::run(handle, progress)?
    })
}

/// A resumed run keeps its own configuration unless told otherwise.
fn keep_saved_config(args: &mut TrainArgs) {
    if let (Some(run), None) = (&args.resume, &args.config.config) {
        let saved = run.join("config.toml");
        args.config.config = saved.is_file().then_some(saved);
    }
}

/// `--nproc-per-node N`: this machine's N ranks, once the batch is known
/// to split between them.
fn launch(l: &dist::launch::Launch, args: &mut TrainArgs, timeout: Duration) -> Result<i32> {
    keep_saved_config(args);
    let config = super::layered(&args.config)?.config;
    dist::check_batch(config.train.batch_size, l.world())?;
    dist::check_gpus(&config.train.device, l.nproc)?;
    dist::launch::run(l, timeout)
}

/// Meets the other ranks. Rank 0 first fetches the data when asked to
/// (`data.download`; the others never do, see `rank_config`). After an
/// elastic restart, every rank resumes the run that the launch's first
/// attempt started (rank 0 named it in the store: `share_run`).
fn meet(r: Rendezvous, args: &mut TrainArgs, timeout: Duration) -> Result<(Rendezvous, DataParallel)> {
    if r.rank == 0 && r.attempt == 0 {
        keep_saved_config(args);
        let config = super::layered(&args.config)?.config;
        if config.data.download {
            data::locate(&config.data)?;
        }
    }
    let (r, dp) = dist::join(r, timeout)?;
    if r.attempt > 0 && args.resume.is_none() {
        args.resume = dp.published_run()?;
        if let (0, Some(run)) = (r.rank, &args.resume) {
            eprintln!("restart {} of the ranks: resuming {}", r.attempt, run.display());
        }
    }
    Ok((r, dp))
}

/// A rank's part of the configuration: the batch splits between the ranks,
/// it takes its own GPU (or its share of the cores), and only rank 0
/// downloads.
fn rank_config(config: &mut Config, r: &Rendezvous) -> Result<()> {
    dist::check_batch(config.train.batch_size, r.world)?;
    config.train.device = dist::settle_rank(&config.train.device, config.train.threads, r)?;
    if r.rank > 0 {
        config.data.download = false;
    }
    Ok(())
}
