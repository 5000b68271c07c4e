//! Crash-test hooks, compiled in always and inert unless `PACER_FAILPOINT`
//! is set, e.g. `PACER_FAILPOINT=in_commit:7` (the 7th commit of the
//! process). Tests use them to die at exact moments around COMMIT, which a
//! timed SIGKILL only hits by luck. A batch that is one statement (its own
//! transaction) commits with that statement: "COMMIT" below means it then.
//!
//! - `before_commit:N`: abort the process just before COMMIT;
//! - `in_commit:N`: abort `PACER_FAILPOINT_DELAY_MS` (default 20) after
//!   sending COMMIT, i.e. while the server is committing;
//! - `after_commit:N`: abort right after COMMIT returned;
//! - `lose_commit:N`: COMMIT succeeded, but act as if the connection was
//!   lost before the answer came (exercises the ambiguous-commit lookup);
//! - `terminate_in_commit:N`: `pg_terminate_backend` of the writer
//!   `PACER_FAILPOINT_DELAY_MS` after sending COMMIT.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    BeforeCommit,
    InCommit,
    AfterCommit,
    LoseCommit,
    TerminateInCommit,
}

static COMMITS: AtomicU64 = AtomicU64::new(0);

fn points() -> &'static [(Point, u64)] {
    static P: OnceLock<Vec<(Point, u64)>> = OnceLock::new();
    P.get_or_init(|| {
        let Ok(spec) = std::env::var("PACER_FAILPOINT") else {
            return Vec::new();
        };
        spec.split(',')
            .filter_map(|item| {
                let (name, n) = item.trim().split_once(':')?;
                let p = match name {
                    "before_commit" => Point::BeforeCommit,
                    "in_commit" => Point::InCommit,
                    "after_commit" => Point::AfterCommit,
                    "lose_commit" => Point::LoseCommit,
                    "terminate_in_commit" => Point::TerminateInCommit,
                    _ => return None,
                };
                Some((p, n.parse().ok()?))
            })
            .collect()
    })
}

/// Number this commit attempt; returns the failpoints armed for it.
pub fn arm() -> Vec<Point> {
    let pts = points();
    if pts.is_empty() {
        return Vec::new();
    }
    let n = COMMITS.fetch_add(1, Ordering::SeqCst) + 1;
    pts.iter()
        .filter(|(_, at)| *at == n)
        .map(|(p, _)| *p)
        .collect()
}

pub fn delay() -> Duration {
    Duration::from_millis(
        std::env::var("PACER_FAILPOINT_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20),
    )
}

/// Die like SIGKILL: no unwinding, no cleanup, no flushed buffers.
pub fn die(at: &str) -> ! {
    eprintln!("failpoint {at}: aborting");
    std::process::abort()
}
