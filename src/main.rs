use std::process::ExitCode;

use clap::Parser;
use pacer::cli::{Cli, Command, exit};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = cli.log_level.as_deref();
    // The simulator stamps log lines with simulated time, so it installs
    // its own subscriber; every other command logs in real time.
    if !matches!(cli.command, Command::Simulate(_))
        && let Err(e) = pacer::telemetry::init(cli.log_format, level)
    {
        eprintln!("pacer: {e:#}");
        return ExitCode::from(exit::INVALID);
    }
    let code = match cli.command {
        Command::Check(args) => pacer::commands::check::run(&args),
        Command::Simulate(args) => pacer::commands::simulate::run(&args, cli.log_format, level),
        Command::Run(args) => pacer::commands::run::run(&args),
        Command::Pause(args) => pacer::commands::pause::pause(&args),
        Command::Resume(args) => pacer::commands::resume::run(&args),
        Command::Status(args) => pacer::commands::status::run(&args),
        Command::Verify(args) => pacer::commands::verify::run(&args),
        Command::Report(args) => pacer::commands::report::run(&args),
        Command::Cleanup(args) => pacer::commands::cleanup::run(&args),
    };
    ExitCode::from(code)
}
