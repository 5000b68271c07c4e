//! Fold repeated small cuts into one line per minute per cause.
//!
//! A controller near its slow level trims the rate every recovery epoch; a
//! simulated day printed ~1,200 such "slowing down" lines, burying the
//! pauses and resumes an operator reads the log for. Every pause, resume,
//! stop-level cut and first cut of a new cause is printed as it happens;
//! further cuts for the same cause within a minute are counted and printed
//! once, when the minute is over or something else happens, as
//! `slowing down ×N in 60s: <cause>; <knobs first → last>` (or `smaller
//! batches ×N …` for batch-level hiccups, which shrink the batch at the
//! same rate).

use crate::controller::{Action, Cause, Decision, Knobs, knob_delta};

/// How long repeated cuts are folded into one line.
const SPAN_SECS: i64 = 60;

/// What the log should show.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// A decision as it is.
    Decision(Decision),
    /// `count` cuts folded: the last one, with the knobs before the first.
    Folded {
        count: u64,
        first_before: Knobs,
        last: Decision,
    },
}

impl Line {
    /// The sentence for the log.
    pub fn summary(&self) -> String {
        match self {
            Line::Decision(d) => d.summary(),
            Line::Folded {
                count,
                first_before,
                last,
            } => {
                let secs = SPAN_SECS;
                let causes: Vec<String> = last.causes.iter().map(|c| c.to_string()).collect();
                let mut s = format!("{} ×{count} in {secs}s: {}", last.verb(), causes.join(", "));
                let delta = knob_delta(first_before, &last.knobs);
                if !delta.is_empty() {
                    s.push_str("; ");
                    s.push_str(&delta);
                }
                s
            }
        }
    }
}

/// The folding state between decisions.
#[derive(Debug, Default)]
pub struct Fold {
    /// The last printed small cut: its cause key and time.
    last_cut: Option<(Vec<String>, chrono::DateTime<chrono::Utc>)>,
    /// Cuts folded since then: count, knobs before the first, last one.
    pending: Option<(u64, Knobs, Decision)>,
}

/// A cut that is routine: no cause at its stop level.
fn small_cut(d: &Decision) -> bool {
    d.action == Action::Decrease
        && !d
            .causes
            .iter()
            .any(|c| matches!(c, Cause::Signal { level, .. } if *level == "stop"))
}

/// What a cut is about, independent of the values.
fn key(d: &Decision) -> Vec<String> {
    let mut k: Vec<String> = d
        .causes
        .iter()
        .map(|c| match c {
            Cause::Signal { signal, level, .. } => format!("{signal}:{level}"),
            Cause::Missing { signal, .. } => format!("missing:{signal}"),
            Cause::SlowBatch { .. } => "slow_batch".into(),
            Cause::BatchError { error, .. } => format!("error:{}", error.as_str()),
            other => format!("{other:?}").chars().take(16).collect(),
        })
        .collect();
    k.sort();
    k.dedup();
    // A rate-neutral batch shrink and a cut of the rate are told apart.
    k.push(d.verb().to_string());
    k
}

impl Fold {
    /// Take one changed decision; returns the lines to print now.
    pub fn push(&mut self, d: &Decision) -> Vec<Line> {
        let mut out = self.expire(d.at);
        if small_cut(d) {
            let k = key(d);
            if let Some((last, at)) = &self.last_cut
                && *last == k
                && (d.at - *at).num_seconds() < SPAN_SECS
            {
                match &mut self.pending {
                    Some((n, _, last)) => {
                        *n += 1;
                        *last = d.clone();
                    }
                    None => self.pending = Some((1, d.before, d.clone())),
                }
                return out;
            }
            out.extend(self.flush());
            self.last_cut = Some((k, d.at));
        } else {
            out.extend(self.flush());
            self.last_cut = None;
        }
        out.push(Line::Decision(d.clone()));
        out
    }

    /// Lines due at `now` without a new decision (the minute is over).
    pub fn expire(&mut self, now: chrono::DateTime<chrono::Utc>) -> Vec<Line> {
        match &self.last_cut {
            Some((_, at)) if (now - *at).num_seconds() >= SPAN_SECS => {
                self.last_cut = None;
                self.flush()
            }
            _ => Vec::new(),
        }
    }

    /// Whatever is folded, as one line.
    pub fn flush(&mut self) -> Vec<Line> {
        match self.pending.take() {
            Some((1, _, last)) => vec![Line::Decision(last)],
            Some((count, first_before, last)) => vec![Line::Folded {
                count,
                first_before,
                last,
            }],
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::State;
    use std::time::Duration;

    fn cut(secs: i64, level: &'static str, sleep_ms: u64) -> Decision {
        Decision {
            at: chrono::DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap(),
            state: State::Slowing,
            action: Action::Decrease,
            before: Knobs {
                batch_size: 100,
                sleep: Duration::from_millis(sleep_ms),
                workers: 1,
            },
            knobs: Knobs {
                batch_size: 100,
                sleep: Duration::from_millis(sleep_ms + 10),
                workers: 1,
            },
            causes: vec![Cause::Signal {
                signal: "p95".into(),
                value: 1.0,
                estimate: None,
                level,
                threshold: 0.9,
                expr: None,
                baseline: None,
            }],
            windows: vec![],
            view: Default::default(),
        }
    }

    #[test]
    fn repeated_small_cuts_fold_into_one_line_per_minute() {
        let mut f = Fold::default();
        let mut lines = Vec::new();
        for s in [0, 10, 20, 30, 40] {
            lines.extend(f.push(&cut(s, "slow", s as u64)));
        }
        assert_eq!(lines.len(), 1, "the first cut prints at once");
        lines.extend(f.expire(cut(70, "slow", 0).at));
        assert_eq!(lines.len(), 2);
        let s = lines[1].summary();
        assert!(s.starts_with("slowing down ×4 in 60s: p95"), "{s}");
        assert!(s.contains("sleep 10ms→50ms"), "{s}");
    }

    /// Batch hiccups (smaller batches at the same rate) fold under their
    /// own verb, apart from cuts of the rate for the same cause.
    #[test]
    fn smaller_batches_fold_apart_from_cuts() {
        let slow_batch = |secs: i64, state: State| Decision {
            state,
            causes: vec![Cause::SlowBatch {
                duration: Duration::from_millis(1500),
                target: Duration::from_secs(1),
            }],
            ..cut(secs, "slow", 0)
        };
        let mut f = Fold::default();
        let mut lines = Vec::new();
        for s in [0, 10, 20] {
            lines.extend(f.push(&slow_batch(s, State::Running)));
        }
        lines.extend(f.push(&slow_batch(30, State::Slowing)));
        lines.extend(f.expire(slow_batch(100, State::Running).at));
        let text: Vec<String> = lines.iter().map(|l| l.summary()).collect();
        assert_eq!(text.len(), 3, "{text:?}");
        assert!(
            text[0].starts_with("smaller batches: batch took 1.5s"),
            "{text:?}"
        );
        assert!(text[1].starts_with("smaller batches ×2 in 60s"), "{text:?}");
        assert!(
            text[2].starts_with("slowing down: batch took 1.5s"),
            "{text:?}"
        );
    }

    #[test]
    fn stop_level_cuts_and_other_decisions_are_never_folded() {
        let mut f = Fold::default();
        let mut lines = f.push(&cut(0, "slow", 0));
        lines.extend(f.push(&cut(5, "slow", 10)));
        lines.extend(f.push(&cut(6, "stop", 20)));
        // The folded cut comes out before the stop-level one, which prints.
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(matches!(&lines[2], Line::Decision(d) if d.causes.len() == 1));
    }
}
