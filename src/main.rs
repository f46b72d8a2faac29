use clap::Parser;
use std::io::IsTerminal;
use vggtrain::cli::{Cli, Cmd, ConfigCmd};
use vggtrain::{commands, engine, headless, ui};

fn main() {
    // A closed pipe (`vggtrain models | head`) ends the process quietly, as
    // for any command-line tool.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Train(mut args) => {
            // A resumed run keeps its own configuration unless told otherwise.
            if let (Some(run), None) = (&args.resume, &args.config.config) {
                let saved = run.join("config.toml");
                args.config.config = saved.is_file().then_some(saved);
            }
            train(args)
        }
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

fn train(args: vggtrain::cli::TrainArgs) -> anyhow::Result<i32> {
    // Launched as one of several ranks: each would train the whole run on
    // its own, and they would race for its directory.
    if let Some(r) = vggtrain::dist::Rendezvous::from_env(|k| std::env::var(k).ok())? {
        anyhow::bail!(
            "started as rank {} of {} (torchrun or SLURM), but data-parallel training is not built yet: \
             launch one process",
            r.rank,
            r.world
        );
    }
    let layered = commands::layered(&args.config)?;
    // Flags and the environment, as opposed to the run's own config.toml.
    let explicit = layered
        .sources
        .iter()
        .filter(|(_, source)| *source == "flag" || source.starts_with("env "))
        .map(|(key, _)| key.clone())
        .collect();
    let start = engine::Start {
        config: layered.config,
        resume: args.resume.clone(),
        explicit,
    };
    // Until a face takes the signals, SIGINT and SIGTERM end the preparation
    // (and SIGUSR1 does no harm).
    let stop = headless::StopSignals::new();
    let progress = headless::Progress::resolve(args.progress);
    let preparing = headless::Preparing::start(
        progress,
        if args.resume.is_some() {
            "reading the dataset and building the network, loading the checkpoint"
        } else {
            "reading the dataset and building the network"
        },
    );
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
    Ok(if args.no_tui || !std::io::stdout().is_terminal() {
        headless::run(handle, progress, stop)
    } else {
        ui::run(handle, progress)?
    })
}
