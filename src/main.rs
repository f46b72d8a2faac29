use clap::Parser;
use std::io::IsTerminal;
use vggtrain::cli::{Cli, Cmd, ConfigCmd};
use vggtrain::{commands, dist, engine, headless, ui};

fn main() {
    // A closed pipe (`vggtrain models | head`) ends the process quietly, as
    // for any command-line tool.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Train(args) => train(args),
        Cmd::Eval(args) => commands::eval(&args).map(|_| 0),
        Cmd::Predict(args) => commands::predict(&args).map(|_| 0),
        Cmd::Export { checkpoint, out } => commands::export(&checkpoint, &out).map(|_| 0),
        Cmd::Models {
            input,
            classes,
            width,
            channels,
        } => commands::models(input, classes, width, channels).map(|_| 0),
        Cmd::Info => commands::info().map(|_| 0),
        Cmd::Config {
            command: ConfigCmd::Show(args),
        } => commands::config_show(&args).map(|_| 0),
        Cmd::Runs { runs_dir } => commands::runs(runs_dir).map(|_| 0),
        Cmd::Report { runs, out } => commands::report(&runs, out).map(|_| 0),
        Cmd::Pack {
            data_dir,
            out,
            max_side,
            shard_mb,
        } => commands::pack(data_dir, out, max_side, shard_mb).map(|_| 0),
        Cmd::TensorboardExport { run, out } => commands::tensorboard_export(&run, out).map(|_| 0),
        Cmd::Attach { run, runs_dir } => commands::attach(run, runs_dir),
        Cmd::Bench(args) => commands::bench(&args).map(|_| 0),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}

fn train(mut args: vggtrain::cli::TrainArgs) -> anyhow::Result<i32> {
    let timeout = std::time::Duration::from_secs(args.dist_timeout);
    let launch = args.nproc_per_node.filter(|&n| n > 1);
    let rendezvous = dist::rendezvous(launch.is_some())?;
    if let Some(n) = launch {
        let config = commands::layered(&args.config)?.config;
        dist::check_batch(config.train.batch_size, n.into())?;
        return dist::launch::run(n.into(), &config, timeout);
    }
    // One of several ranks (torchrun, SLURM, --nproc-per-node): meet the others.
    let ranks = rendezvous.map(|r| dist::join(r, timeout)).transpose()?;
    if let Some((r, dp)) = &ranks {
        // An elastic restart resumes the run its first attempt started.
        if r.attempt > 0 && args.resume.is_none() {
            args.resume = dp.published_run()?;
            if let (0, Some(run)) = (r.rank, &args.resume) {
                eprintln!("restart {} of the ranks: resuming {}", r.attempt, run.display());
            }
        }
    }
    // A resumed run keeps its own configuration unless told otherwise.
    if let (Some(run), None) = (&args.resume, &args.config.config) {
        let saved = run.join("config.toml");
        args.config.config = saved.is_file().then_some(saved);
    }
    let layered = commands::layered(&args.config)?;
    // Flags and the environment, as opposed to the run's own config.toml.
    let explicit = layered
        .sources
        .iter()
        .filter(|(_, source)| *source == "flag" || source.starts_with("env "))
        .map(|(key, _)| key.clone())
        .collect();
    let mut config = layered.config;
    if let Some((r, _)) = &ranks {
        dist::check_batch(config.train.batch_size, r.world)?;
        config.train.device = engine::rank_device(&config.train.device, r.local_rank)?;
    }
    let rank = ranks.as_ref().map_or(0, |(r, _)| r.rank);
    let start = engine::Start {
        config,
        resume: args.resume.clone(),
        explicit,
        parallel: ranks.map(|(_, dp)| dp),
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
