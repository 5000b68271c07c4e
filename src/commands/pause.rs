use crate::cli::{PauseArgs, ResumeArgs, exit};
use crate::store::control::{clean, operator};

pub fn pause(args: &PauseArgs) -> u8 {
    let (_, reason) = clean("", args.reason.as_deref().unwrap_or(""));
    flip(&args.policy.policy, true, &reason)
}

pub fn resume(args: &ResumeArgs) -> u8 {
    flip(&args.policy.policy, false, "")
}

/// Flip the job's pause switch; a running job obeys within one tick.
fn flip(path: &std::path::Path, paused: bool, reason: &str) -> u8 {
    let policy = match super::load_policy(path) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let result = super::block_on(async {
        let by = operator();
        crate::store::control::set_switch(&policy, paused, &by, reason).await?;
        Ok(by)
    });
    match result {
        Ok(by) => {
            if paused {
                println!(
                    "job {} paused by {by}{}; a running job stops taking batches within one tick (in-flight batches finish). \
                     `pacer resume --policy {}` to continue",
                    policy.job.name,
                    if reason.is_empty() {
                        String::new()
                    } else {
                        format!(" ({reason})")
                    },
                    path.display()
                );
            } else {
                println!(
                    "job {} resumed by {by}; it continues with the knobs it had",
                    policy.job.name
                );
            }
            exit::OK
        }
        Err(e) => super::print_error("error: ", &e),
    }
}
