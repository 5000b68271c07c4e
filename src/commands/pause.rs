use crate::cli::{PauseArgs, PolicyArg, ResumeArgs, exit};
use crate::store::control::{clean, operator};

pub fn pause(args: &PauseArgs) -> u8 {
    let (_, reason) = clean("", args.reason.as_deref().unwrap_or(""));
    flip(&args.policy, true, &reason)
}

pub fn resume(args: &ResumeArgs) -> u8 {
    flip(&args.policy, false, "")
}

/// Flip the job's pause switch (a fleet's: every target's at once); a
/// running job obeys within one tick.
fn flip(arg: &PolicyArg, paused: bool, reason: &str) -> u8 {
    let path = &arg.policy;
    let policy = match super::load_policy(arg) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let result = super::block_on(async {
        let by = operator();
        if policy.is_fleet() {
            crate::fleet::set_switch(&policy, path, paused, &by, reason).await?;
        } else {
            crate::store::control::set_switch(&policy, paused, &by, reason).await?;
        }
        Ok(by)
    });
    let what = if policy.is_fleet() { "fleet" } else { "job" };
    match result {
        Ok(by) => {
            if paused {
                println!(
                    "{what} {} paused by {by}{}; a running job stops taking batches within one tick (in-flight batches finish). \
                     `pacer resume --policy {}{}` to continue",
                    policy.job.name,
                    if reason.is_empty() {
                        String::new()
                    } else {
                        format!(" ({reason})")
                    },
                    path.display(),
                    arg.target
                        .as_ref()
                        .map(|t| format!(" --target {t}"))
                        .unwrap_or_default()
                );
            } else {
                println!(
                    "{what} {} resumed by {by}; it continues with the knobs it had",
                    policy.job.name
                );
            }
            exit::OK
        }
        Err(e) => super::print_error("error: ", &e),
    }
}
