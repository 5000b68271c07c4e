//! Whether new batches may be handed out: the controller's pause, a pause
//! asked for in this process (HTTP), the pause switch being unreadable
//! (connection loss, outage), and how long each has lasted.
//!
//! Fail-safe: the job starts held until the first command has been read,
//! so a job paused before it started writes nothing; and a switch that
//! cannot be read holds the job at once, not at the next tick.

use std::time::Instant;

#[derive(Debug)]
pub struct Down {
    pub since: Instant,
    pub cause: String,
}

#[derive(Debug, Default)]
pub struct Gate {
    commanded: bool,
    paused_since: Option<Instant>,
    local: bool,
    pub down: Option<Down>,
}

impl Gate {
    pub fn command(&mut self, now: Instant, paused: bool) {
        self.commanded = true;
        match (paused, self.paused_since) {
            (true, None) => self.paused_since = Some(now),
            (false, _) => self.paused_since = None,
            _ => {}
        }
    }

    pub fn local(&mut self, paused: bool) {
        self.local = paused;
    }

    /// The pause switch cannot be read: hold from now. A new cause keeps
    /// the outage's start.
    pub fn lose(&mut self, now: Instant, cause: String) {
        match &mut self.down {
            Some(d) => d.cause = cause,
            None => self.down = Some(Down { since: now, cause }),
        }
    }

    pub fn up(&mut self) {
        self.down = None;
    }

    pub fn paused_since(&self) -> Option<Instant> {
        self.paused_since
    }

    /// Why no new batch may start, if one may not.
    pub fn held(&self) -> Option<String> {
        if let Some(d) = &self.down {
            return Some(d.cause.clone());
        }
        if self.local {
            return Some("paused in this process (HTTP)".into());
        }
        if self.paused_since.is_some() {
            return Some("paused".into());
        }
        if !self.commanded {
            return Some("waiting for the first tick to read the pause switch".into());
        }
        None
    }
}
