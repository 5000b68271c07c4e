use crate::cli::{LogFormat, SimulateArgs, exit};

pub fn run(_args: &SimulateArgs, _format: LogFormat) -> u8 {
    eprintln!("simulate: being built");
    exit::FAILED
}
