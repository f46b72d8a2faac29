use clap::Parser;
use vggtrain::cli::{Cli, Cmd, ConfigCmd};
use vggtrain::commands;

fn main() {
    // A closed pipe (`vggtrain models | head`) ends the process quietly, as
    // for any command-line tool.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Train(args) => commands::train(args),
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
