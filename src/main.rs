use std::process::ExitCode;

use clap::Parser;
use pacer::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Check(args) => pacer::commands::check::run(&args),
        Command::Simulate(args) => pacer::commands::simulate::run(&args, cli.log_format),
    };
    ExitCode::from(code)
}
