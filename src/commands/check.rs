use crate::cli::{CheckArgs, exit};
use crate::policy::Policy;

pub fn run(args: &CheckArgs) -> u8 {
    match Policy::load(&args.policy.policy) {
        Ok(p) => {
            println!(
                "{}: ok (job {:?}, {} signal(s), {} window(s))",
                args.policy.policy.display(),
                p.job.name,
                p.signals.len(),
                p.windows.len()
            );
            exit::OK
        }
        Err(e) => {
            eprintln!("{e}");
            exit::INVALID
        }
    }
}
