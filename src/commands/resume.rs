use crate::cli::ResumeArgs;

/// `pacer resume`: the pause switch off (see `pause`).
pub fn run(args: &ResumeArgs) -> u8 {
    super::pause::resume(args)
}
