use std::process::ExitCode;

use clap::Parser;
use pacer::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Check(args) => pacer::commands::check::run(&args),
        Command::Simulate(args) => pacer::commands::simulate::run(&args, cli.log_format),
        Command::Run(args) => {
            pacer::commands::run::run(&args, cli.log_format, cli.log_level.as_deref())
        }
        Command::Pause(args) => pacer::commands::pause::pause(&args),
        Command::Resume(args) => pacer::commands::resume::run(&args),
        Command::Status(args) => pacer::commands::status::run(&args),
        Command::Verify(args) => pacer::commands::verify::run(&args),
    };
    ExitCode::from(code)
}
