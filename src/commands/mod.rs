//! One module per CLI command: wiring only, no logic of its own.

pub mod check;
pub mod cleanup;
pub mod pause;
pub mod report;
pub mod resume;
pub mod run;
pub mod simulate;
pub mod status;
pub mod verify;

use std::path::Path;

use crate::cli::exit;
use crate::policy::Policy;
use crate::store::Fail;

/// Load and validate the policy, printing every problem: the first step of
/// every command. `Err` carries the exit code.
pub(crate) fn load_policy(path: &Path) -> Result<Policy, u8> {
    Policy::load(path).map_err(|e| {
        eprintln!("{e}");
        exit::INVALID
    })
}

/// Print a command's error on stderr the way every command does: the cause
/// chain on one line, credentials masked (a libpq string or a URL may sit
/// anywhere in it), control characters escaped, at most
/// `text::MAX_MESSAGE` characters. Returns the exit code it calls for.
pub(crate) fn print_error(prefix: &str, e: &anyhow::Error) -> u8 {
    let line = format!("{prefix}{}", crate::telemetry::redact::error(e));
    eprintln!("{}", crate::text::message_line(&line));
    Fail::code_of(e)
}

/// Run one async operation on a fresh runtime, for commands that are a
/// single round of database work.
pub(crate) fn block_on<T>(fut: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    run::runtime()?.block_on(fut)
}
