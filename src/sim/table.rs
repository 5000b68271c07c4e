//! The human summary printed after the decision log.

use std::fmt::Write;

use super::Outcome;
use super::run::RunStats;

/// pacer vs the fixed strategies, one column each.
pub fn summary_table(o: &Outcome) -> String {
    let pacer = RunStats {
        rows_done: o.rows_done,
        efficiency: o.efficiency,
        seconds_above_stop: o.seconds_above_stop,
        seconds_worsened_above_stop: o.seconds_worsened_above_stop,
        seconds_above_slow: o.seconds_above_slow,
        clean_rows: 0,
        clean_efficiency: o.clean_efficiency,
        batch_errors: o.batch_errors,
        pauses: o.pauses,
        decisions: o.decisions,
        max_signals: o.max_signals.clone(),
        knobs: None,
        dispatch: o.dispatch.clone(),
        actions: Default::default(),
        log: Vec::new(),
        history: None,
        truths: Vec::new(),
    };
    let mut cols = vec![("pacer", &pacer)];
    if let Some(f) = &o.fixed_baselines {
        cols.push(("conservative", &f.conservative));
        cols.push(("aggressive", &f.aggressive));
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n{} on {} (seed {}), {} simulated from {}; safe rows bound {} (measured {:.0}s late; {} without delay)",
        o.job,
        o.scenario,
        o.seed,
        humantime::format_duration(std::time::Duration::from_secs(o.simulated_seconds as u64)),
        match o.timezone.parse::<chrono_tz::Tz>() {
            Ok(tz) => o
                .start
                .with_timezone(&tz)
                .format("%Y-%m-%d %H:%M %Z")
                .to_string(),
            Err(_) => o.start.format("%Y-%m-%d %H:%M UTC").to_string(),
        },
        o.safe_rows_bound,
        o.bound_delay_seconds,
        o.instant_rows_bound
    );
    if let (Some(rows), Some(end)) = (o.dispatch.table_rows, &o.dispatch.end) {
        let _ = writeln!(
            s,
            "pacer's run on a table of {rows} rows: {end} after {}",
            humantime::format_duration(std::time::Duration::from_secs(
                o.dispatch.ended_after_seconds.unwrap_or_default() as u64
            ))
        );
    }
    let _ = write!(s, "{:<28}", "");
    for (name, _) in &cols {
        let _ = write!(s, "{name:>14}");
    }
    s.push('\n');
    let mut row = |label: &str, cell: &dyn Fn(&RunStats) -> String| {
        let _ = write!(s, "{label:<28}");
        for (_, r) in &cols {
            let _ = write!(s, "{:>14}", cell(r));
        }
        s.push('\n');
    };
    row("rows", &|r| r.rows_done.to_string());
    row("efficiency", &|r| format!("{:.3}", r.efficiency));
    row("clean efficiency", &|r| {
        format!("{:.3}", r.clean_efficiency)
    });
    row("seconds above stop", &|r| {
        format!("{:.0}", r.seconds_above_stop)
    });
    row("% of the day above stop", &|r| {
        format!(
            "{:.2}",
            100.0 * r.seconds_above_stop / o.simulated_seconds.max(1.0)
        )
    });
    row("seconds above slow", &|r| {
        format!("{:.0}", r.seconds_above_slow)
    });
    row("pauses", &|r| r.pauses.to_string());
    row("failed batches", &|r| r.batch_errors.to_string());
    for l in &o.levels {
        let name = l.signal.clone();
        let lv = match (l.slow, l.stop) {
            (Some(a), Some(b)) => format!(" ({}/{})", short(a), short(b)),
            (None, Some(b)) => format!(" (stop {})", short(b)),
            (Some(a), None) => format!(" (slow {})", short(a)),
            _ => String::new(),
        };
        row(&format!("max {name}{lv}"), &|r| {
            r.max_signals
                .get(&name)
                .map(|v| short(*v))
                .unwrap_or_default()
        });
    }
    s
}

fn short(v: f64) -> String {
    if v == 0.0 || (v.abs() >= 0.01 && v.abs() < 1e5) {
        let t = format!("{v:.3}");
        t.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.2e}")
    }
}
