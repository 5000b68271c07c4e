use std::process::ExitCode;

use clap::Parser;
use pacer::cli::{Cli, Command, exit};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = pacer::telemetry::init(cli.log_format, cli.log_level.as_deref()) {
        eprintln!("pacer: {e:#}");
        return ExitCode::from(exit::INVALID);
    }
    let code = match cli.command {
        Command::Check(args) => pacer::commands::check::run(&args),
        Command::Simulate(args) => pacer::commands::simulate::run(&args, cli.log_format),
    };
    ExitCode::from(code)
}
