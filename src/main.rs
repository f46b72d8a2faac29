use clap::Parser;
use std::io::IsTerminal;
use vggtrain::cli::{Cli, Cmd, ConfigCmd};
use vggtrain::{commands, engine, headless, ui};

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Train(args) => commands::layered(&args.config).and_then(|l| {
            let handle = engine::spawn(l.config, args.resume.as_deref())?;
            Ok(if args.no_tui || !std::io::stdout().is_terminal() {
                headless::run(handle)
            } else {
                ui::run(handle)?
            })
        }),
        Cmd::Eval(args) => commands::eval(&args).map(|_| 0),
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
