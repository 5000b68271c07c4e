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

use crate::cli::{PolicyArg, exit};
use crate::policy::Policy;
use crate::store::Fail;

/// Load and validate the policy, printing every problem: the first step of
/// every command. `Err` carries the exit code. With `--target`, the policy
/// of that one target of a fleet (`Policy::for_target`).
pub(crate) fn load_policy(arg: &PolicyArg) -> Result<Policy, u8> {
    let p = Policy::load(&arg.policy).map_err(|e| {
        eprintln!("{e}");
        exit::INVALID
    })?;
    let Some(name) = &arg.target else {
        return Ok(p);
    };
    if !p.is_fleet() {
        eprintln!(
            "error: --target {}: {} is not a fleet policy (it has no [fleet] or [[target]])",
            crate::text::show(name),
            arg.policy.display()
        );
        return Err(exit::INVALID);
    }
    let targets = block_on(crate::fleet::resolve_targets(&p, &arg.policy))
        .map_err(|e| print_error("error: ", &e))?;
    match targets.iter().find(|t| t.name == *name) {
        Some(t) => Ok(p.for_target(t)),
        None => {
            eprintln!(
                "error: --target {}: the fleet has no such target (targets: {})",
                crate::text::show(name),
                targets
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Err(exit::INVALID)
        }
    }
}

/// Commands that read or change one database refuse a whole fleet, naming
/// the way to point them at one target.
pub(crate) fn one_database(p: &Policy, arg: &PolicyArg, command: &str) -> Result<(), u8> {
    if p.is_fleet() {
        eprintln!(
            "error: {} is a fleet policy: `pacer {command}` works on one database; name a target with --target NAME",
            arg.policy.display()
        );
        return Err(exit::INVALID);
    }
    Ok(())
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
