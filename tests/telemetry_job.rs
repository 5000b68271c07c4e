//! `JobTelemetry` driven through a controller-run business day, as the run
//! loop will drive it: one INFO line per decision that changed something,
//! metrics that agree with the history, periodic progress lines, and the
//! long-pause warning.

mod support;

use std::time::Duration;

use pacer::cli::LogFormat;
use pacer::telemetry::pause_watch::PauseVerdict;
use pacer::telemetry::{JobTelemetry, TelemetryOptions, logging};
use serde_json::Value;
use support::capture::Capture;
use tracing_subscriber::EnvFilter;

#[test]
fn a_business_day_through_job_telemetry() {
    let (mut policy, history) = support::business_day(7.0);
    policy.job.max_pause = Some(Duration::from_secs(300));
    let cap = Capture::default();
    let sub = logging::subscriber(LogFormat::Json, EnvFilter::new("info"), cap.clone(), false);
    let opts = TelemetryOptions {
        progress_every: Duration::from_secs(600),
        progress_bar: false,
        ..Default::default()
    };
    let total = history.samples.last().unwrap().rows_done;
    let mut warns = 0;
    tracing::subscriber::with_default(sub, || {
        let mut t = JobTelemetry::new(&policy, opts).unwrap();
        let mut decisions = history.decisions.iter().peekable();
        let mut paused_since = None;
        for s in &history.samples {
            while let Some(d) = decisions.next_if(|d| d.at <= s.at) {
                t.decision(d);
                match d.action {
                    pacer::controller::Action::Pause => paused_since = Some(d.at),
                    pacer::controller::Action::Resume => paused_since = None,
                    _ => {}
                }
            }
            let readings: Vec<_> = history
                .signals
                .iter()
                .map(|i| match s.signals[&i.name] {
                    Some(v) => pacer::signals::Reading::value(v, s.at),
                    None => pacer::signals::Reading::missing("empty", s.at),
                })
                .collect();
            t.readings(&readings);
            t.progress(
                s.at,
                s.rows_done,
                Some(total - s.rows_done),
                &s.state,
                s.knobs,
            );
            if let PauseVerdict::Warn { .. } =
                t.pause_check(s.at, paused_since, "replica_lag 16 > stop 10")
            {
                warns += 1;
            }
        }
        let text = t.metrics().encode_classic();
        assert!(
            text.contains(&format!(
                "pacer_rows_done_total{{pacer_job=\"demo\",tenant=\"acme\"}} {total}\n"
            )),
            "{text}"
        );
        assert!(text.contains("pacer_pauses_total{pacer_job=\"demo\",tenant=\"acme\",reason=\"stop:replica_lag\"} 1\n"), "{text}");
        assert!(
            text.contains(
                "pacer_pauses_total{pacer_job=\"demo\",tenant=\"acme\",reason=\"manual\"} 1\n"
            ),
            "{text}"
        );
        t.finish("done: 62,000,000 rows");
    });
    let lines: Vec<Value> = String::from_utf8(cap.0.lock().unwrap().clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l["job"] == "demo" && l["labels"]["tenant"] == "acme")
    );
    // Repeated small cuts are folded: a folded line stands for `folded`.
    let decision_lines: u64 = lines
        .iter()
        .filter(|l| l["target"] == "pacer::decision")
        .map(|l| l["folded"].as_u64().unwrap_or(1))
        .sum();
    assert_eq!(decision_lines as usize, history.decisions.len());
    let progress = lines
        .iter()
        .filter(|l| l["target"] == "pacer::progress")
        .count();
    let hours = (history.samples.last().unwrap().at - history.samples[0].at).num_minutes() as usize;
    // One every 10 minutes, plus the first and the final "done" line.
    assert!(
        (hours / 10..=hours / 10 + 2).contains(&progress),
        "{progress} progress lines over {hours} minutes"
    );
    // max_pause is 5 min and warnings repeat every 5 min: the 8m36s pause
    // warns at 5 min, the 10m12s one at 5 and at 10 min.
    let warn_lines = lines.iter().filter(|l| l["level"] == "WARN").count();
    assert_eq!(warns, 3);
    assert_eq!(warn_lines, 3);
}
