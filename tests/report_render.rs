//! `report::render` over a controller-driven business day: the SVG is
//! well-formed and carries every series and pause, the runbook states what
//! happened, and the database password appears in neither.

mod support;

use std::path::Path;

use pacer::history::History;
use pacer::report::{ReportInfo, Verification, render};
use support::SECRET;

fn info(policy: pacer::policy::Policy) -> ReportInfo {
    ReportInfo {
        database: policy.database.url.clone(),
        policy: Some(policy),
        policy_path: Some("policies/demo.toml".into()),
        source: Some("a controller-driven test run".into()),
        verification: Some(Verification {
            passed: true,
            pending_rows: 0,
            detail: format!("checked with postgres://app:{SECRET}@db.internal/shop"),
        }),
        rollback: None,
        ended: None,
    }
}

/// Where to leave the rendered files for a person to look at
/// (`PACER_REPORT_OUT=/tmp/report cargo test --test report_render`).
fn out_dir(tmp: &Path) -> std::path::PathBuf {
    std::env::var_os("PACER_REPORT_OUT").map_or_else(|| tmp.to_path_buf(), Into::into)
}

fn texts(doc: &roxmltree::Document<'_>) -> Vec<String> {
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| {
            n.descendants()
                .filter(|t| t.is_text())
                .filter_map(|t| t.text())
                .collect::<String>()
                .trim()
                .to_string()
        })
        .collect()
}

#[test]
fn renders_timeline_and_runbook_for_a_business_day() {
    let (policy, mut history) = support::business_day(7.0);
    // A manual pause reason that carries a credential must not leak either.
    for p in &mut history.pauses {
        if p.reason.contains("alice") {
            p.reason
                .push_str(&format!(" (see postgres://ops:{SECRET}@db/x)"));
        }
    }
    assert!(
        history.pauses.len() >= 2,
        "the test day must pause: {:?}",
        history.pauses
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = out_dir(tmp.path());
    render(&history, &info(policy), &dir).unwrap();

    let svg = std::fs::read_to_string(dir.join("timeline.svg")).unwrap();
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(
        !svg.contains(SECRET) && !md.contains(SECRET),
        "password leaked into the report"
    );

    let doc = roxmltree::Document::parse(&svg).expect("timeline.svg is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let texts = texts(&doc);
    let has = |needle: &str| texts.iter().any(|t| t.contains(needle));
    for needle in [
        "pacer · demo",
        "state",
        "running",
        "slowing down",
        "signal checkout_p95",
        "signal replica_lag",
        "slow above 0.396",
        "stop above 0.495",
        "baseline 0.33",
        "slow above 2",
        "stop above 10",
        "throughput",
        "rows/s (left axis)",
        "rows done (right axis)",
        // The controller's view beside the raw readings and the rate.
        "estimate",
        "target rows/s",
        "batch size (rows per transaction)",
        "sleep between batches (ms)",
        "workers (concurrent transactions)",
        "time (Europe/Berlin)",
        "P1",
        "P2",
        "pauses",
    ] {
        assert!(
            has(needle),
            "timeline.svg lacks {needle:?}; texts: {texts:?}"
        );
    }
    // Each listed pause names its cause.
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("P1 ") && t.contains("replica_lag")),
        "{texts:?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains("paused by alice: sale prep")),
        "{texts:?}"
    );
    // Pause bands: one shaded rectangle per pause in each panel below the
    // state strip (signals, throughput, three knobs), in the pause colour.
    let bands = doc
        .descendants()
        .filter(|n| {
            n.has_tag_name("rect")
                && n.attribute("fill") == Some("#D62728")
                && n.attribute("opacity").is_some_and(|o| o.starts_with("0.1"))
        })
        .count();
    assert!(
        bands >= history.pauses.len() * (history.signals.len() + 4),
        "{bands} pause bands for {} pauses",
        history.pauses.len()
    );
    // Every signal and knob is a drawn line.
    let lines = doc
        .descendants()
        .filter(|n| n.has_tag_name("polyline") || n.has_tag_name("path"))
        .count();
    assert!(lines >= 7, "only {lines} lines drawn");

    for needle in [
        "# Backfill report: `demo`",
        "UPDATE public.orders SET status",
        "status IS NULL",
        "| batch size (rows per transaction) | 500 | 50 | 5000 |",
        "`checkout_p95`",
        "`baseline * 1.2`",
        "| P1 |",
        "replica_lag",
        "paused by alice: sale prep",
        "lock_timeout",
        "`checkout_p95` above its slow level (0.396):",
        "- 2026-11-24 12:09:14 CET — pausing: replica_lag",
        "**passed**: 0 rows still pending",
        "pacer pause --policy policies/demo.toml",
        "pacer resume --policy policies/demo.toml",
        "### Rolling back",
        "postgres://app:***@db.internal:5432/shop",
        "lunch",
        "`tenant=acme`",
        "![Timeline",
    ] {
        assert!(md.contains(needle), "report.md lacks {needle:?}:\n{md}");
    }
    // No temporary files left behind.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        names.iter().all(|n| !n.to_string_lossy().contains(".tmp-")),
        "{names:?}"
    );
}

#[test]
fn stats_match_the_history() {
    let (_, history) = support::business_day(7.0);
    let s = pacer::report::stats::RunStats::from_history(&history).unwrap();
    let first = history.samples.first().unwrap();
    let last = history.samples.last().unwrap();
    assert_eq!(s.rows, last.rows_done - first.rows_done);
    assert!(
        s.peak_rate >= s.avg_rate,
        "peak {} < avg {}",
        s.peak_rate,
        s.avg_rate
    );
    let max_tick = history
        .samples
        .iter()
        .map(|x| x.rows_per_second)
        .fold(0.0, f64::max);
    assert!(s.peak_rate <= max_tick + 1e-9);
    let paused_ticks = history
        .samples
        .iter()
        .filter(|x| x.state == "paused")
        .count() as u64;
    assert!((s.paused.as_secs() as i64 - paused_ticks as i64).abs() <= 1);
    let lag = s.signals.iter().find(|x| x.name == "replica_lag").unwrap();
    assert!(lag.max.unwrap() > 10.0 && lag.above_stop.as_secs() >= 5);
    let p95 = s.signals.iter().find(|x| x.name == "checkout_p95").unwrap();
    assert!(p95.missing.as_secs() >= 60, "{p95:?}");
}

#[test]
fn an_empty_history_still_renders() {
    let tmp = tempfile::tempdir().unwrap();
    let h = History {
        job: "nothing".into(),
        ..Default::default()
    };
    render(&h, &ReportInfo::default(), tmp.path()).unwrap();
    let svg = std::fs::read_to_string(tmp.path().join("timeline.svg")).unwrap();
    roxmltree::Document::parse(&svg).unwrap();
    let md = std::fs::read_to_string(tmp.path().join("report.md")).unwrap();
    assert!(md.contains("no progress was recorded"), "{md}");
}

#[test]
fn an_unwritable_directory_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let e = render(
        &History::default(),
        &ReportInfo::default(),
        &file.join("sub"),
    )
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("creating report directory"),
        "{e:#}"
    );
}
